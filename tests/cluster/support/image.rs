//! The image the pods run, built once per test binary from the real
//! `Dockerfile` by `scripts/build-image`.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::Command;

use super::docker::docker;

/// The image, built once per test binary: `scripts/build-image` (the real
/// Dockerfile, with the host's release binary), tagged with the manifest's
/// image name so the pods run what the manifest names.
/// `RAFTSET_E2E_IMAGE=<tag>` uses an existing image instead.
pub async fn ensure_image(manifest_image: &str) -> String {
    static IMAGE: tokio::sync::OnceCell<Result<String, String>> =
        tokio::sync::OnceCell::const_new();
    let result = IMAGE
        .get_or_init(|| async {
            if let Ok(image) = std::env::var("RAFTSET_E2E_IMAGE") {
                docker(&["image", "inspect", "--format", "{{.Id}}", &image])
                    .await
                    .map_err(|e| format!("RAFTSET_E2E_IMAGE={image}: {e}"))?;
                return Ok(image);
            }
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-image");
            let started = Instant::now();
            let run = Command::new(&script)
                .arg("--no-smoke")
                .env("IMAGE", manifest_image)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output();
            // A missing release binary is built first: minutes on two cores.
            let output = tokio::time::timeout(Duration::from_secs(1200), run)
                .await
                .map_err(|_| format!("{} took longer than 20 minutes", script.display()))?
                .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
            let stderr = String::from_utf8_lossy(&output.stderr);
            if !output.status.success() {
                let stdout = String::from_utf8_lossy(&output.stdout);
                let tail: Vec<&str> = stdout.lines().rev().take(20).collect();
                return Err(format!(
                    "{} failed: {}\n{}",
                    script.display(),
                    stderr.trim(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
            for line in stderr.lines().filter(|l| l.contains("warning")) {
                eprintln!("e2e: {line}");
            }
            eprintln!(
                "e2e: built {manifest_image} with scripts/build-image in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            Ok(manifest_image.to_string())
        })
        .await;
    match result {
        Ok(image) => image.clone(),
        Err(e) => panic!("cannot build the image for the e2e tests: {e}"),
    }
}
