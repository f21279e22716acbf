//! A stand-in for the one Kubernetes API path raftset reads: its
//! StatefulSet, with a `spec.replicas` the test changes. Used by the process
//! tests on loopback and by the container harness on its network's gateway.

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
    /// Serves StatefulSet `raftset` in namespace `default` on loopback.
    pub async fn start(replicas: u32) -> FakeKubeApi {
        let replicas = Arc::new(AtomicU32::new(replicas));
        FakeKubeApi::serve("127.0.0.1", "default", "raftset", replicas)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Serves `namespace/set` on `host` (any free port), answering with the
    /// current value of `replicas`.
    pub async fn serve(
        host: &str,
        namespace: &str,
        set: &str,
        replicas: Arc<AtomicU32>,
    ) -> Result<FakeKubeApi, String> {
        let listener = TcpListener::bind((host, 0))
            .await
            .map_err(|e| format!("cannot listen on {host} for the fake API: {e}"))?;
        let url = format!("http://{}", listener.local_addr().unwrap());
        let request_line = format!("GET /apis/apps/v1/namespaces/{namespace}/statefulsets/{set} ");
        let shared = replicas.clone();
        let server = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let replicas = shared.load(Ordering::SeqCst);
                let request_line = request_line.clone();
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
                    let (status, body) = if head.starts_with(&request_line) {
                        (
                            "200 OK",
                            format!(
                                r#"{{"apiVersion":"apps/v1","kind":"StatefulSet","spec":{{"replicas":{replicas}}}}}"#
                            ),
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
        Ok(FakeKubeApi {
            url,
            replicas,
            server,
        })
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
