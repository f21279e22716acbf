//! raftset: an embedded, replicated key-value store that runs as a
//! Kubernetes StatefulSet.
//!
//! Every node keeps the whole store in sled on its own disk; the nodes form
//! one Raft group (openraft), so every node answers with the same data.
//!
//! ```text
//!  clients ──gRPC──▶ api ──┐           http (visits, probes, metrics)
//!                          ▼                 │
//!                    node core ◀─────────────┘
//!              (write / read barrier, forwarding)
//!                          │
//!                        raft ──peer gRPC──▶ other nodes
//!                          │
//!                        store (sled: log, vote, state machine; snapshots)
//! ```
//!
//! Modules: [`store`] (durability), [`raft`] (consensus types and peer
//! transport), [`cluster`] (bootstrap and join), [`api`] (client gRPC and the
//! shared request path), [`http`], [`cli`], [`config`], [`node`] (wiring),
//! [`client`] (typed gRPC client).
//!
//! Embedding: build a [`Config`], [`Node::start`] it, talk to it through
//! [`Node::client`], stop it with [`Node::shutdown`]. See `examples/`.

pub mod api;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod error;
pub mod grpc;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod raft;
pub mod store;
pub mod types;

pub use client::{Client, ClientError};
pub use config::Config;
pub use error::{Error, InvalidRequest, Result};
pub use node::Node;

pub mod proto;
