//! A stand-in for the one Kubernetes API path raftset reads: its
//! StatefulSet, with a `spec.replicas` the test changes.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub struct FakeKubeApi {
    pub url: String,
    replicas: Arc<AtomicU32>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeKubeApi {
    pub async fn start(replicas: u32) -> FakeKubeApi {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake API");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let replicas = Arc::new(AtomicU32::new(replicas));
        let shared = replicas.clone();
        let server = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let replicas = shared.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&request);
                    let (status, body) = if head
                        .starts_with("GET /apis/apps/v1/namespaces/default/statefulsets/raftset ")
                    {
                        (
                            "200 OK",
                            format!(r#"{{"kind":"StatefulSet","spec":{{"replicas":{replicas}}}}}"#),
                        )
                    } else {
                        (
                            "404 Not Found",
                            r#"{"kind":"Status","code":404}"#.to_string(),
                        )
                    };
                    let reply = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                });
            }
        });
        FakeKubeApi {
            url,
            replicas,
            server,
        }
    }

    pub fn set_replicas(&self, replicas: u32) {
        self.replicas.store(replicas, Ordering::SeqCst);
    }
}

impl Drop for FakeKubeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}
