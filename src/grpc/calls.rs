//! What the identity and policy APIs share: reading a call's one request within the
//! server's limits, following the client's deadline, and answering.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;
use tonic::Status;

use super::{
    connection::ConnectionStreams,
    framing::{self, MessageBody, MessageSender},
};

/// The server's limits on reading requests and on clients that stop reading.
#[derive(Clone, Debug)]
pub struct CallLimits {
    /// Requests being read now, server-wide (shared with the destination API).
    pending: Arc<AtomicUsize>,
    max_pending: usize,
    /// The request message must arrive within this (or the client's deadline).
    pub request_timeout: Duration,
    /// A client that does not take a message within this has its stream ended.
    pub send_timeout: Duration,
}

impl CallLimits {
    /// Limits counting pending requests in `pending`, at most `max_pending` at once.
    pub fn new(
        (pending, max_pending): (Arc<AtomicUsize>, usize),
        request_timeout: Duration,
        send_timeout: Duration,
    ) -> Self {
        Self {
            pending,
            max_pending,
            request_timeout,
            send_timeout,
        }
    }

    /// Reads the one request message of `req` (at most `max` bytes, within the request
    /// timeout or the client's deadline if sooner), counted among the pending requests.
    pub async fn read<M: prost::Message + Default>(
        &self,
        req: http::Request<tonic::body::Body>,
        max: usize,
    ) -> Result<(M, Call), Status> {
        let now = Instant::now();
        let deadline = framing::client_timeout(req.headers()).map(|t| now + t);
        let connection = req.extensions().get::<Arc<ConnectionStreams>>().cloned();
        let read_deadline = deadline.map_or(now + self.request_timeout, |d| {
            d.min(now + self.request_timeout)
        });
        let _pending = Pending::enter(&self.pending, self.max_pending)?;
        let msg = framing::decode_request_up_to(req.into_body(), read_deadline, max).await?;
        Ok((
            msg,
            Call {
                deadline,
                connection,
            },
        ))
    }
}

/// A request counted among those being read, until dropped.
pub(super) struct Pending(Arc<AtomicUsize>);

impl Pending {
    /// Counts one more request being read, or refuses it past `limit`.
    pub(super) fn enter(pending: &Arc<AtomicUsize>, limit: usize) -> Result<Self, Status> {
        if pending.fetch_add(1, Ordering::AcqRel) >= limit {
            pending.fetch_sub(1, Ordering::AcqRel);
            return Err(Status::resource_exhausted(format!(
                "too many requests are being read at once (limit {limit}); retry shortly"
            )));
        }
        Ok(Self(Arc::clone(pending)))
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a call brings besides its message.
pub struct Call {
    /// When the client's `grpc-timeout` expires, if it set one.
    pub deadline: Option<Instant>,
    connection: Option<Arc<ConnectionStreams>>,
}

impl Call {
    /// A response stream, counted on its connection (so a connection whose every stream
    /// stalled is closed).
    pub fn channel(&self, buffer: usize) -> (MessageSender, MessageBody) {
        framing::channel(
            buffer,
            self.connection.as_ref().map(ConnectionStreams::open),
        )
    }

    /// Resolves when the client's deadline passes; never when it set none.
    pub async fn deadline_passed(deadline: Option<Instant>) {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    }
}

/// The status a stream or call ends with when its client's deadline passed.
pub fn deadline_exceeded() -> Status {
    Status::deadline_exceeded("the call's deadline (grpc-timeout) passed")
}

/// The status a stream ends with when its client stopped reading.
pub fn stalled() -> Status {
    Status::deadline_exceeded("client did not read updates")
}

/// A unary call's answer: its one message, then an OK status.
pub fn unary<M: prost::Message>(msg: &M) -> http::Response<tonic::body::Body> {
    let mut trailers = http::HeaderMap::new();
    // An OK status always renders as headers.
    let _ = Status::ok("").add_header(&mut trailers);
    let frames = [
        Ok::<_, Infallible>(http_body::Frame::data(framing::encode(msg))),
        Ok(http_body::Frame::trailers(trailers)),
    ];
    let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
    let mut response = http::Response::new(tonic::body::Body::new(body));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}
