//! Named points where a test build kills its own process, so a test can
//! show that a crash at exactly that moment leaves a node that starts and
//! catches up; stalls one thread, so a test can show what goes on while a
//! slow step is under way; fails a storage step with an I/O error, as a
//! failing disk would; or leaves a step unanswered, as a peer that never
//! replies would. Compiled in only with the `failpoints` feature (the
//! binary the process tests run); in the shipped binary a point is nothing
//! at all.
//!
//! A test arms a point through the environment of the node it starts, in
//! the `fail` crate's syntax: `FAILPOINTS=snapshot-install-copied=return`,
//! `FAILPOINTS=snapshot-write=return(10000)` (a stall of 10 s). Owns
//! nothing else and never decides anything: it only ends the process,
//! waits, fails the step, or tells the step to wait for good.

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

/// Blocks the calling thread for the milliseconds the armed point names
/// (`name=return(ms)`), and says so in the log first, so a test knows the
/// slow step has begun.
pub fn stall_point(name: &str) {
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
    fail::fail_point!(name, |ms: Option<String>| {
        let ms = ms.and_then(|ms| ms.parse().ok()).unwrap_or(0);
        tracing::warn!("failpoint {name}: stalling for {ms} ms");
        std::thread::sleep(std::time::Duration::from_millis(ms));
    });
}

/// Fails the calling storage step with an I/O error when the point `name`
/// is armed (`name=return`), as a failing disk fails it.
pub fn io_error_point(name: &str) -> std::io::Result<()> {
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
    fail::fail_point!(name, |_| {
        tracing::warn!("failpoint {name}: failing with an I/O error");
        Err(std::io::Error::other(format!("failpoint {name}")))
    });
    Ok(())
}

/// Whether the caller's step goes unanswered for good (`name=return`), as
/// when no peer ever replies to it; the caller then waits forever.
pub fn unanswered_point(name: &str) -> bool {
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
    fail::fail_point!(name, |_| {
        tracing::warn!("failpoint {name}: leaving the step unanswered");
        true
    });
    false
}
