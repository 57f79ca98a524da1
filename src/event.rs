//! What an election tells its candidate: [`ElectionEvent`]s, in order, to an
//! [`EventObserver`] and to every [`Election::subscribe`](crate::Election::subscribe)r.

use std::sync::Arc;

use crate::error::Error;

/// One change in an election, as seen by one candidate.
///
/// ```
/// let observer: etcdutil::EventObserver = std::sync::Arc::new(|event: etcdutil::ElectionEvent| {
///     match (event.is_done, event.is_leader) {
///         (true, _) => println!("election closed"),
///         (false, true) => println!("we lead"),
///         (false, false) => println!("{} leads ({})", event.leader_data, event.leader_key),
///     }
/// });
/// ```
#[derive(Clone, Debug, Default)]
pub struct ElectionEvent {
    /// True if our candidate is the leader.
    pub is_leader: bool,
    /// True on the very last event, after [`Election::close`](crate::Election::close).
    pub is_done: bool,
    /// The leader's key (`/elections/<name>/<lease hex>`), if known.
    pub leader_key: String,
    /// The leader's data: its candidate name, or what it proclaimed.
    pub leader_data: String,
    /// The error this event reports, if any.
    pub err: Option<Error>,
}

/// The Go package's old name for [`ElectionEvent`].
///
/// ```
/// #[allow(deprecated)]
/// let event: etcdutil::Event = etcdutil::ElectionEvent::default();
/// ```
#[deprecated(note = "use ElectionEvent")]
pub type Event = ElectionEvent;

/// Called with every [`ElectionEvent`], in order, never concurrently.
///
/// ```
/// let observer: etcdutil::EventObserver = std::sync::Arc::new(|event| println!("{event:?}"));
/// ```
pub type EventObserver = Arc<dyn Fn(ElectionEvent) + Send + Sync>;
