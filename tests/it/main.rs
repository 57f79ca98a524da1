//! The integration tests, in one binary so that the suite links once. One
//! module per concern; every test starts its own etcd, or uses names of its
//! own, so they all run in parallel. (The safety checker, the wire log and
//! the metrics have binaries of their own: the first is run by name, the
//! other two install process-wide recorders.)

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod cli;
mod client;
mod config;
mod elect_command;
mod election;
mod hardening;
mod harness;
mod leadership;
mod lock_cli;
mod mutex;
mod server_side;
mod session;
mod shared;
mod watches;
