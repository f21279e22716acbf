//! The two sides as the driver sees them: each request made the way that
//! store's users make it, with its own Rust client on tonic 0.14.

use anyhow::Context;
use etcd_client::{Compare, CompareOp, GetOptions, KvClient, Txn, TxnOp, TxnOpResponse};
use raftset::Consistency;

use crate::driver::Store;

/// raftset through the project's own client.
#[derive(Clone)]
pub struct Raftset(pub raftset::Client);

impl Raftset {
    pub async fn connect(endpoint: &str) -> anyhow::Result<Raftset> {
        Ok(Raftset(raftset::Client::connect(endpoint).await?))
    }
}

impl Store for Raftset {
    async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
        self.0.put(&key, &value).await?;
        Ok(())
    }

    async fn get(&mut self, key: Vec<u8>, serializable: bool) -> anyhow::Result<()> {
        let consistency = match serializable {
            true => Consistency::Serializable,
            false => Consistency::Linearizable,
        };
        self.0.get_with(&key, consistency).await?;
        Ok(())
    }

    /// One request: the leader adds and answers the new value.
    async fn increment(&mut self, key: Vec<u8>) -> anyhow::Result<u64> {
        self.0.increment(&key, 1).await?;
        Ok(0)
    }
}

/// etcd through `etcd-client`, one connection per member. The connection
/// is made as raftset's client makes its own (Nagle off, writes gathered),
/// so the two clients differ only in their requests.
#[derive(Clone)]
pub struct Etcd(pub KvClient);

impl Etcd {
    pub async fn connect(endpoint: &str) -> anyhow::Result<Etcd> {
        let connecting = || format!("connecting to etcd at {endpoint}");
        let uri = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
            .with_context(connecting)?
            .connect_timeout(std::time::Duration::from_secs(3));
        let channel = raftset::tls::Dial::Plain
            .channel(uri)
            .await
            .with_context(connecting)?;
        let client = etcd_client::Client::from_channel(etcd_client::Channel::Tonic(channel), None)
            .await
            .with_context(connecting)?;
        Ok(Etcd(client.kv_client()))
    }
}

impl Store for Etcd {
    async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
        self.0.put(key, value, None).await?;
        Ok(())
    }

    async fn get(&mut self, key: Vec<u8>, serializable: bool) -> anyhow::Result<()> {
        let options = serializable.then(|| GetOptions::new().with_serializable());
        self.0.get(key, options).await?;
        Ok(())
    }

    /// etcd has no increment: read the counter, then a transaction that
    /// writes the next value only if the key's `mod_revision` is still the
    /// one read, and otherwise reads it again (the usual compare-and-swap
    /// loop; a missing key has revision 0).
    async fn increment(&mut self, key: Vec<u8>) -> anyhow::Result<u64> {
        let current = self.0.get(key.clone(), None).await?;
        let (mut value, mut revision) = counter(current.kvs().first())?;
        let mut retries = 0;
        loop {
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then([TxnOp::put(key.clone(), (value + 1).to_string(), None)])
                .or_else([TxnOp::get(key.clone(), None)]);
            let response = self.0.txn(txn).await?;
            if response.succeeded() {
                return Ok(retries);
            }
            retries += 1;
            let read = response.op_responses().into_iter().next();
            let Some(TxnOpResponse::Get(read)) = read else {
                anyhow::bail!("a failed transaction answered no read");
            };
            (value, revision) = counter(read.kvs().first())?;
        }
    }
}

/// A counter's value and revision; a missing key is 0 at revision 0.
fn counter(kv: Option<&etcd_client::KeyValue>) -> anyhow::Result<(i64, i64)> {
    let Some(kv) = kv else { return Ok((0, 0)) };
    let value = kv
        .value_str()?
        .parse()
        .context("the counter is no number")?;
    Ok((value, kv.mod_revision()))
}
