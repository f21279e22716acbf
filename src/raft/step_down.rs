//! A leader stepping down on purpose takes no more proposals and confirms
//! no more reads until leadership has moved.
//!
//! openraft 0.9's followers refuse votes while their leader's lease lasts,
//! and each AppendEntries renews that lease: a heartbeat, a new entry, or
//! the round that confirms a linearizable read. A leader that only stops
//! its heartbeats is still renewing every lease as long as writes arrive,
//! forwarded by its followers or sent to it, so no follower ever campaigns.
//! While the gate is shut the request path instead holds each write and
//! each read-index round until another node leads (or the gate opens
//! again), then sends it round again to whoever leads by then. This module
//! only keeps the gate; moving leadership is [`crate::cluster`]'s.

use std::sync::Arc;

use tokio::sync::watch;

/// The gate, shared by the request path (which waits at it) and whoever
/// moves leadership (which shuts it). Open by default.
#[derive(Clone, Default)]
pub struct StepDown(Arc<watch::Sender<bool>>);

/// Keeps the gate shut until dropped.
#[must_use = "the gate opens again when this is dropped"]
pub struct Stepping(StepDown);

impl StepDown {
    /// Shuts the gate until the returned guard is dropped.
    pub fn begin(&self) -> Stepping {
        self.0.send_replace(true);
        Stepping(self.clone())
    }

    pub fn is_stepping_down(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves when the gate opens.
    pub async fn over(&self) {
        let mut shut = self.0.subscribe();
        // The sender lives in `self`, so the channel cannot close here.
        let _ = shut.wait_for(|shut| !*shut).await;
    }
}

impl Drop for Stepping {
    fn drop(&mut self) {
        self.0 .0.send_replace(false);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_gate_is_shut_while_a_guard_lives() {
        let gate = StepDown::default();
        assert!(!gate.is_stepping_down());
        gate.over().await;

        let stepping = gate.begin();
        assert!(gate.is_stepping_down());
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.over().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "a shut gate held the waiter");
        drop(stepping);
        waiting.await.unwrap();
        assert!(!gate.is_stepping_down());
    }
}
