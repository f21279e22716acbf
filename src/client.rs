//! A typed gRPC client for any node. Followers forward to the leader, so
//! one endpoint is enough.
//!
//! Writes carry no request id: the client never retries on its own, so an
//! id of its making would never be sent twice, yet every node would
//! remember it for the whole dedup window (sled keeps about 1.7 KB of file
//! per remembered id). The node picks an id that lives only as long as it
//! may itself retry the write. A write that failed with DEADLINE_EXCEEDED
//! ("outcome unknown") may still apply, and the caller decides whether to
//! look or to resend.

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status, Streaming};

use crate::limits::{MAX_CLIENT_MESSAGE, MAX_CLIENT_RESPONSE};
use crate::proto;
use crate::proto::admin_client::AdminClient;
use crate::proto::compare_and_swap_request::{Expected, New};
use crate::proto::kv_client::KvClient;
use crate::tls::client::ClientTls;
use crate::tls::Dial;
use crate::types::KeyValue;

/// How long a call may take unless the client is told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: tonic::transport::Error,
    },
    #[error("the token is not printable ASCII, so no header can carry it")]
    InvalidToken,
    #[error("{}", .0.message())]
    Status(#[from] Status),
}

impl ClientError {
    /// The gRPC code (UNAVAILABLE for a failed connection).
    pub fn code(&self) -> Code {
        match self {
            ClientError::Connect { .. } => Code::Unavailable,
            ClientError::InvalidToken => Code::InvalidArgument,
            ClientError::Status(status) => status.code(),
        }
    }

    /// True when the request certainly changed nothing on the cluster: it
    /// was never sent (no connection), or the server marked its refusal as
    /// "not proposed". Only such a write may be sent again elsewhere.
    pub fn not_proposed(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::InvalidToken => true,
            ClientError::Status(status) => crate::error::status_says_nothing_proposed(status),
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// A read's consistency, see `proto::Consistency`.
pub use crate::types::Consistency;

/// One page of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPage {
    pub kvs: Vec<KeyValue>,
    pub next_key: Option<Vec<u8>>,
    pub revision: u64,
}

#[derive(Clone)]
pub struct Client {
    kv: KvClient<Channel>,
    admin: AdminClient<Channel>,
    timeout: Duration,
    /// `Bearer <token>`, sent with every call when set.
    authorization: Option<MetadataValue<Ascii>>,
}

impl Client {
    /// Connects to `host:port` (or a full `http://` URI).
    pub async fn connect(endpoint: &str) -> Result<Client> {
        Client::connect_with(endpoint, None).await
    }

    /// Connects to `host:port`, over TLS when `tls` is given (a node with
    /// `--client-tls-dir`): the node's certificate must name the host.
    pub async fn connect_with(endpoint: &str, tls: Option<&ClientTls>) -> Result<Client> {
        let uri = if endpoint.contains("://") {
            endpoint.to_string()
        } else {
            format!("http://{endpoint}")
        };
        let connect_error = |source| ClientError::Connect {
            endpoint: endpoint.to_string(),
            source,
        };
        let endpoint_config = Endpoint::from_shared(uri)
            .map_err(connect_error)?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true);
        let dial = tls.map_or(Dial::Plain, |tls| Dial::Client(tls.clone()));
        let channel = dial.channel(endpoint_config).await.map_err(connect_error)?;
        Ok(Client {
            kv: KvClient::new(channel.clone())
                .max_decoding_message_size(MAX_CLIENT_RESPONSE)
                .max_encoding_message_size(MAX_CLIENT_MESSAGE),
            admin: AdminClient::new(channel),
            timeout: DEFAULT_TIMEOUT,
            authorization: None,
        })
    }

    /// Sends `token` as a bearer token with every later call, for a node
    /// that requires one (`--client-tokens-file`).
    pub fn with_token(mut self, token: &str) -> Result<Client> {
        let value = format!("Bearer {}", token.trim());
        self.authorization = Some(value.parse().map_err(|_| ClientError::InvalidToken)?);
        Ok(self)
    }

    /// Sets the deadline of every later call.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = self.untimed(message);
        request.set_timeout(self.timeout);
        request
    }

    /// A request without the client's deadline, for a call that sets its
    /// own or lasts as long as it is read (a watch).
    fn untimed<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        request
    }

    /// Reads a key linearizably.
    pub async fn get(&mut self, key: &[u8]) -> Result<Option<KeyValue>> {
        self.get_with(key, Consistency::Linearizable).await
    }

    pub async fn get_with(
        &mut self,
        key: &[u8],
        consistency: Consistency,
    ) -> Result<Option<KeyValue>> {
        let request = self.request(proto::GetRequest {
            key: key.to_vec().into(),
            consistency: consistency_value(consistency),
        });
        Ok(self.kv.get(request).await?.into_inner().kv.map(Into::into))
    }

    /// Writes a key; returns the write's revision.
    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<u64> {
        let request = self.request(proto::PutRequest {
            key: key.to_vec().into(),
            value: value.to_vec().into(),
            request_id: LEFT_TO_THE_NODE,
            prev_kv: false,
        });
        Ok(self.kv.put(request).await?.into_inner().revision)
    }

    /// Deletes a key; returns whether it existed.
    pub async fn delete(&mut self, key: &[u8]) -> Result<bool> {
        let request = self.request(proto::DeleteRequest {
            key: key.to_vec().into(),
            request_id: LEFT_TO_THE_NODE,
        });
        Ok(self.kv.delete(request).await?.into_inner().deleted)
    }

    /// One page of keys starting with `prefix`, from `start` on.
    pub async fn scan(
        &mut self,
        prefix: &[u8],
        start: &[u8],
        limit: u32,
        consistency: Consistency,
    ) -> Result<ScanPage> {
        let request = self.request(proto::ScanRequest {
            prefix: prefix.to_vec().into(),
            start: start.to_vec().into(),
            end: Default::default(),
            limit,
            consistency: consistency_value(consistency),
        });
        let response = self.kv.scan(request).await?.into_inner();
        Ok(ScanPage {
            kvs: response.kvs.into_iter().map(Into::into).collect(),
            next_key: response.next_key.map(|k| k.to_vec()),
            revision: response.revision,
        })
    }

    /// Replaces the value if the key holds `expected` (`None`: is absent);
    /// `new = None` deletes it. Returns the revision, or fails with
    /// FAILED_PRECONDITION when the comparison lost:
    ///
    /// ```no_run
    /// # async fn demo(client: &mut raftset::Client) -> Result<(), raftset::ClientError> {
    /// client.put(b"leader", b"a").await?;
    /// let lost = client.compare_and_swap(b"leader", Some(b"b"), Some(b"c")).await;
    /// assert_eq!(lost.unwrap_err().code(), tonic::Code::FailedPrecondition);
    /// # Ok(()) }
    /// ```
    pub async fn compare_and_swap(
        &mut self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<u64> {
        let request = self.request(proto::CompareAndSwapRequest {
            key: key.to_vec().into(),
            expected: Some(match expected {
                Some(value) => Expected::ExpectedValue(value.to_vec().into()),
                None => Expected::ExpectAbsent(true),
            }),
            new: Some(match new {
                Some(value) => New::NewValue(value.to_vec().into()),
                None => New::Delete(true),
            }),
            request_id: LEFT_TO_THE_NODE,
        });
        Ok(self
            .kv
            .compare_and_swap(request)
            .await?
            .into_inner()
            .revision)
    }

    /// Adds `delta` to a decimal counter and returns the new value. A key
    /// holding anything else fails with FAILED_PRECONDITION, unchanged.
    pub async fn increment(&mut self, key: &[u8], delta: i64) -> Result<i64> {
        let request = self.request(proto::IncrementRequest {
            key: key.to_vec().into(),
            delta,
            request_id: LEFT_TO_THE_NODE,
        });
        Ok(self.kv.increment(request).await?.into_inner().value)
    }

    /// Streams changes under `prefix` from `start_revision` (0: from now).
    pub async fn watch(
        &mut self,
        prefix: &[u8],
        start_revision: u64,
    ) -> Result<Streaming<proto::WatchEvent>> {
        let request = self.untimed(proto::WatchRequest {
            prefix: prefix.to_vec().into(),
            start_revision,
        });
        Ok(self.kv.watch(request).await?.into_inner())
    }

    /// The node's view of itself and the cluster.
    pub async fn status(&mut self) -> Result<proto::StatusResponse> {
        let request = self.request(proto::StatusRequest {});
        Ok(self.admin.status(request).await?.into_inner())
    }

    /// Every member with its replication progress (the leader's view).
    pub async fn members(&mut self) -> Result<proto::MembersResponse> {
        let request = self.request(proto::MembersRequest {});
        Ok(self.admin.members(request).await?.into_inner())
    }

    pub async fn add_learner(
        &mut self,
        learner: proto::AddLearnerRequest,
    ) -> Result<proto::MembersResponse> {
        let request = self.request(learner);
        Ok(self.admin.add_learner(request).await?.into_inner())
    }

    pub async fn promote(&mut self, id: u64) -> Result<proto::MembersResponse> {
        let request = self.request(proto::MemberRequest { id });
        Ok(self.admin.promote(request).await?.into_inner())
    }

    pub async fn remove(&mut self, id: u64) -> Result<proto::MembersResponse> {
        let request = self.request(proto::MemberRequest { id });
        Ok(self.admin.remove(request).await?.into_inner())
    }

    /// Removes the members whose ordinal is at or above `replicas`, as far
    /// as a healthy majority allows now.
    pub async fn scale_down(&mut self, replicas: u32) -> Result<proto::MembersResponse> {
        let request = self.request(proto::ScaleDownRequest { replicas });
        Ok(self.admin.scale_down(request).await?.into_inner())
    }

    /// A pod's preStop, on its own node: leaves the cluster if the
    /// StatefulSet scaled the pod away (`replicas`, or else its
    /// `spec.replicas`), waiting at most `wait`.
    pub async fn prepare_stop(
        &mut self,
        replicas: Option<u32>,
        wait: Duration,
    ) -> Result<proto::PrepareStopResponse> {
        let mut request = self.untimed(proto::PrepareStopRequest {
            replicas,
            timeout_ms: wait.as_millis() as u64,
        });
        // The node answers by `wait`; the call outlives it by a margin.
        request.set_timeout(wait + Duration::from_secs(2));
        Ok(self.admin.prepare_stop(request).await?.into_inner())
    }

    /// Moves leadership to `to` (None: any caught-up voter).
    pub async fn transfer_leader(&mut self, to: Option<u64>) -> Result<proto::StatusResponse> {
        let request = self.request(proto::TransferLeaderRequest {
            to: to.unwrap_or(0),
        });
        Ok(self.admin.transfer_leader(request).await?.into_inner())
    }

    /// Takes a snapshot on the node now; returns its index.
    pub async fn snapshot(&mut self) -> Result<u64> {
        let request = self.request(proto::SnapshotRequest {});
        Ok(self
            .admin
            .snapshot(request)
            .await?
            .into_inner()
            .snapshot_index)
    }

    /// A consistent snapshot of the whole store, as a stream of chunks.
    pub async fn backup(&mut self) -> Result<Streaming<proto::BackupChunk>> {
        let request = self.request(proto::BackupRequest {});
        Ok(self.admin.backup(request).await?.into_inner())
    }

    /// Compares every member's state digest at one log position.
    /// Re-founds the cluster on this node's data; see `raftset
    /// force-new-cluster`. The node starts again right after answering.
    pub async fn force_new_cluster(&mut self) -> Result<proto::ForceNewClusterResponse> {
        let request = self.request(proto::ForceNewClusterRequest {});
        Ok(self.admin.force_new_cluster(request).await?.into_inner())
    }

    pub async fn verify(&mut self) -> Result<proto::VerifyResponse> {
        let request = self.request(proto::VerifyRequest {});
        Ok(self.admin.verify(request).await?.into_inner())
    }
}

fn consistency_value(consistency: Consistency) -> i32 {
    proto::Consistency::from(consistency) as i32
}

/// An empty request id: the node picks one (see the module doc).
const LEFT_TO_THE_NODE: bytes::Bytes = bytes::Bytes::new();

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tonic::{Request, Response, Status};

    use super::*;

    /// A KV server that records the request id of every write it is sent.
    #[derive(Default, Clone)]
    struct RecordingIds(Arc<Mutex<Vec<bytes::Bytes>>>);

    impl RecordingIds {
        fn record(&self, id: &bytes::Bytes) {
            self.0.lock().unwrap().push(id.clone());
        }
    }

    #[tonic::async_trait]
    impl proto::kv_server::Kv for RecordingIds {
        type WatchStream = tokio_stream::Empty<std::result::Result<proto::WatchEvent, Status>>;

        async fn get(
            &self,
            _: Request<proto::GetRequest>,
        ) -> std::result::Result<Response<proto::GetResponse>, Status> {
            Err(Status::unimplemented("reads are not recorded"))
        }
        async fn put(
            &self,
            request: Request<proto::PutRequest>,
        ) -> std::result::Result<Response<proto::PutResponse>, Status> {
            self.record(&request.get_ref().request_id);
            Ok(Response::new(proto::PutResponse::default()))
        }
        async fn delete(
            &self,
            request: Request<proto::DeleteRequest>,
        ) -> std::result::Result<Response<proto::DeleteResponse>, Status> {
            self.record(&request.get_ref().request_id);
            Ok(Response::new(proto::DeleteResponse::default()))
        }
        async fn scan(
            &self,
            _: Request<proto::ScanRequest>,
        ) -> std::result::Result<Response<proto::ScanResponse>, Status> {
            Err(Status::unimplemented("reads are not recorded"))
        }
        async fn compare_and_swap(
            &self,
            request: Request<proto::CompareAndSwapRequest>,
        ) -> std::result::Result<Response<proto::CompareAndSwapResponse>, Status> {
            self.record(&request.get_ref().request_id);
            Ok(Response::new(proto::CompareAndSwapResponse::default()))
        }
        async fn increment(
            &self,
            request: Request<proto::IncrementRequest>,
        ) -> std::result::Result<Response<proto::IncrementResponse>, Status> {
            self.record(&request.get_ref().request_id);
            Ok(Response::new(proto::IncrementResponse::default()))
        }
        async fn watch(
            &self,
            _: Request<proto::WatchRequest>,
        ) -> std::result::Result<Response<Self::WatchStream>, Status> {
            Err(Status::unimplemented("reads are not recorded"))
        }
    }

    /// Ids the client made up would be remembered by every node for the
    /// whole dedup window and never be sent again: the client leaves them
    /// to the node, which forgets its own once it can no longer retry.
    #[tokio::test]
    async fn writes_leave_the_request_id_to_the_node() {
        let server = RecordingIds::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let service = proto::kv_server::KvServer::new(server.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let mut client = Client::connect(&address.to_string()).await.unwrap();

        client.put(b"k", b"v").await.unwrap();
        client.delete(b"k").await.unwrap();
        client
            .compare_and_swap(b"k", None, Some(b"v"))
            .await
            .unwrap();
        client.increment(b"n", 1).await.unwrap();

        let ids = server.0.lock().unwrap().clone();
        assert_eq!(ids.len(), 4, "every write reached the server");
        assert!(ids.iter().all(|id| id.is_empty()), "ids sent: {ids:?}");
    }
}
