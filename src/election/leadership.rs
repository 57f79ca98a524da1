//! Leading as a scope: [`Leadership`], a term as a value with the signal of
//! its end, and [`Election::run_while_leader`], work that runs only while we
//! lead.
//!
//! The signal fires in the same call that turns `is_leader()` false, whatever
//! the cause: the lease's deadline, our key deleted, a concede, a close, an
//! older Go candidate, a session reset. For a lost lease that is before etcd
//! can expire it, so work stopped on the signal never overlaps the next
//! leader's (short of a process pause; see the README's "Guarantees").

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::election::Election;
use crate::error::Result;
use crate::lost::Lost;
use crate::proto::v3electionpb::LeaderKey;
use crate::telemetry;

/// One term of ours: what [`Election::leadership`] hands out once we lead.
///
/// Holding it never delays a step-down, and dropping it changes nothing.
///
/// ```no_run
/// # async fn run(election: etcdutil::Election) -> etcdutil::Result<()> {
/// let leadership = election.leadership().await?;
/// println!("leading with fencing token {}", leadership.rev());
/// leadership.lost().await; // the instant is_leader() turns false
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Leadership {
    term: LeaderKey,
    key: String,
    lost: Lost,
}

impl Leadership {
    pub(crate) fn new(term: &LeaderKey, lost: Lost) -> Leadership {
        Leadership {
            key: String::from_utf8_lossy(&term.key).into_owned(),
            term: term.clone(),
            lost,
        }
    }

    /// Our candidate key, `/elections/<name>/<lease hex>`.
    ///
    /// ```no_run
    /// # fn f(l: &etcdutil::Leadership) { println!("{}", l.key()); }
    /// ```
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The key's create revision: the term's fencing token.
    ///
    /// ```no_run
    /// # fn f(l: &etcdutil::Leadership) { assert!(l.rev() > 0); }
    /// ```
    pub fn rev(&self) -> i64 {
        self.term.rev
    }

    /// The lease our key is attached to.
    ///
    /// ```no_run
    /// # fn f(l: &etcdutil::Leadership) { println!("{:x}", l.lease()); }
    /// ```
    pub fn lease(&self) -> i64 {
        self.term.lease
    }

    /// The term as etcd's Election service takes it (Proclaim, Resign).
    ///
    /// ```no_run
    /// # fn f(l: &etcdutil::Leadership) { let _term = l.term().clone(); }
    /// ```
    pub fn term(&self) -> &LeaderKey {
        &self.term
    }

    /// Completes the instant this term ends. Clone it into the tasks doing
    /// the leader's work.
    ///
    /// ```no_run
    /// # async fn f(l: etcdutil::Leadership) {
    /// tokio::select! {
    ///     _ = l.lost() => { /* stop */ }
    ///     _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => { /* work */ }
    /// }
    /// # }
    /// ```
    pub fn lost(&self) -> Lost {
        self.lost.clone()
    }

    /// Whether this term has ended.
    ///
    /// ```no_run
    /// # fn f(l: &etcdutil::Leadership) { if l.is_lost() { return; } }
    /// ```
    pub fn is_lost(&self) -> bool {
        self.lost.is_lost()
    }
}

/// What [`Election::run_while_leader`] does once the work returns by itself
/// while we still lead.
///
/// ```
/// let after = etcdutil::AfterWork::Requeue;
/// assert_ne!(after, etcdutil::AfterWork::Stop);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterWork {
    /// Concede (hand over to the next candidate) and run the work again
    /// when we lead again.
    Requeue,
    /// Close the election (resign and leave) and return.
    Stop,
}

impl Election {
    /// Waits until we lead; then our term, with the signal of its end.
    /// [`Error::Closed`](crate::Error::Closed) once the election has closed.
    ///
    /// ```no_run
    /// # async fn run(election: etcdutil::Election) -> etcdutil::Result<()> {
    /// let leadership = election.leadership().await?;
    /// while !leadership.is_lost() {
    ///     // one unit of the leader's work, fenced by leadership.rev()
    /// #   break;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn leadership(&self) -> Result<Leadership> {
        self.shared.wait_for_leadership().await
    }

    /// After a term of ours ended: the earliest instant another candidate
    /// can lead. A term lost with the lease (its keepalives unanswered)
    /// lasts in etcd until the lease can expire; one ended by a concede, a
    /// close or a deleted key may pass on at once. `None` while we lead or
    /// before our first term.
    ///
    /// ```no_run
    /// # fn f(e: &etcdutil::Election) {
    /// let grace = e
    ///     .next_leader_earliest()
    ///     .map(|at| at.saturating_duration_since(tokio::time::Instant::now()));
    /// # }
    /// ```
    pub fn next_leader_earliest(&self) -> Option<Instant> {
        self.shared.next_leader_earliest()
    }

    /// Campaigns, and runs `work` each time we lead, with our term.
    ///
    /// - When the term ends, `work`'s [`Leadership::lost`] fires at once;
    ///   `work` then has `grace` to return before it is dropped (cancelled).
    ///   How long it outlived the term is reported as the tracing event
    ///   "work outlived its term" and the histogram
    ///   `etcdutil_election_work_overrun_seconds`. The election campaigns
    ///   again meanwhile, and the work runs again when we next lead.
    /// - When `work` returns by itself while we lead, its [`AfterWork`] says
    ///   what follows: concede and run again when we next lead, or close the
    ///   election and return.
    ///
    /// Returns once the election is closed (by `AfterWork::Stop`, or by
    /// anyone).
    ///
    /// If `work` panics, the election is closed (our key resigned, so
    /// another candidate takes over at once and nothing is left leading
    /// with no work), then the panic goes on to the caller.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use etcdutil::AfterWork;
    /// # async fn run(election: etcdutil::Election) {
    /// election
    ///     .run_while_leader(Duration::from_secs(1), |leadership| async move {
    ///         let lost = leadership.lost();
    ///         tokio::select! {
    ///             _ = lost => {}                      // stop writing at once
    ///             _ = async { /* the nightly job */ } => {}
    ///         }
    ///         AfterWork::Requeue
    ///     })
    ///     .await;
    /// # }
    /// ```
    pub async fn run_while_leader<F, W>(&self, grace: Duration, mut work: F)
    where
        F: FnMut(Leadership) -> W,
        W: Future<Output = AfterWork>,
    {
        while let Ok(leadership) = self.leadership().await {
            let lost = leadership.lost();
            let rev = leadership.rev();
            let work = CatchUnwind(work(leadership));
            tokio::pin!(work);
            // The loss first: work that returns because the term ended
            // still has its overrun measured.
            let after = tokio::select! {
                biased;
                () = lost.wait() => None,
                after = &mut work => Some(after),
            };
            let after = match after {
                // Returned by itself; if the term ended meanwhile, there is
                // nothing to concede.
                Some(after) => after,
                None => {
                    let lost_at = Instant::now();
                    let after = tokio::time::timeout(grace, &mut work).await.ok();
                    let overrun = lost_at.elapsed();
                    telemetry::work_overrun(self.name(), overrun);
                    tracing::info!(
                        target: telemetry::TARGET,
                        election = %self.name(),
                        rev,
                        overrun_ms = overrun.as_secs_f64() * 1e3,
                        cancelled = after.is_none(),
                        "work outlived its term"
                    );
                    after.unwrap_or(Ok(AfterWork::Requeue))
                }
            };
            let after = match after {
                Ok(after) => after,
                Err(panic) => {
                    self.close().await;
                    std::panic::resume_unwind(panic);
                }
            };
            match after {
                AfterWork::Stop => {
                    self.close().await;
                    return;
                }
                AfterWork::Requeue => {
                    // Only if this term is still ours: a concede in a
                    // later term would hand over work not yet done.
                    if self.leader_key().is_some_and(|term| term.rev == rev) {
                        let _ = self.concede().await;
                    }
                }
            }
        }
    }
}

/// Polls a future, catching a panic as an `Err` (what `futures`'
/// `catch_unwind` does, without the dependency).
struct CatchUnwind<F>(F);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        // SAFETY: structural pinning: the inner future is never moved.
        let inner = unsafe { self.map_unchecked_mut(|this| &mut this.0) };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(output)) => std::task::Poll::Ready(Ok(output)),
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
    }
}
