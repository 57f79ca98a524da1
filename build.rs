//! Compiles etcd's own .proto files (vendored, unmodified, in `proto/`) into
//! tonic client stubs. protox is a pure-Rust protobuf compiler, so building
//! this crate needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = [
        "etcd/etcdserver/etcdserverpb/rpc.proto",
        "etcd/etcdserver/api/v3election/v3electionpb/v3election.proto",
        "etcd/etcdserver/api/v3lock/v3lockpb/v3lock.proto",
    ];
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        // Every generated client encodes and decodes through the wire log.
        .codec_path("crate::client::wire::WireCodec")
        // bytes::Bytes for bytes fields: the wire log prints keys and values
        // as escaped byte strings (b"/elections/..."), and decoding shares
        // the received buffer instead of copying each field.
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
