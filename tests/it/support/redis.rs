//! A redis-server of the test's own.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{find_binary, free_port, scratch_dir};

/// A running redis-server, killed and deleted on drop.
pub struct Redis {
    url: String,
    own: Option<(Child, PathBuf)>,
}

impl Redis {
    /// Starts a server on a free port, or uses `REDIS_URL`.
    pub fn start() -> Redis {
        if let Ok(url) = std::env::var("REDIS_URL") {
            return Redis { url, own: None };
        }
        let binary = find_binary("redis-server", &[], "redis-server");
        let dir = scratch_dir("redis");
        let port = free_port();
        let child = Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let redis = Redis {
            url: format!("redis://127.0.0.1:{port}/"),
            own: Some((child, dir)),
        };
        redis.wait_ready(port);
        redis
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn wait_ready(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if ping(port).is_some_and(|reply| reply.starts_with("+PONG")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {port} did not answer PING within 10 s");
    }
}

/// Sends `PING` over a plain socket; the reply line, if any.
pub fn ping(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream.write_all(b"PING\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some((mut child, dir)) = self.own.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
