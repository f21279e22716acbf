//! The failover measurement: a light closed-loop put load over every member
//! of a fresh cluster, `kill -9` of the leader, and the time from the kill
//! to the first put a surviving member acknowledges; then the time until
//! puts flow at a steady rate again. The issue asks for the first at most
//! etcd's, both sides at the same heartbeat (100 ms) and election timeout
//! (1 s, drawn up to 2 s on both). The same load measures a hand-over: the
//! leader stopped with SIGTERM, as a rolling restart stops it, and the
//! longest time in which no put was acknowledged (the issue: less than one
//! election timeout).
//!
//! Each put has a deadline of one heartbeat: a put forwarded to the dead
//! leader is never answered, and without a deadline its worker would wait
//! for the server's own timeout (etcd's is 7 s here) instead of trying
//! again, and measure that. After a failure or a missed deadline the worker
//! moves to the next member, so workers leave the dead member and keep
//! trying the survivors, as a client given every endpoint does.
//!
//! Only a put *sent* after the kill counts as the first acknowledgement: a
//! put the old leader committed just before it died may still be answered
//! a moment later, and says nothing about the new leader.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::driver::{key, Data, Failures, Store};

/// Puts outstanding: light, so that the time measured is the election's
/// and not a queue's.
pub const IN_FLIGHT: usize = 8;
/// A put's deadline: one heartbeat. A put on a healthy cluster takes a few
/// milliseconds here, and the first acknowledgement is seen at most this
/// long after the cluster takes puts again.
pub const PUT_DEADLINE: Duration = Duration::from_millis(100);
/// The pause after a put that failed at once (a refused connection, no
/// leader known), so that a worker does not spin on a dead member.
const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// Load before the kill: the connections are warm, and its last
/// [`RATE_WINDOW`] is the rate the recovery is held against.
pub const BEFORE_KILL: Duration = Duration::from_millis(1500);
/// How long a rate is measured over, before the kill and after it.
pub const RATE_WINDOW: Duration = Duration::from_secs(1);
/// Steadiness is judged in slices this long.
pub const SLICE: Duration = Duration::from_millis(100);
/// Steady again: every slice of a whole [`RATE_WINDOW`] acknowledges at
/// least this share of the puts a slice did before the kill (the survivors
/// carry the dead member's workers too, so the rate may differ somewhat).
pub const STEADY_SHARE: f64 = 0.5;
/// How long after the kill the survivors may take to acknowledge a put
/// before the trial gives up (etcd's request timeout here is 7 s).
const FIRST_ACK_DEADLINE: Duration = Duration::from_secs(20);
/// How long after the first acknowledgement the rate may take to steady
/// before the trial stops without a steady time.
const STEADY_DEADLINE: Duration = Duration::from_secs(5);

/// One acknowledged put, as times since the load started.
#[derive(Debug, Clone, Copy)]
struct Ack {
    sent: Duration,
    acked: Duration,
}

/// What the acknowledgements around the kill show.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Recovery {
    /// Puts acknowledged per second over the [`RATE_WINDOW`] before the kill.
    pub puts_per_sec_before: f64,
    /// From the kill to the first acknowledgement of a put sent after it.
    pub first_ack_ms: Option<f64>,
    /// From the kill to the start of the first [`RATE_WINDOW`], from the
    /// first acknowledgement on, in which every slice is steady.
    pub steady_ms: Option<f64>,
    /// Puts acknowledged per second in that window.
    pub puts_per_sec_after: Option<f64>,
    /// The longest time, from the kill until the steady window ends (or
    /// the recording does), in which no put was acknowledged: the pause
    /// writes saw.
    pub longest_pause_ms: Option<f64>,
}

/// A trial: the member killed, the recovery, and what failed meanwhile.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Observed {
    /// The index of the member that was leader and was stopped.
    pub killed: usize,
    #[serde(flatten)]
    pub recovery: Recovery,
    /// Puts that failed (mostly at the dead member, or at a survivor that
    /// knew no leader), and the first such error.
    pub errors: u64,
    pub first_error: Option<String>,
    /// Puts abandoned at their deadline.
    pub missed_deadlines: u64,
    /// The load's whole length.
    pub seconds: f64,
}

/// Runs the load over `stores`, calls `kill` after [`BEFORE_KILL`] (it
/// kills the leader and returns its index and the instant of the kill),
/// and goes on until the rate is steady again or a deadline passes.
pub async fn run<S, K>(stores: &[S], data: Data, kill: K) -> anyhow::Result<Observed>
where
    S: Store,
    K: Future<Output = anyhow::Result<(usize, Instant)>>,
{
    let started = Instant::now();
    let shared = Arc::new(Shared::default());
    let value = vec![b'x'; data.value_size];
    let mut workers = Vec::with_capacity(IN_FLIGHT);
    for w in 0..IN_FLIGHT {
        let mut stores = stores.to_vec();
        let (shared, value) = (shared.clone(), value.clone());
        workers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::from_os_rng();
            let mut member = w % stores.len();
            while !shared.stop.load(Ordering::Relaxed) {
                let k = key(rng.random_range(0..data.keyspace));
                let sent = started.elapsed();
                let put = stores[member].put(k, value.clone());
                match tokio::time::timeout(PUT_DEADLINE, put).await {
                    Ok(Ok(())) => {
                        let acked = started.elapsed();
                        shared
                            .acks
                            .lock()
                            .expect("not poisoned")
                            .push(Ack { sent, acked });
                        continue;
                    }
                    Ok(Err(e)) => {
                        shared.failures.record(e);
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    Err(_) => {
                        shared.missed_deadlines.fetch_add(1, Ordering::Relaxed);
                    }
                }
                member = (member + 1) % stores.len();
            }
        }));
    }
    tokio::time::sleep(BEFORE_KILL).await;
    let killed = kill.await;
    if let Ok((_, at)) = &killed {
        wait_for_recovery(&shared, started, at.duration_since(started)).await;
    }
    shared.stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.await;
    }
    let (killed, at) = killed?;
    let kill_at = at.duration_since(started);
    let acks = shared.acks.lock().expect("not poisoned").clone();
    let (errors, first_error) = shared.failures.take();
    let seconds = started.elapsed();
    Ok(Observed {
        killed,
        recovery: recovery(&acks, kill_at, seconds),
        errors,
        first_error,
        missed_deadlines: shared.missed_deadlines.load(Ordering::Relaxed),
        seconds: seconds.as_secs_f64(),
    })
}

/// Returns once the acknowledgements show a steady rate again, or a
/// deadline passed.
async fn wait_for_recovery(shared: &Shared, started: Instant, kill_at: Duration) {
    loop {
        tokio::time::sleep(SLICE).await;
        let now = started.elapsed();
        let acks = shared.acks.lock().expect("not poisoned").clone();
        let seen = recovery(&acks, kill_at, now);
        if seen.steady_ms.is_some() {
            return;
        }
        let deadline = match seen.first_ack_ms {
            None => FIRST_ACK_DEADLINE,
            Some(first) => ms(first) + STEADY_DEADLINE + RATE_WINDOW,
        };
        if now.saturating_sub(kill_at) > deadline {
            return;
        }
    }
}

/// What `acks`, recorded until `until`, show about a kill at `kill_at`.
fn recovery(acks: &[Ack], kill_at: Duration, until: Duration) -> Recovery {
    let window_before = kill_at.saturating_sub(RATE_WINDOW);
    let before = acks
        .iter()
        .filter(|a| a.acked >= window_before && a.acked < kill_at)
        .count();
    let puts_per_sec_before = before as f64 / (kill_at - window_before).as_secs_f64().max(1e-9);
    let Some(first) = acks
        .iter()
        .filter(|a| a.sent >= kill_at)
        .map(|a| a.acked)
        .min()
    else {
        return Recovery {
            puts_per_sec_before,
            longest_pause_ms: Some(millis(until.saturating_sub(kill_at))),
            ..Recovery::default()
        };
    };
    let mut after: Vec<Duration> = acks
        .iter()
        .map(|a| a.acked)
        .filter(|&t| t >= first)
        .collect();
    after.sort_unstable();
    let count = |from: Duration, to: Duration| {
        after.partition_point(|&t| t < to) - after.partition_point(|&t| t < from)
    };
    let needed = puts_per_sec_before * SLICE.as_secs_f64() * STEADY_SHARE;
    let slices = (RATE_WINDOW.as_nanos() / SLICE.as_nanos()) as u32;
    let mut start = first;
    let steady = loop {
        if start + RATE_WINDOW > until {
            break None;
        }
        let all_steady = (0..slices).all(|i| {
            let from = start + SLICE * i;
            count(from, from + SLICE) as f64 >= needed
        });
        if all_steady {
            break Some(start);
        }
        start += SLICE;
    };
    let end = steady.map_or(until, |s| s + RATE_WINDOW);
    let mut longest_pause = Duration::ZERO;
    let mut last = kill_at;
    let mut acked: Vec<Duration> = acks.iter().map(|a| a.acked).collect();
    acked.sort_unstable();
    for &t in acked.iter().filter(|&&t| t >= kill_at && t <= end) {
        longest_pause = longest_pause.max(t - last);
        last = t;
    }
    longest_pause = longest_pause.max(end.saturating_sub(last));
    Recovery {
        puts_per_sec_before,
        longest_pause_ms: Some(millis(longest_pause)),
        first_ack_ms: Some(millis(first - kill_at)),
        steady_ms: steady.map(|s| millis(s - kill_at)),
        puts_per_sec_after: steady
            .map(|s| count(s, s + RATE_WINDOW) as f64 / RATE_WINDOW.as_secs_f64()),
    }
}

fn millis(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1e6
}

fn ms(millis: f64) -> Duration {
    Duration::from_secs_f64(millis / 1000.0)
}

/// What the workers share.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    acks: Mutex<Vec<Ack>>,
    failures: Failures,
    missed_deadlines: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const KILL: Duration = Duration::from_secs(2);

    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// An acknowledgement every `every` ms from `from` to `to`, each put
    /// sent 2 ms before.
    fn acks(from: u64, to: u64, every: u64) -> Vec<Ack> {
        (from..to)
            .step_by(every as usize)
            .map(|t| Ack {
                sent: at(t.saturating_sub(2)),
                acked: at(t),
            })
            .collect()
    }

    /// Acknowledgements recorded until `until`, and the first
    /// acknowledgement and the steady rate they should show, in ms after
    /// the kill.
    struct Case {
        acks: Vec<Ack>,
        until: u64,
        first: Option<f64>,
        steady: Option<f64>,
        pause: f64,
    }

    #[test]
    fn recovery_after_a_kill() {
        let late_answer = Ack {
            sent: at(1999),
            acked: at(2001),
        };
        let cases = [
            // No put from 2 s to 3.2 s, then the same rate as before.
            Case {
                acks: [acks(0, 2000, 5), acks(3200, 5000, 5)].concat(),
                until: 5000,
                first: Some(1200.0),
                steady: Some(1200.0),
                pause: 1200.0,
            },
            // A put sent before the kill and answered just after it is not
            // the first acknowledgement.
            Case {
                acks: [acks(0, 2000, 5), vec![late_answer], acks(3200, 5000, 5)].concat(),
                until: 5000,
                first: Some(1200.0),
                steady: Some(1200.0),
                pause: 1199.0,
            },
            // A quarter of the rate for half a second first.
            Case {
                acks: [acks(0, 2000, 5), acks(3200, 3700, 20), acks(3700, 5000, 5)].concat(),
                until: 5000,
                first: Some(1200.0),
                steady: Some(1700.0),
                pause: 1200.0,
            },
            // Recorded too briefly after the first acknowledgement to tell.
            Case {
                acks: [acks(0, 2000, 5), acks(3200, 4000, 5)].concat(),
                until: 4000,
                first: Some(1200.0),
                steady: None,
                pause: 1200.0,
            },
            // Writes never stopped: the pause is the time between two
            // acknowledgements.
            Case {
                acks: acks(0, 4700, 5),
                until: 5000,
                first: Some(5.0),
                steady: Some(5.0),
                pause: 5.0,
            },
            // Nothing after the kill.
            Case {
                acks: acks(0, 2000, 5),
                until: 5000,
                first: None,
                steady: None,
                pause: 3000.0,
            },
        ];
        for (i, case) in cases.into_iter().enumerate() {
            let r = recovery(&case.acks, KILL, at(case.until));
            let expected = (case.first, case.steady);
            assert_eq!((r.first_ack_ms, r.steady_ms), expected, "case {i}");
            assert_eq!(r.longest_pause_ms, Some(case.pause), "case {i}");
            assert_eq!(r.puts_per_sec_before, 200.0, "case {i}");
            let after = case.steady.map(|_| 200.0);
            assert_eq!(r.puts_per_sec_after, after, "case {i}");
        }
    }
}
