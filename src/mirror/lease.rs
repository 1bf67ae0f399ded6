//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several `meshlink
//! mirror` replicas only one writes.
//!
//! As client-go's leader election: a candidate takes the Lease when it is free or when
//! its record has not changed for `leaseDurationSeconds` as measured on the candidate's
//! own clock (no clock comparison between machines); every write carries the
//! resourceVersion read, so two candidates cannot both win. The holder renews every
//! `renew_every` and gives up by itself when it has not renewed within the renew
//! deadline (two thirds of the lease duration, counted from the start of its last
//! successful renewal), which is before any other candidate can see the lease expire.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{PostParams, Resource},
};
use tokio::{sync::watch, time::Instant};
use tracing::Instrument;

/// Where the Lease is and how it is held.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Namespace of the Lease (the mirror's own).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (e.g. its pod name); unique among the replicas.
    pub holder: String,
    /// How long a Lease not renewed stays held (`leaseDurationSeconds`, whole seconds,
    /// rounded up).
    pub lease_duration: Duration,
    /// How often the holder renews, and a candidate retries.
    pub renew_every: Duration,
}

/// Acquires and renews the Lease; the receiver is true while this replica holds it. A replica that cannot renew
/// within lease_duration turns false BEFORE the lease can expire for others. Ends (and releases the Lease) on shutdown
/// (`true`, or the sender dropped). Must be called within a Tokio runtime.
pub fn spawn_leader_election(
    client: Client,
    settings: LeaseSettings,
    shutdown: watch::Receiver<bool>,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let span = tracing::info_span!(
        "leader_election",
        lease = %format!("{}/{}", settings.namespace, settings.name),
        holder = %settings.holder,
    );
    let elector = Elector::new(client, settings, tx);
    tokio::spawn(elector.run(shutdown).instrument(span));
    rx
}

/// The last successful acquire or renewal.
#[derive(Debug)]
struct Held {
    /// When the request that renewed was sent (the lease cannot expire for others
    /// before this plus the lease duration).
    renewed: Instant,
}

struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    duration_seconds: i32,
    renew_deadline: Duration,
    leader: watch::Sender<bool>,
    held: Option<Held>,
    /// The Lease's resourceVersion as last seen, and when it was first seen here.
    observed: Option<(String, Instant)>,
}

impl Elector {
    fn new(client: Client, mut settings: LeaseSettings, leader: watch::Sender<bool>) -> Self {
        let secs = settings.lease_duration.as_secs_f64().ceil().max(1.0);
        let duration_seconds = secs.min(f64::from(i32::MAX)) as i32;
        let renew_deadline = settings.lease_duration * 2 / 3;
        if settings.renew_every.is_zero() || settings.renew_every >= renew_deadline / 2 {
            // At least two tries before the deadline, or one slow request loses the lease.
            let every = renew_deadline / 3;
            tracing::warn!(
                renew_every = ?settings.renew_every,
                lease_duration = ?settings.lease_duration,
                using = ?every,
                "renew interval too long for the lease duration"
            );
            settings.renew_every = every;
        }
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            duration_seconds,
            renew_deadline,
            leader,
            held: None,
            observed: None,
        }
    }

    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            self.check_deadline();
            if *shutdown.borrow_and_update() {
                break;
            }
            let started = Instant::now();
            // A request that hangs must not keep a holder past its deadline.
            let bound = match &self.held {
                Some(h) => (h.renewed + self.renew_deadline).saturating_duration_since(started),
                None => self.settings.lease_duration,
            };
            let attempt = tokio::select! {
                r = tokio::time::timeout(bound, self.try_acquire_or_renew()) => r,
                changed = shutdown.changed() => match changed {
                    Ok(()) => continue,
                    Err(_) => break,
                },
            };
            match attempt {
                Ok(Ok(true)) => {
                    self.held = Some(Held { renewed: started });
                    self.set_leader(true);
                }
                Ok(Ok(false)) => {
                    self.held = None;
                    self.set_leader(false);
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot read or write the Lease"),
                Err(_) => tracing::warn!(after = ?bound, "Lease request timed out"),
            }
            self.check_deadline();
            let mut wake = Instant::now() + self.settings.renew_every;
            if let Some(h) = &self.held {
                wake = wake.min(h.renewed + self.renew_deadline);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                changed = shutdown.changed() => if changed.is_err() { break },
            }
        }
        self.release().await;
    }

    /// Gives up leadership when the last renewal is older than the renew deadline.
    fn check_deadline(&mut self) {
        if let Some(h) = &self.held
            && h.renewed.elapsed() >= self.renew_deadline
        {
            tracing::warn!(
                deadline = ?self.renew_deadline,
                "could not renew the Lease in time; no longer leader"
            );
            self.held = None;
            self.set_leader(false);
        }
    }

    fn set_leader(&self, leader: bool) {
        let changed = self.leader.send_if_modified(|cur| {
            let changed = *cur != leader;
            *cur = leader;
            changed
        });
        if changed {
            if leader {
                tracing::info!("acquired the Lease; leader");
            } else {
                tracing::info!("not leader");
            }
        }
    }

    /// First time this resourceVersion is seen here, or the earlier time it was.
    fn observe(&mut self, resource_version: &str) -> Instant {
        match &self.observed {
            Some((rv, at)) if rv == resource_version => *at,
            _ => {
                let now = Instant::now();
                self.observed = Some((resource_version.to_string(), now));
                now
            }
        }
    }

    /// One round: create, renew or take over the Lease. Ok(true) when this replica holds it.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let name = self.settings.name.clone();
        let now = MicroTime(Timestamp::now());
        let Some(mut lease) = self.api.get_opt(&name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name),
                    namespace: Some(self.settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.settings.holder.clone()),
                    lease_duration_seconds: Some(self.duration_seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(false),
                Err(e) => Err(e),
            };
        };
        let rv = lease.meta().resource_version.clone().unwrap_or_default();
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        if holder == Some(self.settings.holder.as_str()) {
            spec.renew_time = Some(now);
            spec.lease_duration_seconds = Some(self.duration_seconds);
        } else {
            if holder.is_some() {
                let held_for = spec
                    .lease_duration_seconds
                    .map_or(self.settings.lease_duration, |s| {
                        Duration::from_secs(u64::try_from(s).unwrap_or(0))
                    });
                let since = self.observe(&rv);
                if since.elapsed() < held_for {
                    return Ok(false);
                }
                tracing::info!(previous = ?holder, "the Lease expired; taking it over");
            }
            spec.holder_identity = Some(self.settings.holder.clone());
            spec.lease_duration_seconds = Some(self.duration_seconds);
            spec.acquire_time = Some(now.clone());
            spec.renew_time = Some(now);
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        // The resourceVersion read makes this a compare-and-swap: a conflict means another
        // replica wrote first.
        match self
            .api
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Stops leading, then frees the Lease if this replica still holds it, so another
    /// takes over without waiting for it to expire.
    async fn release(&mut self) {
        let was_leader = *self.leader.borrow();
        self.held = None;
        self.set_leader(false);
        if !was_leader {
            return;
        }
        let release = async {
            let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
                return Ok(());
            };
            let Some(spec) = lease.spec.as_mut() else {
                return Ok(());
            };
            if spec.holder_identity.as_deref() != Some(self.settings.holder.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            self.api
                .replace(&self.settings.name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        };
        match tokio::time::timeout(self.settings.lease_duration, release).await {
            Ok(Ok(())) => tracing::info!("released the Lease"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot release the Lease; it expires by itself")
            }
            Err(_) => tracing::warn!("releasing the Lease timed out; it expires by itself"),
        }
    }
}
