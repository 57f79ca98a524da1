//! Who leads an election, watched from the client.
//!
//! The leader is the candidate key under `/elections/<name>/` with the lowest
//! create revision (etcd's `concurrency` rule). [`run_observe`] opens one
//! Watch on the candidates, reads them all as of the revision the watch
//! started at, then follows them with the watch, and reports each change of
//! leader (or of its data) in revision order, as of the revision of the event
//! that made it.
//!
//! Why not etcd's server-side `Observe` and `Campaign`: etcd serves their
//! waits from one internal watch stream, shared by every caller and
//! authenticated with the token of whichever call opened it. Once that token
//! expires, etcd refuses every new wait on it (3.5 answers "permission
//! denied"; 3.4 retries inside the server without end), so with auth on, an
//! election stalls after the first token lifetime. Our own Watch carries our
//! own token, renewed when etcd rejects it. The keys are the same as etcd's
//! Campaign writes, so `etcdctl elect` and other clients share the election.
//!
//! Following one Watch also spares each handover the read that etcd's
//! Observe does after every delete, and opening it before reading spares the
//! 100 ms that a watch opened behind etcd's current revision waits for etcd's
//! sync loop.

use crate::client::Client;
use crate::client::transport::Attempt;
use crate::client::txn::{oldest_first, prefix_range, range_op};
use crate::client::watches::KeyWatch;
use crate::error::{Error, Result};
use crate::proto::etcdserverpb::{
    RangeRequest, TxnRequest, WatchCreateRequest, response_op, watch_create_request,
};
use crate::proto::mvccpb::{Event, KeyValue, event};

/// A leader as etcd reports it.
///
/// ```no_run
/// # async fn f(client: etcdutil::Client) -> etcdutil::Result<()> {
/// if let Some(leader) = etcdutil::leader(&client, "jobs").await? {
///     println!("{} leads (key {}, fencing token {})", leader.data, leader.key, leader.rev);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    /// Its key, `/elections/<name>/<lease hex>`.
    pub key: String,
    /// Its data: candidate name or proclaimed value.
    pub data: String,
    /// The key's create revision: the fencing token of its term.
    pub rev: i64,
    /// The lease the key is attached to.
    pub lease: i64,
    /// The etcd revision this report is current as of: a report as of a
    /// later revision supersedes it.
    pub as_of_rev: i64,
}

impl Leader {
    pub(crate) fn new(kv: &KeyValue, as_of_rev: i64) -> Leader {
        Leader {
            key: String::from_utf8_lossy(&kv.key).into_owned(),
            data: String::from_utf8_lossy(&kv.value).into_owned(),
            rev: kv.create_revision,
            lease: kv.lease,
            as_of_rev,
        }
    }
}

/// One observation: the leader, or `None` when the election has no
/// candidate, as of revision `as_of_rev`.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The oldest candidate, if any.
    pub leader: Option<Leader>,
    /// The revision this is current as of.
    pub as_of_rev: i64,
}

/// What the observer tells.
#[derive(Clone, Debug)]
pub(crate) enum Observed {
    /// Its watch exists: every change from now on will be reported.
    Watching,
    /// The leader now.
    Report(Report),
}

/// Where the observer's reports go: `false` once nobody listens.
pub(crate) trait Sink {
    fn report(&mut self, report: Result<Observed>) -> bool;
}

impl<F: FnMut(Result<Observed>) -> bool> Sink for F {
    fn report(&mut self, report: Result<Observed>) -> bool {
        self(report)
    }
}

/// Reports the leader of the election `name` (its key prefix) to `sink`
/// until it stops listening (or the future is dropped): the current one
/// first, then every change. A failure is reported as an `Err` and the
/// watch reopened after `retry`; a renewed token or a compacted revision
/// reopens it at once, unreported.
///
/// An election polls this inside its own task, and the sink feeds its core
/// directly: no task and no channel of its own per election.
pub(crate) async fn run_observe(
    client: Client,
    name: String,
    mut sink: impl Sink,
    retry: std::time::Duration,
) {
    let mut renewed_last = false;
    loop {
        let attempt = client.attempt();
        let failure = match observe_once(&client, &name, &mut sink, &attempt).await {
            Ok(Some(failure)) => failure,
            Ok(None) => continue,
            Err(Stopped) => return,
        };
        if matches!(failure, Error::WatchCanceled { compact_revision, .. } if compact_revision > 0)
        {
            continue; // fell behind a compaction: read everything again
        }
        // Boxed: rare, and inline it would make every observer as large as
        // a token renewal's call.
        let renewed = Box::pin(client.recover(&failure, &attempt)).await;
        if renewed && !renewed_last {
            renewed_last = true;
            continue; // a renewed token: reopen at once, nothing to report
        }
        renewed_last = renewed;
        if !sink.report(Err(failure)) {
            return;
        }
        tokio::time::sleep(retry).await;
    }
}

/// The sink stopped listening.
pub(crate) struct Stopped;

/// Watches the candidates, reads them as of the watch's start, then
/// follows them; returns why it stopped, or `None` if calls moved to another
/// member during the read (start over there). Once following, a move is the
/// shared stream's business: it resumes the watch on the new member, and no
/// change is missed.
///
/// The watch comes first, from etcd's current revision: a watch asked to
/// start at a revision etcd has already passed (as one opened after a read
/// would be, whenever the election changed in between) is only caught up by
/// etcd's 100 ms watcher-sync loop, and a handover would wait for it.
async fn observe_once(
    client: &Client,
    name: &str,
    sink: &mut impl Sink,
    attempt: &Attempt,
) -> std::result::Result<Option<Error>, Stopped> {
    // Boxed: the read's call is large and only in flight at the start, while
    // an election follows for its whole life.
    // The turn first, then the start's large future (see `start`).
    let permit = client.call_permit().await;
    let started = Box::pin(start(client, name, sink, attempt)).await?;
    drop(permit);
    let (mut watch, mut follower) = match started {
        Ok(Some(following)) => following,
        Ok(None) => return Ok(None),
        Err(error) => return Ok(Some(error)),
    };
    loop {
        let events = match watch.next().await {
            Ok(events) => events,
            Err(error) => return Ok(Some(error)),
        };
        for report in follower.on_events(events) {
            if !sink.report(Ok(Observed::Report(report))) {
                return Err(Stopped);
            }
        }
    }
}

/// Opens the watch, reads the candidates as of its start and reports the
/// first leader: what to follow from, `None` if calls moved to another
/// member during the read, or why it failed.
async fn start(
    client: &Client,
    name: &str,
    sink: &mut impl Sink,
    attempt: &Attempt,
) -> std::result::Result<Result<Option<(KeyWatch, Follower)>>, Stopped> {
    let watch = Follower::watch_request(name);
    let watch = match client.watches().open(watch).await {
        Ok(watch) => watch,
        Err(error) => return Ok(Err(error)),
    };
    let revision = watch.created_rev;
    if !sink.report(Ok(Observed::Watching)) {
        return Err(Stopped);
    }
    let read = async {
        client
            .kv()
            .range(Follower::read_request(name, revision))
            .await
    };
    let read = tokio::select! {
        read = read => read,
        // Calls moved on (the session found this member silent): a read
        // stuck there would wait for HTTP/2 pings to find it dead.
        () = client.moved_away(attempt) => return Ok(Ok(None)),
    };
    let kvs = match read {
        Ok(response) => response.into_inner().kvs,
        Err(status) => return Ok(Err(status.into())),
    };
    let (follower, report) = Follower::new(name, revision, kvs);
    if !sink.report(Ok(Observed::Report(report))) {
        return Err(Stopped);
    }
    Ok(Ok(Some((watch, follower))))
}

/// Who leads, from a read of the candidates and the watch's events after
/// it: the observer's decisions, with no I/O, so the simulator follows an
/// election exactly as `run_observe` does.
///
/// The leader is the candidate key under `<name>/` with the lowest create
/// revision. A report goes out only when the leader, or its data, changed,
/// as of the revision of the event that changed it.
#[derive(Clone, Debug)]
pub struct Follower {
    /// The read's revision: events up to it are in the read already.
    read_rev: i64,
    /// The candidates, oldest first.
    candidates: Vec<KeyValue>,
    /// The last report's leader.
    reported: Option<Leader>,
}

impl Follower {
    /// The Watch to open first: every candidate key, from now on.
    pub fn watch_request(name: &str) -> WatchCreateRequest {
        let (key, range_end) = prefix_range(&format!("{name}/"));
        WatchCreateRequest {
            key: key.into(),
            range_end: range_end.into(),
            ..Default::default()
        }
    }

    /// The read that follows: every candidate, oldest first, as of the
    /// revision the watch was created at. Serializable: the member that
    /// created the watch there has applied it, and this spares a round of
    /// consensus.
    pub fn read_request(name: &str, revision: i64) -> RangeRequest {
        let (key, range_end) = prefix_range(&format!("{name}/"));
        RangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            revision,
            serializable: true,
            ..oldest_first(0)
        }
    }

    /// Follows from the read's answer, `kvs` as of `revision`; the first report.
    pub fn new(name: &str, revision: i64, kvs: Vec<KeyValue>) -> (Follower, Report) {
        let _ = name;
        let mut follower = Follower {
            read_rev: revision,
            candidates: kvs,
            reported: None,
        };
        let report = follower.report(revision);
        follower.reported = report.leader.clone();
        (follower, report)
    }

    /// The watch's next events, in revision order: a report for each
    /// revision after which the leader, or its data, changed. A batch may
    /// hold many revisions (etcd replays a resumed watch's history in one
    /// response): each change is still reported once, as of its revision.
    pub fn on_events(&mut self, events: Vec<Event>) -> Vec<Report> {
        // Changes up to the read's revision are in the read already.
        let read_rev = self.read_rev;
        let revision = |e: &Event| e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
        let mut events = events
            .into_iter()
            .filter(|e| revision(e) > read_rev)
            .peekable();
        let mut reports = Vec::new();
        while let Some(event) = events.next() {
            let rev = revision(&event);
            self.apply(event);
            // A revision's events come together: report once it is whole.
            if events.peek().is_some_and(|next| revision(next) == rev) {
                continue;
            }
            let report = self.report(rev);
            let same = match (&report.leader, &self.reported) {
                (Some(a), Some(b)) => (&a.key, &a.data, a.rev) == (&b.key, &b.data, b.rev),
                (None, None) => true,
                _ => false,
            };
            if !same {
                self.reported = report.leader.clone();
                reports.push(report);
            }
        }
        reports
    }

    fn apply(&mut self, event: Event) {
        let Some(kv) = event.kv else { return };
        self.candidates.retain(|candidate| candidate.key != kv.key);
        if event.r#type == event::EventType::Put as i32 {
            let at = self
                .candidates
                .partition_point(|c| (c.create_revision, &c.key) < (kv.create_revision, &kv.key));
            self.candidates.insert(at, kv);
        }
        // Mostly one or two candidates, kept for the election's life.
        self.candidates.shrink_to_fit();
    }

    fn report(&self, as_of_rev: i64) -> Report {
        Report {
            leader: self.candidates.first().map(|kv| Leader::new(kv, as_of_rev)),
            as_of_rev,
        }
    }
}

/// Waits until every key in `keys` (all there as of revision `rev`) is deleted.
pub(crate) async fn until_deleted(
    client: Client,
    mut keys: Vec<Vec<u8>>,
    mut rev: i64,
    retry: std::time::Duration,
) {
    loop {
        let attempt = client.attempt();
        let error = match watch_deletes(&client, &mut keys, rev).await {
            Ok(()) => return,
            Err(error) => error,
        };
        if !client.recover(&error, &attempt).await {
            tokio::time::sleep(retry).await;
        }
        // Unknown: watch them all again from where we were.
        let Ok(response) = client.kv().txn(left_of(&keys)).await else {
            continue;
        };
        let response = response.into_inner();
        rev = response.header.map_or(rev, |h| h.revision);
        let mut counts = response.responses.into_iter().map(|r| match r.response {
            Some(response_op::Response::ResponseRange(range)) => range.count,
            _ => 1,
        });
        let left: Vec<Vec<u8>> = keys
            .into_iter()
            .filter(|_| counts.next().unwrap_or(1) > 0)
            .collect();
        keys = left;
        if keys.is_empty() {
            return;
        }
    }
}

/// Which of `keys` are left, read as of one revision, to watch on from
/// there: reads at different revisions could miss a delete between them.
/// The answer has one count per key, in order.
pub fn left_of(keys: &[Vec<u8>]) -> TxnRequest {
    let reads = keys
        .iter()
        .map(|key| {
            range_op(RangeRequest {
                key: key.clone().into(),
                count_only: true,
                ..Default::default()
            })
        })
        .collect();
    TxnRequest {
        success: reads,
        ..Default::default()
    }
}

/// Watches `keys` from after `rev`, removing each as it is deleted; Ok once
/// none is left.
async fn watch_deletes(client: &Client, keys: &mut Vec<Vec<u8>>, rev: i64) -> Result<()> {
    let mut watch = client.watches().open(deletes_watch(keys, rev)).await?;
    while !keys.is_empty() {
        for event in watch.next().await? {
            if let Some(kv) = event.kv {
                keys.retain(|key| *key != kv.key);
            }
        }
    }
    Ok(())
}

/// One watch of the deletes of `keys` after revision `rev`, over the range
/// that spans them.
pub fn deletes_watch(keys: &[Vec<u8>], rev: i64) -> WatchCreateRequest {
    let first = keys.iter().min().cloned().unwrap_or_default();
    let mut last = keys.iter().max().cloned().unwrap_or_default();
    last.push(0); // the range end is exclusive
    WatchCreateRequest {
        key: first.into(),
        range_end: last.into(),
        start_revision: rev + 1,
        filters: vec![watch_create_request::FilterType::Noput as i32],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str, create: i64, rev: i64) -> Event {
        Event {
            r#type: event::EventType::Put as i32,
            kv: Some(KeyValue {
                key: key.to_owned().into(),
                value: value.to_owned().into(),
                create_revision: create,
                mod_revision: rev,
                lease: 1,
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    #[test]
    fn a_batch_of_revisions_is_reported_revision_by_revision() {
        let name = "/elections/jobs";
        let leader = format!("{name}/1");
        let (mut follower, first) =
            Follower::new(name, 16, vec![put(&leader, "v0", 10, 16).kv.unwrap()]);
        assert_eq!(first.leader.map(|l| l.data), Some("v0".into()));
        // A resumed watch's replay: three proclaims, one younger candidate
        // (no change of leader), and an event the read already had.
        let batch = vec![
            put(&leader, "v0", 10, 16),
            put(&leader, "v1", 10, 17),
            put(&format!("{name}/2"), "other", 18, 18),
            put(&leader, "v2", 10, 19),
            put(&leader, "v3", 10, 20),
        ];
        let reports = follower.on_events(batch);
        let seen: Vec<(String, i64)> = reports
            .iter()
            .map(|r| (r.leader.as_ref().unwrap().data.clone(), r.as_of_rev))
            .collect();
        assert_eq!(
            seen,
            [("v1".into(), 17), ("v2".into(), 19), ("v3".into(), 20)]
        );
    }
}
