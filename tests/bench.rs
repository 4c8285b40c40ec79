//! `hoist bench` at smoke size, end to end: every shape built, pushed to the embedded registry,
//! pulled cold and warm (each pulled folder is checked byte for byte against the model by the
//! bench itself, which fails otherwise), and the table, JSON and chart written.

mod common;

#[test]
fn smoke_bench_writes_table_json_and_chart() {
    let h = common::Hoist::new();
    let out = tempfile::tempdir().unwrap();
    let run = h
        .run(&[
            "bench",
            "--synthetic",
            "24MiB",
            "--link",
            "200MB,5ms",
            "--out",
            out.path().to_str().unwrap(),
        ])
        .ok();
    for shape in [
        "image, single layer tar+gzip",
        "image, multi-layer tar+gzip",
        "image, multi-layer tar ",
        "image, multi-layer tar+zstd",
        "artifact, raw layers",
        "artifact, tar+zstd layers",
    ] {
        assert!(
            run.stdout.contains(shape),
            "{shape} missing:\n{}",
            run.stdout
        );
    }
    let md = std::fs::read_to_string(out.path().join("bench.md")).unwrap();
    assert_eq!(md, run.stdout, "bench.md is the printed table");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("bench.json")).unwrap()).unwrap();
    let shapes = json["shapes"].as_array().unwrap();
    assert_eq!(shapes.len(), 6);
    for s in shapes {
        for key in [
            "build_seconds",
            "pull_cold_seconds",
            "pull_warm_seconds",
            "pull_link_seconds",
        ] {
            assert!(s[key].as_f64().unwrap() > 0.0, "{key} of {s}");
        }
        assert!(s["stored_bytes"].as_u64().unwrap() > 0);
    }
    // gzip and zstd layers store fewer bytes than raw ones on bf16 weights.
    let stored = |slug: &str| {
        shapes.iter().find(|s| s["slug"] == slug).unwrap()["stored_bytes"]
            .as_u64()
            .unwrap()
    };
    assert!(stored("img-1-tar-gzip") < stored("art-raw"));
    assert!(json["machine"]["cores"].as_u64().unwrap() >= 1);
    assert!(json["model_bytes"].as_u64().unwrap() >= 24 << 20);
    let svg = std::fs::read_to_string(out.path().join("bench.svg")).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("artifact,"),
        "chart without labels"
    );
    let png = std::fs::read(out.path().join("bench.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}
