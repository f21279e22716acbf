//! Admin commands through the gRPC Admin service and the CLI.

use raftset::proto::AddLearnerRequest;

use crate::support::{wait_for, Cluster, Harness};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_transfer_leader_and_verify_through_any_node() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let mut client = cluster.client(follower).await;
    for i in 0..20 {
        client.put(format!("k{i}").as_bytes(), b"v").await.unwrap();
    }

    let members = client.members().await.unwrap();
    assert_eq!(members.members.len(), 3);
    assert_eq!(members.members.iter().filter(|m| m.is_leader).count(), 1);
    assert!(members
        .members
        .iter()
        .all(|m| m.member.as_ref().unwrap().voter));

    let target_name = &cluster.nodes[(leader + 2) % 3].name;
    let target = members
        .members
        .iter()
        .map(|m| m.member.clone().unwrap())
        .find(|m| &m.name == target_name)
        .unwrap();
    let status = client.transfer_leader(Some(target.id)).await.unwrap();
    assert_eq!(
        status.leader_id,
        Some(target.id),
        "leadership moved to the chosen voter"
    );
    assert_eq!(cluster.nodes[cluster.leader().await].name, *target_name);
    client.put(b"after-transfer", b"v").await.unwrap();

    let report = client.verify().await.unwrap();
    assert!(report.agree, "{report:?}");
    assert_eq!(report.members.len(), 3);
    assert_eq!(report.keys, 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_and_backup_contain_every_acknowledged_write() {
    let cluster = Cluster::start(3).await;
    let mut client = cluster.client(1).await;
    for i in 0..50 {
        client
            .put(format!("backup-key-{i:02}").as_bytes(), b"v")
            .await
            .unwrap();
    }
    assert!(client.snapshot().await.unwrap() > 0);

    let mut stream = client.backup().await.unwrap();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        bytes.extend_from_slice(&chunk.data);
    }
    assert!(bytes.starts_with(b"RAFTSET\x02"), "a raftset snapshot file");
    for i in 0..50 {
        let key = format!("backup-key-{i:02}");
        assert!(
            bytes.windows(key.len()).any(|w| w == key.as_bytes()),
            "{key} is in the backup"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_can_be_added_back_as_learner_then_voter() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let gone = (leader + 1) % 3;
    let mut client = cluster.client(leader).await;
    let status = cluster.status(gone).await.unwrap();
    let member = status
        .members
        .iter()
        .find(|m| m.id == status.id)
        .unwrap()
        .clone();

    let members = client.remove(member.id).await.unwrap();
    assert_eq!(members.members.len(), 2);
    let missing = client.remove(member.id).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    let learner = AddLearnerRequest {
        id: member.id,
        name: member.name.clone(),
        peer_addr: member.peer_addr.clone(),
        api_addr: member.api_addr.clone(),
        http_addr: member.http_addr.clone(),
    };
    let members = client.add_learner(learner).await.unwrap();
    let added = members
        .members
        .iter()
        .find(|m| m.member.as_ref().unwrap().id == member.id)
        .unwrap();
    assert!(!added.member.as_ref().unwrap().voter);
    client.promote(member.id).await.unwrap();
    cluster.wait_for_voters(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_tables_or_json_and_exits_non_zero_on_failure() {
    let cluster = Cluster::start(3).await;
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_raftset"))
            .args(args)
            .output()
            .expect("run the CLI")
    };
    let endpoint = cluster.nodes[2].api();
    let put = cli(&["put", "greeting", "hello", "--endpoint", &endpoint]);
    assert!(put.status.success(), "{put:?}");
    let get = cli(&["get", "greeting", "--endpoint", &endpoint]);
    assert_eq!(String::from_utf8_lossy(&get.stdout), "hello\n");

    let status = cli(&["status", "--json", "--endpoint", &endpoint]);
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json["name"], "raftset-2");
    assert_eq!(json["members"].as_array().unwrap().len(), 3);

    let members = cli(&["members", "--endpoint", &endpoint]);
    assert!(members.status.success());
    assert_eq!(
        String::from_utf8_lossy(&members.stdout).lines().count(),
        4,
        "a header and 3 rows"
    );

    let verify = wait_for("verify to pass", || async {
        let out = cli(&["verify", "--endpoint", &endpoint]);
        if out.status.success() {
            Ok(out)
        } else {
            Err(format!("{out:?}"))
        }
    })
    .await;
    assert!(String::from_utf8_lossy(&verify.stdout).contains("all members agree"));

    let missing = cli(&["get", "nope", "--endpoint", &endpoint]);
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("key not found: nope"), "{stderr}");

    let bad = cli(&["put", "", "v", "--endpoint", &endpoint]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("key must not be empty"));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.db");
    let backup = cli(&[
        "backup",
        "--out",
        file.to_str().unwrap(),
        "--endpoint",
        &endpoint,
    ]);
    assert!(backup.status.success(), "{backup:?}");
    assert!(std::fs::read(&file).unwrap().starts_with(b"RAFTSET\x02"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_into_a_fresh_cluster() {
    let old = Cluster::start(3).await;
    let mut client = old.client(1).await;
    for i in 0..30 {
        client
            .put(format!("k{i:02}").as_bytes(), format!("v{i}").as_bytes())
            .await
            .unwrap();
    }
    assert_eq!(client.increment(b"visits", 7).await.unwrap(), 7);
    let old_status = old.status(0).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.db");
    crate::support::backup_into(&mut client, &file).await;
    drop(old);

    let mut new = Cluster::unstarted(3, &[]);
    let restore = |data_dir: &std::path::Path| crate::support::restore_from(&file, data_dir);
    let out = restore(&new.nodes[0].data_dir);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("restored 31 keys"),
        "{out:?}"
    );
    let again = restore(&new.nodes[0].data_dir);
    assert_eq!(
        again.status.code(),
        Some(1),
        "never restore over existing data"
    );
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not empty"),
        "{again:?}"
    );
    // From standard input, as the README's one-off pod does it.
    let piped = std::process::Command::new(env!("CARGO_BIN_EXE_raftset"))
        .args([
            "restore",
            "--from",
            "-",
            "--data-dir",
            new.nodes[1].data_dir.to_str().unwrap(),
        ])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&piped.stdout).contains("restored 31 keys"),
        "{piped:?}"
    );
    std::fs::remove_dir_all(&new.nodes[1].data_dir).unwrap();

    for i in 0..3 {
        new.restart(i);
    }
    new.wait_for_voters(3).await;
    let status = new.status(2).await.unwrap();
    assert_ne!(
        status.cluster_id, old_status.cluster_id,
        "a restore founds a new cluster"
    );
    let mut client = new.client(2).await;
    for i in 0..30 {
        let kv = client
            .get(format!("k{i:02}").as_bytes())
            .await
            .unwrap()
            .expect("restored key");
        assert_eq!(kv.value, format!("v{i}").as_bytes());
    }
    assert_eq!(client.increment(b"visits", 1).await.unwrap(), 8);
    let report = client.verify().await.unwrap();
    assert!(
        report.agree,
        "every member, joined through the snapshot, holds the restored data: {report:?}"
    );
}

/// Runs the `raftset` command line.
fn raftset(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_raftset"))
        .args(args)
        .output()
        .expect("run the CLI")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_new_cluster_is_refused_while_a_quorum_is_reachable_and_changes_nothing() {
    let mut cluster = Cluster::start(3).await;
    let mut client = cluster.client(0).await;
    client.put(b"before", b"v").await.unwrap();
    let before = cluster.status(0).await.unwrap();

    // All three answer; then two of three, still a quorum. Each node is
    // asked, leader or not, through the API and the command line.
    for stopped in [None, Some(2)] {
        if let Some(i) = stopped {
            cluster.stop(i).await;
        }
        for i in cluster.running() {
            let refused = cluster.force_new_cluster_refused(i).await;
            assert!(
                refused.contains("refusing to force a new cluster"),
                "{refused}"
            );
            let out = raftset(&["force-new-cluster", "--endpoint", &cluster.nodes[i].api()]);
            assert_eq!(out.status.code(), Some(1), "{out:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
            assert!(
                stderr.contains("refusing to force a new cluster"),
                "{stderr}"
            );
        }
    }

    // Nothing changed: the same cluster, members and data, still writable,
    // and the stopped node comes back into it.
    cluster.restart(2);
    cluster.wait_ready(2).await;
    let after = cluster.status(2).await.unwrap();
    assert_eq!(after.cluster_id, before.cluster_id);
    assert_eq!(after.members.len(), 3);
    for node in &cluster.nodes {
        assert!(
            !node.data_dir.join("REFOUND").exists(),
            "no re-founding recorded"
        );
    }
    let mut client = cluster.client(2).await;
    client.put(b"after", b"v").await.unwrap();
    assert_eq!(client.get(b"before").await.unwrap().unwrap().value, b"v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_new_cluster_is_refused_on_a_node_that_is_not_a_member() {
    // Node 1 starts alone on an empty volume: it waits for a member to join
    // through, and holds no cluster to re-found.
    let mut cluster = Cluster::unstarted(2, &[]);
    cluster.restart(1);
    let refused = cluster.force_new_cluster_refused(1).await;
    assert!(refused.contains("not a voter"), "{refused}");
    assert!(!cluster.nodes[1].data_dir.join("REFOUND").exists());
}
