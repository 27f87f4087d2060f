//! Compiles `proto/` with protox (pure Rust, no `protoc` needed) and generates
//! the tonic service plus a descriptor set for server reflection.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let proto = proto_root.join("cxcache/v1/cache.proto");
    println!("cargo:rerun-if-changed={}", proto.display());

    let fds = protox::compile([&proto], [&proto_root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out.join("cxcache_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&fds))?;

    tonic_prost_build::configure().bytes(".cxcache.v1.GetResponse.value").compile_fds(fds)?;
    Ok(())
}
