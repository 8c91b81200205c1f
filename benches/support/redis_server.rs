//! A redis-server of the bench's own (benches need one they can freeze), and
//! latency percentiles.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    pub url: String,
    port: u16,
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// A server with extra `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        RedisServer {
            child: spawn(port, &extra),
            url: format!("redis://127.0.0.1:{port}/"),
            port,
            extra,
        }
    }

    /// SIGKILL, then a new empty server on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn(self.port, &self.extra);
    }

    /// SIGKILL: the server and its data are gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, signal: &str) {
        Command::new("kill")
            .arg(signal)
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
    }
}

fn spawn(port: u16, extra: &[String]) -> Child {
    let dir = std::env::temp_dir().join(format!("tiered-bench-redis-{port}"));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir)
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (scripts/install-deps)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `redis-cli` against `url`'s port.
pub fn cli(url: &str, args: &[&str]) -> String {
    let port = url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .expect("a port");
    let out = Command::new("redis-cli")
        .args(["-p", port])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// p50 and p99 of `samples` (sorted in place).
pub fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (at(0.50), at(0.99))
}

pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
