//! Shared helpers for multi-node tests: two harnesses behind one
//! interface ([`Harness`]: stop, kill, restart, wait for ready, leader,
//! voters and applied, members), with waits that always have a deadline.
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | [`poll`], [`wait_for`] and [`DEADLINE`] |
//! | `harness.rs` | [`Harness`], the interface both harnesses play, and every wait on it |
//! | `process.rs` | [`Cluster`], the process harness: `raftset serve` on loopback addresses |
//! | `statefulset.rs` | the container harness: a StatefulSet played with Docker |
//! | `manifest.rs` | `k8s/` rendered by `kubectl kustomize` and read as JSON |
//! | `docker.rs` | the `docker` command line and the clean-up of dead runs |
//! | `image.rs` | the image the pods run, built once per test binary |
//! | `dns.rs` | the pods' cluster DNS: their names, NXDOMAIN for the rest, outages on command |
//! | `kube.rs` | the fake Kubernetes API (the StatefulSet, ConfigMaps for the founding record) |
//! | `http.rs` | HTTP from the tests to a node's HTTP port |
//! | `browser.rs` | headless Chromium: a page's DOM after its scripts ran, screenshots |
//! | `openmetrics.rs` | `/metrics` scraped as Prometheus does, parsed by the Python `prometheus_client` parser |
//! | `history.rs`, `linearizability.rs` | recorded histories and their checker |

pub mod browser;
pub mod dns;
pub mod docker;
pub mod harness;
pub mod history;
pub mod http;
pub mod image;
pub mod kube;
pub mod linearizability;
pub mod manifest;
pub mod openmetrics;
pub mod process;
pub mod statefulset;

pub use harness::Harness;
pub use process::Cluster;

use std::future::Future;
use std::time::Duration;

/// How long any wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `probe` every `every` until it returns `Ok`, failing the test with
/// `what` and the last error after `deadline`.
pub async fn poll<T, F, Fut>(what: &str, deadline: Duration, every: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        let last = match probe().await {
            Ok(value) => return value,
            Err(e) => e,
        };
        if tokio::time::Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(every).await;
    }
}

/// [`poll`] every 50 ms for up to [`DEADLINE`].
pub async fn wait_for<T, F, Fut>(what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    poll(what, DEADLINE, Duration::from_millis(50), probe).await
}

/// Streams a backup through `client` into `file`.
pub async fn backup_into(client: &mut raftset::Client, file: &std::path::Path) {
    let mut stream = client.backup().await.unwrap();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        bytes.extend_from_slice(&chunk.data);
    }
    std::fs::write(file, bytes).unwrap();
}

/// Runs `raftset restore --from file --data-dir data_dir`.
pub fn restore_from(file: &std::path::Path, data_dir: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_raftset"))
        .arg("restore")
        .arg("--from")
        .arg(file)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap()
}
