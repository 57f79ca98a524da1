//! The server-side engine: etcd's own `Campaign` enters the race and etcd's
//! own `Observe` follows it, for those who want the campaign logic etcd's
//! server runs and nothing on the wire but the Election service (and the
//! lease calls). The same core decides (`core.rs`), so the rules of
//! `is_leader()` are the default engine's.
//!
//! **Unsafe with user/password auth** (etcd issue 17502): etcd serves every
//! Campaign's and Observe's wait from one internal watch stream, authorised
//! with the token of whichever call opened it; once that token expires, every
//! new wait fails. [`check`] refuses the engine on such a client. With a
//! client certificate the opener's certificate name authorises every wait,
//! so it is safe only when all candidates share one identity.
//!
//! What etcd's server does not do, this engine does:
//! - **Cancel on loss.** etcd's Campaign does not abort when its lease is
//!   lost; the election drops its Campaign call the moment the core leaves
//!   `Entering` (lease lost, close). etcd's server then resigns the key
//!   itself; a close on a shared session also deletes it, in case the
//!   cancel raced the put.
//! - **An Observe that ends with status OK** (etcd does so when its internal
//!   watch fails) is a failure: reported, and reopened after a pause.
//! - **Go-package candidates** (`/elections/<name><lease hex>`), which
//!   etcd's Campaign cannot see: one read of their range as of Campaign's
//!   answer, deferred to as the default engine does.

use crate::client::Client;
use crate::client::transport::Attempt;
use crate::election::candidacy::go_page;
use crate::election::core::Entered;
use crate::election::observe::{Leader, Observed, Report, Sink, Stopped};
use crate::error::{Error, Result};
use crate::proto::etcdserverpb::DeleteRangeRequest;
use crate::proto::v3electionpb::{CampaignRequest, LeaderRequest};

/// Refuses the server-side engine on a client with a user and password.
pub(crate) fn check(client: &Client) -> Result<()> {
    if client.config().username.is_none() {
        return Ok(());
    }
    Err(Error::InvalidArgument {
        name: "ElectionConfig.engine",
        value: "Engine::ServerSide".into(),
        expected: "Engine::ClientSide (the default) on a client with a user and password: \
                   etcd's server-side Campaign and Observe wait on one internal watch \
                   authorised with the first caller's token, and fail for everyone once it \
                   expires (etcd issue 17502)",
    })
}

/// Campaigns with etcd's Campaign for `lease`; once it answers (we lead in
/// etcd's view), reads the Go candidates older than our key.
pub(crate) async fn campaign(
    client: &Client,
    name: &str,
    lease: i64,
    candidate: &str,
) -> Result<Entered> {
    let request = CampaignRequest {
        name: name.to_owned().into(),
        lease,
        value: candidate.to_owned().into(),
    };
    let response = client.election().campaign(request).await?.into_inner();
    let term = response.leader.ok_or_else(|| Error::UnexpectedResponse {
        what: "Campaign answered without a leader key".into(),
    })?;
    // Campaign's header is its first step's (the put's), older than the
    // moment we became the oldest key: ask etcd's Leader, and take its
    // answer as of its own header's revision. A report older than what the
    // core acted on would be ignored, and a stalled Observe would then keep
    // us from leading.
    let leader = client
        .election()
        .leader(LeaderRequest {
            name: name.to_owned().into(),
        })
        .await?
        .into_inner();
    let as_of_rev = leader.header.map_or(0, |h| h.revision);
    let mut entered = Entered {
        leader: leader.kv.map(|kv| Leader::new(&kv, as_of_rev)),
        our_rev: term.rev,
        go_older: Vec::new(),
        as_of_rev,
    };
    let mut next = Some(crate::election::candidacy::go_read(
        name, as_of_rev, 1, term.rev,
    ));
    while let Some(read) = next {
        let page = client.kv().range(read).await?.into_inner();
        next = go_page(name, page, &mut entered);
    }
    Ok(entered)
}

/// Deletes our key on `lease`, after a Campaign was dropped on a close: etcd
/// resigns a cancelled Campaign itself, but not one cancelled while its put
/// was on the way.
pub(crate) async fn withdraw(client: &Client, key: String) -> Result<()> {
    client
        .kv()
        .delete_range(DeleteRangeRequest {
            key: key.into(),
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// Reports the leader of `name` as etcd's Observe tells it, until the sink
/// stops listening: reopened after `retry` when it fails or ends.
pub(crate) async fn run_observe(
    client: Client,
    name: String,
    mut sink: impl Sink,
    retry: std::time::Duration,
) {
    let mut renewed_last = false;
    loop {
        let attempt = client.attempt();
        // etcd's own watch serves Observe: nothing to wait for.
        if !sink.report(Ok(Observed::Watching)) {
            return;
        }
        let failure = match follow(&client, &name, &mut sink, &attempt).await {
            Ok(failure) => failure,
            Err(Stopped) => return,
        };
        let renewed = Box::pin(client.recover(&failure, &attempt)).await;
        if renewed && !renewed_last {
            renewed_last = true;
            continue;
        }
        renewed_last = renewed;
        if !sink.report(Err(failure)) {
            return;
        }
        tokio::time::sleep(retry).await;
    }
}

/// One Observe stream: each leader as of its answer's revision; why it ended.
async fn follow(
    client: &Client,
    name: &str,
    sink: &mut impl Sink,
    attempt: &Attempt,
) -> std::result::Result<Error, Stopped> {
    let _ = attempt;
    let request = LeaderRequest {
        name: name.to_owned().into(),
    };
    let mut stream = match client.election().observe(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return Ok(status.into()),
    };
    loop {
        match stream.message().await {
            Ok(Some(response)) => {
                // etcd's answer, for what it is: the leader as of its header.
                let as_of_rev = response.header.map_or(0, |h| h.revision);
                let leader = response.kv.map(|kv| Leader::new(&kv, as_of_rev));
                let report = Report { leader, as_of_rev };
                if !sink.report(Ok(Observed::Report(report))) {
                    return Err(Stopped);
                }
            }
            // etcd ends an Observe with OK when its internal watch fails.
            Ok(None) => return Ok(Error::StreamEnded { stream: "Observe" }),
            Err(status) => return Ok(status.into()),
        }
    }
}
