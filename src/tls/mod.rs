//! TLS with rustls: mutual TLS on the peer port (TLS 1.3 only), TLS on
//! the client gRPC port ([`client`]), and every gRPC connection, accepted
//! or made.
//!
//! Owns: the accepting side of the gRPC listeners ([`incoming`]: Nagle off,
//! a cap on open connections, a TLS handshake where the port speaks TLS,
//! with the certificate the caller presented, and their writes gathered
//! into fewer syscalls, see [`gather`]); reading a CA, a certificate
//! and a key from a directory (a mounted Secret) and reading them again
//! when they change, so a rotated Secret is used without a restart; the
//! connecting side ([`Dial`]: the channels to peers and to client ports,
//! Nagle off and writes gathered there too, over TLS where asked); and
//! the one identity question the services ask, whether a certificate
//! names a host.
//! [`issue`] makes a CA and certificates for `raftset certs`, `raftset
//! local --tls` and the tests.
//!
//! Never: decides who may do what with a proven identity (the peer
//! services and [`crate::auth`] do).
//!
//! Reloading as etcd does ([`crate::reload`]): every new connection,
//! accepted or made, uses the files as they are then. Connections already
//! open keep the certificate they were made with.

pub mod client;
mod gather;
pub mod issue;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

use crate::reload::Reloading;

/// The CA bundle's file name in the directory (cert-manager's too).
pub const CA_FILE: &str = "ca.crt";
/// The certificate and key every pod may share (cert-manager's names),
/// used when the directory holds no files named after the node.
pub const SHARED_CERT_FILE: &str = "tls.crt";
pub const SHARED_KEY_FILE: &str = "tls.key";
/// How long a peer has to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
    #[error("the peer TLS directory {dir} holds neither {name}.crt and {name}.key nor tls.crt and tls.key")]
    NoCertificate { dir: PathBuf, name: String },
    #[error("the certificate and key in {dir} do not make a TLS configuration: {detail}")]
    Config { dir: PathBuf, detail: String },
}

/// The files one node's peer TLS is made of.
#[derive(Debug, Clone)]
struct Files {
    dir: PathBuf,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    /// `<name>.crt` and `<name>.key` when the directory has them (one
    /// Secret for the whole set, a certificate per pod), else `tls.crt`
    /// and `tls.key` (a Secret per pod, or one certificate for all).
    fn find(dir: &Path, name: &str) -> Result<Files, TlsError> {
        let own = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        let shared = (dir.join(SHARED_CERT_FILE), dir.join(SHARED_KEY_FILE));
        let (cert, key) = [own, shared]
            .into_iter()
            .find(|(cert, key)| cert.exists() && key.exists())
            .ok_or_else(|| TlsError::NoCertificate {
                dir: dir.to_path_buf(),
                name: name.to_string(),
            })?;
        Ok(Files {
            dir: dir.to_path_buf(),
            ca: dir.join(CA_FILE),
            cert,
            key,
        })
    }

    fn load(&self) -> Result<Configs, TlsError> {
        let roots = read_roots(&self.ca)?;
        let (chain, key) = read_identity(&self.cert, &self.key)?;
        let config_err = |e: rustls::Error| TlsError::Config {
            dir: self.dir.clone(),
            detail: e.to_string(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::Config {
                dir: self.dir.clone(),
                detail: e.to_string(),
            })?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(config_err)?;
        server.alpn_protocols = vec![b"h2".to_vec()];
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_err)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(config_err)?;
        client.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Configs {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn invalid(path: &Path, detail: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

/// The CA certificates of a PEM bundle (at least one).
fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&read(path)?) {
        roots
            .add(ca.map_err(|e| invalid(path, e))?)
            .map_err(|e| invalid(path, e))?;
    }
    if roots.is_empty() {
        return Err(invalid(path, "no certificate in it"));
    }
    Ok(roots)
}

/// A certificate chain (at least one) and its key.
fn read_identity(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(cert, e))?;
    if chain.is_empty() {
        return Err(invalid(cert, "no certificate in it"));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| invalid(key, e))?;
    Ok((chain, key))
}

#[derive(Clone)]
struct Configs {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

/// This node's peer TLS: the configurations from the files, made again
/// when the files change.
#[derive(Clone)]
pub struct PeerTls {
    cert: PathBuf,
    configs: Arc<Reloading<Configs, TlsError>>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls").field("cert", &self.cert).finish()
    }
}

impl PeerTls {
    /// Loads the CA and the certificate of node `name` from `dir`; a
    /// start-up error if any of it is missing or wrong.
    pub fn load(dir: &Path, name: &str) -> Result<PeerTls, TlsError> {
        let files = Files::find(dir, name)?;
        let paths = vec![files.ca.clone(), files.cert.clone(), files.key.clone()];
        let cert = files.cert.clone();
        let configs = Reloading::open("peer certificates", paths, move || files.load())?;
        Ok(PeerTls {
            cert,
            configs: Arc::new(configs),
        })
    }

    /// The handshake of the peer port's connections.
    pub fn acceptor(&self) -> Acceptor {
        let tls = self.clone();
        Acceptor {
            what: "peer",
            config: Arc::new(move || tls.configs.get().server.clone()),
        }
    }
}

/// Connects to `host:port` over TLS with `config`, checking that the
/// server's certificate names `host`.
/// The server side of a listener's TLS handshakes: the configuration as
/// the files are now, for each new connection.
#[derive(Clone)]
pub struct Acceptor {
    /// The port, in log lines.
    what: &'static str,
    config: Arc<dyn Fn() -> Arc<ServerConfig> + Send + Sync>,
}

impl Acceptor {
    /// The TLS handshake of a connection accepted from `remote`, within
    /// [`HANDSHAKE_TIMEOUT`]; none (logged) when it fails or stalls.
    pub async fn accept(
        &self,
        tcp: TcpStream,
        remote: SocketAddr,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        let acceptor = TlsAcceptor::from((self.config)());
        let what = self.what;
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(e)) => {
                tracing::warn!(%remote, "refused a {what} connection: TLS handshake failed: {e}");
                None
            }
            Err(_) => {
                tracing::warn!(%remote, "refused a {what} connection: TLS handshake timed out");
                None
            }
        }
    }
}

/// How this end secures the gRPC connections it makes: a peer's, a
/// client's. Every connection it makes has Nagle off and its writes
/// gathered ([`gather`]).
#[derive(Clone)]
pub enum Dial {
    /// Plaintext: a peer port under `--insecure-peers`, a client port
    /// without TLS.
    Plain,
    /// Mutual TLS to a peer port, with the files as they are at each
    /// connection.
    Peer(PeerTls),
    /// TLS to a client port that speaks it.
    Client(client::ClientTls),
}

impl Dial {
    /// Connects to `host:port`; over TLS, the certificate presented must
    /// name `host`.
    pub async fn connect(&self, host: &str, port: u16) -> io::Result<ClientStream> {
        let config = match self {
            Dial::Plain => None,
            Dial::Peer(tls) => Some(tls.configs.get().client.clone()),
            Dial::Client(tls) => Some(tls.config()),
        };
        // Said as hyper's own connector says it, so a refused connection
        // reads the same whichever connector made it.
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("tcp connect error: {e}")))?;
        tcp.set_nodelay(true)?;
        let io = match config {
            None => Io::Plain(tcp),
            Some(config) => {
                let name = ServerName::try_from(host.to_string())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let handshake = TlsConnector::from(config).connect(name, tcp);
                let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
                    .await
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                    })??;
                Io::Tls(Box::new(tls.into()))
            }
        };
        Ok(hyper_util::rt::TokioIo::new(gather::Gathered::new(io)))
    }

    /// A channel to `endpoint`, connected when first used and again after
    /// a failure. The address dialled is the URI's host: taken from the
    /// membership, it is the peer's own, which its certificate must name.
    pub fn lazy_channel(&self, endpoint: Endpoint) -> Channel {
        endpoint.connect_with_connector_lazy(self.connector())
    }

    /// A channel to `endpoint`, connected now.
    pub async fn channel(&self, endpoint: Endpoint) -> Result<Channel, tonic::transport::Error> {
        endpoint.connect_with_connector(self.connector()).await
    }

    fn connector(
        &self,
    ) -> impl tower::Service<
        Uri,
        Response = ClientStream,
        Error = io::Error,
        Future = impl std::future::Future<Output = io::Result<ClientStream>> + Send,
    > + Clone
           + Send
           + 'static {
        let dial = self.clone();
        tower::service_fn(move |uri: Uri| {
            let dial = dial.clone();
            async move {
                let host = uri.host().unwrap_or_default();
                let host = host.trim_start_matches('[').trim_end_matches(']');
                dial.connect(host, port_of(&uri)).await
            }
        })
    }
}

/// The port a URI names, or its scheme's: a client given `https://host`
/// dials 443, as it did before the connectors became one.
fn port_of(uri: &Uri) -> u16 {
    let default = match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    uri.port_u16().unwrap_or(default)
}

/// A connection this end made, as tonic's connector hands it to hyper.
pub type ClientStream = hyper_util::rt::TokioIo<gather::Gathered<Io>>;

/// What an accepted connection proved about its other end: tonic puts it
/// in every request's extensions.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    /// The certificate the peer presented and the CA verified; none on a
    /// plaintext port (`--insecure-peers`).
    pub certificate: Option<CertificateDer<'static>>,
}

/// An accepted connection, plaintext or TLS, holding its place under the
/// listener's connection cap until it closes.
pub struct Connection {
    io: gather::Gathered<Io>,
    conn: ConnInfo,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

/// A connection's stream, either way round.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

/// The accepted connections of a gRPC listener until `stop`, Nagle off,
/// handshaken when `tls` is given, at most
/// `max_connections` open at once: past it a new connection is closed at
/// once, so a flood of them costs no more than the cap. A handshake that
/// fails or stalls drops only its own connection, and never holds up the
/// others.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Acceptor>,
    max_connections: usize,
    stop: CancellationToken,
) -> impl Stream<Item = io::Result<Connection>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!("peer listener: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.cancelled() => return,
                _ = sender.closed() => return,
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::debug!(%remote, "closed a connection over the listener's cap");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let Some(tls) = tls.clone() else {
                let stream = Connection {
                    io: gather::Gathered::new(Io::Plain(tcp)),
                    conn: ConnInfo {
                        remote: Some(remote),
                        certificate: None,
                    },
                    _slot: slot,
                };
                if sender.send(Ok(stream)).await.is_err() {
                    return;
                }
                continue;
            };
            let sender = sender.clone();
            tokio::spawn(async move {
                let Some(stream) = tls.accept(tcp, remote).await else {
                    return;
                };
                let certificate = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|c| c.clone().into_owned());
                let stream = Connection {
                    io: gather::Gathered::new(Io::Tls(Box::new(stream.into()))),
                    conn: ConnInfo {
                        remote: Some(remote),
                        certificate,
                    },
                    _slot: slot,
                };
                let _ = sender.send(Ok(stream)).await;
            });
        }
    });
    ReceiverStream::new(receiver)
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.conn.clone()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What the caller of a peer request proved about itself.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The peer port is plaintext (`--insecure-peers`): nothing proven,
    /// nothing to check.
    Unchecked,
    /// The certificate the caller presented, signed by the cluster CA.
    Certified(CertificateDer<'static>),
}

impl Caller {
    /// The caller of `request`, taken from what its connection proved.
    pub fn take<T>(request: &mut tonic::Request<T>) -> Caller {
        match request
            .extensions_mut()
            .remove::<ConnInfo>()
            .and_then(|c| c.certificate)
        {
            Some(certificate) => Caller::Certified(certificate),
            None => Caller::Unchecked,
        }
    }

    /// Whether the caller's certificate names `host` (a DNS name or an IP
    /// address), as a server's must for a client connecting to it.
    pub fn is(&self, host: &str) -> bool {
        match self {
            Caller::Unchecked => true,
            Caller::Certified(der) => certificate_names(der, host),
        }
    }

    /// Whether the caller's certificate names the host of `addr`
    /// (`host:port`).
    pub fn is_at(&self, addr: &str) -> bool {
        self.is(host_of(addr))
    }
}

/// Whether certificate `der` names `host`.
pub fn certificate_names(der: &CertificateDer<'_>, host: &str) -> bool {
    let Ok(name) = ServerName::try_from(host) else {
        return false;
    };
    let Ok(parsed) = rustls::server::ParsedCertificate::try_from(der) else {
        return false;
    };
    rustls::client::verify_server_name(&parsed, &name).is_ok()
}

/// The host of `host:port` (brackets of an IPv6 address removed).
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::issue::Authority;
    use super::*;

    #[test]
    fn a_certificate_names_exactly_its_hosts() {
        let ca = Authority::new("test").unwrap();
        let cert = ca
            .issue(
                "raftset-1",
                &["raftset-1.raftset-peers.ns.svc.cluster.local", "127.0.0.2"],
            )
            .unwrap();
        let der = CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap();
        let caller = Caller::Certified(der);
        assert!(caller.is_at("raftset-1.raftset-peers.ns.svc.cluster.local:7001"));
        assert!(caller.is_at("127.0.0.2:7001"));
        assert!(caller.is("raftset-1"));
        assert!(!caller.is_at("raftset-2.raftset-peers.ns.svc.cluster.local:7001"));
        assert!(!caller.is_at("127.0.0.3:7001"));
        assert!(!caller.is("raftset-1.raftset-peers"));
        assert!(Caller::Unchecked.is("anything"));
    }

    /// A connection this end makes holds its first flush back, as an
    /// accepted one does: requests sent meanwhile leave with it.
    #[tokio::test]
    async fn a_connection_made_gathers_its_writes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (made, accepted) =
            tokio::join!(Dial::Plain.connect("127.0.0.1", port), listener.accept());
        let mut made = made.unwrap().into_inner();
        let (mut accepted, _) = accepted.unwrap();
        made.write_all(b"first").await.unwrap();
        let flushed = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut made).poll_flush(cx)));
        assert!(flushed.await.is_pending(), "the first flush is put off");
        made.write_all(b" second").await.unwrap();
        made.flush().await.unwrap();
        let mut received = [0; 12];
        accepted.read_exact(&mut received).await.unwrap();
        assert_eq!(&received, b"first second");
    }

    #[test]
    fn a_uri_without_a_port_dials_its_schemes() {
        let port = |uri: &str| port_of(&uri.parse().unwrap());
        assert_eq!(port("https://node.example"), 443);
        assert_eq!(port("http://node.example"), 80);
        assert_eq!(port("https://node.example:7000"), 7000);
    }

    #[test]
    fn hosts_are_cut_from_addresses() {
        assert_eq!(host_of("a.b:7001"), "a.b");
        assert_eq!(host_of("127.0.0.1:1"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7001"), "::1");
        assert_eq!(host_of("bare"), "bare");
    }
}
