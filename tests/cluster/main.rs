//! Multi-node tests against real `raftset serve` processes. One binary, so
//! the crate links once; every scenario builds on `support`.

mod support;

mod admin;
mod api_errors;
mod client_auth;
mod client_tls;
mod consistency;
mod crash_points;
mod durability;
mod e2e;
mod failover;
mod http_endpoints;
mod lifecycle;
mod local;
mod page;
mod peer_tls;
mod watch;
