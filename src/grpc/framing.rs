//! gRPC framing for our streaming RPCs.
//!
//! Each message is encoded into its own exact-size buffer that is freed once written, so
//! an idle stream holds no encode buffer. (tonic's generic encoder keeps one per stream,
//! as large as the largest message the stream ever sent: for a 100-endpoint service that
//! alone was most of a stream's memory.)

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tonic::Status;

/// The gRPC length-prefix: a compression flag and a big-endian length.
const PREFIX: usize = 5;

/// The largest request we accept: a `GetDestination` is a few hundred bytes.
const MAX_REQUEST: usize = 64 * 1024;

/// Encodes `msg` with its gRPC length prefix into a buffer of exactly its size.
pub fn encode<M: prost::Message>(msg: &M) -> Bytes {
    let len = msg.encoded_len();
    let mut buf = BytesMut::with_capacity(PREFIX + len);
    buf.put_u8(0);
    // Messages are far below 4 GiB: the request limit and endpoint counts bound them.
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    // Encoding into a buffer with enough capacity cannot fail.
    let _ = msg.encode(&mut buf);
    buf.freeze()
}

/// Reads the single request message of a server-streaming call.
pub async fn decode_request<M: prost::Message + Default>(
    body: tonic::body::Body,
) -> Result<M, Status> {
    let bytes = http_body_util::Limited::new(body, MAX_REQUEST)
        .collect()
        .await
        .map_err(|e| Status::invalid_argument(format!("cannot read the request: {e}")))?
        .to_bytes();
    if bytes.len() < PREFIX {
        return Err(Status::invalid_argument(
            "the request holds no gRPC message",
        ));
    }
    if bytes[0] != 0 {
        return Err(Status::unimplemented(
            "compressed requests are not supported",
        ));
    }
    let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    if bytes.len() != PREFIX + len {
        return Err(Status::invalid_argument(format!(
            "the request's length prefix says {len} bytes but {} follow",
            bytes.len() - PREFIX
        )));
    }
    M::decode(&bytes[PREFIX..])
        .map_err(|e| Status::invalid_argument(format!("cannot decode the request: {e}")))
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
    end: Arc<Mutex<Option<Status>>>,
}

/// A response body fed by a stream task: messages, then `grpc-status` trailers.
pub struct MessageBody {
    rx: mpsc::Receiver<Bytes>,
    end: Arc<Mutex<Option<Status>>>,
    finished: bool,
}

/// A sender and the body it feeds; at most `buffer` messages wait between them.
pub fn channel(buffer: usize) -> (MessageSender, MessageBody) {
    let (tx, rx) = mpsc::channel(buffer);
    let end = Arc::new(Mutex::new(None));
    (
        MessageSender {
            tx,
            end: Arc::clone(&end),
        },
        MessageBody {
            rx,
            end,
            finished: false,
        },
    )
}

impl MessageSender {
    /// Queues a framed message, waiting at most `timeout` for room.
    pub async fn send(&self, msg: Bytes, timeout: std::time::Duration) -> Result<(), SendError> {
        match self.tx.send_timeout(msg, timeout).await {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(SendError::Closed),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(SendError::TimedOut),
        }
    }

    /// Ends the stream with `status` as soon as the body is next polled, ahead of queued
    /// messages; it needs no room in the queue, so a stalled client cannot block it. The
    /// body wakes when the sender is dropped, which the caller does next.
    pub fn end(&self, status: Status) {
        *self.end.lock() = Some(status);
    }

    /// Resolves when the client has gone away.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

impl MessageBody {
    /// The response carrying this body.
    pub fn into_response(self) -> http::Response<tonic::body::Body> {
        let mut response = http::Response::new(tonic::body::Body::new(self));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        response
    }
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
        let ended = self.end.lock().take();
        let status = match ended {
            Some(status) => status,
            None => match ready!(self.rx.poll_recv(cx)) {
                Some(bytes) => return Poll::Ready(Some(Ok(http_body::Frame::data(bytes)))),
                // The task is gone: with the status it left, or OK.
                None => self.end.lock().take().unwrap_or_else(|| Status::ok("")),
            },
        };
        self.finished = true;
        let mut trailers = http::HeaderMap::new();
        if let Err(e) = status.add_header(&mut trailers) {
            return Poll::Ready(Some(Err(e)));
        }
        Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))))
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
        assert_eq!(decode_request::<GetDestination>(body).await.unwrap(), msg);

        let truncated =
            tonic::body::Body::new(http_body_util::Full::new(framed.slice(..framed.len() - 1)));
        let err = decode_request::<GetDestination>(truncated)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);

        let mut compressed = framed.to_vec();
        compressed[0] = 1;
        let body = tonic::body::Body::new(http_body_util::Full::new(Bytes::from(compressed)));
        assert_eq!(
            decode_request::<GetDestination>(body)
                .await
                .unwrap_err()
                .code(),
            tonic::Code::Unimplemented
        );
    }
}

#[cfg(test)]
mod body_tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn messages_then_ok_or_the_end_status_ahead_of_queued_messages() {
        let (tx, body) = channel(4);
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

        let (tx, body) = channel(1);
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
