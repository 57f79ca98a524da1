//! One `LeaseKeepAlive` stream per [`Client`](crate::Client), shared by every
//! lease of every [`Session`](crate::Session) made from it, as Go's lessor
//! does: 1,000 sessions cost one stream on one connection, not 1,000.
//!
//! The keeper only renews and reports; each session decides for itself when its
//! lease is lost (see `session.rs` for the deadline rule).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::transport::{Attempt, Transport, require_leader};
use crate::error::Error;
use crate::proto::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, lease_client::LeaseClient,
};
use crate::telemetry;

/// What the keeper tells a lease's owner. Only the latest news matters (a
/// newer renewal supersedes an older one, a loss is final), so this is one
/// small cell per lease rather than a queue: 10,000 sessions add up.
#[derive(Default)]
pub(crate) struct LeaseNews {
    latest: Mutex<Latest>,
    changed: Notify,
}

#[derive(Default)]
struct Latest {
    /// etcd renewed the lease for `.1` seconds in answer to the request sent at `.0`.
    renewed: Option<(Instant, i64)>,
    /// The lease is gone (etcd answered TTL <= 0) or the stream failed.
    lost: Option<Error>,
}

impl LeaseNews {
    fn renewed(&self, sent_at: Instant, ttl: i64) {
        let mut latest = self.latest.lock().expect("lease news lock");
        if latest.renewed.is_none_or(|(at, _)| at < sent_at) {
            latest.renewed = Some((sent_at, ttl));
        }
        drop(latest);
        self.changed.notify_one();
    }

    fn lost(&self, error: Error) {
        self.latest
            .lock()
            .expect("lease news lock")
            .lost
            .get_or_insert(error);
        self.changed.notify_one();
    }

    /// Waits for news (at once if some came since the last call).
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The news so far: the loss, if any, else the latest renewal not yet taken.
    pub(crate) fn take(&self) -> Result<Option<(Instant, i64)>, Error> {
        let mut latest = self.latest.lock().expect("lease news lock");
        match &latest.lost {
            Some(error) => Err(error.clone()),
            None => Ok(latest.renewed.take()),
        }
    }
}

enum Command {
    Add {
        id: i64,
        ttl: i64,
        granted_at: Instant,
        news: Arc<LeaseNews>,
    },
    Remove {
        id: i64,
    },
}

/// Handle to the client's keepalive task. The task ends when the last handle
/// (the last clone of the `Client`) is dropped.
#[derive(Clone)]
pub(crate) struct KeepAlive {
    commands: mpsc::UnboundedSender<Command>,
}

impl KeepAlive {
    pub(crate) fn start(transport: Transport) -> KeepAlive {
        let (commands, receiver) = mpsc::unbounded_channel();
        tokio::spawn(Keeper::new(transport).run(receiver));
        KeepAlive { commands }
    }

    /// Renews lease `id` (granted for `ttl` s by a request sent at
    /// `granted_at`) every `ttl / 3` until [`remove`](Self::remove)d or lost.
    pub(crate) fn add(&self, id: i64, ttl: i64, granted_at: Instant) -> Arc<LeaseNews> {
        let news = Arc::new(LeaseNews::default());
        let _ = self.commands.send(Command::Add {
            id,
            ttl,
            granted_at,
            news: news.clone(),
        });
        news
    }

    pub(crate) fn remove(&self, id: i64) {
        let _ = self.commands.send(Command::Remove { id });
    }
}

/// Renew at a third of the TTL, as etcd's own clients do: two renewals can be
/// missed before the lease is in danger.
pub fn renew_interval(ttl: i64) -> Duration {
    Duration::from_millis((ttl.max(1) as u64) * 1000 / 3)
}

struct Lease {
    ttl: i64,
    news: Arc<LeaseNews>,
    /// When each unanswered request for this lease was sent; etcd answers a
    /// lease's requests in order, so the front is the one an answer is for.
    in_flight: VecDeque<Instant>,
    next_renewal: Instant,
}

/// An answer from stream `generation`, or its end: the error, and how the
/// stream was opened.
type Answer = (u64, Result<LeaseKeepAliveResponse, (Error, Attempt)>);

struct Keeper {
    transport: Transport,
    leases: HashMap<i64, Lease>,
    schedule: BTreeSet<(Instant, i64)>,
    /// The open stream's requests. Its answers and its end come back on
    /// `answers`, tagged with its `generation`, so that answers from a stream
    /// already given up are ignored.
    stream: Option<mpsc::Sender<LeaseKeepAliveRequest>>,
    generation: u64,
    answers_tx: mpsc::UnboundedSender<Answer>,
    answers: mpsc::UnboundedReceiver<Answer>,
}

impl Keeper {
    fn new(transport: Transport) -> Keeper {
        let (answers_tx, answers) = mpsc::unbounded_channel();
        Keeper {
            transport,
            leases: HashMap::new(),
            schedule: BTreeSet::new(),
            stream: None,
            generation: 0,
            answers_tx,
            answers,
        }
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            let next = self.schedule.first().map(|(at, _)| *at);
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Add { id, ttl, granted_at, news }) => {
                        let next_renewal = granted_at + renew_interval(ttl);
                        self.schedule.insert((next_renewal, id));
                        let lease = Lease { ttl, news, in_flight: VecDeque::new(), next_renewal };
                        if let Some(old) = self.leases.insert(id, lease) {
                            self.schedule.remove(&(old.next_renewal, id));
                        }
                    }
                    Some(Command::Remove { id }) => self.forget(id),
                    None => return,
                },
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                    self.renew_due();
                }
                Some((generation, answer)) = self.answers.recv() => {
                    if generation == self.generation {
                        self.on_answer(answer).await;
                    }
                }
            }
            if self.leases.is_empty() {
                // Nothing to keep alive: close the stream rather than hold it idle.
                self.stream = None;
            }
        }
    }

    fn forget(&mut self, id: i64) {
        if let Some(lease) = self.leases.remove(&id) {
            self.schedule.remove(&(lease.next_renewal, id));
        }
    }

    fn renew_due(&mut self) {
        let now = Instant::now();
        while let Some(&(at, id)) = self.schedule.first() {
            if at > now {
                break;
            }
            self.schedule.pop_first();
            let requests = self.open_stream();
            let Some(lease) = self.leases.get_mut(&id) else {
                continue;
            };
            // A full buffer means etcd is not reading: skip this renewal, the
            // owner's deadline handles a stream that has stopped moving.
            if requests.try_send(LeaseKeepAliveRequest { id }).is_ok() {
                lease.in_flight.push_back(Instant::now());
            }
            lease.next_renewal = now + renew_interval(lease.ttl);
            self.schedule.insert((lease.next_renewal, id));
        }
    }

    /// The current stream's request sender, opening a stream if there is none.
    fn open_stream(&mut self) -> mpsc::Sender<LeaseKeepAliveRequest> {
        if let Some(requests) = &self.stream {
            return requests.clone();
        }
        self.generation += 1;
        let generation = self.generation;
        // Room for one renewal of 10,000 leases without blocking the keeper.
        let (requests, outgoing) = mpsc::channel(16 * 1024);
        let answers = self.answers_tx.clone();
        let mut client = LeaseClient::new(self.transport.clone());
        let attempt = self.transport.attempt();
        tokio::spawn(async move {
            let request = require_leader(ReceiverStream::new(outgoing));
            // etcd sends the response headers with its first answer, so this
            // resolves only once the first request has been answered.
            let mut stream = match client.lease_keep_alive(request).await {
                Ok(response) => response.into_inner(),
                Err(status) => {
                    let _ = answers.send((generation, Err((Error::from(status), attempt))));
                    return;
                }
            };
            loop {
                let answer = match stream.message().await {
                    Ok(Some(response)) => Ok(response),
                    Ok(None) => Err(Error::StreamEnded {
                        stream: "LeaseKeepAlive",
                    }),
                    Err(status) => Err(Error::from(status)),
                };
                let answer = answer.map_err(|error| (error, attempt.clone()));
                let end = answer.is_err();
                if answers.send((generation, answer)).is_err() || end {
                    return;
                }
            }
        });
        self.stream = Some(requests.clone());
        requests
    }

    async fn on_answer(&mut self, answer: Result<LeaseKeepAliveResponse, (Error, Attempt)>) {
        match answer {
            Ok(response) => {
                let id = response.id;
                let Some(lease) = self.leases.get_mut(&id) else {
                    return;
                };
                let Some(sent_at) = lease.in_flight.pop_front() else {
                    return;
                };
                if response.ttl <= 0 {
                    lease.news.lost(Error::LeaseExpired { lease: id });
                    self.forget(id);
                } else {
                    telemetry::keepalive_rtt(sent_at.elapsed());
                    lease.news.renewed(sent_at, response.ttl);
                }
            }
            Err((error, attempt)) => {
                self.stream = None;
                if self.transport.recover(&error, &attempt).await {
                    // Only the token had expired: the leases are fine (their
                    // deadlines still guard them); the next renewal reopens.
                    // Requests on the dead stream will never be answered.
                    for lease in self.leases.values_mut() {
                        lease.in_flight.clear();
                    }
                    return;
                }
                // The stream is gone: every lease it carried is reported lost,
                // and the next renewal opens a new stream.
                for (_, lease) in self.leases.drain() {
                    lease.news.lost(error.clone());
                }
                self.schedule.clear();
            }
        }
    }
}
