//! The test harness: real servers on loopback ports, started per test and stopped
//! on drop, or the ones in `DATABASE_URL` / `REDIS_URL` when set.

#![allow(dead_code)]

pub mod gated;
mod postgres;
pub mod redis;
pub mod slow_proxy;
pub mod users;
pub mod versions;
#[path = "../../benches/support/zipf.rs"]
pub mod zipf;

pub use self::postgres::Postgres;
pub use self::redis::{Redis, RedisCluster};

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A free loopback port (the OS picks it; the listener is closed before returning).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral loopback port")
        .port()
}

/// A new empty directory for one server; removed by the server's guard.
pub fn scratch_dir(kind: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tiered-{kind}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The first of `candidates` that exists, or a test failure that says how to install it.
pub fn find_binary(name: &str, dirs: &[&str], package: &str) -> PathBuf {
    let from_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let extra = dirs.iter().flat_map(|pattern| expand(pattern));
    from_path
        .into_iter()
        .chain(extra)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` not found on PATH or in {dirs:?}: install it with \
                 `apt-get install -y {package}` (or run scripts/test, which does), \
                 or point the tests at a running server with DATABASE_URL / REDIS_URL"
            )
        })
}

/// `/usr/lib/postgresql/*/bin` → every matching directory, newest version first.
fn expand(pattern: &str) -> Vec<PathBuf> {
    let Some((head, tail)) = pattern.split_once("/*/") else {
        return vec![PathBuf::from(pattern)];
    };
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(head)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path().join(tail))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.reverse();
    dirs
}

/// Runs `cmd`, failing the test with its output when it does not succeed.
pub fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn chown_to(user: &str, dir: &Path) {
    run(Command::new("chown").arg("-R").arg(user).arg(dir));
}

#[path = "../common/at_once.rs"]
mod at_once;
pub use self::at_once::at_once;

#[path = "../common/eventually.rs"]
mod eventually;
pub use self::eventually::eventually;

#[path = "../common/rewrites.rs"]
pub mod rewrites;
