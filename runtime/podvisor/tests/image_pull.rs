//! The image service against a real registry on 127.0.0.1 (Debian's
//! docker-registry): pulls by tag, digest and manifest list, reuse of what
//! the store has, verification, list/status/remove, fs info and errors.
//! Needs root (layers keep owners, whiteouts are device nodes).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Instant;

use base64::Engine;
use podvisor::image::{Credentials, ImageError, ImageService, RegistryConfig};
use podvisor_tests::prerequisite;
use podvisor_tests::registry::{
    busybox_image, LayerBuilder, LocalRegistry, TestImage, TEST_PASSWORD, TEST_USER,
};
use serde_json::json;
use tempfile::TempDir;

/// Root and docker-registry, or false (and a SKIPPED line; a failure in CI).
fn prerequisites(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    prerequisite(test, "root", root, "run the tests as root")
        && prerequisite(
            test,
            "docker-registry",
            LocalRegistry::available(),
            "apt-get install docker-registry",
        )
}

fn store_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("podvisor-images")
        .tempdir()
        .unwrap()
}

/// A running registry and an empty store, or None (and a SKIPPED line).
fn setup(test: &str) -> Option<(LocalRegistry, TempDir, ImageService)> {
    if !prerequisites(test) {
        return None;
    }
    let registry = LocalRegistry::start();
    let dir = store_dir();
    let service = ImageService::open(dir.path().join("images"), RegistryConfig::default()).unwrap();
    Some((registry, dir, service))
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Everything stored under `kind` (blobs, layers, images) as `alg/name`.
fn stored(service: &ImageService, kind: &str) -> Vec<String> {
    let base = service.root().join(kind);
    let mut out = Vec::new();
    for alg in entries(&base) {
        for e in entries(&base.join(&alg)) {
            out.push(format!("{alg}/{e}"));
        }
    }
    out
}

#[tokio::test]
async fn pull_by_tag_and_digest_and_reuse_the_store() {
    let Some((registry, _dir, service)) = setup("pull_by_tag_and_digest_and_reuse_the_store")
    else {
        return;
    };
    let image = busybox_image("1000:1000", "/tmp");
    let pushed = registry.push("library/busybox", "latest", &image).await;
    let addr = registry.addr();

    let t = Instant::now();
    let img = service
        .pull(&format!("{addr}/library/busybox"), None)
        .await
        .unwrap();
    let cold = t.elapsed();
    assert_eq!(img.id, pushed.config_digest);
    assert_eq!(img.repo_tags, [format!("{addr}/library/busybox:latest")]);
    assert_eq!(
        img.repo_digests,
        [format!("{addr}/library/busybox@{}", pushed.manifest_digest)]
    );
    assert_eq!(img.manifest_digest, pushed.manifest_digest);
    let config_len = serde_json::to_vec(&image.config).unwrap().len() as u64;
    assert_eq!(img.size, config_len + image.layers[0].data.len() as u64);
    assert_eq!(img.layers.len(), 1);
    assert_eq!(img.layers[0].diff_id, image.layers[0].diff_id);
    assert_eq!(img.config.cmd, ["sh"]);
    assert!(img
        .config
        .env
        .iter()
        .any(|e| e.starts_with("PATH=/usr/local/sbin")));
    assert_eq!(img.config.user, "1000:1000");
    assert_eq!(img.config.working_dir, "/tmp");
    assert_eq!(img.config.labels["org.podvisor.test"], "busybox");
    assert_eq!(img.uid_and_username(), (Some(1000), String::new()));
    assert_eq!(
        (img.os.as_str(), img.architecture.as_str()),
        ("linux", "amd64")
    );
    // Config and layer, each downloaded once.
    assert_eq!(registry.blob_gets(), 2, "{}", registry.log());

    // The unpacked layer is the busybox rootfs.
    let layers = service.layers_for(&img.id).unwrap();
    assert_eq!(layers.len(), 1);
    let busybox = layers[0].join("bin/busybox");
    let meta = fs::metadata(&busybox).unwrap();
    assert!(meta.permissions().mode() & 0o111 != 0);
    assert_eq!(meta.len(), fs::metadata("/bin/busybox").unwrap().len());
    assert_eq!(
        fs::read_link(layers[0].join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        fs::read_to_string(layers[0].join("etc/passwd")).unwrap(),
        fs::read_to_string(
            podvisor_tests::rootfs::busybox_rootfs(tempfile::tempdir().unwrap().path())
                .join("etc/passwd")
        )
        .unwrap()
    );
    let layer_ino = fs::metadata(&layers[0]).unwrap().ino();

    // Again, by tag in another spelling and by digest: nothing downloaded,
    // nothing unpacked again.
    let t = Instant::now();
    let again = service
        .pull(&format!("{addr}/library/busybox:latest"), None)
        .await
        .unwrap();
    let warm = t.elapsed();
    assert_eq!(again.id, img.id);
    let by_digest = service
        .pull(
            &format!("{addr}/library/busybox@{}", pushed.manifest_digest),
            None,
        )
        .await
        .unwrap();
    assert_eq!(by_digest.id, img.id);
    assert_eq!(by_digest.repo_tags, img.repo_tags, "the tag is kept");
    assert_eq!(registry.blob_gets(), 2, "{}", registry.log());
    assert_eq!(fs::metadata(&layers[0]).unwrap().ino(), layer_ino);
    eprintln!(
        "TIMING busybox pull from the local registry: cold {:?}, warm {:?}",
        cold, warm
    );

    // Found by id, bare hex, tag (any spelling) and digest; one image.
    let hex = img.id.strip_prefix("sha256:").unwrap();
    for r in [
        img.id.clone(),
        hex.to_string(),
        hex[..12].to_string(),
        format!("sha256:{}", &hex[..12]),
        format!("{addr}/library/busybox"),
        format!("{addr}/library/busybox:latest"),
        format!("{addr}/library/busybox@{}", pushed.manifest_digest),
    ] {
        let found = service.status(&r).unwrap();
        assert_eq!(found.map(|i| i.id), Some(img.id.clone()), "{r}");
    }
    assert!(service
        .status(&format!("{addr}/library/busybox:other"))
        .unwrap()
        .is_none());
    assert!(service.status("busybox").unwrap().is_none());
    assert_eq!(service.list().len(), 1);
    assert_eq!(stored(&service, "images"), [format!("sha256/{hex}.json")]);

    // A new service on the same root finds the record again.
    drop(service);
    let reopened =
        ImageService::open(_dir.path().join("images"), RegistryConfig::default()).unwrap();
    assert_eq!(reopened.list(), [by_digest]);
    assert_eq!(reopened.layers_for(&img.id).unwrap(), layers);
}

#[tokio::test]
async fn manifest_lists_resolve_to_linux_amd64() {
    let Some((registry, _dir, service)) = setup("manifest_lists_resolve_to_linux_amd64") else {
        return;
    };
    let addr = registry.addr().to_string();
    let amd64 = registry
        .push("multi", "amd64", &busybox_image("", "/"))
        .await;
    let mut arm = LayerBuilder::new();
    arm.file("platform", b"arm64\n", 0o644, 0, 0);
    let arm_image = TestImage::new(vec![arm.gzip()], "arm64", json!({"Cmd": ["sh"]}));
    let arm64 = registry.push("multi", "arm64", &arm_image).await;
    // arm64 listed first: picking the first entry would be wrong.
    let index = registry
        .push_index(
            "multi",
            "latest",
            &[(&arm64, "linux", "arm64"), (&amd64, "linux", "amd64")],
        )
        .await;

    let img = service.pull(&format!("{addr}/multi"), None).await.unwrap();
    assert_eq!(img.id, amd64.config_digest);
    assert_eq!(img.manifest_digest, amd64.manifest_digest);
    assert_eq!(img.repo_digests, [format!("{addr}/multi@{index}")]);
    assert_eq!(img.repo_tags, [format!("{addr}/multi:latest")]);
    assert_eq!(registry.blob_gets_of(&arm64.layer_digests[0]), 0);
    // Both the list and the platform manifest are kept, and find the image.
    for d in [&index, &amd64.manifest_digest] {
        assert!(stored(&service, "blobs").contains(&format!("sha256/{}", &d[7..])));
        let found = service.status(&format!("{addr}/multi@{d}")).unwrap();
        assert_eq!(found.map(|i| i.id), Some(img.id.clone()));
    }

    // No amd64 entry: NotFound naming the platforms there are.
    registry
        .push_index("multi", "armonly", &[(&arm64, "linux", "arm64")])
        .await;
    let err = service
        .pull(&format!("{addr}/multi:armonly"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NotInRegistry { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("pulling {addr}/multi:armonly: no linux/amd64 image in the manifest list (it has: linux/arm64)")
    );
    // A single-platform image for another machine is refused too.
    let err = service
        .pull(&format!("{addr}/multi:arm64"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NotInRegistry { .. }), "{err:?}");
    assert!(
        err.to_string().contains("linux/arm64, not linux/amd64"),
        "{err}"
    );
    assert_eq!(service.list().len(), 1);
}

#[tokio::test]
async fn remove_refuses_images_in_use_and_collects_the_rest() {
    let Some((registry, _dir, service)) =
        setup("remove_refuses_images_in_use_and_collects_the_rest")
    else {
        return;
    };
    let addr = registry.addr().to_string();
    let busybox = busybox_image("", "/");
    registry.push("a", "1", &busybox).await;
    // b: busybox's layer plus one of its own.
    let mut extra = LayerBuilder::new();
    extra.file("etc/motd", b"b\n", 0o644, 0, 0);
    let b = TestImage::new(
        vec![busybox.layers[0].clone(), extra.gzip()],
        "amd64",
        json!({"Cmd": ["cat", "/etc/motd"]}),
    );
    registry.push("b", "1", &b).await;
    let a = service.pull(&format!("{addr}/a:1"), None).await.unwrap();
    let b = service.pull(&format!("{addr}/b:1"), None).await.unwrap();
    assert_eq!(service.list().len(), 2);
    assert_eq!(stored(&service, "layers").len(), 2);
    assert_eq!(service.layers_for(&b.id).unwrap().len(), 2);

    let info = service.fs_info().await.unwrap();
    let layer_bytes = fs::metadata(service.layers_for(&a.id).unwrap()[0].join("bin/busybox"))
        .unwrap()
        .len();
    assert!(info.used_bytes > layer_bytes, "{info:?}");
    // busybox alone has hundreds of applet links.
    assert!(info.inodes_used > 300, "{info:?}");
    assert!(service.root().starts_with(&info.mountpoint), "{info:?}");
    assert!(info.mountpoint.is_dir());
    assert!(info.timestamp_nanos > 0);

    let reference = format!("{addr}/a:1");
    let err = service
        .remove(&reference, |id| (id == a.id).then(|| "c1".to_string()))
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::InUse { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("image {reference} is used by container c1")
    );
    assert!(service.status(&reference).unwrap().is_some());

    assert!(service.remove(&reference, |_| None).await.unwrap());
    assert!(service.status(&reference).unwrap().is_none());
    assert!(service.status(&a.id).unwrap().is_none());
    // The shared layer stays for b; a's config and manifest are gone.
    assert_eq!(stored(&service, "layers").len(), 2);
    let blobs = stored(&service, "blobs");
    assert!(
        !blobs.contains(&format!("sha256/{}", &a.id[7..])),
        "{blobs:?}"
    );
    assert!(!blobs.contains(&format!("sha256/{}", &a.manifest_digest[7..])));
    assert!(service.layers_for(&b.id).is_ok());
    // Idempotent.
    assert!(!service.remove(&reference, |_| None).await.unwrap());

    // b by id: nothing is left.
    assert!(service.remove(&b.id, |_| None).await.unwrap());
    assert_eq!(stored(&service, "layers"), Vec::<String>::new());
    assert_eq!(stored(&service, "blobs"), Vec::<String>::new());
    assert_eq!(stored(&service, "images"), Vec::<String>::new());
    assert_eq!(entries(&service.root().join("tmp")), Vec::<String>::new());
    assert!(service.list().is_empty());
}

#[tokio::test]
async fn a_blob_that_does_not_match_its_digest_is_refused_and_leaves_nothing() {
    let Some((registry, _dir, service)) =
        setup("a_blob_that_does_not_match_its_digest_is_refused_and_leaves_nothing")
    else {
        return;
    };
    let addr = registry.addr().to_string();
    let image = busybox_image("", "/");
    let pushed = registry.push("busybox", "latest", &image).await;
    // Same size, different bytes: the registry serves it as if it were fine.
    let data = registry.blob_data_path(&pushed.layer_digests[0]);
    let good = fs::read(&data).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    fs::write(&data, &bad).unwrap();

    let err = service
        .pull(&format!("{addr}/busybox"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Registry { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("pulling {addr}/busybox:latest: ")),
        "{msg}"
    );
    assert!(msg.to_lowercase().contains("digest"), "{msg}");
    eprintln!("corrupted layer: {msg}");
    for kind in ["blobs", "layers", "images"] {
        assert_eq!(stored(&service, kind), Vec::<String>::new(), "{kind}");
    }
    assert_eq!(entries(&service.root().join("tmp")), Vec::<String>::new());
    assert!(service.list().is_empty());

    // Repaired, the same store pulls it.
    fs::write(&data, &good).unwrap();
    let img = service
        .pull(&format!("{addr}/busybox"), None)
        .await
        .unwrap();
    assert_eq!(img.id, pushed.config_digest);
}

#[tokio::test]
async fn concurrent_pulls_download_each_blob_once() {
    let Some((registry, _dir, service)) = setup("concurrent_pulls_download_each_blob_once") else {
        return;
    };
    let addr = registry.addr().to_string();
    let pushed = registry
        .push("busybox", "latest", &busybox_image("", "/"))
        .await;
    let r = format!("{addr}/busybox");
    let by_digest = format!("{addr}/busybox@{}", pushed.manifest_digest);
    let (a, b, c) = tokio::join!(
        service.pull(&r, None),
        service.pull(&r, None),
        service.pull(&by_digest, None)
    );
    assert_eq!(a.unwrap().id, pushed.config_digest);
    assert_eq!(b.unwrap().id, pushed.config_digest);
    let c = c.unwrap();
    assert_eq!(c.id, pushed.config_digest);
    assert_eq!(registry.blob_gets_of(&pushed.layer_digests[0]), 1);
    assert_eq!(registry.blob_gets_of(&pushed.config_digest), 1);
    let img = service.status(&r).unwrap().unwrap();
    assert_eq!(img.repo_tags, [format!("{addr}/busybox:latest")]);
    assert_eq!(stored(&service, "layers").len(), 1);
    assert_eq!(entries(&service.root().join("tmp")), Vec::<String>::new());
}

#[tokio::test]
async fn errors_say_what_is_wrong() {
    let Some((registry, _dir, service)) = setup("errors_say_what_is_wrong") else {
        return;
    };
    let addr = registry.addr().to_string();
    registry
        .push("busybox", "latest", &busybox_image("", "/"))
        .await;

    for bad in ["Busybox", "busybox:", "a b", "busybox@sha256:abc", ""] {
        let err = service.pull(bad, None).await.unwrap_err();
        assert!(
            matches!(err, ImageError::InvalidReference { .. }),
            "{bad}: {err:?}"
        );
    }
    let err = service.pull("Busybox", None).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid image reference \"Busybox\": repository name must be lowercase"
    );

    let err = service
        .pull(&format!("{addr}/busybox:nope"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NotInRegistry { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("pulling {addr}/busybox:nope: manifest unknown")
    );
    let err = service
        .pull(&format!("{addr}/nope"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NotInRegistry { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("pulling {addr}/nope:latest: manifest unknown")
    );

    // Nobody listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = service
        .pull(&format!("127.0.0.1:{port}/busybox"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Unreachable { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains(&format!("cannot reach 127.0.0.1:{port}")),
        "{err}"
    );

    // Unknown locally.
    assert!(service.status("busybox").unwrap().is_none());
    let err = service.get("busybox").unwrap_err();
    assert!(matches!(err, ImageError::NotFound(_)), "{err:?}");
    assert_eq!(err.to_string(), "image busybox not found");
    assert!(matches!(
        service.layers_for("busybox").unwrap_err(),
        ImageError::NotFound(_)
    ));
    assert!(matches!(
        service.status("Bad Ref").unwrap_err(),
        ImageError::InvalidReference { .. }
    ));
    assert!(!service.remove("busybox", |_| None).await.unwrap());
    assert!(service.list().is_empty());
}

#[tokio::test]
async fn credentials_reach_registries_that_want_them() {
    if !prerequisites("credentials_reach_registries_that_want_them") {
        return;
    }
    let registry = LocalRegistry::start_with_basic_auth();
    let dir = store_dir();
    let service = ImageService::open(dir.path().join("images"), RegistryConfig::default()).unwrap();
    let addr = registry.addr().to_string();
    let pushed = registry
        .push("busybox", "latest", &busybox_image("", "/"))
        .await;
    let r = format!("{addr}/busybox");

    let err = service.pull(&r, None).await.unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("pulling {addr}/busybox:latest: unauthorized: {addr} refused access")
    );
    let wrong = Credentials {
        username: TEST_USER.into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let err = service.pull(&r, Some(&wrong)).await.unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err:?}");
    // Credentials for another registry are not sent here.
    let elsewhere = Credentials {
        username: TEST_USER.into(),
        password: TEST_PASSWORD.into(),
        server_address: "https://index.docker.io/v1/".into(),
        ..Default::default()
    };
    let err = service.pull(&r, Some(&elsewhere)).await.unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err:?}");
    // A registry without a token service cannot take an identity token.
    let identity = Credentials {
        identity_token: "refresh-me".into(),
        ..Default::default()
    };
    let err = service.pull(&r, Some(&identity)).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("does not offer token authentication"),
        "{err}"
    );
    assert!(service.list().is_empty());

    let plain = Credentials {
        username: TEST_USER.into(),
        password: TEST_PASSWORD.into(),
        ..Default::default()
    };
    assert_eq!(
        service.pull(&r, Some(&plain)).await.unwrap().id,
        pushed.config_digest
    );
    // CRI's `auth` field: base64 of user:password, for this registry.
    let encoded = Credentials {
        auth: base64::engine::general_purpose::STANDARD
            .encode(format!("{TEST_USER}:{TEST_PASSWORD}")),
        server_address: format!("http://{addr}"),
        ..Default::default()
    };
    let fresh = ImageService::open(dir.path().join("other"), RegistryConfig::default()).unwrap();
    assert_eq!(
        fresh.pull(&r, Some(&encoded)).await.unwrap().id,
        pushed.config_digest
    );
}

#[tokio::test]
async fn mirrors_are_tried_before_the_registry() {
    if !prerequisites("mirrors_are_tried_before_the_registry") {
        return;
    }
    let (origin, mirror) = (LocalRegistry::start(), LocalRegistry::start());
    let dir = store_dir();
    let image = busybox_image("", "/");
    let on_mirror = mirror.push("busybox", "latest", &image).await;
    origin.push("busybox", "latest", &image).await;
    let mut only = LayerBuilder::new();
    only.file("origin-only", b"x", 0o644, 0, 0);
    let only = origin
        .push(
            "only",
            "1",
            &TestImage::new(vec![only.gzip()], "amd64", json!({"Cmd": ["sh"]})),
        )
        .await;
    let (o, m) = (origin.addr().to_string(), mirror.addr().to_string());
    let config = RegistryConfig {
        mirrors: [(o.clone(), vec![format!("http://{m}")])].into(),
        ..Default::default()
    };
    let service = ImageService::open(dir.path().join("mirrored"), config).unwrap();

    let img = service.pull(&format!("{o}/busybox"), None).await.unwrap();
    assert_eq!(img.id, on_mirror.config_digest);
    // Named after the registry, fetched from the mirror.
    assert_eq!(img.repo_tags, [format!("{o}/busybox:latest")]);
    assert_eq!(mirror.blob_gets(), 2);
    assert_eq!(origin.blob_gets(), 0);

    // The mirror lacks it: the registry itself serves it.
    let img = service.pull(&format!("{o}/only:1"), None).await.unwrap();
    assert_eq!(img.id, only.config_digest);
    assert_eq!(origin.blob_gets(), 2);
    assert_eq!(mirror.blob_gets(), 2);

    // A mirror that is down is skipped too.
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = RegistryConfig {
        mirrors: [(o.clone(), vec![format!("http://{down}")])].into(),
        ..Default::default()
    };
    let service = ImageService::open(dir.path().join("down"), config).unwrap();
    assert!(service.pull(&format!("{o}/busybox"), None).await.is_ok());

    let bad = RegistryConfig {
        mirrors: [(o, vec!["ftp://x".to_string()])].into(),
        ..Default::default()
    };
    let err = ImageService::open(dir.path().join("bad"), bad)
        .err()
        .unwrap();
    assert!(matches!(err, ImageError::Config(_)), "{err:?}");
}

#[tokio::test]
async fn a_tag_moves_to_the_image_it_names_now() {
    let Some((registry, _dir, service)) = setup("a_tag_moves_to_the_image_it_names_now") else {
        return;
    };
    let addr = registry.addr().to_string();
    let mut v1 = LayerBuilder::new();
    v1.file("version", b"1\n", 0o644, 0, 0);
    let v1 = registry
        .push(
            "app",
            "stable",
            &TestImage::new(vec![v1.gzip()], "amd64", json!({})),
        )
        .await;
    let old = service
        .pull(&format!("{addr}/app:stable"), None)
        .await
        .unwrap();
    assert_eq!(old.id, v1.config_digest);

    let mut v2 = LayerBuilder::new();
    v2.file("version", b"2\n", 0o644, 0, 0);
    let v2 = registry
        .push(
            "app",
            "stable",
            &TestImage::new(vec![v2.gzip()], "amd64", json!({})),
        )
        .await;
    let new = service
        .pull(&format!("{addr}/app:stable"), None)
        .await
        .unwrap();
    assert_eq!(new.id, v2.config_digest);
    assert_eq!(new.repo_tags, [format!("{addr}/app:stable")]);

    // The old image lost the tag but is still there, by id and digest.
    let old = service.status(&old.id).unwrap().unwrap();
    assert!(old.repo_tags.is_empty());
    assert_eq!(
        old.repo_digests,
        [format!("{addr}/app@{}", v1.manifest_digest)]
    );
    assert_eq!(
        service
            .status(&format!("{addr}/app:stable"))
            .unwrap()
            .unwrap()
            .id,
        new.id
    );
    assert_eq!(service.list().len(), 2);
    // Until it is removed, its layer stays.
    let layers = service.layers_for(&old.id).unwrap();
    assert_eq!(
        fs::read_to_string(layers[0].join("version")).unwrap(),
        "1\n"
    );
    assert!(service.remove(&old.id, |_| None).await.unwrap());
    assert!(!layers[0].exists());
    assert_eq!(service.list().len(), 1);
}
