//! With the `csi` feature: the CSI v1.9 messages, server and client, generated from
//! `proto/csi.proto` (container-storage-interface/spec v1.9.0). protox parses the file in
//! Rust, so building needs no `protoc`.

fn main() {
    println!("cargo:rerun-if-changed=proto/csi.proto");
    build_info();
    #[cfg(feature = "csi")]
    {
        let fds = protox::compile(["proto/csi.proto"], ["proto"]).expect("proto/csi.proto parses");
        tonic_prost_build::configure()
            .compile_fds(fds)
            .expect("CSI code generates");
    }
}

/// `hoist --version`'s commit and features. The commit is git's when building from a clone
/// (`HOIST_BUILD_COMMIT` overrides it, for a build from a tarball); the features are those
/// cargo enabled.
fn build_info() {
    println!("cargo:rerun-if-env-changed=HOIST_BUILD_COMMIT");
    for watched in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if std::path::Path::new(watched).exists() {
            println!("cargo:rerun-if-changed={watched}");
        }
    }
    let commit = std::env::var("HOIST_BUILD_COMMIT").ok().or_else(|| {
        let out = std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    println!(
        "cargo:rustc-env=HOIST_BUILD_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".into())
    );
    let mut features: Vec<String> = std::env::vars()
        .filter_map(|(k, _)| k.strip_prefix("CARGO_FEATURE_").map(|f| f.to_lowercase()))
        .filter(|f| f != "default")
        .collect();
    features.sort();
    let features = if features.is_empty() {
        "none".to_string()
    } else {
        features.join(" ")
    };
    println!("cargo:rustc-env=HOIST_BUILD_FEATURES={features}");
}
