//! The README's first command, `raftset local --replicas 3`, used as the
//! README says: on the ports it prints, one counter through every node, a
//! child that dies comes back, Ctrl-C stops them all, and running it again
//! on the same directory resumes the same cluster. Each node runs its share
//! of the machine's cores in workers.
//!
//! It binds the fixed ports the README promises on 127.0.0.1 (every other
//! test has loopback addresses of its own), so it fails early, saying so,
//! when something else on the machine holds one of them.

use std::path::Path;
use std::process::Stdio;

use rustix::process::{kill_process, kill_process_group, test_kill_process_group, Pid, Signal};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::http::{get, visits, visits_in};
use crate::support::{wait_for, DEADLINE};

const HTTP: [&str; 3] = ["127.0.0.1:8080", "127.0.0.1:8081", "127.0.0.1:8082"];

/// Every port node 0 to 2 listens on: client gRPC, Raft, HTTP, probes,
/// admin.
const PORTS: [u16; 15] = [
    7000, 7001, 7002, 7100, 7101, 7102, 8080, 8081, 8082, 8180, 8181, 8182, 7090, 7091, 7092,
];

/// A running `raftset local`, in a process group of its own with its
/// children, as a shell runs a foreground job. Dropped, the whole group is
/// killed, so a failed test leaves no node holding the ports.
struct Local {
    child: Child,
    group: Pid,
}

impl Local {
    /// Starts `raftset local --replicas 3 --dir <dir>` and waits for the
    /// line saying the cluster is formed.
    async fn start(dir: &Path) -> Local {
        let mut child = Command::new(env!("CARGO_BIN_EXE_raftset"))
            .args(["local", "--replicas", "3", "--dir"])
            .arg(dir)
            .env("RUST_LOG", "warn")
            .env_remove("TOKIO_WORKER_THREADS")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting raftset local");
        let group = Pid::from_raw(child.id().expect("a running child") as i32).expect("a pid");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let formed = async {
            while let Some(line) = lines.next_line().await.expect("reading its output") {
                if line.starts_with("cluster ready: 3 voters") {
                    return;
                }
            }
            panic!("raftset local ended its output before the cluster formed");
        };
        tokio::time::timeout(DEADLINE, formed)
            .await
            .expect("raftset local printed `cluster ready: 3 voters` in time");
        // The rest of its output goes nowhere, so its writes never block.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Local { child, group }
    }

    /// Ctrl-C in the terminal: SIGINT to the whole group. Waits for
    /// `raftset local` to exit and checks that it exited cleanly and took
    /// every node with it.
    async fn interrupt(mut self) {
        kill_process_group(self.group, Signal::INT).expect("signalling the group");
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("raftset local stops after Ctrl-C")
            .expect("its exit status");
        assert!(
            status.success(),
            "Ctrl-C ends raftset local cleanly: {status}"
        );
        assert!(
            !self.group_alive(),
            "no node outlives raftset local after Ctrl-C"
        );
    }

    /// Whether any process of the group is left.
    fn group_alive(&self) -> bool {
        test_kill_process_group(self.group).is_ok()
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        let _ = kill_process_group(self.group, Signal::KILL);
    }
}

/// Fails the test, naming the port, when something already listens on one
/// the README promises.
fn ports_are_free() {
    for port in PORTS {
        if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            panic!(
                "127.0.0.1:{port} is taken ({e}); this test runs `raftset local` on the README's \
                 ports: stop what holds it (a `raftset local` of your own?) and run it again"
            );
        }
    }
}

/// The pid of the `raftset serve` child named `name` whose data is under
/// `dir`, read from `/proc`, if it runs.
fn node_pid(dir: &Path, name: &str) -> Option<Pid> {
    let data_dir = dir.join(name);
    let data_dir = data_dir.to_str().expect("a UTF-8 path");
    for entry in std::fs::read_dir("/proc").expect("/proc") {
        let entry = entry.expect("a /proc entry");
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let serves =
            args.first().is_some_and(|a| a.ends_with(b"raftset")) && args.contains(&&b"serve"[..]);
        if serves && args.contains(&data_dir.as_bytes()) {
            return Pid::from_raw(pid);
        }
    }
    None
}

/// `curl http://<addr>/`: counts a visit, returns the count it answered.
async fn visit(addr: &str) -> i64 {
    let reply = get(addr, "/", "*/*").await;
    assert_eq!(reply.status, 200, "GET http://{addr}/: {}", reply.body);
    visits_in(&reply.body).unwrap_or_else(|| panic!("no `visits: <n>` line in {:?}", reply.body))
}

#[tokio::test(flavor = "multi_thread")]
async fn local_runs_one_counter_restarts_a_dead_node_stops_on_ctrl_c_and_resumes() {
    ports_are_free();
    let dir = tempfile::tempdir().unwrap();
    let local = Local::start(dir.path()).await;

    // The nodes share this machine's cores: each runs its share of
    // workers, not one per core.
    let cores = std::thread::available_parallelism().unwrap().get();
    let share = format!("TOKIO_WORKER_THREADS={}", (cores / 3).max(1));
    for name in ["raftset-0", "raftset-1", "raftset-2"] {
        let pid = node_pid(dir.path(), name).expect("the node runs");
        let environ = std::fs::read(format!("/proc/{}/environ", pid.as_raw_nonzero())).unwrap();
        assert!(
            environ.split(|b| *b == 0).any(|v| v == share.as_bytes()),
            "{name} runs with {share}"
        );
    }

    assert_eq!(visit(HTTP[0]).await, 1);
    assert_eq!(visit(HTTP[1]).await, 2, "another node, the same counter");
    assert_eq!(visits(HTTP[2]).await, Ok(2));

    let killed = node_pid(dir.path(), "raftset-1").expect("raftset-1 runs");
    kill_process(killed, Signal::KILL).unwrap();
    wait_for("raftset-1 to be restarted and serve again", || async {
        match node_pid(dir.path(), "raftset-1") {
            Some(pid) if pid != killed => visits(HTTP[1]).await,
            _ => Err("not restarted yet".into()),
        }
    })
    .await;
    assert_eq!(visit(HTTP[1]).await, 3);

    local.interrupt().await;
    ports_are_free();

    let local = Local::start(dir.path()).await;
    assert_eq!(
        wait_for("the count after the restart", || visits(HTTP[0])).await,
        3,
        "running it again resumes the same cluster"
    );
    assert_eq!(visit(HTTP[2]).await, 4);
    local.interrupt().await;
}
