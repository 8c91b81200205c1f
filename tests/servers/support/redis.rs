//! redis-server processes of the test's own: one server, or a 3-master cluster.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{find_binary, free_port, run, scratch_dir};

/// A running redis-server, killed and deleted on drop. Fault tests can kill,
/// restart (empty), freeze (SIGSTOP) and thaw (SIGCONT) it.
pub struct Redis {
    url: String,
    own: Option<Own>,
}

struct Own {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
    args: Vec<String>,
    tls: bool,
}

impl Redis {
    /// Starts a server on a free port, or uses `REDIS_URL`.
    pub fn start() -> Redis {
        match std::env::var("REDIS_URL") {
            Ok(url) => Redis { url, own: None },
            Err(_) => Redis::start_own(&[]),
        }
    }

    /// Starts a server of the test's own (even when `REDIS_URL` is set), with extra
    /// `redis-server` arguments.
    pub fn start_own(extra: &[&str]) -> Redis {
        Redis::start_on(free_port(), extra)
    }

    fn start_on(port: u16, extra: &[&str]) -> Redis {
        let dir = scratch_dir("redis");
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut redis = Redis {
            url: format!("redis://127.0.0.1:{port}/"),
            own: Some(Own {
                child: None,
                dir,
                port,
                args,
                tls: false,
            }),
        };
        redis.spawn();
        redis
    }

    /// A server that only speaks TLS, with a certificate for 127.0.0.1 signed by a
    /// CA made for the test. Returns the server and the CA certificate (PEM).
    pub fn start_tls() -> (Redis, Vec<u8>) {
        let certs = scratch_dir("certs");
        let openssl = find_binary("openssl", &[], "openssl");
        let ssl = |args: &[&str]| run(Command::new(&openssl).current_dir(&certs).args(args));
        ssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=tiered-test-ca",
        ]);
        ssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(certs.join("san.ext"), "subjectAltName=IP:127.0.0.1\n")
            .expect("write san.ext");
        ssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        ]);
        let port = free_port();
        let path = |name: &str| certs.join(name).display().to_string();
        let args: Vec<String> = vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            path("server.pem"),
            "--tls-key-file".into(),
            path("server.key"),
            "--tls-ca-cert-file".into(),
            path("ca.pem"),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        let mut redis = Redis {
            url: format!("rediss://127.0.0.1:{port}/"),
            own: Some(Own {
                child: None,
                dir: certs.clone(),
                port,
                args,
                tls: true,
            }),
        };
        redis.spawn();
        let ca = std::fs::read(certs.join("ca.pem")).expect("read ca.pem");
        (redis, ca)
    }

    fn own(&mut self) -> &mut Own {
        self.own.as_mut().expect("a server of the test's own")
    }

    fn spawn(&mut self) {
        let own = self.own();
        let binary = find_binary("redis-server", &[], "redis-server");
        let child = Command::new(binary)
            .args(["--port", &own.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&own.dir)
            .args(&own.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        own.child = Some(child);
        let (port, tls) = (own.port, own.tls);
        if tls {
            wait_listening(port);
        } else {
            wait_ready(port);
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn port(&self) -> u16 {
        self.own.as_ref().map(|o| o.port).expect("own server")
    }

    /// Kills the server (SIGKILL): its data is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.own().child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGSTOP: the server keeps its connections but answers nothing.
    pub fn freeze(&mut self) {
        self.signal("-STOP");
    }

    /// SIGCONT.
    pub fn thaw(&mut self) {
        self.signal("-CONT");
    }

    fn signal(&mut self, signal: &str) {
        let pid = self.own().child.as_ref().expect("running").id();
        run(Command::new("kill").arg(signal).arg(pid.to_string()));
    }

    /// Runs a command with redis-cli, returning its output.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port(), args)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(own) = self.own.as_mut() {
            if let Some(mut child) = own.child.take() {
                // A frozen server ignores SIGKILL until continued.
                let _ = Command::new("kill")
                    .arg("-CONT")
                    .arg(child.id().to_string())
                    .output();
                let _ = child.kill();
                let _ = child.wait();
            }
            let _ = std::fs::remove_dir_all(&own.dir);
        }
    }
}

/// Three masters on loopback, with or without a replica each.
pub struct RedisCluster {
    nodes: Vec<Redis>,
}

impl RedisCluster {
    /// Three masters, no replicas.
    pub fn start() -> RedisCluster {
        RedisCluster::start_with(0)
    }

    /// Three masters with `replicas` replicas each, every replica in sync.
    pub fn start_with(replicas: usize) -> RedisCluster {
        RedisCluster::start_configured(replicas, &[])
    }

    /// [`start_with`](Self::start_with), each node also given `extra` settings.
    pub fn start_configured(replicas: usize, extra: &[&str]) -> RedisCluster {
        // Cluster bus ports are port + 10000: keep ports at or below 55535.
        // Distinct, and none another's bus port: a free port is free until it is
        // bound, so two picks can give the same one (then the cluster never had
        // its six nodes and the harness timed out).
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 3 * (1 + replicas) {
            let port = cluster_port();
            if !ports
                .iter()
                .any(|&p| p == port || p + 10000 == port || port + 10000 == p)
            {
                ports.push(port);
            }
        }
        let nodes: Vec<Redis> = ports
            .iter()
            .map(|&port| {
                let mut args = vec![
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ];
                args.extend_from_slice(extra);
                Redis::start_on(port, &args)
            })
            .collect();
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(ports.iter().map(|p| format!("127.0.0.1:{p}")));
        args.extend([
            "--cluster-replicas".into(),
            replicas.to_string(),
            "--cluster-yes".into(),
        ]);
        let cli = find_binary("redis-cli", &[], "redis-tools");
        run(Command::new(cli).args(&args));
        // Replicas first sync with a full copy: under a loaded machine (the whole
        // test suite at once) that takes a while.
        let deadline = Instant::now() + Duration::from_secs(90);
        let ready = |n: &Redis| {
            n.cli(&["cluster", "info"]).contains("cluster_state:ok")
                && !n
                    .cli(&["info", "replication"])
                    .contains("master_link_status:down")
                && n.cli(&["cluster", "nodes"]).lines().count() == 3 * (1 + replicas)
        };
        while !nodes.iter().all(ready) {
            if Instant::now() > deadline {
                let states: Vec<String> = nodes
                    .iter()
                    .map(|n| {
                        format!(
                            "{}: {} / {}",
                            n.port(),
                            n.cli(&["cluster", "info"])
                                .lines()
                                .next()
                                .unwrap_or_default(),
                            n.cli(&["info", "replication"]).replace("\r\n", " ")
                        )
                    })
                    .collect();
                panic!("the cluster did not get ready:\n{}", states.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        RedisCluster { nodes }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url().to_owned()).collect()
    }

    /// The nodes, masters and replicas, in start order.
    pub fn nodes(&self) -> &[Redis] {
        &self.nodes
    }

    /// Kills node `i` (SIGKILL): a master's replica takes its slots after
    /// the cluster's node timeout.
    pub fn kill_node(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// How many keys each master holds.
    pub fn key_counts(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| n.cli(&["dbsize"]).trim().parse().unwrap_or(0))
            .collect()
    }
}

fn cluster_port() -> u16 {
    loop {
        let port = free_port();
        if (1024..=55535).contains(&port)
            && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok()
        {
            return port;
        }
    }
}

pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let cli = find_binary("redis-cli", &[], "redis-tools");
    let out = Command::new(cli)
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server on port {port} did not listen within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if ping(port)
            .is_some_and(|reply| reply.starts_with("+PONG") || reply.starts_with("-NOAUTH"))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server on port {port} did not answer PING within 10 s");
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
