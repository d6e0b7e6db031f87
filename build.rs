//! Compiles the public contracts in `proto/` with protox (pure Rust, no
//! system `protoc`): the client API (tonic/prost code and the encoded
//! descriptor set that server reflection serves) and the connector protocol
//! (a client only).

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
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_files(PROTOS)?;
    let descriptors = compiler.file_descriptor_set();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // Encoded from protox's own pool, not from `descriptors`: prost's
    // `MethodOptions` would drop the `google.api.http` annotations, which
    // reflection clients and transcoders read.
    std::fs::write(
        out_dir.join("linkd_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
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
