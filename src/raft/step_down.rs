//! A leader stepping down on purpose takes no more proposals and confirms
//! no more reads until leadership has moved.
//!
//! openraft 0.9's followers refuse votes while their leader's lease lasts,
//! and each AppendEntries renews that lease: a heartbeat, a new entry, or
//! the round that confirms a linearizable read. A leader that only stops
//! its heartbeats is still renewing every lease as long as writes arrive,
//! forwarded by its followers or sent to it, so no follower ever campaigns.
//! And its successor must have every entry before it campaigns, or the
//! voters that have more refuse it: no entry may be proposed after the
//! successor is found caught up.
//!
//! So the request path passes this gate for each proposal and each
//! read-index round, and holds a [`Pass`] while it lasts: a proposal's
//! goes with its command into the proposer and is dropped when the log
//! answers the entry, even when the caller gave up before. Whoever steps the
//! leader down shuts the gate, waits until the passes in flight are back
//! ([`StepDown::drained`]), and from then on the log ends where it ends.
//! Requests turned away wait until another node leads (or the gate opens
//! again) and are sent round again. This module only keeps the gate;
//! moving leadership is [`crate::cluster`]'s.

use std::sync::Arc;

use tokio::sync::watch;

/// The gate, shared by the request path (which passes it) and whoever
/// moves leadership (which shuts it). Open by default.
#[derive(Clone)]
pub struct StepDown(Arc<Gate>);

struct Gate {
    shut: watch::Sender<bool>,
    /// Passes handed out and not yet dropped.
    passing: watch::Sender<usize>,
}

impl Default for StepDown {
    fn default() -> StepDown {
        StepDown(Arc::new(Gate {
            shut: watch::Sender::new(false),
            passing: watch::Sender::new(0),
        }))
    }
}

/// Keeps the gate shut until dropped.
#[must_use = "the gate opens again when this is dropped"]
pub struct Stepping(Arc<Gate>);

/// One proposal or read round let through; the gate counts it until it is
/// dropped.
#[must_use = "the pass counts only while it is held"]
pub struct Pass(Arc<Gate>);

impl StepDown {
    /// Shuts the gate until the returned guard is dropped. Passes already
    /// out stay valid: [`StepDown::drained`] waits for them.
    pub fn begin(&self) -> Stepping {
        self.0.shut.send_replace(true);
        Stepping(self.0.clone())
    }

    /// A pass while the gate is open; `None` while it is shut.
    pub fn pass(&self) -> Option<Pass> {
        // Counted before the gate is looked at, and `begin` shuts it before
        // `drained` counts: either this sees the gate shut, or `drained`
        // sees this pass. Only a count back at zero is news to `drained`,
        // so no other change wakes it: this runs for every request.
        self.0.passing.send_if_modified(|n| {
            *n += 1;
            false
        });
        let pass = Pass(self.0.clone());
        (!*self.0.shut.borrow()).then_some(pass)
    }

    /// Resolves once every pass handed out has been dropped.
    pub async fn drained(&self) {
        let mut passing = self.0.passing.subscribe();
        // The sender lives in `self`, so the channel cannot close here.
        let _ = passing.wait_for(|n| *n == 0).await;
    }

    /// Resolves when the gate opens.
    pub async fn over(&self) {
        let mut shut = self.0.shut.subscribe();
        let _ = shut.wait_for(|shut| !*shut).await;
    }
}

impl Drop for Stepping {
    fn drop(&mut self) {
        self.0.shut.send_replace(false);
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        self.0.passing.send_if_modified(|n| {
            *n -= 1;
            *n == 0
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_shut_gate_turns_requests_away_and_waits_for_those_it_let_through() {
        let gate = StepDown::default();
        gate.over().await;
        let early = gate.pass().expect("an open gate lets a request through");

        let stepping = gate.begin();
        assert!(gate.pass().is_none(), "a shut gate turns requests away");
        let drained = tokio::spawn({
            let gate = gate.clone();
            async move { gate.drained().await }
        });
        let reopened = tokio::spawn({
            let gate = gate.clone();
            async move { gate.over().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!drained.is_finished(), "a pass let through is still out");
        drop(early);
        drained.await.unwrap();
        assert!(!reopened.is_finished(), "the gate stays shut meanwhile");

        drop(stepping);
        reopened.await.unwrap();
        assert!(gate.pass().is_some(), "the gate opens again");
    }
}
