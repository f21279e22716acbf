//! `endpoint status` and `endpoint health`: every member at once, as
//! `etcdctl endpoint status --cluster` does. The member list comes from the
//! first endpoint that answers; then each member is asked on its own client
//! address, all at the same time, with the command's timeout each.

use std::time::{Duration, Instant};

use clap::Subcommand;

use super::conn::Conn;
use super::exit::{one_line, CliError, Exit, Op};
use super::output::{self, Probe};
use crate::client::{Client, ClientError, Consistency};
use crate::proto::StatusResponse;

#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// Every member's own status: role, term, leader, log indexes. Exits 5
    /// if a member does not answer.
    Status {
        #[command(flatten)]
        conn: Conn,
    },
    /// Whether each member serves a linearizable read (it knows a leader
    /// that has a quorum), and how long it took. Exits 5 if one does not.
    Health {
        #[command(flatten)]
        conn: Conn,
    },
}

/// The key `endpoint health` reads: any key serves, a read of a missing
/// one still goes through the leader's read barrier.
const HEALTH_KEY: &[u8] = b"raftset/health";

pub async fn run(command: EndpointCommand) -> Result<Exit, CliError> {
    match command {
        EndpointCommand::Status { conn } => {
            let probes =
                probe_all(&conn, |mut client| async move { client.status().await }).await?;
            output::endpoint_status(&probes, conn.format());
            Ok(worst(&probes))
        }
        EndpointCommand::Health { conn } => {
            let probes = probe_all(&conn, |mut client| async move {
                client
                    .get_with(HEALTH_KEY, Consistency::Linearizable)
                    .await
                    .map(|_| ())
            })
            .await?;
            output::endpoint_health(&probes, conn.format());
            Ok(worst(&probes))
        }
    }
}

/// Exit 5 when any member failed to answer.
fn worst<T>(probes: &[Probe<T>]) -> Exit {
    if probes.iter().all(|p| p.answer.is_ok()) {
        Exit::Success
    } else {
        Exit::Unavailable
    }
}

/// Asks every member, in ordinal order, with `ask` on its own address.
async fn probe_all<T, F, Fut>(conn: &Conn, ask: F) -> Result<Vec<Probe<T>>, CliError>
where
    F: Fn(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let status: StatusResponse = conn
        .call(Op::Read, |mut c| async move { c.status().await })
        .await?;
    let mut members = status.members;
    members.sort_by(|a, b| output::by_ordinal(&a.name, &b.name));
    let timeout = Duration::from_secs(conn.timeout_secs);
    let connector = &conn.credentials.connector()?;
    let ask = &ask;
    let probes = members.into_iter().map(|member| async move {
        let started = Instant::now();
        let answer = if member.api_addr.is_empty() {
            Err("no client address on record".to_string())
        } else {
            let asked = async {
                let client = connector.connect(&member.api_addr).await?;
                ask(client.with_timeout(timeout)).await
            };
            asked.await.map_err(|e| one_line(&e))
        };
        Probe {
            took: started.elapsed(),
            member,
            answer,
        }
    });
    Ok(futures::future::join_all(probes).await)
}
