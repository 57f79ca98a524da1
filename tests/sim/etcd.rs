//! A pure, synchronous, deterministic model of etcd's replicated state
//! machine, for the simulator: the MVCC key-value store (revisions, history,
//! Range/Put/DeleteRange/Txn), the lessor (leases expiring on etcd's clock),
//! watches, and the v3election service's Resign, Proclaim and Leader.
//!
//! It follows etcd v3.4.23's server (the version the crate's protos and tests
//! use; v3.5 behaves the same in everything modelled here):
//!
//! - KV: `etcdserver/api/v3rpc/key.go` (request checks), `etcdserver/apply.go`
//!   (Range/Put/DeleteRange/Txn), `mvcc/kvstore_txn.go` (revisions).
//! - Leases: `lease/lessor.go`, `etcdserver/api/v3rpc/lease.go`.
//! - Watches: `mvcc/watchable_store.go`, `mvcc/watchable_store_txn.go`,
//!   `etcdserver/api/v3rpc/watch.go`.
//! - Election: `etcdserver/api/v3election/election.go`, which runs
//!   `clientv3/concurrency/election.go` on an in-process client.
//!
//! The model never reads a clock: times are passed in as [`Time`] on etcd's
//! clock. No hash map order leaks out; lease ids come from a seeded generator.
//!
//! Not modelled: compaction, auth, multiple members (one store, so
//! `serializable` is ignored), progress notifications, fragmenting, slow
//! watchers (victims), lease checkpoints, the lessor's revoke rate limit.
//!
//! The `against_etcd` test (ignored by default) runs one script of requests
//! on the model and on a real etcd and compares every answer:
//! `cargo test --all-features --test sim -- --ignored`.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use bytes::Bytes;
use etcdutil::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etcdutil::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use etcdutil::proto::etcdserverpb::request_op::Request;
use etcdutil::proto::etcdserverpb::response_op::Response;
use etcdutil::proto::etcdserverpb::watch_create_request::FilterType;
use etcdutil::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantResponse, LeaseKeepAliveResponse,
    LeaseRevokeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, ResponseOp, TxnRequest, TxnResponse, WatchCreateRequest, WatchResponse,
};
use etcdutil::proto::mvccpb::event::EventType;
use etcdutil::proto::mvccpb::{Event, KeyValue};
use etcdutil::proto::v3electionpb::{
    LeaderRequest, LeaderResponse, ProclaimRequest, ProclaimResponse, ResignRequest, ResignResponse,
};
use tonic::Status;

/// A point on etcd's clock: the time since the start of the simulation.
pub type Time = std::time::Duration;

/// The cluster id in every header: that of a single etcd started without
/// flags (member "default").
pub const CLUSTER_ID: u64 = 0xcdf8_1819_4e3a_8c32;
/// The member id in every header: that of a single etcd started without flags.
pub const MEMBER_ID: u64 = 0x8e9e_05c5_2164_694d;
/// The raft term in every header (a fresh single member elects itself in term 2).
pub const RAFT_TERM: u64 = 2;
/// etcd raises shorter TTLs to this: ceil(1.5 × election timeout) with the
/// default 100 ms heartbeat and 10 election ticks (`etcdserver/server.go`).
pub const MIN_LEASE_TTL: i64 = 2;
/// `lease.MaxLeaseTTL`; longer grants fail with "etcdserver: too large lease TTL".
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;
/// The TTL of the lease the election service grants when a request names
/// lease 0 (`concurrency.NewSession`'s default).
pub const SESSION_TTL: i64 = 60;
/// `watchBatchMaxRevs`: a replay sends events of at most this many revisions at once.
const WATCH_BATCH_MAX_REVS: usize = 1000;

// etcd's error messages (`rpctypes`, `concurrency`, `v3election`).
const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
const FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";
const EMPTY_KEY: &str = "etcdserver: key is not provided";
const KEY_NOT_FOUND: &str = "etcdserver: key not found";
const VALUE_PROVIDED: &str = "etcdserver: value is provided";
const LEASE_PROVIDED: &str = "etcdserver: lease is provided";
const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
const TTL_TOO_LARGE: &str = "etcdserver: too large lease TTL";
const NOT_LEADER: &str = "election: not leader";
const NO_LEADER: &str = "election: no leader";
const MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";
const EMPTY_WATCHER_RANGE: &str = "mvcc: watcher range is empty";
const DUPLICATE_WATCH_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

fn lease_not_found() -> Status {
    Status::not_found(LEASE_NOT_FOUND)
}

/// The full header the gRPC layer puts on a top-level response.
fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        cluster_id: CLUSTER_ID,
        member_id: MEMBER_ID,
        revision,
        raft_term: RAFT_TERM,
    })
}

/// The header of a response inside a Txn: etcd sets only the revision there.
fn inner_header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..ResponseHeader::default()
    })
}

/// How a request's `range_end` bounds it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum End {
    /// Empty `range_end`: the key alone.
    Key,
    /// `range_end` "\0": every key >= the key.
    From,
    /// `[key, end)`; empty if `end <= key`.
    To(Bytes),
}

impl End {
    fn of(range_end: &Bytes) -> End {
        match &range_end[..] {
            [] => End::Key,
            [0] => End::From,
            _ => End::To(range_end.clone()),
        }
    }

    fn contains(&self, start: &[u8], key: &[u8]) -> bool {
        match self {
            End::Key => key == start,
            End::From => key >= start,
            End::To(end) => key >= start && key < &end[..],
        }
    }
}

/// The range end that makes `key` a prefix (clientv3's `getPrefix`): the key
/// with its last byte below 0xff incremented, or "\0" (all keys >= it).
pub fn prefix_end(key: &[u8]) -> Bytes {
    match key.iter().rposition(|&b| b < 0xff) {
        Some(i) => {
            let mut end = key[..=i].to_vec();
            end[i] += 1;
            Bytes::from(end)
        }
        None => Bytes::from_static(&[0]),
    }
}

/// One key's change in one revision.
#[derive(Clone, Debug)]
struct Change {
    /// The new KeyValue; None for a delete.
    kv: Option<KeyValue>,
    /// The key's KeyValue before the change; None if it did not exist.
    prev: Option<KeyValue>,
    key: Bytes,
}

impl Change {
    /// The event etcd sends for it (a delete carries only the key and the
    /// delete's revision), with `prev_kv` if asked and not a create.
    fn event(&self, revision: i64, with_prev: bool) -> Event {
        let (r#type, kv) = match &self.kv {
            Some(kv) => (EventType::Put, kv.clone()),
            None => (
                EventType::Delete,
                KeyValue {
                    key: self.key.clone(),
                    mod_revision: revision,
                    ..KeyValue::default()
                },
            ),
        };
        let is_create = r#type == EventType::Put && kv.create_revision == kv.mod_revision;
        Event {
            r#type: r#type as i32,
            kv: Some(kv),
            prev_kv: if with_prev && !is_create {
                self.prev.clone()
            } else {
                None
            },
        }
    }
}

#[derive(Clone, Debug)]
struct Lease {
    /// The granted TTL in seconds (raised to [`MIN_LEASE_TTL`]).
    ttl: i64,
    expires_at: Time,
    keys: BTreeSet<Bytes>,
}

#[derive(Clone, Debug)]
struct Watch {
    key: Bytes,
    end: End,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    /// The first revision whose events this watch has not yet been given.
    next_rev: i64,
    /// Created with a start revision at or below the store's revision, and
    /// not yet caught up (etcd's "unsynced" watchers).
    unsynced: bool,
}

impl Watch {
    fn matches(&self, key: &[u8]) -> bool {
        self.end.contains(&self.key, key)
    }

    fn passes(&self, change: &Change) -> bool {
        match change.kv {
            Some(_) => !self.no_put,
            None => !self.no_delete,
        }
    }
}

/// The model: one etcd member's state machine.
#[derive(Clone, Debug)]
pub struct Etcd {
    /// The store's revision.
    rev: i64,
    /// The live keys.
    kvs: BTreeMap<Bytes, KeyValue>,
    /// `history[i]` holds the changes of revision `i + 2`. While a write is
    /// being applied there is one more entry, for the revision it will make.
    history: Vec<Vec<Change>>,
    leases: BTreeMap<i64, Lease>,
    /// Every lease id ever granted, so none is given twice.
    granted: BTreeSet<i64>,
    rng: u64,
    /// The latest time passed to any call (for the election service's
    /// sessions on lease 0, which grant a lease without a time given).
    clock: Time,
    watches: BTreeMap<i64, Watch>,
    next_watch_id: i64,
    batch_replay: bool,
}

impl Etcd {
    /// `seed` picks the lease ids (etcd picks random positive int63 ids; use a
    /// deterministic generator from the seed, ids > 0, never repeated).
    pub fn new(seed: u64) -> Etcd {
        Etcd {
            rev: 1,
            kvs: BTreeMap::new(),
            history: Vec::new(),
            leases: BTreeMap::new(),
            granted: BTreeSet::new(),
            rng: seed,
            clock: Time::ZERO,
            watches: BTreeMap::new(),
            next_watch_id: 0,
            batch_replay: false,
        }
    }

    /// The current revision (starts at 1, as etcd's does).
    pub fn revision(&self) -> i64 {
        self.rev
    }

    /// The latest time passed to a lease call or to [`Etcd::expire`].
    pub fn now(&self) -> Time {
        self.clock
    }

    fn observe(&mut self, now: Time) {
        self.clock = self.clock.max(now);
    }

    // ----- the write path -----

    /// Opens a write: changes go to a new history entry for revision `rev + 1`.
    fn begin(&mut self) {
        debug_assert_eq!(self.history.len() as i64, self.rev - 1, "nested write");
        self.history.push(Vec::new());
    }

    /// Closes a write: a new revision if it changed anything.
    fn commit(&mut self) {
        if self.history.last().is_some_and(Vec::is_empty) {
            self.history.pop();
        } else {
            self.rev += 1;
        }
    }

    /// Whether the open write (if any) has changed something.
    fn pending(&self) -> bool {
        self.history.len() as i64 == self.rev && self.history.last().is_some_and(|c| !c.is_empty())
    }

    /// The revision a read sees now: etcd's `rev` of a write txn, +1 once it
    /// has changed something.
    fn read_rev(&self) -> i64 {
        self.rev + i64::from(self.pending())
    }

    fn record(&mut self, change: Change) {
        self.history
            .last_mut()
            .expect("a write is open")
            .push(change);
    }

    fn apply_put(&mut self, key: &Bytes, value: Bytes, lease: i64) -> KeyValue {
        let rev = self.rev + 1;
        let prev = self.kvs.get(key).cloned();
        let (create_revision, version) = match &prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => (rev, 1),
        };
        if let Some(old) = prev.as_ref().map(|p| p.lease).filter(|&l| l != 0)
            && let Some(l) = self.leases.get_mut(&old)
        {
            l.keys.remove(key);
        }
        if lease != 0 {
            self.leases
                .get_mut(&lease)
                .expect("the lease was checked")
                .keys
                .insert(key.clone());
        }
        let kv = KeyValue {
            key: key.clone(),
            create_revision,
            mod_revision: rev,
            version,
            value,
            lease,
        };
        self.kvs.insert(key.clone(), kv.clone());
        self.record(Change {
            kv: Some(kv.clone()),
            prev,
            key: key.clone(),
        });
        kv
    }

    fn apply_delete(&mut self, key: &Bytes) {
        let Some(prev) = self.kvs.remove(key) else {
            return;
        };
        if prev.lease != 0
            && let Some(l) = self.leases.get_mut(&prev.lease)
        {
            l.keys.remove(key);
        }
        self.record(Change {
            kv: None,
            prev: Some(prev),
            key: key.clone(),
        });
    }

    // ----- reads -----

    /// The live keys in `[start, end)`.
    fn live<'a>(
        &'a self,
        start: &'a [u8],
        end: &'a End,
    ) -> impl Iterator<Item = &'a KeyValue> + 'a {
        let upper = match end {
            End::Key => Bound::Included(start),
            End::From => Bound::Unbounded,
            End::To(e) if start < &e[..] => Bound::Excluded(&e[..]),
            // An empty range.
            End::To(_) => Bound::Excluded(start),
        };
        self.kvs
            .range::<[u8], _>((Bound::Included(start), upper))
            .map(|(_, kv)| kv)
    }

    /// The keys in the range as they were at revision `rev`, sorted by key:
    /// the live ones with every later change undone.
    fn kvs_at(&self, start: &[u8], end: &End, rev: i64) -> Vec<KeyValue> {
        // history[i] is revision i + 2; undo those above `rev`.
        let first_undone = usize::try_from(rev - 1).unwrap_or(0);
        if first_undone >= self.history.len() {
            return self.live(start, end).cloned().collect();
        }
        let mut at: BTreeMap<Bytes, KeyValue> = self
            .live(start, end)
            .map(|kv| (kv.key.clone(), kv.clone()))
            .collect();
        for changes in self.history[first_undone..].iter().rev() {
            for c in changes.iter().rev() {
                if end.contains(start, &c.key) {
                    match &c.prev {
                        Some(p) => at.insert(c.key.clone(), p.clone()),
                        None => at.remove(&c.key),
                    };
                }
            }
        }
        at.into_values().collect()
    }

    /// etcd's Range at read revision `cur` (`applierV3backend.Range` over
    /// `rangeKeys`); the header carries only the revision.
    fn range_op(&self, r: &RangeRequest, cur: i64) -> Result<RangeResponse, Status> {
        if r.revision > cur {
            return Err(Status::out_of_range(FUTURE_REV));
        }
        let rev = if r.revision <= 0 { cur } else { r.revision };
        let mut kvs = self.kvs_at(&r.key, &End::of(&r.range_end), rev);
        // The count is of the whole range, before the revision filters and the limit.
        let count = kvs.len() as i64;
        if r.count_only {
            kvs.clear();
        }
        let keep = |kv: &KeyValue| {
            (r.max_mod_revision == 0 || kv.mod_revision <= r.max_mod_revision)
                && (r.min_mod_revision == 0 || kv.mod_revision >= r.min_mod_revision)
                && (r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision)
                && (r.min_create_revision == 0 || kv.create_revision >= r.min_create_revision)
        };
        kvs.retain(keep);
        let target = SortTarget::try_from(r.sort_target).ok();
        let mut order = SortOrder::try_from(r.sort_order).unwrap_or(SortOrder::None);
        if target != Some(SortTarget::Key) && order == SortOrder::None {
            // etcd sorts ascending by default when the target is not the key.
            order = SortOrder::Ascend;
        }
        if order != SortOrder::None {
            let by = |a: &KeyValue, b: &KeyValue| match target {
                Some(SortTarget::Key) => a.key.cmp(&b.key),
                Some(SortTarget::Version) => a.version.cmp(&b.version),
                Some(SortTarget::Create) => a.create_revision.cmp(&b.create_revision),
                Some(SortTarget::Mod) => a.mod_revision.cmp(&b.mod_revision),
                Some(SortTarget::Value) => a.value.cmp(&b.value),
                None => Ordering::Equal,
            };
            // Stable, so ties stay in key order (as Go's insertion sort keeps
            // them for the small ranges etcd sorts here).
            match order {
                SortOrder::Descend => kvs.sort_by(|a, b| by(b, a)),
                _ => kvs.sort_by(by),
            }
        }
        let mut more = false;
        if r.limit > 0 && kvs.len() as i64 > r.limit {
            kvs.truncate(r.limit as usize);
            more = true;
        }
        if r.keys_only {
            for kv in &mut kvs {
                kv.value = Bytes::new();
            }
        }
        Ok(RangeResponse {
            header: inner_header(cur),
            kvs,
            more,
            count,
        })
    }

    // ----- KV -----

    /// Range (`Status` errors: empty key; a future revision).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, Status> {
        check_range_request(req)?;
        let mut resp = self.range_op(req, self.rev)?;
        resp.header = header(self.rev);
        Ok(resp)
    }

    /// Put (errors: empty key, ignore_* misuse, unknown lease, ignore_* on a
    /// missing key). Always makes a new revision.
    pub fn put(&mut self, req: &PutRequest) -> Result<PutResponse, Status> {
        check_put_request(req)?;
        // applierV3backend.Put checks the lease first, then ignore_*.
        if req.lease != 0 && !self.leases.contains_key(&req.lease) {
            return Err(lease_not_found());
        }
        if (req.ignore_value || req.ignore_lease) && !self.kvs.contains_key(&req.key) {
            return Err(Status::invalid_argument(KEY_NOT_FOUND));
        }
        self.begin();
        let mut resp = self.put_op(req);
        self.commit();
        resp.header = header(self.rev);
        Ok(resp)
    }

    fn put_op(&mut self, p: &PutRequest) -> PutResponse {
        let prev = self.kvs.get(&p.key).cloned();
        let value = match (&prev, p.ignore_value) {
            (Some(prev), true) => prev.value.clone(),
            _ => p.value.clone(),
        };
        let lease = match (&prev, p.ignore_lease) {
            (Some(prev), true) => prev.lease,
            _ => p.lease,
        };
        self.apply_put(&p.key, value, lease);
        PutResponse {
            header: inner_header(self.rev + 1),
            prev_kv: prev.filter(|_| p.prev_kv),
        }
    }

    /// DeleteRange (error: empty key). A new revision only if it deleted something.
    pub fn delete_range(
        &mut self,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, Status> {
        check_delete_request(req)?;
        self.begin();
        let mut resp = self.delete_op(req);
        self.commit();
        resp.header = header(self.rev);
        Ok(resp)
    }

    fn delete_op(&mut self, d: &DeleteRangeRequest) -> DeleteRangeResponse {
        let end = End::of(&d.range_end);
        let gone: Vec<KeyValue> = self.live(&d.key, &end).cloned().collect();
        for kv in &gone {
            self.apply_delete(&kv.key);
        }
        DeleteRangeResponse {
            header: inner_header(self.read_rev()),
            deleted: gone.len() as i64,
            prev_kvs: if d.prev_kv { gone } else { Vec::new() },
        }
    }

    /// Txn: request checks, then the compares on the store as it is, then the
    /// chosen branch (nested Txns likewise), all in one revision if anything
    /// changed. Inner responses' headers carry only the revision (a nested
    /// TxnResponse's header is empty), as etcd's do.
    pub fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, Status> {
        check_txn_request(req, MAX_TXN_OPS)?;
        check_intervals(&req.success)?;
        check_intervals(&req.failure)?;
        let mut path = Vec::new();
        self.compare_path(req, &mut path);
        let is_write = !is_txn_readonly(req);
        if is_write {
            self.check_ops(req, &path, &mut 0, &Etcd::check_put)?;
        }
        self.check_ops(req, &path, &mut 0, &Etcd::check_range)?;
        if is_write {
            self.begin();
        }
        let mut resp = self.apply_ops(req, &path, &mut 0);
        if is_write {
            self.commit();
        }
        resp.header = header(self.rev);
        Ok(resp)
    }

    /// The outcome of each (nested) Txn's compares, in the order etcd
    /// flattens them (`compareToPath`).
    fn compare_path(&self, rt: &TxnRequest, path: &mut Vec<bool>) {
        let ok = rt.compare.iter().all(|c| self.compare(c));
        path.push(ok);
        for op in if ok { &rt.success } else { &rt.failure } {
            if let Some(Request::RequestTxn(t)) = &op.request {
                self.compare_path(t, path);
            }
        }
    }

    fn compare(&self, c: &Compare) -> bool {
        let end = End::of(&c.range_end);
        let mut kvs = self.live(&c.key, &end).peekable();
        if kvs.peek().is_none() {
            // A missing key has no value to compare: always false; its
            // revisions, version and lease compare as 0.
            return c.target != CompareTarget::Value as i32 && compare_kv(c, &KeyValue::default());
        }
        kvs.all(|kv| compare_kv(c, kv))
    }

    fn check_ops(
        &self,
        rt: &TxnRequest,
        path: &[bool],
        at: &mut usize,
        check: &dyn Fn(&Etcd, &RequestOp) -> Result<(), Status>,
    ) -> Result<(), Status> {
        let ok = path[*at];
        *at += 1;
        for op in if ok { &rt.success } else { &rt.failure } {
            match &op.request {
                Some(Request::RequestTxn(t)) => self.check_ops(t, path, at, check)?,
                _ => check(self, op)?,
            }
        }
        Ok(())
    }

    fn check_put(&self, op: &RequestOp) -> Result<(), Status> {
        let Some(Request::RequestPut(p)) = &op.request else {
            return Ok(());
        };
        if (p.ignore_value || p.ignore_lease) && !self.kvs.contains_key(&p.key) {
            return Err(Status::invalid_argument(KEY_NOT_FOUND));
        }
        if p.lease != 0 && !self.leases.contains_key(&p.lease) {
            return Err(lease_not_found());
        }
        Ok(())
    }

    fn check_range(&self, op: &RequestOp) -> Result<(), Status> {
        match &op.request {
            Some(Request::RequestRange(r)) if r.revision > self.rev => {
                Err(Status::out_of_range(FUTURE_REV))
            }
            _ => Ok(()),
        }
    }

    fn apply_ops(&mut self, rt: &TxnRequest, path: &[bool], at: &mut usize) -> TxnResponse {
        let succeeded = path[*at];
        *at += 1;
        let ops = if succeeded { &rt.success } else { &rt.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(Request::RequestRange(r)) => Some(Response::ResponseRange(
                    self.range_op(r, self.read_rev())
                        .expect("a Txn's ranges were checked"),
                )),
                Some(Request::RequestPut(p)) => Some(Response::ResponsePut(self.put_op(p))),
                Some(Request::RequestDeleteRange(d)) => {
                    Some(Response::ResponseDeleteRange(self.delete_op(d)))
                }
                Some(Request::RequestTxn(t)) => {
                    Some(Response::ResponseTxn(self.apply_ops(t, path, at)))
                }
                None => None,
            };
            responses.push(ResponseOp { response });
        }
        TxnResponse {
            header: Some(ResponseHeader::default()),
            succeeded,
            responses,
        }
    }

    // ----- leases -----

    fn next_lease_id(&mut self) -> i64 {
        loop {
            // splitmix64
            self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            let id = (z & (i64::MAX as u64)) as i64;
            if id != 0 && self.granted.insert(id) {
                return id;
            }
        }
    }

    /// LeaseGrant as etcd answers it, or its error for a TTL above
    /// [`MAX_LEASE_TTL`]. TTLs below [`MIN_LEASE_TTL`] are raised to it.
    pub fn try_lease_grant(&mut self, now: Time, ttl: i64) -> Result<LeaseGrantResponse, Status> {
        self.observe(now);
        if ttl > MAX_LEASE_TTL {
            return Err(Status::out_of_range(TTL_TOO_LARGE));
        }
        let ttl = ttl.max(MIN_LEASE_TTL);
        let id = self.next_lease_id();
        self.leases.insert(
            id,
            Lease {
                ttl,
                expires_at: now + Time::from_secs(ttl as u64),
                keys: BTreeSet::new(),
            },
        );
        Ok(LeaseGrantResponse {
            header: header(self.rev),
            id,
            ttl,
            error: String::new(),
        })
    }

    /// LeaseGrant: the lease expires at `now + ttl` (ttl raised to
    /// [`MIN_LEASE_TTL`]). A TTL above [`MAX_LEASE_TTL`] grants nothing and
    /// answers id 0 with the error text in `error` (see [`Etcd::try_lease_grant`]).
    pub fn lease_grant(&mut self, now: Time, ttl: i64) -> LeaseGrantResponse {
        self.try_lease_grant(now, ttl)
            .unwrap_or_else(|status| LeaseGrantResponse {
                header: header(self.rev),
                error: status.message().to_owned(),
                ..LeaseGrantResponse::default()
            })
    }

    /// Renews: the lease then expires at now + its granted TTL. Unknown or
    /// expired lease: ttl 0 in the answer (as etcd answers). An expired lease
    /// that [`Etcd::expire`] has not revoked yet is not renewed (etcd holds
    /// such a keepalive until the revoke, then answers ttl 0).
    pub fn lease_keepalive(&mut self, now: Time, id: i64) -> LeaseKeepAliveResponse {
        self.observe(now);
        let ttl = match self.leases.get_mut(&id) {
            Some(l) if l.expires_at > now => {
                l.expires_at = now + Time::from_secs(l.ttl as u64);
                l.ttl
            }
            _ => 0,
        };
        LeaseKeepAliveResponse {
            header: header(self.rev),
            id,
            ttl,
        }
    }

    /// LeaseRevoke: deletes the lease's keys in one revision (none if it had
    /// none). Unknown lease: etcd's "requested lease not found" (NotFound).
    pub fn lease_revoke(&mut self, id: i64) -> Result<LeaseRevokeResponse, Status> {
        if !self.revoke(id) {
            return Err(lease_not_found());
        }
        Ok(LeaseRevokeResponse {
            header: header(self.rev),
        })
    }

    fn revoke(&mut self, id: i64) -> bool {
        let Some(lease) = self.leases.remove(&id) else {
            return false;
        };
        self.begin();
        // etcd deletes them in key order.
        for key in &lease.keys {
            self.apply_delete(key);
        }
        self.commit();
        true
    }

    /// etcd's expiry loop: revokes every lease whose expiry is <= now, earliest
    /// expiry first (ties by id), each revoke deleting that lease's keys in one
    /// revision. Returns the ids expired, in that order.
    pub fn expire(&mut self, now: Time) -> Vec<i64> {
        self.observe(now);
        let mut due: Vec<(Time, i64)> = self
            .leases
            .iter()
            .filter(|(_, l)| l.expires_at <= now)
            .map(|(&id, l)| (l.expires_at, id))
            .collect();
        due.sort_unstable();
        due.into_iter()
            .map(|(_, id)| {
                self.revoke(id);
                id
            })
            .collect()
    }

    /// When a live lease expires (None if unknown/revoked/expired): for the
    /// simulator's invariants. A lease past its expiry that [`Etcd::expire`]
    /// has not revoked yet is still live to etcd, so it answers Some then.
    pub fn lease_expires_at(&self, id: i64) -> Option<Time> {
        self.leases.get(&id).map(|l| l.expires_at)
    }

    /// The live leases' ids, ascending.
    pub fn leases(&self) -> Vec<i64> {
        self.leases.keys().copied().collect()
    }

    /// A live lease's granted TTL in seconds.
    pub fn lease_ttl(&self, id: i64) -> Option<i64> {
        self.leases.get(&id).map(|l| l.ttl)
    }

    /// The keys attached to a live lease, sorted.
    pub fn lease_keys(&self, id: i64) -> Vec<Bytes> {
        self.leases
            .get(&id)
            .map(|l| l.keys.iter().cloned().collect())
            .unwrap_or_default()
    }

    // ----- the election service -----

    /// The lease of the session the election server opens for a request: the
    /// one named, or for lease 0 a new lease of [`SESSION_TTL`] seconds granted
    /// at [`Etcd::now`] and left to expire (`concurrency.NewSession`, then
    /// `Orphan`).
    fn session(&mut self, lease: i64) -> i64 {
        if lease != 0 {
            return lease;
        }
        let now = self.clock;
        self.lease_grant(now, SESSION_TTL).id
    }

    /// Resign: a Txn deleting `key` if its create revision still equals `rev`,
    /// else doing nothing; either way it answers that Txn's header (so the
    /// revision after it), and no error. A gone lease is no error either.
    pub fn resign(&mut self, req: &ResignRequest) -> Result<ResignResponse, Status> {
        let leader = req
            .leader
            .as_ref()
            .ok_or_else(|| Status::unknown(MISSING_LEADER_KEY))?;
        self.session(leader.lease);
        let txn = TxnRequest {
            compare: vec![create_revision_is(&leader.key, leader.rev)],
            success: vec![RequestOp {
                request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                    key: leader.key.clone(),
                    ..DeleteRangeRequest::default()
                })),
            }],
            failure: Vec::new(),
        };
        let resp = self.txn(&txn).map_err(election_error)?;
        Ok(ResignResponse {
            header: resp.header,
        })
    }

    /// Proclaim: a Txn putting `value` at `key` with the request's lease if the
    /// key's create revision equals `rev`; else "election: not leader". A lease
    /// etcd no longer has fails the put with "requested lease not found".
    /// Errors come with code Unknown: the election server passes on its
    /// client's Go errors, which carry no gRPC status.
    pub fn proclaim(&mut self, req: &ProclaimRequest) -> Result<ProclaimResponse, Status> {
        let leader = req
            .leader
            .as_ref()
            .ok_or_else(|| Status::unknown(MISSING_LEADER_KEY))?;
        let lease = self.session(leader.lease);
        let txn = TxnRequest {
            compare: vec![create_revision_is(&leader.key, leader.rev)],
            success: vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: leader.key.clone(),
                    value: req.value.clone(),
                    lease,
                    ..PutRequest::default()
                })),
            }],
            failure: Vec::new(),
        };
        let resp = self.txn(&txn).map_err(election_error)?;
        if !resp.succeeded {
            return Err(Status::unknown(NOT_LEADER));
        }
        Ok(ProclaimResponse {
            header: resp.header,
        })
    }

    /// Leader: the key under `name + "/"` with the lowest create revision
    /// (a Range with prefix, sort by create ascending, limit 1), with that
    /// Range's header; none: "election: no leader" (code Unknown).
    pub fn leader(&self, req: &LeaderRequest) -> Result<LeaderResponse, Status> {
        let mut key = req.name.to_vec();
        key.push(b'/');
        let range_end = prefix_end(&key);
        let resp = self
            .range(&RangeRequest {
                key: Bytes::from(key),
                range_end,
                limit: 1,
                sort_order: SortOrder::Ascend as i32,
                sort_target: SortTarget::Create as i32,
                ..RangeRequest::default()
            })
            .map_err(election_error)?;
        match resp.kvs.into_iter().next() {
            Some(kv) => Ok(LeaderResponse {
                header: resp.header,
                kv: Some(kv),
            }),
            None => Err(Status::unknown(NO_LEADER)),
        }
    }

    // ----- watches -----

    /// When on, a watch created with a past start revision gets its history
    /// as etcd's sync loop sends it: one WatchResponse with the events of up
    /// to 1000 revisions, its header revision the store's revision at the
    /// take, instead of one response per revision. Off by default.
    pub fn set_batch_replay(&mut self, on: bool) {
        self.batch_replay = on;
    }

    /// Creates a watch (key/range_end/start_revision/filters as etcd reads
    /// them; start_revision 0 = from the next revision; a start revision in
    /// the past replays history from there). Returns the creation response:
    /// created=true, watch_id, header.revision = the current revision. A
    /// `watch_id` in the request is used if free; an empty range, or an id in
    /// use, answers canceled=true, watch_id -1 and etcd's cancel reason.
    pub fn watch_create(&mut self, req: &WatchCreateRequest) -> WatchResponse {
        let rev = self.rev;
        let created = |watch_id: i64, reason: &str| WatchResponse {
            header: header(rev),
            watch_id,
            created: true,
            canceled: !reason.is_empty(),
            cancel_reason: reason.to_owned(),
            ..WatchResponse::default()
        };
        let key = if req.key.is_empty() {
            // "\0" is the smallest key.
            Bytes::from_static(&[0])
        } else {
            req.key.clone()
        };
        let end = End::of(&req.range_end);
        if let End::To(e) = &end
            && key[..] >= e[..]
        {
            return created(-1, EMPTY_WATCHER_RANGE);
        }
        let id = if req.watch_id != 0 {
            if self.watches.contains_key(&req.watch_id) {
                return created(-1, DUPLICATE_WATCH_ID);
            }
            req.watch_id
        } else {
            while self.watches.contains_key(&self.next_watch_id) {
                self.next_watch_id += 1;
            }
            self.next_watch_id += 1;
            self.next_watch_id - 1
        };
        let start = if req.start_revision == 0 {
            self.rev + 1
        } else {
            req.start_revision
        };
        let filters = |f: FilterType| req.filters.contains(&(f as i32));
        self.watches.insert(
            id,
            Watch {
                key,
                end,
                no_put: filters(FilterType::Noput),
                no_delete: filters(FilterType::Nodelete),
                prev_kv: req.prev_kv,
                next_rev: start,
                unsynced: start <= self.rev,
            },
        );
        created(id, "")
    }

    /// Cancels a watch; its events not yet taken are dropped.
    pub fn watch_cancel(&mut self, watch_id: i64) {
        self.watches.remove(&watch_id);
    }

    /// Every event not yet taken, per watch, in revision order: one
    /// WatchResponse per watch per revision (all of that revision's matching
    /// events in it, header.revision = that revision). Includes replayed
    /// history for watches created with a past start revision (but see
    /// [`Etcd::set_batch_replay`]). Ordered by header revision, then watch id.
    pub fn take_watch_events(&mut self) -> Vec<(i64, WatchResponse)> {
        let cur = self.rev;
        let mut out = Vec::new();
        for (&id, w) in self.watches.iter_mut() {
            if w.next_rev > cur {
                continue;
            }
            let from = w.next_rev.max(2);
            let revisions = (from..=cur).zip(&self.history[(from - 2) as usize..]);
            if self.batch_replay && w.unsynced {
                let mut events = Vec::new();
                let mut revs = 0;
                let mut more = None;
                for (rev, changes) in revisions {
                    let mut matching = changes.iter().filter(|c| w.matches(&c.key)).peekable();
                    if matching.peek().is_none() {
                        continue;
                    }
                    revs += 1;
                    if revs > WATCH_BATCH_MAX_REVS {
                        more = Some(rev);
                        break;
                    }
                    events.extend(
                        matching
                            .filter(|c| w.passes(c))
                            .map(|c| c.event(rev, w.prev_kv)),
                    );
                }
                if !events.is_empty() {
                    out.push((id, watch_response(id, cur, events)));
                }
                match more {
                    Some(rev) => w.next_rev = rev,
                    None => {
                        w.next_rev = cur + 1;
                        w.unsynced = false;
                    }
                }
                continue;
            }
            for (rev, changes) in revisions {
                let events: Vec<Event> = changes
                    .iter()
                    .filter(|c| w.matches(&c.key) && w.passes(c))
                    .map(|c| c.event(rev, w.prev_kv))
                    .collect();
                if !events.is_empty() {
                    out.push((id, watch_response(id, rev, events)));
                }
            }
            w.next_rev = cur + 1;
            w.unsynced = false;
        }
        out.sort_by_key(|(id, resp)| (resp.header.as_ref().map_or(0, |h| h.revision), *id));
        out
    }

    // ----- inspection -----

    /// The live KeyValue at `key`.
    pub fn get(&self, key: &[u8]) -> Option<KeyValue> {
        self.kvs.get(key).cloned()
    }

    /// The live keys starting with `prefix` (all for an empty one), sorted by key.
    pub fn keys_with_prefix(&self, prefix: &[u8]) -> Vec<KeyValue> {
        self.kvs
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, kv)| kv.clone())
            .collect()
    }

    /// The keys with `prefix` as they were at revision `rev` (for invariants
    /// about past states), sorted by key.
    pub fn keys_with_prefix_at(&self, prefix: &[u8], rev: i64) -> Vec<KeyValue> {
        let end = if prefix.is_empty() {
            End::From
        } else {
            End::of(&prefix_end(prefix))
        };
        let start: &[u8] = if prefix.is_empty() { &[0] } else { prefix };
        self.kvs_at(start, &end, rev)
    }
}

fn watch_response(watch_id: i64, revision: i64, events: Vec<Event>) -> WatchResponse {
    WatchResponse {
        header: header(revision),
        watch_id,
        events,
        ..WatchResponse::default()
    }
}

/// The election server returns its clientv3 client's errors, which are Go
/// errors without a gRPC status, so they reach the caller as code Unknown with
/// the same message.
fn election_error(status: Status) -> Status {
    Status::unknown(status.message().to_owned())
}

fn create_revision_is(key: &Bytes, rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.clone(),
        range_end: Bytes::new(),
        target_union: Some(TargetUnion::CreateRevision(rev)),
    }
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let number = |kv_value: i64| {
        let given = match (CompareTarget::try_from(c.target), &c.target_union) {
            (Ok(CompareTarget::Version), Some(TargetUnion::Version(v)))
            | (Ok(CompareTarget::Create), Some(TargetUnion::CreateRevision(v)))
            | (Ok(CompareTarget::Mod), Some(TargetUnion::ModRevision(v)))
            | (Ok(CompareTarget::Lease), Some(TargetUnion::Lease(v))) => *v,
            _ => 0,
        };
        kv_value.cmp(&given)
    };
    let result = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Value) => {
            let given: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => b"",
            };
            kv.value[..].cmp(given)
        }
        Ok(CompareTarget::Version) => number(kv.version),
        Ok(CompareTarget::Create) => number(kv.create_revision),
        Ok(CompareTarget::Mod) => number(kv.mod_revision),
        Ok(CompareTarget::Lease) => number(kv.lease),
        Err(_) => Ordering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => result == Ordering::Equal,
        Ok(CompareResult::NotEqual) => result != Ordering::Equal,
        Ok(CompareResult::Greater) => result == Ordering::Greater,
        Ok(CompareResult::Less) => result == Ordering::Less,
        Err(_) => true,
    }
}

// ----- etcd's request checks (etcdserver/api/v3rpc/key.go) -----

fn check_range_request(r: &RangeRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(Status::invalid_argument(EMPTY_KEY));
    }
    Ok(())
}

fn check_put_request(r: &PutRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(Status::invalid_argument(EMPTY_KEY));
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(Status::invalid_argument(VALUE_PROVIDED));
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(Status::invalid_argument(LEASE_PROVIDED));
    }
    Ok(())
}

fn check_delete_request(r: &DeleteRangeRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(Status::invalid_argument(EMPTY_KEY));
    }
    Ok(())
}

fn check_txn_request(r: &TxnRequest, max_ops: usize) -> Result<(), Status> {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len());
    if opc > max_ops {
        return Err(Status::invalid_argument(TOO_MANY_OPS));
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(Status::invalid_argument(EMPTY_KEY));
    }
    for op in r.success.iter().chain(&r.failure) {
        match &op.request {
            Some(Request::RequestRange(r)) => check_range_request(r)?,
            Some(Request::RequestPut(p)) => check_put_request(p)?,
            Some(Request::RequestDeleteRange(d)) => check_delete_request(d)?,
            Some(Request::RequestTxn(t)) => check_txn_request(t, max_ops - opc)?,
            // An empty op.
            None => return Err(Status::invalid_argument(KEY_NOT_FOUND)),
        }
    }
    Ok(())
}

/// A DeleteRange's keys as etcd's interval tree holds them for the duplicate
/// check: the key alone, or `[key, range_end)` taken literally (so "\0" makes
/// an empty interval, as in etcd).
#[derive(Clone)]
enum Interval {
    Point(Bytes),
    Span(Bytes, Bytes),
}

impl Interval {
    fn contains(&self, key: &[u8]) -> bool {
        match self {
            Interval::Point(p) => &p[..] == key,
            Interval::Span(b, e) => &b[..] <= key && key < &e[..],
        }
    }
}

/// etcd's `checkIntervals`: within one branch (nested Txns included), no key
/// may be put twice, nor put and deleted; else "duplicate key given in txn
/// request". Returns the branch's puts and deletes.
fn check_intervals(reqs: &[RequestOp]) -> Result<(BTreeSet<Bytes>, Vec<Interval>), Status> {
    let duplicate = || Status::invalid_argument(DUPLICATE_KEY);
    let mut dels: Vec<Interval> = reqs
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) if d.range_end.is_empty() => {
                Some(Interval::Point(d.key.clone()))
            }
            Some(Request::RequestDeleteRange(d)) => {
                Some(Interval::Span(d.key.clone(), d.range_end.clone()))
            }
            _ => None,
        })
        .collect();
    let mut puts = BTreeSet::new();
    for op in reqs {
        let Some(Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.iter().any(|d| d.contains(k)) {
                return Err(duplicate());
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            // Then and else exclude each other, so the same key in both is fine.
            if (puts.contains(k) && !puts_then.contains(k)) || dels.iter().any(|d| d.contains(k)) {
                return Err(duplicate());
            }
            puts.insert(k.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in reqs {
        let Some(Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || dels.iter().any(|d| d.contains(&p.key)) {
            return Err(duplicate());
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

/// etcd's `isTxnReadonly`: only Ranges in either branch (a nested Txn counts as a write).
fn is_txn_readonly(r: &TxnRequest) -> bool {
    r.success
        .iter()
        .chain(&r.failure)
        .all(|op| matches!(op.request, Some(Request::RequestRange(_))))
}

/// The model against a real etcd (`ETCD_BIN` or `etcd` on the PATH): one
/// script of requests run on both, answers compared after replacing lease ids
/// by their grant order and blanking the ids etcd's headers carry. Ignored by
/// default as it needs the binary: `cargo test --test sim -- --ignored`.
#[cfg(test)]
mod against_etcd {
    use super::*;
    use etcdutil::Client;
    use etcdutil::proto::etcdserverpb::watch_request::RequestUnion;
    use etcdutil::proto::etcdserverpb::{
        LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, WatchRequest,
    };
    use etcdutil::proto::v3electionpb::LeaderKey;
    use std::time::Duration;
    use tokio::sync::mpsc;
    use tokio_stream::StreamExt;
    use tokio_stream::wrappers::ReceiverStream;

    /// A lease id no one was granted.
    const UNKNOWN_LEASE: i64 = 7;

    enum Op {
        Grant(i64),
        KeepAlive(i64),
        Revoke(i64),
        Range(RangeRequest),
        Put(PutRequest),
        Delete(DeleteRangeRequest),
        Txn(TxnRequest),
        Resign(ResignRequest),
        Proclaim(ProclaimRequest),
        Leader(LeaderRequest),
        Watch(WatchCreateRequest),
    }

    /// A step of the script: its request, given the leases granted so far
    /// and the revision reached (some requests name create revisions).
    type Step = Box<dyn Fn(&[i64], i64) -> Op>;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn put(key: &str, value: &str, lease: i64) -> PutRequest {
        PutRequest {
            key: b(key),
            value: b(value),
            lease,
            ..PutRequest::default()
        }
    }

    fn op(request: Request) -> RequestOp {
        RequestOp {
            request: Some(request),
        }
    }

    fn cmp(key: &str, target: CompareTarget, result: CompareResult, union: TargetUnion) -> Compare {
        Compare {
            result: result as i32,
            target: target as i32,
            key: b(key),
            range_end: Bytes::new(),
            target_union: Some(union),
        }
    }

    fn leader_key(key: &str, rev: i64, lease: i64) -> LeaderKey {
        LeaderKey {
            name: b("/e"),
            key: b(key),
            rev,
            lease,
        }
    }

    fn script() -> Vec<Step> {
        use CompareResult::*;
        use CompareTarget::*;
        let range = |key: &str, end: &[u8]| RangeRequest {
            key: b(key),
            range_end: Bytes::copy_from_slice(end),
            ..RangeRequest::default()
        };
        let watch = |key: &str, end: &[u8]| WatchCreateRequest {
            key: b(key),
            range_end: Bytes::copy_from_slice(end),
            ..WatchCreateRequest::default()
        };
        let r = range;
        vec![
            Box::new(|_, _| Op::Grant(1)),
            Box::new(|_, _| Op::Grant(60)),
            Box::new(|_, _| Op::Grant(60)),
            Box::new(|_, _| Op::Grant(60)),
            Box::new(move |_, _| Op::Watch(watch("/e/", b"/e0"))),
            Box::new(move |_, _| {
                Op::Watch(WatchCreateRequest {
                    filters: vec![FilterType::Nodelete as i32],
                    ..watch("a", b"")
                })
            }),
            Box::new(move |_, _| {
                Op::Watch(WatchCreateRequest {
                    prev_kv: true,
                    ..watch("b", b"")
                })
            }),
            Box::new(move |_, _| Op::Watch(watch("a", b"\0"))),
            Box::new(|_, _| Op::Put(put("a", "1", 0))),
            Box::new(|l, _| Op::Put(put("a", "2", l[0]))),
            Box::new(|l, _| Op::Put(put("b", "x", l[1]))),
            Box::new(|l, _| Op::Put(put("a", "3", l[1]))),
            Box::new(|_, _| Op::Put(put("a", "3", UNKNOWN_LEASE))),
            Box::new(|_, _| Op::Put(put("", "3", 0))),
            Box::new(|_, _| {
                Op::Put(PutRequest {
                    ignore_value: true,
                    ..put("nope", "", 0)
                })
            }),
            Box::new(|_, _| {
                Op::Put(PutRequest {
                    ignore_value: true,
                    prev_kv: true,
                    ..put("a", "", 0)
                })
            }),
            Box::new(|_, _| {
                Op::Put(PutRequest {
                    ignore_lease: true,
                    prev_kv: true,
                    ..put("a", "4", 0)
                })
            }),
            Box::new(move |_, _| {
                Op::Txn(TxnRequest {
                    compare: vec![cmp("a", Version, Equal, TargetUnion::Version(5))],
                    success: vec![
                        op(Request::RequestPut(put("c", "c", 0))),
                        op(Request::RequestRange(r("a", b"z"))),
                        op(Request::RequestPut(put("d", "d", 0))),
                        op(Request::RequestDeleteRange(DeleteRangeRequest {
                            key: b("zz"),
                            ..DeleteRangeRequest::default()
                        })),
                    ],
                    failure: vec![],
                })
            }),
            Box::new(move |_, _| {
                Op::Txn(TxnRequest {
                    compare: vec![cmp("missing", Value, Equal, TargetUnion::Value(b("")))],
                    success: vec![],
                    failure: vec![
                        op(Request::RequestDeleteRange(DeleteRangeRequest {
                            key: b("zz"),
                            ..DeleteRangeRequest::default()
                        })),
                        op(Request::RequestRange(r("a", b""))),
                    ],
                })
            }),
            Box::new(move |_, _| {
                Op::Txn(TxnRequest {
                    compare: vec![cmp(
                        "missing",
                        Create,
                        Equal,
                        TargetUnion::CreateRevision(0),
                    )],
                    success: vec![op(Request::RequestRange(r("a", b"\0")))],
                    failure: vec![],
                })
            }),
            Box::new(move |_, _| {
                Op::Txn(TxnRequest {
                    compare: vec![],
                    success: vec![
                        op(Request::RequestTxn(TxnRequest {
                            compare: vec![cmp(
                                "c",
                                Create,
                                Greater,
                                TargetUnion::CreateRevision(0),
                            )],
                            success: vec![
                                op(Request::RequestRange(r("c", b""))),
                                op(Request::RequestPut(put("e", "e", 0))),
                            ],
                            failure: vec![],
                        })),
                        op(Request::RequestDeleteRange(DeleteRangeRequest {
                            key: b("b"),
                            prev_kv: true,
                            ..DeleteRangeRequest::default()
                        })),
                        op(Request::RequestRange(r("a", b"\0"))),
                    ],
                    failure: vec![],
                })
            }),
            Box::new(|_, _| {
                Op::Txn(TxnRequest {
                    success: vec![
                        op(Request::RequestPut(put("x", "1", 0))),
                        op(Request::RequestPut(put("x", "2", 0))),
                    ],
                    ..TxnRequest::default()
                })
            }),
            Box::new(|_, _| {
                Op::Txn(TxnRequest {
                    success: vec![op(Request::RequestPut(put("x", "1", UNKNOWN_LEASE)))],
                    ..TxnRequest::default()
                })
            }),
            Box::new(|_, _| {
                Op::Txn(TxnRequest {
                    success: vec![RequestOp { request: None }],
                    ..TxnRequest::default()
                })
            }),
            Box::new(move |_, rev| {
                Op::Txn(TxnRequest {
                    success: vec![op(Request::RequestRange(RangeRequest {
                        revision: rev + 1,
                        ..r("a", b"")
                    }))],
                    ..TxnRequest::default()
                })
            }),
            Box::new(move |_, _| {
                Op::Range(RangeRequest {
                    limit: 2,
                    ..r("a", b"\0")
                })
            }),
            Box::new(move |_, _| {
                Op::Range(RangeRequest {
                    limit: 1,
                    sort_order: SortOrder::Descend as i32,
                    sort_target: SortTarget::Create as i32,
                    ..r("a", b"\0")
                })
            }),
            Box::new(move |_, _| {
                Op::Range(RangeRequest {
                    sort_target: SortTarget::Mod as i32,
                    ..r("a", b"\0")
                })
            }),
            Box::new(move |_, _| {
                Op::Range(RangeRequest {
                    limit: 1,
                    min_create_revision: 6,
                    ..r("a", b"\0")
                })
            }),
            Box::new(move |_, _| {
                Op::Range(RangeRequest {
                    max_create_revision: 3,
                    max_mod_revision: 100,
                    ..r("a", b"\0")
                })
            }),
            Box::new(move |_, _| {
                Op::Range(RangeRequest {
                    count_only: true,
                    limit: 1,
                    ..r("a", b"\0")
                })
            }),
            Box::new(move |_, _| {
                Op::Range(RangeRequest {
                    keys_only: true,
                    ..r("a", b"c")
                })
            }),
            Box::new(move |_, _| {
                Op::Range(RangeRequest {
                    revision: 3,
                    ..r("a", b"\0")
                })
            }),
            Box::new(move |_, rev| {
                Op::Range(RangeRequest {
                    revision: rev + 1,
                    ..r("a", b"")
                })
            }),
            Box::new(move |_, _| Op::Range(r("", b""))),
            Box::new(move |_, _| Op::Range(r("z", b"a"))),
            Box::new(move |_, rev| {
                Op::Txn(TxnRequest {
                    compare: vec![
                        Compare {
                            range_end: b("\0"),
                            ..cmp("a", Create, Greater, TargetUnion::CreateRevision(0))
                        },
                        Compare {
                            range_end: b("e"),
                            ..cmp("a", Mod, Less, TargetUnion::ModRevision(rev))
                        },
                        cmp("a", Lease, Equal, TargetUnion::Lease(0)),
                        cmp("nope", Lease, Equal, TargetUnion::Lease(0)),
                    ],
                    success: vec![
                        op(Request::RequestPut(put("f", "f1", 0))),
                        op(Request::RequestRange(RangeRequest {
                            revision: rev,
                            ..r("a", b"\0")
                        })),
                        op(Request::RequestTxn(TxnRequest {
                            compare: vec![cmp("f", Value, Equal, TargetUnion::Value(b("f1")))],
                            success: vec![op(Request::RequestPut(put("g", "then", 0)))],
                            failure: vec![op(Request::RequestPut(put("g", "else", 0)))],
                        })),
                        op(Request::RequestDeleteRange(DeleteRangeRequest {
                            key: b("y"),
                            range_end: b("\0"),
                            ..DeleteRangeRequest::default()
                        })),
                        op(Request::RequestPut(put("yy", "y", 0))),
                        op(Request::RequestRange(r("a", b"\0"))),
                    ],
                    failure: vec![],
                })
            }),
            Box::new(move |_, _| {
                Op::Txn(TxnRequest {
                    compare: vec![Compare {
                        range_end: b("z"),
                        ..cmp("a", Version, Greater, TargetUnion::Version(1))
                    }],
                    success: vec![],
                    failure: vec![
                        op(Request::RequestDeleteRange(DeleteRangeRequest {
                            key: b("y"),
                            range_end: b("z"),
                            prev_kv: true,
                        })),
                        op(Request::RequestPut(put("g", "2", 0))),
                    ],
                })
            }),
            Box::new(move |_, _| {
                Op::Txn(TxnRequest {
                    success: vec![
                        op(Request::RequestDeleteRange(DeleteRangeRequest {
                            key: b("a"),
                            range_end: b("z"),
                            ..DeleteRangeRequest::default()
                        })),
                        op(Request::RequestPut(put("g", "3", 0))),
                    ],
                    ..TxnRequest::default()
                })
            }),
            Box::new(|_, _| {
                Op::Put(PutRequest {
                    ignore_lease: true,
                    ..put("f", "f2", 0)
                })
            }),
            Box::new(|l, _| Op::Put(put("f", "f3", l[0]))),
            Box::new(|_, _| {
                Op::Put(PutRequest {
                    ignore_lease: true,
                    ignore_value: true,
                    prev_kv: true,
                    ..put("f", "", 0)
                })
            }),
            Box::new(move |_, _| {
                Op::Range(RangeRequest {
                    sort_order: SortOrder::Descend as i32,
                    sort_target: SortTarget::Version as i32,
                    ..r("a", b"\0")
                })
            }),
            Box::new(move |_, _| {
                Op::Range(RangeRequest {
                    sort_order: SortOrder::Ascend as i32,
                    sort_target: SortTarget::Value as i32,
                    min_mod_revision: 5,
                    limit: 2,
                    ..r("a", b"\0")
                })
            }),
            // An election: two candidates' keys, as Campaign puts them.
            Box::new(|l, _| Op::Put(put("/e/k1", "one", l[2]))),
            Box::new(|l, _| Op::Put(put("/e/k2", "two", l[3]))),
            Box::new(|_, _| Op::Leader(LeaderRequest { name: b("/e") })),
            Box::new(|_, _| Op::Leader(LeaderRequest { name: b("/none") })),
            Box::new(|l, rev| {
                Op::Proclaim(ProclaimRequest {
                    leader: Some(leader_key("/e/k1", rev - 1, l[2])),
                    value: b("uno"),
                })
            }),
            Box::new(|l, rev| {
                Op::Proclaim(ProclaimRequest {
                    leader: Some(leader_key("/e/k1", rev, l[2])),
                    value: b("nope"),
                })
            }),
            Box::new(|_, rev| {
                Op::Proclaim(ProclaimRequest {
                    leader: Some(leader_key("/e/k2", rev - 1, UNKNOWN_LEASE)),
                    value: b("dos"),
                })
            }),
            Box::new(|_, _| Op::Proclaim(ProclaimRequest::default())),
            Box::new(|l, rev| {
                Op::Resign(ResignRequest {
                    leader: Some(leader_key("/e/k1", rev, l[2])),
                })
            }),
            Box::new(|l, rev| {
                Op::Resign(ResignRequest {
                    leader: Some(leader_key("/e/k1", rev - 2, l[2])),
                })
            }),
            Box::new(|_, _| Op::Leader(LeaderRequest { name: b("/e") })),
            Box::new(|_, _| Op::Resign(ResignRequest::default())),
            Box::new(|l, _| Op::KeepAlive(l[0])),
            Box::new(|_, _| Op::KeepAlive(UNKNOWN_LEASE)),
            Box::new(|l, _| Op::Revoke(l[1])),
            Box::new(|l, _| Op::Revoke(l[1])),
            Box::new(|l, _| Op::Revoke(l[3])),
            Box::new(|l, rev| {
                Op::Resign(ResignRequest {
                    leader: Some(leader_key("/e/k2", rev - 1, l[3])),
                })
            }),
            Box::new(|_, _| Op::Leader(LeaderRequest { name: b("/e") })),
            Box::new(move |_, _| {
                Op::Delete(DeleteRangeRequest {
                    key: b("c"),
                    range_end: b("e"),
                    prev_kv: true,
                })
            }),
            Box::new(move |_, _| {
                Op::Delete(DeleteRangeRequest {
                    key: b("c"),
                    range_end: b("e"),
                    prev_kv: true,
                })
            }),
            // Replays, created last so that etcd's sync loop sends them whole.
            Box::new(move |_, _| {
                Op::Watch(WatchCreateRequest {
                    start_revision: 2,
                    ..watch("a", b"\0")
                })
            }),
            Box::new(move |_, _| {
                Op::Watch(WatchCreateRequest {
                    start_revision: 3,
                    prev_kv: true,
                    filters: vec![FilterType::Noput as i32],
                    ..watch("a", b"\0")
                })
            }),
            Box::new(move |_, rev| {
                Op::Watch(WatchCreateRequest {
                    start_revision: rev,
                    ..watch("/e/", b"/e0")
                })
            }),
            Box::new(move |_, _| {
                Op::Watch(WatchCreateRequest {
                    start_revision: 2,
                    prev_kv: true,
                    ..watch("f", b"")
                })
            }),
            Box::new(move |_, _| {
                Op::Watch(WatchCreateRequest {
                    start_revision: 2,
                    filters: vec![FilterType::Noput as i32],
                    ..watch("g", b"")
                })
            }),
            Box::new(move |_, _| {
                Op::Watch(WatchCreateRequest {
                    start_revision: 1000,
                    ..watch("a", b"")
                })
            }),
            Box::new(move |_, _| Op::Watch(watch("b", b"a"))),
            Box::new(move |_, _| {
                Op::Watch(WatchCreateRequest {
                    watch_id: 1,
                    ..watch("q", b"")
                })
            }),
            Box::new(move |_, _| {
                Op::Watch(WatchCreateRequest {
                    watch_id: 100,
                    ..watch("q", b"")
                })
            }),
        ]
    }

    /// An answer as text, with lease ids replaced by `L<grant order>` and the
    /// cluster's ids in headers (which differ) blanked when set.
    fn text<T: std::fmt::Debug>(answer: Result<T, Status>, leases: &[i64]) -> String {
        let mut s = match answer {
            Ok(resp) => format!("{resp:?}"),
            Err(status) => format!("Err({:?}, {:?})", status.code(), status.message()),
        };
        for (i, id) in leases.iter().enumerate() {
            s = s.replace(&id.to_string(), &format!("L{i}"));
        }
        for field in ["cluster_id: ", "member_id: ", "raft_term: "] {
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(at) = rest.find(field) {
                let (head, tail) = rest.split_at(at + field.len());
                out.push_str(head);
                let digits = tail
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(tail.len());
                out.push_str(if &tail[..digits] == "0" { "0" } else { "_" });
                rest = &tail[digits..];
            }
            out.push_str(rest);
            s = out;
        }
        s
    }

    /// The answers to the steps, and every watch response as (watch id, text).
    fn run_model() -> (Vec<String>, Vec<(i64, String)>) {
        let mut m = Etcd::new(1);
        m.set_batch_replay(true);
        let mut leases = Vec::new();
        let mut answers = Vec::new();
        let mut watches = Vec::new();
        let now = Time::from_secs(1);
        for step in script() {
            let answer = match step(&leases, m.revision()) {
                Op::Grant(ttl) => {
                    let resp = m.lease_grant(now, ttl);
                    leases.push(resp.id);
                    text(Ok(resp), &leases)
                }
                Op::KeepAlive(id) => text(Ok(m.lease_keepalive(now, id)), &leases),
                Op::Revoke(id) => text(m.lease_revoke(id), &leases),
                Op::Range(r) => text(m.range(&r), &leases),
                Op::Put(r) => text(m.put(&r), &leases),
                Op::Delete(r) => text(m.delete_range(&r), &leases),
                Op::Txn(r) => text(m.txn(&r), &leases),
                Op::Resign(r) => text(m.resign(&r), &leases),
                Op::Proclaim(r) => text(m.proclaim(&r), &leases),
                Op::Leader(r) => text(m.leader(&r), &leases),
                Op::Watch(r) => text(Ok(m.watch_create(&r)), &leases),
            };
            answers.push(answer);
            for (id, resp) in m.take_watch_events() {
                watches.push((id, text(Ok(resp), &leases)));
            }
        }
        (answers, watches)
    }

    async fn run_etcd(client: &Client) -> (Vec<String>, Vec<(i64, String)>) {
        let (send, outgoing) = mpsc::channel(16);
        let mut outgoing = Some(outgoing);
        // Opened with the first watch: etcd answers the call with its first message.
        let mut incoming = None;
        let mut leases = Vec::new();
        let mut answers = Vec::new();
        let mut watched = Vec::new();
        let mut rev = 1;
        for step in script() {
            let answer = match step(&leases, rev) {
                Op::Grant(ttl) => {
                    let resp = client
                        .lease()
                        .lease_grant(LeaseGrantRequest { ttl, id: 0 })
                        .await
                        .map(|r| r.into_inner());
                    leases.push(resp.as_ref().map_or(0, |r| r.id));
                    text(resp, &leases)
                }
                Op::KeepAlive(id) => {
                    let once = tokio_stream::iter([LeaseKeepAliveRequest { id }]);
                    let mut answers = client
                        .lease()
                        .lease_keep_alive(once)
                        .await
                        .expect("keepalive stream")
                        .into_inner();
                    text(answers.next().await.expect("an answer"), &leases)
                }
                Op::Revoke(id) => text(
                    client
                        .lease()
                        .lease_revoke(LeaseRevokeRequest { id })
                        .await
                        .map(|r| r.into_inner()),
                    &leases,
                ),
                Op::Range(r) => text(client.kv().range(r).await.map(|r| r.into_inner()), &leases),
                Op::Put(r) => text(client.kv().put(r).await.map(|r| r.into_inner()), &leases),
                Op::Delete(r) => text(
                    client.kv().delete_range(r).await.map(|r| r.into_inner()),
                    &leases,
                ),
                Op::Txn(r) => text(client.kv().txn(r).await.map(|r| r.into_inner()), &leases),
                Op::Resign(r) => text(
                    client.election().resign(r).await.map(|r| r.into_inner()),
                    &leases,
                ),
                Op::Proclaim(r) => text(
                    client.election().proclaim(r).await.map(|r| r.into_inner()),
                    &leases,
                ),
                Op::Leader(r) => text(
                    client.election().leader(r).await.map(|r| r.into_inner()),
                    &leases,
                ),
                Op::Watch(r) => {
                    let request = WatchRequest {
                        request_union: Some(RequestUnion::CreateRequest(r)),
                    };
                    send.send(request).await.expect("send a watch");
                    if let Some(outgoing) = outgoing.take() {
                        let mut watch = client.watch();
                        let call = watch.watch(ReceiverStream::new(outgoing)).await;
                        incoming = Some(call.expect("watch stream").into_inner());
                    }
                    let incoming = incoming.as_mut().expect("opened");
                    // Wait for the creation, so the next step comes after it.
                    loop {
                        let resp = incoming.next().await.expect("open").expect("no error");
                        if resp.created {
                            break text(Ok(resp), &leases);
                        }
                        watched.push(resp);
                    }
                }
            };
            answers.push(answer);
            rev = client
                .kv()
                .range(RangeRequest {
                    key: b("a"),
                    ..RangeRequest::default()
                })
                .await
                .expect("range")
                .into_inner()
                .header
                .expect("header")
                .revision;
        }
        // What the watches send after the last step (replays come within 100 ms).
        let incoming = incoming.as_mut().expect("opened");
        while let Ok(Some(resp)) =
            tokio::time::timeout(Duration::from_millis(700), incoming.next()).await
        {
            watched.push(resp.expect("no error"));
        }
        let watches = watched
            .into_iter()
            .map(|w| (w.watch_id, text(Ok(w), &leases)))
            .collect();
        (answers, watches)
    }

    /// The model and a real etcd (the harness's: `ETCD_BIN` or `etcd` on
    /// `PATH`) answer one script of requests alike.
    #[test]
    fn model_answers_as_etcd_does() {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let (real, real_watches) = runtime.block_on(async {
            let etcd = etcdutil::testing::Etcd::start().await.expect("start etcd");
            let client = Client::connect(etcd.config()).await.expect("connect");
            run_etcd(&client).await
        });
        let (model, model_watches) = run_model();
        assert_eq!(model.len(), real.len());
        let mut mismatches = 0;
        for (i, (m, r)) in model.iter().zip(&real).enumerate() {
            if m != r {
                mismatches += 1;
                eprintln!("step {i}:\n  model: {m}\n  etcd:  {r}");
            }
        }
        // etcd interleaves the watches' responses in time; compare per watch.
        let (mut model_watches, mut real_watches) = (model_watches, real_watches);
        model_watches.sort_by_key(|(id, _)| *id);
        real_watches.sort_by_key(|(id, _)| *id);
        for ((_, m), (_, r)) in model_watches.iter().zip(&real_watches) {
            if m != r {
                mismatches += 1;
                eprintln!("watch:\n  model: {m}\n  etcd:  {r}");
            }
        }
        assert_eq!(model_watches.len(), real_watches.len(), "watch responses");
        assert_eq!(mismatches, 0, "the model differs from etcd");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdutil::proto::v3electionpb::LeaderKey;
    use tonic::Code;

    const T0: Time = Time::ZERO;

    fn secs(s: f64) -> Time {
        Time::from_secs_f64(s)
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn put_req(key: &str, value: &str, lease: i64) -> PutRequest {
        PutRequest {
            key: b(key),
            value: b(value),
            lease,
            ..PutRequest::default()
        }
    }

    fn put(m: &mut Etcd, key: &str, value: &str) -> i64 {
        m.put(&put_req(key, value, 0))
            .unwrap()
            .header
            .unwrap()
            .revision
    }

    fn put_lease(m: &mut Etcd, key: &str, value: &str, lease: i64) -> i64 {
        m.put(&put_req(key, value, lease))
            .unwrap()
            .header
            .unwrap()
            .revision
    }

    fn del(key: &str, range_end: &[u8]) -> DeleteRangeRequest {
        DeleteRangeRequest {
            key: b(key),
            range_end: Bytes::copy_from_slice(range_end),
            ..DeleteRangeRequest::default()
        }
    }

    fn rng(key: &str, range_end: &[u8]) -> RangeRequest {
        RangeRequest {
            key: b(key),
            range_end: Bytes::copy_from_slice(range_end),
            ..RangeRequest::default()
        }
    }

    fn keys(kvs: &[KeyValue]) -> Vec<String> {
        kvs.iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect()
    }

    fn op(request: Request) -> RequestOp {
        RequestOp {
            request: Some(request),
        }
    }

    fn op_put(key: &str, value: &str) -> RequestOp {
        op(Request::RequestPut(put_req(key, value, 0)))
    }

    fn cmp(key: &str, target: CompareTarget, result: CompareResult, union: TargetUnion) -> Compare {
        Compare {
            result: result as i32,
            target: target as i32,
            key: b(key),
            range_end: Bytes::new(),
            target_union: Some(union),
        }
    }

    fn rev_of(h: &Option<ResponseHeader>) -> i64 {
        h.as_ref().unwrap().revision
    }

    fn leader_key(name: &str, key: &str, rev: i64, lease: i64) -> LeaderKey {
        LeaderKey {
            name: b(name),
            key: b(key),
            rev,
            lease,
        }
    }

    // ----- revisions -----

    #[test]
    fn revision_starts_at_one_and_each_write_makes_one() {
        let mut m = Etcd::new(1);
        assert_eq!(m.revision(), 1);
        assert_eq!(put(&mut m, "a", "1"), 2);
        assert_eq!(
            put(&mut m, "a", "1"),
            3,
            "an identical put is still a write"
        );
        assert_eq!(m.revision(), 3);
    }

    #[test]
    fn txn_with_several_puts_is_one_revision() {
        let mut m = Etcd::new(1);
        let resp = m
            .txn(&TxnRequest {
                success: vec![op_put("a", "1"), op_put("b", "2"), op_put("c", "3")],
                ..TxnRequest::default()
            })
            .unwrap();
        assert_eq!(rev_of(&resp.header), 2);
        assert_eq!(m.revision(), 2);
        for key in ["a", "b", "c"] {
            let kv = m.get(key.as_bytes()).unwrap();
            assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 2, 1));
        }
    }

    #[test]
    fn reads_and_writes_of_nothing_make_no_revision() {
        let mut m = Etcd::new(1);
        put(&mut m, "a", "1");
        let read_only = m
            .txn(&TxnRequest {
                success: vec![op(Request::RequestRange(rng("a", b"")))],
                ..TxnRequest::default()
            })
            .unwrap();
        assert_eq!(rev_of(&read_only.header), 2);
        let nothing = m
            .txn(&TxnRequest {
                success: vec![op(Request::RequestDeleteRange(del("zz", b"")))],
                ..TxnRequest::default()
            })
            .unwrap();
        assert_eq!(rev_of(&nothing.header), 2);
        let resp = m.delete_range(&del("x", b"\0")).unwrap();
        assert_eq!((resp.deleted, rev_of(&resp.header)), (0, 2));
        let failed = m
            .txn(&TxnRequest {
                compare: vec![cmp(
                    "a",
                    CompareTarget::Version,
                    CompareResult::Equal,
                    TargetUnion::Version(7),
                )],
                success: vec![op_put("b", "1")],
                failure: vec![],
            })
            .unwrap();
        assert!(!failed.succeeded);
        assert_eq!(m.revision(), 2);
        assert!(m.take_watch_events().is_empty());
    }

    #[test]
    fn key_value_fields_and_recreation_after_delete() {
        let mut m = Etcd::new(1);
        put(&mut m, "k", "1");
        put(&mut m, "other", "x");
        put(&mut m, "k", "2");
        let kv = m.get(b"k").unwrap();
        assert_eq!(
            kv,
            KeyValue {
                key: b("k"),
                create_revision: 2,
                mod_revision: 4,
                version: 2,
                value: b("2"),
                lease: 0,
            }
        );
        let resp = m.delete_range(&del("k", b"")).unwrap();
        assert_eq!((resp.deleted, rev_of(&resp.header)), (1, 5));
        assert_eq!(m.get(b"k"), None);
        put(&mut m, "k", "3");
        let kv = m.get(b"k").unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (6, 6, 1));
    }

    #[test]
    fn headers_carry_the_revision_and_the_cluster() {
        let mut m = Etcd::new(1);
        let resp = m.put(&put_req("a", "1", 0)).unwrap();
        assert_eq!(
            resp.header,
            Some(ResponseHeader {
                cluster_id: CLUSTER_ID,
                member_id: MEMBER_ID,
                revision: 2,
                raft_term: RAFT_TERM,
            })
        );
        assert_eq!(rev_of(&m.range(&rng("a", b"")).unwrap().header), 2);
        let grant = m.lease_grant(T0, 10);
        assert_eq!(rev_of(&grant.header), 2);
        // Inside a Txn, etcd sets only the revision; a nested Txn's header is empty.
        let resp = m
            .txn(&TxnRequest {
                success: vec![
                    op_put("b", "1"),
                    op(Request::RequestTxn(TxnRequest::default())),
                ],
                ..TxnRequest::default()
            })
            .unwrap();
        let Some(Response::ResponsePut(p)) = &resp.responses[0].response else {
            panic!("a put response")
        };
        assert_eq!(p.header, inner_header(3));
        let Some(Response::ResponseTxn(t)) = &resp.responses[1].response else {
            panic!("a txn response")
        };
        assert_eq!(t.header, Some(ResponseHeader::default()));
    }

    // ----- Txn -----

    #[test]
    fn txn_compares_every_target_with_every_result() {
        use CompareResult::*;
        use CompareTarget::*;
        let mut m = Etcd::new(1);
        let lease = m.lease_grant(T0, 10).id;
        put(&mut m, "x", "filler");
        put_lease(&mut m, "k", "m", lease); // create 3, mod 3, version 1
        put_lease(&mut m, "k", "m", lease); // mod 4, version 2
        let check = |m: &mut Etcd, target, result, union| {
            m.txn(&TxnRequest {
                compare: vec![cmp("k", target, result, union)],
                ..TxnRequest::default()
            })
            .unwrap()
            .succeeded
        };
        let cases = [
            (
                Version,
                TargetUnion::Version(2),
                [true, false, false, false],
            ),
            (Version, TargetUnion::Version(1), [false, true, false, true]),
            (
                Create,
                TargetUnion::CreateRevision(3),
                [true, false, false, false],
            ),
            (
                Create,
                TargetUnion::CreateRevision(9),
                [false, false, true, true],
            ),
            (
                Mod,
                TargetUnion::ModRevision(4),
                [true, false, false, false],
            ),
            (Mod, TargetUnion::ModRevision(3), [false, true, false, true]),
            (
                Value,
                TargetUnion::Value(b("m")),
                [true, false, false, false],
            ),
            (
                Value,
                TargetUnion::Value(b("a")),
                [false, true, false, true],
            ),
            (
                Value,
                TargetUnion::Value(b("z")),
                [false, false, true, true],
            ),
            (
                Lease,
                TargetUnion::Lease(lease),
                [true, false, false, false],
            ),
            (Lease, TargetUnion::Lease(0), [false, true, false, true]),
        ];
        for (target, union, expected) in cases {
            for (result, want) in [Equal, Greater, Less, NotEqual].into_iter().zip(expected) {
                assert_eq!(
                    check(&mut m, target, result, union.clone()),
                    want,
                    "{target:?} {result:?} {union:?}"
                );
            }
        }
    }

    #[test]
    fn a_missing_key_compares_as_zero_but_never_by_value() {
        use CompareResult::*;
        use CompareTarget::*;
        let mut m = Etcd::new(1);
        let ok = |m: &mut Etcd, c: Compare| {
            m.txn(&TxnRequest {
                compare: vec![c],
                ..TxnRequest::default()
            })
            .unwrap()
            .succeeded
        };
        assert!(ok(
            &mut m,
            cmp("no", Create, Equal, TargetUnion::CreateRevision(0))
        ));
        assert!(ok(
            &mut m,
            cmp("no", Mod, Equal, TargetUnion::ModRevision(0))
        ));
        assert!(ok(
            &mut m,
            cmp("no", Version, Equal, TargetUnion::Version(0))
        ));
        assert!(ok(&mut m, cmp("no", Lease, Equal, TargetUnion::Lease(0))));
        assert!(!ok(
            &mut m,
            cmp("no", Value, Equal, TargetUnion::Value(b("")))
        ));
        assert!(!ok(
            &mut m,
            cmp("no", Value, NotEqual, TargetUnion::Value(b("x")))
        ));
    }

    #[test]
    fn a_compare_over_a_range_must_hold_for_every_key() {
        use CompareResult::*;
        use CompareTarget::*;
        let mut m = Etcd::new(1);
        put(&mut m, "p/a", "1");
        put(&mut m, "p/b", "1");
        put(&mut m, "q", "1");
        let over = |m: &mut Etcd, union, result| {
            m.txn(&TxnRequest {
                compare: vec![Compare {
                    range_end: prefix_end(b"p/"),
                    ..cmp("p/", Create, result, union)
                }],
                ..TxnRequest::default()
            })
            .unwrap()
            .succeeded
        };
        assert!(over(&mut m, TargetUnion::CreateRevision(4), Less));
        assert!(!over(&mut m, TargetUnion::CreateRevision(3), Less));
        assert!(over(&mut m, TargetUnion::CreateRevision(1), Greater));
    }

    #[test]
    fn txn_put_with_an_unknown_lease_fails_whole() {
        let mut m = Etcd::new(1);
        let err = m
            .txn(&TxnRequest {
                success: vec![
                    op_put("a", "1"),
                    op(Request::RequestPut(put_req("b", "2", 42))),
                ],
                ..TxnRequest::default()
            })
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(err.message(), "etcdserver: requested lease not found");
        assert_eq!(m.revision(), 1);
        assert_eq!(m.get(b"a"), None);
        let err = m.put(&put_req("a", "1", 42)).unwrap_err();
        assert_eq!(err.message(), "etcdserver: requested lease not found");
        assert!(matches!(
            etcdutil::Error::from(err),
            etcdutil::Error::LeaseNotFound(_)
        ));
    }

    #[test]
    fn txn_answers_in_op_order_and_nests() {
        let mut m = Etcd::new(1);
        put(&mut m, "a", "1");
        let resp = m
            .txn(&TxnRequest {
                compare: vec![cmp(
                    "a",
                    CompareTarget::Value,
                    CompareResult::Equal,
                    TargetUnion::Value(b("1")),
                )],
                success: vec![
                    op(Request::RequestRange(rng("a", b""))),
                    op_put("b", "2"),
                    op(Request::RequestTxn(TxnRequest {
                        compare: vec![cmp(
                            "b",
                            CompareTarget::Create,
                            CompareResult::Equal,
                            TargetUnion::CreateRevision(0),
                        )],
                        success: vec![op_put("c", "then")],
                        failure: vec![op_put("c", "else")],
                    })),
                    op(Request::RequestDeleteRange(del("a", b""))),
                    op(Request::RequestRange(rng("a", b"\0"))),
                ],
                failure: vec![],
            })
            .unwrap();
        assert!(resp.succeeded);
        assert_eq!(rev_of(&resp.header), 3);
        let r = &resp.responses;
        assert!(
            matches!(&r[0].response, Some(Response::ResponseRange(x)) if x.kvs.len() == 1 && rev_of(&x.header) == 2)
        );
        assert!(matches!(&r[1].response, Some(Response::ResponsePut(_))));
        // The nested compare saw the store before the Txn: "b" did not exist.
        assert!(matches!(&r[2].response, Some(Response::ResponseTxn(t)) if t.succeeded));
        assert!(matches!(&r[3].response, Some(Response::ResponseDeleteRange(d)) if d.deleted == 1));
        let Some(Response::ResponseRange(last)) = &r[4].response else {
            panic!("a range")
        };
        assert_eq!(
            keys(&last.kvs),
            ["b", "c"],
            "a read sees the Txn's own writes"
        );
        assert_eq!(rev_of(&last.header), 3);
        assert_eq!(m.get(b"c").unwrap().value, b("then"));
    }

    #[test]
    fn txn_requests_are_checked_as_etcd_checks_them() {
        let mut m = Etcd::new(1);
        let err = |m: &mut Etcd, success: Vec<RequestOp>| {
            m.txn(&TxnRequest {
                success,
                ..TxnRequest::default()
            })
            .unwrap_err()
        };
        let e = err(&mut m, vec![op_put("a", "1"), op_put("a", "2")]);
        assert_eq!(
            (e.code(), e.message()),
            (Code::InvalidArgument, DUPLICATE_KEY)
        );
        let e = err(
            &mut m,
            vec![
                op(Request::RequestDeleteRange(del("a", b"c"))),
                op_put("b", "2"),
            ],
        );
        assert_eq!(e.message(), DUPLICATE_KEY);
        let e = err(&mut m, vec![op_put("", "1")]);
        assert_eq!(e.message(), EMPTY_KEY);
        let e = err(&mut m, vec![RequestOp { request: None }]);
        assert_eq!(e.message(), KEY_NOT_FOUND);
        let e = err(
            &mut m,
            (0..129).map(|i| op_put(&format!("k{i}"), "v")).collect(),
        );
        assert_eq!(e.message(), TOO_MANY_OPS);
        // Then and else may put the same key.
        let then_else = op(Request::RequestTxn(TxnRequest {
            success: vec![op_put("a", "1")],
            failure: vec![op_put("a", "2")],
            ..TxnRequest::default()
        }));
        assert!(
            m.txn(&TxnRequest {
                success: vec![then_else],
                ..TxnRequest::default()
            })
            .is_ok()
        );
    }

    // ----- Range -----

    fn abc(m: &mut Etcd) {
        put(m, "a", "3"); // rev 2
        put(m, "c", "1"); // rev 3
        put(m, "b", "2"); // rev 4
        put(m, "c", "1"); // rev 5: c version 2
        put(m, "d", "0"); // rev 6
    }

    #[test]
    fn range_by_key_range_and_from_key() {
        let mut m = Etcd::new(1);
        abc(&mut m);
        assert_eq!(keys(&m.range(&rng("b", b"")).unwrap().kvs), ["b"]);
        assert_eq!(keys(&m.range(&rng("b", b"d")).unwrap().kvs), ["b", "c"]);
        assert_eq!(
            keys(&m.range(&rng("b", b"\0")).unwrap().kvs),
            ["b", "c", "d"]
        );
        assert_eq!(
            keys(&m.range(&rng("\0", b"\0")).unwrap().kvs),
            ["a", "b", "c", "d"]
        );
        assert!(m.range(&rng("d", b"b")).unwrap().kvs.is_empty());
        assert!(m.range(&rng("zz", b"")).unwrap().kvs.is_empty());
        let e = m.range(&rng("", b"")).unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::InvalidArgument, EMPTY_KEY));
    }

    #[test]
    fn range_limit_sets_more_and_count_is_the_whole_range() {
        let mut m = Etcd::new(1);
        abc(&mut m);
        let resp = m
            .range(&RangeRequest {
                limit: 2,
                ..rng("a", b"\0")
            })
            .unwrap();
        assert_eq!(
            (keys(&resp.kvs), resp.more, resp.count),
            (vec!["a".into(), "b".into()], true, 4)
        );
        let resp = m
            .range(&RangeRequest {
                limit: 4,
                ..rng("a", b"\0")
            })
            .unwrap();
        assert_eq!((resp.kvs.len(), resp.more, resp.count), (4, false, 4));
    }

    #[test]
    fn range_sorts_by_target_and_order() {
        let mut m = Etcd::new(1);
        abc(&mut m);
        let sorted = |m: &Etcd, target: SortTarget, order: SortOrder| {
            keys(
                &m.range(&RangeRequest {
                    sort_target: target as i32,
                    sort_order: order as i32,
                    ..rng("a", b"\0")
                })
                .unwrap()
                .kvs,
            )
        };
        assert_eq!(
            sorted(&m, SortTarget::Key, SortOrder::None),
            ["a", "b", "c", "d"]
        );
        assert_eq!(
            sorted(&m, SortTarget::Key, SortOrder::Descend),
            ["d", "c", "b", "a"]
        );
        assert_eq!(
            sorted(&m, SortTarget::Create, SortOrder::Ascend),
            ["a", "c", "b", "d"]
        );
        assert_eq!(
            sorted(&m, SortTarget::Create, SortOrder::Descend),
            ["d", "b", "c", "a"]
        );
        // A target other than the key sorts ascending when no order is given.
        assert_eq!(
            sorted(&m, SortTarget::Mod, SortOrder::None),
            ["a", "b", "c", "d"]
        );
        assert_eq!(
            sorted(&m, SortTarget::Value, SortOrder::Ascend),
            ["d", "c", "b", "a"]
        );
        // Ties keep key order.
        assert_eq!(
            sorted(&m, SortTarget::Version, SortOrder::Descend),
            ["c", "a", "b", "d"]
        );
        // Sort then limit: the lowest create revision, as Leader asks.
        let first = m
            .range(&RangeRequest {
                sort_target: SortTarget::Create as i32,
                sort_order: SortOrder::Ascend as i32,
                limit: 1,
                ..rng("b", b"\0")
            })
            .unwrap();
        assert_eq!(
            (keys(&first.kvs), first.more, first.count),
            (vec!["c".into()], true, 3)
        );
    }

    #[test]
    fn range_at_a_past_revision_sees_the_store_then() {
        let mut m = Etcd::new(1);
        abc(&mut m);
        m.delete_range(&del("a", b"")).unwrap(); // rev 7
        put(&mut m, "a", "new"); // rev 8
        let at = |m: &Etcd, revision| {
            let resp = m
                .range(&RangeRequest {
                    revision,
                    ..rng("a", b"\0")
                })
                .unwrap();
            assert_eq!(
                rev_of(&resp.header),
                8,
                "the header is the current revision"
            );
            resp.kvs
        };
        assert!(at(&m, 1).is_empty());
        assert_eq!(keys(&at(&m, 3)), ["a", "c"]);
        assert_eq!(at(&m, 4)[1].version, 1);
        assert_eq!(at(&m, 5)[2].version, 2);
        assert_eq!(keys(&at(&m, 7)), ["b", "c", "d"]);
        let a = &at(&m, 6)[0];
        assert_eq!((a.value.clone(), a.create_revision), (b("3"), 2));
        assert_eq!(at(&m, 8)[0].create_revision, 8);
        assert_eq!(at(&m, 0), at(&m, 8));
        assert_eq!(keys(&m.keys_with_prefix_at(b"", 3)), ["a", "c"]);
    }

    #[test]
    fn range_at_a_future_revision_is_an_error() {
        let mut m = Etcd::new(1);
        put(&mut m, "a", "1");
        let e = m
            .range(&RangeRequest {
                revision: 3,
                ..rng("a", b"")
            })
            .unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::OutOfRange, FUTURE_REV));
        let e = m
            .txn(&TxnRequest {
                success: vec![
                    op_put("b", "1"),
                    op(Request::RequestRange(RangeRequest {
                        revision: 3,
                        ..rng("a", b"")
                    })),
                ],
                ..TxnRequest::default()
            })
            .unwrap_err();
        assert_eq!(e.message(), FUTURE_REV);
        assert_eq!(m.revision(), 2);
    }

    #[test]
    fn range_create_revision_bounds_filter_after_counting() {
        let mut m = Etcd::new(1);
        abc(&mut m);
        let resp = m
            .range(&RangeRequest {
                min_create_revision: 3,
                max_create_revision: 4,
                ..rng("a", b"\0")
            })
            .unwrap();
        assert_eq!(
            (keys(&resp.kvs), resp.count),
            (vec!["b".into(), "c".into()], 4)
        );
        let resp = m
            .range(&RangeRequest {
                min_create_revision: 3,
                limit: 1,
                ..rng("a", b"\0")
            })
            .unwrap();
        assert_eq!(
            (keys(&resp.kvs), resp.more, resp.count),
            (vec!["b".into()], true, 4)
        );
        let resp = m
            .range(&RangeRequest {
                min_mod_revision: 5,
                ..rng("a", b"\0")
            })
            .unwrap();
        assert_eq!(keys(&resp.kvs), ["c", "d"]);
    }

    #[test]
    fn range_count_only_and_keys_only() {
        let mut m = Etcd::new(1);
        abc(&mut m);
        let resp = m
            .range(&RangeRequest {
                count_only: true,
                limit: 1,
                ..rng("a", b"\0")
            })
            .unwrap();
        assert_eq!((resp.kvs.len(), resp.more, resp.count), (0, false, 4));
        let resp = m
            .range(&RangeRequest {
                keys_only: true,
                ..rng("a", b"")
            })
            .unwrap();
        assert_eq!(resp.kvs[0].value, Bytes::new());
        assert_eq!(resp.kvs[0].mod_revision, 2);
    }

    #[test]
    fn put_ignore_value_ignore_lease_and_prev_kv() {
        let mut m = Etcd::new(1);
        let lease = m.lease_grant(T0, 10).id;
        put_lease(&mut m, "a", "v", lease);
        let resp = m
            .put(&PutRequest {
                ignore_lease: true,
                prev_kv: true,
                ..put_req("a", "w", 0)
            })
            .unwrap();
        assert_eq!(resp.prev_kv.unwrap().value, b("v"));
        assert_eq!(m.get(b"a").unwrap().lease, lease);
        m.put(&PutRequest {
            ignore_value: true,
            ..put_req("a", "", 0)
        })
        .unwrap();
        let kv = m.get(b"a").unwrap();
        assert_eq!((kv.value, kv.lease, kv.version), (b("w"), 0, 3));
        let e = m
            .put(&PutRequest {
                ignore_value: true,
                ..put_req("b", "", 0)
            })
            .unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (Code::InvalidArgument, KEY_NOT_FOUND)
        );
        let e = m
            .put(&PutRequest {
                ignore_value: true,
                ..put_req("a", "x", 0)
            })
            .unwrap_err();
        assert_eq!(e.message(), VALUE_PROVIDED);
    }

    // ----- leases -----

    #[test]
    fn lease_ids_are_positive_unique_and_follow_the_seed() {
        let ids = |seed| {
            let mut m = Etcd::new(seed);
            (0..1000)
                .map(|_| m.lease_grant(T0, 5).id)
                .collect::<Vec<_>>()
        };
        let a = ids(7);
        assert!(a.iter().all(|&id| id > 0));
        assert_eq!(a.iter().collect::<BTreeSet<_>>().len(), a.len());
        assert_eq!(a, ids(7));
        assert_ne!(a, ids(8));
        let mut m = Etcd::new(7);
        let first = m.lease_grant(T0, 5).id;
        m.lease_revoke(first).unwrap();
        assert_ne!(m.lease_grant(T0, 5).id, first);
    }

    #[test]
    fn lease_grant_answers_the_ttl_raised_to_the_minimum() {
        let mut m = Etcd::new(1);
        let resp = m.lease_grant(secs(3.0), 1);
        assert_eq!(resp.ttl, MIN_LEASE_TTL);
        assert_eq!(m.lease_expires_at(resp.id), Some(secs(5.0)));
        let resp = m.lease_grant(secs(3.0), 10);
        assert_eq!((resp.ttl, resp.error.as_str()), (10, ""));
        assert_eq!(m.lease_expires_at(resp.id), Some(secs(13.0)));
        let e = m.try_lease_grant(T0, MAX_LEASE_TTL + 1).unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::OutOfRange, TTL_TOO_LARGE));
        let resp = m.lease_grant(T0, MAX_LEASE_TTL + 1);
        assert_eq!((resp.id, resp.error.as_str()), (0, TTL_TOO_LARGE));
        assert_eq!(m.leases().len(), 2);
    }

    #[test]
    fn keepalive_renews_from_now_and_answers_zero_for_a_lost_lease() {
        let mut m = Etcd::new(1);
        let id = m.lease_grant(T0, 10).id;
        let resp = m.lease_keepalive(secs(4.0), id);
        assert_eq!((resp.id, resp.ttl, rev_of(&resp.header)), (id, 10, 1));
        assert_eq!(m.lease_expires_at(id), Some(secs(14.0)));
        assert_eq!(m.lease_keepalive(secs(5.0), 12345).ttl, 0);
        // Past its expiry but not yet revoked: not renewed.
        assert_eq!(m.lease_keepalive(secs(14.0), id).ttl, 0);
        assert_eq!(m.lease_expires_at(id), Some(secs(14.0)));
        assert_eq!(m.expire(secs(14.0)), [id]);
        assert_eq!(m.lease_keepalive(secs(14.1), id).ttl, 0);
        assert_eq!(m.lease_expires_at(id), None);
    }

    #[test]
    fn revoke_deletes_the_lease_keys_in_one_revision() {
        let mut m = Etcd::new(1);
        let id = m.lease_grant(T0, 10).id;
        let other = m.lease_grant(T0, 10).id;
        put_lease(&mut m, "l/b", "1", id);
        put_lease(&mut m, "l/a", "1", id);
        put_lease(&mut m, "l/c", "1", other);
        put(&mut m, "plain", "1");
        let w = m.watch_create(&WatchCreateRequest {
            key: b("l/"),
            range_end: prefix_end(b"l/"),
            ..WatchCreateRequest::default()
        });
        assert_eq!(m.lease_keys(id), [b("l/a"), b("l/b")]);
        let resp = m.lease_revoke(id).unwrap();
        assert_eq!(rev_of(&resp.header), 6);
        assert_eq!(keys(&m.keys_with_prefix(b"")), ["l/c", "plain"]);
        let events = m.take_watch_events();
        assert_eq!(events.len(), 1);
        let (watch_id, resp) = &events[0];
        assert_eq!((*watch_id, rev_of(&resp.header)), (w.watch_id, 6));
        assert_eq!(
            keys(
                &resp
                    .events
                    .iter()
                    .map(|e| e.kv.clone().unwrap())
                    .collect::<Vec<_>>()
            ),
            ["l/a", "l/b"]
        );
        assert!(
            resp.events
                .iter()
                .all(|e| e.r#type == EventType::Delete as i32)
        );
        let e = m.lease_revoke(id).unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::NotFound, LEASE_NOT_FOUND));
        // A lease without keys: no revision.
        let empty = m.lease_grant(T0, 10).id;
        m.lease_revoke(empty).unwrap();
        assert_eq!(m.revision(), 6);
    }

    #[test]
    fn expire_revokes_due_leases_earliest_first() {
        let mut m = Etcd::new(1);
        let late = m.lease_grant(T0, 10).id;
        let early = m.lease_grant(T0, 5).id;
        let kept = m.lease_grant(T0, 30).id;
        put_lease(&mut m, "late", "1", late);
        put_lease(&mut m, "early", "1", early);
        put_lease(&mut m, "kept", "1", kept);
        assert!(m.expire(secs(4.9)).is_empty());
        m.lease_keepalive(secs(4.0), early); // now 9 s
        assert_eq!(m.expire(secs(10.0)), [early, late]);
        assert_eq!(m.revision(), 6, "one revision per revoked lease");
        assert_eq!(keys(&m.keys_with_prefix(b"")), ["kept"]);
        assert_eq!(m.leases(), [kept]);
        assert_eq!(m.lease_expires_at(early), None);
        assert_eq!(m.now(), secs(10.0));
    }

    #[test]
    fn a_put_moves_its_key_between_leases() {
        let mut m = Etcd::new(1);
        let one = m.lease_grant(T0, 10).id;
        let two = m.lease_grant(T0, 20).id;
        put_lease(&mut m, "k", "1", one);
        put_lease(&mut m, "k", "2", two);
        assert_eq!(m.lease_keys(one), Vec::<Bytes>::new());
        assert_eq!(m.lease_keys(two), [b("k")]);
        m.lease_revoke(one).unwrap();
        assert_eq!(m.get(b"k").unwrap().lease, two);
        put(&mut m, "k", "3");
        assert!(m.lease_keys(two).is_empty());
        assert_eq!(m.expire(secs(30.0)), [two]);
        assert_eq!(m.get(b"k").unwrap().value, b("3"));
    }

    // ----- watches -----

    fn watch(m: &mut Etcd, key: &str, range_end: &[u8], start_revision: i64) -> i64 {
        let resp = m.watch_create(&WatchCreateRequest {
            key: b(key),
            range_end: Bytes::copy_from_slice(range_end),
            start_revision,
            ..WatchCreateRequest::default()
        });
        assert!(resp.created && !resp.canceled);
        assert_eq!(rev_of(&resp.header), m.revision());
        resp.watch_id
    }

    /// (watch id, header revision, [(type, key, mod revision)]) per response.
    type Seen = Vec<(i64, i64, Vec<(EventType, String, i64)>)>;

    fn seen(m: &mut Etcd) -> Seen {
        m.take_watch_events()
            .into_iter()
            .map(|(id, resp)| {
                assert_eq!(id, resp.watch_id);
                let events = resp
                    .events
                    .iter()
                    .map(|e| {
                        let kv = e.kv.as_ref().unwrap();
                        (
                            EventType::try_from(e.r#type).unwrap(),
                            String::from_utf8_lossy(&kv.key).into_owned(),
                            kv.mod_revision,
                        )
                    })
                    .collect();
                (id, rev_of(&resp.header), events)
            })
            .collect()
    }

    fn ev(t: EventType, key: &str, rev: i64) -> (EventType, String, i64) {
        (t, key.to_owned(), rev)
    }

    #[test]
    fn watch_events_have_etcd_shapes_one_response_per_revision() {
        use EventType::*;
        let mut m = Etcd::new(1);
        let w = watch(&mut m, "p/", &prefix_end(b"p/"), 0);
        assert_eq!(w, 0);
        put(&mut m, "p/a", "1");
        put(&mut m, "q", "1");
        m.txn(&TxnRequest {
            success: vec![
                op_put("p/b", "2"),
                op(Request::RequestDeleteRange(del("p/a", b""))),
            ],
            ..TxnRequest::default()
        })
        .unwrap();
        let all = m.take_watch_events();
        assert_eq!(all.len(), 2);
        let (_, first) = &all[0];
        assert_eq!(
            first.events[0].kv,
            m.keys_with_prefix_at(b"p/a", 2).first().cloned()
        );
        let (_, second) = &all[1];
        assert_eq!(rev_of(&second.header), 4);
        assert_eq!(
            second.events[1],
            Event {
                r#type: Delete as i32,
                kv: Some(KeyValue {
                    key: b("p/a"),
                    mod_revision: 4,
                    ..KeyValue::default()
                }),
                prev_kv: None,
            }
        );
        assert_eq!(second.events[0].kv.as_ref().unwrap().key, b("p/b"));
        assert!(m.take_watch_events().is_empty(), "taken once");
    }

    #[test]
    fn watch_filters_ranges_and_ids() {
        use EventType::*;
        let mut m = Etcd::new(1);
        let no_put = m
            .watch_create(&WatchCreateRequest {
                key: b("k"),
                filters: vec![FilterType::Noput as i32],
                ..WatchCreateRequest::default()
            })
            .watch_id;
        let no_delete = m
            .watch_create(&WatchCreateRequest {
                key: b("k"),
                filters: vec![FilterType::Nodelete as i32],
                ..WatchCreateRequest::default()
            })
            .watch_id;
        let from = watch(&mut m, "k", b"\0", 0);
        let all = watch(&mut m, "", b"\0", 0);
        assert_eq!((no_put, no_delete, from, all), (0, 1, 2, 3));
        put(&mut m, "k", "1"); // 2
        put(&mut m, "a", "1"); // 3
        put(&mut m, "kz", "1"); // 4
        m.delete_range(&del("k", b"")).unwrap(); // 5
        assert_eq!(
            seen(&mut m),
            vec![
                (1, 2, vec![ev(Put, "k", 2)]),
                (2, 2, vec![ev(Put, "k", 2)]),
                (3, 2, vec![ev(Put, "k", 2)]),
                (3, 3, vec![ev(Put, "a", 3)]),
                (2, 4, vec![ev(Put, "kz", 4)]),
                (3, 4, vec![ev(Put, "kz", 4)]),
                (0, 5, vec![ev(Delete, "k", 5)]),
                (2, 5, vec![ev(Delete, "k", 5)]),
                (3, 5, vec![ev(Delete, "k", 5)]),
            ]
        );
        m.watch_cancel(2);
        put(&mut m, "k", "2");
        assert_eq!(
            seen(&mut m).iter().map(|s| s.0).collect::<Vec<_>>(),
            [1, 3],
            "a cancelled watch sends nothing"
        );
        // The lowest free id is not reused; ids go up.
        assert_eq!(watch(&mut m, "x", b"", 0), 4);
        let bad = m.watch_create(&WatchCreateRequest {
            key: b("b"),
            range_end: b("a"),
            ..WatchCreateRequest::default()
        });
        assert!(bad.created && bad.canceled);
        assert_eq!(
            (bad.watch_id, bad.cancel_reason.as_str()),
            (-1, EMPTY_WATCHER_RANGE)
        );
        let dup = m.watch_create(&WatchCreateRequest {
            key: b("b"),
            watch_id: 4,
            ..WatchCreateRequest::default()
        });
        assert_eq!(
            (dup.watch_id, dup.cancel_reason.as_str()),
            (-1, DUPLICATE_WATCH_ID)
        );
    }

    #[test]
    fn watch_from_a_past_revision_replays_history() {
        use EventType::*;
        let mut m = Etcd::new(1);
        put(&mut m, "k", "1"); // 2
        put(&mut m, "k", "2"); // 3
        m.delete_range(&del("k", b"")).unwrap(); // 4
        put(&mut m, "k", "3"); // 5
        let w = watch(&mut m, "k", b"", 3);
        let future = watch(&mut m, "k", b"", 7);
        put(&mut m, "k", "4"); // 6
        put(&mut m, "k", "5"); // 7
        assert_eq!(
            seen(&mut m),
            vec![
                (w, 3, vec![ev(Put, "k", 3)]),
                (w, 4, vec![ev(Delete, "k", 4)]),
                (w, 5, vec![ev(Put, "k", 5)]),
                (w, 6, vec![ev(Put, "k", 6)]),
                (w, 7, vec![ev(Put, "k", 7)]),
                (future, 7, vec![ev(Put, "k", 7)]),
            ]
        );
    }

    #[test]
    fn batched_replay_sends_history_in_one_response() {
        use EventType::*;
        let mut m = Etcd::new(1);
        m.set_batch_replay(true);
        put(&mut m, "k", "1"); // 2
        put(&mut m, "j", "1"); // 3
        put(&mut m, "k", "2"); // 4
        let w = watch(&mut m, "k", b"", 1);
        put(&mut m, "k", "3"); // 5
        assert_eq!(
            seen(&mut m),
            vec![(
                w,
                5,
                vec![ev(Put, "k", 2), ev(Put, "k", 4), ev(Put, "k", 5)]
            )]
        );
        put(&mut m, "k", "4"); // 6
        assert_eq!(
            seen(&mut m),
            vec![(w, 6, vec![ev(Put, "k", 6)])],
            "then live"
        );
    }

    #[test]
    fn watch_prev_kv_is_the_key_before_except_on_create() {
        let mut m = Etcd::new(1);
        let w = m
            .watch_create(&WatchCreateRequest {
                key: b("k"),
                prev_kv: true,
                ..WatchCreateRequest::default()
            })
            .watch_id;
        put(&mut m, "k", "1");
        put(&mut m, "k", "2");
        m.delete_range(&del("k", b"")).unwrap();
        let prevs: Vec<Option<Bytes>> = m
            .take_watch_events()
            .into_iter()
            .map(|(id, resp)| {
                assert_eq!(id, w);
                resp.events[0].prev_kv.as_ref().map(|kv| kv.value.clone())
            })
            .collect();
        assert_eq!(prevs, [None, Some(b("1")), Some(b("2"))]);
    }

    // ----- election -----

    /// Two candidates' keys under "e/", as Campaign puts them; returns
    /// (lease one, lease two).
    fn candidates(m: &mut Etcd) -> (i64, i64) {
        let one = m.lease_grant(T0, 10).id;
        let two = m.lease_grant(T0, 10).id;
        put_lease(m, "e/one", "v1", one); // create 2
        put_lease(m, "e/two", "v2", two); // create 3
        (one, two)
    }

    #[test]
    fn leader_is_the_lowest_create_revision_under_the_name() {
        let mut m = Etcd::new(1);
        let e = m.leader(&LeaderRequest { name: b("e") }).unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::Unknown, NO_LEADER));
        assert!(matches!(
            etcdutil::Error::from(e),
            etcdutil::Error::ElectionNoLeader(_)
        ));
        put(&mut m, "e", "not under e/");
        put(&mut m, "e0", "not under e/ either");
        assert!(m.leader(&LeaderRequest { name: b("e") }).is_err());
        candidates(&mut m);
        put(&mut m, "e/one", "v1b"); // update: create revision unchanged
        let resp = m.leader(&LeaderRequest { name: b("e") }).unwrap();
        let kv = resp.kv.unwrap();
        assert_eq!(
            (kv.key, kv.value, kv.create_revision),
            (b("e/one"), b("v1b"), 4)
        );
        assert_eq!(rev_of(&resp.header), 6);
    }

    #[test]
    fn proclaim_puts_the_value_while_the_key_is_ours() {
        let mut m = Etcd::new(1);
        let (one, _) = candidates(&mut m);
        let resp = m
            .proclaim(&ProclaimRequest {
                leader: Some(leader_key("e", "e/one", 2, one)),
                value: b("new"),
            })
            .unwrap();
        assert_eq!(rev_of(&resp.header), 4);
        let kv = m.get(b"e/one").unwrap();
        assert_eq!(
            (kv.value, kv.lease, kv.create_revision, kv.version),
            (b("new"), one, 2, 2)
        );
        let e = m
            .proclaim(&ProclaimRequest {
                leader: Some(leader_key("e", "e/one", 3, one)),
                value: b("x"),
            })
            .unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::Unknown, NOT_LEADER));
        assert!(matches!(
            etcdutil::Error::from(e),
            etcdutil::Error::ElectionNotLeader(_)
        ));
        let e = m
            .proclaim(&ProclaimRequest {
                leader: Some(leader_key("e", "e/one", 2, 999)),
                value: b("x"),
            })
            .unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::Unknown, LEASE_NOT_FOUND));
        m.lease_revoke(one).unwrap();
        let e = m
            .proclaim(&ProclaimRequest {
                leader: Some(leader_key("e", "e/one", 2, one)),
                value: b("x"),
            })
            .unwrap_err();
        assert_eq!(e.message(), NOT_LEADER, "the lease took the key with it");
        let e = m.proclaim(&ProclaimRequest::default()).unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::Unknown, MISSING_LEADER_KEY));
        assert_eq!(m.revision(), 5);
    }

    #[test]
    fn resign_deletes_only_its_own_term_and_answers_the_txn_header() {
        let mut m = Etcd::new(1);
        let (one, two) = candidates(&mut m);
        // Not our term (create revision differs): nothing deleted, no error,
        // the header of the Txn (the current revision).
        let resp = m
            .resign(&ResignRequest {
                leader: Some(leader_key("e", "e/one", 3, one)),
            })
            .unwrap();
        assert_eq!(resp.header, header(3));
        assert!(m.get(b"e/one").is_some());
        let resp = m
            .resign(&ResignRequest {
                leader: Some(leader_key("e", "e/one", 2, one)),
            })
            .unwrap();
        assert_eq!(rev_of(&resp.header), 4);
        assert_eq!(m.get(b"e/one"), None);
        let leader = m.leader(&LeaderRequest { name: b("e") }).unwrap();
        assert_eq!(leader.kv.unwrap().key, b("e/two"));
        // The lease is gone (and its key): still no error.
        assert_eq!(m.expire(secs(10.0)), [one, two]);
        let resp = m
            .resign(&ResignRequest {
                leader: Some(leader_key("e", "e/two", 3, two)),
            })
            .unwrap();
        assert_eq!(rev_of(&resp.header), 5);
        let e = m.resign(&ResignRequest { leader: None }).unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::Unknown, MISSING_LEADER_KEY));
    }

    #[test]
    fn election_calls_on_lease_zero_grant_an_orphan_session_lease() {
        let mut m = Etcd::new(1);
        put(&mut m, "e/k", "v");
        m.expire(secs(5.0));
        m.resign(&ResignRequest {
            leader: Some(leader_key("e", "e/nope", 2, 0)),
        })
        .unwrap();
        let leases = m.leases();
        assert_eq!(leases.len(), 1);
        assert_eq!(m.lease_expires_at(leases[0]), Some(secs(65.0)));
        m.proclaim(&ProclaimRequest {
            leader: Some(leader_key("e", "e/k", 2, 0)),
            value: b("w"),
        })
        .unwrap();
        let kv = m.get(b"e/k").unwrap();
        assert!(kv.lease != 0 && kv.lease != leases[0]);
        assert_eq!(m.lease_ttl(kv.lease), Some(SESSION_TTL));
    }

    // ----- determinism -----

    fn workload(seed: u64) -> (Vec<String>, Vec<i64>) {
        let mut m = Etcd::new(seed);
        let mut log = Vec::new();
        let mut leases = Vec::new();
        watch(&mut m, "", b"\0", 0);
        for i in 0..300u32 {
            let now = secs(f64::from(i) * 0.1);
            match i % 7 {
                0 => leases.push(m.lease_grant(now, 2 + i64::from(i % 5)).id),
                1 | 2 => {
                    let lease = leases
                        .last()
                        .copied()
                        .filter(|id| m.lease_expires_at(*id).is_some())
                        .unwrap_or(0);
                    put_lease(&mut m, &format!("k{}", i % 13), &i.to_string(), lease);
                }
                3 => {
                    if let Some(&id) = leases.get(i as usize % leases.len().max(1)) {
                        log.push(format!("{:?}", m.lease_keepalive(now, id)));
                    }
                }
                4 => log.push(format!("{:?}", m.expire(now))),
                5 => log.push(format!("{:?}", m.leader(&LeaderRequest { name: b("k") }))),
                _ => {
                    m.delete_range(&del(&format!("k{}", i % 5), b"")).unwrap();
                }
            }
            log.push(format!("{:?}", m.take_watch_events()));
        }
        log.push(format!("{:?}", m.keys_with_prefix(b"")));
        (log, leases)
    }

    #[test]
    fn same_seed_same_run() {
        let (a, leases_a) = workload(3);
        let (b, leases_b) = workload(3);
        assert_eq!(a, b);
        assert_eq!(leases_a, leases_b);
        assert_ne!(workload(4).1, leases_a);
    }

    #[test]
    fn many_operations_stay_fast() {
        let mut m = Etcd::new(1);
        let lease = m.lease_grant(T0, 10).id;
        for i in 0..5 {
            watch(&mut m, &format!("w{i}"), b"", 0);
        }
        let started = std::time::Instant::now();
        for i in 0..20_000u32 {
            let key = format!("e/{}", i % 8);
            m.txn(&TxnRequest {
                compare: vec![cmp(
                    &key,
                    CompareTarget::Create,
                    CompareResult::Equal,
                    TargetUnion::CreateRevision(0),
                )],
                success: vec![op(Request::RequestPut(put_req(&key, "v", lease)))],
                failure: vec![op(Request::RequestRange(rng(&key, b"")))],
            })
            .unwrap();
            m.leader(&LeaderRequest { name: b("e") }).unwrap();
            m.lease_keepalive(T0, lease);
            m.take_watch_events();
            if i % 100 == 0 {
                m.delete_range(&del("e/", b"e0")).unwrap();
            }
        }
        // Generous for an unoptimised build on a loaded machine.
        assert!(
            started.elapsed() < Time::from_secs(20),
            "{:?}",
            started.elapsed()
        );
    }
}
