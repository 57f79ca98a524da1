//! The raw gRPC clients and messages, generated from etcd's own `.proto` files.
//!
//! Nothing here is hand-written: `build.rs` compiles the unmodified protos in
//! `proto/` (etcd v3.4.23, see `proto/README.md` for provenance and sha256).
//! [`Client`](crate::Client) hands out these clients ready to use, already
//! carrying the auth token and the wire log, so you can go as low as you need.
//! Bytes fields are [`bytes::Bytes`] (`"text".into()`, `vec.into()`): the
//! wire log prints them as byte strings, and decoding shares the buffer.
//!
//! ```no_run
//! use etcdutil::proto::etcdserverpb::RangeRequest;
//! # async fn run() -> etcdutil::Result<()> {
//! let client = etcdutil::new_client(None).await?;
//! let resp = client.kv().range(RangeRequest { key: "/config".into(), ..Default::default() }).await;
//! # Ok(()) }
//! ```

mod generated {
    #![allow(
        clippy::all,
        clippy::pedantic,
        missing_docs,
        rustdoc::all,
        unreachable_pub
    )]

    /// etcd's KV, Watch, Lease, Cluster, Maintenance and Auth services and their messages (`rpc.proto`).
    ///
    /// ```
    /// use etcdutil::proto::etcdserverpb::{PutRequest, kv_client::KvClient};
    /// let put = PutRequest { key: "k".into(), value: "v".into(), ..Default::default() };
    /// ```
    pub mod etcdserverpb {
        include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
    }
    /// Stored keys and watch events (`kv.proto`).
    ///
    /// ```
    /// use etcdutil::proto::mvccpb::KeyValue;
    /// let kv = KeyValue { key: "k".into(), create_revision: 7, ..Default::default() };
    /// ```
    pub mod mvccpb {
        include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
    }
    /// Users, roles and permissions (`auth.proto`).
    ///
    /// ```
    /// use etcdutil::proto::authpb::{Permission, permission::Type};
    /// let read = Permission { perm_type: Type::Read as i32, key: "/jobs/".into(), range_end: "/jobs0".into() };
    /// ```
    pub mod authpb {
        include!(concat!(env!("OUT_DIR"), "/authpb.rs"));
    }
    /// etcd's server-side Election service: Campaign, Proclaim, Leader, Observe, Resign (`v3election.proto`).
    ///
    /// ```
    /// use etcdutil::proto::v3electionpb::LeaderRequest;
    /// let request = LeaderRequest { name: "/elections/jobs".into() };
    /// ```
    pub mod v3electionpb {
        include!(concat!(env!("OUT_DIR"), "/v3electionpb.rs"));
    }
    /// etcd's server-side Lock service: Lock, Unlock (`v3lock.proto`), the
    /// same recipe as [`Mutex`](crate::Mutex).
    ///
    /// ```
    /// use etcdutil::proto::v3lockpb::LockRequest;
    /// let request = LockRequest { name: "jobs".into(), lease: 0x694d7c5a3e2f1b07 };
    /// ```
    pub mod v3lockpb {
        include!(concat!(env!("OUT_DIR"), "/v3lockpb.rs"));
    }
}

pub use generated::{authpb, etcdserverpb, mvccpb, v3electionpb, v3lockpb};
