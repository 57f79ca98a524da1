//! A lock on etcd that interoperates with etcd's Go `concurrency.Mutex`,
//! `etcdctl lock` and etcd's server-side Lock service (`v3lockpb`): they all
//! follow one recipe, so each excludes the others on the same name.
//!
//! # The recipe
//!
//! A waiter is the key `<name>/<lease hex>`, attached to its session's
//! lease. It enters with one Txn: put the key if it is absent (else read it:
//! a session reuses its key), and read the oldest key under `<name>/`. The
//! owner is the key with the lowest create revision; that revision is the
//! owner's fencing token. A waiter that does not own waits for the deletion
//! of every older key, newest first, as Go's `waitDeletes` does: read the
//! newest key created before ours, watch it until it is deleted, and again
//! until none is left. Then it checks that its own key is still there.
//!
//! As in Go, the range is every key under `<name>/`: a lock named `jobs`
//! also waits for the keys of a lock named `jobs/nightly`.
//!
//! # Losing the lock
//!
//! The lock is lost, and [`Lost`] fires, in the same call as the first of:
//! - the session takes its lease for lost: the session calls us in its own
//!   call, before etcd can expire the lease (see the `session` module);
//! - our key is deleted by someone else, seen on a watch of our key;
//! - [`Mutex::unlock`], before the delete is sent;
//! - the session closes (it closes the mutexes on it before it revokes its
//!   lease), or the [`Mutex`] is dropped.
//!
//! # One name on one session
//!
//! The key depends only on the name and the lease, so two [`Mutex`] values
//! of one name on one session would share one key, and Go's would both
//! believe they own the lock. Here they exclude each other inside the
//! process: the second waits until the first unlocks. Locking a [`Mutex`]
//! that already owns the lock returns its key at once (one acquisition, as
//! etcd's Lock service treats two `Lock` calls with one lease); one
//! [`unlock`](Mutex::unlock) releases it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;

use tokio::sync::{OwnedMutexGuard, oneshot, watch};
use tokio::time::Instant;

use crate::client::txn::{
    created_at, delete_op, newest_created_by, oldest_in, prefix_range, put_op, range_op,
};
use crate::client::{Client, Closable};
use crate::error::{Error, Result};
use crate::lost::{Lost, LostSender};
use crate::proto::etcdserverpb::{
    PutRequest, RangeRequest, RangeResponse, ResponseOp, TxnRequest, TxnResponse,
    WatchCreateRequest, response_op, watch_create_request::FilterType,
};
use crate::proto::mvccpb::event::EventType;
use crate::session::core::safety_margin;
use crate::session::{Attachment, NO_LEASE, Session, close_budget};
use crate::telemetry;

/// Pause before another try after etcd failed us.
const RETRY: Duration = Duration::from_millis(500);

/// The key that holds a lock, and its fencing token.
///
/// ```no_run
/// # async fn run(mutex: &etcdutil::Mutex) -> etcdutil::Result<()> {
/// let held = mutex.lock().await?;
/// println!("{} owns {} since revision {}", held.key, held.name, held.rev);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LockKey {
    /// The lock's name, as given to [`Mutex::new`].
    pub name: String,
    /// Our key, `<name>/<lease hex>` (`etcdctl lock`'s `ETCD_LOCK_KEY`).
    pub key: String,
    /// Our key's create revision: the fencing token. A Txn that compares
    /// the key's create revision with it succeeds only while we own the lock.
    pub rev: i64,
    /// The session's lease the key is attached to.
    pub lease: i64,
}

/// A lock on a [`Session`], compatible with Go's `concurrency.Mutex`,
/// `etcdctl lock NAME` and etcd's Lock service (see the module docs for
/// the recipe and when the lock is lost).
///
/// ```no_run
/// use etcdutil::{Mutex, Session, SessionConfig};
/// # async fn run(client: etcdutil::Client) -> etcdutil::Result<()> {
/// let session = Session::new(&client, SessionConfig { ttl: 10, ..Default::default() })?;
/// let mutex = Mutex::new(&session, "billing-jobs")?;
/// let held = mutex.lock().await?;
/// tokio::select! {
///     _ = mutex.lost() => eprintln!("lost {}: stop at once", held.key),
///     _ = async { /* the work */ } => {}
/// }
/// mutex.unlock().await?;
/// session.close().await;
/// # Ok(()) }
/// ```
pub struct Mutex {
    shared: Arc<Shared>,
    /// Lock, try-lock and unlock of one handle take turns.
    turns: tokio::sync::Mutex<()>,
    _attachment: Attachment,
}

/// What the handle, its acquisitions and the session's calls share.
struct Shared {
    name: String,
    client: Client,
    ttl: i64,
    state: std::sync::Mutex<State>,
    /// The session's lease, as the session last told us; waiters watch it.
    ground: watch::Sender<Ground>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ground {
    NoLease,
    Lease(i64),
    /// The session closed, or the handle was dropped: no more acquisitions.
    Closed,
}

#[derive(Default)]
struct State {
    held: Option<Held>,
    acquiring: Option<Acquiring>,
    next_attempt: u64,
    /// After the last loss: the earliest instant another session may own the lock.
    next_owner_earliest: Option<Instant>,
}

/// An acquisition under way, aborted when its lease is lost.
struct Acquiring {
    id: u64,
    lease: i64,
    /// Dropped (which loses it) to abort the acquisition.
    _abort: LostSender,
}

/// The lock, while we own it. Dropping it loses it.
struct Held {
    lock_key: LockKey,
    lost: LostSender,
    /// The key's in-process exclusion, kept until the key is gone from etcd.
    local: Option<OwnedMutexGuard<()>>,
    /// Follows our key, to see it deleted by someone else.
    follower: tokio::task::AbortHandle,
}

impl Held {
    /// Ends the term here; returns the key and its exclusion, which the
    /// caller keeps until it deleted the key.
    fn release(mut self) -> (LockKey, Option<OwnedMutexGuard<()>>) {
        (self.lock_key.clone(), self.local.take())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.lost.lose();
        self.follower.abort();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Wait,
    Try,
}

/// What one try at the lock came to.
enum Step {
    Done(Result<LockKey>),
    /// Try again (after a lost lease, or a failure worth retrying).
    Again,
    /// The caller is gone; nothing of ours is left in etcd.
    Cancelled,
}

/// The name's check: non-empty, no NUL.
fn check_name(name: &str) -> Result<()> {
    let invalid = |expected| Error::InvalidArgument {
        name: "Mutex name",
        value: format!("{name:?}"),
        expected,
    };
    if name.trim().is_empty() {
        return Err(invalid(
            "a non-empty lock name, e.g. \"jobs\" (its keys are jobs/<lease hex>)",
        ));
    }
    if name.contains('\0') {
        return Err(invalid("a lock name without NUL bytes"));
    }
    Ok(())
}

impl std::fmt::Debug for Mutex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mutex")
            .field("name", &self.shared.name)
            .field("lock_key", &self.lock_key())
            .finish_non_exhaustive()
    }
}

impl Mutex {
    /// A lock named `name` on `session`'s lease; its keys are
    /// `<name>/<lease hex>`, as `etcdctl lock <name>` writes them. Sends
    /// nothing to etcd.
    ///
    /// Fails on an empty name or one with a NUL byte, and with
    /// [`Error::Closed`] once the session is closing.
    ///
    /// ```no_run
    /// # fn f(session: &etcdutil::Session) -> etcdutil::Result<()> {
    /// let mutex = etcdutil::Mutex::new(session, "billing-jobs")?;
    /// assert!(etcdutil::Mutex::new(session, "").is_err());
    /// # Ok(()) }
    /// ```
    pub fn new(session: &Session, name: impl Into<String>) -> Result<Mutex> {
        let name = name.into();
        check_name(&name)?;
        let (ground, _) = watch::channel(Ground::NoLease);
        let shared = Arc::new(Shared {
            name,
            client: session.client().clone(),
            ttl: session.ttl(),
            state: Default::default(),
            ground,
        });
        let listener = shared.clone();
        // The lock is lost here, in the session's own call, before etcd can
        // expire the lease.
        let attachment = session.attach(
            Arc::new(move |lease, error| listener.on_lease(lease, error)),
            shared.clone(),
        )?;
        Ok(Mutex {
            shared,
            turns: tokio::sync::Mutex::new(()),
            _attachment: attachment,
        })
    }

    /// The lock's name.
    ///
    /// ```no_run
    /// # fn f(mutex: &etcdutil::Mutex) { println!("{}", mutex.name()); }
    /// ```
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Waits until we own the lock; returns our key and its fencing token.
    ///
    /// Waits for the session's lease if it has none. If the lease is lost
    /// while we wait, enters again with the next one (behind whoever
    /// entered meanwhile). Fails on an error etcd will answer again (say,
    /// permission denied), or with [`Error::Closed`] once the session
    /// closes; then no key of ours is left. Returns at once if this handle
    /// owns the lock already.
    ///
    /// Cancellable: dropping the future (say, in a `timeout`) withdraws from
    /// the queue, and our key is deleted in the background.
    ///
    /// ```no_run
    /// # async fn f(mutex: &etcdutil::Mutex) -> Result<(), Box<dyn std::error::Error>> {
    /// let held = tokio::time::timeout(std::time::Duration::from_secs(30), mutex.lock()).await??;
    /// # Ok(()) }
    /// ```
    pub async fn lock(&self) -> Result<LockKey> {
        self.acquire(Mode::Wait).await
    }

    /// Takes the lock if nobody owns it, else fails at once with
    /// [`Error::Locked`], having deleted the key it entered with (Go 3.5's
    /// `TryLock`). Waits for the session's lease if it has none. Returns at
    /// once if this handle owns the lock already.
    ///
    /// ```no_run
    /// # async fn f(mutex: &etcdutil::Mutex) -> etcdutil::Result<()> {
    /// match mutex.try_lock().await {
    ///     Ok(held) => println!("own it: {}", held.key),
    ///     Err(etcdutil::Error::Locked { .. }) => println!("busy, try later"),
    ///     Err(error) => return Err(error),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn try_lock(&self) -> Result<LockKey> {
        self.acquire(Mode::Try).await
    }

    async fn acquire(&self, mode: Mode) -> Result<LockKey> {
        let _turn = self.turns.lock().await;
        if let Some(held) = self.lock_key() {
            return Ok(held);
        }
        // In a task of its own: if this future is dropped, the task still
        // learns how far etcd got, and deletes what it entered.
        let (reply, answer) = oneshot::channel();
        tokio::spawn(acquire(self.shared.clone(), mode, reply));
        answer.await.unwrap_or(Err(Error::Closed))
    }

    /// Releases the lock: [`lost`](Self::lost) fires at once, then our key is
    /// deleted (fenced by its create revision, so it never deletes a later
    /// key). `Ok(true)` if we owned the lock, `Ok(false)` if not (nothing is
    /// sent). Retries the delete within the TTL + 1 s; dropping the future
    /// leaves it running in the background.
    ///
    /// ```no_run
    /// # async fn f(mutex: &etcdutil::Mutex) -> etcdutil::Result<()> {
    /// if mutex.unlock().await? { println!("released"); }
    /// # Ok(()) }
    /// ```
    pub async fn unlock(&self) -> Result<bool> {
        let _turn = self.turns.lock().await;
        let Some(released) = self.shared.release() else {
            return Ok(false);
        };
        let shared = self.shared.clone();
        let deadline = Instant::now() + close_budget(shared.ttl);
        let deleting = tokio::spawn(async move { shared.delete(released, deadline).await });
        deleting.await.unwrap_or(Err(Error::Closed))?;
        Ok(true)
    }

    /// Our key and its fencing token while we own the lock; `None` from the
    /// moment it is lost. Lock-free of etcd: read from memory.
    ///
    /// ```no_run
    /// # fn f(mutex: &etcdutil::Mutex) {
    /// if let Some(held) = mutex.lock_key() { println!("fencing token {}", held.rev); }
    /// # }
    /// ```
    pub fn lock_key(&self) -> Option<LockKey> {
        let state = self.shared.lock_state();
        state.held.as_ref().map(|held| held.lock_key.clone())
    }

    /// Whether we own the lock now: false from the moment it is lost.
    ///
    /// ```no_run
    /// # fn f(mutex: &etcdutil::Mutex) { if mutex.is_owner() { /* work */ } }
    /// ```
    pub fn is_owner(&self) -> bool {
        self.shared.lock_state().held.is_some()
    }

    /// The signal that the lock we own now is lost; it fires in the same
    /// call that makes [`is_owner`](Self::is_owner) false. When we do not own
    /// the lock, one that is lost already.
    ///
    /// ```no_run
    /// # async fn f(mutex: &etcdutil::Mutex) -> etcdutil::Result<()> {
    /// mutex.lock().await?;
    /// let lost = mutex.lost();
    /// tokio::select! {
    ///     _ = lost => eprintln!("lost the lock: stop"),
    ///     _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
    /// }
    /// # Ok(()) }
    /// ```
    pub fn lost(&self) -> Lost {
        let state = self.shared.lock_state();
        match &state.held {
            Some(held) => held.lost.subscribe(),
            None => LostSender::new().1,
        }
    }

    /// After the lock was lost: the earliest instant another session can
    /// own it. That is when etcd may expire our lease, if the session took
    /// it for lost because keepalives went unanswered (it does so a safety
    /// margin, TTL/6 within 100 ms..2 s, before); at once if our key is
    /// gone already (unlocked, deleted, lease revoked or expired). For work
    /// that must stop before someone else starts: the grace it has left.
    /// `None` until a loss.
    ///
    /// ```no_run
    /// # async fn f(mutex: &etcdutil::Mutex) {
    /// mutex.lost().await;
    /// let grace = mutex
    ///     .next_owner_earliest()
    ///     .map(|at| at.saturating_duration_since(tokio::time::Instant::now()));
    /// # }
    /// ```
    pub fn next_owner_earliest(&self) -> Option<Instant> {
        self.shared.lock_state().next_owner_earliest
    }

    /// Runs `txn` only while we own the lock: it is nested in a transaction
    /// that compares our key's create revision with [`LockKey::rev`], so a
    /// holder that lost the lock can never write. Returns the inner
    /// transaction's response, or [`Error::NotLockOwner`].
    ///
    /// ```no_run
    /// use etcdutil::proto::etcdserverpb::{PutRequest, RequestOp, TxnRequest, request_op};
    /// # async fn f(mutex: &etcdutil::Mutex) -> etcdutil::Result<()> {
    /// let put = PutRequest { key: "/jobs/last-run".into(), value: "now".into(), ..Default::default() };
    /// mutex
    ///     .txn_if_owner(TxnRequest {
    ///         success: vec![RequestOp { request: Some(request_op::Request::RequestPut(put)) }],
    ///         ..Default::default()
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn txn_if_owner(&self, txn: TxnRequest) -> Result<TxnResponse> {
        let not_owner = || Error::NotLockOwner {
            name: self.shared.name.clone(),
        };
        let held = self.lock_key().ok_or_else(not_owner)?;
        let key = held.key.into_bytes();
        crate::client::txn::fenced(&self.shared.client, key, held.rev, txn)
            .await?
            .ok_or_else(not_owner)
    }
}

impl Drop for Mutex {
    /// Unlocks in the background, and withdraws an acquisition under way.
    fn drop(&mut self) {
        let released = self.shared.shut();
        if let (Some(released), Ok(runtime)) = (released, tokio::runtime::Handle::try_current()) {
            let shared = self.shared.clone();
            let deadline = Instant::now() + close_budget(shared.ttl);
            runtime.spawn(async move { shared.delete(released, deadline).await });
        }
    }
}

/// A key and its in-process exclusion, to keep until the key is deleted.
type Released = (LockKey, Option<OwnedMutexGuard<()>>);

impl Shared {
    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn prefix(&self) -> String {
        format!("{}/", self.name)
    }

    /// The session's report of a lease gained or lost, in its own call.
    fn on_lease(&self, lease: i64, error: Option<Error>) {
        let lease = (lease != NO_LEASE).then_some(lease);
        let mut state = self.lock_state();
        if *self.ground.borrow() == Ground::Closed {
            return;
        }
        self.ground
            .send_replace(lease.map_or(Ground::NoLease, Ground::Lease));
        if state
            .acquiring
            .as_ref()
            .is_some_and(|a| Some(a.lease) != lease)
        {
            state.acquiring = None;
        }
        if state
            .held
            .as_ref()
            .is_some_and(|held| Some(held.lock_key.lease) != lease)
        {
            // Our key goes with the lease: at once if etcd said the lease
            // is gone (or we gave it up), else when etcd may expire it,
            // which the session's deadline keeps at least a margin away.
            let grace = match &error {
                None | Some(Error::LeaseExpired { .. } | Error::LeaseNotFound(_)) => Duration::ZERO,
                Some(_) => safety_margin(Duration::from_secs(self.ttl.max(1) as u64)),
            };
            state.next_owner_earliest = Some(Instant::now() + grace);
            let held = state.held.take().expect("checked");
            tracing::warn!(
                target: telemetry::TARGET,
                lock = %self.name,
                key = %held.lock_key.key,
                rev = held.lock_key.rev,
                error = %error.as_ref().map_or("the session gave its lease up".into(), |e| e.to_string()),
                "lock lost with the session's lease",
            );
            drop(held);
        }
    }

    /// Our key `rev` was deleted by someone else.
    fn on_key_deleted(&self, rev: i64) {
        let mut state = self.lock_state();
        if state.held.as_ref().is_some_and(|h| h.lock_key.rev == rev) {
            state.next_owner_earliest = Some(Instant::now());
            let held = state.held.take().expect("checked");
            tracing::warn!(
                target: telemetry::TARGET,
                lock = %self.name,
                key = %held.lock_key.key,
                rev,
                "lock lost: its key was deleted",
            );
        }
    }

    /// Ends the term we hold, if any (the signal fires here).
    fn release(&self) -> Option<Released> {
        let mut state = self.lock_state();
        let held = state.held.take()?;
        state.next_owner_earliest = Some(Instant::now());
        Some(held.release())
    }

    /// No more acquisitions: aborts the one under way, ends the term.
    fn shut(&self) -> Option<Released> {
        let mut state = self.lock_state();
        self.ground.send_replace(Ground::Closed);
        state.acquiring = None;
        let held = state.held.take()?;
        state.next_owner_earliest = Some(Instant::now());
        Some(held.release())
    }

    /// Deletes a released key by `deadline`; then lets the key go in-process.
    async fn delete(&self, released: Released, deadline: Instant) -> Result<()> {
        let (lock_key, local) = released;
        let deleted = delete_key(&self.client, &lock_key.key, Some(lock_key.rev), deadline).await;
        drop(local);
        deleted
    }

    /// Registers an acquisition on `lease`, unless that lease is gone or
    /// the mutex closed; returns its id and its abort signal.
    fn begin(&self, lease: i64) -> Option<(u64, Lost)> {
        let mut state = self.lock_state();
        if *self.ground.borrow() != Ground::Lease(lease) {
            return None;
        }
        let id = state.next_attempt;
        state.next_attempt += 1;
        let (abort, aborted) = LostSender::new();
        state.acquiring = Some(Acquiring {
            id,
            lease,
            _abort: abort,
        });
        Some((id, aborted))
    }

    fn end_attempt(&self, id: u64) {
        let mut state = self.lock_state();
        if state.acquiring.as_ref().is_some_and(|a| a.id == id) {
            state.acquiring = None;
        }
    }

    /// Makes acquisition `id` the held term, unless its lease was lost (or
    /// the mutex closed) meanwhile: then gives the exclusion back.
    fn install(
        self: &Arc<Self>,
        id: u64,
        lock_key: &LockKey,
        local: OwnedMutexGuard<()>,
        from_rev: i64,
    ) -> std::result::Result<(), OwnedMutexGuard<()>> {
        let mut state = self.lock_state();
        if state.acquiring.as_ref().is_none_or(|a| a.id != id) {
            return Err(local);
        }
        state.acquiring = None;
        let follower = tokio::spawn(follow_key(
            Arc::downgrade(self),
            self.client.clone(),
            lock_key.key.clone(),
            lock_key.rev,
            from_rev,
        ));
        state.held = Some(Held {
            lock_key: lock_key.clone(),
            lost: LostSender::new().0,
            local: Some(local),
            follower: follower.abort_handle(),
        });
        tracing::info!(
            target: telemetry::TARGET,
            lock = %self.name,
            key = %lock_key.key,
            rev = lock_key.rev,
            "lock acquired",
        );
        Ok(())
    }

    /// One try at the lock, from waiting for a lease to owning it.
    async fn attempt(
        self: &Arc<Self>,
        mode: Mode,
        reply: &mut oneshot::Sender<Result<LockKey>>,
    ) -> Step {
        let mut ground = self.ground.subscribe();
        let lease = tokio::select! {
            ground = ground.wait_for(|g| *g != Ground::NoLease) => match ground.map(|g| *g) {
                Ok(Ground::Lease(lease)) => lease,
                _ => return Step::Done(Err(Error::Closed)),
            },
            () = reply.closed() => return Step::Cancelled,
        };
        let key = format!("{}/{lease:x}", self.name);
        let local = local_exclusion(&key);
        let local = match mode {
            Mode::Try => match local.try_lock_owned() {
                Ok(local) => local,
                Err(_) => return Step::Done(Err(self.locked())),
            },
            Mode::Wait => tokio::select! {
                local = local.lock_owned() => local,
                () = reply.closed() => return Step::Cancelled,
            },
        };
        // From here a lost lease aborts the try.
        let Some((id, aborted)) = self.begin(lease) else {
            return Step::Again;
        };
        // Not raced with the caller: its outcome says what to delete.
        let (rev, owner, mut as_of) = match self.enter(&key, lease).await {
            Ok(entered) => entered,
            Err(error) => return self.give_up(id, &key, None, error, reply).await,
        };
        let lock_key = LockKey {
            name: self.name.clone(),
            key,
            rev,
            lease,
        };
        if owner != Some(rev) {
            if mode == Mode::Try {
                self.end_attempt(id);
                let deadline = Instant::now() + close_budget(self.ttl);
                return match delete_key(&self.client, &lock_key.key, Some(rev), deadline).await {
                    Ok(()) => Step::Done(Err(self.locked())),
                    Err(error) => Step::Done(Err(error)),
                };
            }
            let prefix = self.prefix();
            let waited = tokio::select! {
                waited = wait_deletes(&self.client, &prefix, rev - 1) => waited,
                () = aborted.wait() => Err(Error::Closed),
                () = reply.closed() => Err(Error::Closed),
            };
            // Our key may be gone (deleted by someone, or with the lease)
            // while we waited: own the lock only if it is still there.
            let still_ours = match waited {
                Ok(()) => self.read_create_rev(&lock_key.key).await,
                Err(error) => Err(error),
            };
            match still_ours {
                Ok((Some(created), read_at)) if created == rev => as_of = read_at,
                Ok(_) => {
                    self.end_attempt(id);
                    return Step::Again;
                }
                Err(error) => {
                    return self
                        .give_up(id, &lock_key.key, Some(rev), error, reply)
                        .await;
                }
            }
        }
        match self.install(id, &lock_key, local, as_of + 1) {
            Ok(()) => Step::Done(Ok(lock_key)),
            Err(local) => {
                // The lease was lost just now: the key goes with it, but may
                // outlive it a while; delete it before letting it go.
                let deadline = Instant::now() + close_budget(self.ttl);
                let _ = delete_key(&self.client, &lock_key.key, Some(rev), deadline).await;
                drop(local);
                Step::Again
            }
        }
    }

    /// A try that failed: deletes what it may have entered, then says
    /// whether to try again.
    async fn give_up(
        &self,
        id: u64,
        key: &str,
        rev: Option<i64>,
        error: Error,
        reply: &mut oneshot::Sender<Result<LockKey>>,
    ) -> Step {
        self.end_attempt(id);
        let deadline = Instant::now() + close_budget(self.ttl);
        // Unfenced when the entry's answer never came: while we hold the
        // key's in-process exclusion, nothing else of ours uses it.
        let _ = delete_key(&self.client, key, rev, deadline).await;
        if reply.is_closed() {
            return Step::Cancelled;
        }
        if *self.ground.borrow() == Ground::Closed {
            return Step::Done(Err(Error::Closed));
        }
        if let Error::LeaseNotFound(_) = error {
            // Revoked under us, and the session has not noticed yet (it
            // will, within TTL/3): enter again with its next lease.
            let mut ground = self.ground.subscribe();
            let lease = lease_of(key);
            tokio::select! {
                _ = ground.wait_for(|g| lease.is_none_or(|lease| *g != Ground::Lease(lease))) => {}
                () = reply.closed() => return Step::Cancelled,
            }
            return Step::Again;
        }
        if error.is_retryable() || matches!(error, Error::Closed) {
            // Closed here means aborted by a lost lease: enter again.
            tokio::select! {
                () = tokio::time::sleep(if error.is_retryable() { RETRY } else { Duration::ZERO }) => {}
                () = reply.closed() => return Step::Cancelled,
            }
            return Step::Again;
        }
        Step::Done(Err(error))
    }

    fn locked(&self) -> Error {
        Error::Locked {
            name: self.name.clone(),
        }
    }

    /// The entry Txn: put our key if absent (else read it), and read the
    /// oldest key under the prefix. Returns our key's create revision, the
    /// owner's, and the revision it was answered at.
    async fn enter(&self, key: &str, lease: i64) -> Result<(i64, Option<i64>, i64)> {
        let oldest = || oldest_in(prefix_range(&self.prefix()), 1);
        let txn = TxnRequest {
            compare: vec![created_at(key.as_bytes().to_vec(), 0)],
            success: vec![
                put_op(PutRequest {
                    key: key.as_bytes().to_vec().into(),
                    lease,
                    ..Default::default()
                }),
                oldest(),
            ],
            failure: vec![
                range_op(RangeRequest {
                    key: key.as_bytes().to_vec().into(),
                    ..Default::default()
                }),
                oldest(),
            ],
        };
        let attempt = self.client.attempt();
        let limit = call_limit(self.ttl);
        let answered = tokio::time::timeout(limit, self.client.kv().txn(txn)).await;
        let response = match answered {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => {
                let error = Error::from(status);
                self.client.recover(&error, &attempt).await;
                return Err(error);
            }
            Err(_) => {
                return Err(Error::Timeout {
                    what: "the lock's entry Txn",
                    after: limit,
                });
            }
        };
        let as_of = response.header.as_ref().map_or(0, |h| h.revision);
        let unexpected = || Error::UnexpectedResponse {
            what: "the lock's entry Txn answered without its two ranges".into(),
        };
        let rev = if response.succeeded {
            as_of
        } else {
            let ours = response.responses.first().and_then(ranged);
            ours.and_then(|r| r.kvs.first())
                .ok_or_else(unexpected)?
                .create_revision
        };
        let owner = response
            .responses
            .get(1)
            .and_then(ranged)
            .ok_or_else(unexpected)?;
        Ok((rev, owner.kvs.first().map(|kv| kv.create_revision), as_of))
    }

    /// Our key's create revision (`None`: absent), and the revision read at.
    async fn read_create_rev(&self, key: &str) -> Result<(Option<i64>, i64)> {
        read_create_rev(&self.client, key).await
    }
}

impl Closable for Shared {
    /// The session closes: ends the term, withdraws, deletes our key by `deadline`.
    fn close_by(&self, deadline: Instant) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            if let Some(released) = self.shut() {
                let _ = self.delete(released, deadline).await;
            }
        })
    }

    fn ttl(&self) -> i64 {
        self.ttl
    }
}

/// The task behind [`Mutex::lock`] and [`Mutex::try_lock`].
async fn acquire(shared: Arc<Shared>, mode: Mode, mut reply: oneshot::Sender<Result<LockKey>>) {
    loop {
        match shared.attempt(mode, &mut reply).await {
            Step::Again => continue,
            Step::Cancelled => return,
            Step::Done(result) => {
                if let Err(Ok(lock_key)) = reply.send(result) {
                    // The caller left just as we got the lock: give it back.
                    let released = {
                        let mut state = shared.lock_state();
                        let ours = state.held.as_ref().is_some_and(|h| h.lock_key == lock_key);
                        ours.then(|| state.held.take().expect("checked").release())
                    };
                    if let Some(released) = released {
                        let deadline = Instant::now() + close_budget(shared.ttl);
                        let _ = shared.delete(released, deadline).await;
                    }
                }
                return;
            }
        }
    }
}

/// The lease of a lock key `<name>/<lease hex>`.
fn lease_of(key: &str) -> Option<i64> {
    let (_, hex) = key.rsplit_once('/')?;
    i64::from_str_radix(hex, 16).ok()
}

/// The range answer of a Txn's operation.
fn ranged(response: &ResponseOp) -> Option<&RangeResponse> {
    match &response.response {
        Some(response_op::Response::ResponseRange(range)) => Some(range),
        _ => None,
    }
}

/// How long one call of an acquisition may take: a member silent for a
/// TTL puts the lease in doubt anyway.
fn call_limit(ttl: i64) -> Duration {
    Duration::from_secs(ttl.clamp(1, 10) as u64)
}

/// `key`'s create revision (`None`: absent), and the revision read at.
async fn read_create_rev(client: &Client, key: &str) -> Result<(Option<i64>, i64)> {
    let range = RangeRequest {
        key: key.as_bytes().to_vec().into(),
        ..Default::default()
    };
    let response = client.kv().range(range).await?.into_inner();
    let as_of = response.header.as_ref().map_or(0, |h| h.revision);
    Ok((response.kvs.first().map(|kv| kv.create_revision), as_of))
}

/// Deletes `key` (if its create revision is still `rev`, when given),
/// retrying what another try may mend until `deadline`.
async fn delete_key(client: &Client, key: &str, rev: Option<i64>, deadline: Instant) -> Result<()> {
    let txn = TxnRequest {
        compare: rev
            .map(|rev| vec![created_at(key.as_bytes().to_vec(), rev)])
            .unwrap_or_default(),
        success: vec![delete_op(key.as_bytes().to_vec())],
        failure: vec![],
    };
    let after = deadline.saturating_duration_since(Instant::now());
    let deleted = tokio::time::timeout_at(deadline, async {
        loop {
            let attempt = client.attempt();
            let error = match client.kv().txn(txn.clone()).await {
                Ok(_) => return Ok(()),
                Err(status) => Error::from(status),
            };
            if !error.is_retryable() {
                return Err(error);
            }
            if !client.recover(&error, &attempt).await {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    })
    .await;
    deleted.unwrap_or(Err(Error::Timeout {
        what: "the lock key's delete",
        after,
    }))
}

/// Waits until no key under `prefix` created at or before `max_create_rev`
/// is left (Go's `waitDeletes`): the newest one, until it is deleted, then
/// again. Retries what another try may mend; fails on anything else.
async fn wait_deletes(client: &Client, prefix: &str, max_create_rev: i64) -> Result<()> {
    loop {
        let attempt = client.attempt();
        let step = async {
            let range = newest_created_by(prefix_range(prefix), max_create_rev);
            let response = client.kv().range(range).await?.into_inner();
            let Some(older) = response.kvs.first() else {
                return Ok(true);
            };
            let as_of = response.header.as_ref().map_or(0, |h| h.revision);
            wait_delete(client, older.key.to_vec(), as_of + 1).await?;
            Ok(false)
        };
        match step.await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(error) if error.is_retryable() => {
                if !client.recover(&error, &attempt).await {
                    tokio::time::sleep(RETRY).await;
                }
            }
            // Compacted past the read: read again.
            Err(Error::WatchCanceled {
                compact_revision, ..
            }) if compact_revision > 0 => {}
            Err(error) => return Err(error),
        }
    }
}

/// Waits for `key`'s deletion at or after revision `from`, on the client's
/// shared Watch stream.
async fn wait_delete(client: &Client, key: Vec<u8>, from: i64) -> Result<()> {
    let create = WatchCreateRequest {
        key: key.into(),
        start_revision: from,
        filters: vec![FilterType::Noput as i32],
        ..Default::default()
    };
    let mut watch = client.watches().open(create).await?;
    loop {
        let events = watch.next().await?;
        if events.iter().any(|e| e.r#type == EventType::Delete as i32) {
            return Ok(());
        }
    }
}

/// Follows our held key from revision `from` until it is deleted, then
/// loses the lock (unless it was released already: this task is aborted
/// then). A watch that ends (compaction) is checked by reading the key.
async fn follow_key(shared: Weak<Shared>, client: Client, key: String, rev: i64, mut from: i64) {
    loop {
        let attempt = client.attempt();
        let error = match wait_delete(&client, key.as_bytes().to_vec(), from).await {
            Ok(()) => break,
            Err(error) => error,
        };
        if !(error.is_retryable() && client.recover(&error, &attempt).await) {
            tokio::time::sleep(RETRY).await;
        }
        match read_create_rev(&client, &key).await {
            Ok((created, as_of)) if created == Some(rev) => from = as_of + 1,
            Ok(_) => break,
            Err(_) => {}
        }
    }
    if let Some(shared) = shared.upgrade() {
        shared.on_key_deleted(rev);
    }
}

/// The in-process exclusion of each lock key in use: two [`Mutex`] values
/// of one name on one session would share one key in etcd.
static LOCAL_KEYS: LazyLock<std::sync::Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(Default::default);

fn local_exclusion(key: &str) -> Arc<tokio::sync::Mutex<()>> {
    let mut keys = LOCAL_KEYS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(local) = keys.get(key).and_then(Weak::upgrade) {
        return local;
    }
    keys.retain(|_, local| local.strong_count() > 0);
    let local = Arc::new(tokio::sync::Mutex::new(()));
    keys.insert(key.to_owned(), Arc::downgrade(&local));
    local
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused_with_the_value() {
        assert_eq!(
            check_name("").unwrap_err().to_string(),
            "Mutex name=\"\" is not a non-empty lock name, e.g. \"jobs\" (its keys are jobs/<lease hex>)"
        );
        assert!(check_name("  ").is_err());
        assert_eq!(
            check_name("a\0b").unwrap_err().to_string(),
            "Mutex name=\"a\\0b\" is not a lock name without NUL bytes"
        );
        assert!(check_name("jobs").is_ok() && check_name("/locks/jobs").is_ok());
    }

    #[test]
    fn the_lease_is_the_keys_last_part() {
        assert_eq!(
            lease_of("/locks/a/b/694d7c5a3e2f1b07"),
            Some(0x694d7c5a3e2f1b07)
        );
        assert_eq!(lease_of("nolease"), None);
    }

    #[test]
    fn one_key_one_exclusion_while_in_use() {
        let a = local_exclusion("x/1");
        let b = local_exclusion("x/1");
        assert!(Arc::ptr_eq(&a, &b));
        let other = local_exclusion("x/2");
        assert!(!Arc::ptr_eq(&a, &other));
    }
}
