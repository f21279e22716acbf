//! raftset: an embedded, replicated key-value store that runs as a
//! Kubernetes StatefulSet.
//!
//! Every node keeps the whole store in sled on its own disk; the nodes form
//! one Raft group (openraft), so every node answers with the same data.
//!
//! ```text
//!   cli ──▶ node (wires the parts, starts and stops them in order)
//!             │
//!   ┌─────────┼──────────────┬───────────────┐
//!   ▼         ▼              ▼               ▼
//!  api       http         cluster         (peer port)
//!  (gRPC)   (visits,      (formation,      raft::service
//!   │        probes,       membership,     cluster::service
//!   │        metrics)      leadership)     Admin for members
//!   └────┬────┘              │
//!        ▼                   ▼
//!      raft (requests: write, read barrier, forwarding;
//!            proposer; peer transport)
//!        │
//!      store (sled: log, vote, state machine; snapshots)
//!        │
//!      ground floor: types, proto, grpc, error, validate, limits, config, metrics, tls,
//!                    reload, auth
//! ```
//!
//! Imports point down only: a part receives the handles it uses (the Raft
//! handle, [`raft::requests::Requests`], a reader, the cluster context),
//! never the node. `ARCHITECTURE.md` walks two requests through the files.
//!
//! Embedding: build a [`Config`], [`Node::start`] it, talk to it through
//! [`Node::client`], stop it with [`Node::shutdown`]; [`Node::stopped`]
//! says when it must stop by itself, and with [`Stop::restart`] that it
//! must be started again. See `examples/`.

pub(crate) mod api;
pub mod auth;
pub mod cli;
pub mod client;
pub(crate) mod cluster;
pub(crate) mod config;
pub(crate) mod error;
pub(crate) mod failpoint;
#[cfg(fuzzing)]
pub mod fuzzing;
#[cfg(all(test, not(fuzzing)))]
mod fuzzing;
pub(crate) mod grpc;
pub(crate) mod http;
pub mod limits;
pub(crate) mod metrics;
pub(crate) mod node;
pub mod proto;
pub(crate) mod raft;
pub(crate) mod reload;
pub(crate) mod stagger;
pub(crate) mod store;
pub mod tls;
pub(crate) mod types;
pub(crate) mod validate;

#[cfg(test)]
mod layering;

pub use client::{Client, ClientError};
pub use cluster::Stop;
pub use config::{Config, ConfigError};
pub use error::{Error, InvalidRequest, Result};
pub use node::{Durability, Node, NodeStats, StartError};
pub use store::StoreError;
pub use types::{Consistency, KeyValue};
