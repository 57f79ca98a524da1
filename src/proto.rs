//! The raw gRPC clients and messages, generated from etcd's own `.proto` files.
//!
//! Nothing here is hand-written: `build.rs` compiles the unmodified protos in
//! `proto/` (etcd v3.4.23, see `proto/README.md` for provenance and sha256).
//! [`Client`](crate::Client) hands out these clients ready to use, already
//! carrying the auth token and the wire log, so you can go as low as you need:
//!
//! ```no_run
//! use etcdutil::proto::etcdserverpb::RangeRequest;
//! # async fn run() -> etcdutil::Result<()> {
//! let client = etcdutil::new_client(None).await?;
//! let resp = client.kv().range(RangeRequest { key: b"/config".to_vec(), ..Default::default() }).await;
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

    pub mod etcdserverpb {
        include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
    }
    pub mod mvccpb {
        include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
    }
    pub mod authpb {
        include!(concat!(env!("OUT_DIR"), "/authpb.rs"));
    }
    pub mod v3electionpb {
        include!(concat!(env!("OUT_DIR"), "/v3electionpb.rs"));
    }
}

pub use generated::{authpb, etcdserverpb, mvccpb, v3electionpb};
