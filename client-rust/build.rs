//! Generates the `vaultlet.v1` messages and client (and, with the `server`
//! feature, the server trait) from the one wire definition in `proto/`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let proto = proto_root.join("vaultlet/v1/secrets.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    println!("cargo:rerun-if-env-changed=PROTOC");

    // Honour an installed protoc; otherwise use the vendored one so a fresh machine
    // needs nothing from apt.
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded; nothing else reads the
        // environment concurrently.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .codec_path("crate::codec::SmallBufferCodec")
        // Values arrive sorted into a map of a few entries: a B-tree takes them
        // without hashing, and becomes `Secret::values` without a re-sort.
        .btree_map(".vaultlet.v1.Secret.values")
        .file_descriptor_set_path(out_dir.join("vaultlet_v1_descriptor.bin"))
        .compile_protos(&[&proto], &[&proto_root])?;
    if std::env::var_os("CARGO_FEATURE_SERVER").is_some() {
        // The server trait, over the messages generated above, except that it
        // sends `SecretEvent`s and `GetSecretsResponse`s in their pre-encoded
        // form (see `encoded`).
        let server_dir = out_dir.join("server");
        std::fs::create_dir_all(&server_dir)?;
        tonic_prost_build::configure()
            .build_server(true)
            .build_client(false)
            .codec_path("crate::codec::SmallBufferCodec")
            .extern_path(".vaultlet.v1.SecretEvent", "crate::encoded::EncodedEvent")
            .extern_path(".vaultlet.v1.GetSecretsResponse", "crate::encoded::EncodedSecrets")
            .extern_path(".vaultlet.v1", "crate::proto")
            .out_dir(&server_dir)
            .compile_protos(&[&proto], &[&proto_root])?;
    }
    Ok(())
}
