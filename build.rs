//! Compiles our protos (destination, identity and policy APIs) and writes the descriptor set that
//! server reflection serves. protoc comes from the `protoc-bin-vendored` crate
//! unless `PROTOC` points at another one, so a fresh machine needs nothing installed.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    // Handing prost the path, rather than setting PROTOC in our own environment, needs
    // no `unsafe` (setting the environment is unsafe since Rust 2024).
    if env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path().map_err(|e| {
            format!("no vendored protoc for this platform ({e}); set PROTOC to a protoc binary")
        })?;
        config.protoc_executable(protoc);
    }
    let out = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .build_client(true)
        // The server side is hand-framed (src/grpc/framing.rs); only messages and the client are generated.
        .build_server(false)
        .file_descriptor_set_path(out.join("destination_descriptor.bin"))
        .compile_with_config(
            config,
            &[
                "proto/destination.proto",
                "proto/net.proto",
                "proto/meta.proto",
                "proto/http_types.proto",
                "proto/http_route.proto",
                "proto/identity.proto",
                "proto/inbound.proto",
                "proto/outbound.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    Ok(())
}
