//! What an init container relies on: configuration by environment, a ready marker written
//! last and removed on failure, documented exit codes, offline verification by the main
//! container, and the pod-ready metric.

mod common;

use common::*;

#[test]
fn env_configured_pull_writes_a_ready_marker_that_verify_checks() {
    let reg = Registry::start();
    let h = Hoist::new();
    let src = push_small(&h, &reg.reference("init/model:v1"));
    let volume = tempfile::tempdir().unwrap();
    let out = volume.path().join("model");
    let marker = volume.path().join("ready.json");
    let metrics = volume.path().join("hoist.prom");
    let env = |cmd: &mut std::process::Command, reference: &str| {
        cmd.env("HOIST_REF", reference)
            .env("HOIST_OUTPUT", &out)
            .env("HOIST_READY_MARKER", &marker)
            .env("HOIST_METRICS_FILE", &metrics);
    };
    let mut pull = h.cmd();
    env(&mut pull, &reg.reference("init/model:v1"));
    run(pull.arg("pull")).ok();
    assert_eq!(tree(src.path(), false), tree(&out, false));
    let ready: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&marker).unwrap()).unwrap();
    assert_eq!(ready["files"].as_array().unwrap().len(), 6);
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        text.contains("kaito_pod_ready_duration_seconds{repository=\"init/model\"}"),
        "{text}"
    );

    // The main container checks the folder offline.
    let mut verify = h.cmd();
    env(&mut verify, "unused");
    run(verify.arg("verify")).ok();
    std::fs::write(out.join("config.json"), b"{\"tampered\":1}").unwrap();
    let mut verify = h.cmd();
    env(&mut verify, "unused");
    run(verify.arg("verify")).fails_with(6, "config.json (14 bytes, expected 21)");

    // A restarted init container repairs the folder; a wrong reference removes the marker.
    let mut again = h.cmd();
    env(&mut again, &reg.reference("init/model:v1"));
    run(again.arg("pull")).ok();
    assert_eq!(tree(src.path(), false), tree(&out, false));
    assert!(marker.exists());
    let mut wrong = h.cmd();
    env(&mut wrong, &reg.reference("init/model:nope"));
    run(wrong.arg("pull")).fails_with(4, "not found");
    assert!(
        !marker.exists(),
        "a failed pull must not leave the folder marked ready"
    );
    let mut verify = h.cmd();
    env(&mut verify, "unused");
    run(verify.arg("verify")).fails_with(2, "the pull has not finished");
}
