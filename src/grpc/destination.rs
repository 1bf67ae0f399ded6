//! `Get` and `GetProfile`: streams that follow the resolver and send diffs.
//!
//! The service is a plain tower service over HTTP requests so that each stream's
//! messages are framed by [`framing`] (exact-size buffers) rather than tonic's encoder.
//! A `Get` stream makes its messages inside its response body, as HTTP/2 pulls them
//! ([`pulled`]); a `GetProfile` stream is a task feeding a queue.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, atomic::AtomicUsize},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use tokio::{sync::watch, time::Instant};
use tonic::Status;
use tracing::{Instrument, debug, debug_span};

use super::{
    DESTINATION_SERVICE_NAME, calls,
    connection::ConnectionStreams,
    convert,
    framing::{self, MessageBody, MessageSender, SendError},
    profile,
    pulled::{self, Outbox, PulledBody},
    shared::{EncodedDelta, EncodedUpdates, SharedDeltas, SharedSnapshots, UpdateKind},
};
use crate::{
    metrics::{Metrics, RpcLabels, UpdateLabels},
    model::{
        Authority, ClientLocality, ContextToken, EndpointAddrs, EndpointDiff, EndpointSet, PortSet,
        ServiceAuthority, SnapshotVersion, diff_endpoints, quote_prefix,
    },
    proto::destination::{self as pb, update},
    resolver::{AddrTarget, EndpointStream, ProfileStream, ResolveError, Resolver},
};

/// How streams behave towards their clients.
#[derive(Clone, Debug)]
pub struct StreamSettings {
    /// The cluster's DNS domain, to parse authorities.
    pub cluster_domain: String,
    /// Ports treated as opaque for IPs nothing is known about.
    pub default_opaque_ports: Arc<PortSet>,
    /// A client that does not take a message within this time has its stream reset.
    pub send_timeout: Duration,
    /// The request message must arrive within this time (or the client's `grpc-timeout`,
    /// whichever ends first).
    pub request_timeout: Duration,
    /// Requests whose message is still being read, across all connections; more are
    /// refused with RESOURCE_EXHAUSTED until some finish.
    pub max_pending_requests: usize,
}

/// The destination API over the resolver.
#[derive(Clone)]
pub struct DestinationService {
    resolver: Resolver,
    settings: Arc<StreamSettings>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
    shared: Arc<SharedDeltas>,
    snapshots: Arc<SharedSnapshots>,
    /// Requests whose message is being read now.
    pending: Arc<AtomicUsize>,
}

const GET_PATH: &str = "/io.linkerd.proxy.destination.Destination/Get";
const GET_PROFILE_PATH: &str = "/io.linkerd.proxy.destination.Destination/GetProfile";

/// Buffered messages per stream before the send timeout starts to count.
const STREAM_BUFFER: usize = 4;

impl DestinationService {
    /// Serves `resolver`; every stream ends when `shutdown` turns true.
    pub fn new(
        resolver: Resolver,
        settings: StreamSettings,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            resolver,
            settings: Arc::new(settings),
            metrics,
            shutdown,
            shared: Arc::default(),
            snapshots: Arc::default(),
            pending: Arc::default(),
        }
    }

    /// How long a stream may have something to send that its client makes no room for.
    pub(super) fn send_timeout(&self) -> Duration {
        self.settings.send_timeout
    }

    /// The server-wide count of requests being read and its limit, so the other APIs on
    /// this server count theirs against the same limit.
    pub fn pending_requests(&self) -> (Arc<AtomicUsize>, usize) {
        (
            Arc::clone(&self.pending),
            self.settings.max_pending_requests,
        )
    }

    fn parse(&self, req: &pb::GetDestination) -> Result<Authority, Status> {
        Authority::parse(&req.path, &self.settings.cluster_domain)
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }
}

fn resolve_status(e: ResolveError) -> Status {
    match e {
        ResolveError::ExternalName { .. } => Status::invalid_argument(e.to_string()),
        ResolveError::MissingRemoteService { .. } => Status::failed_precondition(e.to_string()),
    }
}

impl DestinationService {
    async fn route(
        self,
        req: http::Request<tonic::body::Body>,
    ) -> http::Response<tonic::body::Body> {
        let now = Instant::now();
        let call = Call {
            deadline: framing::client_timeout(req.headers()).map(|t| now + t),
            connection: req.extensions().get::<Arc<ConnectionStreams>>().cloned(),
        };
        let read_deadline = call
            .deadline
            .map_or(now + self.settings.request_timeout, |d| {
                d.min(now + self.settings.request_timeout)
            });
        let rpc = match req.uri().path() {
            GET_PATH => Rpc::Get,
            GET_PROFILE_PATH => Rpc::GetProfile,
            path => {
                return Status::unimplemented(format!(
                    "{} is not a method of {DESTINATION_SERVICE_NAME}",
                    quote_prefix(path)
                ))
                .into_http();
            }
        };
        let result = match self.read_request(req.into_body(), read_deadline).await {
            // Boxed: a request still being read then holds only this small future, not the
            // state of resolving it.
            Ok(msg) => match rpc {
                Rpc::Get => Box::pin(self.get(msg, call))
                    .await
                    .map(PulledBody::into_response),
                Rpc::GetProfile => self.get_profile(msg, call).map(MessageBody::into_response),
            },
            Err(status) => Err(status),
        };
        match result {
            Ok(response) => response,
            Err(status) => status.into_http(),
        }
    }

    /// Reads the request message, counting it among the requests being read.
    async fn read_request(
        &self,
        body: tonic::body::Body,
        deadline: Instant,
    ) -> Result<pb::GetDestination, Status> {
        let _pending = calls::Pending::enter(&self.pending, self.settings.max_pending_requests)?;
        framing::decode_request(body, deadline).await
    }

    async fn get(&self, req: pb::GetDestination, call: Call) -> Result<PulledBody, Status> {
        let authority = match self.parse(&req)? {
            Authority::Service(s) => s,
            Authority::Ip(addr) => {
                return Err(Status::invalid_argument(format!(
                    "Get does not resolve IP addresses ({addr}); use GetProfile, or ask for a service name"
                )));
            }
        };
        let client = self
            .resolver
            .client_locality(&ContextToken::parse(&req.context_token));
        let mut stream = self.resolver.resolve(&authority);
        // Resolve the first set before answering so that an unresolvable service fails the call.
        let first = match stream.next().await {
            Some(Ok(set)) => set,
            Some(Err(e)) => return Err(resolve_status(e)),
            None => return Err(Status::unavailable("the server is shutting down")),
        };
        let task = EndpointTask {
            stream,
            client,
            metrics: Arc::clone(&self.metrics),
            local_cluster: self.resolver.local_cluster_name(),
            shared: Arc::clone(&self.shared),
            snapshots: Arc::clone(&self.snapshots),
            deadline: call.deadline,
        };
        let shutdown = self.shutdown.clone();
        let (stream, body) = pulled::stream(
            move |outbox| Box::pin(task.run(first, outbox, shutdown)),
            call.slot(),
            self.metrics.stream_send_timeouts.clone(),
        );
        if let Some(connection) = &call.connection {
            connection.register(&stream);
        }
        debug!(authority = %quote_prefix(&req.path), "Get stream opened");
        Ok(body)
    }

    fn get_profile(&self, req: pb::GetDestination, call: Call) -> Result<MessageBody, Status> {
        let authority = self.parse(&req)?;
        let (tx, body) = call.channel();
        let task = ProfileTask {
            tx,
            settings: Arc::clone(&self.settings),
            metrics: Arc::clone(&self.metrics),
            deadline: call.deadline,
        };
        let span = debug_span!("get_profile", authority = %quote_prefix(&req.path));
        let shutdown = self.shutdown.clone();
        match authority {
            Authority::Service(authority) => {
                let token = ContextToken::parse(&req.context_token);
                let source = ServiceProfiles {
                    stream: self.resolver.profile(&authority, &token),
                    authority,
                    settings: Arc::clone(&self.settings),
                };
                tokio::spawn(task.run(source, shutdown).instrument(span));
            }
            Authority::Ip(addr) => {
                let source = AddrProfiles {
                    rx: self.resolver.addr_target_rx(addr),
                    addr,
                    settings: Arc::clone(&self.settings),
                    started: false,
                };
                tokio::spawn(task.run(source, shutdown).instrument(span));
            }
        }
        Ok(body)
    }
}

/// The two streaming methods.
enum Rpc {
    Get,
    GetProfile,
}

/// What a call brings besides its message: the client's deadline and its connection.
struct Call {
    /// When the client's `grpc-timeout` expires, if it set one.
    deadline: Option<Instant>,
    /// The connection's response streams, to count this one among them.
    connection: Option<Arc<ConnectionStreams>>,
}

impl Call {
    /// The response stream's channel, counted on its connection.
    fn channel(&self) -> (MessageSender, MessageBody) {
        framing::channel(STREAM_BUFFER, self.slot())
    }

    /// The response stream's place on its connection.
    fn slot(&self) -> Option<crate::grpc::connection::StreamSlot> {
        self.connection.as_ref().map(ConnectionStreams::open)
    }
}

impl tower_service::Service<http::Request<tonic::body::Body>> for DestinationService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.route(req).await) })
    }
}

impl tonic::server::NamedService for DestinationService {
    const NAME: &'static str = DESTINATION_SERVICE_NAME;
}

/// Counts a stream as open for as long as it lives.
struct OpenStream {
    metrics: Arc<Metrics>,
    rpc: &'static str,
}

impl OpenStream {
    fn new(metrics: &Arc<Metrics>, rpc: &'static str) -> Self {
        metrics.streams_open.get_or_create(&RpcLabels { rpc }).inc();
        Self {
            metrics: Arc::clone(metrics),
            rpc,
        }
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.metrics
            .streams_open
            .get_or_create(&RpcLabels { rpc: self.rpc })
            .dec();
    }
}

/// Queues a message; a client that stopped reading is counted.
async fn send(
    tx: &MessageSender,
    msg: Bytes,
    timeout: Duration,
    metrics: &Metrics,
) -> Result<(), SendError> {
    let result = tx.send(msg, timeout).await;
    if let Err(SendError::TimedOut) = result {
        metrics.stream_send_timeouts.inc();
    }
    result
}

struct EndpointTask {
    stream: EndpointStream,
    client: ClientLocality,
    metrics: Arc<Metrics>,
    local_cluster: Arc<str>,
    shared: Arc<SharedDeltas>,
    snapshots: Arc<SharedSnapshots>,
    deadline: Option<Instant>,
}

/// What a `Get` client holds: the basis of the next diff.
#[derive(Default)]
struct Held {
    /// Whether the service existed and which addresses were sent; `None` before the
    /// first message.
    sent: Option<(bool, Arc<EndpointAddrs>)>,
    /// The snapshot version the client holds, when it holds one lookup's set unfiltered.
    version: Option<SnapshotVersion>,
}

/// The messages-sent counters of `Get`, looked up once per stream.
struct UpdateCounters {
    adds: Counter,
    removes: Counter,
    no_endpoints: Counter,
}

impl UpdateCounters {
    fn new(metrics: &Metrics) -> Self {
        let counter = |kind| {
            metrics
                .updates_sent
                .get_or_create(&UpdateLabels { rpc: "Get", kind })
                .clone()
        };
        Self {
            adds: counter("add"),
            removes: counter("remove"),
            no_endpoints: counter("no_endpoints"),
        }
    }

    fn count(&self, kinds: &[UpdateKind]) {
        for kind in kinds {
            match kind {
                UpdateKind::Add => self.adds.inc(),
                UpdateKind::Remove => self.removes.inc(),
                UpdateKind::NoEndpoints => self.no_endpoints.inc(),
            };
        }
    }
}

impl EndpointTask {
    /// The stream's producer: puts each message in `outbox` as the body asks for it, and
    /// returns the status the stream ends with. The client going away drops it.
    async fn run(
        mut self,
        first: Arc<EndpointSet>,
        outbox: Outbox,
        mut shutdown: watch::Receiver<bool>,
    ) -> Status {
        let _open = OpenStream::new(&self.metrics, "Get");
        let counters = UpdateCounters::new(&self.metrics);
        let mut held = Held::default();
        let mut next = Some(Ok(first));
        // Made once, not per update: registering and dropping waiters on every change
        // showed in profiles at 25,000 streams.
        let shutting_down = shutdown.wait_for(|s| *s);
        tokio::pin!(shutting_down);
        let deadline = calls::Call::deadline_passed(self.deadline);
        tokio::pin!(deadline);
        loop {
            let set = match next.take() {
                Some(Ok(set)) => set,
                Some(Err(e)) => return resolve_status(e),
                None => return Status::ok(""),
            };
            let view = self.client.filter(&set);
            let frames = self.frames_for(&held, &set, &view);
            if !frames.bytes.is_empty() {
                outbox.put(frames.bytes.clone()).await;
                counters.count(&frames.kinds);
            }
            // Release the encoded messages before waiting: an idle stream would otherwise
            // hold its largest message (the first snapshot) for as long as it stays open.
            drop(frames);
            let unfiltered = Arc::ptr_eq(&view, &set.endpoints);
            held.version = set.version.filter(|_| unfiltered && set.exists);
            held.sent = Some((set.exists, if set.exists { view } else { Arc::default() }));
            drop(set);
            next = tokio::select! {
                n = self.stream.next() => n,
                _ = &mut shutting_down => return Status::ok(""),
                _ = &mut deadline => return calls::deadline_exceeded(),
            };
        }
    }

    /// The messages that take a client holding `held` to `set` (as `view` filters it).
    fn frames_for(
        &self,
        held: &Held,
        set: &EndpointSet,
        view: &Arc<EndpointAddrs>,
    ) -> EncodedDelta {
        let unfiltered = Arc::ptr_eq(view, &set.endpoints);
        // The usual case: the client holds the previous version of the same lookup, so
        // the delta the index computed once, encoded once, serves every such stream.
        let shared_delta = set
            .delta
            .as_ref()
            .filter(|_| unfiltered && held.version.map(SnapshotVersion::next) == set.version);
        match (&held.sent, shared_delta) {
            (Some((true, _)), Some(delta)) if set.exists => {
                self.shared
                    .get_or_encode(delta, &set.labels, self.client.zone.as_ref(), || {
                        self.encode_diff(delta, set)
                    })
            }
            (Some((exists, before)), _) if *exists == set.exists => {
                let diff = diff_endpoints(before, view);
                Arc::new(EncodedUpdates::join(self.encode_diff(&diff, set)))
            }
            (Some((true, _)), _) if !set.exists => Arc::new(EncodedUpdates::join(vec![(
                UpdateKind::NoEndpoints,
                framing::encode(&convert::no_endpoints(false)),
            )])),
            _ => {
                let encode = || {
                    let update = convert::full_update(
                        set.exists,
                        view,
                        &set.labels,
                        &self.client,
                        &self.local_cluster,
                    );
                    let kind = match update.update {
                        Some(update::Update::Add(_)) => UpdateKind::Add,
                        _ => UpdateKind::NoEndpoints,
                    };
                    vec![(kind, framing::encode(&update))]
                };
                // The whole unfiltered set is the same message for every caller in the
                // same zone: streams opening together share one encoding.
                if unfiltered && !view.is_empty() {
                    self.snapshots.get_or_encode(
                        view,
                        &set.labels,
                        self.client.zone.as_ref(),
                        encode,
                    )
                } else {
                    Arc::new(EncodedUpdates::join(encode()))
                }
            }
        }
    }

    /// A diff as framed messages: a remove of what went, then an add of what came.
    fn encode_diff(&self, diff: &EndpointDiff, set: &EndpointSet) -> Vec<(UpdateKind, Bytes)> {
        let mut frames = Vec::with_capacity(2);
        if !diff.removed.is_empty() {
            let remove = convert::remove(diff.removed.iter().copied());
            frames.push((UpdateKind::Remove, framing::encode(&remove)));
        }
        if !diff.added.is_empty() {
            let add = convert::add(&diff.added, &set.labels, &self.client, &self.local_cluster);
            frames.push((UpdateKind::Add, framing::encode(&add)));
        }
        frames
    }
}

struct ProfileTask {
    tx: MessageSender,
    settings: Arc<StreamSettings>,
    metrics: Arc<Metrics>,
    deadline: Option<Instant>,
}

/// What a `GetProfile` stream follows: the profile now on the first call, then the next
/// one after each change; `None` when there will be no more (shutdown).
trait ProfileSource: Send {
    fn next(&mut self) -> impl Future<Output = Option<pb::DestinationProfile>> + Send;
}

/// A service's profile for one caller.
struct ServiceProfiles {
    stream: ProfileStream,
    authority: ServiceAuthority,
    settings: Arc<StreamSettings>,
}

impl ProfileSource for ServiceProfiles {
    async fn next(&mut self) -> Option<pb::DestinationProfile> {
        let view = self.stream.next().await?;
        Some(profile::for_service_view(
            &view,
            &self.authority,
            &self.settings.cluster_domain,
            &self.settings.default_opaque_ports,
        ))
    }
}

/// What an IP address and port are.
struct AddrProfiles {
    rx: watch::Receiver<AddrTarget>,
    addr: SocketAddr,
    settings: Arc<StreamSettings>,
    started: bool,
}

impl ProfileSource for AddrProfiles {
    async fn next(&mut self) -> Option<pb::DestinationProfile> {
        if std::mem::replace(&mut self.started, true) {
            self.rx.changed().await.ok()?;
        }
        let (domain, defaults) = (
            &self.settings.cluster_domain,
            &self.settings.default_opaque_ports,
        );
        let addr = self.addr;
        Some(match &*self.rx.borrow_and_update() {
            AddrTarget::Service(info) => profile::for_service(info, addr.port(), domain, defaults),
            AddrTarget::Pod(endpoint) => profile::for_endpoint(endpoint),
            AddrTarget::Unknown => profile::default_profile(defaults.contains(addr.port(), None)),
        })
    }
}

impl ProfileTask {
    async fn run(self, mut source: impl ProfileSource, mut shutdown: watch::Receiver<bool>) {
        let _open = OpenStream::new(&self.metrics, "GetProfile");
        let sent = self
            .metrics
            .updates_sent
            .get_or_create(&UpdateLabels {
                rpc: "GetProfile",
                kind: "profile",
            })
            .clone();
        let deadline = calls::Call::deadline_passed(self.deadline);
        tokio::pin!(deadline);
        let mut last: Option<pb::DestinationProfile> = None;
        loop {
            let profile = tokio::select! {
                p = source.next() => match p {
                    Some(p) => p,
                    None => return,
                },
                _ = self.tx.closed() => return,
                _ = shutdown.wait_for(|s| *s) => return,
                _ = &mut deadline => {
                    self.tx.end(calls::deadline_exceeded());
                    return;
                }
            };
            if last.as_ref() == Some(&profile) {
                continue;
            }
            match send(
                &self.tx,
                framing::encode(&profile),
                self.settings.send_timeout,
                &self.metrics,
            )
            .await
            {
                Ok(()) => sent.inc(),
                Err(SendError::Closed) => return,
                // Like `Get`: a client that stopped reading is told so.
                Err(SendError::TimedOut) => {
                    debug!("client stopped reading; ending the stream");
                    self.tx.end_stalled(calls::stalled());
                    return;
                }
            };
            last = Some(profile);
        }
    }
}
