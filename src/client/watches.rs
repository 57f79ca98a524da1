//! One `Watch` stream per [`Client`](crate::Client), shared by every watch
//! made from it, as etcd's Go watcher does: 10,000 elections cost etcd one
//! gRPC stream, not 10,000.
//!
//! Each watch has an id of ours, stable across streams. When the stream
//! fails (a member down, calls moved to another member, a renewed token),
//! it is opened again as a whole, and every watch is created again from its
//! own next revision, so its owner sees each event once, in order, with
//! nothing missed. A watch etcd cancels (a compaction past its revision, a
//! refusal) ends alone; the others go on.
//!
//! A new watch is created on the open stream. etcd checks its permission
//! with the token the *stream* was opened with, so a refusal on a stream
//! older than a token's life may only mean that token expired: the watch is
//! tried again once on a stream opened with a renewed token before its
//! refusal counts. A watch whose first creation fails because the stream
//! failed is told so (its owner reports it and retries), rather than left
//! waiting.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Streaming;

use crate::client::transport::{Attempt, Transport, require_leader};
use crate::error::{Error, Result};
use crate::proto::etcdserverpb::{
    WatchCancelRequest, WatchCreateRequest, WatchRequest, WatchResponse, watch_client::WatchClient,
    watch_request,
};
use crate::proto::mvccpb::Event;

/// Pause before the stream is opened again after a failure, unless a
/// renewed token or a move to another member says to try at once.
const RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// Handle to the client's watch task. The task ends when the last handle
/// (the last clone of the `Client`) is dropped.
#[derive(Clone)]
pub(crate) struct Watches {
    commands: mpsc::UnboundedSender<Command>,
    next_id: Arc<AtomicU64>,
}

enum Command {
    Open {
        id: u64,
        create: WatchCreateRequest,
        created: oneshot::Sender<Result<i64>>,
        events: Outbox,
    },
    Cancel {
        id: u64,
    },
}

impl Watches {
    pub(crate) fn start(transport: Transport) -> Watches {
        let (commands, receiver) = mpsc::unbounded_channel();
        tokio::spawn(Hub::new(transport).run(receiver));
        Watches {
            commands,
            next_id: Arc::default(),
        }
    }

    /// Creates the watch `create` asks for on the shared stream; returns
    /// once etcd created it.
    pub(crate) async fn open(&self, create: WatchCreateRequest) -> Result<KeyWatch> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (created_tx, created) = oneshot::channel();
        let events = Arc::new(Inbox::default());
        let mut watch = KeyWatch {
            created_rev: 0,
            id,
            events: events.clone(),
            commands: self.commands.clone(),
        };
        let open = Command::Open {
            id,
            create,
            created: created_tx,
            events: Outbox(events),
        };
        if self.commands.send(open).is_err() {
            return Err(Error::StreamEnded { stream: "Watch" });
        }
        // Dropped before it is created: the drop cancels it.
        watch.created_rev = created
            .await
            .map_err(|_| Error::StreamEnded { stream: "Watch" })??;
        Ok(watch)
    }
}

/// One watch on the client's shared stream: its events, batch by batch.
/// Dropping it cancels the watch.
pub(crate) struct KeyWatch {
    /// The revision etcd was at when it created the watch.
    pub(crate) created_rev: i64,
    id: u64,
    events: Arc<Inbox>,
    commands: mpsc::UnboundedSender<Command>,
}

impl KeyWatch {
    /// The next events (never empty); an error once etcd cancels the watch.
    /// Cancel-safe: nothing is taken until it returns.
    pub(crate) async fn next(&mut self) -> Result<Vec<Event>> {
        loop {
            {
                let mut inbox = self.events.queue.lock().expect("inbox lock");
                if let Some(events) = inbox.items.pop_front() {
                    if inbox.items.is_empty() {
                        // Idle most of its life: keep no queue meanwhile.
                        inbox.items = VecDeque::new();
                    }
                    return events;
                }
                if inbox.closed {
                    return Err(Error::StreamEnded { stream: "Watch" });
                }
            }
            // A send between the check and here leaves a permit: not missed.
            self.events.ready.notified().await;
        }
    }
}

/// One watch's events on their way from the hub to its owner: a queue and a
/// wake-up, a fraction of a channel's size (a client has 10,000 watches).
#[derive(Default)]
struct Inbox {
    queue: std::sync::Mutex<Queue>,
    ready: tokio::sync::Notify,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Result<Vec<Event>>>,
    /// The hub let the watch go: nothing more will come.
    closed: bool,
}

/// The hub's end of an [`Inbox`]; dropping it tells the owner nothing more
/// will come.
struct Outbox(Arc<Inbox>);

impl Outbox {
    fn send(&self, events: Result<Vec<Event>>) {
        self.0
            .queue
            .lock()
            .expect("inbox lock")
            .items
            .push_back(events);
        self.0.ready.notify_one();
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.0.queue.lock().expect("inbox lock").closed = true;
        self.0.ready.notify_one();
    }
}

impl Drop for KeyWatch {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Cancel { id: self.id });
    }
}

/// One watch, as the task keeps it across streams.
struct Sub {
    create: WatchCreateRequest,
    /// The revision its next event will have: where it resumes on a new
    /// stream. 0 until etcd created it.
    next_rev: i64,
    /// Until etcd created it the first time.
    created: Option<oneshot::Sender<Result<i64>>>,
    events: Outbox,
    /// Created on the open stream (under [`etcd_watch_id`] of its id).
    on_stream: bool,
}

/// Stream `generation`, connected (etcd answered its first create), or
/// its failure to connect.
type Connected = (u64, Result<Streaming<WatchResponse>>);

/// The open stream: where its requests go, and how it was opened.
struct Stream {
    requests: mpsc::UnboundedSender<WatchRequest>,
    attempt: Attempt,
}

struct Hub {
    transport: Transport,
    subs: BTreeMap<u64, Sub>,
    /// Our creates sent on the open stream and not yet answered, in order:
    /// etcd answers a stream's creates in the order it got them.
    pending: VecDeque<u64>,
    stream: Option<Stream>,
    /// The open stream's answers, polled by this task itself: an event goes
    /// from the connection to its watch's owner with no task in between.
    responses: Option<Streaming<WatchResponse>>,
    generation: u64,
    connected_tx: mpsc::UnboundedSender<Connected>,
    connected: mpsc::UnboundedReceiver<Connected>,
    /// When to open the stream again after a failure.
    reopen_at: Option<Instant>,
    /// The stream opened with a token renewed after a refusal: a refusal on
    /// it is meant.
    renewed_generation: Option<u64>,
}

impl Hub {
    fn new(transport: Transport) -> Hub {
        let (connected_tx, connected) = mpsc::unbounded_channel();
        Hub {
            transport,
            subs: BTreeMap::new(),
            pending: VecDeque::new(),
            stream: None,
            responses: None,
            generation: 0,
            connected_tx,
            connected,
            reopen_at: None,
            renewed_generation: None,
        }
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            let attempt = self.stream.as_ref().map(|s| s.attempt.clone());
            let reopen_at = self.reopen_at;
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Open { id, create, created, events }) => {
                        let sub = Sub { create, next_rev: 0, created: Some(created), events, on_stream: false };
                        self.subs.insert(id, sub);
                        if self.stream.is_some() {
                            self.send_create(id);
                        } else if self.reopen_at.is_none() {
                            self.open_stream();
                        }
                    }
                    Some(Command::Cancel { id }) => self.cancel(id),
                    None => return,
                },
                Some((generation, connected)) = self.connected.recv() => {
                    if generation == self.generation && self.stream.is_some() {
                        match connected {
                            Ok(responses) => self.responses = Some(responses),
                            Err(error) => self.on_failure(error).await,
                        }
                    }
                }
                message = async { self.responses.as_mut().expect("guarded").message().await }, if self.responses.is_some() => {
                    match message {
                        Ok(Some(response)) => self.on_response(response).await,
                        Ok(None) => self.on_failure(Error::StreamEnded { stream: "Watch" }).await,
                        Err(status) => self.on_failure(status.into()).await,
                    }
                }
                // Calls moved to another member (the session found this one
                // silent): follow them now, rather than once pings find the
                // stream dead.
                () = async { attempt.as_ref().expect("guarded").moved_away(&self.transport).await }, if attempt.is_some() => {
                    self.close_stream();
                    self.open_stream();
                }
                () = tokio::time::sleep_until(reopen_at.unwrap_or_else(Instant::now)), if reopen_at.is_some() => {
                    self.reopen_at = None;
                    if !self.subs.is_empty() {
                        self.open_stream();
                    }
                }
            }
            if self.subs.is_empty() {
                // Nothing to watch: close the stream rather than hold it idle.
                self.close_stream();
            }
        }
    }

    fn close_stream(&mut self) {
        self.stream = None;
        self.responses = None;
        self.pending.clear();
        for sub in self.subs.values_mut() {
            sub.on_stream = false;
        }
    }

    /// Opens a stream on the member calls go to now, and creates every
    /// watch on it, each from its own next revision.
    fn open_stream(&mut self) {
        self.close_stream();
        self.generation += 1;
        let generation = self.generation;
        let (requests, outgoing) = mpsc::unbounded_channel();
        let connected = self.connected_tx.clone();
        let mut client = WatchClient::new(self.transport.clone());
        let attempt = self.transport.attempt();
        // Connecting waits for etcd's first answer (it sends the response
        // headers with it): not in this task, which keeps serving meanwhile.
        tokio::spawn(async move {
            let request = require_leader(UnboundedReceiverStream::new(outgoing));
            let answer = client.watch(request).await;
            let answer = answer.map(|r| r.into_inner()).map_err(Error::from);
            let _ = connected.send((generation, answer));
        });
        self.stream = Some(Stream { requests, attempt });
        let ids: Vec<u64> = self.subs.keys().copied().collect();
        for id in ids {
            self.send_create(id);
        }
    }

    fn send_create(&mut self, id: u64) {
        let (Some(stream), Some(sub)) = (&self.stream, self.subs.get(&id)) else {
            return;
        };
        let mut create = sub.create.clone();
        if sub.next_rev > 0 {
            create.start_revision = sub.next_rev;
        }
        // Our own id, never 0: etcd 3.5 answers a refused create with the id
        // the request asked for, and then forgets that id on the stream, so a
        // refusal asked as 0 would silence the live watch whose id etcd chose
        // as 0 (its events then wait forever). Ids of ours are unique here.
        create.watch_id = etcd_watch_id(id);
        let request = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
        };
        if stream.requests.send(request).is_ok() {
            self.pending.push_back(id);
        }
    }

    /// Forgets watch `id`, and cancels it at etcd if it was created there
    /// (one still on its way is cancelled when its creation is answered).
    fn cancel(&mut self, id: u64) {
        if self.subs.remove(&id).is_some_and(|sub| sub.on_stream) {
            self.send_cancel(etcd_watch_id(id));
        }
    }

    async fn on_response(&mut self, response: WatchResponse) {
        if response.created {
            return self.on_created(response).await;
        }
        // A watch we cancelled, or a progress notice: nothing to tell.
        let id = our_watch_id(response.watch_id);
        let Some(sub) = self.subs.get_mut(&id).filter(|sub| sub.on_stream) else {
            return;
        };
        if response.canceled || response.compact_revision > 0 {
            // This watch alone ends (say, compacted past its revision).
            let sub = self.subs.remove(&id).expect("present");
            sub.events.send(Err(canceled(response)));
            return;
        }
        if let Some(last) = response.events.last().and_then(|e| e.kv.as_ref()) {
            sub.next_rev = last.mod_revision + 1;
            sub.events.send(Ok(response.events));
        }
    }

    async fn on_created(&mut self, response: WatchResponse) {
        let Some(id) = self.pending.pop_front() else {
            return;
        };
        let Some(sub) = self.subs.get_mut(&id) else {
            // Cancelled while its create was on the way.
            if !response.canceled {
                self.send_cancel(response.watch_id);
            }
            return;
        };
        let revision = response.header.as_ref().map_or(0, |h| h.revision);
        if response.canceled {
            // etcd checks a create with the token the stream was opened
            // with, which may have expired since: renew it and try again on a
            // new stream before the refusal counts. A refusal on a stream
            // opened with a renewed token is meant.
            if self.transport.has_credentials() && self.renewed_generation != Some(self.generation)
            {
                let attempt = self.stream.as_ref().map(|s| s.attempt.clone());
                if let Some(attempt) = attempt {
                    let _ = self.transport.renew_token_of(&attempt).await;
                }
                self.open_stream();
                self.renewed_generation = Some(self.generation);
                return;
            }
            let sub = self.subs.remove(&id).expect("present");
            let error = canceled(response);
            match sub.created {
                Some(created) => drop(created.send(Err(error))),
                None => sub.events.send(Err(error)),
            }
            return;
        }
        sub.on_stream = true;
        if sub.next_rev == 0 {
            sub.next_rev = match sub.create.start_revision {
                0 => revision + 1,
                start => start,
            };
        }
        if let Some(created) = sub.created.take() {
            let _ = created.send(Ok(revision));
        }
    }

    fn send_cancel(&self, etcd_id: i64) {
        if let Some(stream) = &self.stream {
            let cancel = WatchRequest {
                request_union: Some(watch_request::RequestUnion::CancelRequest(
                    WatchCancelRequest { watch_id: etcd_id },
                )),
            };
            let _ = stream.requests.send(cancel);
        }
    }

    /// The stream failed: watches etcd never created are told (their owners
    /// report it and retry); the others resume on the next stream.
    async fn on_failure(&mut self, error: Error) {
        let attempt = self.stream.as_ref().map(|s| s.attempt.clone());
        self.close_stream();
        let renewed = match &attempt {
            Some(attempt) => self.transport.recover(&error, attempt).await,
            None => false,
        };
        tracing::debug!(target: crate::telemetry::TARGET, %error, renewed, "watch stream failed; reopening");
        let never_created: Vec<u64> = self
            .subs
            .iter()
            .filter(|(_, sub)| sub.created.is_some())
            .map(|(id, _)| *id)
            .collect();
        for id in never_created {
            if let Some(sub) = self.subs.remove(&id)
                && let Some(created) = sub.created
            {
                let _ = created.send(Err(error.clone()));
            }
        }
        if self.subs.is_empty() {
            return;
        }
        let moved = attempt.is_some_and(|attempt| attempt.has_moved(&self.transport));
        if renewed || moved {
            self.open_stream();
        } else {
            self.reopen_at = Some(Instant::now() + RETRY);
        }
    }
}

/// The id a watch asks etcd for: ours, plus one (0 asks etcd to choose).
fn etcd_watch_id(id: u64) -> i64 {
    i64::try_from(id).map_or(i64::MAX, |id| id.saturating_add(1))
}

/// Ours, from the id etcd answers with ([`etcd_watch_id`] undone); none of
/// ours for 0 or -1.
fn our_watch_id(etcd_id: i64) -> u64 {
    u64::try_from(etcd_id - 1).unwrap_or(u64::MAX)
}

/// The error of a watch etcd canceled (or started past a compaction).
pub(crate) fn canceled(response: WatchResponse) -> Error {
    Error::WatchCanceled {
        reason: response.cancel_reason,
        compact_revision: response.compact_revision,
    }
}
