//! Named points where a test build kills its own process, so a test can
//! show that a crash at exactly that moment leaves a node that starts and
//! catches up. Compiled in only with the `failpoints` feature (the binary
//! the process tests run); in the shipped binary a point is nothing at all.
//!
//! A test arms a point through the environment of the node it starts, in
//! the `fail` crate's syntax: `FAILPOINTS=snapshot-install-copied=return`.
//! Owns nothing else and never decides anything: it only ends the process.

/// Ends the process with SIGKILL when the point `name` is armed: no
/// destructor runs and sled flushes nothing more, as when the kernel kills
/// an out-of-memory pod.
pub fn crash_point(name: &str) {
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
    fail::fail_point!(name, |_| {
        tracing::warn!("failpoint {name}: killing the process");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    });
}
