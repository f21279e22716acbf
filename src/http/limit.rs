//! Rate limits for the visit counter. Anyone who reaches the HTTP port may
//! count a visit, and every visit is a write through Raft on every member:
//! without a limit one client could take the cluster's whole write
//! capacity (and its disk). Visits are limited per client address and
//! overall; past either limit a visit is answered 429 and changes nothing.
//!
//! It owns nothing but the limiters, and never writes.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

/// The address a request came from, as the listener saw it.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

/// Which limit a visit ran into, and when to try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limited {
    Client { retry_after: Duration },
    Overall { retry_after: Duration },
}

impl Limited {
    pub fn retry_after(&self) -> Duration {
        match self {
            Limited::Client { retry_after } | Limited::Overall { retry_after } => *retry_after,
        }
    }
}

impl std::fmt::Display for Limited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limited::Client { .. } => write!(f, "too many visits from this address"),
            Limited::Overall { .. } => write!(f, "too many visits on this node"),
        }
    }
}

pub struct VisitLimits {
    per_client: DefaultKeyedRateLimiter<IpAddr>,
    overall: DefaultDirectRateLimiter,
    clock: DefaultClock,
}

impl VisitLimits {
    /// `per_client` and `overall` visits per second, each also the burst
    /// (`Config::validate` keeps both above 0; 0 would count as 1).
    pub fn new(per_client: u32, overall: u32) -> VisitLimits {
        let per_second = |n: u32| Quota::per_second(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN));
        VisitLimits {
            per_client: RateLimiter::keyed(per_second(per_client)),
            overall: RateLimiter::direct(per_second(overall)),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one visit from `client`'s allowance and the node's.
    pub fn check(&self, client: IpAddr) -> Result<(), Limited> {
        let now = self.clock.now();
        self.per_client
            .check_key(&client)
            .map_err(|n| Limited::Client {
                retry_after: n.wait_time_from(now),
            })?;
        self.overall.check().map_err(|n| Limited::Overall {
            retry_after: n.wait_time_from(now),
        })
    }

    /// Forgets the clients whose allowance is whole again, so the table
    /// does not keep every address that ever visited.
    pub fn forget_idle(&self) {
        self.per_client.retain_recent();
        self.per_client.shrink_to_fit();
    }

    #[cfg(test)]
    fn clients(&self) -> usize {
        self.per_client.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_client: u32, overall: u32) -> VisitLimits {
        VisitLimits::new(per_client, overall)
    }

    #[test]
    fn each_address_has_its_own_allowance_within_the_nodes() {
        let limits = limits(3, 5);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            limits.check(a).unwrap();
        }
        assert!(matches!(limits.check(a), Err(Limited::Client { .. })));
        limits.check(b).unwrap();
        limits.check(b).unwrap();
        let refused = limits.check(b).unwrap_err();
        assert!(matches!(refused, Limited::Overall { .. }), "{refused:?}");
        assert!(refused.retry_after() > Duration::ZERO);
        assert!(refused.retry_after() <= Duration::from_secs(1));
    }

    #[test]
    fn idle_clients_are_forgotten() {
        let limits = limits(1000, 1000);
        limits.check("10.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(limits.clients(), 1);
        std::thread::sleep(Duration::from_millis(20));
        limits.forget_idle();
        assert_eq!(limits.clients(), 0);
    }
}
