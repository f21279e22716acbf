//! Exit codes and the one-line error a failed command prints.
//!
//! Every client call's error becomes an [`Exit`] here, and only here: from
//! the gRPC code, and for a write from whether the request may have reached
//! the leader. A script can then tell "retry, nothing happened" (5) from
//! "look before retrying, it may have applied" (6), as LESSONS.md asks of
//! every client that must never blindly resend a non-idempotent write.

use std::process::ExitCode;

use tonic::Code;

use crate::client::ClientError;

/// What a command's exit status means. `--help` and the README list these
/// (a unit test keeps the help text in step).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Success = 0,
    /// Anything not listed below (an I/O error, an internal error).
    Failure = 1,
    /// The command line (clap's own code) or a request the server refused
    /// as invalid: fix the command.
    Usage = 2,
    /// The key or member does not exist.
    NotFound = 3,
    /// A compare-and-swap lost, an increment met a non-integer, a
    /// membership change's precondition does not hold.
    Precondition = 4,
    /// No node could serve it now (unreachable, no leader, no quorum,
    /// overloaded); nothing was changed, the command can be retried.
    Unavailable = 5,
    /// A write that may or may not have been applied.
    OutcomeUnknown = 6,
    /// `verify`: the members' data disagree.
    Disagree = 7,
    /// `healthcheck`: the node's probe did not answer 2xx (nothing listens,
    /// no answer in time, or not ready). Docker counts any non-zero as
    /// unhealthy; this one tells it from a broken command line (2).
    Unhealthy = 8,
    /// The node refused the caller: no valid token, or the token's role may
    /// not make this call.
    Denied = 9,
}

/// The exit-code table as `--help` shows it.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success (also `get --allow-missing` of a missing key)
  1  other failure (I/O, internal error)
  2  bad usage: the command line, or a request refused as invalid
  3  not found: no such key (`get`) or member
  4  precondition failed: compare-and-swap lost, increment of a non-integer
  5  unavailable: no node reachable, no leader or quorum; nothing changed, retry
  6  outcome unknown: a write may or may not have applied; read before retrying
  7  verify: the members disagree
  8  healthcheck: the node is not healthy (not listening, no answer, not ready)
  9  denied: no valid token (--token-file), or its role may not make the call";

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

/// Whether a call can change the cluster; decides what a failure means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Changes nothing: safe to send again, to any node.
    Read,
    /// May change the cluster: sent again only if it provably was not proposed.
    Write,
}

/// Why a client command failed, with what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A client call failed; `op` says whether it could have changed anything.
    #[error("{source}")]
    Call {
        op: Op,
        #[source]
        source: ClientError,
    },
    /// Every endpoint of the list failed; `last` is the last one's error.
    #[error("no endpoint could serve it (tried {tried}); the last: {last}")]
    EveryEndpoint {
        tried: String,
        #[source]
        last: Box<CliError>,
    },
    #[error("learner {id:016x} has not caught up: {why}")]
    NotCaughtUp { id: u64, why: String },
    #[error("the visit counter holds {value:?}, not a decimal integer")]
    NotACounter { value: String },
    #[error("key not found: {key}")]
    KeyNotFound { key: String },
    #[error("reading {what}: {source}")]
    Input {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the output: {0}")]
    Output(#[source] std::io::Error),
    /// --cacert, --cert or --key cannot be used.
    #[error("client TLS: {0}")]
    Tls(#[source] crate::tls::TlsError),
    /// `backup --dir`: a file or the directory could not be written,
    /// synced, renamed or removed.
    #[error("backup directory: {}: {source}", path.display())]
    BackupDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `backup --dir`: what the node sent does not read back as a whole
    /// backup, so it was not kept and no older one was removed.
    #[error("the backup received does not read back whole; not kept, none removed: {0}")]
    BadBackup(#[source] std::io::Error),
    #[error("the node ended the watch (shutting down?); watch again")]
    WatchEnded,
    #[error("unhealthy: {0}")]
    Unhealthy(#[source] Unhealthy),
    /// `delete --prefix` stopped part-way.
    #[error("deleted {deleted} keys, then: {source}")]
    Partial {
        deleted: u64,
        #[source]
        source: Box<CliError>,
    },
}

impl CliError {
    pub fn exit(&self) -> Exit {
        match self {
            CliError::Call { op, source } => exit_for(source.code(), *op, source.not_proposed()),
            CliError::KeyNotFound { .. } => Exit::NotFound,
            CliError::Tls(_) => Exit::Usage,
            CliError::Input { .. }
            | CliError::Output(_)
            | CliError::BackupDir { .. }
            | CliError::BadBackup(_)
            | CliError::NotCaughtUp { .. }
            | CliError::NotACounter { .. } => Exit::Failure,
            CliError::Partial { source, .. } => source.exit(),
            CliError::EveryEndpoint { last, .. } => last.exit(),
            CliError::WatchEnded => Exit::Unavailable,
            CliError::Unhealthy(_) => Exit::Unhealthy,
        }
    }
}

/// The exit code of a failed call: `code` is its gRPC code, `op` what it
/// was, `not_proposed` whether it certainly never reached the log.
pub fn exit_for(code: Code, op: Op, not_proposed: bool) -> Exit {
    match (code, op) {
        (Code::NotFound, _) => Exit::NotFound,
        (Code::FailedPrecondition | Code::Aborted, _) => Exit::Precondition,
        (Code::InvalidArgument | Code::OutOfRange, _) => Exit::Usage,
        (Code::Unauthenticated | Code::PermissionDenied, _) => Exit::Denied,
        (Code::Unavailable | Code::ResourceExhausted, Op::Read) => Exit::Unavailable,
        (Code::Unavailable | Code::ResourceExhausted, Op::Write) if not_proposed => {
            Exit::Unavailable
        }
        // A read that timed out changed nothing.
        (Code::DeadlineExceeded, Op::Read) => Exit::Unavailable,
        // A write cut off mid-flight (deadline, dropped connection, an
        // answer lost) may still apply.
        (
            Code::Unavailable
            | Code::ResourceExhausted
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown,
            Op::Write,
        ) => Exit::OutcomeUnknown,
        _ => Exit::Failure,
    }
}

/// The exit code of any error a command returned (1 unless it is typed).
pub fn exit_of(err: &anyhow::Error) -> Exit {
    if let Some(err) = err.downcast_ref::<CliError>() {
        return err.exit();
    }
    if let Some(err) = err.downcast_ref::<ClientError>() {
        // A client error that no command classified: assume the worst.
        return exit_for(err.code(), Op::Write, err.not_proposed());
    }
    Exit::Failure
}

/// An error and its causes on one line, each message once: a cause whose
/// text the line already holds (tonic's "transport error: transport error:
/// tcp connect error: tcp connect error" nesting), or that only restates
/// the previous message (a `tonic::Status` under the client error that
/// quotes its message), is left out.
pub fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut previous = line.clone();
    let mut cause = err.source();
    while let Some(err) = cause {
        let message = err.to_string();
        let restates = !previous.is_empty() && message.contains(&previous);
        if !message.is_empty() && !line.contains(&message) && !restates {
            line.push_str(": ");
            line.push_str(&message);
        }
        previous = message;
        cause = err.source();
    }
    line
}

/// Why the node is not healthy. Every variant exits 8.
#[derive(Debug, thiserror::Error)]
pub enum Unhealthy {
    #[error("GET {url}: no answer within {after:?}")]
    Timeout {
        url: String,
        after: std::time::Duration,
    },
    #[error("GET {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: ureq::Error,
    },
    #[error("GET {url}: {status} {reason}")]
    Refused {
        url: String,
        status: u16,
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_its_exit_code() {
        use Op::{Read, Write};
        let table = [
            (Code::NotFound, Read, false, Exit::NotFound),
            (Code::NotFound, Write, false, Exit::NotFound),
            (Code::FailedPrecondition, Write, false, Exit::Precondition),
            (Code::InvalidArgument, Write, true, Exit::Usage),
            (Code::OutOfRange, Read, false, Exit::Usage),
            (Code::Unavailable, Read, false, Exit::Unavailable),
            (Code::Unavailable, Write, true, Exit::Unavailable),
            (Code::ResourceExhausted, Write, true, Exit::Unavailable),
            // A write that may have reached the leader is never "retry".
            (Code::Unavailable, Write, false, Exit::OutcomeUnknown),
            (Code::DeadlineExceeded, Write, false, Exit::OutcomeUnknown),
            (Code::Cancelled, Write, false, Exit::OutcomeUnknown),
            (Code::DeadlineExceeded, Read, false, Exit::Unavailable),
            (Code::Internal, Read, false, Exit::Failure),
            (Code::Internal, Write, false, Exit::Failure),
        ];
        for (code, op, not_proposed, want) in table {
            assert_eq!(
                exit_for(code, op, not_proposed),
                want,
                "{code:?} {op:?} not_proposed={not_proposed}"
            );
        }
    }

    #[test]
    fn the_help_lists_every_exit_code() {
        for exit in [
            Exit::Success,
            Exit::Failure,
            Exit::Usage,
            Exit::NotFound,
            Exit::Precondition,
            Exit::Unavailable,
            Exit::OutcomeUnknown,
            Exit::Disagree,
            Exit::Unhealthy,
            Exit::Denied,
        ] {
            let line = format!("\n  {}  ", exit as u8);
            assert!(EXIT_CODES_HELP.contains(&line), "{exit:?} is documented");
        }
    }

    #[derive(Debug)]
    struct Chain(&'static str, Option<Box<Chain>>);
    impl std::fmt::Display for Chain {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Chain {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn an_error_chain_prints_each_message_once() {
        let link = |text, next| Some(Box::new(Chain(text, next)));
        let tonic_like = Chain(
            "cannot connect to 127.0.0.1:1: transport error",
            link(
                "transport error",
                link(
                    "tcp connect error",
                    link(
                        "tcp connect error",
                        link("Connection refused (os error 111)", None),
                    ),
                ),
            ),
        );
        assert_eq!(
            one_line(&tonic_like),
            "cannot connect to 127.0.0.1:1: transport error: tcp connect error: Connection refused (os error 111)"
        );
        let status_like = Chain(
            "compare-and-swap failed",
            link(
                "code: 'FailedPrecondition', message: \"compare-and-swap failed\"",
                None,
            ),
        );
        assert_eq!(one_line(&status_like), "compare-and-swap failed");
        let plain = Chain("reading the value", link("permission denied", None));
        assert_eq!(one_line(&plain), "reading the value: permission denied");
    }
}
