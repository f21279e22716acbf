//! A real browser: headless Chromium (Debian's `chromium`, which
//! `scripts/test` installs). It gives a page's DOM after its scripts ran
//! for a stretch of virtual time, and screenshots. Without the browser a
//! test fails: the page is checked in a browser or not at all.
//!
//! Each run gets its own profile directory, so runs in parallel tests do
//! not share one, and no proxy, so a request goes exactly to the address
//! given.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use super::DEADLINE;

const CHROMIUM: &str = "chromium";

/// The PNG file signature.
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Runs Chromium on `url` with `args`, with a fresh profile under `dir`,
/// and returns what it wrote to stdout.
async fn chromium(url: &str, args: &[String], dir: &Path) -> String {
    let profile = tempfile::tempdir_in(dir).expect("browser profile dir");
    let run = tokio::process::Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--no-proxy-server",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(DEADLINE, run).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => panic!(
            "cannot run {CHROMIUM} ({e}): install Debian's chromium package \
             (`apt-get install chromium`; scripts/test does)"
        ),
        Err(_) => panic!("{CHROMIUM} on {url} did not finish within {DEADLINE:?}"),
    };
    assert!(
        output.status.success(),
        "{CHROMIUM} on {url} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The DOM of `url` once its scripts ran for `budget` of virtual time
/// (timers fire at once; virtual time stands still while a request is
/// pending).
pub async fn dom_after(url: &str, budget: Duration, dir: &Path) -> String {
    chromium(
        url,
        &[
            format!("--virtual-time-budget={}", budget.as_millis()),
            "--dump-dom".into(),
        ],
        dir,
    )
    .await
}

/// A `width` × `height` screenshot of `url` after `budget` of virtual
/// time, saved as `file`; checks that it is a PNG of that size.
pub async fn screenshot(url: &str, budget: Duration, (width, height): (u32, u32), file: &Path) {
    let dir = file.parent().expect("screenshot dir");
    chromium(
        url,
        &[
            format!("--virtual-time-budget={}", budget.as_millis()),
            format!("--window-size={width},{height}"),
            format!("--screenshot={}", file.display()),
        ],
        dir,
    )
    .await;
    let png = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert!(png.starts_with(PNG), "{} is no PNG", file.display());
    // The IHDR chunk comes first: width and height, big-endian.
    let size = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    assert!(png.len() > 24, "{} is cut short", file.display());
    assert_eq!((size(16), size(20)), (width, height), "{}", file.display());
}
