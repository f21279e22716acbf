//! The `docker` command line, as the container harness drives it: every
//! call with a timeout and an error that names the command, a blocking
//! variant for `Drop`, and the labels that mark what the tests create, so
//! that what a killed run left behind can be found and removed.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// The test process that made a container, volume or network.
pub const LABEL_OWNER: &str = "raftset-e2e.owner";
/// The [`StatefulSet`](super::statefulset::StatefulSet) it belongs to.
pub const LABEL_SET: &str = "raftset-e2e.set";
/// How long one `docker` command may take (a graceful stop waits out the
/// grace period at most; this is longer).
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs `docker args...` and returns what it printed, whatever its exit
/// code; `Err` only if it could not run or took longer than `timeout`.
pub async fn docker_output(args: &[&str], timeout: Duration) -> Result<Output, String> {
    let mut command = Command::new("docker");
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let run = command.output();
    let output = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| format!("`docker {}` took longer than {timeout:?}", args.join(" ")))?
        .map_err(|e| format!("cannot run docker: {e}"))?;
    Ok(Output {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// Runs `docker args...` with `stdin` on its standard input; raw output.
pub async fn docker_raw(
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Result<std::process::Output, String> {
    let mut child = Command::new("docker")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        let bytes = bytes.to_vec();
        // Written alongside reading the output, so neither pipe fills up.
        tokio::spawn(async move {
            let _ = pipe.write_all(&bytes).await;
        });
    }
    tokio::time::timeout(DOCKER_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            format!(
                "`docker {}` took longer than {DOCKER_TIMEOUT:?}",
                args.join(" ")
            )
        })?
        .map_err(|e| format!("docker: {e}"))
}

/// Runs `docker args...`; its trimmed stdout, or an error naming the
/// command and what it printed on stderr.
pub async fn docker(args: &[&str]) -> Result<String, String> {
    let output = docker_output(args, DOCKER_TIMEOUT).await?;
    if output.success() {
        Ok(output.stdout.trim().to_string())
    } else {
        Err(format!(
            "`docker {}` failed ({:?}): {}",
            args.join(" "),
            output.code,
            output.stderr.trim()
        ))
    }
}

/// The same, blocking: for `Drop`, which cannot await.
pub fn docker_blocking(args: &[&str]) -> Result<String, String> {
    let output = std::process::Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(format!(
            "`docker {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Docker answers (or the test fails here, saying so), and what earlier
/// runs whose process is gone left behind is removed. Once per test binary.
pub async fn ensure_docker() {
    static CHECKED: tokio::sync::OnceCell<Result<String, String>> =
        tokio::sync::OnceCell::const_new();
    let result = CHECKED
        .get_or_init(|| async {
            let info = docker_output(
                &["info", "--format", "{{.ServerVersion}}"],
                Duration::from_secs(30),
            )
            .await;
            let version = match info {
                Ok(out) if out.success() && !out.stdout.trim().is_empty() => {
                    out.stdout.trim().to_string()
                }
                Ok(out) => {
                    return Err(format!(
                        "the Docker daemon does not answer (`docker info` exited {:?}: {})",
                        out.code,
                        out.stderr.trim()
                    ))
                }
                Err(e) => return Err(e),
            };
            tokio::task::spawn_blocking(sweep_orphans)
                .await
                .map_err(|e| e.to_string())?;
            Ok(version)
        })
        .await;
    if let Err(e) = result {
        panic!(
            "the e2e tests need a running Docker daemon and cannot run without one: {e}. \
             Start Docker, or leave these tests out with `cargo test --test cluster -- --skip e2e`."
        );
    }
}

/// Removes containers, volumes and networks labelled by a test process
/// that no longer exists (a run that was killed before its `Drop`).
fn sweep_orphans() {
    let alive = |pid: &str| Path::new("/proc").join(pid).exists();
    let filter = format!("label={LABEL_OWNER}");
    let format = format!("{{{{.ID}}}} {{{{.Label \"{LABEL_OWNER}\"}}}}");
    let orphans = |kind: &[&str]| -> Vec<String> {
        let mut args = kind.to_vec();
        args.extend(["--filter", &filter, "--format", &format]);
        docker_blocking(&args)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, pid)| !alive(pid))
            .map(|(id, _)| id.to_string())
            .collect()
    };
    let remove = |what: &[&str], ids: Vec<String>| {
        if !ids.is_empty() {
            eprintln!(
                "e2e: removing {} left by dead test runs: {ids:?}",
                what.join(" ")
            );
            let mut args = what.to_vec();
            args.extend(ids.iter().map(String::as_str));
            let _ = docker_blocking(&args);
        }
    };
    remove(&["rm", "-f", "-v"], orphans(&["ps", "-a"]));
    // `docker volume ls` and `network ls` have no Label template function
    // in every client version, so ask for the label with inspect instead.
    for (list, inspect, rm) in [
        (&["volume", "ls", "-q"][..], "volume", &["volume", "rm"][..]),
        (
            &["network", "ls", "-q"][..],
            "network",
            &["network", "rm"][..],
        ),
    ] {
        let mut args = list.to_vec();
        args.extend(["--filter", &filter]);
        let ids: Vec<String> = docker_blocking(&args)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        let dead = ids
            .into_iter()
            .filter(|id| {
                let label = format!("{{{{index .Labels \"{LABEL_OWNER}\"}}}}");
                docker_blocking(&[inspect, "inspect", "--format", &label, id])
                    .is_ok_and(|pid| !pid.is_empty() && !alive(&pid))
            })
            .collect();
        remove(rm, dead);
    }
}
