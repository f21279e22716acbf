//! `docker-compose.yml` as a user runs it: validated by Compose itself, up
//! until every node's HEALTHCHECK says healthy, a write through one node's
//! published port read back through the others', then `down -v`.
//!
//! A project of its own (`rscompose<pid>`: its containers, network and
//! volumes carry that prefix) and a loopback address of its own for the
//! published ports, so it collides neither with another run nor with a
//! cluster someone started from the same file.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use raftset::Client;
use tokio::process::Command;

use crate::support::docker::{docker, ensure_docker};
use crate::support::image::ensure_image;
use crate::support::manifest::Manifest;
use crate::support::poll;
use crate::support::statefulset::exclusive;

const SERVICES: [&str; 3] = ["raftset-0", "raftset-1", "raftset-2"];

/// Each service's client port on the host, as the file publishes it.
const API_PORTS: [u16; 3] = [7000, 7001, 7002];

/// One Compose project of the repository's file; `down -v` on drop, also
/// when the test fails.
struct Project {
    /// `docker-compose`, or `docker compose` where only Compose v2 is.
    compose: Vec<String>,
    file: PathBuf,
    name: String,
    env: Vec<(&'static str, String)>,
}

impl Project {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.compose[0]);
        command
            .args(&self.compose[1..])
            .arg("-f")
            .arg(&self.file)
            .args(["-p", &self.name])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Runs `compose args...`; its stdout, or an error with what it said.
    async fn run(&self, args: &[&str]) -> Result<String, String> {
        let what = format!("{} {}", self.compose.join(" "), args.join(" "));
        let out = tokio::time::timeout(Duration::from_secs(180), self.command(args).output())
            .await
            .map_err(|_| format!("`{what}` took longer than 3 minutes"))?
            .map_err(|e| format!("cannot run `{what}`: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "`{what}` failed ({:?}): {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// The health status Docker reports for `service`'s container.
    async fn health(&self, service: &str) -> Result<String, String> {
        let id = self.run(&["ps", "-q", service]).await?;
        let id = id.trim();
        if id.is_empty() {
            return Err(format!("{service} has no container"));
        }
        docker(&[
            "inspect",
            "--format",
            "{{if .State.Health}}{{.State.Health.Status}}{{else}}no healthcheck{{end}}",
            id,
        ])
        .await
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let down = std::process::Command::new(&self.compose[0])
            .args(&self.compose[1..])
            .arg("-f")
            .arg(&self.file)
            .args([
                "-p",
                &self.name,
                "down",
                "-v",
                "--remove-orphans",
                "-t",
                "10",
            ])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output();
        match down {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "compose: `down -v` of {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("compose: cannot run `down -v` of {}: {e}", self.name),
        }
    }
}

/// The Compose that is installed: Debian's docker-compose (v1), else the
/// Compose v2 plugin.
async fn compose_command() -> Vec<String> {
    for candidate in [&["docker-compose"][..], &["docker", "compose"]] {
        let works = Command::new(candidate[0])
            .args(&candidate[1..])
            .arg("version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success());
        if works {
            return candidate.iter().map(|s| s.to_string()).collect();
        }
    }
    panic!("neither docker-compose nor `docker compose` is installed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_compose_runs_a_healthy_three_node_cluster() {
    let _turn = exclusive().await;
    ensure_docker().await;
    let image = ensure_image(&Manifest::base().image).await;
    let pid = std::process::id();
    let publish_ip = format!("127.250.{}.{}", pid / 250 % 250, pid % 250 + 1);
    let project = Project {
        compose: compose_command().await,
        file: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docker-compose.yml"),
        name: format!("rscompose{pid}"),
        env: vec![
            ("RAFTSET_IMAGE", image.clone()),
            ("RAFTSET_PUBLISH_IP", publish_ip.clone()),
        ],
    };

    // Compose's own validation, and the variables reach the file.
    let config = project.run(&["config"]).await.unwrap();
    assert!(config.contains(&format!("image: {image}")), "{config}");
    assert!(
        config.contains(&format!("{publish_ip}:7002:7000")),
        "{config}"
    );
    let services = project.run(&["config", "--services"]).await.unwrap();
    let mut services: Vec<&str> = services.lines().collect();
    services.sort();
    // The one-shot `certs` makes the peer certificates the nodes start with.
    let mut expected = vec!["certs"];
    expected.extend(SERVICES);
    assert_eq!(services, expected);
    assert!(config.contains("RAFTSET_PEER_TLS_DIR"), "{config}");

    project.run(&["up", "-d"]).await.unwrap();
    for service in SERVICES {
        poll(
            &format!("{service}'s HEALTHCHECK to say healthy"),
            Duration::from_secs(120),
            Duration::from_secs(1),
            || async {
                match project.health(service).await? {
                    status if status == "healthy" => Ok(()),
                    status => Err(status),
                }
            },
        )
        .await;
    }

    let endpoint = |i: usize| format!("{publish_ip}:{}", API_PORTS[i]);
    let mut writer = Client::connect(&endpoint(1)).await.unwrap();
    let value = format!("written through raftset-1 by {pid}");
    writer.put(b"compose", value.as_bytes()).await.unwrap();
    for i in [0, 2] {
        let mut reader = Client::connect(&endpoint(i)).await.unwrap();
        let kv = reader
            .get(b"compose")
            .await
            .unwrap_or_else(|e| panic!("get through {}: {e}", endpoint(i)))
            .expect("the key exists");
        assert_eq!(kv.value, value.as_bytes(), "through {}", endpoint(i));
    }
}
