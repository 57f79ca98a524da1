//! Leading as a scope against a real etcd: `Leadership`'s loss signal fires
//! with `is_leader()` turning false, whatever the cause, and
//! `run_while_leader` runs work only while we lead.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use etcdutil::proto::etcdserverpb::{DeleteRangeRequest, LeaseRevokeRequest, RangeRequest};
use etcdutil::{AfterWork, Client, Election, Error, Leadership, new_election};
use tokio::sync::mpsc;

async fn leader(client: &Client, name: &str, id: &str, ttl: i64) -> Election {
    let (observer, _) = recorder();
    new_election(client, config(name, id, ttl, observer))
        .await
        .unwrap_or_else(|e| panic!("candidate {id}: {e}"))
}

/// Waits for `leadership`'s loss; asserts `is_leader()` was false by then.
async fn lost_with_is_leader(election: &Arc<Election>, leadership: &Leadership, what: &str) {
    within(10.0, what, leadership.lost().wait()).await;
    assert!(
        !election.is_leader(),
        "{what}: lost fired while is_leader()"
    );
    assert!(leadership.is_lost());
}

async fn key_exists(client: &Client, key: &str) -> bool {
    let response = client
        .kv()
        .range(RangeRequest {
            key: key.to_owned().into(),
            ..Default::default()
        })
        .await
        .expect("read the key")
        .into_inner();
    response.count > 0
}

#[tokio::test]
async fn leadership_is_the_term_and_its_loss_fires_with_is_leader() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let other = self::client(&etcd).await;
    let name = unique("scope");
    let election = Arc::new(leader(&client, &name, "a", 5).await);
    let leadership = within(5.0, "leadership", election.leadership())
        .await
        .unwrap();
    let term = election.leader_key().expect("leading");
    assert_eq!(leadership.rev(), term.rev);
    assert_eq!(leadership.lease(), term.lease);
    assert_eq!(leadership.key().as_bytes(), &term.key[..]);
    assert!(leadership.key().starts_with(&format!("/elections/{name}/")));
    assert!(!leadership.is_lost());

    // Dropping a leadership (or a clone of its signal) changes nothing.
    drop(election.leadership().await.unwrap().lost());
    assert!(election.is_leader());

    // Someone deletes our key: lost, and is_leader() false at that instant.
    other
        .kv()
        .delete_range(DeleteRangeRequest {
            key: leadership.key().to_owned().into(),
            ..Default::default()
        })
        .await
        .unwrap();
    lost_with_is_leader(&election, &leadership, "loss by a deleted key").await;
    // It leads again (the candidacy re-enters) with a new term and signal.
    let next = within(5.0, "the next term", election.leadership())
        .await
        .unwrap();
    assert!(next.rev() > leadership.rev() && !next.is_lost());
    assert!(leadership.is_lost(), "an ended term stays lost");

    // Someone revokes our lease.
    other
        .lease()
        .lease_revoke(LeaseRevokeRequest { id: next.lease() })
        .await
        .unwrap();
    lost_with_is_leader(&election, &next, "loss by a revoked lease").await;

    // Close: lost, then leadership() says closed.
    let last = within(10.0, "a term on a new lease", election.leadership())
        .await
        .unwrap();
    let closing = election.clone();
    let close = tokio::spawn(async move { closing.close().await });
    lost_with_is_leader(&election, &last, "loss by close").await;
    within(5.0, "close", close).await.unwrap();
    assert!(matches!(election.leadership().await, Err(Error::Closed)));
}

#[tokio::test]
async fn concede_ends_the_term_and_hands_over() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let name = unique("scope-concede");
    let a = Arc::new(leader(&client, &name, "a", 5).await);
    let b = leader(&client, &name, "b", 5).await;
    let term = a.leadership().await.unwrap();
    let waiting = tokio::spawn(async move { b.leadership().await.map(|l| (l, b)) });
    assert!(a.concede().await.unwrap());
    lost_with_is_leader(&a, &term, "loss by concede").await;
    let (b_term, b) = within(5.0, "b's term", waiting).await.unwrap().unwrap();
    assert!(b.is_leader() && b_term.rev() > term.rev());
    assert!(
        a.next_leader_earliest()
            .is_some_and(|at| at <= tokio::time::Instant::now()),
        "after a concede, the next may lead at once"
    );
    a.close().await;
    b.close().await;
}

/// A blackholed leader's term ends before etcd can expire its lease: the
/// key is still in etcd when the signal fires, and no one else leads before
/// `next_leader_earliest`.
#[tokio::test]
async fn loss_by_blackhole_fires_before_etcd_can_expire_the_lease() {
    let etcd = etcd().await;
    let (proxy, client) = proxied_client(&etcd).await;
    let direct = self::client(&etcd).await;
    let name = unique("scope-blackhole");
    let election = Arc::new(leader(&client, &name, "a", 3).await);
    let (observer, _) = recorder();
    let waiting = new_election(&direct, config(&name, "b", 3, observer))
        .await
        .unwrap();
    let term = election.leadership().await.unwrap();
    proxy.blackhole().await.unwrap();
    lost_with_is_leader(&election, &term, "loss by blackhole").await;
    let lost_at = tokio::time::Instant::now();
    assert!(
        key_exists(&direct, term.key()).await,
        "etcd still holds our key when the signal fires"
    );
    assert!(!waiting.is_leader(), "nobody else leads yet");
    let earliest = election.next_leader_earliest().expect("a term ended");
    assert!(earliest > lost_at, "the lease outlives our step-down");
    within(10.0, "the other candidate leads", waiting.leadership())
        .await
        .unwrap();
    assert!(tokio::time::Instant::now() >= earliest);
    proxy.restore().await.unwrap();
    waiting.close().await;
    election.close().await;
}

#[tokio::test]
async fn run_while_leader_runs_only_while_leading_and_again_after_a_loss() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let other = self::client(&etcd).await;
    let name = unique("scope-run");
    let election = Arc::new(leader(&client, &name, "a", 5).await);
    let (terms_tx, mut terms) = mpsc::unbounded_channel();
    let runs = Arc::new(AtomicUsize::new(0));
    let running = election.clone();
    let counted = runs.clone();
    let runner = tokio::spawn(async move {
        running
            .run_while_leader(Duration::from_secs(2), |leadership| {
                let terms_tx = terms_tx.clone();
                let runs = counted.clone();
                let election = running.clone();
                async move {
                    let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
                    assert!(election.is_leader(), "work runs only while leading");
                    terms_tx.send(leadership.clone()).unwrap();
                    leadership.lost().await;
                    // The second term ends the run.
                    if run == 2 {
                        AfterWork::Stop
                    } else {
                        AfterWork::Requeue
                    }
                }
            })
            .await
    });
    let first: Leadership = within(5.0, "the first run", terms.recv()).await.unwrap();
    other
        .kv()
        .delete_range(DeleteRangeRequest {
            key: first.key().to_owned().into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let second = within(5.0, "the second run", terms.recv()).await.unwrap();
    assert!(second.rev() > first.rev());
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    // Its work returns Stop once this term ends: the run closes the election.
    assert!(election.concede().await.unwrap());
    within(10.0, "run_while_leader returns", runner)
        .await
        .unwrap();
    assert!(matches!(election.leadership().await, Err(Error::Closed)));
    assert!(
        keys_under(&client, &format!("/elections/{name}/"))
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn work_that_ignores_the_loss_is_dropped_after_the_grace() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let other = self::client(&etcd).await;
    let name = unique("scope-grace");
    let election = Arc::new(leader(&client, &name, "a", 5).await);
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel::<Instant>();
    struct OnDrop(mpsc::UnboundedSender<Instant>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            let _ = self.0.send(Instant::now());
        }
    }
    let running = election.clone();
    let runner = tokio::spawn(async move {
        running
            .run_while_leader(Duration::from_millis(300), |leadership| {
                let started_tx = started_tx.clone();
                let guard = OnDrop(dropped_tx.clone());
                async move {
                    let _guard = guard;
                    started_tx.send(leadership).unwrap();
                    // Ignores the loss: never returns.
                    std::future::pending::<AfterWork>().await
                }
            })
            .await
    });
    let term: Leadership = within(5.0, "the work starts", started.recv())
        .await
        .unwrap();
    other
        .kv()
        .delete_range(DeleteRangeRequest {
            key: term.key().to_owned().into(),
            ..Default::default()
        })
        .await
        .unwrap();
    within(10.0, "the loss", term.lost().wait()).await;
    let lost_at = Instant::now();
    let dropped_at = within(5.0, "the work dropped", dropped.recv())
        .await
        .unwrap();
    let after = dropped_at.saturating_duration_since(lost_at);
    assert!(
        after >= Duration::from_millis(250) && after < Duration::from_secs(3),
        "dropped {after:?} after the loss, with a 300 ms grace"
    );
    // It runs again on the next term.
    within(5.0, "the next run", started.recv()).await.unwrap();
    election.close().await;
    within(5.0, "run_while_leader returns after close", runner)
        .await
        .unwrap();
}

/// How a leader loses its term in the ordering test.
#[derive(Clone, Copy, Debug)]
enum Cause {
    Cut,
    Blackhole,
    Concede,
    /// `etcdctl del` of our key.
    Deleted,
}

/// Under a cut, a blackhole and a concede, our loss signal fires before the
/// other candidate's `is_leader()` turns true; prints the margin. A key
/// deleted by someone else (`etcdctl del`) reaches both candidates in the
/// same etcd revision, through their own watches: no order between them
/// exists (the README's "Guarantees" assumes nobody else deletes a
/// candidate's key), so that case checks the two are within a watch
/// delivery of each other, and that fencing refuses the old term's writes.
#[tokio::test]
async fn the_loss_fires_before_another_candidate_leads() {
    for cause in [Cause::Cut, Cause::Blackhole, Cause::Concede, Cause::Deleted] {
        let etcd = etcd().await;
        let (proxy, client) = proxied_client(&etcd).await;
        let direct = self::client(&etcd).await;
        let name = unique("scope-order");
        let a = Arc::new(leader(&client, &name, "a", 2).await);
        let b = Arc::new(leader(&direct, &name, "b", 2).await);
        let term = a.leadership().await.unwrap();
        // b's is_leader, sampled every millisecond.
        let watching = b.clone();
        let b_led = tokio::spawn(async move {
            while !watching.is_leader() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Instant::now()
        });
        let lost = term.lost();
        let a_lost = tokio::spawn(async move {
            lost.wait().await;
            Instant::now()
        });
        let faulted = Instant::now();
        match cause {
            Cause::Cut => proxy.cut().await,
            Cause::Blackhole => proxy.blackhole().await.unwrap(),
            Cause::Concede => assert!(a.concede().await.unwrap()),
            Cause::Deleted => {
                let status = tokio::process::Command::new("etcdctl")
                    .args(["--endpoints", &etcd.endpoint(), "del", term.key()])
                    .env("ETCDCTL_API", "3")
                    .stdout(std::process::Stdio::null())
                    .status()
                    .await
                    .expect("run etcdctl");
                assert!(status.success());
            }
        }
        let lost_at = within(10.0, "a's loss", a_lost).await.unwrap();
        let led_at = within(10.0, "b leads", b_led).await.unwrap();
        if let Cause::Deleted = cause {
            let apart = lost_at.max(led_at) - lost_at.min(led_at);
            assert!(apart < Duration::from_millis(500), "{apart:?} apart");
            use etcdutil::proto::etcdserverpb::{Compare, TxnRequest, compare};
            // What `txn_if_leader` sends for the old term.
            let stale = TxnRequest {
                compare: vec![Compare {
                    key: term.key().to_owned().into(),
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Create as i32,
                    target_union: Some(compare::TargetUnion::CreateRevision(term.rev())),
                    ..Default::default()
                }],
                ..Default::default()
            };
            let answer = direct.kv().txn(stale).await.unwrap().into_inner();
            assert!(!answer.succeeded, "the old term's fence holds");
            println!(
                "{cause:?}: loss fired {:?} after the fault, {apart:?} from b's lead",
                lost_at - faulted
            );
        } else {
            assert!(
                lost_at < led_at,
                "{cause:?}: b led {:?} before a's loss fired",
                lost_at - led_at
            );
            println!(
                "{cause:?}: loss fired {:?} after the fault, {:?} before b led",
                lost_at - faulted,
                led_at - lost_at
            );
        }
        proxy.restore().await.unwrap();
        b.close().await;
        a.close().await;
    }
}

/// The work's cancellation is observed before the other candidate leads;
/// work that returns by itself (release on return) hands over at once.
#[tokio::test]
async fn run_while_leader_stops_before_the_next_leader_and_releases_on_return() {
    let etcd = etcd().await;
    let (proxy, client) = proxied_client(&etcd).await;
    let direct = self::client(&etcd).await;
    let name = unique("scope-release");
    let a = Arc::new(leader(&client, &name, "a", 2).await);
    let (stopped_tx, mut stopped) = mpsc::unbounded_channel::<Instant>();
    let running = a.clone();
    let runner = tokio::spawn(async move {
        running
            .run_while_leader(Duration::from_secs(1), |leadership| {
                let stopped_tx = stopped_tx.clone();
                async move {
                    leadership.lost().await;
                    let _ = stopped_tx.send(Instant::now());
                    AfterWork::Requeue
                }
            })
            .await
    });
    within(5.0, "a's work runs", a.leadership()).await.unwrap();
    let b = Arc::new(leader(&direct, &name, "b", 2).await);
    let watching = b.clone();
    let b_led = tokio::spawn(async move {
        while !watching.is_leader() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Instant::now()
    });
    proxy.blackhole().await.unwrap();
    let stopped_at = within(10.0, "a's work stops", stopped.recv())
        .await
        .unwrap();
    let led_at = within(10.0, "b leads", b_led).await.unwrap();
    assert!(stopped_at < led_at, "b led before a's work stopped");
    println!(
        "blackhole: a's work stopped {:?} before b led",
        led_at - stopped_at
    );
    proxy.restore().await.unwrap();
    a.close().await;
    within(5.0, "a's run ends", runner).await.unwrap();

    // Release on return: b's work returns at once; the waiting c leads
    // within a handover's time.
    let c = Arc::new(leader(&direct, &name, "c", 2).await);
    let released = Instant::now();
    let running = b.clone();
    let runner = tokio::spawn(async move {
        running
            .run_while_leader(Duration::from_secs(1), |_| async { AfterWork::Stop })
            .await
    });
    within(5.0, "c leads once b's work returned", c.leadership())
        .await
        .unwrap();
    let handover = released.elapsed();
    println!("release on return: c led {handover:?} after b's work returned");
    assert!(handover < Duration::from_secs(1), "{handover:?}");
    within(5.0, "b's run ends", runner).await.unwrap();
    assert!(matches!(b.leadership().await, Err(Error::Closed)));
    c.close().await;
}

/// A panicking work: the election is closed (our key resigned, so another
/// candidate leads), then the panic reaches `run_while_leader`'s caller.
#[tokio::test]
async fn a_panicking_work_closes_the_election_and_the_next_leads() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let name = unique("scope-panic");
    let a = Arc::new(leader(&client, &name, "a", 5).await);
    let b = leader(&client, &name, "b", 5).await;
    let running = a.clone();
    let runner = tokio::spawn(async move {
        running
            .run_while_leader(Duration::from_secs(1), |_| async {
                panic!("the work's bug");
            })
            .await
    });
    let joined = within(10.0, "the run ends", runner).await;
    assert!(
        joined.unwrap_err().is_panic(),
        "the panic reaches the caller"
    );
    assert!(matches!(a.leadership().await, Err(Error::Closed)));
    within(5.0, "b leads", b.leadership()).await.unwrap();
    b.close().await;
}
