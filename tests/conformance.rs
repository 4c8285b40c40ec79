//! The OCI distribution-spec conformance suite v1.1.1 (all four areas) against one
//! `hoist serve`, three runs in a row, each with its own namespaces: every spec passes every
//! time (the trust issue's 74/74, and issue 18's "no request fails because of the one before
//! it on its connection").

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

/// `../shared/bin/oci-conformance` beside the project, or `$OCI_CONFORMANCE`.
fn suite() -> Option<PathBuf> {
    let path = std::env::var_os("OCI_CONFORMANCE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/bin/oci-conformance")
        });
    path.is_file().then_some(path)
}

#[test]
fn conformance_suite_passes_every_spec_three_runs_in_a_row() {
    let Some(suite) = suite() else {
        cannot_run("the OCI conformance suite is not at ../shared/bin/oci-conformance (set OCI_CONFORMANCE)");
        return;
    };
    let served = Served::start();
    for run_no in 1..=3 {
        let work = tempfile::tempdir().unwrap();
        let out = Command::new(&suite)
            .current_dir(work.path())
            .env("OCI_ROOT_URL", served.url(""))
            .env("OCI_NAMESPACE", format!("conf{run_no}/repo1"))
            .env("OCI_CROSSMOUNT_NAMESPACE", format!("conf{run_no}/repo2"))
            .env("OCI_TEST_PULL", "1")
            .env("OCI_TEST_PUSH", "1")
            .env("OCI_TEST_CONTENT_DISCOVERY", "1")
            .env("OCI_TEST_CONTENT_MANAGEMENT", "1")
            .env("OCI_HIDE_SKIPPED_WORKFLOWS", "0")
            .env("OCI_DEBUG", "0")
            .output()
            .expect("run the conformance suite");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        let plain: String = strip_ansi(&text);
        let summary = plain
            .lines()
            .find(|l| l.contains(" Passed | "))
            .unwrap_or("no summary line")
            .to_string();
        let failed: Vec<&str> = plain.lines().filter(|l| l.contains("[FAIL]")).collect();
        assert!(
            summary.contains("74 Passed | 0 Failed"),
            "run {run_no}: {summary}\n{}",
            failed.join("\n")
        );
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
