//! `raftset tokens`: the client port's tokens, one per role, as the Secret
//! `k8s/` mounts (printed, for `kubectl apply -f -`) or as files.
//!
//! Each token is 256 random bits in hex. The Secret holds each token
//! (`read.token`, `write.token`, `admin.token`, for whoever needs them:
//! `kubectl get secret … -o jsonpath='{.data.write\.token}' | base64 -d`)
//! and the file of their hashes (`tokens`) that `--client-tokens-file`
//! reads. The pods mount only `tokens` and `admin.token`, the latter for
//! `kubectl exec … raftset <command>`: whoever may exec into a pod already
//! holds everything in it.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use super::certs::secret_manifest;
use crate::auth::{new_token, token_line, Role};

/// The hashes' file name, as `--client-tokens-file` names it in `k8s/`.
pub const TOKENS_FILE: &str = "tokens";

#[derive(Debug, Clone, Args)]
pub struct TokensArgs {
    /// The StatefulSet's name (a label on the Secret).
    #[arg(long, default_value = "raftset")]
    pub statefulset: String,
    #[arg(long, default_value = "raftset")]
    pub namespace: String,
    /// The Secret's name, as the StatefulSet mounts it.
    #[arg(long, default_value = "raftset-client-tokens")]
    pub secret: String,
    /// Write the files into this directory (each readable by its owner
    /// only) instead of printing a Secret.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

pub fn run(args: TokensArgs) -> anyhow::Result<()> {
    let data = files();
    match &args.out_dir {
        Some(dir) => {
            write_private(dir, &data)?;
            eprintln!(
                "wrote a read, a write and an admin token, and their hashes ({TOKENS_FILE}), to {}",
                dir.display()
            );
        }
        None => {
            let about = format!(
                "The client port's tokens for StatefulSet {}, one per role, and their\n\
                 hashes (`{TOKENS_FILE}`), made by `raftset tokens`.",
                args.statefulset
            );
            print!(
                "{}",
                secret_manifest(
                    &about,
                    &args.secret,
                    &args.namespace,
                    &args.statefulset,
                    &data
                )
            );
        }
    }
    Ok(())
}

/// A fresh token per role (`<role>.token`) and the hashes' file.
fn files() -> BTreeMap<String, String> {
    let mut data = BTreeMap::new();
    let mut lines = String::new();
    for role in [Role::Read, Role::Write, Role::Admin] {
        let token = new_token();
        lines.push_str(&token_line(role, &token));
        lines.push('\n');
        data.insert(format!("{}.token", role.name()), format!("{token}\n"));
    }
    data.insert(TOKENS_FILE.to_string(), lines);
    data
}

fn write_private(dir: &Path, data: &BTreeMap<String, String>) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, contents) in data {
        let path = dir.join(name);
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(contents.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::auth::{ClientAuth, Credentials, RoleTokens};

    #[test]
    fn each_token_written_has_its_role_in_the_hashes_file_and_is_new_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("client");
        let args = TokensArgs {
            statefulset: "raftset".into(),
            namespace: "ns".into(),
            secret: "raftset-client-tokens".into(),
            out_dir: Some(out.clone()),
        };
        run(args.clone()).unwrap();
        let tokens = RoleTokens::open(&out.join(TOKENS_FILE)).unwrap();
        let auth = ClientAuth::client_port(Some(tokens), true);
        let token =
            |role: &str| std::fs::read_to_string(out.join(format!("{role}.token"))).unwrap();
        let bearer = |role: &str| format!("Bearer {}", token(role).trim());
        assert!(auth
            .check(
                "/raftset.v1.KV/Get",
                Credentials::bearer_only(Some(&bearer("read")))
            )
            .is_ok());
        assert!(auth
            .check(
                "/raftset.v1.KV/Put",
                Credentials::bearer_only(Some(&bearer("read")))
            )
            .is_err());
        assert!(auth
            .check(
                "/raftset.v1.KV/Put",
                Credentials::bearer_only(Some(&bearer("write")))
            )
            .is_ok());
        assert!(auth
            .check(
                "/raftset.v1.Admin/Backup",
                Credentials::bearer_only(Some(&bearer("write")))
            )
            .is_err());
        assert!(auth
            .check(
                "/raftset.v1.Admin/Backup",
                Credentials::bearer_only(Some(&bearer("admin")))
            )
            .is_ok());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("admin.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let first = token("admin");
        run(args).unwrap();
        assert_ne!(token("admin"), first);
        let manifest = secret_manifest("x", "s", "ns", "raftset", &files());
        for line in [
            "kind: Secret",
            "  admin.token: ",
            "  tokens: ",
            "namespace: ns",
        ] {
            assert!(manifest.contains(line), "{line:?} in\n{manifest}");
        }
    }
}
