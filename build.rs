//! Compiles the public contracts in `proto/` with protox (pure Rust, no
//! system `protoc`): the client API (tonic/prost code and the encoded
//! descriptor set that server reflection serves) and the connector protocol
//! (a client only).

use prost::Message;
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/linkd/v1/link.proto",
    "proto/linkd/v1/connection.proto",
    "proto/linkd/v1/authorize.proto",
    "proto/linkd/v1/flow.proto",
    "proto/linkd/v1/client_app.proto",
    "proto/linkd/v1/event.proto",
    // Not used by the generated code (tonic-types has its own); compiled so
    // reflection can describe the error details every error carries.
    "proto/google/rpc/error_details.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("linkd_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    // Type names let the gRPC codec (`src/api/gate.rs`) find each message's
    // descriptor to check its strings field by field.
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::api::gate::GatedCodec")
        .compile_fds_with_config(descriptors, config)?;

    // The connector protocol: linkd is its client, with tonic's own codec
    // (the gate checks what clients send linkd, not what connectors answer).
    let connector = protox::compile(["proto/linkd/connector/v1/connector.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(connector)?;
    Ok(())
}
