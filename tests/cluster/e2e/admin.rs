//! Admin commands as an operator runs them: `kubectl exec raftset-N --
//! raftset ...`, inside the pod, against its own node on 127.0.0.1.

use std::time::Duration;

use raftset::client::Consistency;

use super::{deploy, members_are_the_pods, statuses_agree, verify_everywhere};
use crate::support::manifest::Manifest;
use crate::support::statefulset::{exclusive, StatefulSet};
use crate::support::Harness;
use crate::support::{poll, DEADLINE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_through_exec() {
    let _turn = exclusive().await;
    let set = deploy("admin", Manifest::base()).await;

    // Client commands in one pod, read back in another.
    let put = set
        .exec_json(2, &["raftset", "put", "greeting", "hello"])
        .await;
    assert!(put["revision"].as_u64().unwrap() > 0, "{put}");
    let got = set.exec_json(1, &["raftset", "get", "greeting"]).await;
    assert_eq!(got["value"], "hello");

    // status and members agree everywhere.
    let statuses = statuses_agree(&set).await;
    let leader_name = statuses[0]["leader_name"].as_str().unwrap().to_string();
    let leader = set.ordinal_of(&leader_name).expect("the leader is a pod");
    let text = set.exec_ok(0, &["raftset", "status"]).await;
    assert!(
        text.contains("leader") && text.contains(&leader_name),
        "{text}"
    );
    for i in set.ordinals() {
        members_are_the_pods(&set, i, 3).await;
    }

    // verify: every member's digest, taken at one index, agrees.
    let report = verify_everywhere(&set).await;
    assert!(report["keys"].as_u64().unwrap() >= 1, "{report}");
    let text = set.exec_ok(1, &["raftset", "verify"]).await;
    assert!(text.contains("all members agree"), "{text}");

    // transfer-leader to a named follower, from a third pod.
    let target = (leader + 1) % 3;
    let via = (leader + 2) % 3;
    let target_id = format!("{:x}", statuses[target]["id"].as_u64().unwrap());
    let old_term = statuses[leader]["term"].as_u64().unwrap();
    set.exec_ok(via, &["raftset", "transfer-leader", "--to", &target_id])
        .await;
    let (now, status) = set
        .wait_for_leader_among(&[0, 1, 2], None, old_term + 1)
        .await;
    assert_eq!(
        now,
        target,
        "leadership moved to {} (term {})",
        set.pod_name(target),
        status.term
    );
    // Writes work through the new leader.
    set.exec_ok(leader, &["raftset", "put", "greeting", "again"])
        .await;

    // transfer-leader with no target: any caught-up voter may take over.
    let moved = set.exec(target, &["raftset", "transfer-leader"]).await;
    assert!(moved.success(), "transfer-leader: {}", moved.stderr);
    let (next, _) = set
        .wait_for_leader_among(&[0, 1, 2], None, status.term + 1)
        .await;
    assert_ne!(
        next,
        target,
        "leadership moved away from {}",
        set.pod_name(target)
    );

    // backup: to stdout, and to a file on the pod's emptyDir (/tmp: the
    // root filesystem is read-only).
    let out = set.exec(0, &["raftset", "backup"]).await;
    assert!(out.success(), "backup: {}", out.stderr);
    assert!(
        out.stdout.starts_with("RAFTSET"),
        "a backup starts with the snapshot magic"
    );
    assert!(
        out.stdout.contains("greeting") && out.stdout.contains("again"),
        "the backup holds the acknowledged write"
    );
    let saved = set
        .exec(1, &["raftset", "backup", "--out", "/tmp/raftset.backup"])
        .await;
    assert!(saved.success(), "backup --out: {}", saved.stderr);
    assert!(
        saved
            .stderr
            .contains("bytes written to /tmp/raftset.backup"),
        "{}",
        saved.stderr
    );
    let refused = set
        .exec(1, &["raftset", "backup", "--out", "/var/raftset.backup"])
        .await;
    assert!(!refused.success(), "the root filesystem is read-only");

    // The cluster still agrees after all that.
    poll(
        "the last write to be readable from every pod",
        DEADLINE,
        Duration::from_millis(200),
        || async {
            for i in set.ordinals() {
                let got = set.exec(i, &["raftset", "get", "greeting", "--json"]).await;
                if !got.stdout.contains("\"again\"") {
                    return Err(format!(
                        "{}: {} {}",
                        set.pod_name(i),
                        got.stdout,
                        got.stderr
                    ));
                }
            }
            Ok(())
        },
    )
    .await;
    verify_everywhere(&set).await;
}

/// How step 3 of the README's restore hands the backup to the one-off pod.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Handover {
    /// `--from FILE`, the file mounted into the pod.
    File,
    /// `--from -` with the backup on standard input (`kubectl run -i`), as
    /// the README's step 3 does.
    Stdin,
}

/// The README's backup and restore steps: `raftset backup` through exec;
/// the set gone with its volumes; pod 0's claim filled by a one-off pod
/// running `raftset restore`; the set created again. Pod 0 founds a new
/// cluster holding the data, pods 1 and 2 join and receive it.
async fn backup_then_restore(tag: &str, handover: Handover) {
    let _turn = exclusive().await;
    let old = deploy(tag, Manifest::base()).await;
    let mut client = old.connect(1, Duration::from_secs(10)).await.unwrap();
    for k in 0..30 {
        client
            .put(format!("saved/{k}").as_bytes(), format!("v{k}").as_bytes())
            .await
            .unwrap();
    }
    let old_cluster = old.status(0).await.unwrap().cluster_id;
    let backup = old.exec_bytes(2, &["raftset", "backup"]).await;
    assert!(backup.starts_with(b"RAFTSET"), "a snapshot file");
    // Scaled to zero and every PVC deleted: here, the whole set goes.
    drop(client);
    drop(old);

    let mut set = StatefulSet::new(&format!("{tag}-new")).await;
    let data_dir = set.manifest.data_mount.clone();
    let file = tempfile::NamedTempFile::new().expect("a temp file");
    std::fs::write(file.path(), &backup).unwrap();
    // Readable by the pod's non-root user.
    std::fs::set_permissions(
        file.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let restored = match handover {
        Handover::File => {
            let args = [
                "restore",
                "--from",
                "/backup/raftset.db",
                "--data-dir",
                &data_dir,
            ];
            set.run_on_claim(0, &args, &[], &[(file.path(), "/backup/raftset.db")])
                .await
        }
        Handover::Stdin => {
            let args = ["restore", "--from", "-", "--data-dir", &data_dir];
            set.run_on_claim(0, &args, &backup, &[]).await
        }
    };
    assert!(
        restored.success(),
        "restore: {} {}",
        restored.stdout,
        restored.stderr
    );
    assert!(
        restored.stdout.contains("restored 30 keys"),
        "{}",
        restored.stdout
    );

    set.create().await;
    set.wait_for_voters(3).await;
    let statuses = statuses_agree(&set).await;
    assert_ne!(
        statuses[0]["cluster_id"],
        old_cluster.as_str(),
        "a restore founds a new cluster"
    );
    let leader_log = set.wait_for_leader().await.1.last_log_index;
    for i in 0..3 {
        set.wait_for_applied(i, leader_log).await;
        let mut c = set.connect(i, Duration::from_secs(10)).await.unwrap();
        for k in 0..30 {
            let kv = c
                .get_with(format!("saved/{k}").as_bytes(), Consistency::Serializable)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("saved/{k} missing on {}", set.pod_name(i)));
            assert_eq!(kv.value, format!("v{k}").as_bytes());
        }
    }
    let report = verify_everywhere(&set).await;
    assert_eq!(report["keys"], 30, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_then_restore_into_a_fresh_set() {
    backup_then_restore("restore", Handover::File).await;
}

/// The README's step 3 verbatim: `restore --from -` reading standard input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_reads_the_backup_on_stdin_as_the_readme_says() {
    backup_then_restore("restore-stdin", Handover::Stdin).await;
}
