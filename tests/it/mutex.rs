//! `Mutex` against a real etcd: exclusion, try_lock, cancellation, losing
//! the lock (revoked lease, key deleted, blackholed connection), fenced
//! writes, and interop with `etcdctl lock` (Go's `concurrency.Mutex`) and
//! etcd's server-side Lock service.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use crate::common::*;
use etcdutil::proto::etcdserverpb::{
    DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RequestOp, TxnRequest,
    request_op,
};
use etcdutil::proto::v3lockpb::{LockRequest, UnlockRequest};
use etcdutil::{Client, Error, LockKey, Mutex};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::task::JoinHandle;

/// A lock name of this test's own.
pub fn lock_name(what: &str) -> String {
    format!("/locks/{}", unique(what))
}

/// The keys under the lock `name` (its waiters and its owner).
pub async fn lock_keys(client: &Client, name: &str) -> Vec<String> {
    keys_under(client, &format!("{name}/")).await
}

/// Waits until `n` keys are under the lock `name`.
pub async fn until_waiters(client: &Client, name: &str, n: usize) {
    eventually(10.0, &format!("{n} keys under {name}/"), || async {
        lock_keys(client, name).await.len() == n
    })
    .await;
}

/// `mutex.lock()` in a task of its own.
fn lock_in_background(mutex: &Arc<Mutex>) -> JoinHandle<etcdutil::Result<LockKey>> {
    let mutex = mutex.clone();
    tokio::spawn(async move { mutex.lock().await })
}

fn put(key: &str, value: &str) -> TxnRequest {
    let put = PutRequest {
        key: key.to_owned().into(),
        value: value.to_owned().into(),
        ..Default::default()
    };
    TxnRequest {
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(put)),
        }],
        ..Default::default()
    }
}

/// Two mutexes on two sessions: the second waits while the first owns the
/// lock, and gets it once the first unlocks; the first's `lost()` fires at
/// the unlock. The keys are the recipe's: `<name>/<lease hex>`.
#[tokio::test]
async fn the_second_waits_until_the_first_unlocks() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let name = lock_name("mutex-excl");
    let (s1, s2) = (
        held_session(&client, 5).await,
        held_session(&client, 5).await,
    );
    let first = Mutex::new(&s1, &name).unwrap();
    let second = Arc::new(Mutex::new(&s2, &name).unwrap());

    let held = within(5.0, "the first lock", first.lock()).await.unwrap();
    assert_eq!(held.key, format!("{name}/{:x}", s1.lease_id()));
    assert_eq!(held.lease, s1.lease_id());
    assert!(first.is_owner());
    // Locking again on the same handle is the same acquisition.
    assert_eq!(first.lock().await.unwrap(), held);
    let lost = first.lost();

    let waiting = lock_in_background(&second);
    until_waiters(&client, &name, 2).await;
    assert!(!waiting.is_finished() && !second.is_owner());
    assert!(!lost.is_lost());

    assert!(first.unlock().await.unwrap());
    assert!(lost.is_lost() && !first.is_owner());
    assert!(
        !first.unlock().await.unwrap(),
        "a second unlock does nothing"
    );
    let got = within(5.0, "the second gets the lock", waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.key, format!("{name}/{:x}", s2.lease_id()));
    assert!(got.rev > held.rev);
    assert_eq!(lock_keys(&client, &name).await, vec![got.key.clone()]);

    s1.close().await;
    s2.close().await; // unlocks the second: the session closes its mutexes first
    assert!(!second.is_owner());
    assert!(lock_keys(&client, &name).await.is_empty());
}

/// Two mutexes of one name on one session share one key in etcd: they
/// exclude each other inside the process (Go's would both think they own).
#[tokio::test]
async fn two_handles_on_one_session_exclude_each_other() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let name = lock_name("mutex-same-session");
    let session = held_session(&client, 5).await;
    let first = Mutex::new(&session, &name).unwrap();
    let second = Arc::new(Mutex::new(&session, &name).unwrap());
    let held = first.lock().await.unwrap();
    assert!(matches!(second.try_lock().await, Err(Error::Locked { .. })));
    assert_eq!(lock_keys(&client, &name).await, vec![held.key.clone()]);
    let waiting = lock_in_background(&second);
    // Nothing to wait for in etcd: the second waits in-process. Its task
    // gets a turn while the first still owns the lock.
    tokio::task::yield_now().await;
    assert!(first.is_owner() && !second.is_owner());
    first.unlock().await.unwrap();
    let got = within(5.0, "the second handle", waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.key, held.key);
    assert!(got.rev > held.rev, "a new key, not the first's");
    session.close().await;
}

/// try_lock on a held lock fails at once with `Locked`, naming the lock,
/// and leaves no key; on a free lock it takes it.
#[tokio::test]
async fn try_lock_fails_when_held_and_leaves_no_key() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let name = lock_name("mutex-try");
    let (s1, s2) = (
        held_session(&client, 5).await,
        held_session(&client, 5).await,
    );
    let first = Mutex::new(&s1, &name).unwrap();
    let second = Mutex::new(&s2, &name).unwrap();
    let held = first.try_lock().await.unwrap();
    let refused = within(5.0, "try_lock", second.try_lock())
        .await
        .unwrap_err();
    assert!(matches!(&refused, Error::Locked { name: n } if *n == name));
    assert_eq!(
        refused.to_string(),
        format!("lock {name:?} is held by another session")
    );
    assert_eq!(refused.kind(), "locked");
    assert_eq!(lock_keys(&client, &name).await, vec![held.key]);
    assert!(!second.is_owner() && second.lost().is_lost());
    first.unlock().await.unwrap();
    let got = second.try_lock().await.unwrap();
    assert_eq!(lock_keys(&client, &name).await, vec![got.key]);
    s1.close().await;
    s2.close().await;
}

/// A lock() dropped while it waits (a timeout, an aborted task) withdraws:
/// its key is deleted. A mutex dropped while it owns the lock unlocks.
#[tokio::test]
async fn a_cancelled_lock_and_a_dropped_owner_leave_no_key() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let name = lock_name("mutex-cancel");
    let (s1, s2) = (
        held_session(&client, 5).await,
        held_session(&client, 5).await,
    );
    let first = Mutex::new(&s1, &name).unwrap();
    let held = first.lock().await.unwrap();

    let second = Arc::new(Mutex::new(&s2, &name).unwrap());
    let waiting = lock_in_background(&second);
    until_waiters(&client, &name, 2).await;
    waiting.abort();
    eventually(5.0, "the aborted waiter's key is deleted", || async {
        lock_keys(&client, &name).await == vec![held.key.clone()]
    })
    .await;

    // Dropped by a timeout, as the docs suggest.
    let timed_out = tokio::time::timeout(std::time::Duration::from_millis(300), second.lock());
    assert!(timed_out.await.is_err(), "the lock is held");
    eventually(5.0, "the timed-out waiter's key is deleted", || async {
        lock_keys(&client, &name).await == vec![held.key.clone()]
    })
    .await;
    assert!(!second.is_owner());

    let lost = first.lost();
    drop(first);
    assert!(lost.is_lost());
    eventually(5.0, "the dropped owner's key is deleted", || async {
        lock_keys(&client, &name).await.is_empty()
    })
    .await;
    // And the lock is free for the second.
    within(5.0, "the second locks", second.lock())
        .await
        .unwrap();
    s1.close().await;
    s2.close().await;
}

/// The session's lease revoked by someone else: `lost()` fires (the watch
/// on our key sees it deleted), `txn_if_owner` is refused, and the next
/// lock() gets it again with the session's next lease.
#[tokio::test]
async fn a_lease_revoked_by_someone_else_loses_the_lock() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let name = lock_name("mutex-revoked");
    let session = held_session(&client, 5).await;
    let mutex = Mutex::new(&session, &name).unwrap();
    let held = mutex.lock().await.unwrap();
    let lost = mutex.lost();
    let revoked_at = Instant::now();
    client
        .lease()
        .lease_revoke(LeaseRevokeRequest { id: held.lease })
        .await
        .unwrap();
    within(5.0, "lost() after the revoke", lost.wait()).await;
    println!(
        "lock lost {:?} after its lease was revoked",
        revoked_at.elapsed()
    );
    assert!(!mutex.is_owner());
    let refused = mutex
        .txn_if_owner(put("/fenced", "late"))
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::NotLockOwner { .. }), "{refused}");
    assert!(keys_under(&client, "/fenced").await.is_empty());

    let again = within(10.0, "locked again on the next lease", mutex.lock())
        .await
        .unwrap();
    assert_ne!(again.lease, held.lease);
    session.close().await;
}

/// Our key deleted by someone else (`etcdctl del`): the lock is lost at once.
#[tokio::test]
async fn our_key_deleted_by_someone_else_loses_the_lock() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let name = lock_name("mutex-deleted");
    let session = held_session(&client, 5).await;
    let mutex = Mutex::new(&session, &name).unwrap();
    let held = mutex.lock().await.unwrap();
    client
        .kv()
        .delete_range(DeleteRangeRequest {
            key: held.key.clone().into(),
            ..Default::default()
        })
        .await
        .unwrap();
    within(5.0, "lost() after the delete", mutex.lost().wait()).await;
    assert!(!mutex.is_owner());
    session.close().await;
}

/// A holder cut off by a blackhole (nothing answers) loses the lock when
/// its session takes the lease for lost: while etcd still holds the lease
/// and our key, so before anyone else can get the lock. The waiter gets it
/// only after.
#[tokio::test]
async fn a_blackholed_holder_loses_the_lock_before_etcd_expires_its_lease() {
    let etcd = etcd().await;
    let direct = client(&etcd).await;
    let (proxy, cut_off) = proxied_client(&etcd).await;
    let name = lock_name("mutex-blackhole");
    let ttl = 3;
    let session = held_session(&cut_off, ttl).await;
    let mutex = Mutex::new(&session, &name).unwrap();
    let held = mutex.lock().await.unwrap();
    let lost = mutex.lost();

    let other_session = held_session(&direct, ttl).await;
    let other = Arc::new(Mutex::new(&other_session, &name).unwrap());
    let waiting = lock_in_background(&other);
    until_waiters(&direct, &name, 2).await;

    proxy.blackhole().await.unwrap();
    let blackholed_at = Instant::now();
    within((ttl + 2) as f64, "lost() after the blackhole", lost.wait()).await;
    let lost_at = Instant::now();
    // etcd has not expired our lease: our key still holds the lock.
    let lease_left = lease_ttl(&direct, held.lease).await;
    let keys = lock_keys(&direct, &name).await;
    assert!(lease_left >= 0, "etcd expired the lease before we knew");
    assert!(keys.contains(&held.key), "{keys:?}");
    assert!(!waiting.is_finished());
    let grace = mutex
        .next_owner_earliest()
        .expect("set at the loss")
        .saturating_duration_since(lost_at.into());
    assert!(
        grace > std::time::Duration::ZERO,
        "a deadline loss leaves a margin"
    );

    let got = within((ttl + 5) as f64, "the waiter gets the lock", waiting)
        .await
        .unwrap()
        .unwrap();
    let other_at = Instant::now();
    println!(
        "blackholed holder: lost {:?} after the blackhole, {:?} before the waiter got the lock (grace reported {grace:?}, etcd's TTL left {lease_left} s)",
        lost_at - blackholed_at,
        other_at - lost_at
    );
    assert!(
        lost_at - blackholed_at <= std::time::Duration::from_secs(ttl as u64),
        "lost within the TTL"
    );
    assert!(got.rev > held.rev);
    let refused = mutex.txn_if_owner(put("/fenced", "x")).await.unwrap_err();
    assert!(matches!(refused, Error::NotLockOwner { .. }));
    other_session.close().await;
    drop(session);
}

/// `txn_if_owner` writes while we own the lock, and is refused by etcd
/// itself for a stale key (fenced by the create revision): after an unlock,
/// and for a term whose key was replaced.
#[tokio::test]
async fn txn_if_owner_writes_only_while_owner() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let name = lock_name("mutex-txn");
    let session = held_session(&client, 5).await;
    let mutex = Mutex::new(&session, &name).unwrap();
    let data = format!("{name}-data");
    assert!(matches!(
        mutex.txn_if_owner(put(&data, "before")).await,
        Err(Error::NotLockOwner { .. })
    ));
    mutex.lock().await.unwrap();
    let response = mutex.txn_if_owner(put(&data, "while")).await.unwrap();
    assert!(response.succeeded);
    assert_eq!(
        kvs_under(&client, &data).await,
        vec![(data.clone(), "while".into())]
    );
    mutex.unlock().await.unwrap();
    let refused = mutex.txn_if_owner(put(&data, "after")).await.unwrap_err();
    assert_eq!(
        refused.to_string(),
        format!("not the owner of lock {name:?}")
    );
    assert_eq!(
        kvs_under(&client, &data).await,
        vec![(data.clone(), "while".into())]
    );
    session.close().await;
}

/// Bad input is refused with a message naming the value, before anything
/// reaches etcd; a closed session makes no mutex.
#[tokio::test]
async fn bad_lock_names_and_a_closed_session_are_refused() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let session = held_session(&client, 5).await;
    for (name, message) in [
        (
            "",
            "Mutex name=\"\" is not a non-empty lock name, e.g. \"jobs\" (its keys are jobs/<lease hex>)",
        ),
        (
            " ",
            "Mutex name=\" \" is not a non-empty lock name, e.g. \"jobs\" (its keys are jobs/<lease hex>)",
        ),
        (
            "a\0b",
            "Mutex name=\"a\\0b\" is not a lock name without NUL bytes",
        ),
    ] {
        let error = Mutex::new(&session, name).unwrap_err();
        assert!(matches!(error, Error::InvalidArgument { .. }));
        assert_eq!(error.to_string(), message);
    }
    assert!(keys_under(&client, "").await.is_empty(), "nothing in etcd");
    session.close().await;
    assert!(matches!(Mutex::new(&session, "jobs"), Err(Error::Closed)));
}

/// Closing the session while a lock() waits ends it with `Closed` and
/// leaves no key.
#[tokio::test]
async fn closing_the_session_ends_a_waiting_lock() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let name = lock_name("mutex-close");
    let (s1, s2) = (
        held_session(&client, 5).await,
        held_session(&client, 5).await,
    );
    let first = Mutex::new(&s1, &name).unwrap();
    first.lock().await.unwrap();
    let second = Arc::new(Mutex::new(&s2, &name).unwrap());
    let waiting = lock_in_background(&second);
    until_waiters(&client, &name, 2).await;
    within(10.0, "the session closes", s2.close()).await;
    let ended = within(5.0, "the waiting lock ends", waiting).await.unwrap();
    assert!(matches!(ended, Err(Error::Closed)), "{ended:?}");
    assert_eq!(lock_keys(&client, &name).await.len(), 1);
    s1.close().await;
    assert!(lock_keys(&client, &name).await.is_empty());
}

/// `etcdctl lock NAME` (Go's `concurrency.Mutex`), without a command: it
/// prints its key once it holds the lock and holds it until SIGINT.
fn etcdctl_lock(endpoint: &str, name: &str, command: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "lock", name])
        .args(command)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("etcdctl from Debian's etcd-client")
}

pub fn signal(child: &tokio::process::Child, signal: i32) {
    let pid = child.id().expect("running") as i32;
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill {pid}");
}

/// etcdctl owns the lock first: ours waits, and gets it when etcdctl unlocks.
#[tokio::test]
async fn etcdctl_lock_first_then_ours() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let name = lock_name("mutex-ctl-first");
    let mut etcdctl = etcdctl_lock(&etcd.endpoint(), &name, &[]);
    let mut lines = BufReader::new(etcdctl.stdout.take().unwrap()).lines();
    let ctl_key = within(10.0, "etcdctl holds the lock", lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert!(ctl_key.starts_with(&format!("{name}/")), "{ctl_key}");

    let session = held_session(&client, 5).await;
    let ours = Arc::new(Mutex::new(&session, &name).unwrap());
    let waiting = lock_in_background(&ours);
    until_waiters(&client, &name, 2).await;
    assert!(!waiting.is_finished(), "ours must wait behind etcdctl");
    assert!(matches!(
        Mutex::new(&session, &name).unwrap().try_lock().await,
        Err(Error::Locked { .. })
    ));

    signal(&etcdctl, libc::SIGINT); // etcdctl unlocks and exits
    let got = within(5.0, "ours gets it after etcdctl", waiting)
        .await
        .unwrap()
        .unwrap();
    within(5.0, "etcdctl exits", etcdctl.wait()).await.unwrap();
    assert_eq!(lock_keys(&client, &name).await, vec![got.key]);
    session.close().await;
}

/// Ours owns the lock first: `etcdctl lock NAME -- COMMAND` waits, and runs
/// its command only after ours unlocks.
#[tokio::test]
async fn ours_first_then_etcdctl_lock() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let name = lock_name("mutex-ours-first");
    let session = held_session(&client, 5).await;
    let ours = Mutex::new(&session, &name).unwrap();
    let held = ours.lock().await.unwrap();

    let dir = TempDir::new();
    let ran = dir.missing("ran");
    let script = format!("echo \"$ETCD_LOCK_KEY\" > '{}'", ran.display());
    let etcdctl = etcdctl_lock(&etcd.endpoint(), &name, &["--", "sh", "-c", &script]);
    until_waiters(&client, &name, 2).await;
    assert!(
        !ran.exists(),
        "etcdctl ran its command while we own the lock"
    );

    ours.unlock().await.unwrap();
    let output = within(10.0, "etcdctl runs and exits", etcdctl.wait_with_output())
        .await
        .unwrap();
    assert!(output.status.success());
    let ctl_key = std::fs::read_to_string(&ran).unwrap();
    assert!(ctl_key.trim().starts_with(&format!("{name}/")), "{ctl_key}");
    assert_ne!(ctl_key.trim(), held.key);
    assert!(lock_keys(&client, &name).await.is_empty());
    session.close().await;
}

/// A holder through etcd's server-side Lock RPC (`v3lockpb`) excludes ours,
/// and ours excludes it: one recipe, one key layout.
#[tokio::test]
async fn etcds_lock_service_and_ours_exclude_each_other() {
    let etcd = etcd().await;
    let client = client(&etcd).await;
    let name = lock_name("mutex-v3lock");
    let lease = client
        .lease()
        .lease_grant(LeaseGrantRequest { ttl: 30, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    let by_rpc = client
        .lock()
        .lock(LockRequest {
            name: name.clone().into(),
            lease,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_rpc.key.as_ref(), format!("{name}/{lease:x}").as_bytes());

    let session = held_session(&client, 5).await;
    let ours = Arc::new(Mutex::new(&session, &name).unwrap());
    let waiting = lock_in_background(&ours);
    until_waiters(&client, &name, 2).await;
    assert!(!waiting.is_finished(), "ours must wait behind the Lock RPC");
    client
        .lock()
        .unlock(UnlockRequest { key: by_rpc.key })
        .await
        .unwrap();
    within(5.0, "ours gets it after Unlock", waiting)
        .await
        .unwrap()
        .unwrap();

    // Now the Lock RPC waits behind ours.
    let mut rpc = client.lock();
    let rpc_name = name.clone();
    let rpc_waiting = tokio::spawn(async move {
        rpc.lock(LockRequest {
            name: rpc_name.into(),
            lease,
        })
        .await
    });
    until_waiters(&client, &name, 2).await;
    assert!(
        !rpc_waiting.is_finished(),
        "the Lock RPC must wait behind ours"
    );
    ours.unlock().await.unwrap();
    let got = within(5.0, "the Lock RPC returns after our unlock", rpc_waiting)
        .await
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(got.key.as_ref(), format!("{name}/{lease:x}").as_bytes());
    session.close().await;
}
