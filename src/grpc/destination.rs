//! `Get` and `GetProfile`: a task per stream that follows the resolver and sends diffs.
//!
//! The service is a plain tower service over HTTP requests so that each stream's
//! messages are framed by [`framing`] (exact-size buffers) rather than tonic's encoder.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use tokio::sync::watch;
use tonic::Status;
use tracing::{Instrument, debug, debug_span};

use super::{
    DESTINATION_SERVICE_NAME, convert,
    framing::{self, MessageBody, MessageSender, SendError},
    profile,
    shared::{EncodedDelta, EncodedUpdates, SharedDeltas, UpdateKind},
};
use crate::{
    index::AddrTarget,
    metrics::{Metrics, RpcLabels, UpdateLabels},
    model::{
        Authority, ClientLocality, ContextToken, EndpointAddrs, EndpointDiff, EndpointSet, PortSet,
        ServiceAuthority, ServiceRef, SnapshotVersion, diff_endpoints,
    },
    proto::destination::{self as pb, update},
    resolver::{EndpointStream, ResolveError, Resolver},
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
}

/// The destination API over the resolver.
#[derive(Clone)]
pub struct DestinationService {
    resolver: Resolver,
    settings: Arc<StreamSettings>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
    shared: Arc<SharedDeltas>,
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
        }
    }

    fn parse(&self, req: &pb::GetDestination) -> Result<Authority, Status> {
        Authority::parse(&req.path, &self.settings.cluster_domain)
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }

    fn client_locality(&self, token: &ContextToken) -> ClientLocality {
        let zone = token
            .node_name
            .as_deref()
            .and_then(|n| self.resolver.clusters().local().index.lock().node_zone(n));
        ClientLocality {
            node_name: token.node_name.clone(),
            zone,
        }
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
        let path = req.uri().path().to_string();
        let result = match path.as_str() {
            GET_PATH => match framing::decode_request(req.into_body()).await {
                Ok(msg) => self.get(msg).await,
                Err(status) => Err(status),
            },
            GET_PROFILE_PATH => match framing::decode_request(req.into_body()).await {
                Ok(msg) => self.get_profile(msg),
                Err(status) => Err(status),
            },
            _ => Err(Status::unimplemented(format!(
                "{path} is not a method of {DESTINATION_SERVICE_NAME}"
            ))),
        };
        match result {
            Ok(body) => body.into_response(),
            Err(status) => status.into_http(),
        }
    }

    async fn get(&self, req: pb::GetDestination) -> Result<MessageBody, Status> {
        let authority = match self.parse(&req)? {
            Authority::Service(s) => s,
            Authority::Ip(addr) => {
                return Err(Status::invalid_argument(format!(
                    "Get does not resolve IP addresses ({addr}); use GetProfile, or ask for a service name"
                )));
            }
        };
        let client = self.client_locality(&ContextToken::parse(&req.context_token));
        let mut stream = self.resolver.resolve(&authority);
        // Resolve the first set before answering so that an unresolvable service fails the call.
        let first = match stream.next().await {
            Some(Ok(set)) => set,
            Some(Err(e)) => return Err(resolve_status(e)),
            None => return Err(Status::unavailable("the server is shutting down")),
        };
        let (tx, body) = framing::channel(STREAM_BUFFER);
        let task = EndpointTask {
            stream,
            client,
            tx,
            settings: Arc::clone(&self.settings),
            metrics: Arc::clone(&self.metrics),
            local_cluster: Arc::clone(&self.resolver.clusters().local().name),
            shared: Arc::clone(&self.shared),
        };
        // Debug level: a span entered on every poll of every stream costs at scale.
        let span = debug_span!("get", authority = %req.path);
        tokio::spawn(task.run(first, self.shutdown.clone()).instrument(span));
        Ok(body)
    }

    fn get_profile(&self, req: pb::GetDestination) -> Result<MessageBody, Status> {
        let authority = self.parse(&req)?;
        let (tx, body) = framing::channel(STREAM_BUFFER);
        let task = ProfileTask {
            tx,
            settings: Arc::clone(&self.settings),
            metrics: Arc::clone(&self.metrics),
        };
        let index = &self.resolver.clusters().local().index;
        let span = debug_span!("get_profile", authority = %req.path);
        match authority {
            Authority::Service(s) => {
                let svc_rx = index
                    .lock()
                    .service_rx(&ServiceRef::new(&s.namespace, &s.service));
                tokio::spawn(
                    task.run_service(s, svc_rx, self.shutdown.clone())
                        .instrument(span),
                );
            }
            Authority::Ip(addr) => {
                let addr_rx = index.lock().addr_rx(addr);
                tokio::spawn(
                    task.run_addr(addr, addr_rx, self.shutdown.clone())
                        .instrument(span),
                );
            }
        }
        Ok(body)
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
    tx: MessageSender,
    settings: Arc<StreamSettings>,
    metrics: Arc<Metrics>,
    local_cluster: Arc<str>,
    shared: Arc<SharedDeltas>,
}

impl EndpointTask {
    async fn run(mut self, first: Arc<EndpointSet>, mut shutdown: watch::Receiver<bool>) {
        let _open = OpenStream::new(&self.metrics, "Get");
        let counter = |kind| {
            self.metrics
                .updates_sent
                .get_or_create(&UpdateLabels { rpc: "Get", kind })
                .clone()
        };
        let (adds, removes, no_endpoints) =
            (counter("add"), counter("remove"), counter("no_endpoints"));
        // What the client holds: `None` before the first message.
        let mut sent: Option<(bool, Arc<EndpointAddrs>)> = None;
        // The snapshot version the client holds, when it holds one lookup's set unfiltered.
        let mut sent_version: Option<SnapshotVersion> = None;
        let mut next = Some(Ok(first));
        // Made once, not per update: registering and dropping waiters on every change
        // showed in profiles at 25,000 streams.
        let client_gone = self.tx.closed();
        tokio::pin!(client_gone);
        let shutting_down = shutdown.wait_for(|s| *s);
        tokio::pin!(shutting_down);
        loop {
            let set = match next.take() {
                Some(Ok(set)) => set,
                Some(Err(e)) => {
                    self.tx.end(resolve_status(e));
                    return;
                }
                None => return,
            };
            let view = self.client.filter(&set);
            let unfiltered = Arc::ptr_eq(&view, &set.endpoints);
            // The usual case: the client holds the previous version of the same lookup, so
            // the delta the index computed once, encoded once, serves every such stream.
            let shared_delta = set
                .delta
                .as_ref()
                .filter(|_| unfiltered && sent_version.map(SnapshotVersion::next) == set.version);
            let frames: EncodedDelta = match (&sent, shared_delta) {
                (Some((true, _)), Some(delta)) if set.exists => {
                    self.shared
                        .get_or_encode(delta, &set.labels, self.client.zone.as_ref(), || {
                            self.encode_diff(delta, &set)
                        })
                }
                (Some((exists, before)), _) if *exists == set.exists => {
                    let diff = diff_endpoints(before, &view);
                    Arc::new(EncodedUpdates::join(self.encode_diff(&diff, &set)))
                }
                (Some((true, _)), _) if !set.exists => Arc::new(EncodedUpdates::join(vec![(
                    UpdateKind::NoEndpoints,
                    framing::encode(&convert::no_endpoints(false)),
                )])),
                _ => {
                    let update = convert::full_update(
                        set.exists,
                        &view,
                        &set.labels,
                        &self.client,
                        &self.local_cluster,
                    );
                    let kind = match update.update {
                        Some(update::Update::Add(_)) => UpdateKind::Add,
                        _ => UpdateKind::NoEndpoints,
                    };
                    Arc::new(EncodedUpdates::join(vec![(kind, framing::encode(&update))]))
                }
            };
            if !frames.bytes.is_empty() {
                match send(
                    &self.tx,
                    frames.bytes.clone(),
                    self.settings.send_timeout,
                    &self.metrics,
                )
                .await
                {
                    Ok(()) => {
                        for kind in &frames.kinds {
                            match kind {
                                UpdateKind::Add => adds.inc(),
                                UpdateKind::Remove => removes.inc(),
                                UpdateKind::NoEndpoints => no_endpoints.inc(),
                            };
                        }
                    }
                    Err(SendError::Closed) => return,
                    Err(SendError::TimedOut) => {
                        debug!("client stopped reading; ending the stream");
                        self.tx
                            .end(Status::deadline_exceeded("client did not read updates"));
                        return;
                    }
                };
            }
            // Release the encoded messages before waiting: an idle stream would otherwise
            // hold its largest message (the first snapshot) for as long as it stays open.
            drop(frames);
            sent_version = set.version.filter(|_| unfiltered && set.exists);
            sent = Some((set.exists, if set.exists { view } else { Arc::default() }));
            drop(set);
            next = tokio::select! {
                n = self.stream.next() => n,
                _ = &mut client_gone => return,
                _ = &mut shutting_down => return,
            };
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
}

impl ProfileTask {
    async fn run_service(
        self,
        authority: ServiceAuthority,
        mut rx: watch::Receiver<Option<Arc<crate::model::ServiceInfo>>>,
        shutdown: watch::Receiver<bool>,
    ) {
        let port = authority.port;
        let domain = self.settings.cluster_domain.clone();
        let defaults = Arc::clone(&self.settings.default_opaque_ports);
        let build = move |rx: &mut watch::Receiver<Option<Arc<crate::model::ServiceInfo>>>| {
            let info = rx.borrow_and_update().clone();
            match info {
                Some(info) => profile::for_service(&info, port, &domain, &defaults),
                None => profile::default_profile(false),
            }
        };
        self.run(&mut rx, build, shutdown).await;
    }

    async fn run_addr(
        self,
        addr: SocketAddr,
        mut rx: watch::Receiver<AddrTarget>,
        shutdown: watch::Receiver<bool>,
    ) {
        let domain = self.settings.cluster_domain.clone();
        let defaults = Arc::clone(&self.settings.default_opaque_ports);
        let build = move |rx: &mut watch::Receiver<AddrTarget>| match &*rx.borrow_and_update() {
            AddrTarget::Service(info) => {
                profile::for_service(info, addr.port(), &domain, &defaults)
            }
            AddrTarget::Pod(endpoint) => profile::for_endpoint(endpoint),
            AddrTarget::Unknown => profile::default_profile(defaults.contains(addr.port(), None)),
        };
        self.run(&mut rx, build, shutdown).await;
    }

    async fn run<T>(
        self,
        rx: &mut watch::Receiver<T>,
        mut build: impl FnMut(&mut watch::Receiver<T>) -> pb::DestinationProfile,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let _open = OpenStream::new(&self.metrics, "GetProfile");
        let mut last: Option<pb::DestinationProfile> = None;
        loop {
            let profile = build(rx);
            if last.as_ref() != Some(&profile) {
                if send(
                    &self.tx,
                    framing::encode(&profile),
                    self.settings.send_timeout,
                    &self.metrics,
                )
                .await
                .is_err()
                {
                    return;
                }
                self.metrics
                    .updates_sent
                    .get_or_create(&UpdateLabels {
                        rpc: "GetProfile",
                        kind: "profile",
                    })
                    .inc();
                last = Some(profile);
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = self.tx.closed() => return,
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }
}
