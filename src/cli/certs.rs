//! `raftset certs`: the peer port's certificates for a StatefulSet, as the
//! Secret `k8s/` mounts (printed, for `kubectl apply -f -`) or as files.
//!
//! One Secret for the whole set, one certificate per ordinal: each names
//! the pod (`raftset-2`) and its stable DNS name
//! (`raftset-2.raftset-peers.raftset.svc.cluster.local`), and a pod uses the
//! one named after it. The CA's key never goes into the Secret: kept with
//! `--ca-dir`, it issues certificates for more ordinals or new ones for a
//! rotation; without it, it is thrown away.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use base64::Engine;
use clap::Args;

use crate::tls::issue::{Authority, Issued};
use crate::tls::CA_FILE;

/// The CA key's file name in `--ca-dir`.
const CA_KEY_FILE: &str = "ca.key";

#[derive(Debug, Clone, Args)]
pub struct CertsArgs {
    /// Certificates for ordinals 0 to N-1: at least the replica count the
    /// set will scale to.
    #[arg(long, default_value_t = 3)]
    pub replicas: u32,
    /// The StatefulSet's name (the pods' name prefix).
    #[arg(long, default_value = "raftset")]
    pub statefulset: String,
    /// The StatefulSet's headless Service.
    #[arg(long, default_value = "raftset-peers")]
    pub service: String,
    #[arg(long, default_value = "raftset")]
    pub namespace: String,
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The Secret's name, as the StatefulSet mounts it.
    #[arg(long, default_value = "raftset-peer-tls")]
    pub secret: String,
    /// Where the CA is kept (`ca.crt`, `ca.key`): used when it is there,
    /// made and saved there when not. Without it the CA is made for this
    /// run only, and its key is gone once the Secret is printed.
    #[arg(long)]
    pub ca_dir: Option<PathBuf>,
    /// Write the files a node's `--peer-tls-dir` reads into this directory
    /// instead of printing a Secret.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    let ca = authority(&args)?;
    let issued = (0..args.replicas)
        .map(|ordinal| {
            let name = format!("{}-{ordinal}", args.statefulset);
            let dns = format!(
                "{name}.{}.{}.svc.{}",
                args.service, args.namespace, args.cluster_domain
            );
            let cert = ca.issue(&name, &[&dns])?;
            Ok((name, cert))
        })
        .collect::<anyhow::Result<Vec<(String, Issued)>>>()?;
    match &args.out_dir {
        Some(dir) => {
            ca.write_dir(dir, &issued)?;
            eprintln!(
                "wrote {} and {} certificates to {}",
                CA_FILE,
                issued.len(),
                dir.display()
            );
        }
        None => print!("{}", secret(&args, &ca, &issued)),
    }
    Ok(())
}

/// The CA of `--ca-dir`, or a new one (saved there if given).
fn authority(args: &CertsArgs) -> anyhow::Result<Authority> {
    let Some(dir) = &args.ca_dir else {
        eprintln!(
            "raftset certs: a new CA for this run only; keep one with --ca-dir to issue more later"
        );
        return Ok(Authority::new(&args.statefulset)?);
    };
    let (cert, key) = (dir.join(CA_FILE), dir.join(CA_KEY_FILE));
    if cert.exists() && key.exists() {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        return Authority::from_pem(&read(&cert)?, &read(&key)?)
            .with_context(|| format!("the CA in {}", dir.display()));
    }
    let ca = Authority::new(&args.statefulset)?;
    ca.write_ca(dir, CA_KEY_FILE)?;
    eprintln!("raftset certs: a new CA, kept in {}", dir.display());
    Ok(ca)
}

/// The Secret manifest: the CA certificate and each ordinal's
/// certificate and key.
fn secret(args: &CertsArgs, ca: &Authority, issued: &[(String, Issued)]) -> String {
    let mut data = BTreeMap::new();
    data.insert(CA_FILE.to_string(), ca.cert_pem());
    for (name, cert) in issued {
        data.insert(format!("{name}.crt"), cert.cert_pem.clone());
        data.insert(format!("{name}.key"), cert.key_pem.clone());
    }
    let about = format!(
        "The peer port's certificates for StatefulSet {} (ordinals 0 to {}),\n\
         made by `raftset certs`.",
        args.statefulset,
        args.replicas.saturating_sub(1)
    );
    secret_manifest(
        &about,
        &args.secret,
        &args.namespace,
        &args.statefulset,
        &data,
    )
}

/// A Secret manifest named `name` in `namespace` for the set `instance`,
/// holding `data` (file name → contents, base64 as the API wants them),
/// under the comment `about`.
pub(super) fn secret_manifest(
    about: &str,
    name: &str,
    namespace: &str,
    instance: &str,
    data: &BTreeMap<String, String>,
) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out: String = about.lines().map(|l| format!("# {l}\n")).collect();
    out.push_str(&format!(
        "apiVersion: v1\n\
         kind: Secret\n\
         metadata:\n  name: {name}\n  namespace: {namespace}\n  labels:\n    app.kubernetes.io/name: raftset\n    app.kubernetes.io/instance: {instance}\n\
         type: Opaque\n\
         data:\n",
    ));
    for (file, contents) in data {
        out.push_str(&format!("  {file}: {}\n", b64.encode(contents)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> CertsArgs {
        CertsArgs {
            replicas: 2,
            statefulset: "raftset".into(),
            service: "raftset-peers".into(),
            namespace: "ns".into(),
            cluster_domain: "cluster.local".into(),
            secret: "raftset-peer-tls".into(),
            ca_dir: None,
            out_dir: None,
        }
    }

    #[test]
    fn the_secret_holds_the_ca_and_each_ordinals_certificate_but_no_ca_key() {
        let ca = Authority::new("t").unwrap();
        let issued = vec![("raftset-0".to_string(), ca.issue("raftset-0", &[]).unwrap())];
        let manifest = secret(&args(), &ca, &issued);
        for line in [
            "kind: Secret",
            "name: raftset-peer-tls",
            "namespace: ns",
            "  ca.crt: ",
            "  raftset-0.crt: ",
            "  raftset-0.key: ",
        ] {
            assert!(manifest.contains(line), "{line:?} missing from\n{manifest}");
        }
        assert!(!manifest.contains("ca.key"));
    }

    #[test]
    fn a_kept_ca_issues_again_and_its_certificates_verify_with_the_first_ca_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let out = dir.path().join("out");
        let first = CertsArgs {
            ca_dir: Some(ca_dir.clone()),
            out_dir: Some(out.clone()),
            ..args()
        };
        run(first.clone()).unwrap();
        let ca_before = std::fs::read(ca_dir.join(CA_FILE)).unwrap();
        // More ordinals later, from the same CA.
        run(CertsArgs {
            replicas: 4,
            ..first
        })
        .unwrap();
        assert_eq!(std::fs::read(ca_dir.join(CA_FILE)).unwrap(), ca_before);
        // Each ordinal's certificate verifies against the first CA file,
        // for its pod's DNS name.
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(&ca_before).unwrap())
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        for ordinal in 0..4 {
            let name = format!("raftset-{ordinal}");
            let cert = CertificateDer::from_pem_file(out.join(format!("{name}.crt"))).unwrap();
            let dns = format!("{name}.raftset-peers.ns.svc.cluster.local");
            verifier
                .verify_server_cert(
                    &cert,
                    &[],
                    &ServerName::try_from(dns).unwrap(),
                    &[],
                    UnixTime::now(),
                )
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            crate::tls::PeerTls::load(&out, &name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
