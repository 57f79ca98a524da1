//! [`Lost`]: the signal that a leadership or a lock ended.
//!
//! A `tokio::sync::watch` flag rather than tokio-util's `CancellationToken`:
//! the crate already depends on tokio's `sync`, a watch is one small
//! allocation, and setting it never waits for a reader. So holding or
//! dropping a [`Lost`] can never delay a step-down.

use std::future::{Future, IntoFuture};
use std::pin::Pin;

use tokio::sync::watch;

/// Completes the moment a leadership (or a lock) it was handed with is lost:
/// in the same call that turns `is_leader()` false, whatever the cause.
///
/// Cheap to clone; every clone sees the same loss. Dropping one changes
/// nothing. Await it (or [`Lost::wait`]) to be woken, or poll
/// [`Lost::is_lost`].
///
/// ```no_run
/// # async fn run(lost: etcdutil::Lost) {
/// tokio::select! {
///     _ = lost => println!("lost, stop writing"),
///     _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
/// }
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Lost {
    receiver: watch::Receiver<bool>,
}

impl Lost {
    /// Whether it is lost already. Lock-free.
    ///
    /// ```no_run
    /// # fn f(lost: &etcdutil::Lost) { if lost.is_lost() { /* stop */ } }
    /// ```
    pub fn is_lost(&self) -> bool {
        // A dropped sender (the election or lock is gone) counts as lost.
        *self.receiver.borrow() || self.receiver.has_changed().is_err()
    }

    /// Waits until it is lost. Returns at once if it is.
    ///
    /// ```no_run
    /// # async fn f(lost: etcdutil::Lost) { lost.wait().await; }
    /// ```
    pub async fn wait(&self) {
        let mut receiver = self.receiver.clone();
        // Err: the sender is gone, which is a loss too.
        let _ = receiver.wait_for(|lost| *lost).await;
    }
}

impl IntoFuture for Lost {
    type Output = ();
    type IntoFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.wait().await })
    }
}

/// The side that loses: kept by the election (or lock) while a term lasts.
#[derive(Debug)]
pub(crate) struct LostSender {
    sender: watch::Sender<bool>,
}

impl LostSender {
    /// A new, not yet lost, signal and its first receiver.
    pub(crate) fn new() -> (LostSender, Lost) {
        let (sender, receiver) = watch::channel(false);
        (LostSender { sender }, Lost { receiver })
    }

    /// Another receiver of the same signal.
    pub(crate) fn subscribe(&self) -> Lost {
        Lost {
            receiver: self.sender.subscribe(),
        }
    }

    /// Marks it lost and wakes every waiter. Never blocks.
    pub(crate) fn lose(&self) {
        self.sender.send_replace(true);
    }
}

impl Drop for LostSender {
    fn drop(&mut self) {
        self.lose();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lose_wakes_every_clone_and_later_waiters() {
        let (sender, lost) = LostSender::new();
        let other = sender.subscribe();
        assert!(!lost.is_lost());
        let waiter = tokio::spawn(lost.clone().into_future());
        sender.lose();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("joined");
        assert!(lost.is_lost() && other.is_lost());
        lost.wait().await;
    }

    #[tokio::test]
    async fn dropping_the_sender_counts_as_lost() {
        let (sender, lost) = LostSender::new();
        drop(sender);
        assert!(lost.is_lost());
        lost.wait().await;
    }
}
