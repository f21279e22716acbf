//! Admin commands through the gRPC Admin service and the CLI.

use std::time::Duration;

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

    // Straight back: a leader elected moments ago refuses the first
    // campaign (its lease on its own election), so it asks again.
    let old = cluster.nodes[leader].name.clone();
    let old_id = members
        .members
        .iter()
        .map(|m| m.member.clone().unwrap())
        .find(|m| m.name == old)
        .unwrap()
        .id;
    let status = client.transfer_leader(Some(old_id)).await.unwrap();
    assert_eq!(status.leader_id, Some(old_id), "leadership moved back");

    let report = client.verify().await.unwrap();
    assert!(report.agree, "{report:?}");
    assert_eq!(report.members.len(), 3);
    assert_eq!(report.keys, 21);
}

/// A snapshot is written beside applying: with the snapshot file's writing
/// stalled for 10 s, a write is acknowledged at once, and the snapshot
/// covers what was applied when it began, not the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_on_while_a_snapshot_is_written() {
    let (cluster, mut client, applied, snapshot) = a_snapshot_being_written(10_000).await;

    let put = tokio::time::timeout(Duration::from_secs(5), client.put(b"during", b"v")).await;
    assert!(
        matches!(put, Ok(Ok(_))),
        "a write while the snapshot is written: {put:?}"
    );
    let after = cluster.status(0).await.unwrap().applied_index;
    let index = snapshot.await.unwrap().unwrap();
    assert!(
        applied <= index && index < after,
        "the snapshot ({index}) is the state when it began, before the write ({after})"
    );
}

/// A snapshot asked for while another is being written covers what was
/// applied when it was asked. openraft drops a request to build a snapshot
/// while one is under way, and the one under way stops short of the write
/// below, so the node must ask again once it ends (before, the call waited
/// for the next snapshot the log's growth would start: under a load that
/// stopped, never).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_asked_for_during_another_covers_what_was_applied_when_asked() {
    let (cluster, mut client, _, first) = a_snapshot_being_written(3_000).await;
    client.put(b"during", b"v").await.unwrap();
    let applied = cluster.status(0).await.unwrap().applied_index;

    let second = client
        .clone()
        .with_timeout(Duration::from_secs(30))
        .snapshot()
        .await;
    let first = first.await.unwrap().unwrap();
    assert!(first < applied, "the first snapshot began before the write");
    let second = second.expect("the second snapshot is taken");
    assert!(
        second >= applied,
        "the second snapshot ({second}) covers the write ({applied})"
    );
}

/// A one-node cluster whose snapshot file's writing stalls for `stall_ms`,
/// once a snapshot asked for is being written: its client, the index
/// applied when it was asked for, and the call.
async fn a_snapshot_being_written(
    stall_ms: u64,
) -> (
    Cluster,
    raftset::Client,
    u64,
    tokio::task::JoinHandle<raftset::client::Result<u64>>,
) {
    let mut cluster = Cluster::start(1).await;
    cluster.stop(0).await;
    cluster.restart_armed(0, &format!("snapshot-write=return({stall_ms})"));
    cluster.leader().await;
    let client = cluster.client(0).await;
    let applied = cluster.status(0).await.unwrap().applied_index;
    let snapshot = tokio::spawn({
        let mut client = client.clone().with_timeout(Duration::from_secs(60));
        async move { client.snapshot().await }
    });
    cluster
        .wait_for_log(0, 0, "failpoint snapshot-write: stalling")
        .await;
    (cluster, client, applied, snapshot)
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
    assert!(bytes.starts_with(b"RAFTSET\x04"), "a raftset snapshot file");
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
    let member = own_member(&cluster, gone).await;

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

/// Runs the CLI with `stdin` as its standard input.
fn cli_with_stdin(args: &[&str], stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_raftset"))
        .args(args)
        .env_remove("RAFTSET_ENDPOINTS")
        .env_remove("RAFTSET_ENDPOINT")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the CLI");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || input.write_all(&stdin));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    out
}

fn cli(args: &[&str]) -> std::process::Output {
    cli_with_stdin(args, b"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_tables_or_json_and_exits_non_zero_on_failure() {
    let cluster = Cluster::start(3).await;
    let endpoint = cluster.nodes[2].api();
    let put = cli(&["put", "greeting", "hello", "--endpoint", &endpoint]);
    assert!(put.status.success(), "{put:?}");
    let get = cli(&["get", "greeting", "--endpoint", &endpoint]);
    assert_eq!(
        String::from_utf8_lossy(&get.stdout),
        "hello",
        "raw bytes, no newline added when stdout is not a terminal"
    );

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
    assert_eq!(missing.status.code(), Some(3), "not found");
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("key not found: nope"), "{stderr}");

    let bad = cli(&["put", "", "v", "--endpoint", &endpoint]);
    assert_eq!(bad.status.code(), Some(2), "refused as invalid: bad usage");
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
    assert!(std::fs::read(&file).unwrap().starts_with(b"RAFTSET\x04"));
    let stderr = String::from_utf8_lossy(&backup.stderr);
    assert!(
        stderr.starts_with("backup: ") && stderr.lines().count() == 1,
        "not a terminal: one plain line, no progress: {stderr:?}"
    );

    // On a terminal (script(1) gives it one) the bytes count as they come.
    let on_tty = std::process::Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "{} backup --out {} --endpoints {endpoint}",
            env!("CARGO_BIN_EXE_raftset"),
            dir.path().join("tty.db").display()
        ))
        .arg("/dev/null")
        .output()
        .expect("script(1) from util-linux");
    let seen = String::from_utf8_lossy(&on_tty.stdout);
    assert!(on_tty.status.success(), "{on_tty:?}");
    assert!(seen.contains("backing up: "), "a progress line: {seen:?}");
    assert!(seen.contains("bytes written"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_carries_any_bytes_fails_over_and_exits_with_a_code_per_failure() {
    use std::os::unix::ffi::OsStrExt;
    let cluster = Cluster::start(3).await;
    let dead = "127.0.0.1:1";
    // An unreachable endpoint first: every command moves on to the next.
    let endpoints = format!("{dead},{}", cluster.nodes[1].api());
    let with = |args: &[&str]| {
        let mut args = args.to_vec();
        args.extend(["--endpoints", &endpoints]);
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>()
    };
    let run = |args: &[&str]| {
        let args = with(args);
        cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // A value over the 128 KiB a single argument may hold, on stdin.
    let big: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
    let args = with(&["put", "big"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let put = cli_with_stdin(&args, &big);
    assert!(put.status.success(), "{put:?}");
    let get = run(&["get", "big"]);
    assert!(get.status.success(), "{get:?}");
    assert!(get.stdout == big, "get writes the exact bytes");

    // `-` is stdin too, and --file reads a file.
    let args = with(&["put", "dash", "-"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert!(cli_with_stdin(&args, b"from stdin\n").status.success());
    assert_eq!(run(&["get", "dash"]).stdout, b"from stdin\n");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("value.bin");
    std::fs::write(&file, b"\x00\xff file").unwrap();
    assert!(run(&["put", "filed", "--file", file.to_str().unwrap()])
        .status
        .success());
    assert_eq!(run(&["get", "filed"]).stdout, b"\x00\xff file");

    // A key that is not UTF-8, straight from the shell's bytes.
    let key = std::ffi::OsStr::from_bytes(b"bin\xfe");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_raftset"))
        .arg("put")
        .arg(key)
        .arg("v")
        .args(["--endpoints", &endpoints])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let json = run(&["scan", "--prefix", "bin", "-o", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let kv = &json["kvs"][0];
    assert_eq!(kv["key_b64"], "Ymlu/g==", "{kv}");
    assert!(kv.get("key").is_none(), "no lossy text key: {kv}");
    assert_eq!(kv["value"], "v");
    let filed = run(&["get", "filed", "--json"]);
    let filed: serde_json::Value = serde_json::from_slice(&filed.stdout).unwrap();
    assert_eq!(filed["value_b64"], "AP8gZmlsZQ==");
    assert!(filed.get("value").is_none());
    let yaml = run(&["get", "dash", "-o", "yaml"]);
    let yaml = String::from_utf8_lossy(&yaml.stdout);
    assert!(yaml.contains("value: \"from stdin\\n\"\n"), "{yaml}");
    assert!(yaml.contains("key_b64: \"ZGFzaA==\"\n"), "{yaml}");

    // Exit codes.
    let missing = run(&["get", "nope", "--allow-missing"]);
    assert_eq!(missing.status.code(), Some(0), "{missing:?}");
    assert!(missing.stdout.is_empty());
    assert_eq!(run(&["get", "nope"]).status.code(), Some(3));
    assert_eq!(
        run(&["remove", "abc"]).status.code(),
        Some(3),
        "no such member"
    );
    assert_eq!(run(&["get"]).status.code(), Some(2), "usage");
    let both_dead = cli(&[
        "put",
        "k",
        "v",
        "--endpoints",
        &format!("{dead},127.0.0.1:2"),
    ]);
    assert_eq!(
        both_dead.status.code(),
        Some(5),
        "never sent: {both_dead:?}"
    );
    let stderr = String::from_utf8_lossy(&both_dead.stderr);
    assert!(
        stderr.starts_with("error: no endpoint could serve it (tried 127.0.0.1:1, 127.0.0.1:2)"),
        "{stderr}"
    );

    // The variables: RAFTSET_ENDPOINTS before the older RAFTSET_ENDPOINT,
    // which the preStop hook (and its default) still rely on.
    let env_get = |vars: &[(&str, &str)]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_raftset"))
            .args(["get", "dash"])
            .env_remove("RAFTSET_ENDPOINTS")
            .env_remove("RAFTSET_ENDPOINT")
            .envs(vars.iter().copied())
            .output()
            .unwrap()
    };
    let api = cluster.nodes[0].api();
    assert_eq!(
        env_get(&[("RAFTSET_ENDPOINT", &api)]).stdout,
        b"from stdin\n"
    );
    assert_eq!(
        env_get(&[
            ("RAFTSET_ENDPOINTS", &endpoints),
            ("RAFTSET_ENDPOINT", dead)
        ])
        .stdout,
        b"from stdin\n"
    );
    assert_eq!(
        env_get(&[("RAFTSET_ENDPOINTS", dead), ("RAFTSET_ENDPOINT", &api)])
            .status
            .code(),
        Some(5),
        "RAFTSET_ENDPOINTS wins"
    );

    let unreachable = cli(&["get", "big", "--endpoints", dead]);
    assert_eq!(unreachable.status.code(), Some(5), "{unreachable:?}");
    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(
        stderr.matches("tcp connect error").count(),
        1,
        "each cause once: {stderr}"
    );
}

/// `backup --dir --keep`, as the scheduled-backup CronJob runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_keep_the_newest_and_touch_nothing_else() {
    let cluster = Cluster::start(3).await;
    let endpoint = cluster.nodes[2].api();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    // What a backup volume holds besides backups.
    std::fs::create_dir(dir.path().join("lost+found")).unwrap();
    let unrelated = [
        ("notes.txt", "keep me"),
        ("raftset-latest.backup", "a copy under another name"),
        ("raftset-20000101T000000.000Z.backup.bak", "renamed by hand"),
    ];
    for (name, text) in unrelated {
        std::fs::write(dir.path().join(name), text).unwrap();
    }

    let mut client = cluster.client(2).await;
    let mut taken = Vec::new();
    for i in 0..3 {
        client.put(format!("k{i}").as_bytes(), b"v").await.unwrap();
        let out = cli(&[
            "backup",
            "--dir",
            path,
            "--keep",
            "2",
            "-o",
            "json",
            "--endpoints",
            &endpoint,
        ]);
        assert!(out.status.success(), "{out:?}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        taken.push(json);
    }
    let file = |json: &serde_json::Value| std::path::PathBuf::from(json["file"].as_str().unwrap());
    assert_eq!(taken[0]["removed"], serde_json::json!([]));
    assert_eq!(taken[1]["removed"], serde_json::json!([]));
    assert_eq!(
        taken[2]["removed"],
        serde_json::json!([taken[0]["file"]]),
        "the third run removes the oldest"
    );

    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut want: Vec<String> = ["lost+found"]
        .into_iter()
        .chain(unrelated.iter().map(|(name, _)| *name))
        .map(str::to_string)
        .chain(taken[1..].iter().map(|json| {
            let name = file(json)
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            assert!(
                name.starts_with("raftset-") && name.ends_with("Z.backup"),
                "{name}"
            );
            name
        }))
        .collect();
    want.sort();
    assert_eq!(
        names, want,
        "the newest two backups, everything else untouched, no temporary file left"
    );
    for (name, text) in unrelated {
        assert_eq!(
            std::fs::read_to_string(dir.path().join(name)).unwrap(),
            text
        );
    }

    // Each one kept restores, with the keys written before it.
    for (json, keys) in [(&taken[1], 2), (&taken[2], 3)] {
        let data = tempfile::tempdir().unwrap();
        let out = crate::support::restore_from(&file(json), &data.path().join("data"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert!(
            stdout.contains(&format!("restored {keys} keys")),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!("backup of index {})", json["index"])),
            "{stdout}"
        );
    }

    // The CronJob's own command line, as k8s/overlays/production renders
    // it: a temporary directory for its volume, this cluster for the
    // client Service.
    use crate::support::manifest;
    let rendered = manifest::render(&manifest::k8s_dir().join("overlays/production")).unwrap();
    let cronjob = rendered
        .iter()
        .find(|o| o["kind"] == "CronJob")
        .expect("the production overlay schedules backups");
    let container = &cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0];
    let mount = container["volumeMounts"][0]["mountPath"].as_str().unwrap();
    let volume = tempfile::tempdir().unwrap();
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| match a.as_str().unwrap() {
            a if a == mount => volume.path().to_str().unwrap(),
            a => a,
        })
        .collect();
    let scheduled = std::process::Command::new(env!("CARGO_BIN_EXE_raftset"))
        .args(&args)
        .env("RAFTSET_ENDPOINTS", &endpoint)
        .output()
        .unwrap();
    assert!(scheduled.status.success(), "{args:?}: {scheduled:?}");
    let json: serde_json::Value = serde_json::from_slice(&scheduled.stdout).unwrap();
    let data = tempfile::tempdir().unwrap();
    let restored = crate::support::restore_from(&file(&json), &data.path().join("data"));
    assert!(restored.status.success(), "{restored:?}");

    let nowhere = dir.path().join("no-such-dir");
    let missing = cli(&[
        "backup",
        "--dir",
        nowhere.to_str().unwrap(),
        "--endpoints",
        &endpoint,
    ]);
    assert_eq!(missing.status.code(), Some(1), "{missing:?}");
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no-such-dir"),
        "{missing:?}"
    );
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
    // On a terminal (script(1) gives it one) stdin's bytes count as they come.
    let on_tty = std::process::Command::new("script")
        .arg("-qec")
        .arg(format!(
            "{} restore --from - --data-dir {} < {}",
            env!("CARGO_BIN_EXE_raftset"),
            new.nodes[1].data_dir.display(),
            file.display()
        ))
        .arg("/dev/null")
        .output()
        .expect("script(1) from util-linux");
    let seen = String::from_utf8_lossy(&on_tty.stdout);
    assert!(
        seen.contains("reading the backup: "),
        "a progress line: {seen:?}"
    );
    assert!(seen.contains("restored 31 keys"), "{seen:?}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_compares_and_swaps_increments_and_deletes_a_prefix() {
    let cluster = Cluster::start(3).await;
    let endpoint = cluster.nodes[0].api();
    let run = |args: &[&str]| {
        let mut args = args.to_vec();
        args.extend(["--endpoints", &endpoint]);
        cli(&args)
    };
    let code = |args: &[&str]| run(args).status.code();

    assert_eq!(code(&["cas", "lock", "a", "--expect-absent"]), Some(0));
    let lost = run(&["cas", "lock", "b", "--expect-absent"]);
    assert_eq!(lost.status.code(), Some(4), "CAS lost: {lost:?}");
    let stderr = String::from_utf8_lossy(&lost.stderr);
    assert!(
        stderr.starts_with("error: compare-and-swap failed"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("compare-and-swap failed").count(),
        1,
        "{stderr}"
    );
    assert_eq!(code(&["cas", "lock", "b", "--expect", "x"]), Some(4));
    assert_eq!(code(&["cas", "lock", "b", "--expect", "a"]), Some(0));
    assert_eq!(run(&["get", "lock"]).stdout, b"b");
    assert_eq!(code(&["cas", "lock", "--delete", "--expect", "b"]), Some(0));
    assert_eq!(code(&["get", "lock"]), Some(3));
    assert_eq!(code(&["cas", "lock", "v"]), Some(2), "needs --expect*");

    assert_eq!(run(&["incr", "n"]).stdout, b"1\n");
    assert_eq!(run(&["incr", "n", "--by", "-5"]).stdout, b"-4\n");
    let json = run(&["incr", "n", "--by", "10", "-o", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["value"], 6);
    run(&["put", "text", "abc"]);
    assert_eq!(code(&["incr", "text"]), Some(4), "not an integer");
    assert_eq!(run(&["visits"]).stdout, b"0\n", "no visit yet");
    run(&["put", "visits", "abc"]);
    let broken = run(&["visits"]);
    assert_eq!(
        broken.status.code(),
        Some(1),
        "never shown as 0: {broken:?}"
    );
    assert!(String::from_utf8_lossy(&broken.stderr).contains("not a decimal integer"));

    for i in 0..5 {
        run(&["put", &format!("tmp/{i}"), "v"]);
    }
    run(&["put", "tmpx", "kept"]);
    let out = run(&["delete", "--prefix", "tmp/", "--page-size", "2"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "deleted 5 keys\n");
    let left = run(&["scan", "--prefix", "tmp", "-o", "json"]);
    let left: serde_json::Value = serde_json::from_slice(&left.stdout).unwrap();
    assert_eq!(left["kvs"].as_array().unwrap().len(), 1, "{left}");
    assert_eq!(left["kvs"][0]["key"], "tmpx");
    assert_eq!(code(&["delete"]), Some(2), "KEY or --prefix");

    // bench: progress on a terminal only, the summary either way.
    let bench = ["bench", "--seconds", "1", "--in-flight", "2"];
    let piped = run(&bench);
    assert!(piped.status.success(), "{piped:?}");
    assert!(
        piped.stderr.is_empty(),
        "no progress into a pipe: {piped:?}"
    );
    assert!(String::from_utf8_lossy(&piped.stdout).contains("ops/s"));
    let on_tty = std::process::Command::new("script")
        .arg("-qec")
        .arg(format!(
            "{} {} --endpoints {endpoint}",
            env!("CARGO_BIN_EXE_raftset"),
            bench.join(" ")
        ))
        .arg("/dev/null")
        .output()
        .expect("script(1) from util-linux");
    let seen = String::from_utf8_lossy(&on_tty.stdout);
    assert!(seen.contains("bench ["), "a progress bar: {seen:?}");
    assert!(
        seen.contains(" errors, ") && seen.contains(" ops/s"),
        "{seen:?}"
    );

    // Puts stay inside --keyspace; every workload runs without errors.
    let cleared = run(&["delete", "--prefix", "bench/"]);
    assert!(cleared.status.success(), "{cleared:?}");
    for workload in ["put", "get", "serializable-get", "mix", "increment"] {
        let out = run(&[
            "bench",
            "--seconds",
            "1",
            "--in-flight",
            "4",
            "--keyspace",
            "5",
            "--value-size",
            "16",
            "--workload",
            workload,
            "-o",
            "json",
        ]);
        assert!(out.status.success(), "{workload}: {out:?}");
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(summary["errors"], 0, "{workload}: {summary}");
        assert!(
            summary["ops"].as_u64().unwrap() > 0,
            "{workload}: {summary}"
        );
        assert_eq!(summary["keyspace"], 5, "{summary}");
    }
    let keys = run(&["scan", "--prefix", "bench/0", "-o", "json"]);
    let keys: serde_json::Value = serde_json::from_slice(&keys.stdout).unwrap();
    let keys = keys["kvs"].as_array().unwrap();
    assert!(!keys.is_empty() && keys.len() <= 5, "{keys:?}");
    assert!(
        keys.iter()
            .all(|kv| kv["key"].as_str().unwrap().len() == 16),
        "{keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_watches_from_a_revision_until_interrupted() {
    use std::io::BufRead;
    let cluster = Cluster::start(3).await;
    let endpoint = cluster.nodes[1].api();
    let mut client = cluster.client(0).await;
    let first = client.put(b"app/a", b"1").await.unwrap();
    client.put(b"other", b"x").await.unwrap();
    client.delete(b"app/a").await.unwrap();

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_raftset"))
        .args(["watch", "app/", "--from-revision", &first.to_string()])
        .args(["-o", "json", "--endpoints", &endpoint])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let put = next_line(&mut lines).await;
    assert_eq!(put["kind"], "put");
    assert_eq!(put["key"], "app/a");
    assert_eq!(put["value"], "1");
    assert_eq!(put["revision"], first);
    let delete = next_line(&mut lines).await;
    assert_eq!(delete["kind"], "delete");
    assert!(delete.get("value").is_none(), "{delete}");
    // Then live changes, still under the prefix only.
    client.put(b"other", b"y").await.unwrap();
    let live = client.put(b"app/b", b"2").await.unwrap();
    let event = next_line(&mut lines).await;
    assert_eq!(
        (event["key"].clone(), event["revision"].clone()),
        ("app/b".into(), live.into())
    );

    let interrupt = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupt.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "Ctrl-C ends a watch cleanly");
}

/// The next line a CLI printed, as JSON.
async fn next_line(lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> serde_json::Value {
    let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.recv())
        .await
        .expect("a line within 30 s")
        .expect("the CLI still running");
    serde_json::from_str(&line).unwrap()
}

#[test]
fn the_cli_prints_shell_completions() {
    for shell in ["bash", "zsh", "fish"] {
        let out = cli(&["completion", shell]);
        assert!(out.status.success(), "{out:?}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains("raftset"), "{shell}");
        assert!(script.contains("endpoints"), "{shell}: flags complete");
    }
    assert_eq!(cli(&["completion", "tcsh"]).status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shows_every_member_tolerance_and_endpoint_health() {
    let mut cluster = Cluster::start(3).await;
    let endpoint = cluster.nodes[2].api();
    let run = |args: &[&str]| {
        let mut args = args.to_vec();
        args.extend(["--endpoints", &endpoint]);
        cli(&args)
    };
    let json = |args: &[&str]| -> serde_json::Value {
        let out = run(args);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
    };

    let status = run(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("members     3 voters, tolerates 1 failure\n"),
        "{text}"
    );
    assert_eq!(json(&["status", "-o", "json"])["failure_tolerance"], 1);
    let members = json(&["members", "-o", "json"]);
    let names: Vec<_> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        ["raftset-0", "raftset-1", "raftset-2"],
        "ordinal order"
    );
    let wide = run(&["members", "-o", "wide"]);
    assert!(String::from_utf8_lossy(&wide.stdout).contains(&endpoint));

    let all = run(&["endpoint", "status"]);
    assert!(all.status.success(), "{all:?}");
    let text = String::from_utf8_lossy(&all.stdout);
    assert_eq!(text.lines().count(), 4, "a header and 3 members: {text}");
    let all = json(&["endpoint", "status", "-o", "json"]);
    let leaders: std::collections::HashSet<_> = all["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["leader_id"].as_u64().expect("a leader known"))
        .collect();
    assert_eq!(
        leaders.len(),
        1,
        "every member names the same leader: {all}"
    );
    let health = json(&["endpoint", "health", "-o", "json"]);
    let healthy: Vec<_> = health["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["healthy"].as_bool().unwrap())
        .collect();
    assert_eq!(healthy, [true, true, true], "{health}");

    let leader = cluster.leader().await;
    let down = (0..3).find(|&i| i != leader && i != 2).unwrap();
    cluster.kill(down).await;
    let status = run(&["endpoint", "status"]);
    assert_eq!(status.status.code(), Some(5), "{status:?}");
    let text = String::from_utf8_lossy(&status.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with(&cluster.nodes[down].name))
        .unwrap();
    assert!(row.contains("error: cannot connect"), "{text}");
    let health = run(&["endpoint", "health"]);
    assert_eq!(health.status.code(), Some(5), "{health:?}");
    let text = String::from_utf8_lossy(&health.stdout);
    assert_eq!(text.matches("unhealthy").count(), 1, "{text}");
}

/// A write the leader proposed but could not commit before the deadline
/// exits 6 ("outcome unknown": it may still apply), never 5 ("retry").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_exits_6_when_a_write_may_have_applied() {
    // A long election timeout keeps the leader believing in its quorum
    // after its followers died, so it proposes the write.
    let args = ["--heartbeat-ms", "100", "--election-timeout-ms", "5000"];
    let mut cluster = Cluster::start_with(3, &args).await;
    let leader = cluster.leader().await;
    let endpoint = cluster.nodes[leader].api();
    assert!(cli(&["put", "before", "1", "--endpoints", &endpoint])
        .status
        .success());
    for i in (0..3).filter(|i| *i != leader) {
        cluster.kill(i).await;
    }
    let lost = cli(&[
        "put",
        "k",
        "v",
        "--timeout-secs",
        "1",
        "--endpoints",
        &endpoint,
    ]);
    assert_eq!(lost.status.code(), Some(6), "{lost:?}");
    let stderr = String::from_utf8_lossy(&lost.stderr);
    assert!(stderr.contains("outcome unknown"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_waits_for_a_learner_to_catch_up() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let gone = (leader + 1) % 3;
    let endpoint = cluster.nodes[leader].api();
    let member = own_member(&cluster, gone).await;
    let id = format!("{:016x}", member.id);
    let run = |args: &[&str]| {
        let mut args = args.to_vec();
        args.extend(["--endpoints", &endpoint]);
        cli(&args)
    };
    assert!(run(&["remove", &id]).status.success());
    for i in 0..20 {
        assert!(run(&["put", &format!("k{i}"), "v"]).status.success());
    }

    let added = run(&[
        "add-learner",
        &id,
        "--name",
        &member.name,
        "--peer-addr",
        &member.peer_addr,
        "--api-addr",
        &member.api_addr,
        "--wait",
        "60",
    ]);
    assert!(added.status.success(), "{added:?}");
    let stderr = String::from_utf8_lossy(&added.stderr);
    assert!(stderr.contains("caught up at index"), "{stderr}");
    let members = client_members(&run(&["members", "-o", "json"]));
    let learner = members
        .iter()
        .find(|m| m["name"] == member.name.as_str())
        .unwrap();
    assert_eq!(learner["voter"], false);
    assert_eq!(learner["lag"], 0, "{learner}");

    // A learner that cannot catch up (nothing listens there) times out.
    let stuck = run(&[
        "add-learner",
        "abcdef",
        "--name",
        "nowhere",
        "--peer-addr",
        "127.0.0.1:1",
        "--wait",
        "1",
    ]);
    assert_eq!(stuck.status.code(), Some(1), "{stuck:?}");
    let stderr = String::from_utf8_lossy(&stuck.stderr);
    assert!(stderr.contains("has not caught up"), "{stderr}");
}

/// Node `i`'s own entry in the membership.
async fn own_member(cluster: &Cluster, i: usize) -> raftset::proto::Member {
    let status = cluster.status(i).await.unwrap();
    status
        .members
        .into_iter()
        .find(|m| m.id == status.id)
        .expect("a member")
}

fn client_members(out: &std::process::Output) -> Vec<serde_json::Value> {
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json["members"].as_array().unwrap().clone()
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
            let out = cli(&["force-new-cluster", "--endpoint", &cluster.nodes[i].api()]);
            assert_eq!(out.status.code(), Some(4), "precondition: {out:?}");
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
