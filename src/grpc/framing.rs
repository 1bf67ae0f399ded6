//! gRPC framing for our streaming RPCs.
//!
//! Each message is encoded into its own exact-size buffer that is freed once written, so
//! an idle stream holds no encode buffer. (tonic's generic encoder keeps one per stream,
//! as large as the largest message the stream ever sent: for a 100-endpoint service that
//! alone was most of a stream's memory.)

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker},
};

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::connection::StreamSlot;
use tonic::Status;

/// The gRPC length-prefix: a compression flag and a big-endian length.
const PREFIX: usize = 5;

/// The largest request message we accept, prefix included. A `GetDestination` is an
/// authority (at most 253 characters of DNS name and a port) and a context token naming a
/// namespace, a node and a pod (under 600 bytes at Kubernetes' own name limits); anything
/// larger is not a proxy's request, and what a pending request may hold is what a flood
/// of them costs.
pub const MAX_REQUEST: usize = 2 * 1024;

/// Encodes `msg` with its gRPC length prefix into a buffer of exactly its size.
pub fn encode<M: prost::Message>(msg: &M) -> Bytes {
    let len = msg.encoded_len();
    let mut buf = BytesMut::with_capacity(PREFIX + len);
    buf.put_u8(0);
    // Messages are far below 4 GiB: endpoint counts bound them.
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    // Encoding into a buffer with enough capacity cannot fail.
    let _ = msg.encode(&mut buf);
    buf.freeze()
}

/// Reads the single request message of a server-streaming call, at most until `deadline`.
///
/// Each received chunk is copied into a buffer that grows with what arrived (never past
/// [`MAX_REQUEST`]) and released at once, so an unfinished request costs what its client
/// sent, not the connection's read buffer it arrived in. As in grpc-go, the request must
/// end after its one message: a second message or stray bytes are refused.
pub async fn decode_request<M: prost::Message + Default>(
    body: tonic::body::Body,
    deadline: tokio::time::Instant,
) -> Result<M, Status> {
    decode_request_up_to(body, deadline, MAX_REQUEST).await
}

/// [`decode_request`] for a request of up to `max` bytes (prefix included), for messages
/// that are larger than a `GetDestination` (a `CertifyRequest` carries a token and a CSR).
pub async fn decode_request_up_to<M: prost::Message + Default>(
    body: tonic::body::Body,
    deadline: tokio::time::Instant,
    max: usize,
) -> Result<M, Status> {
    match tokio::time::timeout_at(deadline, read_message(body, max)).await {
        Ok(result) => M::decode(result?.as_ref())
            .map_err(|e| Status::invalid_argument(format!("cannot decode the request: {e}"))),
        Err(_) => Err(Status::deadline_exceeded(
            "the request message did not arrive before the deadline",
        )),
    }
}

/// The bytes of the one message of `body`, without its prefix.
async fn read_message(mut body: tonic::body::Body, max: usize) -> Result<Bytes, Status> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            Status::invalid_argument(format!(
                "cannot read the request: {}",
                crate::model::quote_prefix(&e.to_string())
            ))
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers on a request carry nothing we read
        };
        if buf.len() + data.len() > max {
            return Err(too_large(max));
        }
        buf.extend_from_slice(&data);
        if let Some(len) = message_len(&buf, max)?
            && buf.len() > PREFIX + len
        {
            return Err(Status::invalid_argument(format!(
                "the request's length prefix says {len} bytes but more follow: \
                 a server-streaming call takes exactly one message"
            )));
        }
    }
    match message_len(&buf, max)? {
        Some(len) if buf.len() == PREFIX + len => Ok(buf.freeze().slice(PREFIX..)),
        Some(len) => Err(Status::invalid_argument(format!(
            "the request's length prefix says {len} bytes but {} follow",
            buf.len() - PREFIX
        ))),
        None if buf.is_empty() => Err(Status::invalid_argument(
            "the request holds no gRPC message",
        )),
        None => Err(Status::invalid_argument(
            "the request ends inside its length prefix",
        )),
    }
}

/// The message length the prefix in `buf` announces, once the prefix is there.
fn message_len(buf: &[u8], max: usize) -> Result<Option<usize>, Status> {
    let Some(prefix) = buf.get(..PREFIX) else {
        return Ok(None);
    };
    if prefix[0] != 0 {
        return Err(Status::unimplemented(
            "compressed requests are not supported",
        ));
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if PREFIX + len > max {
        return Err(too_large(max));
    }
    Ok(Some(len))
}

fn too_large(max: usize) -> Status {
    if max == MAX_REQUEST {
        return Status::resource_exhausted(format!(
            "the request is larger than {MAX_REQUEST} bytes; a GetDestination is a few hundred"
        ));
    }
    Status::resource_exhausted(format!("the request is larger than {max} bytes"))
}

/// The deadline a client set with the `grpc-timeout` header, if it set a valid one.
pub fn client_timeout(headers: &http::HeaderMap) -> Option<std::time::Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    // "TimeoutValue: 1 to 8 ASCII digits" then a unit.
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    use std::time::Duration;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Why a message could not be handed to the response body.
pub enum SendError {
    /// The client went away.
    Closed,
    /// The client did not take messages within the timeout.
    TimedOut,
}

/// The stream task's end of a response: framed messages, and how the stream ends.
pub struct MessageSender {
    tx: mpsc::Sender<Bytes>,
    shared: Arc<Mutex<Shared>>,
}

/// A response body fed by a stream task: messages, then `grpc-status` trailers.
pub struct MessageBody {
    shared: Arc<Mutex<Shared>>,
    finished: bool,
}

/// What the sender and the body share.
struct Shared {
    /// The status to end with, ahead of queued messages.
    end: Option<Status>,
    /// The queue; taken away (and its messages freed) when the stream is ended.
    rx: Option<mpsc::Receiver<Bytes>>,
    /// Wakes the body when the stream is ended while it waits.
    waker: Option<Waker>,
    /// This stream's place among its connection's streams, released with the body.
    slot: Option<StreamSlot>,
}

/// A sender and the body it feeds; at most `buffer` messages wait between them. `slot`
/// counts the stream on its connection until the body is dropped.
pub fn channel(buffer: usize, slot: Option<StreamSlot>) -> (MessageSender, MessageBody) {
    let (tx, rx) = mpsc::channel(buffer);
    let shared = Arc::new(Mutex::new(Shared {
        end: None,
        rx: Some(rx),
        waker: None,
        slot,
    }));
    (
        MessageSender {
            tx,
            shared: Arc::clone(&shared),
        },
        MessageBody {
            shared,
            finished: false,
        },
    )
}

impl MessageSender {
    /// Queues a framed message, waiting at most `timeout` for room.
    pub async fn send(&self, msg: Bytes, timeout: std::time::Duration) -> Result<(), SendError> {
        // Usually there is room: then no timer is made (a fan-out makes one per stream).
        let msg = match self.tx.try_send(msg) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(SendError::Closed),
            Err(mpsc::error::TrySendError::Full(msg)) => msg,
        };
        match self.tx.send_timeout(msg, timeout).await {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(SendError::Closed),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(SendError::TimedOut),
        }
    }

    /// Ends the stream with `status` as soon as the body is next polled, ahead of queued
    /// messages, which are freed now; it needs no room in the queue, so a stalled client
    /// cannot block it.
    pub fn end(&self, status: Status) {
        let mut shared = self.shared.lock();
        shared.end = Some(status);
        shared.rx = None;
        if let Some(waker) = shared.waker.take() {
            waker.wake();
        }
    }

    /// Ends a stream whose client stopped reading, and marks it stalled on its
    /// connection: a connection whose every stream stalled is closed (see
    /// [`super::connection`]), since HTTP/2 cannot reset a stream the client grants no
    /// window to.
    pub fn end_stalled(&self, status: Status) {
        self.end(status);
        if let Some(slot) = self.shared.lock().slot.as_mut() {
            slot.mark_stalled();
        }
    }

    /// Resolves when the client has gone away (or the stream was ended).
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

impl MessageBody {
    /// The response carrying this body.
    pub fn into_response(self) -> http::Response<tonic::body::Body> {
        response(self)
    }
}

/// A gRPC response streaming `body`.
pub fn response<B>(body: B) -> http::Response<tonic::body::Body>
where
    B: http_body::Body<Data = Bytes, Error = Status> + Send + 'static,
{
    let mut response = http::Response::new(tonic::body::Body::new(body));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

/// A response stream's last frame: `status` as its `grpc-status` trailers.
pub fn status_trailers(status: Status) -> Option<Result<http_body::Frame<Bytes>, Status>> {
    let mut trailers = http::HeaderMap::new();
    if let Err(e) = status.add_header(&mut trailers) {
        return Some(Err(e));
    }
    Some(Ok(http_body::Frame::trailers(trailers)))
}

impl http_body::Body for MessageBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        let status = {
            let mut shared = self.shared.lock();
            let shared = &mut *shared;
            match (shared.end.take(), shared.rx.as_mut()) {
                (Some(status), _) => status,
                (None, Some(rx)) => match rx.poll_recv(cx) {
                    Poll::Ready(Some(bytes)) => {
                        return Poll::Ready(Some(Ok(http_body::Frame::data(bytes))));
                    }
                    // The task is gone without a status: the stream ends well.
                    Poll::Ready(None) => Status::ok(""),
                    Poll::Pending => {
                        if !shared
                            .waker
                            .as_ref()
                            .is_some_and(|w| w.will_wake(cx.waker()))
                        {
                            shared.waker = Some(cx.waker().clone());
                        }
                        return Poll::Pending;
                    }
                },
                (None, None) => Status::ok(""),
            }
        };
        self.finished = true;
        Poll::Ready(status_trailers(status))
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::destination::GetDestination;

    #[tokio::test]
    async fn requests_round_trip_and_bad_frames_are_rejected() {
        let msg = GetDestination {
            scheme: "k8s".into(),
            path: "web.shop.svc.cluster.local:80".into(),
            context_token: String::new(),
        };
        let framed = encode(&msg);
        assert_eq!(framed.len(), PREFIX + prost::Message::encoded_len(&msg));
        let body = tonic::body::Body::new(http_body_util::Full::new(framed.clone()));
        assert_eq!(
            decode_request::<GetDestination>(body, later())
                .await
                .unwrap(),
            msg
        );

        let truncated =
            tonic::body::Body::new(http_body_util::Full::new(framed.slice(..framed.len() - 1)));
        let err = decode_request::<GetDestination>(truncated, later())
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);

        let mut compressed = framed.to_vec();
        compressed[0] = 1;
        let body = tonic::body::Body::new(http_body_util::Full::new(Bytes::from(compressed)));
        assert_eq!(
            decode_request::<GetDestination>(body, later())
                .await
                .unwrap_err()
                .code(),
            tonic::Code::Unimplemented
        );

        // A prefix announcing more than the limit is refused before anything is read.
        let mut huge = vec![0u8, 0xff, 0xff, 0xff, 0xff];
        huge.extend_from_slice(b"abc");
        let body = tonic::body::Body::new(http_body_util::Full::new(Bytes::from(huge)));
        let err = decode_request::<GetDestination>(body, later())
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    }

    fn later() -> tokio::time::Instant {
        tokio::time::Instant::now() + std::time::Duration::from_secs(5)
    }

    #[test]
    fn grpc_timeout_headers_parse_by_the_spec() {
        let parse = |v: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("grpc-timeout", http::HeaderValue::from_str(v).unwrap());
            client_timeout(&headers)
        };
        assert_eq!(parse("1S"), Some(std::time::Duration::from_secs(1)));
        assert_eq!(parse("250m"), Some(std::time::Duration::from_millis(250)));
        assert_eq!(parse("2H"), Some(std::time::Duration::from_secs(7200)));
        assert_eq!(parse("5n"), Some(std::time::Duration::from_nanos(5)));
        assert_eq!(parse("123456789S"), None, "at most 8 digits");
        assert_eq!(parse("S"), None);
        assert_eq!(parse("10x"), None);
        assert_eq!(parse(""), None);
    }
}

#[cfg(test)]
mod body_tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn messages_then_ok_or_the_end_status_ahead_of_queued_messages() {
        let (tx, body) = channel(4, None);
        tx.send(
            Bytes::from_static(b"one"),
            std::time::Duration::from_secs(1),
        )
        .await
        .ok();
        drop(tx);
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers.get("grpc-status").unwrap(), "0");
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"one"));

        let (tx, body) = channel(1, None);
        tx.send(
            Bytes::from_static(b"queued"),
            std::time::Duration::from_secs(1),
        )
        .await
        .ok();
        // The queue is full: a send times out, and the end status still gets through.
        assert!(matches!(
            tx.send(
                Bytes::from_static(b"more"),
                std::time::Duration::from_millis(10)
            )
            .await,
            Err(SendError::TimedOut)
        ));
        tx.end(Status::deadline_exceeded("client did not read updates"));
        drop(tx);
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers.get("grpc-status").unwrap(), "4");
        assert!(collected.to_bytes().is_empty());
    }
}
