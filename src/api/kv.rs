//! The KV gRPC service: converts between protobuf and the request path.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::watch::Watches;
use crate::error::{Error, InvalidRequest};
use crate::grpc::request_timeout;
use crate::proto;
use crate::raft::requests::Requests;
use crate::store::state_machine::ScanRange;
use crate::types::{Consistency, Op, Outcome};
use crate::validate;

/// Cloned for each port that serves it: the clones share everything.
#[derive(Clone)]
pub struct KvService {
    pub requests: Arc<Requests>,
    pub watches: Watches,
}

fn consistency(value: i32) -> Result<Consistency, Error> {
    Ok(proto::consistency(value)?)
}

/// An outcome of another kind than the request's: its id was reused.
fn reused() -> Status {
    Error::from(InvalidRequest::RequestIdReused).into()
}

impl KvService {
    async fn write(
        &self,
        op: Op,
        request_id: &[u8],
        timeout: Option<std::time::Duration>,
    ) -> Result<Outcome, Error> {
        let request_id = validate::request_id(request_id)?;
        let delta = match &op {
            Op::Increment { delta, .. } => *delta,
            _ => 0,
        };
        let outcome = self.requests.write(op, request_id, timeout).await?;
        Error::refused(delta, outcome)
    }
}

#[tonic::async_trait]
impl proto::kv_server::Kv for KvService {
    type WatchStream = super::watch::WatchStream;

    async fn get(
        &self,
        request: Request<proto::GetRequest>,
    ) -> Result<Response<proto::GetResponse>, Status> {
        let timeout = request_timeout(&request);
        let request = request.into_inner();
        let (kv, revision) = self
            .requests
            .get(&request.key, consistency(request.consistency)?, timeout)
            .await?;
        Ok(Response::new(proto::GetResponse {
            kv: kv.map(Into::into),
            revision,
        }))
    }

    async fn put(
        &self,
        request: Request<proto::PutRequest>,
    ) -> Result<Response<proto::PutResponse>, Status> {
        let timeout = request_timeout(&request);
        let request = request.into_inner();
        let op = proto::put_op(&request);
        match self.write(op, &request.request_id, timeout).await? {
            Outcome::Put { revision, prev } => Ok(Response::new(proto::PutResponse {
                revision,
                prev_kv: prev.map(Into::into),
            })),
            _ => Err(reused()),
        }
    }

    async fn delete(
        &self,
        request: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::DeleteResponse>, Status> {
        let timeout = request_timeout(&request);
        let request = request.into_inner();
        let op = proto::delete_op(&request);
        match self.write(op, &request.request_id, timeout).await? {
            Outcome::Deleted { revision, prev } => Ok(Response::new(proto::DeleteResponse {
                revision,
                deleted: prev.is_some(),
                prev_kv: prev.map(Into::into),
            })),
            _ => Err(reused()),
        }
    }

    async fn scan(
        &self,
        request: Request<proto::ScanRequest>,
    ) -> Result<Response<proto::ScanResponse>, Status> {
        let timeout = request_timeout(&request);
        let request = request.into_inner();
        let range = ScanRange {
            prefix: request.prefix.to_vec(),
            start: request.start.to_vec(),
            end: proto::scan_end(&request),
        };
        let page = self
            .requests
            .scan(
                &range,
                request.limit,
                consistency(request.consistency)?,
                timeout,
            )
            .await?;
        Ok(Response::new(proto::ScanResponse {
            kvs: page.kvs.into_iter().map(Into::into).collect(),
            next_key: page.next_key.map(Into::into),
            revision: page.revision,
        }))
    }

    async fn compare_and_swap(
        &self,
        request: Request<proto::CompareAndSwapRequest>,
    ) -> Result<Response<proto::CompareAndSwapResponse>, Status> {
        let timeout = request_timeout(&request);
        let request = request.into_inner();
        let op = proto::compare_and_swap_op(&request).map_err(Error::from)?;
        match self.write(op, &request.request_id, timeout).await? {
            Outcome::Swapped { revision } => {
                Ok(Response::new(proto::CompareAndSwapResponse { revision }))
            }
            _ => Err(reused()),
        }
    }

    async fn increment(
        &self,
        request: Request<proto::IncrementRequest>,
    ) -> Result<Response<proto::IncrementResponse>, Status> {
        let timeout = request_timeout(&request);
        let request = request.into_inner();
        let op = proto::increment_op(&request);
        match self.write(op, &request.request_id, timeout).await? {
            Outcome::Incremented { revision, value } => {
                Ok(Response::new(proto::IncrementResponse { value, revision }))
            }
            _ => Err(reused()),
        }
    }

    async fn watch(
        &self,
        request: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let request = request.into_inner();
        let stream = self
            .watches
            .start(request.prefix.to_vec(), request.start_revision)?;
        Ok(Response::new(stream))
    }
}
