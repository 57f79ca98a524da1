//! A lease kept alive: the life of a candidate.
//!
//! Every decision (when to grant, when the lease is lost, what to revoke) is
//! the lease core's (`session/core.rs`, which also states the deadline rule);
//! the session's task only executes what the core asks for and feeds it the
//! answers.

pub(crate) mod core;
pub(crate) mod keepalive;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

pub(crate) use crate::client::close_budget;
use crate::client::transport::Attempt;
use crate::client::{Client, Closable, Registration};
use crate::error::{Error, Result};
use crate::proto::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest};
use crate::session::core::{LeaseAction, LeaseCore};
use crate::session::keepalive::LeaseNews;
use crate::telemetry;

/// The lease id reported when the session holds no lease.
///
/// ```no_run
/// # fn f(session: &etcdutil::Session) {
/// let holding = session.lease_id() != etcdutil::NO_LEASE;
/// # }
/// ```
pub const NO_LEASE: i64 = -1;

/// The TTL used when [`SessionConfig::ttl`] is 0, in seconds.
///
/// ```
/// assert_eq!(etcdutil::DEFAULT_SESSION_TTL, 30);
/// ```
pub const DEFAULT_SESSION_TTL: i64 = 30;

/// The largest TTL etcd grants (its `MaxLeaseTTL`), in seconds.
///
/// ```
/// let ttl = 86_400.min(etcdutil::MAX_LEASE_TTL);
/// ```
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// Called with the lease id on every gain, and with [`NO_LEASE`] (and the
/// error that caused it, if any) on every loss. Calls never overlap and come
/// in order.
///
/// ```
/// let observer: etcdutil::SessionObserver = std::sync::Arc::new(|lease, err| {
///     if lease == etcdutil::NO_LEASE { eprintln!("lost: {err:?}") }
/// });
/// ```
pub type SessionObserver = Arc<dyn Fn(i64, Option<Error>) + Send + Sync>;

/// How to run a [`Session`].
///
/// ```
/// use std::sync::Arc;
/// let config = etcdutil::SessionConfig {
///     ttl: 10,
///     observer: Arc::new(|lease, err| println!("lease {lease:x} {err:?}")),
/// };
/// ```
#[derive(Clone)]
pub struct SessionConfig {
    /// Lease TTL in seconds; 0 means [`DEFAULT_SESSION_TTL`].
    pub ttl: i64,
    /// Told of every lease gained and lost.
    pub observer: SessionObserver,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            ttl: 0,
            observer: Arc::new(|_, _| {}),
        }
    }
}

impl std::fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionConfig")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Checks a TTL in seconds (0 meaning `default`) and returns the one to use.
pub(crate) fn checked_ttl(field: &'static str, ttl: i64, default: i64) -> Result<i64> {
    match ttl {
        0 => Ok(default),
        1..=MAX_LEASE_TTL => Ok(ttl),
        _ => Err(Error::InvalidArgument {
            name: field,
            value: ttl.to_string(),
            expected: "a TTL in seconds from 1 to 9000000000 (etcd's maximum), or 0 for the default",
        }),
    }
}

enum Command {
    Reset,
    Close,
}

/// A lease kept alive in the background, regained after every loss.
///
/// Made with [`Session::new`]; ends with [`close`](Session::close), or in the
/// background when dropped.
///
/// ```no_run
/// use std::sync::Arc;
/// use etcdutil::{Session, SessionConfig, NO_LEASE};
/// # async fn run() -> etcdutil::Result<()> {
/// let client = etcdutil::new_client(None).await?;
/// let session = Session::new(&client, SessionConfig {
///     ttl: 5,
///     observer: Arc::new(|lease, err| match lease {
///         NO_LEASE => eprintln!("lost the lease: {err:?}"),
///         id => eprintln!("holding lease {id:x}"),
///     }),
/// })?;
/// // ... attach keys to session.lease_id() ...
/// session.close().await;
/// # Ok(()) }
/// ```
pub struct Session {
    client: Client,
    control: Arc<Control>,
    lease: watch::Receiver<i64>,
    ttl: i64,
}

/// What the handle tells its worker, and the worker tells `close()`. Flags
/// and wake-ups rather than channels: a session is a few hundred bytes, so
/// 10,000 of them fit in a small service.
#[derive(Default)]
struct Control {
    /// The TTL asked for, which bounds a close.
    ttl: i64,
    /// Bumped by every `reset()`.
    resets: AtomicU64,
    closed: AtomicBool,
    /// Handle to worker: look at `resets` and `closed`.
    wake: Notify,
    /// When the worker must have finished closing; set by the first close.
    close_by: std::sync::Mutex<Option<Instant>>,
    /// Set by the worker as it ends.
    done: AtomicBool,
    finished: Notify,
    /// In the client's list of what to close, until the worker ends.
    registration: std::sync::Mutex<Option<Registration>>,
    /// The elections standing on this session's lease.
    elections: std::sync::Mutex<Elections>,
}

/// What a session tells an election that stands on its lease: every gain
/// and every loss, in the session's own call, as its observer is told.
pub(crate) type LeaseListener = Arc<dyn Fn(i64, Option<Error>) + Send + Sync>;

/// The elections standing on a session's lease.
#[derive(Default)]
struct Elections {
    next_id: u64,
    members: Vec<Member>,
}

struct Member {
    id: u64,
    on_lease: LeaseListener,
    /// Closed before the session revokes its lease.
    closer: Arc<dyn Closable>,
}

/// An election's place on a session: told of the lease until dropped.
pub(crate) struct Attachment {
    control: Arc<Control>,
    id: u64,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let mut elections = self.control.elections.lock().expect("elections lock");
        elections.members.retain(|member| member.id != self.id);
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("lease", &format_args!("{:x}", self.lease_id()))
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl Session {
    /// Starts a session; returns at once, without waiting for etcd. A
    /// background task grants the lease and tells the observer.
    ///
    /// Fails only on a bad TTL. Must be called within a tokio runtime.
    ///
    /// ```no_run
    /// # async fn run(client: etcdutil::Client) -> etcdutil::Result<()> {
    /// let session = etcdutil::Session::new(&client, etcdutil::SessionConfig { ttl: 10, ..Default::default() })?;
    /// let mut lease = session.watch_lease();
    /// lease.wait_for(|id| *id != etcdutil::NO_LEASE).await.ok();
    /// # Ok(()) }
    /// ```
    pub fn new(client: &Client, config: SessionConfig) -> Result<Session> {
        let session = Session::start(client, config)?;
        let registration = client.register(session.control.clone())?;
        *session
            .control
            .registration
            .lock()
            .expect("registration lock") = Some(registration);
        Ok(session)
    }

    /// A session that [`Client::close`] does not close by itself: its owner
    /// (an election) closes it.
    pub(crate) fn start(client: &Client, config: SessionConfig) -> Result<Session> {
        let ttl = checked_ttl("SessionConfig.ttl", config.ttl, DEFAULT_SESSION_TTL)?;
        if client.is_closed() {
            return Err(Error::Closed);
        }
        let control = Arc::new(Control {
            ttl,
            ..Control::default()
        });
        let (lease_tx, lease) = watch::channel(NO_LEASE);
        let worker = Worker {
            client: client.clone(),
            ttl,
            core: LeaseCore::new(ttl, Instant::now()),
            observer: config.observer,
            lease: lease_tx,
            control: control.clone(),
            resets_seen: 0,
            granting: None,
            attempt: client.attempt(),
            news: None,
            revokes: None,
            unrevoked: Arc::default(),
        };
        tokio::spawn(worker.run());
        Ok(Session {
            client: client.clone(),
            control,
            lease,
            ttl,
        })
    }

    /// The lease held now, or [`NO_LEASE`].
    ///
    /// ```no_run
    /// # fn f(session: &etcdutil::Session) {
    /// if session.lease_id() != etcdutil::NO_LEASE { /* attach keys to it */ }
    /// # }
    /// ```
    pub fn lease_id(&self) -> i64 {
        *self.lease.borrow()
    }

    /// A receiver of the lease held, updated before the observer is called.
    ///
    /// ```no_run
    /// # async fn f(session: &etcdutil::Session) {
    /// let mut lease = session.watch_lease();
    /// while lease.changed().await.is_ok() {
    ///     println!("lease now {:x}", *lease.borrow());
    /// }
    /// # }
    /// ```
    pub fn watch_lease(&self) -> watch::Receiver<i64> {
        self.lease.clone()
    }

    /// The lease TTL in seconds this session asks for.
    ///
    /// ```no_run
    /// # fn f(session: &etcdutil::Session) { assert!(session.ttl() > 0); }
    /// ```
    pub fn ttl(&self) -> i64 {
        self.ttl
    }

    /// The client this session was made from.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Stands an election on this session's lease: `on_lease` is called at
    /// once with the lease held now (if any), then on every gain and loss;
    /// `closer` is closed before the session revokes its lease. Fails once
    /// the session is closing.
    pub(crate) fn attach(
        &self,
        on_lease: LeaseListener,
        closer: Arc<dyn Closable>,
    ) -> Result<Attachment> {
        let mut elections = self.control.elections.lock().expect("elections lock");
        // Checked under the lock the closing worker takes to close the
        // elections: an election is either closed by it or refused here.
        if self.control.closed.load(Ordering::SeqCst) || self.client.is_closed() {
            return Err(Error::Closed);
        }
        let lease = *self.lease.borrow();
        if lease != NO_LEASE {
            on_lease(lease, None);
        }
        let id = elections.next_id;
        elections.next_id += 1;
        elections.members.push(Member {
            id,
            on_lease,
            closer,
        });
        Ok(Attachment {
            control: self.control.clone(),
            id,
        })
    }

    /// Revokes the current lease (best effort) and starts over with a new one.
    ///
    /// ```no_run
    /// # fn f(session: &etcdutil::Session) { session.reset(); }
    /// ```
    pub fn reset(&self) {
        self.control.resets.fetch_add(1, Ordering::SeqCst);
        self.control.wake.notify_one();
    }

    /// Stops the keepalive, revokes the lease, and calls the observer with
    /// `NO_LEASE` one last time. Returns once the background task has
    /// finished, within TTL + 1 s even if etcd is unreachable. When etcd is
    /// reachable, no lease of this session is left in etcd then: not the
    /// current one, not one given up after a loss, not one whose grant was
    /// still in flight. Calling it again just waits for the first close.
    ///
    /// ```no_run
    /// # async fn f(session: etcdutil::Session) { session.close().await; }
    /// ```
    pub async fn close(&self) {
        self.close_by(Instant::now() + close_budget(self.ttl)).await
    }

    /// Closes as [`close`](Self::close) does, finishing by `deadline`.
    pub(crate) async fn close_by(&self, deadline: Instant) {
        self.control.close_by(deadline).await
    }
}

impl Control {
    async fn close_by(&self, deadline: Instant) {
        self.signal_close(deadline);
        loop {
            let finished = self.finished.notified();
            tokio::pin!(finished);
            // Registered before the check, so the worker's wake-up is not missed.
            finished.as_mut().enable();
            if self.done.load(Ordering::SeqCst) {
                return;
            }
            finished.await;
        }
    }

    fn signal_close(&self, deadline: Instant) {
        self.close_by
            .lock()
            .expect("close lock")
            .get_or_insert(deadline);
        self.closed.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }
}

impl Closable for Control {
    fn close_by(&self, deadline: Instant) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(Control::close_by(self, deadline))
    }

    fn ttl(&self) -> i64 {
        self.ttl
    }
}

impl Drop for Session {
    /// Closes in the background: the task revokes the lease and ends.
    fn drop(&mut self) {
        self.control
            .signal_close(Instant::now() + close_budget(self.ttl));
    }
}

/// A grant in flight: when it was sent, and its answer (lease id and TTL).
type Granting = Pin<Box<dyn Future<Output = (Instant, Result<(i64, i64)>)> + Send>>;

/// The session's task: runs the lease core's actions and feeds it the answers.
struct Worker {
    client: Client,
    ttl: i64,
    core: LeaseCore,
    observer: SessionObserver,
    lease: watch::Sender<i64>,
    control: Arc<Control>,
    resets_seen: u64,
    /// The grant in flight, and how its call (and the keepalives of the
    /// lease it brings) reach etcd: a failure moves calls off that member.
    granting: Option<Granting>,
    attempt: Attempt,
    /// What the shared keepalive stream says of the lease held.
    news: Option<(i64, Arc<LeaseNews>)>,
    /// Revokes of leases given up (lost or reset) that may still run:
    /// closing waits for them, so that no lease outlives `close()`. Made on
    /// first use: most sessions never give a lease up.
    revokes: Option<JoinSet<()>>,
    /// Leases whose revoke gave up before it got through.
    unrevoked: Arc<std::sync::Mutex<Vec<i64>>>,
}

/// The next command to the worker: waits for one.
async fn next_command(control: &Control, resets_seen: &mut u64) -> Command {
    loop {
        if control.closed.load(Ordering::SeqCst) {
            return Command::Close;
        }
        let resets = control.resets.load(Ordering::SeqCst);
        if resets != *resets_seen {
            *resets_seen = resets;
            return Command::Reset;
        }
        // A wake-up sent since the check is kept, so none is lost.
        control.wake.notified().await;
    }
}

impl Worker {
    /// Tells the owner, then every election on the lease, in this call:
    /// a loss steps them all down before etcd can expire the lease.
    fn report(&self, lease: i64, error: Option<Error>) {
        let elections = self.control.elections.lock().expect("elections lock");
        self.lease.send_replace(lease);
        for member in &elections.members {
            (member.on_lease)(lease, error.clone());
        }
        (self.observer)(lease, error);
    }

    async fn run(mut self) {
        self.core.start(Instant::now());
        loop {
            self.execute().await;
            let timer = self.core.next_timer();
            let now = tokio::select! {
                biased;
                command = next_command(&self.control, &mut self.resets_seen) => match command {
                    Command::Reset => {
                        self.core.on_reset(Instant::now());
                        continue;
                    }
                    Command::Close => break,
                },
                () = async { self.news.as_ref().expect("guarded").1.changed().await }, if self.news.is_some() => {
                    let (id, news) = self.news.clone().expect("guarded");
                    match news.take() {
                        Ok(Some((sent_at, ttl))) => self.core.on_renewed(Instant::now(), id, sent_at, ttl),
                        Ok(None) => {}
                        Err(error) => self.core.on_keepalive_failed(Instant::now(), id, error),
                    }
                    continue;
                }
                (sent_at, granted) = async { self.granting.as_mut().expect("guarded").await }, if self.granting.is_some() => {
                    // Dropped here: a session holding its lease should not
                    // carry the finished grant's buffers (10,000 sessions add up).
                    self.granting = None;
                    match granted {
                        Ok((id, ttl)) => self.core.on_granted(Instant::now(), sent_at, id, ttl),
                        Err(error) => self.core.on_grant_failed(Instant::now(), error),
                    }
                    continue;
                }
                () = tokio::time::sleep_until(timer.unwrap_or_else(Instant::now)), if timer.is_some() => Instant::now(),
            };
            self.core.on_timer(now);
        }
        // Close: the elections on the lease first (each resigns), then the
        // core gives the lease up; its revoke, and those of leases given up
        // before, must end first.
        let deadline = self.close_deadline();
        Box::pin(close_elections(&self.control, deadline)).await;
        self.core.on_close(deadline);
        self.execute().await;
        // Leases lost earlier whose revoke gave up (etcd was out of reach
        // then) may still live, kept by a leader change: their keys would
        // block the elections. Try again.
        let given_up = std::mem::take(&mut *lock(&self.unrevoked));
        for id in given_up {
            self.revoke_in_background(id, deadline);
        }
        if let Some(revokes) = &mut self.revokes {
            let _ = tokio::time::timeout_at(deadline, async {
                while revokes.join_next().await.is_some() {}
            })
            .await;
        }
        self.report(NO_LEASE, None);
        self.control.done.store(true, Ordering::SeqCst);
        self.control.finished.notify_waiters();
        self.control
            .registration
            .lock()
            .expect("registration lock")
            .take();
    }

    /// Executes the actions the core queued, in order.
    async fn execute(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                LeaseAction::Grant { ttl } => {
                    self.attempt = self.client.attempt();
                    self.granting = Some(Box::pin(grant(self.client.clone(), ttl)));
                }
                LeaseAction::KeepAlive {
                    id,
                    ttl,
                    granted_at,
                } => {
                    let news = self.client.keepalive().add(id, ttl, granted_at);
                    self.news = Some((id, news));
                }
                LeaseAction::StopKeepAlive { id } => {
                    self.client.keepalive().remove(id);
                    self.news = None;
                }
                LeaseAction::Gained { id } => self.report(id, None),
                LeaseAction::Failed { error } => {
                    // Boxed: rare, and inline it would make every session's
                    // task as large as a token renewal's call (10,000 add up).
                    Box::pin(self.client.recover(&error, &self.attempt)).await;
                    self.report(NO_LEASE, Some(error));
                }
                LeaseAction::Lost {
                    id,
                    error,
                    etcd_may_expire_at,
                } => {
                    let reason = match &error {
                        Error::LeaseDeadline { .. } => "keepalive_deadline",
                        Error::LeaseExpired { .. } => "expired",
                        Error::LeaseNotFound(_) => "revoked",
                        _ => "stream_error",
                    };
                    let before_expiry =
                        etcd_may_expire_at.saturating_duration_since(Instant::now());
                    tracing::warn!(
                        target: telemetry::TARGET,
                        lease = %format_args!("{id:x}"),
                        reason,
                        before_expiry_ms = before_expiry.as_millis() as u64,
                        error = %error,
                        "lease lost",
                    );
                    telemetry::lease_lost(reason);
                    let hint = error.clone();
                    self.report(NO_LEASE, Some(error));
                    Box::pin(self.client.recover(&hint, &self.attempt)).await;
                }
                LeaseAction::Reset { .. } => self.report(NO_LEASE, None),
                LeaseAction::Revoke { id, by } => self.revoke_in_background(id, by),
                LeaseAction::RevokeGrant { by } => {
                    // A grant etcd may already have applied: let it finish,
                    // and revoke what it got.
                    if let Some(granting) = self.granting.take() {
                        let client = self.client.clone();
                        let unrevoked = self.unrevoked.clone();
                        self.background(async move {
                            if let Ok((_, Ok((id, _)))) =
                                tokio::time::timeout_at(by, granting).await
                                && !revoke(client, id, by).await
                            {
                                lock(&unrevoked).push(id);
                            }
                        });
                    }
                }
            }
        }
    }

    /// Revokes `id` in the background until `by`; one that gives up (etcd
    /// out of reach all that time) is tried again at close.
    fn revoke_in_background(&mut self, id: i64, by: Instant) {
        let (client, unrevoked) = (self.client.clone(), self.unrevoked.clone());
        self.background(async move {
            if !revoke(client, id, by).await {
                lock(&unrevoked).push(id);
            }
        });
    }

    /// Runs a revoke in the background; closing waits for it.
    fn background(&mut self, revoke: impl Future<Output = ()> + Send + 'static) {
        self.revokes.get_or_insert_with(JoinSet::new).spawn(revoke);
    }

    /// When closing must be done by (set before the worker sees the close).
    fn close_deadline(&self) -> Instant {
        let close_by = *self.control.close_by.lock().expect("close lock");
        close_by.unwrap_or_else(|| Instant::now() + close_budget(self.ttl))
    }
}

/// Closes every election standing on the lease, concurrently.
async fn close_elections(control: &Control, deadline: Instant) {
    let closers: Vec<Arc<dyn Closable>> = {
        let elections = control.elections.lock().expect("elections lock");
        elections.members.iter().map(|m| m.closer.clone()).collect()
    };
    if closers.is_empty() {
        return;
    }
    let mut closing = JoinSet::new();
    for closer in closers {
        closing.spawn(async move { closer.close_before_revoke(deadline).await });
    }
    while closing.join_next().await.is_some() {}
}

/// Grants a lease of `ttl` seconds; returns when the request was sent, and
/// the lease's id and TTL.
async fn grant(client: Client, ttl: i64) -> (Instant, Result<(i64, i64)>) {
    // A burst of sessions (10,000 made at once) waits here rather than
    // flooding etcd, which answers "too many requests" past its queue.
    let _permit = client.lease_permit().await;
    let sent_at = Instant::now();
    let limit = Duration::from_secs(ttl as u64);
    let request = LeaseGrantRequest { ttl, id: 0 };
    let granted = async {
        let response = tokio::time::timeout(limit, client.lease().lease_grant(request))
            .await
            .map_err(|_| Error::Timeout {
                what: "LeaseGrant",
                after: limit,
            })??
            .into_inner();
        if !response.error.is_empty() {
            return Err(Error::UnexpectedResponse {
                what: format!("LeaseGrant answered with error {:?}", response.error),
            });
        }
        Ok((response.id, response.ttl))
    };
    (sent_at, granted.await)
}

/// Revokes a lease, retrying what another try may mend (a broken connection
/// to a member that restarted, a token to renew) until `deadline`; then
/// gives up, and etcd expires the lease at its TTL.
/// Returns whether etcd no longer has the lease (revoked now, or already
/// gone).
async fn revoke(client: Client, id: i64, deadline: Instant) -> bool {
    let revoked = tokio::time::timeout_at(deadline, async {
        loop {
            let attempt = client.attempt();
            let revoked = {
                // 10,000 sessions closing at once take turns, as grants do.
                let _permit = client.lease_permit().await;
                client.lease().lease_revoke(LeaseRevokeRequest { id }).await
            };
            let error = match revoked {
                Ok(_) => return true,
                Err(status) => Error::from(status),
            };
            // Not found: revoked already, or expired.
            if matches!(error, Error::LeaseNotFound(_)) {
                return true;
            }
            if !error.is_retryable() {
                return false;
            }
            if !client.recover(&error, &attempt).await {
                tokio::time::sleep(REVOKE_RETRY).await;
            }
        }
    })
    .await;
    revoked.unwrap_or(false)
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Pause between two tries of a revoke.
const REVOKE_RETRY: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_bounds() {
        assert_eq!(checked_ttl("t", 0, 30).unwrap(), 30);
        assert_eq!(checked_ttl("t", 5, 30).unwrap(), 5);
        let err = checked_ttl("SessionConfig.ttl", -1, 30).unwrap_err();
        assert_eq!(
            err.to_string(),
            "SessionConfig.ttl=-1 is not a TTL in seconds from 1 to 9000000000 (etcd's maximum), or 0 for the default"
        );
        assert!(checked_ttl("t", MAX_LEASE_TTL + 1, 30).is_err());
    }
}

/// A session's task is a few hundred bytes (10,000 sessions fit in 64 MiB):
/// rare, large futures (a token renewal, closing the elections) are boxed.
#[cfg(test)]
mod size {
    #[test]
    fn a_session_task_stays_small() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let client = crate::Client::connect_lazy(crate::Config::default()).unwrap();
            let (lease, _) = tokio::sync::watch::channel(super::NO_LEASE);
            let worker = super::Worker {
                client: client.clone(),
                ttl: 5,
                core: super::LeaseCore::new(5, tokio::time::Instant::now()),
                observer: std::sync::Arc::new(|_, _| {}),
                lease,
                control: Default::default(),
                resets_seen: 0,
                granting: None,
                attempt: client.attempt(),
                news: None,
                revokes: None,
                unrevoked: Default::default(),
            };
            let task = std::mem::size_of_val(&worker.run());
            assert!(task <= 1024, "a session's task is {task} bytes");
        });
    }
}
