//! HTTP from the tests to a node's HTTP port, with `ureq`: one GET per
//! call, run on tokio's blocking pool because ureq blocks. No proxy and no
//! redirects, so a request goes exactly to the address given (loopback or
//! the harness's own network). A test that speaks slowly or sends garbage on
//! purpose opens a `TcpStream` itself.

use std::time::Duration;

use ureq::http::HeaderMap;

use super::DEADLINE;

/// What a GET got back.
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// A header's value, if it is there and is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// `GET http://<addr><path>` with `Accept: <accept>`, the whole exchange
/// within `timeout`: the reply whatever its status, or why there was none.
pub async fn fetch(
    addr: &str,
    path: &str,
    accept: &str,
    timeout: Duration,
) -> Result<Reply, String> {
    fetch_with(addr, path, &[("Accept", accept)], timeout).await
}

/// [`fetch`] with the request headers `headers`.
pub async fn fetch_with(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Reply, String> {
    let url = format!("http://{addr}{path}");
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let what = format!("GET {url}");
    let exchange = move || -> Result<Reply, ureq::Error> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .build()
            .into();
        let mut request = agent.get(&url);
        for (name, value) in &headers {
            request = request.header(name, value);
        }
        let mut response = request.call()?;
        let body = response.body_mut().read_to_vec()?;
        Ok(Reply {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::task::spawn_blocking(exchange)
        .await
        .map_err(|e| format!("{what}: {e}"))?
        .map_err(|e| format!("{what}: {e}"))
}

/// [`fetch`] from a server that must answer within [`DEADLINE`]; a test
/// fails here if it does not.
pub async fn get(addr: &str, path: &str, accept: &str) -> Reply {
    fetch(addr, path, accept, DEADLINE)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The count a `GET /` answered: its `visits: N` line.
pub fn visits_in(body: &str) -> Option<i64> {
    body.lines()
        .find_map(|line| line.strip_prefix("visits: "))
        .and_then(|count| count.trim().parse().ok())
}

/// `GET /visits`: the count so far, read without counting a visit.
pub async fn visits(addr: &str) -> Result<i64, String> {
    let reply = fetch(addr, "/visits", "application/json", DEADLINE).await?;
    if reply.status != 200 {
        return Err(format!("GET /visits: {}: {}", reply.status, reply.body));
    }
    let json: serde_json::Value = serde_json::from_str(&reply.body).map_err(|e| e.to_string())?;
    json["visits"]
        .as_i64()
        .ok_or_else(|| format!("no count in {}", reply.body))
}
