//! How client commands reach the cluster: a list of endpoints tried in
//! order, the deadline of each call, and the output format.
//!
//! Failover is decided here and nowhere else. A call moves on to the next
//! endpoint only when moving on cannot apply anything twice: a read (or
//! any call that changes nothing) after any unavailability, a write only
//! when it was never sent (no connection) or the node said it was not
//! proposed. A write that may have reached a leader is reported as
//! "outcome unknown" and never resent.

use std::future::Future;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tonic::Code;

use super::exit::{CliError, Op};
use crate::client::{Client, ClientError};
use crate::config::DEFAULT_ADMIN_ADDR;
use crate::tls::client::{ClientTls, ClientTlsFiles};

/// Where client commands go when neither `--endpoints` nor
/// `RAFTSET_ENDPOINTS` nor the older `RAFTSET_ENDPOINT` says.
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:7000";

/// How a command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Columns for people.
    Table,
    /// The table with more columns (addresses, revisions).
    Wide,
    /// One JSON document (or one per line for `watch`); bytes as base64.
    Json,
    /// The JSON document as YAML.
    Yaml,
}

/// How client commands reach a node, and how they print.
#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// Client gRPC addresses of members, comma-separated, tried in order
    /// when one is unreachable [env: RAFTSET_ENDPOINTS, else
    /// RAFTSET_ENDPOINT; default: 127.0.0.1:7000].
    #[arg(
        long = "endpoints",
        visible_alias = "endpoint",
        value_delimiter = ',',
        value_name = "HOST:PORT,..."
    )]
    pub endpoints: Vec<String>,
    #[command(flatten)]
    pub output: Output,
    #[command(flatten)]
    pub credentials: Credentials,
    /// Give up on each endpoint after this many seconds.
    #[arg(long, default_value_t = 10)]
    pub timeout_secs: u64,
    /// The command's calls need the admin role: with no endpoint named,
    /// they go to the node's loopback admin port, not its client port.
    #[arg(skip)]
    pub admin: bool,
}

/// What a command proves itself with to a node that requires it.
#[derive(Debug, Clone, Args)]
pub struct Credentials {
    /// A file holding the bearer token sent with every call, for nodes
    /// started with `--client-tokens-file`.
    #[arg(long, env = "RAFTSET_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// Speak TLS to the node, trusting the CA in this file (nodes with
    /// `--client-tls-dir`).
    #[arg(long, env = "RAFTSET_CACERT", value_name = "FILE")]
    pub cacert: Option<std::path::PathBuf>,
    /// Present this certificate (with --key) to a node that requires one.
    #[arg(
        long = "cert",
        id = "tls_cert",
        env = "RAFTSET_CERT",
        value_name = "FILE",
        requires_all = ["tls_key", "cacert"]
    )]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The key of --cert.
    #[arg(
        long = "key",
        id = "tls_key",
        env = "RAFTSET_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<std::path::PathBuf>,
}

impl Credentials {
    /// Reads the files once, for every endpoint the command tries.
    pub fn connector(&self) -> Result<Connector, CliError> {
        let tls = match &self.cacert {
            Some(ca) => {
                let files = ClientTlsFiles {
                    ca: ca.clone(),
                    identity: self.tls_cert.clone().zip(self.tls_key.clone()),
                };
                Some(ClientTls::load(&files).map_err(CliError::Tls)?)
            }
            None => None,
        };
        let token = match &self.token_file {
            Some(path) => {
                Some(
                    std::fs::read_to_string(path).map_err(|source| CliError::Input {
                        what: format!("the token file {}", path.display()),
                        source,
                    })?,
                )
            }
            None => None,
        };
        Ok(Connector { tls, token })
    }
}

/// Connects with a command's credentials.
pub struct Connector {
    tls: Option<ClientTls>,
    token: Option<String>,
}

impl Connector {
    /// Connects to `endpoint`, over TLS if asked, the token (if any) on
    /// every call.
    pub async fn connect(&self, endpoint: &str) -> Result<Client, ClientError> {
        let client = Client::connect_with(endpoint, self.tls.as_ref()).await?;
        match &self.token {
            Some(token) => client.with_token(token),
            None => Ok(client),
        }
    }
}

/// How a command prints: `-o FORMAT`, or `--json`.
#[derive(Debug, Clone, Args)]
pub struct Output {
    /// Output format (`-w` as in etcdctl).
    #[arg(
        short = 'o',
        long = "output",
        visible_short_alias = 'w',
        value_enum,
        default_value_t = Format::Table
    )]
    pub output: Format,
    /// Same as `-o json`.
    #[arg(long)]
    pub json: bool,
}

impl Output {
    /// The output format, `--json` counting as `-o json`.
    pub fn format(&self) -> Format {
        if self.json {
            Format::Json
        } else {
            self.output
        }
    }
}

impl Conn {
    pub fn format(&self) -> Format {
        self.output.format()
    }

    /// The endpoints to try: the flag, else `RAFTSET_ENDPOINTS`, else
    /// `RAFTSET_ENDPOINT`, else the local node: its client port, or for an
    /// admin command its admin port (`RAFTSET_LISTEN_ADMIN`, which a
    /// command run in the node's container shares with it).
    pub fn endpoints(&self) -> Vec<String> {
        let local = if self.admin {
            std::env::var("RAFTSET_LISTEN_ADMIN").unwrap_or_else(|_| DEFAULT_ADMIN_ADDR.into())
        } else {
            DEFAULT_ENDPOINT.to_string()
        };
        resolve_endpoints(
            &self.endpoints,
            std::env::var("RAFTSET_ENDPOINTS").ok(),
            std::env::var("RAFTSET_ENDPOINT").ok(),
            local,
        )
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    /// Runs `call` against the first endpoint that answers, failing over
    /// only as the module doc says.
    pub async fn call<T, F, Fut>(&self, op: Op, mut call: F) -> Result<T, CliError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let mut last = None;
        let endpoints = self.endpoints();
        let connector = self.credentials.connector()?;
        for endpoint in &endpoints {
            let result = match connector.connect(endpoint).await {
                Ok(client) => call(client.with_timeout(self.timeout())).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(value) => return Ok(value),
                Err(e) if may_fail_over(&e, op) => last = Some(e),
                Err(source) => return Err(CliError::Call { op, source }),
            }
        }
        let source = last.expect("endpoints() is never empty");
        let failed = CliError::Call { op, source };
        Err(if endpoints.len() > 1 {
            CliError::EveryEndpoint {
                tried: endpoints.join(", "),
                last: Box::new(failed),
            }
        } else {
            failed
        })
    }

    /// Runs `call` on the first endpoint only: for calls about that node
    /// itself (its snapshot, its preStop), which no other node can answer.
    pub async fn call_first<T, F, Fut>(&self, op: Op, call: F) -> Result<T, CliError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let endpoint = self.endpoints().swap_remove(0);
        let connector = self.credentials.connector()?;
        let result = match connector.connect(&endpoint).await {
            Ok(client) => call(client.with_timeout(self.timeout())).await,
            Err(e) => Err(e),
        };
        result.map_err(|source| CliError::Call { op, source })
    }
}

/// Whether a failed call may be sent to the next endpoint.
fn may_fail_over(err: &ClientError, op: Op) -> bool {
    let unavailable = matches!(err.code(), Code::Unavailable | Code::ResourceExhausted);
    match op {
        Op::Read => unavailable || err.code() == Code::DeadlineExceeded,
        Op::Write => unavailable && err.not_proposed(),
    }
}

fn resolve_endpoints(
    flag: &[String],
    list: Option<String>,
    single: Option<String>,
    local: String,
) -> Vec<String> {
    let split = |text: &str| -> Vec<String> {
        text.split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_string)
            .collect()
    };
    let from_flag: Vec<String> = flag.iter().flat_map(|e| split(e)).collect();
    [
        from_flag,
        list.as_deref().map(split).unwrap_or_default(),
        single.as_deref().map(split).unwrap_or_default(),
    ]
    .into_iter()
    .find(|endpoints| !endpoints.is_empty())
    .unwrap_or_else(|| vec![local])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_come_from_the_flag_then_either_variable_then_the_local_node() {
        let s = |v: &[&str]| v.iter().map(|e| e.to_string()).collect::<Vec<_>>();
        let some = |t: &str| Some(t.to_string());
        let local = || "local:1".to_string();
        assert_eq!(
            resolve_endpoints(&s(&["a:1", "b:2"]), some("c:3"), some("d:4"), local()),
            s(&["a:1", "b:2"])
        );
        assert_eq!(
            resolve_endpoints(&[], some("c:3, e:5"), some("d:4"), local()),
            s(&["c:3", "e:5"])
        );
        assert_eq!(
            resolve_endpoints(&[], None, some("d:4"), local()),
            s(&["d:4"])
        );
        assert_eq!(
            resolve_endpoints(&[], some(""), None, local()),
            s(&["local:1"])
        );
    }

    #[test]
    fn admin_commands_go_to_the_admin_port_and_the_others_to_the_client_port() {
        let parse = |args: &[&str]| {
            let mut cli = <super::super::Cli as clap::Parser>::parse_from(
                std::iter::once("raftset").chain(args.iter().copied()),
            );
            cli.command.admin_conn().is_some()
        };
        for admin in [
            &["backup"][..],
            &["remove", "1"],
            &["transfer-leader"],
            &["snapshot"],
            &["verify"],
            &["pre-stop"],
            &["force-new-cluster"],
        ] {
            assert!(parse(admin), "{admin:?} goes to the admin port");
        }
        for client in [
            &["get", "k"][..],
            &["put", "k", "v"],
            &["status"],
            &["members"],
        ] {
            assert!(!parse(client), "{client:?} goes to the client port");
        }
    }

    #[test]
    fn only_a_write_that_was_never_proposed_fails_over() {
        let refused = ClientError::Status(tonic::Status::unavailable("no leader"));
        let mut not_proposed = tonic::Status::unavailable("no leader");
        not_proposed.metadata_mut().insert(
            crate::error::NOT_PROPOSED_HEADER,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        let not_proposed = ClientError::Status(not_proposed);
        let lost = ClientError::Status(tonic::Status::deadline_exceeded("outcome unknown"));
        let lost_cas = ClientError::Status(tonic::Status::failed_precondition("cas"));

        assert!(may_fail_over(&refused, Op::Read));
        assert!(may_fail_over(&lost, Op::Read));
        assert!(!may_fail_over(&lost_cas, Op::Read));
        assert!(may_fail_over(&not_proposed, Op::Write));
        assert!(
            !may_fail_over(&refused, Op::Write),
            "may have been proposed"
        );
        assert!(!may_fail_over(&lost, Op::Write));
        assert!(!may_fail_over(&lost_cas, Op::Write));
    }
}
