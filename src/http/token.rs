//! The bearer token that `/metrics` may require (`--metrics-token-file`).
//!
//! The file holds the token's SHA-256, never the token: `sha256:<64 hex
//! digits>` on one line (`printf %s "$TOKEN" | sha256sum`). A scrape must
//! send `Authorization: Bearer <token>`; its hash is compared in constant
//! time. The file is read again when it changes (checked on every scrape),
//! so a rotated Secret takes effect without a restart; a file that no
//! longer parses keeps the last good hash, with a warning.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use axum::http::{header, HeaderMap};

const PREFIX: &str = "sha256:";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the token file {path} must hold one line `sha256:<64 hex digits>` (printf %s \"$TOKEN\" | sha256sum)")]
    Format { path: PathBuf },
}

/// Why a request was refused; neither says anything of the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No bearer token: 401.
    Missing,
    /// A bearer token that is not the one: 403.
    Wrong,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Wrong => "wrong",
        }
    }
}

/// A token file and the hash last read from it.
pub struct TokenFile {
    path: PathBuf,
    current: Mutex<Loaded>,
}

/// What tells a changed file (modification time and size), and its hash.
struct Loaded {
    stamp: Option<(SystemTime, u64)>,
    hash: [u8; 32],
}

impl TokenFile {
    /// Reads `path`; a start-up error if it is missing or malformed.
    pub fn open(path: &Path) -> Result<TokenFile, TokenError> {
        let hash = read_hash(path)?;
        Ok(TokenFile {
            path: path.to_path_buf(),
            current: Mutex::new(Loaded {
                stamp: stamp(path),
                hash,
            }),
        })
    }

    /// Whether `headers` carry the token.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Refusal::Missing)?;
        let digest = ring::digest::digest(&ring::digest::SHA256, presented.as_bytes());
        let expected = self.hash();
        // Every byte is compared, whatever differs first. What is compared
        // are hashes, so timing could tell at most how much of a guess's
        // hash is right, nothing of the token.
        let difference = digest
            .as_ref()
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if difference == 0 {
            Ok(())
        } else {
            Err(Refusal::Wrong)
        }
    }

    /// The hash from the file as it is now.
    fn hash(&self) -> [u8; 32] {
        let mut current = self.current.lock().expect("token file lock");
        let now = stamp(&self.path);
        if now != current.stamp {
            match read_hash(&self.path) {
                Ok(hash) => current.hash = hash,
                Err(e) => tracing::warn!("keeping the previous metrics token: {e}"),
            }
            current.stamp = now;
        }
        current.hash
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn read_hash(path: &Path) -> Result<[u8; 32], TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_hash(text.trim()).ok_or_else(|| TokenError::Format {
        path: path.to_path_buf(),
    })
}

fn parse_hash(line: &str) -> Option<[u8; 32]> {
    let hex = line.strip_prefix(PREFIX)?;
    if hex.len() != 64 {
        return None;
    }
    let mut hash = [0u8; 32];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        }
        headers
    }

    fn hash_line(token: &str) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("{PREFIX}{hex}\n")
    }

    #[test]
    fn only_the_token_whose_hash_the_file_holds_passes_and_a_new_file_takes_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, hash_line("s3cret")).unwrap();
        let file = TokenFile::open(&path).unwrap();
        let cases = [
            (None, Err(Refusal::Missing)),
            (Some("Basic czNjcmV0"), Err(Refusal::Missing)),
            (Some("Bearer "), Err(Refusal::Missing)),
            (Some("Bearer nope"), Err(Refusal::Wrong)),
            (Some("Bearer s3cret"), Ok(())),
        ];
        for (authorization, expected) in cases {
            assert_eq!(
                file.check(&headers(authorization)),
                expected,
                "{authorization:?}"
            );
        }
        // Rotated (a longer line, so the size differs even within one tick
        // of the file system's clock).
        std::fs::write(&path, format!("{}\n", hash_line("n3w-s3cret"))).unwrap();
        assert_eq!(
            file.check(&headers(Some("Bearer s3cret"))),
            Err(Refusal::Wrong)
        );
        assert_eq!(file.check(&headers(Some("Bearer n3w-s3cret"))), Ok(()));
        // A broken file keeps the last good hash.
        std::fs::write(&path, "garbage").unwrap();
        assert_eq!(file.check(&headers(Some("Bearer n3w-s3cret"))), Ok(()));
    }

    #[test]
    fn a_token_file_must_hold_a_sha256_line() {
        assert!(parse_hash(hash_line("x").trim()).is_some());
        for bad in [
            "",
            "s3cret",
            "sha256:abc",
            &format!("{PREFIX}{}", "zz".repeat(32)),
            &format!("md5:{}", "0".repeat(64)),
        ] {
            assert!(parse_hash(bad).is_none(), "{bad:?}");
        }
    }
}
