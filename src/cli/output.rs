//! How client commands print: tables for people (`-o table`, `-o wide`),
//! JSON or YAML for scripts (`-o json`, `-o yaml`, `--json`).
//!
//! Keys and values are bytes. JSON and YAML never carry them lossily: every
//! key and value has a `key_b64` / `value_b64` field (standard base64, as
//! etcdctl prints them), the exact bytes; `key` / `value` is there as well
//! only when the bytes are valid UTF-8, holding the same bytes as text. A
//! script that must handle any bytes reads the `_b64` fields; one that
//! stores text may read the plain ones. Tables show text, and escape
//! (`\xff`) what is not UTF-8.

use std::io::Write;

use base64::Engine;
use serde_json::{json, Map, Value};

use super::conn::Format;
use crate::client::ScanPage;
use crate::proto::watch_event::Kind;
use crate::proto::{Member, MemberProgress, MembersResponse, StatusResponse, WatchEvent};
use crate::types::KeyValue;

/// Bytes for a table: the text when UTF-8, else escaped.
pub fn shown(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_string(),
        Err(_) => bytes.escape_ascii().to_string(),
    }
}

/// Puts `bytes` into `object` as `NAME_b64`, and as `NAME` when UTF-8.
fn put_bytes(object: &mut Map<String, Value>, name: &str, bytes: &[u8]) {
    if let Ok(text) = std::str::from_utf8(bytes) {
        object.insert(name.to_string(), json!(text));
    }
    object.insert(
        format!("{name}_b64"),
        json!(base64::engine::general_purpose::STANDARD.encode(bytes)),
    );
}

pub fn kv_json(kv: &KeyValue) -> Value {
    let mut object = Map::new();
    put_bytes(&mut object, "key", &kv.key);
    put_bytes(&mut object, "value", &kv.value);
    object.insert("create_revision".into(), json!(kv.create_revision));
    object.insert("mod_revision".into(), json!(kv.mod_revision));
    object.insert("version".into(), json!(kv.version));
    Value::Object(object)
}

/// Prints a document as JSON (one line) or YAML. Tables print themselves.
pub fn document(value: &Value, format: Format) {
    match format {
        Format::Yaml => print!("{}", yaml(value)),
        _ => println!("{value}"),
    }
}

/// A result that is one number: `{"NAME": number}` as a document, `text`
/// in a table.
fn single(format: Format, name: &str, number: impl Into<Value>, text: impl std::fmt::Display) {
    if is_document(format) {
        document(&json!({ name: number.into() }), format);
    } else {
        println!("{text}");
    }
}

/// True for the formats that print a document rather than a table.
fn is_document(format: Format) -> bool {
    matches!(format, Format::Json | Format::Yaml)
}

/// `get`: the document, or in a table format the value's raw bytes,
/// followed by a newline only when stdout is a terminal (so `get KEY >
/// FILE` gives back exactly what `put KEY --file FILE` stored).
pub fn key_value(kv: &KeyValue, format: Format, terminal: bool) -> std::io::Result<()> {
    if is_document(format) {
        document(&kv_json(kv), format);
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    if format == Format::Wide {
        writeln!(out, "{}", row(kv, true))?;
        return out.flush();
    }
    out.write_all(&kv.value)?;
    if terminal {
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// A key-value as a table row: key and value, and when `wide` its create
/// and mod revisions and version.
fn row(kv: &KeyValue, wide: bool) -> String {
    let mut row = format!("{}\t{}", shown(&kv.key), shown(&kv.value));
    if wide {
        row.push_str(&format!(
            "\t{}\t{}\t{}",
            kv.create_revision, kv.mod_revision, kv.version
        ));
    }
    row
}

pub fn revision(revision: u64, format: Format) {
    single(
        format,
        "revision",
        revision,
        format_args!("OK (revision {revision})"),
    );
}

pub fn deleted(deleted: bool, format: Format) {
    if is_document(format) {
        document(&json!({ "deleted": deleted }), format);
    } else if deleted {
        println!("deleted");
    } else {
        println!("not found (nothing deleted)");
    }
}

/// `delete --prefix`: how many keys it deleted.
pub fn deleted_count(count: u64, format: Format) {
    single(
        format,
        "deleted",
        count,
        format_args!("deleted {count} keys"),
    );
}

/// `incr`: the counter's new value.
pub fn counter(value: i64, format: Format) {
    single(format, "value", value, value);
}

/// One `watch` event: a tab-separated line (a delete has no value), a JSON
/// line, or a YAML document. Flushed at once, for a pipe.
pub fn watch_event(event: &WatchEvent, format: Format) -> std::io::Result<()> {
    let kind = match event.kind() {
        Kind::Put => "PUT",
        Kind::Delete => "DELETE",
    };
    let kv: KeyValue = event.kv.clone().unwrap_or_default().into();
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json | Format::Yaml => {
            let mut object = Map::new();
            object.insert("revision".into(), json!(event.revision));
            object.insert("kind".into(), json!(kind.to_lowercase()));
            put_bytes(&mut object, "key", &kv.key);
            if event.kind() == Kind::Put {
                put_bytes(&mut object, "value", &kv.value);
            }
            object.insert("mod_revision".into(), json!(kv.mod_revision));
            let object = Value::Object(object);
            if format == Format::Json {
                writeln!(out, "{object}")?;
            } else {
                write!(out, "---\n{}", yaml(&object))?;
            }
        }
        Format::Table | Format::Wide => {
            write!(out, "{}\t{kind}\t{}", event.revision, shown(&kv.key))?;
            if event.kind() == Kind::Put {
                write!(out, "\t{}", shown(&kv.value))?;
            }
            writeln!(out)?;
        }
    }
    out.flush()
}

pub fn scan(page: &ScanPage, format: Format) {
    if is_document(format) {
        let kvs: Vec<_> = page.kvs.iter().map(kv_json).collect();
        let mut object = Map::new();
        object.insert("kvs".into(), json!(kvs));
        match &page.next_key {
            Some(next) => put_bytes(&mut object, "next_key", next),
            None => {
                object.insert("next_key".into(), Value::Null);
            }
        }
        object.insert("revision".into(), json!(page.revision));
        document(&Value::Object(object), format);
        return;
    }
    for kv in &page.kvs {
        println!("{}", row(kv, format == Format::Wide));
    }
    if let Some(next) = &page.next_key {
        eprintln!("(more: continue with --start {:?})", shown(next));
    }
}

pub fn visits(visits: i64, format: Format) {
    single(format, "visits", visits, visits);
}

/// How many voters and learners, and how many voters may fail with the
/// cluster still committing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tolerance {
    pub voters: usize,
    pub learners: usize,
    /// Voters that may fail while a majority remains: (voters - 1) / 2.
    pub failures: usize,
}

impl Tolerance {
    pub fn of(members: &[Member]) -> Tolerance {
        let voters = members.iter().filter(|m| m.voter).count();
        Tolerance {
            voters,
            learners: members.len() - voters,
            failures: voters.saturating_sub(1) / 2,
        }
    }
}

impl std::fmt::Display for Tolerance {
    /// "3 voters, tolerates 1 failure; 1 learner".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        write!(
            f,
            "{}, tolerates {}",
            plural(self.voters, "voter", "voters"),
            plural(self.failures, "failure", "failures")
        )?;
        if self.learners > 0 {
            write!(f, "; {}", plural(self.learners, "learner", "learners"))?;
        }
        Ok(())
    }
}

/// A member's ordinal in its StatefulSet (`raftset-2` is 2), if its name
/// has one: members list in this order, then by name.
fn ordinal(name: &str) -> Option<u64> {
    name.rsplit_once('-')?.1.parse().ok()
}

pub(super) fn by_ordinal(a: &str, b: &str) -> std::cmp::Ordering {
    let key = |name: &str| (ordinal(name).is_none(), ordinal(name), name.to_string());
    key(a).cmp(&key(b))
}

fn member_json(m: &Member) -> Value {
    json!({
        "id": m.id, "name": m.name, "voter": m.voter,
        "peer_addr": m.peer_addr, "api_addr": m.api_addr, "http_addr": m.http_addr,
    })
}

pub fn status(status: &StatusResponse, format: Format) {
    let mut members = status.members.clone();
    members.sort_by(|a, b| by_ordinal(&a.name, &b.name));
    let tolerance = Tolerance::of(&members);
    let leader = match status.leader_id {
        Some(id) => format!("{} ({id:016x})", status.leader_name),
        None => "none".to_string(),
    };
    if is_document(format) {
        let list: Vec<_> = members.iter().map(member_json).collect();
        let value = json!({
            "id": status.id, "name": status.name, "cluster_id": status.cluster_id,
            "role": status.role, "term": status.term,
            "leader_id": status.leader_id, "leader_name": status.leader_name,
            "last_log_index": status.last_log_index, "applied_index": status.applied_index,
            "snapshot_index": status.snapshot_index, "purged_index": status.purged_index,
            "voters": tolerance.voters, "learners": tolerance.learners,
            "failure_tolerance": tolerance.failures,
            "members": list,
        });
        document(&value, format);
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
    println!("members     {tolerance}");
    println!(
        "log         last {}  applied {}  snapshot {}  purged {}",
        status.last_log_index, status.applied_index, status.snapshot_index, status.purged_index
    );
    println!();
    let wide = format == Format::Wide;
    let header = format!(
        "{:<18}{:<14}{:<9}{:<24}{:<24}",
        "ID", "NAME", "ROLE", "PEER", "API"
    );
    table_line(header, wide.then_some("HTTP"));
    for m in &members {
        let role = crate::proto::member_role(Some(m.id) == status.leader_id, m.voter);
        let row = format!(
            "{:<18}{:<14}{:<9}{:<24}{:<24}",
            format!("{:016x}", m.id),
            m.name,
            role,
            m.peer_addr,
            m.api_addr
        );
        table_line(row, wide.then_some(&m.http_addr));
    }
}

/// The leader's view of every member, in ordinal order.
pub fn sorted_progress(members: &MembersResponse) -> Vec<MemberProgress> {
    let mut list = members.members.clone();
    list.sort_by(|a, b| {
        let name = |p: &MemberProgress| p.member.as_ref().map(|m| m.name.clone());
        by_ordinal(&name(a).unwrap_or_default(), &name(b).unwrap_or_default())
    });
    list
}

pub fn members(members: &MembersResponse, format: Format) {
    let list = sorted_progress(members);
    if is_document(format) {
        let list: Vec<_> = list
            .iter()
            .map(|p| {
                let m = p.member.clone().unwrap_or_default();
                json!({
                    "id": m.id, "name": m.name, "voter": m.voter, "leader": p.is_leader,
                    "peer_addr": m.peer_addr, "api_addr": m.api_addr, "http_addr": m.http_addr,
                    "match_index": p.match_index, "lag": p.lag,
                    "last_contact_ms": p.last_contact_ms, "healthy": p.healthy,
                })
            })
            .collect();
        document(
            &json!({ "members": list, "last_log_index": members.last_log_index }),
            format,
        );
        return;
    }
    let wide = format == Format::Wide;
    let header = format!(
        "{:<18}{:<14}{:<9}{:<30}{:>8}{:>8}{:>10}  {:<10}",
        "ID", "NAME", "ROLE", "PEER", "MATCH", "LAG", "CONTACT", "HEALTH"
    );
    table_line(header, wide.then(|| format!("{:<24}HTTP", "API")));
    for p in &list {
        let m = p.member.clone().unwrap_or_default();
        let role = crate::proto::member_role(p.is_leader, m.voter);
        let contact = if p.is_leader {
            "-".to_string()
        } else {
            p.last_contact_ms
                .map_or("never".to_string(), |ms| format!("{ms}ms"))
        };
        let row = format!(
            "{:<18}{:<14}{:<9}{:<30}{:>8}{:>8}{:>10}  {:<10}",
            format!("{:016x}", m.id),
            m.name,
            role,
            m.peer_addr,
            p.match_index,
            p.lag,
            contact,
            if p.healthy { "healthy" } else { "unhealthy" }
        );
        table_line(
            row,
            wide.then(|| format!("{:<24}{}", m.api_addr, m.http_addr)),
        );
    }
}

pub fn snapshot(index: u64, format: Format) {
    single(
        format,
        "snapshot_index",
        index,
        format_args!("snapshot at index {index}"),
    );
}

/// `backup --dir`: the file written and the old ones removed.
pub fn backup_published(
    file: &std::path::Path,
    bytes: u64,
    index: u64,
    removed: &[std::path::PathBuf],
    format: Format,
) {
    if is_document(format) {
        let removed: Vec<_> = removed.iter().map(|p| p.display().to_string()).collect();
        document(
            &json!({ "file": file.display().to_string(), "bytes": bytes, "index": index, "removed": removed }),
            format,
        );
        return;
    }
    println!(
        "backup: {bytes} bytes (index {index}) written to {}",
        file.display()
    );
    for path in removed {
        println!("removed {}", path.display());
    }
}

pub fn prepare_stop(response: &crate::proto::PrepareStopResponse, format: Format) {
    if is_document(format) {
        document(
            &json!({ "left": response.left, "reason": response.reason }),
            format,
        );
    } else if response.left {
        println!("left the cluster");
    } else {
        println!("staying a member: {}", response.reason);
    }
}

pub fn verify(report: &crate::proto::VerifyResponse, format: Format) {
    if is_document(format) {
        let members: Vec<_> = report
            .members
            .iter()
            .map(|m| json!({ "id": m.id, "name": m.name, "digest": m.digest, "error": m.error }))
            .collect();
        let value = json!({
            "agree": report.agree, "index": report.index, "revision": report.revision,
            "keys": report.keys, "members": members,
        });
        document(&value, format);
        return;
    }
    let mut members = report.members.clone();
    members.sort_by(|a, b| by_ordinal(&a.name, &b.name));
    for m in &members {
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

/// `force-new-cluster`: the new cluster and the members it no longer has.
pub fn forced(forced: &crate::proto::ForceNewClusterResponse, format: Format) {
    if is_document(format) {
        let lost: Vec<_> = forced
            .lost
            .iter()
            .map(|l| {
                let m = l.member.clone().unwrap_or_default();
                json!({ "id": m.id, "name": m.name, "seen": l.seen })
            })
            .collect();
        let value = json!({
            "id": forced.id, "name": forced.name, "cluster_id": forced.cluster_id,
            "previous_cluster_id": forced.previous_cluster_id,
            "last_log_index": forced.last_log_index, "applied_index": forced.applied_index,
            "lost": lost,
        });
        document(&value, format);
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

/// What one member answered to `endpoint status` or `endpoint health`, or
/// why it did not.
pub struct Probe<T> {
    pub member: Member,
    pub took: std::time::Duration,
    pub answer: Result<T, String>,
}

/// `endpoint status`: each member's own view, or why it did not answer.
pub fn endpoint_status(probes: &[Probe<StatusResponse>], format: Format) {
    if is_document(format) {
        let list: Vec<_> = probes
            .iter()
            .map(|p| {
                let mut row = json!({
                    "name": p.member.name, "id": p.member.id, "endpoint": p.member.api_addr,
                });
                match &p.answer {
                    Ok(s) => {
                        row["role"] = json!(s.role);
                        row["term"] = json!(s.term);
                        row["leader_id"] = json!(s.leader_id);
                        row["last_log_index"] = json!(s.last_log_index);
                        row["applied_index"] = json!(s.applied_index);
                        row["snapshot_index"] = json!(s.snapshot_index);
                        row["cluster_id"] = json!(s.cluster_id);
                    }
                    Err(e) => row["error"] = json!(e),
                }
                row
            })
            .collect();
        document(&json!({ "endpoints": list }), format);
        return;
    }
    let wide = format == Format::Wide;
    let header = format!(
        "{:<14}{:<24}{:<10}{:>6}  {:<14}{:>9}",
        "NAME", "ENDPOINT", "ROLE", "TERM", "LEADER", "APPLIED"
    );
    table_line(
        header,
        wide.then(|| format!("  {:>9}{:>10}  ID", "LAST", "SNAPSHOT")),
    );
    for p in probes {
        let name = format!("{:<14}{:<24}", p.member.name, p.member.api_addr);
        match &p.answer {
            Ok(s) => {
                let leader = if s.leader_id.is_some() {
                    s.leader_name.as_str()
                } else {
                    "none"
                };
                let row = format!(
                    "{name}{:<10}{:>6}  {:<14}{:>9}",
                    s.role, s.term, leader, s.applied_index
                );
                let more = format!(
                    "  {:>9}{:>10}  {:016x}",
                    s.last_log_index, s.snapshot_index, s.id
                );
                table_line(row, wide.then_some(more));
            }
            Err(e) => table_line(format!("{name}error: {e}"), None::<&str>),
        }
    }
}

/// `endpoint health`: whether each member served a linearizable read.
pub fn endpoint_health(probes: &[Probe<()>], format: Format) {
    if is_document(format) {
        let list: Vec<_> = probes
            .iter()
            .map(|p| {
                json!({
                    "name": p.member.name, "endpoint": p.member.api_addr,
                    "healthy": p.answer.is_ok(), "took_ms": p.took.as_millis() as u64,
                    "error": p.answer.as_ref().err(),
                })
            })
            .collect();
        document(&json!({ "endpoints": list }), format);
        return;
    }
    let header = format!(
        "{:<14}{:<24}{:<11}{:>8}  ERROR",
        "NAME", "ENDPOINT", "HEALTH", "TOOK"
    );
    table_line(header, None::<&str>);
    for p in probes {
        let row = format!(
            "{:<14}{:<24}{:<11}{:>8}  {}",
            p.member.name,
            p.member.api_addr,
            if p.answer.is_ok() {
                "healthy"
            } else {
                "unhealthy"
            },
            format!("{}ms", p.took.as_millis()),
            p.answer.as_ref().err().map_or("", String::as_str)
        );
        table_line(row, None::<&str>);
    }
}

/// Prints a table row, with the `-o wide` columns when given, without
/// trailing blanks.
fn table_line(row: String, wide: Option<impl std::fmt::Display>) {
    let line = match wide {
        Some(more) => format!("{row}{more}"),
        None => row,
    };
    println!("{}", line.trim_end());
}

/// A JSON value as a YAML document. Strings are double-quoted with JSON's
/// escapes, which YAML reads the same way, so no text is ever taken for a
/// number, a boolean or null.
pub fn yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => yaml_block(value, 0, &mut out),
        Value::Array(list) if !list.is_empty() => yaml_block(value, 0, &mut out),
        scalar => {
            out.push_str(&yaml_scalar(scalar));
            out.push('\n');
        }
    }
    out
}

fn is_container(value: &Value) -> bool {
    match value {
        Value::Object(map) => !map.is_empty(),
        Value::Array(list) => !list.is_empty(),
        _ => false,
    }
}

fn yaml_scalar(value: &Value) -> String {
    match value {
        Value::Object(_) => "{}".to_string(),
        Value::Array(_) => "[]".to_string(),
        scalar => scalar.to_string(),
    }
}

fn yaml_key(key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !key.starts_with('-');
    if plain {
        key.to_string()
    } else {
        json!(key).to_string()
    }
}

/// Writes a non-empty object or list, each line indented by `indent`.
fn yaml_block(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                if is_container(item) {
                    out.push_str(&format!("{pad}{}:\n", yaml_key(key)));
                    let inner = if item.is_array() { indent } else { indent + 2 };
                    yaml_block(item, inner, out);
                } else {
                    out.push_str(&format!("{pad}{}: {}\n", yaml_key(key), yaml_scalar(item)));
                }
            }
        }
        Value::Array(list) => {
            for item in list {
                if is_container(item) {
                    let mut inner = String::new();
                    yaml_block(item, indent + 2, &mut inner);
                    // The item's first line starts after "- ".
                    out.push_str(&pad);
                    out.push_str("- ");
                    out.push_str(&inner[indent + 2..]);
                } else {
                    out.push_str(&format!("{pad}- {}\n", yaml_scalar(item)));
                }
            }
        }
        scalar => out.push_str(&format!("{pad}{}\n", yaml_scalar(scalar))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &[u8], value: &[u8]) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision: 1,
            mod_revision: 2,
            version: 1,
        }
    }

    #[test]
    fn json_keeps_binary_bytes_exactly_and_text_readable() {
        let text = kv_json(&kv(b"greeting", b"hello"));
        assert_eq!(text["key"], "greeting");
        assert_eq!(text["value"], "hello");
        assert_eq!(text["key_b64"], "Z3JlZXRpbmc=");
        assert_eq!(text["value_b64"], "aGVsbG8=");

        let binary = kv_json(&kv(b"k\xff", b"\x00\xfe\xff"));
        assert_eq!(binary["key"], Value::Null, "no lossy text for non-UTF-8");
        assert!(binary.get("value").is_none());
        let decode = |v: &Value| {
            base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap())
                .unwrap()
        };
        assert_eq!(decode(&binary["key_b64"]), b"k\xff");
        assert_eq!(decode(&binary["value_b64"]), b"\x00\xfe\xff");
    }

    #[test]
    fn tables_escape_what_is_not_utf8() {
        assert_eq!(shown("héllo".as_bytes()), "héllo");
        assert_eq!(shown(b"a\xffb"), "a\\xffb");
    }

    #[test]
    fn tolerance_counts_voters_failures_and_learners() {
        let member = |voter| Member {
            voter,
            ..Default::default()
        };
        let table = [
            (vec![true], "1 voter, tolerates 0 failures"),
            (vec![true, true], "2 voters, tolerates 0 failures"),
            (
                vec![true, true, true, false],
                "3 voters, tolerates 1 failure; 1 learner",
            ),
            (
                vec![true, true, true, true, true, false, false],
                "5 voters, tolerates 2 failures; 2 learners",
            ),
        ];
        for (voters, want) in table {
            let members: Vec<_> = voters.into_iter().map(member).collect();
            assert_eq!(Tolerance::of(&members).to_string(), want);
        }
    }

    #[test]
    fn members_sort_by_ordinal_not_by_text() {
        let mut names = vec!["raftset-10", "raftset-2", "other", "raftset-0", "raftset-1"];
        names.sort_by(|a, b| by_ordinal(a, b));
        assert_eq!(
            names,
            ["raftset-0", "raftset-1", "raftset-2", "raftset-10", "other"]
        );
    }

    #[test]
    fn yaml_renders_nested_documents_with_every_string_quoted() {
        let value = json!({
            "name": "raftset-0",
            "count": 3,
            "ok": true,
            "none": null,
            "tricky": "yes: no",
            "empty": [],
            "members": [{"id": 1, "tags": ["a", "b"]}, {"id": 2, "tags": []}],
        });
        let text = yaml(&value);
        assert_eq!(
            text,
            "count: 3\nempty: []\nmembers:\n- id: 1\n  tags:\n  - \"a\"\n  - \"b\"\n- id: 2\n  tags: []\nname: \"raftset-0\"\nnone: null\nok: true\ntricky: \"yes: no\"\n"
        );
    }
}
