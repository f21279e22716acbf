//! The `raftset` binary: parse the command line, set up logging, run.

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

use raftset::cli::{parse, report_failure, run};

// glibc's malloc took a seventh of the servers' CPU under load; mimalloc's
// per-thread free lists cut the CPU per operation by a fifth
// (`bench/FINDINGS.md`). Built without transparent huge pages: with them every
// thread's first allocation made 2 MiB resident.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = parse();
    // A test build arms its crash points from the FAILPOINTS variable.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_json {
        logs.json().init();
    } else {
        logs.init();
    }
    match run(cli).await {
        Ok(code) => code,
        Err(e) => report_failure(&e),
    }
}
