//! Recording a client history for the linearizability checker: one event per
//! operation (invoke time, completion time or none, outcome), with times
//! taken from one monotonic clock shared by every client.
//!
//! How a gRPC error becomes an outcome follows the README's error table:
//! only an answer that says nothing was applied is a definite failure
//! (`Fail`); anything that may have reached a leader is `Unknown` and may
//! take effect at any later time.

use std::sync::Mutex;
use std::time::Instant;

use raftset::ClientError;
use tonic::Code;

use super::linearizability::{Event, History, OkValue, Op, Outcome};

/// What the README's table says an error means for a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Rejected before it was proposed: it never takes effect.
    Failed,
    /// Proposed (or maybe proposed): it may take effect at any later time.
    Unknown,
}

/// Classifies an error of a write (or a read: for reads the distinction
/// does not matter, an unanswered read constrains nothing).
///
/// - `INVALID_ARGUMENT`, `OUT_OF_RANGE`, `FAILED_PRECONDITION`: rejected,
///   nothing changed.
/// - `RESOURCE_EXHAUSTED`: too many pending proposals, "not proposed".
/// - `UNAVAILABLE` is a definite failure only when the message says the
///   request was not proposed (no leader, no quorum) or when the client never
///   connected; a broken connection or "shutting down" may have reached the
///   leader first, so it is unknown.
/// - `DEADLINE_EXCEEDED` and everything else: outcome unknown.
pub fn classify(error: &ClientError) -> ErrorClass {
    if let ClientError::Connect { .. } = error {
        return ErrorClass::Failed;
    }
    match error.code() {
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => ErrorClass::Failed,
        Code::ResourceExhausted => ErrorClass::Failed,
        Code::Unavailable if says_not_proposed(&error.to_string()) => ErrorClass::Failed,
        _ => ErrorClass::Unknown,
    }
}

/// The README's wording for "safe to retry, nothing was proposed".
pub fn says_not_proposed(message: &str) -> bool {
    message.contains("not proposed")
}

/// Counts of outcomes, for summaries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub ok: usize,
    pub failed: usize,
    pub unknown: usize,
}

impl Tally {
    pub fn total(&self) -> usize {
        self.ok + self.failed + self.unknown
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} ok, {} fail, {} unknown)",
            self.total(),
            self.ok,
            self.failed,
            self.unknown
        )
    }
}

/// A thread-safe history with one monotonic clock.
pub struct Recorder {
    start: Instant,
    events: Mutex<Vec<Event>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            start: Instant::now(),
            events: Mutex::new(Vec::new()),
        }
    }

    /// Nanoseconds since the recorder started: take it right before sending
    /// a request (invoke) and right after its answer (complete).
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Records a completed operation (`Ok` or `Fail`) or one whose outcome is
    /// unknown (no completion time).
    pub fn record(&self, client: u64, key: &[u8], op: Op, invoke: u64, outcome: Outcome) {
        let complete = match outcome {
            Outcome::Unknown => None,
            _ => Some(self.now().max(invoke)),
        };
        self.events.lock().unwrap().push(Event {
            client,
            key: key.to_vec(),
            op,
            invoke,
            complete,
            outcome,
        });
    }

    /// Records the result of a call: `ok` maps the success value; an error
    /// is classified with [`classify`].
    pub fn record_result<T>(
        &self,
        client: u64,
        key: &[u8],
        op: Op,
        invoke: u64,
        result: &Result<T, ClientError>,
        ok: impl FnOnce(&T) -> OkValue,
    ) -> Outcome {
        let outcome = match result {
            Ok(value) => Outcome::Ok(ok(value)),
            // A lost compare-and-swap is an answer, not a failure.
            Err(e) if matches!(op, Op::Cas { .. }) && e.code() == Code::FailedPrecondition => {
                Outcome::Ok(OkValue::CasResult(false))
            }
            Err(e) => match classify(e) {
                ErrorClass::Failed => Outcome::Fail,
                ErrorClass::Unknown => Outcome::Unknown,
            },
        };
        self.record(client, key, op, invoke, outcome.clone());
        outcome
    }

    /// Outcomes of the operations invoked in `[from, to)` (recorder time).
    pub fn tally_between(&self, from: u64, to: u64) -> Tally {
        let events = self.events.lock().unwrap();
        let mut tally = Tally::default();
        for e in events.iter().filter(|e| e.invoke >= from && e.invoke < to) {
            match e.outcome {
                Outcome::Ok(_) => tally.ok += 1,
                Outcome::Fail => tally.failed += 1,
                Outcome::Unknown => tally.unknown += 1,
            }
        }
        tally
    }

    pub fn tally(&self) -> Tally {
        self.tally_between(0, u64::MAX)
    }

    /// Acknowledged writes (put or swapped compare-and-swap) completed in
    /// `[from, to)`.
    pub fn acknowledged_writes_between(&self, from: u64, to: u64) -> usize {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .filter(|e| e.complete.is_some_and(|c| c >= from && c < to))
            .filter(|e| {
                matches!(
                    e.outcome,
                    Outcome::Ok(OkValue::Written) | Outcome::Ok(OkValue::CasResult(true))
                )
            })
            .count()
    }

    /// The history so far, in recording order.
    pub fn history(&self) -> History {
        History {
            events: self.events.lock().unwrap().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_is_a_failure_only_when_nothing_was_proposed() {
        let not_proposed = ClientError::Status(tonic::Status::unavailable(
            "no leader is known (no quorum?); the request was not proposed and can be retried",
        ));
        assert_eq!(classify(&not_proposed), ErrorClass::Failed);
        let broken = ClientError::Status(tonic::Status::unavailable("transport error"));
        assert_eq!(classify(&broken), ErrorClass::Unknown);
        let shutting_down =
            ClientError::Status(tonic::Status::unavailable("node is shutting down"));
        assert_eq!(classify(&shutting_down), ErrorClass::Unknown);
        let deadline = ClientError::Status(tonic::Status::deadline_exceeded("outcome unknown"));
        assert_eq!(classify(&deadline), ErrorClass::Unknown);
        let overloaded = ClientError::Status(tonic::Status::resource_exhausted(
            "too many proposals in flight (limit 1); the request was not proposed",
        ));
        assert_eq!(classify(&overloaded), ErrorClass::Failed);
    }

    #[test]
    fn a_lost_compare_and_swap_is_an_answer() {
        let recorder = Recorder::new();
        let invoke = recorder.now();
        let result: Result<u64, ClientError> = Err(ClientError::Status(
            tonic::Status::failed_precondition("compare-and-swap failed"),
        ));
        let op = Op::Cas {
            expected: Some(b"a".to_vec()),
            new: b"b".to_vec(),
        };
        let outcome = recorder.record_result(1, b"k", op, invoke, &result, |_| OkValue::Written);
        assert_eq!(outcome, Outcome::Ok(OkValue::CasResult(false)));
        let history = recorder.history();
        assert!(history.events[0].complete.is_some());
    }
}
