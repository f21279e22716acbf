//! Making a cluster CA and the members' certificates, for `raftset certs`,
//! `raftset local --tls` and the tests: ECDSA P-256 keys, certificates that
//! serve and authenticate alike (a member is a server to some peers and a
//! client of others).
//!
//! A member's certificate names its pod name and its stable DNS name (or,
//! outside Kubernetes, its address): the name it claims when it joins, and
//! the host the leader replicates to.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// How long a certificate made here is valid.
const VALID_DAYS: i64 = 825;

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("making a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// A certificate and its private key, PEM-encoded.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A CA that signs member certificates.
pub struct Authority {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Authority {
    /// A fresh self-signed CA named `raftset <name> CA`.
    pub fn new(name: &str) -> Result<Authority, IssueError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&format!("raftset {name} CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Authority { cert, key })
    }

    /// An existing CA, from its certificate and key (to issue certificates
    /// for more members, or new ones before the old expire).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Authority, IssueError> {
        let key = KeyPair::from_pem(key_pem)?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem)?;
        // Re-signing the parsed parameters keeps the subject and the key, so
        // what it signs verifies against the original certificate.
        let cert = params.self_signed(&key)?;
        Ok(Authority { cert, key })
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A certificate for member `name`, naming `name` and every one of
    /// `hosts` (DNS names or IP addresses).
    pub fn issue(&self, name: &str, hosts: &[&str]) -> Result<Issued, IssueError> {
        let mut sans = vec![name.to_string()];
        sans.extend(hosts.iter().map(|h| h.to_string()));
        sans.dedup();
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name = dn(name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes the CA's certificate (`ca.crt`) and key (`key_file`, owner
    /// only) into `dir`, to issue more later with [`Authority::from_pem`].
    pub fn write_ca(&self, dir: &Path, key_file: &str) -> Result<(), IssueError> {
        std::fs::create_dir_all(dir).map_err(|source| IssueError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        write_file(&dir.join(super::CA_FILE), &self.cert_pem(), 0o644)?;
        write_file(&dir.join(key_file), &self.key_pem(), 0o600)
    }

    /// Writes `ca.crt` and, for each member, `<name>.crt` and `<name>.key`
    /// (readable by the owner only) into `dir`: what a node's
    /// `--peer-tls-dir` reads.
    pub fn write_dir(&self, dir: &Path, members: &[(String, Issued)]) -> Result<(), IssueError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IssueError::Io {
                path: path.clone(),
                source,
            }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        write_file(&dir.join(super::CA_FILE), &self.cert_pem(), 0o644)?;
        for (name, issued) in members {
            write_file(&dir.join(format!("{name}.crt")), &issued.cert_pem, 0o644)?;
            write_file(&dir.join(format!("{name}.key")), &issued.key_pem, 0o600)?;
        }
        Ok(())
    }
}

/// Writes `text` to `path` whole (a temporary file renamed into place), so
/// a node re-reading the directory never sees half a file.
fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), IssueError> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let io = |source| IssueError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io)?;
    file.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "raftset");
    dn
}

fn validity(params: &mut CertificateParams) {
    use chrono::Datelike;
    let day = |d: chrono::DateTime<chrono::Utc>| {
        rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8)
    };
    let now = chrono::Utc::now();
    // From yesterday: a peer whose clock runs a little behind accepts it.
    params.not_before = day(now - chrono::Duration::days(1));
    params.not_after = day(now + chrono::Duration::days(VALID_DAYS));
}
