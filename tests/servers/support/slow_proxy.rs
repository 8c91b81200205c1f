//! A TCP proxy in front of a real server that holds each new connection for a
//! while before it forwards anything: a connect (with AUTH) that takes longer than
//! one call's timeout, as TLS + AUTH across a network can.

use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

pub struct SlowProxy {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SlowProxy {
    pub async fn start(target_port: u16, delay: Duration) -> SlowProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target_port)).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
        SlowProxy { port, task }
    }
}
