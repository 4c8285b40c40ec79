//! With the `csi` feature: the CSI v1.9 messages, server and client, generated from
//! `proto/csi.proto` (container-storage-interface/spec v1.9.0). protox parses the file in
//! Rust, so building needs no `protoc`.

fn main() {
    println!("cargo:rerun-if-changed=proto/csi.proto");
    #[cfg(feature = "csi")]
    {
        let fds = protox::compile(["proto/csi.proto"], ["proto"]).expect("proto/csi.proto parses");
        tonic_prost_build::configure()
            .compile_fds(fds)
            .expect("CSI code generates");
    }
}
