//! Who may call what on the client port, and the `/metrics` token: the
//! three roles, the files of token hashes that grant them, and the role
//! each client RPC needs.
//!
//! Owns: reading token files (hashes only, never a token), re-reading them
//! when they change ([`crate::reload`]), checking a presented bearer token
//! against them, and the table of client RPCs and roles, which asks the
//! highest role of any RPC it does not name.
//!
//! Never: serves, logs or keeps a token in the clear, nor decides anything
//! for the peer port, whose callers prove themselves with certificates
//! ([`crate::tls`]).
//!
//! Presented tokens are hashed and compared with every hash in the file,
//! byte by byte to the end: timing could tell at most how much of a
//! guess's hash is right, nothing of a token.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use rustls::pki_types::CertificateDer;

use crate::reload::Reloading;
use crate::tls::certificate_names;

const HASH_PREFIX: &str = "sha256:";
const CERTIFICATE_PREFIX: &str = "cert:";

/// What a caller may do; each role may do everything of the ones before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Get, Scan, Watch; the Admin service's Status and Members.
    Read,
    /// Read, and Put, Delete, CompareAndSwap, Increment.
    Write,
    /// Everything, the rest of the Admin service included.
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

impl FromStr for Role {
    type Err = ();
    fn from_str(s: &str) -> Result<Role, ()> {
        [Role::Read, Role::Write, Role::Admin]
            .into_iter()
            .find(|role| role.name() == s)
            .ok_or(())
    }
}

/// Why a call was refused; none says anything of the token presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No bearer token.
    Missing,
    /// A bearer token that no line of the file grants.
    Wrong,
    /// A token whose role is below the one the call needs.
    Forbidden { needs: Role },
    /// A call that needs the admin role, on a port that takes none.
    AdminElsewhere,
}

impl Refusal {
    /// The metric label and log field.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Wrong => "wrong",
            Refusal::Forbidden { .. } => "forbidden",
            Refusal::AdminElsewhere => "admin_elsewhere",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    // The line itself is never shown: it could be a token pasted by mistake.
    #[error("{path}, line {line}: {expected}")]
    Format {
        path: PathBuf,
        line: usize,
        expected: &'static str,
    },
}

/// A token's SHA-256, as the files hold it.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Hash([u8; 32]);

impl std::fmt::Debug for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hash(..)")
    }
}

impl Hash {
    fn of(token: &str) -> Hash {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        Hash(digest.as_ref().try_into().expect("SHA-256 is 32 bytes"))
    }

    /// `sha256:<64 hex digits>`.
    fn parse(text: &str) -> Option<Hash> {
        let hex = text.strip_prefix(HASH_PREFIX)?;
        if hex.len() != 64 {
            return None;
        }
        let mut hash = [0u8; 32];
        for (i, byte) in hash.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Hash(hash))
    }

    /// Equal, comparing every byte whatever differs first.
    fn same(&self, other: &Hash) -> bool {
        self.0
            .iter()
            .zip(other.0)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(authorization: Option<&str>) -> Result<&str, Refusal> {
    authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(Refusal::Missing)
}

/// The one token `/metrics` may require (`--metrics-token-file`): a line
/// `sha256:<hex>`, the hash of `printf %s "$TOKEN" | sha256sum`.
pub struct TokenFile(Reloading<Hash, AuthError>);

impl TokenFile {
    pub fn open(path: &Path) -> Result<TokenFile, AuthError> {
        let file = path.to_path_buf();
        Reloading::open("metrics token", vec![file.clone()], move || {
            let text = read(&file)?;
            Hash::parse(text.trim()).ok_or_else(|| AuthError::Format {
                path: file.clone(),
                line: 1,
                expected: "one line `sha256:<64 hex digits>` (printf %s \"$TOKEN\" | sha256sum)",
            })
        })
        .map(TokenFile)
    }

    /// Whether `authorization` carries the token.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), Refusal> {
        let presented = Hash::of(bearer(authorization)?);
        if self.0.get().same(&presented) {
            Ok(())
        } else {
            Err(Refusal::Wrong)
        }
    }
}

/// Who may call the client port (`--client-tokens-file`), one line each:
/// `<role> sha256:<hex>` for a bearer token, `<role> cert:<name>` for a
/// caller whose client certificate (verified by the port's CA,
/// `--client-tls-dir`) names `<name>`; blank lines and `#` comments are
/// allowed.
pub struct RoleTokens(Reloading<Vec<(Role, Holder)>, AuthError>);

/// What one line grants its role to.
#[derive(Debug)]
enum Holder {
    Token(Hash),
    Certificate(String),
}

/// What a call presents: its `Authorization` header, and the certificate
/// its connection proved (the port's CA verified it).
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    pub authorization: Option<&'a str>,
    pub certificate: Option<&'a CertificateDer<'static>>,
}

impl RoleTokens {
    pub fn open(path: &Path) -> Result<RoleTokens, AuthError> {
        let file = path.to_path_buf();
        Reloading::open("client tokens", vec![file.clone()], move || {
            parse_role_tokens(&file, &read(&file)?)
        })
        .map(RoleTokens)
    }

    /// The highest role the credentials have. A bearer token decides when
    /// there is one (a wrong token is refused, whatever the certificate);
    /// without one, the certificate's names do.
    fn role_of(&self, credentials: Credentials<'_>) -> Result<Role, Refusal> {
        let holders = self.0.get();
        match bearer(credentials.authorization) {
            Ok(token) => {
                let presented = Hash::of(token);
                // Every token line is compared, so the time taken does not
                // tell which matched.
                holders
                    .iter()
                    .fold(None, |found, (role, holder)| match holder {
                        Holder::Token(hash) if hash.same(&presented) => found.max(Some(*role)),
                        _ => found,
                    })
                    .ok_or(Refusal::Wrong)
            }
            Err(missing) => {
                let certificate = credentials.certificate.ok_or(missing)?;
                holders
                    .iter()
                    .filter_map(|(role, holder)| match holder {
                        Holder::Certificate(name) if certificate_names(certificate, name) => {
                            Some(*role)
                        }
                        _ => None,
                    })
                    .max()
                    .ok_or(missing)
            }
        }
    }
}

fn read(path: &Path) -> Result<String, AuthError> {
    std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_role_tokens(path: &Path, text: &str) -> Result<Vec<(Role, Holder)>, AuthError> {
    let mut holders = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parsed = line
            .split_once(char::is_whitespace)
            .and_then(|(role, holder)| {
                let holder = holder.trim();
                let holder = match holder.strip_prefix(CERTIFICATE_PREFIX) {
                    Some(name) if !name.is_empty() => Holder::Certificate(name.to_string()),
                    Some(_) => return None,
                    None => Holder::Token(Hash::parse(holder)?),
                };
                Some((role.parse::<Role>().ok()?, holder))
            });
        holders.push(parsed.ok_or_else(|| AuthError::Format {
            path: path.to_path_buf(),
            line: i + 1,
            expected:
                "`<read|write|admin> sha256:<64 hex digits>` or `<read|write|admin> cert:<name>`",
        })?);
    }
    Ok(holders)
}

/// The role a client RPC (by its gRPC path) needs; `None`: anyone may call
/// it (the standard health and reflection services).
pub fn needed_role(path: &str) -> Option<Role> {
    const OPEN: &[&str] = &[
        "/grpc.health.v1.Health/",
        "/grpc.reflection.v1.ServerReflection/",
    ];
    const RULES: &[(&str, Role)] = &[
        ("/raftset.v1.KV/Get", Role::Read),
        ("/raftset.v1.KV/Scan", Role::Read),
        ("/raftset.v1.KV/Watch", Role::Read),
        ("/raftset.v1.KV/Put", Role::Write),
        ("/raftset.v1.KV/Delete", Role::Write),
        ("/raftset.v1.KV/CompareAndSwap", Role::Write),
        ("/raftset.v1.KV/Increment", Role::Write),
        ("/raftset.v1.Admin/Status", Role::Read),
        ("/raftset.v1.Admin/Members", Role::Read),
    ];
    if OPEN.iter().any(|prefix| path.starts_with(prefix)) {
        return None;
    }
    Some(
        RULES
            .iter()
            .find(|(rule, _)| *rule == path)
            .map_or(Role::Admin, |(_, role)| *role),
    )
}

/// Who may call a gRPC port: on the client port, whoever presents a token
/// with the role the call needs (anyone, without a tokens file), and admin
/// calls only if the port takes them; on the loopback admin port, anyone.
pub struct ClientAuth {
    tokens: Option<RoleTokens>,
    takes_admin: bool,
}

impl ClientAuth {
    /// The client port: `tokens` decide (without them every call is
    /// allowed), and calls that need the admin role are refused unless
    /// `takes_admin` (`--remote-admin`).
    pub fn client_port(tokens: Option<RoleTokens>, takes_admin: bool) -> ClientAuth {
        ClientAuth {
            tokens,
            takes_admin,
        }
    }

    /// The admin port on loopback: whoever can reach it runs on the node's
    /// host (in a pod: may `kubectl exec`), and may do anything.
    pub fn loopback() -> ClientAuth {
        ClientAuth {
            tokens: None,
            takes_admin: true,
        }
    }

    /// Whether a call of `path` with these credentials may go on.
    pub fn check(&self, path: &str, credentials: Credentials<'_>) -> Result<(), Refusal> {
        let Some(needs) = needed_role(path) else {
            return Ok(());
        };
        if needs == Role::Admin && !self.takes_admin {
            return Err(Refusal::AdminElsewhere);
        }
        let Some(tokens) = &self.tokens else {
            return Ok(());
        };
        let role = tokens.role_of(credentials)?;
        if role >= needs {
            Ok(())
        } else {
            Err(Refusal::Forbidden { needs })
        }
    }
}

/// A tokens-file line for `token` with `role`, as `raftset tokens` and the
/// tests write them.
pub fn token_line(role: Role, token: &str) -> String {
    format!("{} {HASH_PREFIX}{}", role.name(), hex(&Hash::of(token).0))
}

/// A fresh token: 256 random bits, in hex.
pub fn new_token() -> String {
    hex(&rand::random::<[u8; 32]>())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
impl<'a> Credentials<'a> {
    /// A call with this `Authorization` header and no certificate.
    pub fn bearer_only(authorization: Option<&'a str>) -> Credentials<'a> {
        Credentials {
            authorization,
            certificate: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_line(token: &str) -> String {
        token_line(Role::Read, token)
            .split_once(' ')
            .unwrap()
            .1
            .to_string()
    }

    #[test]
    fn only_the_metrics_token_whose_hash_the_file_holds_passes_and_a_new_file_takes_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, format!("{}\n", hash_line("s3cret"))).unwrap();
        let file = TokenFile::open(&path).unwrap();
        let cases = [
            (None, Err(Refusal::Missing)),
            (Some("Basic czNjcmV0"), Err(Refusal::Missing)),
            (Some("Bearer "), Err(Refusal::Missing)),
            (Some("Bearer nope"), Err(Refusal::Wrong)),
            (Some("Bearer s3cret"), Ok(())),
        ];
        for (authorization, expected) in cases {
            assert_eq!(file.check(authorization), expected, "{authorization:?}");
        }
        // Rotated (a longer file, so the size differs even within one tick
        // of the file system's clock).
        std::fs::write(&path, format!("{}\n\n", hash_line("n3w-s3cret"))).unwrap();
        assert_eq!(file.check(Some("Bearer s3cret")), Err(Refusal::Wrong));
        assert_eq!(file.check(Some("Bearer n3w-s3cret")), Ok(()));
    }

    #[test]
    fn a_token_file_must_hold_a_sha256_line() {
        assert!(Hash::parse(&hash_line("x")).is_some());
        for bad in [
            "",
            "s3cret",
            "sha256:abc",
            &format!("{HASH_PREFIX}{}", "zz".repeat(32)),
            &format!("md5:{}", "0".repeat(64)),
        ] {
            assert!(Hash::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn each_token_may_call_what_its_role_allows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let file = format!(
            "# who may call\n{}\n\n{}\n{}\n",
            token_line(Role::Read, "reader"),
            token_line(Role::Write, "writer"),
            token_line(Role::Admin, "operator"),
        );
        std::fs::write(&path, file).unwrap();
        let auth = ClientAuth::client_port(Some(RoleTokens::open(&path).unwrap()), true);
        let forbidden = |needs| Err(Refusal::Forbidden { needs });
        let cases = [
            ("/raftset.v1.KV/Get", None, Err(Refusal::Missing)),
            (
                "/raftset.v1.KV/Get",
                Some("Bearer guess"),
                Err(Refusal::Wrong),
            ),
            ("/raftset.v1.KV/Get", Some("Bearer reader"), Ok(())),
            ("/raftset.v1.KV/Watch", Some("Bearer reader"), Ok(())),
            ("/raftset.v1.Admin/Status", Some("Bearer reader"), Ok(())),
            (
                "/raftset.v1.KV/Put",
                Some("Bearer reader"),
                forbidden(Role::Write),
            ),
            ("/raftset.v1.KV/Put", Some("Bearer writer"), Ok(())),
            ("/raftset.v1.KV/Increment", Some("Bearer writer"), Ok(())),
            (
                "/raftset.v1.Admin/Remove",
                Some("Bearer writer"),
                forbidden(Role::Admin),
            ),
            (
                "/raftset.v1.Admin/Backup",
                Some("Bearer writer"),
                forbidden(Role::Admin),
            ),
            ("/raftset.v1.Admin/Backup", Some("Bearer operator"), Ok(())),
            ("/raftset.v1.KV/Put", Some("Bearer operator"), Ok(())),
            (
                "/raftset.v1.KV/NotYetWritten",
                Some("Bearer writer"),
                forbidden(Role::Admin),
            ),
            ("/grpc.health.v1.Health/Check", None, Ok(())),
        ];
        for (path, authorization, expected) in cases {
            assert_eq!(
                auth.check(path, Credentials::bearer_only(authorization)),
                expected,
                "{path} with {authorization:?}"
            );
        }
        let open = ClientAuth::client_port(None, true);
        assert_eq!(
            open.check("/raftset.v1.Admin/Backup", Credentials::bearer_only(None)),
            Ok(())
        );
    }

    #[test]
    fn admin_calls_are_taken_on_loopback_and_on_the_client_port_only_when_it_takes_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, token_line(Role::Admin, "operator")).unwrap();
        let client_port = ClientAuth::client_port(Some(RoleTokens::open(&path).unwrap()), false);
        let operator = Some("Bearer operator");
        for call in ["/raftset.v1.Admin/Backup", "/raftset.v1.Admin/Remove"] {
            assert_eq!(
                client_port.check(call, Credentials::bearer_only(operator)),
                Err(Refusal::AdminElsewhere)
            );
            assert_eq!(
                client_port.check(call, Credentials::bearer_only(None)),
                Err(Refusal::AdminElsewhere)
            );
            assert_eq!(
                ClientAuth::loopback().check(call, Credentials::bearer_only(None)),
                Ok(())
            );
        }
        // What `endpoint status` and member lists read stays on the client port.
        assert_eq!(
            client_port.check(
                "/raftset.v1.Admin/Status",
                Credentials::bearer_only(operator)
            ),
            Ok(())
        );
        assert_eq!(
            client_port.check("/raftset.v1.KV/Put", Credentials::bearer_only(operator)),
            Ok(())
        );
        assert_eq!(
            client_port.check("/raftset.v1.KV/Put", Credentials::bearer_only(None)),
            Err(Refusal::Missing)
        );
    }

    #[test]
    fn a_client_certificate_named_in_the_file_has_its_role_unless_a_token_decides() {
        use rustls::pki_types::pem::PemObject;
        let ca = crate::tls::issue::Authority::new("clients").unwrap();
        let issued = |name: &str| {
            let pem = ca.issue(name, &[]).unwrap().cert_pem;
            CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
        };
        let (reporter, stranger) = (issued("reporter"), issued("stranger"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let file = format!(
            "read cert:reporter\n{}\n",
            token_line(Role::Write, "writer")
        );
        std::fs::write(&path, file).unwrap();
        let auth = ClientAuth::client_port(Some(RoleTokens::open(&path).unwrap()), true);
        let call = |path: &str, authorization, certificate| {
            auth.check(
                path,
                Credentials {
                    authorization,
                    certificate,
                },
            )
        };
        assert_eq!(call("/raftset.v1.KV/Get", None, Some(&reporter)), Ok(()));
        assert_eq!(
            call("/raftset.v1.KV/Put", None, Some(&reporter)),
            Err(Refusal::Forbidden { needs: Role::Write })
        );
        assert_eq!(
            call("/raftset.v1.KV/Get", None, Some(&stranger)),
            Err(Refusal::Missing)
        );
        // A token decides when there is one, right or wrong.
        let writer = Some("Bearer writer");
        assert_eq!(call("/raftset.v1.KV/Put", writer, Some(&reporter)), Ok(()));
        assert_eq!(
            call("/raftset.v1.KV/Get", Some("Bearer guess"), Some(&reporter)),
            Err(Refusal::Wrong)
        );
        assert!(parse_role_tokens(Path::new("t"), "read cert:\n").is_err());
    }

    #[test]
    fn a_tokens_file_line_that_does_not_parse_is_refused_without_echoing_it() {
        let path = Path::new("tokens");
        let err = parse_role_tokens(path, "read sha256:00\n").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        let err = parse_role_tokens(path, "# ok\nsuperuser my-plain-token\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("line 2") && !text.contains("my-plain-token"),
            "{text}"
        );
    }
}
