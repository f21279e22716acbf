//! Compiles `proto/` with protox (a pure-Rust protobuf compiler), so a fresh
//! machine needs no protoc.

use std::path::PathBuf;

use prost::Message;

const CLIENT_PROTOS: [&str; 2] = ["raftset/v1/kv.proto", "raftset/v1/admin.proto"];
const PEER_PROTOS: [&str; 2] = ["raftset/v1/raft.proto", "raftset/v1/cluster.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    // Server reflection on the client port describes the client services only.
    let client_set = protox::compile(CLIENT_PROTOS, ["proto"])?;
    std::fs::write(
        out_dir.join("raftset_client_descriptor.bin"),
        client_set.encode_to_vec(),
    )?;

    let mut all = CLIENT_PROTOS.to_vec();
    all.extend(PEER_PROTOS);
    let full_set = protox::compile(all, ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".")
        .compile_fds(full_set)?;
    Ok(())
}
