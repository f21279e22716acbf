//! A node's `/metrics`, scraped as Prometheus does and parsed by a real
//! parser: the Python `prometheus_client` OpenMetrics parser, run with
//! `python3` (scripts/test installs the package). The parser is strict:
//! counters must end in `_total`, histograms need their `+Inf` bucket, the
//! body must end with `# EOF`; a body it refuses fails the test.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};

use super::http::get;

/// What Prometheus 2.x sends when it scrapes.
pub const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,\
     application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// The content type an OpenMetrics body must have.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
families = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    families[family.name] = {
        "type": family.type,
        "samples": [[s.name, s.labels, s.value] for s in family.samples],
    }
json.dump(families, sys.stdout)
"#;

/// One sample: its name (`_total`, `_bucket` … included), labels, value.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Sample(pub String, pub BTreeMap<String, String>, pub f64);

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Family {
    #[serde(rename = "type")]
    pub kind: String,
    pub samples: Vec<Sample>,
}

/// A parsed scrape: metric families by name.
#[derive(Debug, Clone)]
pub struct Scrape(pub BTreeMap<String, Family>);

impl Scrape {
    /// Every sample name in the scrape.
    pub fn sample_names(&self) -> BTreeSet<String> {
        self.0
            .values()
            .flat_map(|f| f.samples.iter().map(|s| s.0.clone()))
            .collect()
    }

    /// The family `name`, or the test fails.
    pub fn family(&self, name: &str) -> &Family {
        self.0
            .get(name)
            .unwrap_or_else(|| panic!("no family {name} in {:?}", self.0.keys()))
    }

    /// The sum of the samples named `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .values()
            .flat_map(|f| &f.samples)
            .filter(|s| s.0 == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.1.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.2)
            .sum()
    }
}

/// Runs `program` with `args`, `input` on its standard input; returns what
/// it wrote on stdout and stderr, and whether it succeeded.
fn pipe(program: &str, args: &[&str], input: &str) -> Result<std::process::Output, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {program}: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())
        .map_err(|e| format!("writing to {program}: {e}"))?;
    child
        .wait_with_output()
        .map_err(|e| format!("{program}: {e}"))
}

/// Parses an OpenMetrics body with the Python parser.
pub fn parse(body: &str) -> Result<Scrape, String> {
    let output = pipe("python3", &["-c", PARSE], body)?;
    if !output.status.success() {
        return Err(format!(
            "the prometheus_client parser refused the body: {}\n{body}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    serde_json::from_slice(&output.stdout)
        .map(Scrape)
        .map_err(|e| format!("reading the parser's output: {e}"))
}

/// Scrapes `http` (`host:port`) as Prometheus does: checks the status and
/// the content type, and parses the body.
pub async fn scrape(http: &str) -> Scrape {
    let reply = get(http, "/metrics", PROMETHEUS_ACCEPT).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some(OPENMETRICS),
        "the body is OpenMetrics text, and says so"
    );
    let body = reply.body;
    tokio::task::spawn_blocking(move || parse(&body))
        .await
        .expect("the parser task")
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The content type of Prometheus text 0.0.4.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Scrapes `http` as a client that takes only Prometheus text 0.0.4, and
/// checks the body with `promtool check metrics` (its parser and its lint:
/// `_total` on counters, help on every family, base units).
/// scripts/validate-manifests installs promtool.
pub async fn scrape_prometheus_text(http: &str) {
    let reply = get(http, "/metrics", "text/plain;version=0.0.4;q=1,*/*;q=0.1").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("content-type"), Some(PROMETHEUS_TEXT));
    let body = reply.body;
    let checked = tokio::task::spawn_blocking(move || {
        let output = pipe("promtool", &["check", "metrics"], &body).map_err(|e| {
            format!("{e} (Debian package prometheus; scripts/validate-manifests installs it)")
        })?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if output.status.success() && said.trim().is_empty() {
            Ok(())
        } else {
            Err(format!("promtool check metrics: {said}\n{body}"))
        }
    })
    .await
    .expect("the promtool task");
    checked.unwrap_or_else(|e| panic!("{e}"));
}
