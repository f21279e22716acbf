//! TLS on the client ports: the node's side (`--client-tls-dir` for gRPC,
//! `--http-tls-dir` for HTTP: a certificate, and client certificates
//! required when the directory holds a CA), and the gRPC callers' side
//! (the CLI's and the Rust client's `--cacert`, `--cert`, `--key`).
//!
//! Unlike the peer port, clients may speak TLS 1.2 as well as 1.3: the
//! callers are whatever gRPC tools and libraries users have.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};

use super::{
    read_identity, read_roots, Acceptor, TlsError, CA_FILE, SHARED_CERT_FILE, SHARED_KEY_FILE,
};
use crate::reload::Reloading;

/// The client port's server side, from a directory (a mounted Secret):
/// `tls.crt` and `tls.key`, and when `ca.crt` is there too, client
/// certificates from that CA are required. Re-read when the files change.
#[derive(Clone)]
pub struct ClientPortTls {
    config: Arc<Reloading<ServerConfig, TlsError>>,
    protocol: Protocol,
}

/// What a client port speaks over TLS.
#[derive(Debug, Clone, Copy)]
pub enum Protocol {
    /// gRPC: HTTP/2.
    Grpc,
    /// The HTTP port: HTTP/1.1.
    Http,
}

impl ClientPortTls {
    pub fn load(dir: &Path, protocol: Protocol) -> Result<ClientPortTls, TlsError> {
        let (cert, key, ca) = (
            dir.join(SHARED_CERT_FILE),
            dir.join(SHARED_KEY_FILE),
            dir.join(CA_FILE),
        );
        let paths = vec![cert.clone(), key.clone(), ca.clone()];
        let dir = dir.to_path_buf();
        let config = Reloading::open("client port certificates", paths, move || {
            server_config(&dir, &cert, &key, &ca, protocol)
        })?;
        Ok(ClientPortTls {
            config: Arc::new(config),
            protocol,
        })
    }

    /// The handshake of the port's connections.
    pub fn acceptor(&self) -> Acceptor {
        let config = self.config.clone();
        Acceptor {
            what: match self.protocol {
                Protocol::Grpc => "client gRPC",
                Protocol::Http => "HTTP",
            },
            config: Arc::new(move || config.get()),
        }
    }
}

fn server_config(
    dir: &Path,
    cert: &Path,
    key: &Path,
    ca: &Path,
    protocol: Protocol,
) -> Result<ServerConfig, TlsError> {
    let (chain, key) = read_identity(cert, key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config_err = |e: &dyn std::fmt::Display| TlsError::Config {
        dir: dir.to_path_buf(),
        detail: e.to_string(),
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_err(&e))?;
    let builder = if ca.exists() {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(read_roots(ca)?), provider)
                .build()
                .map_err(|e| config_err(&e))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| config_err(&e))?;
    config.alpn_protocols = vec![match protocol {
        Protocol::Grpc => b"h2".to_vec(),
        Protocol::Http => b"http/1.1".to_vec(),
    }];
    Ok(config)
}

/// What a caller needs to reach a client port that speaks TLS: the CA
/// that signed the node's certificate, and its own certificate and key
/// when the node requires one.
#[derive(Debug, Clone)]
pub struct ClientTlsFiles {
    pub ca: PathBuf,
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// The caller's side, loaded from [`ClientTlsFiles`].
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls")
    }
}

impl ClientTls {
    pub fn load(files: &ClientTlsFiles) -> Result<ClientTls, TlsError> {
        let roots = read_roots(&files.ca)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let dir = files.ca.parent().unwrap_or(Path::new(".")).to_path_buf();
        let config_err = |e: rustls::Error| TlsError::Config {
            dir: dir.clone(),
            detail: e.to_string(),
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(config_err)?
            .with_root_certificates(roots);
        let mut config = match &files.identity {
            Some((cert, key)) => {
                let (chain, key) = read_identity(cert, key)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(config_err)?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ClientTls {
            config: Arc::new(config),
        })
    }

    /// The configuration each connection is made with ([`super::Dial`]).
    pub(super) fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }
}
