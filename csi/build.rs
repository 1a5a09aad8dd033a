//! Generates the `csi.v1` messages, servers and clients from our subset of the
//! CSI specification in `proto/csi/v1/`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let proto = proto_root.join("csi/v1/node_plugin.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    println!("cargo:rerun-if-env-changed=PROTOC");

    // Honour an installed protoc; otherwise use the vendored one so a fresh machine
    // needs nothing from apt.
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded; nothing else reads the
        // environment concurrently.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }

    tonic_prost_build::configure()
        .build_server(true)
        // Clients for the tests (ours and tests/tests/csi.rs), which bring their
        // own channel: no `connect` helper, so no tonic transport feature here.
        .build_client(true)
        .build_transport(false)
        .compile_protos(&[proto], &[proto_root])?;
    Ok(())
}
