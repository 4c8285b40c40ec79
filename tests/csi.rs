//! `hoist csi` driven over its unix socket as kubelet drives it, by a gRPC client generated
//! from the spec's `csi.proto`: publish (the model's files, read-only), publish twice, a
//! second volume from the node's store alone, unpublish twice, the fields a request must
//! have, a pull longer than the caller's deadline finished by retries with its bytes crossing
//! the link once, the plugin killed mid-pull and resumed, one download for concurrent
//! volumes, a private registry through the volume's secret, a lazy volume, /metrics.
//! A shared node (SECURITY.md): a private model never served from the cache to a volume
//! without its Secret, one Pod's unpublish leaving another's volume whole across restarts,
//! links on the way to a target refused, foreign mounts left alone, stock gRPC clients
//! (PyPI's `grpcio` with its defaults, a raw HTTP/2 request) naming the socket's path as
//! authority, and a policy holding for every spelling of its registry.
//!
//! Mounting needs root (CAP_SYS_ADMIN): where it is missing the tests say so and pass,
//! unless CI is set.
#![cfg(feature = "csi")]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::pki::{rc_pki, write_leaf};
use common::{cannot_run, free_port, hoist_bin, large_model, push_small, tree, Hoist, Registry};
use hoist::csi::proto::identity_client::IdentityClient;
use hoist::csi::proto::node_client::NodeClient;
use hoist::csi::proto::{self as csi, volume_capability};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

fn can_mount() -> bool {
    rustix::process::geteuid().is_root()
        || !cannot_run(
            "mounting a volume needs root (CAP_SYS_ADMIN), so hoist csi cannot be tested",
        )
}

/// A `hoist csi` process with its own store, volumes folder and kubelet folder (all in one
/// temporary folder, kept across a restart). Dropped: killed, and every mount it left under
/// its folder detached.
struct Plugin {
    child: Child,
    dir: Option<tempfile::TempDir>,
    metrics: String,
}

impl Plugin {
    fn start(extra: &[&str]) -> Plugin {
        Self::start_in(tempfile::tempdir().unwrap(), extra)
    }

    fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Plugin {
        let root = dir.path();
        let metrics = format!("127.0.0.1:{}", free_port());
        let mut args: Vec<String> = ["csi", "--node-id", "node-1", "--metrics-addr", &metrics]
            .map(String::from)
            .to_vec();
        args.push(format!(
            "--endpoint=unix://{}",
            root.join("csi.sock").display()
        ));
        args.push(format!("--kubelet-dir={}", root.join("kubelet").display()));
        args.push(format!("--volumes-dir={}", root.join("volumes").display()));
        args.push(format!("--store={}", root.join("store").display()));
        args.extend(extra.iter().map(|a| a.to_string()));
        Self::spawn(dir, args, metrics)
    }

    /// Run `hoist ARGS` as the plugin, its socket at DIR/csi.sock and kubelet's folder at
    /// DIR/kubelet.
    fn spawn(dir: tempfile::TempDir, args: Vec<String>, metrics: String) -> Plugin {
        let root = dir.path();
        std::fs::create_dir_all(root.join("kubelet/pods")).unwrap();
        std::fs::create_dir_all(root.join("docker")).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join("log"))
            .unwrap();
        let child = Command::new(hoist_bin())
            .env_remove("HOIST_HOME")
            .env("DOCKER_CONFIG", root.join("docker"))
            .env_remove("HOIST_USERNAME")
            .env_remove("HOIST_PASSWORD")
            .env("RUST_LOG", "info")
            .args(&args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut plugin = Plugin {
            child,
            dir: Some(dir),
            metrics,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::os::unix::net::UnixStream::connect(plugin.socket()).is_err() {
            assert!(
                plugin.child.try_wait().unwrap().is_none(),
                "hoist csi exited: {}",
                plugin.log()
            );
            assert!(Instant::now() < deadline, "hoist csi did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        plugin
    }

    fn root(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    fn socket(&self) -> PathBuf {
        self.root().join("csi.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root().join("log")).unwrap_or_default()
    }

    /// Kubelet's target path for a Pod's volume.
    fn target(&self, pod: &str) -> PathBuf {
        self.root()
            .join("kubelet/pods")
            .join(pod)
            .join("volumes/kubernetes.io~csi/model/mount")
    }

    fn volumes(&self) -> Vec<String> {
        common::all_entries(&self.root().join("volumes"))
    }

    async fn channel(&self) -> Channel {
        let socket = self.socket();
        Endpoint::try_from("http://[::1]:50051")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .unwrap()
    }

    async fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel().await)
    }

    fn metrics(&self) -> String {
        common::curl(&["-s", &format!("http://{}/metrics", self.metrics)]).2
    }

    /// Kill -9 (a node's plugin Pod evicted mid-pull); its folder, for the next start.
    fn kill(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.dir.take().unwrap()
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.dir {
            detach_mounts_under(dir.path());
        }
    }
}

fn detach_mounts_under(root: &Path) {
    for m in hoist::fsutil::mount_table()
        .unwrap_or_default()
        .iter()
        .rev()
    {
        if m.point.starts_with(root) {
            let _ = rustix::mount::unmount(&m.point, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

fn publish_request(
    id: &str,
    target: &Path,
    attrs: &[(&str, &str)],
) -> csi::NodePublishVolumeRequest {
    let mut context: HashMap<String, String> = attrs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    context.insert("csi.storage.k8s.io/ephemeral".into(), "true".into());
    context.insert("csi.storage.k8s.io/pod.name".into(), "inference-0".into());
    csi::NodePublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.display().to_string(),
        volume_capability: Some(csi::VolumeCapability {
            access_type: Some(volume_capability::AccessType::Mount(Default::default())),
            access_mode: Some(volume_capability::AccessMode {
                mode: volume_capability::access_mode::Mode::SingleNodeReaderOnly as i32,
            }),
        }),
        readonly: true,
        volume_context: context,
        ..Default::default()
    }
}

async fn publish(
    node: &mut NodeClient<Channel>,
    req: csi::NodePublishVolumeRequest,
    deadline: Option<Duration>,
) -> Result<(), tonic::Status> {
    let mut req = tonic::Request::new(req);
    if let Some(d) = deadline {
        req.set_timeout(d);
    }
    node.node_publish_volume(req).await.map(|_| ())
}

async fn unpublish(
    node: &mut NodeClient<Channel>,
    id: &str,
    target: &Path,
) -> Result<(), tonic::Status> {
    node.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.display().to_string(),
    })
    .await
    .map(|_| ())
}

/// Publish as kubelet does: a deadline per call, retried until it succeeds. Returns how
/// many calls answered DEADLINE_EXCEEDED first.
async fn publish_until_done(
    node: &mut NodeClient<Channel>,
    req: &csi::NodePublishVolumeRequest,
    per_call: Duration,
) -> usize {
    let give_up = Instant::now() + Duration::from_secs(120);
    let mut exceeded = 0;
    loop {
        match publish(node, req.clone(), Some(per_call)).await {
            Ok(()) => return exceeded,
            Err(s) if s.code() == Code::DeadlineExceeded => exceeded += 1,
            Err(s) => panic!("publish failed: {s:?}"),
        }
        assert!(Instant::now() < give_up, "the volume was never published");
    }
}

/// The WAN emulator on the test's runtime: a link of `rate` bytes per second to `reg`.
async fn wan(reg: &Registry, rate: u64) -> hoist::wan::Proxy {
    let link = hoist::wan::Link {
        link_rate: rate,
        ..Default::default()
    };
    hoist::wan::Proxy::start("127.0.0.1:0", reg.addr.parse().unwrap(), link)
        .await
        .unwrap()
}

fn wan_ref(wan: &hoist::wan::Proxy, repo_tag: &str) -> String {
    format!("{}/{repo_tag}", wan.addr)
}

fn is_mounted(path: &Path) -> bool {
    hoist::fsutil::is_mount_point(path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_gives_the_models_files_read_only_and_unpublish_takes_them_away() {
    if !can_mount() {
        return;
    }
    let reg = Registry::start();
    let h = Hoist::new();
    let reference = reg.reference("team/minilm:v1");
    let src = push_small(&h, &reference);
    let plugin = Plugin::start(&[]);
    let mut node = plugin.node().await;
    let target = plugin.target("pod-a");
    let req = publish_request("csi-a", &target, &[("reference", &reference)]);

    publish(&mut node, req.clone(), None).await.unwrap();
    assert!(is_mounted(&target));
    assert_eq!(tree(src.path(), false), tree(&target, false));
    let write = std::fs::write(target.join("config.json"), b"changed");
    assert_eq!(
        write.unwrap_err().raw_os_error(),
        Some(libc::EROFS),
        "a write through the volume must fail: it is read-only"
    );
    assert!(std::fs::write(target.join("new.txt"), b"x").is_err());
    // Published twice: OK, and still one mount.
    publish(&mut node, req.clone(), None).await.unwrap();
    let mounts = hoist::fsutil::mount_table().unwrap();
    assert_eq!(mounts.iter().filter(|m| m.point == target).count(), 1);
    // The same volume id with another model: refused.
    let other = publish_request(
        "csi-a",
        &target,
        &[("reference", &reg.reference("team/minilm:v2"))],
    );
    assert_eq!(
        publish(&mut node, other, None).await.unwrap_err().code(),
        Code::AlreadyExists
    );

    unpublish(&mut node, "csi-a", &target).await.unwrap();
    assert!(!is_mounted(&target));
    assert!(!target.exists(), "the target folder is removed");
    assert!(
        plugin.volumes().is_empty(),
        "the volume's folder is removed: {:?}",
        plugin.volumes()
    );
    unpublish(&mut node, "csi-a", &target).await.unwrap();
    // The node cache keeps the blobs for the next volume.
    let listed = h
        .run(&[
            "list",
            "--store",
            plugin.root().join("store").to_str().unwrap(),
        ])
        .ok();
    assert!(listed.stdout.contains("csi/"), "{}", listed.stdout);

    // A missing model: NOT_FOUND, with hoist's message.
    let missing = publish_request(
        "csi-b",
        &plugin.target("pod-b"),
        &[("reference", &reg.reference("team/none:v1"))],
    );
    let status = publish(&mut node, missing, None).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(!is_mounted(&plugin.target("pod-b")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_volume_of_the_model_comes_from_the_node_without_the_registry() {
    if !can_mount() {
        return;
    }
    let reg = Registry::start();
    let h = Hoist::new();
    let reference = reg.reference("team/minilm:v1");
    let src = push_small(&h, &reference);
    let plugin = Plugin::start(&[]);
    let mut node = plugin.node().await;
    let first = plugin.target("pod-a");
    publish(
        &mut node,
        publish_request("csi-a", &first, &[("reference", &reference)]),
        None,
    )
    .await
    .unwrap();
    let log = reg.settled_log();
    let requests = log.matches("\"GET /v2/").count() + log.matches("\"HEAD /v2/").count();

    let second = plugin.target("pod-b");
    let started = Instant::now();
    publish(
        &mut node,
        publish_request("csi-b", &second, &[("reference", &reference)]),
        None,
    )
    .await
    .unwrap();
    let took = started.elapsed();
    eprintln!("second volume of the model: {took:?}");
    // What is claimed is that nothing is fetched again (counted below); the time is a guard
    // against a copy of the files, loose enough for a loaded machine.
    assert!(
        took < Duration::from_secs(10),
        "the second volume took {took:?}"
    );
    let log = reg.settled_log();
    let after = log.matches("\"GET /v2/").count() + log.matches("\"HEAD /v2/").count();
    assert_eq!(
        requests,
        after,
        "the second volume asked the registry:\n{}",
        reg.settled_log()
    );
    assert_eq!(tree(src.path(), false), tree(&second, false));
    // Hard links to the store's blobs: the files of both volumes are one inode each.
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (
        std::fs::metadata(first.join("model.safetensors")).unwrap(),
        std::fs::metadata(second.join("model.safetensors")).unwrap(),
    );
    assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()));

    // Always: the registry is asked again (the tag may have moved), the blobs still come from the store.
    let third = plugin.target("pod-c");
    let always = publish_request(
        "csi-c",
        &third,
        &[("reference", &reference), ("pullPolicy", "Always")],
    );
    let blobs = reg.blob_get_count();
    publish(&mut node, always, None).await.unwrap();
    assert!(reg.settled_log().matches("/manifests/").count() > 0);
    assert_eq!(reg.blob_get_count(), blobs, "no blob fetched again");

    let metrics = plugin.metrics();
    for line in [
        "hoist_csi_volumes_from_store_total 2",
        "hoist_csi_publish_total{mode=\"copy\",result=\"ok\"} 3",
        "kaito_model_download_duration_seconds_count{repository=\"team/minilm\"} 3",
        "kaito_model_download_failures_total{repository=\"team/minilm\",reason=\"network\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    assert!(
        metrics.lines().any(|l| l
            .starts_with("hoist_cache_hits_total{repository=\"team/minilm\"}")
            && !l.ends_with(" 0")),
        "{metrics}"
    );
    for (id, t) in [("csi-a", &first), ("csi-b", &second), ("csi-c", &third)] {
        unpublish(&mut node, id, t).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_their_fields_are_invalid_arguments() {
    if !can_mount() {
        return;
    }
    let plugin = Plugin::start(&[]);
    let mut node = plugin.node().await;
    let mut identity = IdentityClient::new(plugin.channel().await);
    let info = identity
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, hoist::csi::DRIVER_NAME);
    assert!(!info.vendor_version.is_empty());
    let probe = identity
        .probe(csi::ProbeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(probe.ready, Some(true));
    let node_info = node
        .node_get_info(csi::NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(node_info.node_id, "node-1");
    node.node_get_capabilities(csi::NodeGetCapabilitiesRequest {})
        .await
        .unwrap();

    let target = plugin.target("pod-a");
    let good = publish_request("csi-a", &target, &[("reference", "127.0.0.1:1/m:v1")]);
    let mut cases: Vec<(&str, csi::NodePublishVolumeRequest)> = Vec::new();
    let mut r = good.clone();
    r.volume_id.clear();
    cases.push(("volume_id", r));
    let mut r = good.clone();
    r.target_path.clear();
    cases.push(("target_path", r));
    let mut r = good.clone();
    r.volume_capability = None;
    cases.push(("volume_capability", r));
    let mut r = good.clone();
    r.volume_context.remove("reference");
    cases.push(("reference", r));
    let mut r = good.clone();
    r.target_path = plugin.root().join("elsewhere").display().to_string();
    cases.push(("pods folder", r));
    let mut r = good.clone();
    r.target_path = format!("{}/../../../etc", plugin.target("pod-a").display());
    cases.push(("pods folder", r));
    for (why, req) in cases {
        let status = publish(&mut node, req, None).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{why}: {status:?}");
        assert!(
            status.message().contains(why),
            "{why}: {}",
            status.message()
        );
    }
    assert!(!plugin.root().join("elsewhere").exists());
    let status = node
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: String::new(),
            target_path: target.display().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = unpublish(&mut node, "csi-a", &plugin.root().join("store"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        plugin.root().join("store").exists(),
        "nothing outside the pods folder is removed"
    );
}

/// A 12 MiB model behind a 3 MiB/s link and a 2 s deadline per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_longer_than_the_deadline_is_finished_by_retries_and_crosses_the_link_once() {
    if !can_mount() {
        return;
    }
    let reg = Registry::start();
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    large_model(src.path(), 12);
    let size: u64 = tree(src.path(), false)
        .values()
        .map(|v| v.len() as u64)
        .sum();
    h.run(&[
        "push",
        src.path().to_str().unwrap(),
        &reg.reference("big/m:v1"),
    ])
    .ok();
    let wan = wan(&reg, 3 << 20).await;
    let plugin = Plugin::start(&[]);
    let mut node = plugin.node().await;
    let target = plugin.target("pod-a");
    let req = publish_request(
        "csi-big",
        &target,
        &[("reference", &wan_ref(&wan, "big/m:v1"))],
    );

    let exceeded = publish_until_done(&mut node, &req, Duration::from_secs(2)).await;
    assert!(
        exceeded >= 1,
        "the pull was expected to outlast one 2 s call"
    );
    assert_eq!(tree(src.path(), false), tree(&target, false));
    let crossed = wan.bytes_down();
    eprintln!("{crossed} bytes crossed the link for a {size}-byte model, {exceeded} calls past their deadline");
    assert!(
        crossed >= size && crossed < size + size / 50 + (64 << 10),
        "{crossed} bytes crossed the link for a {size}-byte model"
    );
    let metrics = plugin.metrics();
    assert!(!metrics.contains("hoist_csi_joined_total 0"), "{metrics}");
    assert!(metrics.contains("result=\"DeadlineExceeded\""), "{metrics}");

    // Two more volumes at once, of a model not on the node: one download between them.
    let src2 = tempfile::tempdir().unwrap();
    large_model(src2.path(), 6);
    std::fs::write(
        src2.path().join("config.json"),
        br#"{"model_type":"other"}"#,
    )
    .unwrap();
    std::fs::write(
        src2.path().join("tokenizer.json"),
        common::noise(1 << 20, 9),
    )
    .unwrap();
    let size2: u64 = tree(src2.path(), false)
        .values()
        .map(|v| v.len() as u64)
        .sum();
    h.run(&[
        "push",
        src2.path().to_str().unwrap(),
        &reg.reference("big/m:v2"),
    ])
    .ok();
    let before = wan.bytes_down();
    let (t1, t2) = (plugin.target("pod-b"), plugin.target("pod-c"));
    let r1 = publish_request("csi-b", &t1, &[("reference", &wan_ref(&wan, "big/m:v2"))]);
    let r2 = publish_request("csi-c", &t2, &[("reference", &wan_ref(&wan, "big/m:v2"))]);
    let mut node2 = plugin.node().await;
    let (a, b) = tokio::join!(publish(&mut node, r1, None), publish(&mut node2, r2, None));
    a.unwrap();
    b.unwrap();
    let crossed = wan.bytes_down() - before;
    assert!(
        crossed < size2 + size2 / 50 + (64 << 10),
        "{crossed} bytes crossed the link for two volumes of a {size2}-byte model"
    );
    assert_eq!(tree(src2.path(), false), tree(&t1, false));
    assert_eq!(tree(src2.path(), false), tree(&t2, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_killed_mid_pull_resumes_when_kubelet_retries() {
    if !can_mount() {
        return;
    }
    let reg = Registry::start();
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    large_model(src.path(), 16);
    let size: u64 = tree(src.path(), false)
        .values()
        .map(|v| v.len() as u64)
        .sum();
    h.run(&[
        "push",
        src.path().to_str().unwrap(),
        &reg.reference("big/m:v1"),
    ])
    .ok();
    let wan = wan(&reg, 2 << 20).await;
    let flags = ["--range-size", "1MiB", "--max-connections", "2"];
    let plugin = Plugin::start(&flags);
    let mut node = plugin.node().await;
    let target = plugin.target("pod-a");
    let req = publish_request(
        "csi-big",
        &target,
        &[("reference", &wan_ref(&wan, "big/m:v1"))],
    );
    let status = publish(&mut node, req.clone(), Some(Duration::from_secs(2)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while wan.bytes_down() < 6 << 20 {
        assert!(
            Instant::now() < deadline,
            "the pull went on after the call's deadline"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dir = plugin.kill();
    let before_restart = wan.bytes_down();

    let plugin = Plugin::start_in(dir, &flags);
    let mut node = plugin.node().await;
    publish_until_done(&mut node, &req, Duration::from_secs(2)).await;
    assert_eq!(tree(src.path(), false), tree(&target, false));
    let crossed = wan.bytes_down();
    eprintln!("{crossed} bytes crossed for a {size}-byte model, {before_restart} before the kill");
    // Started over, the pull would have crossed the 6 MiB before the kill again.
    assert!(
        crossed < size + (3 << 20),
        "{crossed} bytes crossed the link for a {size}-byte model ({before_restart} before the kill)"
    );
    unpublish(&mut node, "csi-big", &target).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_registry_is_read_with_the_volumes_secret_and_never_logged() {
    if !can_mount() {
        return;
    }
    const PASSWORD: &str = "csi-secret-0123";
    let (reg, reference, src) = private_registry(PASSWORD);
    let plugin = Plugin::start(&[]);
    let mut node = plugin.node().await;

    let bare = publish_request(
        "csi-a",
        &plugin.target("pod-a"),
        &[("reference", &reference)],
    );
    let status = publish(&mut node, bare, None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    let wrong = publish_request(
        "csi-w",
        &plugin.target("pod-w"),
        &[("reference", &reference)],
    );
    assert_eq!(
        publish(&mut node, with_password(wrong, "nope"), None)
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );

    let right = publish_request(
        "csi-b",
        &plugin.target("pod-b"),
        &[("reference", &reference), ("pullPolicy", "Always")],
    );
    publish(&mut node, with_password(right, PASSWORD), None)
        .await
        .unwrap();
    assert_eq!(
        tree(src.path(), false),
        tree(&plugin.target("pod-b"), false)
    );

    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("alice:{PASSWORD}"));
    let config = format!(
        "{{\"auths\":{{\"http://{}\":{{\"auth\":\"{auth}\"}}}}}}",
        reg.addr
    );
    let mut with_config = publish_request(
        "csi-c",
        &plugin.target("pod-c"),
        &[("reference", &reference), ("pullPolicy", "Always")],
    );
    with_config.secrets = HashMap::from([(".dockerconfigjson".into(), config)]);
    publish(&mut node, with_config, None).await.unwrap();
    assert_eq!(
        tree(src.path(), false),
        tree(&plugin.target("pod-c"), false)
    );

    let log = plugin.log();
    assert!(
        !log.contains(PASSWORD) && !log.contains(&auth),
        "the secret reached the log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_volume_is_readable_at_once_and_read_only() {
    if !can_mount() {
        return;
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_err()
        && cannot_run("/dev/fuse cannot be opened here, so a lazy volume cannot be tested")
    {
        return;
    }
    let reg = Registry::start();
    let h = Hoist::new();
    let reference = reg.reference("team/minilm:v1");
    let src = push_small(&h, &reference);
    let plugin = Plugin::start(&[]);
    let mut node = plugin.node().await;
    let target = plugin.target("pod-a");
    let req = publish_request(
        "csi-lazy",
        &target,
        &[("reference", &reference), ("mode", "lazy")],
    );
    publish(&mut node, req.clone(), None).await.unwrap();
    let t = target.clone();
    let (files, write) = tokio::task::spawn_blocking(move || {
        (tree(&t, false), std::fs::write(t.join("config.json"), b"x"))
    })
    .await
    .unwrap();
    assert_eq!(tree(src.path(), false), files);
    assert!(write.is_err(), "a lazy volume is read-only");
    publish(&mut node, req, None).await.unwrap();
    unpublish(&mut node, "csi-lazy", &target).await.unwrap();
    assert!(!is_mounted(&target));
    assert!(!target.exists());
    let metrics = plugin.metrics();
    assert!(
        metrics.contains("hoist_csi_publish_total{mode=\"lazy\",result=\"ok\"} 2"),
        "{metrics}"
    );
}

/// The DaemonSet's plugin container as written in deploy/csi/daemonset.yaml (its args, with
/// its host folders under a temporary folder and the node's address on loopback, where no
/// node cache runs: the mirror is left for the registry), the registrar pointed at its
/// socket, and the real model published through it, loaded by python `safetensors`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemonsets_plugin_runs_as_written_and_serves_the_real_model() {
    if !can_mount() {
        return;
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/csi/daemonset.yaml");
    let spec: serde_json::Value = serde_json::from_str(&common::python(&format!(
        "import yaml, json\nd = yaml.safe_load(open({:?}))\nprint(json.dumps(d['spec']['template']['spec']))",
        manifest.display().to_string()
    )))
    .unwrap();
    let container = |name: &str| {
        spec["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} container"))
            .clone()
    };
    let (plugin_c, registrar) = (container("plugin"), container("node-driver-registrar"));
    let host_path = |volume: &str| {
        spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == volume)
            .and_then(|v| v["hostPath"]["path"].as_str())
            .unwrap_or_else(|| panic!("no hostPath volume {volume}"))
            .to_string()
    };
    let mount_of = |c: &serde_json::Value, volume: &str| {
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == volume)
            .unwrap_or_else(|| panic!("{} does not mount {volume}", c["name"]))
            .clone()
    };
    let strings = |c: &serde_json::Value| -> Vec<String> {
        c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect()
    };
    // The registrar tells kubelet where the plugin's socket is on the host.
    let socket_dir = mount_of(&plugin_c, "socket-dir");
    assert_eq!(
        socket_dir["mountPath"],
        mount_of(&registrar, "socket-dir")["mountPath"]
    );
    let plugin_args = strings(&plugin_c);
    let endpoint =
        plugin_args[plugin_args.iter().position(|a| a == "--endpoint").unwrap() + 1].clone();
    let in_container = endpoint.strip_prefix("unix://").unwrap();
    assert!(strings(&registrar).contains(&format!("--csi-address={in_container}")));
    let on_host = Path::new(&host_path("socket-dir")).join(
        Path::new(in_container)
            .strip_prefix(socket_dir["mountPath"].as_str().unwrap())
            .unwrap(),
    );
    assert!(strings(&registrar).contains(&format!(
        "--kubelet-registration-path={}",
        on_host.display()
    )));
    let kubelet = mount_of(&plugin_c, "kubelet");
    assert_eq!(
        kubelet["mountPropagation"], "Bidirectional",
        "mounts must reach kubelet"
    );
    assert_eq!(plugin_c["securityContext"]["privileged"], true);

    // The container's folders, under one temporary folder.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let metrics = format!("127.0.0.1:{}", free_port());
    let folders = [
        (
            socket_dir["mountPath"].as_str().unwrap().to_string(),
            root.clone(),
        ),
        (
            kubelet["mountPath"].as_str().unwrap().to_string(),
            root.join("kubelet"),
        ),
        (
            mount_of(&plugin_c, "state")["mountPath"]
                .as_str()
                .unwrap()
                .to_string(),
            root.join("state"),
        ),
    ];
    let args: Vec<String> = plugin_args
        .iter()
        .map(|a| {
            let mut a = a
                .replace("$(NODE_NAME)", "node-1")
                .replace("$(HOST_IP)", "127.0.0.1")
                .replace("0.0.0.0:9810", &metrics);
            for (inside, here) in &folders {
                if let Some(rest) = a.clone().strip_prefix(inside.as_str()) {
                    a = format!("{}{rest}", here.display());
                } else if let Some(rest) = a.clone().strip_prefix(&format!("unix://{inside}")) {
                    a = format!("unix://{}{rest}", here.display());
                }
            }
            a
        })
        .collect();
    std::fs::create_dir_all(root.join("state")).unwrap();
    let plugin = Plugin::spawn(dir, args, metrics);

    let reg = Registry::start();
    let h = Hoist::new();
    let reference = reg.reference("models/all-minilm-l6-v2:v1");
    let model = common::real_model();
    h.run(&["push", model.to_str().unwrap(), &reference]).ok();
    let mut node = plugin.node().await;
    let target = plugin.target("pod-real");
    let req = publish_request("csi-real", &target, &[("reference", &reference)]);
    publish(&mut node, req, Some(Duration::from_secs(120)))
        .await
        .unwrap();
    assert_eq!(tree(&model, false), tree(&target, false));
    let loaded = common::python(&format!(
        "from safetensors.numpy import load_file\nt = load_file({:?})\nprint(len(t), sum(v.size for v in t.values()))",
        target.join("model.safetensors").display().to_string()
    ));
    let mut counts = loaded.split_whitespace().map(|n| n.parse::<u64>().unwrap());
    assert!(counts.next().unwrap() > 50, "{loaded}");
    assert!(counts.next().unwrap() > 20_000_000, "{loaded}");
    assert!(
        plugin.root().join("state/store/oci-layout").is_file(),
        "the store is where the DaemonSet keeps it"
    );
    unpublish(&mut node, "csi-real", &target).await.unwrap();
    assert!(!target.exists());
}

/// With `--verify-key`, a volume's model must carry a signature by one of the keys that
/// covers its files exactly; otherwise PERMISSION_DENIED and nothing is placed or served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_verification_keys_only_signed_models_become_volumes() {
    if !can_mount() {
        return;
    }
    let reg = Registry::start();
    let h = Hoist::new();
    let work = tempfile::tempdir().unwrap();
    let (key, public) = key_pair(work.path());
    let src = tempfile::tempdir().unwrap();
    common::small_model(src.path());
    let signed = reg.reference("team/signed:v1");
    let unsigned = reg.reference("team/unsigned:v1");
    let dir = src.path().to_str().unwrap();
    h.run(&["push", dir, &signed, "--sign", key.to_str().unwrap()])
        .ok();
    h.run(&["push", dir, &unsigned]).ok();
    let plugin = Plugin::start(&["--verify-key", public.to_str().unwrap()]);
    let mut node = plugin.node().await;

    for (id, mode) in [("csi-u", "copy"), ("csi-ul", "lazy")] {
        let target = plugin.target(id);
        let req = publish_request(id, &target, &[("reference", &unsigned), ("mode", mode)]);
        let status = publish(&mut node, req, None).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{mode}: {status:?}");
        assert!(
            status.message().contains("no signature"),
            "{}",
            status.message()
        );
        assert!(
            !is_mounted(&target),
            "{mode}: an unsigned model was mounted"
        );
    }
    assert!(
        common::visible_entries(&plugin.root().join("volumes"))
            .iter()
            .all(|v| {
                common::visible_entries(&plugin.root().join("volumes").join(v).join("model"))
                    .is_empty()
            }),
        "a file of the unsigned model was placed"
    );

    let target = plugin.target("pod-s");
    let req = publish_request("csi-s", &target, &[("reference", &signed)]);
    publish(&mut node, req, None).await.unwrap();
    let mut files = tree(&target, false);
    assert!(
        files.remove("model.sig").is_some(),
        "the signature is in the volume"
    );
    assert_eq!(tree(src.path(), false), files);
    unpublish(&mut node, "csi-s", &target).await.unwrap();
}

/// An EC key pair made by openssl: (private, public) PEM files in `dir`.
fn key_pair(dir: &Path) -> (PathBuf, PathBuf) {
    let key = dir.join("key.pem");
    let public = dir.join("pub.pem");
    for args in [
        vec![
            "ecparam",
            "-genkey",
            "-noout",
            "-name",
            "prime256v1",
            "-out",
            key.to_str().unwrap(),
        ],
        vec![
            "ec",
            "-pubout",
            "-in",
            key.to_str().unwrap(),
            "-out",
            public.to_str().unwrap(),
        ],
    ] {
        let out = Command::new("openssl").args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
    }
    (key, public)
}

/// With `--verify-policy`, each volume's repository is checked as the policy's first
/// matching rule says: enforced, off, or (no rule) refused with PERMISSION_DENIED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verification_policy_decides_per_repository() {
    if !can_mount() {
        return;
    }
    let reg = Registry::start();
    let h = Hoist::new();
    let work = tempfile::tempdir().unwrap();
    let (key, _) = key_pair(work.path());
    let src = tempfile::tempdir().unwrap();
    common::small_model(src.path());
    let dir = src.path().to_str().unwrap();
    let [signed, unsigned, open, elsewhere] = [
        "team/signed:v1",
        "team/unsigned:v1",
        "open/m:v1",
        "other/m:v1",
    ]
    .map(|r| reg.reference(r));
    h.run(&["push", dir, &signed, "--sign", key.to_str().unwrap()])
        .ok();
    for r in [&unsigned, &open, &elsewhere] {
        h.run(&["push", dir, r]).ok();
    }
    let registry = reg.reference("x");
    let registry = registry.trim_end_matches("/x");
    let policy = work.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[[rule]]\nrepositories = \"{registry}/open/*\"\nmode = \"off\"\n\
             [[rule]]\nrepositories = \"{registry}/team/*\"\nkeys = [\"pub.pem\"]\n"
        ),
    )
    .unwrap();
    let plugin = Plugin::start(&["--verify-policy", policy.to_str().unwrap()]);
    let mut node = plugin.node().await;
    for (id, reference, placed, why) in [
        ("p-signed", &signed, true, ""),
        ("p-open", &open, true, ""),
        ("p-unsigned", &unsigned, false, "no signature"),
        ("p-elsewhere", &elsewhere, false, "no rule of"),
    ] {
        let want = if placed {
            Verdict::Placed {
                signed: id == "p-signed",
            }
        } else {
            Verdict::Denied(why)
        };
        publish_expecting(&mut node, &plugin, id, reference, want, id).await;
    }
}

/// Certificates on the node, from the flags (`--verify-cert-chain`, `--cert-identity`) and from
/// a policy rule (`roots`, `identities`): a model signed by a certificate that chains to the
/// roots and names the identity becomes a volume; one signed for another identity, by a
/// certificate from another root, or by a bare key is PERMISSION_DENIED, nothing mounted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_certificate_roots_only_models_signed_for_the_identity_become_volumes() {
    if !can_mount() {
        return;
    }
    let reg = Registry::start();
    let h = Hoist::new();
    let work = tempfile::tempdir().unwrap();
    let (pki, stranger) = (rc_pki(), rc_pki());
    std::fs::write(work.path().join("root.pem"), &pki.root_pem).unwrap();
    let mallory = |p: &mut rcgen::CertificateParams| {
        p.subject_alt_names = vec![rcgen::SanType::Rfc822Name(
            "mallory@example.com".try_into().unwrap(),
        )]
    };
    let ours = write_leaf(&pki, work.path(), "ours", |_| {});
    let theirs = write_leaf(&pki, work.path(), "theirs", mallory);
    let foreign = write_leaf(&stranger, work.path(), "foreign", |_| {});
    let (bare, _) = key_pair(work.path());
    let src = tempfile::tempdir().unwrap();
    common::small_model(src.path());
    let dir = src.path().to_str().unwrap();
    let cases = [
        ("c-ours", Some(&ours), "", true),
        (
            "c-theirs",
            Some(&theirs),
            "none of the allowed identities",
            false,
        ),
        (
            "c-foreign",
            Some(&foreign),
            "does not reach the trusted roots",
            false,
        ),
        ("c-bare", None, "not one of the verification keys", false),
    ];
    for (name, leaf, _, _) in &cases {
        let reference = reg.reference(&format!("team/{name}:v1"));
        let mut args = vec!["push", dir, &reference, "--sign"];
        let (key, cert);
        match leaf {
            Some((k, c)) => {
                (key, cert) = (k.to_str().unwrap(), c.to_str().unwrap());
                args.extend([key, "--cert", cert]);
            }
            None => args.push(bare.to_str().unwrap()),
        }
        h.run(&args).ok();
    }
    let registry = reg.reference("x");
    let policy = work.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[[rule]]\nrepositories = \"{}/team/*\"\nroots = [\"root.pem\"]\n\
             identities = [\"signer@*.com\"]\n",
            registry.trim_end_matches("/x")
        ),
    )
    .unwrap();
    let root = work.path().join("root.pem");
    let flags = [
        "--verify-cert-chain",
        root.to_str().unwrap(),
        "--cert-identity",
        "signer@example.com",
    ];
    let by_policy = ["--verify-policy", policy.to_str().unwrap()];
    for (how, extra) in [("flags", &flags[..]), ("policy", &by_policy[..])] {
        let plugin = Plugin::start(extra);
        let mut node = plugin.node().await;
        for (name, _, why, placed) in &cases {
            let reference = reg.reference(&format!("team/{name}:v1"));
            let want = if *placed {
                Verdict::Placed { signed: true }
            } else {
                Verdict::Denied(why)
            };
            let label = format!("{how} {name}");
            publish_expecting(&mut node, &plugin, name, &reference, want, &label).await;
        }
    }
}

/// What a publish under a verification setting must come to.
enum Verdict<'a> {
    /// Published, with `model.sig` in the volume exactly when `signed`; then unpublished.
    Placed { signed: bool },
    /// PERMISSION_DENIED naming this reason, nothing mounted.
    Denied(&'a str),
}

/// Publish `reference` as volume `id` and hold the answer to `want` (`label` names the case).
async fn publish_expecting(
    node: &mut NodeClient<Channel>,
    plugin: &Plugin,
    id: &str,
    reference: &str,
    want: Verdict<'_>,
    label: &str,
) {
    let target = plugin.target(id);
    let req = publish_request(id, &target, &[("reference", reference)]);
    match (publish(node, req, None).await, want) {
        (Ok(_), Verdict::Placed { signed }) => {
            let files = tree(&target, false);
            assert_eq!(files.contains_key("model.sig"), signed, "{label}");
            unpublish(node, id, &target).await.unwrap();
        }
        (Ok(_), Verdict::Denied(_)) => panic!("{label}: published"),
        (Err(status), Verdict::Placed { .. }) => panic!("{label}: {status:?}"),
        (Err(status), Verdict::Denied(why)) => {
            assert_eq!(status.code(), Code::PermissionDenied, "{label}: {status:?}");
            assert!(status.message().contains(why), "{label}: {status:?}");
            assert!(!is_mounted(&target), "{label}: mounted");
        }
    }
}

// ---- A shared node: tenants who do not trust each other (SECURITY.md, "A shared node") ----

/// A registry that asks for credentials on every request, holding `private/m:v1` pushed by
/// alice; returns the registry, the reference and the pushed folder.
fn private_registry(password: &str) -> (Registry, String, tempfile::TempDir) {
    let out = Command::new("htpasswd")
        .args(["-Bbn", "alice", password])
        .output()
        .expect("htpasswd (apache2-utils)");
    let reg = Registry::start_with_files(
        &[("htpasswd", &out.stdout)],
        "auth:\n  htpasswd: {realm: basic-realm, path: {root}/htpasswd}\n",
    );
    let h = Hoist::new();
    let reference = reg.reference("private/m:v1");
    let src = tempfile::tempdir().unwrap();
    common::small_model(src.path());
    common::run(
        h.cmd()
            .env("HOIST_USERNAME", "alice")
            .env("HOIST_PASSWORD", password)
            .args(["push", src.path().to_str().unwrap(), &reference]),
    )
    .ok();
    (reg, reference, src)
}

fn with_password(
    mut req: csi::NodePublishVolumeRequest,
    password: &str,
) -> csi::NodePublishVolumeRequest {
    req.secrets = HashMap::from([
        ("username".into(), "alice".into()),
        ("password".into(), password.into()),
    ]);
    req
}

fn manifest_requests(reg: &Registry) -> usize {
    reg.settled_log().matches("/manifests/").count()
}

/// Case 1: a model that came through a Secret is served from the node's cache only to a
/// volume whose own credentials the registry accepts for it: one manifest request, then the
/// verdict is kept. Without the Secret, with a wrong one, by digest: PERMISSION_DENIED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_pulled_with_a_secret_is_not_served_to_a_volume_without_it() {
    if !can_mount() {
        return;
    }
    const PASSWORD: &str = "tenant-a-secret";
    let (reg, reference, src) = private_registry(PASSWORD);
    let plugin = Plugin::start(&[]);
    let mut node = plugin.node().await;

    let a = plugin.target("pod-a");
    let req = publish_request("csi-a", &a, &[("reference", &reference)]);
    publish(&mut node, with_password(req, PASSWORD), None)
        .await
        .unwrap();
    assert_eq!(tree(src.path(), false), tree(&a, false));
    let digest = std::fs::read_dir(plugin.root().join("volumes"))
        .unwrap()
        .flatten()
        .find_map(|e| std::fs::read(e.path().join("volume.json")).ok())
        .map(|b| {
            serde_json::from_slice::<serde_json::Value>(&b).unwrap()["digest"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .unwrap();
    let by_digest = format!("{}/private/m@{digest}", reg.addr);

    // (pod, reference, secret, whether the registry is asked: pod-d's anonymous verdict
    // for this digest is the one pod-b got, kept)
    for (pod, reference, secret, asks) in [
        ("pod-b", reference.as_str(), None, true),
        ("pod-c", reference.as_str(), Some("wrong-password"), true),
        ("pod-d", by_digest.as_str(), None, false),
    ] {
        let before = manifest_requests(&reg);
        let target = plugin.target(pod);
        let mut req = publish_request(&format!("csi-{pod}"), &target, &[("reference", reference)]);
        if let Some(p) = secret {
            req = with_password(req, p);
        }
        let status = publish(&mut node, req, None).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{pod}: {status:?}");
        assert!(
            status
                .message()
                .contains("not served from the node's cache"),
            "{pod}: {status:?}"
        );
        assert!(!is_mounted(&target), "{pod}: nothing mounted");
        assert!(
            !target.exists() || common::all_entries(&target).is_empty(),
            "{pod}: no file placed"
        );
        assert_eq!(
            manifest_requests(&reg) > before,
            asks,
            "{pod}: the registry asked or not as expected"
        );
    }

    // The right Secret again: allowed, its verdict kept — a rollout asks once.
    let e = plugin.target("pod-e");
    let req = publish_request("csi-e", &e, &[("reference", &reference)]);
    publish(&mut node, with_password(req, PASSWORD), None)
        .await
        .unwrap();
    assert_eq!(tree(src.path(), false), tree(&e, false));
    let before = manifest_requests(&reg);
    let f = plugin.target("pod-f");
    let req = publish_request("csi-f", &f, &[("reference", &reference)]);
    publish(&mut node, with_password(req, PASSWORD), None)
        .await
        .unwrap();
    assert_eq!(
        manifest_requests(&reg),
        before,
        "the kept verdict asks nothing"
    );
    assert!(plugin
        .metrics()
        .contains("hoist_csi_cache_access_denied_total 3"));
}

/// A PersistentVolume's publish request: no ephemeral attribute, the same volume id for
/// every Pod that uses it.
fn pv_request(id: &str, target: &Path, reference: &str) -> csi::NodePublishVolumeRequest {
    let mut req = publish_request(id, target, &[("reference", reference)]);
    req.volume_context.remove("csi.storage.k8s.io/ephemeral");
    req
}

/// Case 2: two Pods on one node use one ReadOnlyMany volume; unpublishing one leaves the
/// other's files, across a restart of the plugin; the last unpublish removes the folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublishing_one_pod_leaves_another_pods_volume_whole_across_restarts() {
    if !can_mount() {
        return;
    }
    let reg = Registry::start();
    let h = Hoist::new();
    let reference = reg.reference("team/shared:v1");
    let src = push_small(&h, &reference);
    let plugin = Plugin::start(&[]);
    let mut node = plugin.node().await;
    let (a, b, c) = (
        plugin.target("pod-a"),
        plugin.target("pod-b"),
        plugin.target("pod-c"),
    );
    for t in [&a, &b] {
        publish(&mut node, pv_request("pv-model", t, &reference), None)
            .await
            .unwrap();
    }
    unpublish(&mut node, "pv-model", &a).await.unwrap();
    assert!(!a.exists());
    assert_eq!(
        tree(src.path(), false),
        tree(&b, false),
        "B keeps its files"
    );

    // kubelet calls unpublish after restarts too: the bookkeeping is on disk.
    publish(&mut node, pv_request("pv-model", &c, &reference), None)
        .await
        .unwrap();
    let dir = plugin.kill();
    let plugin = Plugin::start_in(dir, &[]);
    let mut node = plugin.node().await;
    unpublish(&mut node, "pv-model", &b).await.unwrap();
    assert_eq!(
        tree(src.path(), false),
        tree(&c, false),
        "C keeps its files"
    );
    unpublish(&mut node, "pv-model", &c).await.unwrap();
    assert!(plugin.volumes().is_empty(), "{:?}", plugin.volumes());
    unpublish(&mut node, "pv-model", &c).await.unwrap();
}

/// Case 3: a link on the way to the target (a folder of the Pod's, or the target itself)
/// is INVALID_ARGUMENT, for publish and unpublish, and nothing is mounted or removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_on_the_way_to_the_target_is_refused() {
    if !can_mount() {
        return;
    }
    let reg = Registry::start();
    let h = Hoist::new();
    let reference = reg.reference("team/m:v1");
    push_small(&h, &reference);
    let plugin = Plugin::start(&[]);
    let mut node = plugin.node().await;
    let pods = plugin.root().join("kubelet/pods");
    let elsewhere = plugin.root().join("elsewhere");
    let victim = plugin.root().join("victim");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("precious"), b"keep").unwrap();
    std::os::unix::fs::symlink(&elsewhere, pods.join("pod-l")).unwrap();
    let through_link = plugin.target("pod-l");
    let link_target = plugin.target("pod-t");
    std::fs::create_dir_all(link_target.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&victim, &link_target).unwrap();

    for target in [&through_link, &link_target] {
        let req = publish_request("csi-l", target, &[("reference", &reference)]);
        let status = publish(&mut node, req, None).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("link"), "{status:?}");
        let status = unpublish(&mut node, "csi-l", target).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    assert!(
        common::all_entries(&elsewhere).is_empty(),
        "nothing made through the link"
    );
    assert!(!is_mounted(&victim) && !is_mounted(&elsewhere));
    assert_eq!(std::fs::read(victim.join("precious")).unwrap(), b"keep");
    assert!(link_target.is_symlink());
}

/// Case 4: an unpublish never unmounts or removes what this plugin did not make: another
/// driver's mount at the target of an unknown volume, or a folder holding a file, is left
/// and the answer is NOT_FOUND.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublish_leaves_what_the_plugin_never_made() {
    if !can_mount() {
        return;
    }
    let plugin = Plugin::start(&[]);
    let mut node = plugin.node().await;
    let other = plugin.root().join("other-driver");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("data"), b"theirs").unwrap();
    let foreign = plugin.target("pod-x");
    std::fs::create_dir_all(&foreign).unwrap();
    rustix::mount::mount_bind(&other, &foreign).unwrap();
    let status = unpublish(&mut node, "csi-unknown", &foreign)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(is_mounted(&foreign), "another driver's mount is left");
    assert_eq!(std::fs::read(foreign.join("data")).unwrap(), b"theirs");

    let full = plugin.target("pod-y");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(full.join("file"), b"x").unwrap();
    let status = unpublish(&mut node, "csi-unknown", &full)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(full.join("file").exists());

    // Nothing there, or an empty folder: unpublished already (the spec's idempotent OK).
    unpublish(&mut node, "csi-unknown", &plugin.target("pod-z"))
        .await
        .unwrap();
    let empty = plugin.target("pod-e");
    std::fs::create_dir_all(&empty).unwrap();
    unpublish(&mut node, "csi-unknown", &empty).await.unwrap();
    assert!(!empty.exists());
}

/// Case 5: gRPC clients of kubelet's ecosystem name the socket's path as `:authority`:
/// PyPI's grpcio with its defaults, and a raw HTTP/2 request with the path as authority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_grpc_clients_that_send_the_socket_path_as_authority_are_answered() {
    let plugin = Plugin::start(&[]);
    let socket = plugin.socket();

    // grpcio (gRPC C-core), as csc and the sidecars' clients dial: unix://PATH, no options.
    let script = r#"
import sys, grpc
channel = grpc.insecure_channel("unix://" + sys.argv[1])
ident = lambda b: b
info = channel.unary_unary("/csi.v1.Identity/GetPluginInfo", request_serializer=ident, response_deserializer=ident)(b"", timeout=10)
assert b"csi.hoist.dev" in info, info
probe = channel.unary_unary("/csi.v1.Identity/Probe", request_serializer=ident, response_deserializer=ident)(b"", timeout=10)
caps = channel.unary_unary("/csi.v1.Node/NodeGetInfo", request_serializer=ident, response_deserializer=ident)(b"", timeout=10)
assert b"node-1" in caps, caps
print("grpcio ok")
"#;
    let has_grpcio = Command::new("python3")
        .args(["-c", "import grpc"])
        .status()
        .is_ok_and(|s| s.success());
    if has_grpcio || !cannot_run("python3 with grpcio is missing (scripts/setup installs it)") {
        let out = Command::new("python3")
            .args(["-c", script, socket.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "grpcio failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A raw request: the authority is the socket's path, as grpc-go's older releases send.
    let frames = raw_grpc_call(
        &socket,
        socket.to_str().unwrap(),
        "/csi.v1.Identity/GetPluginInfo",
    );
    assert!(
        !frames
            .iter()
            .any(|(kind, stream, _)| *kind == 0x3 && *stream == 1),
        "RST_STREAM on the request: {frames:?}"
    );
    let data: Vec<u8> = frames
        .iter()
        .filter(|(kind, stream, _)| *kind == 0x0 && *stream == 1)
        .flat_map(|(_, _, p)| p.clone())
        .collect();
    assert!(
        data.windows(13).any(|w| w == b"csi.hoist.dev"),
        "no answer: {frames:?}"
    );
}

/// One gRPC call by hand over HTTP/2 (literal HPACK headers, no Huffman), with `authority`
/// as `:authority`; the frames the server sent back until the stream ended: (type, stream,
/// payload).
fn raw_grpc_call(socket: &Path, authority: &str, path: &str) -> Vec<(u8, u32, Vec<u8>)> {
    use std::io::{Read, Write};
    fn head(len: usize, kind: u8, flags: u8, stream: u32, out: &mut Vec<u8>) {
        out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
    }
    let mut block = Vec::new();
    for (n, v) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        block.push(0x00);
        for s in [n, v] {
            assert!(s.len() < 127);
            block.push(s.len() as u8);
            block.extend_from_slice(s.as_bytes());
        }
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    head(0, 0x4, 0, 0, &mut out);
    head(block.len(), 0x1, 0x4, 1, &mut out);
    out.extend_from_slice(&block);
    head(5, 0x0, 0x1, 1, &mut out);
    out.extend_from_slice(&[0, 0, 0, 0, 0]);
    let mut conn = std::os::unix::net::UnixStream::connect(socket).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(&out).unwrap();
    let mut frames = Vec::new();
    let mut acked = false;
    loop {
        let mut h = [0u8; 9];
        if conn.read_exact(&mut h).is_err() {
            break;
        }
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let mut payload = vec![0u8; len];
        conn.read_exact(&mut payload).unwrap();
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]);
        let (kind, flags) = (h[3], h[4]);
        if kind == 0x4 && flags & 0x1 == 0 && !acked {
            let mut ack = Vec::new();
            head(0, 0x4, 0x1, 0, &mut ack);
            conn.write_all(&ack).unwrap();
            acked = true;
        }
        frames.push((kind, stream, payload));
        let ends = (kind == 0x1 && flags & 0x1 != 0 && stream == 1)
            || (kind == 0x3 && stream == 1)
            || kind == 0x7;
        if ends {
            break;
        }
    }
    frames
}

/// Case 6 through the plugin: the Pod author writes the reference, the admin the policy; an
/// unsigned model of an enforced registry is refused however its host is spelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_holds_for_every_spelling_a_pod_author_may_write() {
    if !can_mount() {
        return;
    }
    let reg = Registry::start();
    let h = Hoist::new();
    let work = tempfile::tempdir().unwrap();
    let (_, public) = key_pair(work.path());
    let src = tempfile::tempdir().unwrap();
    common::small_model(src.path());
    let port = reg.addr.rsplit_once(':').unwrap().1.to_string();
    h.run(&[
        "push",
        src.path().to_str().unwrap(),
        &format!("127.0.0.1:{port}/secure/m:v1"),
    ])
    .ok();
    let policy = common::enforce_then_off_policy(work.path(), &port, &public);
    let plugin = Plugin::start(&["--verify-policy", policy.to_str().unwrap()]);
    let mut node = plugin.node().await;
    for (i, host) in [
        "localhost",
        "LOCALHOST",
        "127.1",
        "127.000.000.001",
        "127.0.0.1",
    ]
    .iter()
    .enumerate()
    {
        let target = plugin.target(&format!("pod-{i}"));
        let reference = format!("{host}:0{port}/secure/m:v1");
        let req = publish_request(&format!("csi-{i}"), &target, &[("reference", &reference)]);
        let status = publish(&mut node, req, None).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{reference}: {status:?}"
        );
        assert!(!is_mounted(&target), "{reference}");
    }
    assert!(
        plugin.log().contains("follows the enforce rule"),
        "{}",
        plugin.log()
    );
}
