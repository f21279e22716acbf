//! `raftset healthcheck`: the local node's HTTP probe as an exit status,
//! for Docker's `HEALTHCHECK` and docker-compose, where the distroless
//! image has no shell or curl to ask it with.
//!
//! By default it asks what the StatefulSet's readiness probe asks,
//! `/readyz?noleader`: is this node a member, caught up? Not whether a
//! leader is known. A container's health is read both as readiness
//! (`depends_on: condition: service_healthy` waits for it) and as liveness
//! (Swarm and autoheal-style tools restart unhealthy containers); a check
//! that needed a leader would restart every node of a cluster that lost its
//! quorum, and keep a restarted node 0 that waits for its peers from
//! letting them start. `--leader` asks plain `/readyz`, `--live` `/healthz`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use clap::Args;

use super::exit::{CliError, Unhealthy};

/// What to ask the node.
#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// The node's probe address; a wildcard host (0.0.0.0, [::]) is asked
    /// on loopback, so the node's own --listen-probes setting works as it is.
    #[arg(
        long,
        env = "RAFTSET_LISTEN_PROBES",
        default_value = "127.0.0.1:8081",
        value_name = "HOST:PORT"
    )]
    pub addr: SocketAddr,
    /// Liveness (`/healthz`): the process serves and Raft runs.
    #[arg(long, conflicts_with = "leader")]
    pub live: bool,
    /// Readiness with a known leader (`/readyz`): serves clients now.
    #[arg(long)]
    pub leader: bool,
    /// Give up after this many seconds (keep it below the HEALTHCHECK's
    /// --timeout, so the line saying why reaches `docker inspect`).
    #[arg(long, default_value_t = 2)]
    pub timeout_secs: u64,
}

impl HealthcheckArgs {
    fn url(&self) -> String {
        let path = if self.live {
            "/healthz"
        } else if self.leader {
            "/readyz"
        } else {
            "/readyz?noleader"
        };
        format!("http://{}{path}", probe_addr(self.addr))
    }
}

/// Asks the probe; `Ok` when it answers 2xx within the timeout.
pub async fn run(args: HealthcheckArgs) -> Result<(), CliError> {
    let url = args.url();
    let timeout = Duration::from_secs(args.timeout_secs);
    tokio::task::spawn_blocking(move || probe(url, timeout))
        .await
        .expect("the probe does not panic")
        .map_err(CliError::Unhealthy)
}

fn probe(url: String, timeout: Duration) -> Result<(), Unhealthy> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        // The node is local: an HTTP_PROXY in the environment must not
        // send its probe elsewhere.
        .proxy(None)
        .build()
        .into();
    let mut response = match agent.get(&url).call() {
        Ok(response) => response,
        Err(ureq::Error::Timeout(_)) => {
            return Err(Unhealthy::Timeout {
                url,
                after: timeout,
            })
        }
        Err(source) => return Err(Unhealthy::Unreachable { url, source }),
    };
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    // The probes say why in their first line; a body that cannot be read
    // still leaves the status.
    let body = response
        .body_mut()
        .with_config()
        .limit(4096)
        .read_to_string()
        .unwrap_or_default();
    let reason = body
        .lines()
        .next()
        .filter(|l| !l.trim().is_empty())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or(""));
    Err(Unhealthy::Refused {
        url,
        status: status.as_u16(),
        reason: reason.trim().to_string(),
    })
}

/// Where to reach a node that listens on `listen`: a wildcard is not an
/// address to connect to, so the probe uses loopback of the same family.
fn probe_addr(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listen_address_is_probed_on_loopback() {
        for (listen, probed) in [
            ("0.0.0.0:8080", "127.0.0.1:8080"),
            ("[::]:9090", "[::1]:9090"),
            ("127.3.0.1:8081", "127.3.0.1:8081"),
            ("10.0.0.5:8080", "10.0.0.5:8080"),
        ] {
            assert_eq!(
                probe_addr(listen.parse().unwrap()),
                probed.parse::<SocketAddr>().unwrap(),
                "{listen}"
            );
        }
    }

    #[test]
    fn each_flag_asks_its_probe() {
        let args = |live, leader| HealthcheckArgs {
            addr: "0.0.0.0:8080".parse().unwrap(),
            live,
            leader,
            timeout_secs: 2,
        };
        assert_eq!(
            args(false, false).url(),
            "http://127.0.0.1:8080/readyz?noleader"
        );
        assert_eq!(args(false, true).url(), "http://127.0.0.1:8080/readyz");
        assert_eq!(args(true, false).url(), "http://127.0.0.1:8080/healthz");
    }
}
