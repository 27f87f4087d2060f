//! Generated protobuf and gRPC code for `cxcache.v1`.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

pub mod v1 {
    tonic::include_proto!("cxcache.v1");
}

/// Encoded file descriptor set of `cxcache.v1` (and its imports), for
/// server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cxcache_descriptor.bin"));
