//! The request body of `Get` and `GetProfile`, through `framing::decode_request`: any bytes,
//! cut into any HTTP/2 DATA frames.

use std::convert::Infallible;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::StreamBody;
use meshlink::{
    grpc::framing::{decode_request, encode},
    proto::destination::GetDestination,
};
use proptest::{prelude::*, sample::Index};
use prost::Message;
use tonic::{Code, Status};

/// Requests this small fit any sane request-size limit.
const SMALL: usize = 1024;
/// Error messages quote at most a short prefix of client input.
const MAX_MESSAGE: usize = 1024;

/// Decodes a body made of `chunks`, each one DATA frame.
fn decode(chunks: Vec<Bytes>) -> Result<GetDestination, Status> {
    let frames = chunks
        .into_iter()
        .map(|c| Ok::<_, Infallible>(Frame::data(c)));
    decode_body(tonic::body::Body::new(StreamBody::new(
        futures::stream::iter(frames),
    )))
}

/// A request deadline that never passes during a test: the limits under test are sizes.
fn far_deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + std::time::Duration::from_secs(3600)
}

fn decode_body(body: tonic::body::Body) -> Result<GetDestination, Status> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    rt.block_on(decode_request::<GetDestination>(body, far_deadline()))
}

/// `bytes` cut at `cuts` (repeated cuts make empty frames).
fn split(bytes: &[u8], cuts: &[Index]) -> Vec<Bytes> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    at.sort_unstable();
    let mut chunks = Vec::with_capacity(at.len() + 1);
    let mut start = 0;
    for end in at {
        chunks.push(Bytes::copy_from_slice(&bytes[start..end]));
        start = end;
    }
    chunks.push(Bytes::copy_from_slice(&bytes[start..]));
    chunks
}

/// What any decoder must answer for a body of `bytes` no larger than [`SMALL`]: the message
/// when the body is exactly one uncompressed, well-formed gRPC message, else an error.
fn expected(bytes: &[u8]) -> Option<GetDestination> {
    let (flag, rest) = bytes.split_first()?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let payload = &rest[4..];
    (*flag == 0 && payload.len() == len)
        .then(|| GetDestination::decode(payload).ok())
        .flatten()
}

fn check_error(status: &Status) -> Result<(), TestCaseError> {
    prop_assert!(
        matches!(
            status.code(),
            Code::InvalidArgument | Code::Unimplemented | Code::ResourceExhausted
        ),
        "a bad request is the client's fault, not {:?}: {status:?}",
        status.code()
    );
    prop_assert!(
        !status.message().is_empty() && status.message().len() <= MAX_MESSAGE,
        "message of {} bytes",
        status.message().len()
    );
    Ok(())
}

fn request() -> impl Strategy<Value = GetDestination> {
    let text = || "(?s:.){0,64}";
    (text(), text(), text()).prop_map(|(scheme, path, context_token)| GetDestination {
        scheme,
        path,
        context_token,
    })
}

fn cuts() -> impl Strategy<Value = Vec<Index>> {
    proptest::collection::vec(any::<Index>(), 0..8)
}

proptest! {
    #![proptest_config(crate::config(512))]

    #[test]
    fn any_body_decodes_exactly_when_it_is_one_whole_message(
        bytes in proptest::collection::vec(any::<u8>(), 0..64),
        cuts in cuts(),
    ) {
        match (decode(split(&bytes, &cuts)), expected(&bytes)) {
            (Ok(got), Some(want)) => prop_assert_eq!(got, want),
            (Err(status), None) => check_error(&status)?,
            (got, want) => prop_assert!(false, "decoded {got:?}, expected {want:?}"),
        }
    }

    #[test]
    fn a_request_round_trips_in_any_frames(msg in request(), cuts in cuts()) {
        let framed = encode(&msg);
        prop_assume!(framed.len() <= SMALL);
        prop_assert_eq!(decode(split(&framed, &cuts)).ok(), Some(msg));
    }

    #[test]
    fn a_request_with_a_wrong_prefix_or_extra_bytes_is_rejected(
        msg in request(),
        cuts in cuts(),
        flag in 1u8..,
        claimed in any::<u32>(),
        extra in proptest::collection::vec(any::<u8>(), 1..16),
        change in 0..4u8,
    ) {
        let mut framed = encode(&msg).to_vec();
        prop_assume!(framed.len() <= SMALL);
        let len = framed.len() - 5;
        match change {
            0 => framed[0] = flag,
            1 => {
                prop_assume!(claimed as usize != len);
                framed[1..5].copy_from_slice(&claimed.to_be_bytes());
            }
            2 => framed.extend_from_slice(&extra),
            _ => framed.truncate(framed.len() - 1 - (claimed as usize % framed.len())),
        }
        match decode(split(&framed, &cuts)) {
            Ok(got) => prop_assert!(false, "accepted {got:?} from {framed:?}"),
            Err(status) => check_error(&status)?,
        }
    }

    #[test]
    fn an_oversized_body_is_rejected(
        chunk in 1usize..16 * 1024,
        total in meshlink::grpc::framing::MAX_REQUEST + 1..256 * 1024,
        byte in any::<u8>(),
    ) {
        // A prefix that claims exactly what follows, so only the size can be wrong.
        let mut bytes = vec![byte; total];
        bytes[0] = 0;
        bytes[1..5].copy_from_slice(&u32::try_from(total - 5).unwrap_or(u32::MAX).to_be_bytes());
        let chunks: Vec<Bytes> = bytes.chunks(chunk).map(Bytes::copy_from_slice).collect();
        match decode(chunks) {
            Ok(got) => prop_assert!(false, "accepted a {total}-byte request: {got:?}"),
            Err(status) => check_error(&status)?,
        }
    }

    #[test]
    fn a_body_that_fails_midway_is_rejected(msg in request(), cut in any::<Index>()) {
        let framed = encode(&msg);
        // Before the message is complete: the request was never sent whole.
        let at = cut.index(framed.len());
        let frames = vec![
            Ok(Frame::data(framed.slice(..at))),
            Err(std::io::Error::other("connection reset")),
        ];
        let body = tonic::body::Body::new(StreamBody::new(futures::stream::iter(frames)));
        match decode_body(body) {
            Ok(got) => prop_assert!(false, "accepted {got:?} from a failed body"),
            Err(status) => prop_assert!(status.code() != Code::Ok),
        }
    }
}
