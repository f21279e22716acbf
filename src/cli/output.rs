//! How client commands print: plain text for people, `--json` for scripts.

use serde_json::json;

use crate::client::ScanPage;
use crate::proto::StatusResponse;
use crate::types::KeyValue;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn kv_json(kv: &KeyValue) -> serde_json::Value {
    json!({
        "key": text(&kv.key),
        "value": text(&kv.value),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
    })
}

pub fn key_value(kv: &KeyValue, as_json: bool) {
    if as_json {
        println!("{}", kv_json(kv));
    } else {
        println!("{}", text(&kv.value));
    }
}

pub fn revision(revision: u64, as_json: bool) {
    if as_json {
        println!("{}", json!({ "revision": revision }));
    } else {
        println!("OK (revision {revision})");
    }
}

pub fn deleted(deleted: bool, as_json: bool) {
    if as_json {
        println!("{}", json!({ "deleted": deleted }));
    } else if deleted {
        println!("deleted");
    } else {
        println!("not found (nothing deleted)");
    }
}

pub fn scan(page: &ScanPage, as_json: bool) {
    let next = page.next_key.as_deref().map(text);
    if as_json {
        let kvs: Vec<_> = page.kvs.iter().map(kv_json).collect();
        println!(
            "{}",
            json!({ "kvs": kvs, "next_key": next, "revision": page.revision })
        );
        return;
    }
    for kv in &page.kvs {
        println!("{}\t{}", text(&kv.key), text(&kv.value));
    }
    if let Some(next) = next {
        eprintln!("(more: continue with --start {next:?})");
    }
}

pub fn visits(visits: i64, as_json: bool) {
    if as_json {
        println!("{}", json!({ "visits": visits }));
    } else {
        println!("{visits}");
    }
}

pub fn status(status: &StatusResponse, as_json: bool) {
    let leader = match status.leader_id {
        Some(id) => format!("{} ({id:016x})", status.leader_name),
        None => "none".to_string(),
    };
    if as_json {
        let members: Vec<_> = status
            .members
            .iter()
            .map(|m| {
                json!({
                    "id": m.id, "name": m.name, "voter": m.voter,
                    "peer_addr": m.peer_addr, "api_addr": m.api_addr, "http_addr": m.http_addr,
                })
            })
            .collect();
        println!(
            "{}",
            json!({
                "id": status.id, "name": status.name, "cluster_id": status.cluster_id,
                "role": status.role, "term": status.term,
                "leader_id": status.leader_id, "leader_name": status.leader_name,
                "last_log_index": status.last_log_index, "applied_index": status.applied_index,
                "snapshot_index": status.snapshot_index, "purged_index": status.purged_index,
                "members": members,
            })
        );
        return;
    }
    println!("node        {} ({:016x})", status.name, status.id);
    println!(
        "cluster     {}",
        if status.cluster_id.is_empty() {
            "none yet"
        } else {
            &status.cluster_id
        }
    );
    println!("role        {}", status.role);
    println!("term        {}", status.term);
    println!("leader      {leader}");
    println!(
        "log         last {}  applied {}  snapshot {}  purged {}",
        status.last_log_index, status.applied_index, status.snapshot_index, status.purged_index
    );
    println!();
    println!(
        "{:<18}{:<14}{:<9}{:<24}{:<24}",
        "ID", "NAME", "ROLE", "PEER", "API"
    );
    for m in &status.members {
        let role = crate::proto::member_role(Some(m.id) == status.leader_id, m.voter);
        println!(
            "{:<18}{:<14}{:<9}{:<24}{:<24}",
            format!("{:016x}", m.id),
            m.name,
            role,
            m.peer_addr,
            m.api_addr
        );
    }
}

pub fn members(members: &crate::proto::MembersResponse, as_json: bool) {
    if as_json {
        let list: Vec<_> = members
            .members
            .iter()
            .map(|p| {
                let m = p.member.clone().unwrap_or_default();
                json!({
                    "id": m.id, "name": m.name, "voter": m.voter, "leader": p.is_leader,
                    "peer_addr": m.peer_addr, "api_addr": m.api_addr,
                    "match_index": p.match_index, "lag": p.lag,
                    "last_contact_ms": p.last_contact_ms, "healthy": p.healthy,
                })
            })
            .collect();
        println!(
            "{}",
            json!({ "members": list, "last_log_index": members.last_log_index })
        );
        return;
    }
    println!(
        "{:<18}{:<14}{:<9}{:<30}{:>8}{:>8}{:>10}  HEALTH",
        "ID", "NAME", "ROLE", "PEER", "MATCH", "LAG", "CONTACT"
    );
    for p in &members.members {
        let m = p.member.clone().unwrap_or_default();
        let role = crate::proto::member_role(p.is_leader, m.voter);
        let contact = if p.is_leader {
            "-".to_string()
        } else {
            p.last_contact_ms
                .map_or("never".to_string(), |ms| format!("{ms}ms"))
        };
        println!(
            "{:<18}{:<14}{:<9}{:<30}{:>8}{:>8}{:>10}  {}",
            format!("{:016x}", m.id),
            m.name,
            role,
            m.peer_addr,
            p.match_index,
            p.lag,
            contact,
            if p.healthy { "healthy" } else { "unhealthy" }
        );
    }
}

pub fn snapshot(index: u64, as_json: bool) {
    if as_json {
        println!("{}", json!({ "snapshot_index": index }));
    } else {
        println!("snapshot at index {index}");
    }
}

pub fn prepare_stop(response: &crate::proto::PrepareStopResponse, as_json: bool) {
    if as_json {
        println!(
            "{}",
            json!({ "left": response.left, "reason": response.reason })
        );
    } else if response.left {
        println!("left the cluster");
    } else {
        println!("staying a member: {}", response.reason);
    }
}

pub fn verify(report: &crate::proto::VerifyResponse, as_json: bool) {
    if as_json {
        let members: Vec<_> = report
            .members
            .iter()
            .map(|m| json!({ "id": m.id, "name": m.name, "digest": m.digest, "error": m.error }))
            .collect();
        println!(
            "{}",
            json!({
                "agree": report.agree, "index": report.index, "revision": report.revision,
                "keys": report.keys, "members": members,
            })
        );
        return;
    }
    for m in &report.members {
        let digest = if m.digest.is_empty() {
            format!("error: {}", m.error)
        } else {
            m.digest.clone()
        };
        println!("{:016x}  {:<14}{digest}", m.id, m.name);
    }
    if report.agree {
        println!(
            "all members agree at index {} (revision {}, {} keys)",
            report.index, report.revision, report.keys
        );
    } else {
        println!("MEMBERS DISAGREE at index {}", report.index);
    }
}

pub fn forced(forced: &crate::proto::ForceNewClusterResponse, as_json: bool) {
    if as_json {
        let lost: Vec<_> = forced
            .lost
            .iter()
            .map(|l| {
                let m = l.member.clone().unwrap_or_default();
                json!({ "id": m.id, "name": m.name, "seen": l.seen })
            })
            .collect();
        println!(
            "{}",
            json!({
                "id": forced.id, "name": forced.name, "cluster_id": forced.cluster_id,
                "previous_cluster_id": forced.previous_cluster_id,
                "last_log_index": forced.last_log_index, "applied_index": forced.applied_index,
                "lost": lost,
            })
        );
        return;
    }
    println!(
        "{} ({:016x}) is the only voter of the new cluster {} (was {}), holding its whole log (up to index {}, {} applied before)",
        forced.name,
        forced.id,
        forced.cluster_id,
        forced.previous_cluster_id,
        forced.last_log_index,
        forced.applied_index
    );
    for l in &forced.lost {
        let m = l.member.clone().unwrap_or_default();
        println!(
            "no longer a member: {:016x}  {:<14}{}",
            m.id, m.name, l.seen
        );
    }
    println!("next: start the lost members on empty volumes; they join the new cluster");
}
