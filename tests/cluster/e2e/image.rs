//! What building the image leaves on the machine.

use crate::support::docker::{docker, ensure_docker};
use crate::support::image::ensure_image;
use crate::support::manifest::Manifest;

/// The runtime base the Dockerfile names upstream.
const UPSTREAM_BASE: &str = "gcr.io/distroless/cc-debian12:nonroot";

/// On a machine that cannot pull, `scripts/build-image` makes a stand-in
/// runtime base from the host's libraries. Under the upstream name it
/// would be taken by every later build, a real one included, so it only
/// ever carries a local name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stand_in_base_never_takes_the_upstream_name() {
    ensure_docker().await;
    if std::env::var("RAFTSET_E2E_IMAGE").is_ok() {
        // The image was built elsewhere: this run made no base at all.
        return;
    }
    ensure_image(&Manifest::base().image).await;
    if let Ok(comment) = docker(&["image", "inspect", "-f", "{{.Comment}}", UPSTREAM_BASE]).await {
        assert!(
            !comment.starts_with("raftset: local stand-in"),
            "{UPSTREAM_BASE} names the stand-in made by build-image ({comment}); \
             an older build-image tagged it so: `docker rmi {UPSTREAM_BASE}`"
        );
    }
}
