//! Leader election through a `coordination.k8s.io/v1` Lease (kube-runtime 5 ships none).
//!
//! Hand-written rather than `kube-lease-manager` (0.13.1 does support kube 5 / k8s-openapi
//! 0.29): that crate decides expiry as `renewTime + leaseDurationSeconds` against the local
//! wall clock, so a skewed clock on either side makes a standby take over early or never, its
//! API calls have no bound of their own, and its holder believes in its lock until the same
//! instant a standby may take it. The semantics here are client-go's:
//!
//! - **Expiry is judged by observation, never by comparing clocks.** A candidate remembers when
//!   (on its own monotonic clock) it last saw the Lease change (resourceVersion, holder or
//!   renewTime); another holder's Lease is expired once it has not changed for the
//!   `leaseDurationSeconds` it declares. `renewTime` is written for humans only.
//! - **Every API call is bounded**: one attempt (read, then write) gets at most
//!   [`LeaseConfig::attempt_timeout`], and a leader's attempt never outlives its renew deadline.
//! - **The leader steps down first.** Leadership is valid until `renew_deadline` after the
//!   start of the last successful write (measured before the request left, so before the
//!   server stored it, so before any standby saw it); a standby takes over no earlier than
//!   `lease_duration` after it saw that write. `renew_deadline < lease_duration` leaves the
//!   difference as margin for the leader to stop. [`Leadership`] is that validity, shared with
//!   a client layer ([`FenceLayer`]) that refuses every write once it lapsed, whatever task
//!   tries it (a process resumed after SIGSTOP runs its due reconciles at once), and the
//!   runtime exits so that the pod restarts as a candidate.
//! - Writes are `replace`s carrying the resourceVersion that was read, so two candidates racing
//!   for an expired Lease cannot both win (the loser gets 409 Conflict).
//!
//! Not covered: a leader whose monotonic clock stops while time goes on elsewhere (a suspended
//! VM: Linux's CLOCK_MONOTONIC does not count suspend) could still believe in its deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client, ResourceExt};

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Unique per replica (the pod name).
    pub identity: String,
    /// How long a standby waits, after it last saw the Lease change, before taking it over.
    /// Whole seconds (it is published as `leaseDurationSeconds`).
    pub lease_duration: Duration,
    /// How long the leader keeps acting after the start of its last successful renewal.
    pub renew_deadline: Duration,
    /// How often the leader renews and candidates retry.
    pub retry_period: Duration,
}

/// Defaults (client-go's): 15 s lease, 10 s renew deadline, 2 s retry period.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

impl LeaseConfig {
    pub fn new(namespace: String, name: String, identity: String) -> Self {
        Self {
            namespace,
            name,
            identity,
            lease_duration: LEASE_DURATION,
            renew_deadline: RENEW_DEADLINE,
            retry_period: RETRY_PERIOD,
        }
    }

    /// The timings with their defaults replaced.
    pub fn with_timings(self, lease: Duration, renew_deadline: Duration, retry: Duration) -> Self {
        Self {
            lease_duration: lease,
            renew_deadline,
            retry_period: retry,
            ..self
        }
    }

    /// `0 < retry_period < renew_deadline < lease_duration`, lease duration in whole seconds.
    pub fn validate(&self) -> Result<(), String> {
        let (lease, deadline, retry) =
            (self.lease_duration, self.renew_deadline, self.retry_period);
        if lease.subsec_nanos() != 0 || lease.as_secs() == 0 || lease.as_secs() > i32::MAX as u64 {
            return Err(format!(
                "the lease duration must be a whole number of seconds (at least 1), not {lease:?}"
            ));
        }
        if retry.is_zero() || retry >= deadline || deadline >= lease {
            return Err(format!(
                "need 0 < retry period ({retry:?}) < renew deadline ({deadline:?}) < lease duration ({lease:?})"
            ));
        }
        Ok(())
    }

    /// The bound of one attempt (read + write): half the renew deadline, so that a hung call
    /// leaves room for another attempt on a fresh request before the leader must step down.
    pub fn attempt_timeout(&self) -> Duration {
        self.renew_deadline / 2
    }
}

/// What a candidate should do with the Lease it read.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// No Lease yet: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Someone else held it and it did not change for its lease duration (or it was released):
    /// take it over.
    TakeOver,
    /// Someone else holds a Lease that changed less than its lease duration ago.
    Wait {
        holder: String,
        expires_in: Duration,
    },
}

/// The parts of a Lease whose change shows that its holder is alive.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    resource_version: Option<String>,
    holder: Option<String>,
    renew_time: Option<Timestamp>,
}

impl Record {
    fn of(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        Self {
            resource_version: lease.resource_version(),
            holder: spec.and_then(|s| s.holder_identity.clone()),
            renew_time: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
        }
    }
}

/// What this process has seen of the Lease, timed by its own monotonic clock. Pure: the caller
/// passes the time of each read.
#[derive(Debug, Default)]
pub struct Observer {
    last: Option<(Record, Instant)>,
}

impl Observer {
    /// Records a read of the Lease made at `now` and decides what to do.
    /// `default_duration` applies when the Lease declares none.
    pub fn observe(
        &mut self,
        lease: Option<&Lease>,
        identity: &str,
        default_duration: Duration,
        now: Instant,
    ) -> Decision {
        let Some(lease) = lease else {
            self.last = None;
            return Decision::Create;
        };
        let record = Record::of(lease);
        let changed_at = match &self.last {
            Some((seen, at)) if *seen == record => *at,
            _ => now,
        };
        self.last = Some((record, changed_at));
        let spec = lease.spec.as_ref();
        match spec.and_then(|s| s.holder_identity.as_deref()) {
            Some(h) if h == identity => Decision::Renew,
            None | Some("") => Decision::TakeOver,
            Some(holder) => {
                let duration = spec
                    .and_then(|s| s.lease_duration_seconds)
                    .filter(|s| *s > 0)
                    .map_or(default_duration, |s| Duration::from_secs(s as u64));
                let unchanged = now.saturating_duration_since(changed_at);
                if unchanged >= duration {
                    Decision::TakeOver
                } else {
                    Decision::Wait {
                        holder: holder.to_string(),
                        expires_in: duration - unchanged,
                    }
                }
            }
        }
    }
}

/// Until when this process may act as the leader (monotonic). Shared by the elector (which
/// extends it), the runtime (which steps down when it lapses) and [`FenceLayer`] (which refuses
/// writes once it lapsed).
#[derive(Debug)]
pub struct Leadership {
    renew_deadline: Duration,
    valid_until: Mutex<Option<Instant>>,
}

impl Leadership {
    pub fn new(renew_deadline: Duration) -> Self {
        Self {
            renew_deadline,
            valid_until: Mutex::new(None),
        }
    }

    /// A write to the Lease that started at `sent` succeeded: lead until `sent + renew_deadline`.
    pub fn renewed(&self, sent: Instant) {
        let until = sent + self.renew_deadline;
        let mut v = self.valid_until.lock().unwrap();
        *v = Some(v.map_or(until, |old| old.max(until)));
    }

    /// Stop leading now (released, or another holder seen).
    pub fn revoke(&self) {
        *self.valid_until.lock().unwrap() = None;
    }

    pub fn valid_until(&self) -> Option<Instant> {
        *self.valid_until.lock().unwrap()
    }

    pub fn is_leading_at(&self, now: Instant) -> bool {
        self.valid_until().is_some_and(|until| now < until)
    }

    pub fn is_leading(&self) -> bool {
        self.is_leading_at(Instant::now())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("no answer from the API server within {0:?}")]
    TimedOut(Duration),
}

pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    observer: Mutex<Observer>,
    leadership: Arc<Leadership>,
}

impl LeaderElector {
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            leadership: Arc::new(Leadership::new(config.renew_deadline)),
            observer: Mutex::default(),
            config,
        }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    pub fn leadership(&self) -> Arc<Leadership> {
        self.leadership.clone()
    }

    /// The bound of an attempt that starts at `now`: the attempt timeout, and for a leader no
    /// later than its renew deadline.
    fn budget(&self, now: Instant) -> Duration {
        let timeout = self.config.attempt_timeout();
        match self.leadership.valid_until() {
            Some(until) => timeout.min(until.saturating_duration_since(now)),
            None => timeout,
        }
    }

    /// One attempt to acquire or renew, bounded in time. `Ok(true)` when we hold the Lease
    /// afterwards (and [`Leadership`] was extended); `Ok(false)` when another replica holds it
    /// or won a race for it.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, Error> {
        let started = Instant::now();
        let budget = self.budget(started);
        let held = tokio::time::timeout(budget, self.attempt())
            .await
            .map_err(|_| Error::TimedOut(budget))??;
        if held {
            self.leadership.renewed(started);
        } else {
            self.leadership.revoke();
        }
        Ok(held)
    }

    async fn attempt(&self) -> Result<bool, kube::Error> {
        let existing = self.api.get_opt(&self.config.name).await?;
        // A change is dated when its answer arrived, never earlier (the request may have left
        // before the holder's write was stored).
        let decision = self.observer.lock().unwrap().observe(
            existing.as_ref(),
            &self.config.identity,
            self.config.lease_duration,
            Instant::now(),
        );
        let now = Timestamp::now();
        let held_spec = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.config.lease_duration.as_secs() as i32),
            acquire_time: acquired.or(Some(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        };
        let result = match (decision, existing) {
            (Decision::Wait { holder, expires_in }, _) => {
                tracing::debug!(%holder, ?expires_in, "leader lease held by another replica");
                return Ok(false);
            }
            (Decision::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(held_spec(0, None)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            (decision, Some(mut lease)) => {
                let old = lease.spec.clone().unwrap_or_default();
                let transitions = old.lease_transitions.unwrap_or(0);
                lease.spec = Some(if decision == Decision::Renew {
                    held_spec(transitions, old.acquire_time)
                } else {
                    held_spec(transitions + 1, None)
                });
                // Carries metadata.resourceVersion: a concurrent writer makes this fail with 409.
                self.api
                    .replace(&self.config.name, &PostParams::default(), &lease)
                    .await
            }
            (_, None) => unreachable!("observe returns Create when there is no Lease"),
        };
        match result {
            Ok(written) => {
                self.observer.lock().unwrap().observe(
                    Some(&written),
                    &self.config.identity,
                    self.config.lease_duration,
                    Instant::now(),
                );
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.is_conflict() || s.is_already_exists() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up (if we hold it) so another replica can lead at once. Bounded by the
    /// attempt timeout; leadership ends before the write is sent.
    pub async fn release(&self) -> Result<(), Error> {
        self.leadership.revoke();
        let timeout = self.config.attempt_timeout();
        tokio::time::timeout(timeout, self.release_unbounded())
            .await
            .map_err(|_| Error::TimedOut(timeout))?
            .map_err(Error::Api)
    }

    async fn release_unbounded(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        spec.acquire_time = None;
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A client layer that refuses every write (any method but GET, HEAD and OPTIONS) while
/// [`Leadership`] is not valid, checked when the request is about to be sent. The controller's
/// client goes through it; the elector's does not.
#[derive(Clone)]
pub struct FenceLayer {
    leadership: Arc<Leadership>,
}

impl FenceLayer {
    pub fn new(leadership: Arc<Leadership>) -> Self {
        Self { leadership }
    }
}

impl<S> tower_layer::Layer<S> for FenceLayer {
    type Service = Fence<S>;

    fn layer(&self, inner: S) -> Fence<S> {
        Fence {
            inner,
            leadership: self.leadership.clone(),
        }
    }
}

/// The service made by [`FenceLayer`].
#[derive(Clone)]
pub struct Fence<S> {
    inner: S,
    leadership: Arc<Leadership>,
}

/// The error of a write refused by the fence.
#[derive(Debug, thiserror::Error)]
#[error("not the leader (the Lease could not be renewed in time): {method} refused")]
pub struct NotLeader {
    pub method: http::Method,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B> tower_service::Service<http::Request<B>> for Fence<S>
where
    S: tower_service::Service<http::Request<B>>,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.method().clone();
        let read = matches!(
            method,
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
        );
        if !read && !self.leadership.is_leading() {
            return Box::pin(std::future::ready(Err(NotLeader { method }.into())));
        }
        let fut = self.inner.call(req);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    fn lease(holder: Option<&str>, rv: &str, renewed: Option<i64>) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("l".into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                renew_time: renewed.map(|s| MicroTime(Timestamp::from_second(s).unwrap())),
                lease_duration_seconds: Some(LEASE.as_secs() as i32),
                ..Default::default()
            }),
        }
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// Candidate "a" reads `lease` `after` seconds past `t0`.
    fn seen(o: &mut Observer, lease: &Lease, t0: Instant, after: f64) -> Decision {
        o.observe(Some(lease), "a", LEASE, t0 + secs(after))
    }

    fn wait(holder: &str, expires_in: f64) -> Decision {
        Decision::Wait {
            holder: holder.into(),
            expires_in: secs(expires_in),
        }
    }

    #[test]
    fn acquire_a_missing_or_released_lease_at_once() {
        let t0 = Instant::now();
        let mut o = Observer::default();
        assert_eq!(o.observe(None, "a", LEASE, t0), Decision::Create);
        let released = lease(None, "5", None);
        assert_eq!(seen(&mut o, &released, t0, 0.0), Decision::TakeOver);
        let mut empty = lease(Some(""), "6", None);
        assert_eq!(seen(&mut o, &empty, t0, 0.0), Decision::TakeOver);
        empty.spec = None;
        assert_eq!(seen(&mut o, &empty, t0, 0.0), Decision::TakeOver);
    }

    #[test]
    fn our_own_lease_is_renewed_whatever_its_age() {
        let t0 = Instant::now();
        let mut o = Observer::default();
        let ours = lease(Some("a"), "1", Some(1));
        assert_eq!(seen(&mut o, &ours, t0, 0.0), Decision::Renew);
        assert_eq!(seen(&mut o, &ours, t0, 3600.0), Decision::Renew);
    }

    #[test]
    fn take_over_only_after_a_full_lease_duration_without_change() {
        let t0 = Instant::now();
        let mut o = Observer::default();
        let held = lease(Some("b"), "1", Some(1_000));
        // A fresh candidate trusts no timestamp: the whole duration counts from its first read.
        assert_eq!(seen(&mut o, &held, t0, 0.0), wait("b", 15.0));
        assert_eq!(seen(&mut o, &held, t0, 14.5), wait("b", 0.5));
        assert_eq!(seen(&mut o, &held, t0, 15.0), Decision::TakeOver);
    }

    #[test]
    fn a_renewal_restarts_the_wait() {
        let t0 = Instant::now();
        let mut o = Observer::default();
        o.observe(Some(&lease(Some("b"), "1", Some(1_000))), "a", LEASE, t0);
        // Renewed (new resourceVersion) at t0+10: the holder is alive.
        let renewed = lease(Some("b"), "2", Some(1_010));
        assert_eq!(seen(&mut o, &renewed, t0, 10.0), wait("b", 15.0));
        assert_eq!(seen(&mut o, &renewed, t0, 20.0), wait("b", 5.0));
        assert_eq!(seen(&mut o, &renewed, t0, 25.0), Decision::TakeOver);
        // A new holder is a change too.
        let other = lease(Some("c"), "3", Some(1_010));
        assert_eq!(seen(&mut o, &other, t0, 26.0), wait("c", 15.0));
    }

    #[test]
    fn clock_skew_neither_hastens_nor_prevents_a_takeover() {
        let t0 = Instant::now();
        let now_wall = Timestamp::now().as_second();
        // The holder's clock is an hour behind ours: its renewTime looks long expired, but it
        // keeps changing, so it is alive.
        let mut o = Observer::default();
        for i in 0..10 {
            let l = lease(Some("b"), &i.to_string(), Some(now_wall - 3600 + i * 5));
            assert!(matches!(
                o.observe(Some(&l), "a", LEASE, t0 + secs(5.0 * i as f64)),
                Decision::Wait { .. }
            ));
        }
        // The holder's clock is an hour ahead and it stopped: its renewTime looks fresh for an
        // hour, but it has not changed for a lease duration.
        let mut o = Observer::default();
        let l = lease(Some("b"), "1", Some(now_wall + 3600));
        assert_eq!(seen(&mut o, &l, t0, 0.0), wait("b", 15.0));
        assert_eq!(seen(&mut o, &l, t0, 15.0), Decision::TakeOver);
    }

    #[test]
    fn the_holders_declared_duration_counts() {
        let t0 = Instant::now();
        let mut o = Observer::default();
        let mut l = lease(Some("b"), "1", None);
        l.spec.as_mut().unwrap().lease_duration_seconds = Some(4);
        assert_eq!(seen(&mut o, &l, t0, 0.0), wait("b", 4.0));
        assert_eq!(seen(&mut o, &l, t0, 4.0), Decision::TakeOver);
        l.spec.as_mut().unwrap().lease_duration_seconds = None;
        l.metadata.resource_version = Some("2".into());
        assert_eq!(seen(&mut o, &l, t0, 0.0), wait("b", 15.0));
    }

    #[test]
    fn leadership_lapses_at_the_renew_deadline_and_only_grows() {
        let t0 = Instant::now();
        let l = Leadership::new(secs(10.0));
        assert!(!l.is_leading_at(t0));
        l.renewed(t0);
        assert!(l.is_leading_at(t0 + secs(9.9)));
        assert!(!l.is_leading_at(t0 + secs(10.0)));
        // A late answer to an older attempt does not shorten the term.
        l.renewed(t0 + secs(2.0));
        l.renewed(t0 + secs(1.0));
        assert_eq!(l.valid_until(), Some(t0 + secs(12.0)));
        l.revoke();
        assert!(!l.is_leading_at(t0));
    }

    /// The whole story on one timeline: the leader renews, then hangs (SIGSTOP, a partition, a
    /// call that never answers); it steps down before the standby may take over.
    #[test]
    fn the_leader_steps_down_before_a_standby_takes_over() {
        let cfg = LeaseConfig::new("ns".into(), "l".into(), "a".into());
        let t0 = Instant::now();
        // Leader "a" sends its last successful renewal at t0; the server stores it a little
        // later; standby "b" reads it later still.
        let leader = Leadership::new(cfg.renew_deadline);
        leader.renewed(t0);
        let stored = lease(Some("a"), "7", Some(0));
        let mut standby = Observer::default();
        let seen = t0 + secs(0.3);
        assert!(matches!(
            standby.observe(Some(&stored), "b", cfg.lease_duration, seen),
            Decision::Wait { .. }
        ));
        // Nothing changes any more. Find the first instants (10 ms steps) at which the leader
        // stops and at which the standby takes over.
        let step = secs(0.01);
        let mut t = t0;
        while leader.is_leading_at(t) {
            t += step;
        }
        let stepped_down = t;
        while standby.observe(Some(&stored), "b", cfg.lease_duration, t) != Decision::TakeOver {
            t += step;
        }
        let took_over = t;
        assert!(stepped_down - t0 <= cfg.renew_deadline + step);
        assert!(took_over - seen >= cfg.lease_duration);
        assert!(
            took_over - stepped_down >= cfg.lease_duration - cfg.renew_deadline,
            "margin {:?}",
            took_over - stepped_down
        );
    }

    /// Counts the requests that reach it.
    #[derive(Clone, Default)]
    struct Counting(Arc<std::sync::atomic::AtomicUsize>);

    impl tower_service::Service<http::Request<()>> for Counting {
        type Response = ();
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<(), std::convert::Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::future::ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn the_fence_refuses_writes_once_leadership_lapsed() {
        use tower_layer::Layer;
        use tower_service::Service;
        let inner = Counting::default();
        let leadership = Arc::new(Leadership::new(secs(0.2)));
        let mut fenced = FenceLayer::new(leadership.clone()).layer(inner.clone());
        let req = |m: http::Method| http::Request::builder().method(m).body(()).unwrap();
        let sent = || inner.0.load(std::sync::atomic::Ordering::Relaxed);

        // Not (yet) leading: reads pass, writes do not.
        fenced.call(req(http::Method::GET)).await.unwrap();
        let e = fenced.call(req(http::Method::PATCH)).await.unwrap_err();
        assert!(e.to_string().contains("not the leader"), "{e}");
        assert_eq!(sent(), 1);

        leadership.renewed(Instant::now());
        for m in [
            http::Method::POST,
            http::Method::PUT,
            http::Method::PATCH,
            http::Method::DELETE,
        ] {
            fenced.call(req(m)).await.unwrap();
        }
        assert_eq!(sent(), 5);

        tokio::time::sleep(secs(0.25)).await;
        assert!(fenced.call(req(http::Method::POST)).await.is_err());
        fenced.call(req(http::Method::GET)).await.unwrap();
        assert_eq!(sent(), 6);
    }

    #[test]
    fn timings_are_validated() {
        let cfg = LeaseConfig::new("ns".into(), "l".into(), "a".into());
        assert_eq!(cfg.validate(), Ok(()));
        assert_eq!(cfg.attempt_timeout(), secs(5.0));
        let with = |l: f64, d: f64, r: f64| {
            LeaseConfig::new("ns".into(), "l".into(), "a".into())
                .with_timings(secs(l), secs(d), secs(r))
                .validate()
        };
        assert_eq!(with(5.0, 3.0, 1.0), Ok(()));
        assert!(with(5.0, 5.0, 1.0).is_err(), "deadline must be < duration");
        assert!(with(5.0, 3.0, 3.0).is_err(), "retry must be < deadline");
        assert!(with(5.0, 3.0, 0.0).is_err());
        assert!(with(4.5, 3.0, 1.0).is_err(), "whole seconds");
        assert!(with(0.0, 0.0, 0.0).is_err());
    }
}
