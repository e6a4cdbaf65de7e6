//! critest's stand-in images (critest-registry), pulled through podvisor's
//! ImageService with the `[registry]` section critest-registry prints: every
//! name critest pulls resolves on the mirror under the same repository path,
//! and what critest's image specs check of them holds (same id for
//! test-image-tags:1/2/3, distinct ids for test-image-1/2/3, the image
//! users, the predefined group, the setuid `id` of nonewprivs). Runs in a
//! network namespace of its own, so a pull the mirror cannot answer never
//! leaves the machine. Needs root and docker-registry.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::Command;

use podvisor::config::Config;
use podvisor::image::ImageService;
use podvisor_tests::critest_images::{mirrors_toml, publish, stand_ins};
use podvisor_tests::netns::isolated;
use podvisor_tests::prerequisite;
use podvisor_tests::registry::LocalRegistry;

const CRI_TOOLS: &str = "gcr.io/k8s-staging-cri-tools";

/// The file `path` in the top-most layer of `image` that has it.
fn file_in(service: &ImageService, image: &str, path: &str) -> PathBuf {
    // Top-most first.
    let layers = service.layers_for(image).unwrap();
    layers
        .iter()
        .map(|l| l.join(path))
        .find(|p| p.symlink_metadata().is_ok())
        .unwrap_or_else(|| panic!("{image} has no {path}"))
}

#[test]
fn critest_names_resolve_through_the_printed_mirrors() {
    let test = "critest_names_resolve_through_the_printed_mirrors";
    if !prerequisite(
        test,
        "docker-registry",
        LocalRegistry::available(),
        "apt-get install docker-registry",
    ) {
        return;
    }
    isolated(test, async {
        let registry = LocalRegistry::start();
        let published = publish(&registry).await;
        let config = Config::parse(&mirrors_toml(&format!("http://{}", registry.addr())))
            .expect("the printed [registry] section is a valid podvisor config");
        let dir = tempfile::tempdir().unwrap();
        let service = ImageService::open(dir.path().join("images"), config.registry).unwrap();

        // Every name resolves, to the id critest-registry announced.
        let mut ids = BTreeMap::new();
        for p in &published {
            let image = service
                .pull(&p.reference, None)
                .await
                .unwrap_or_else(|e| panic!("pulling {}: {e}", p.reference));
            assert_eq!(image.id, p.image_id, "{}", p.reference);
            ids.insert(p.reference.clone(), image.id);
        }
        for s in stand_ins() {
            for r in s.references() {
                assert!(ids.contains_key(&r), "{r} was not published");
            }
        }
        // Served under the same repository path as upstream.
        let log = registry.log();
        for path in [
            "/v2/k8s-staging-cri-tools/test-image-latest/manifests/latest",
            "/v2/e2e-test-images/busybox/manifests/1.29-2",
            "/v2/library/busybox/manifests/latest",
        ] {
            assert!(log.contains(path), "the registry served no {path}");
        }

        // "listImage should get exactly 3 repoTags in the result image".
        let tags: BTreeSet<_> = ["1", "2", "3"]
            .map(|t| ids[&format!("{CRI_TOOLS}/test-image-tags:{t}")].clone())
            .into();
        assert_eq!(tags.len(), 1, "test-image-tags:1/2/3 must be one image");
        // "listImage should get exactly 3 image in the result list", and the
        // images of the pull specs differ from one another.
        let distinct: BTreeSet<_> = [
            "test-image-1:latest",
            "test-image-2:latest",
            "test-image-3:latest",
            "test-image-latest:latest",
            "test-image-tag:test",
            "test-image-tag:all",
        ]
        .map(|n| ids[&format!("{CRI_TOOLS}/{n}")].clone())
        .into();
        assert_eq!(distinct.len(), 6, "the test images must be distinct");

        // "image status get image fields should not have Uid|Username empty".
        for (name, expected) in [
            ("test-image-user-uid", (Some(1002), "")),
            ("test-image-user-username", (None, "www-data")),
            ("test-image-user-uid-group", (Some(1003), "")),
            ("test-image-user-username-group", (None, "www-data")),
            ("test-image-predefined-group", (Some(1000), "")),
        ] {
            let image = service.get(&format!("{CRI_TOOLS}/{name}")).unwrap();
            let (uid, username) = image.uid_and_username();
            assert_eq!((uid, username.as_str()), expected, "{name}");
        }

        // SupplementalGroupsPolicy specs: uid 1000's groups come from the image.
        let group = fs::read_to_string(file_in(
            &service,
            &format!("{CRI_TOOLS}/test-image-predefined-group"),
            "etc/group",
        ))
        .unwrap();
        assert!(group.contains("\ngroup-defined-in-image:x:50000:default-user\n"));
        assert!(group.contains("\ndefault-user:x:1000:\n"));

        // MaskedPaths spec: /bin/ls masks only itself (a hard link, not a
        // symlink the mask would follow to busybox), and the shell is a
        // busybox that execs it (Debian's dynamic build), so `sh -c ls`
        // fails with busybox's own message.
        let base = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
        let ls = fs::symlink_metadata(file_in(&service, base, "bin/ls")).unwrap();
        assert!(ls.file_type().is_file() && ls.nlink() > 1, "{ls:?}");
        let sh = fs::symlink_metadata(file_in(&service, base, "bin/sh")).unwrap();
        assert_eq!(sh.ino(), ls.ino(), "sh and ls are the same busybox");
        assert_eq!(
            fs::read(file_in(&service, base, "bin/sh")).unwrap(),
            fs::read(podvisor_tests::critest_images::BUSYBOX).unwrap()
        );

        // NoNewPrivs specs: a setuid-root busybox and a config keeping the
        // setuid for `id`, which busybox ignores unless only root can write it.
        let nnp = "registry.k8s.io/e2e-test-images/nonewprivs:1.3";
        let busybox = fs::metadata(file_in(&service, nnp, "bin/busybox")).unwrap();
        assert_eq!((busybox.uid(), busybox.mode() & 0o7777), (0, 0o4755));
        let conf = file_in(&service, nnp, "etc/busybox.conf");
        let meta = fs::metadata(&conf).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o600));
        assert!(fs::read_to_string(conf).unwrap().contains("id = sxx 0.0"));

        // The web servers' start scripts are there and executable.
        for (image, script) in [
            (
                "registry.k8s.io/e2e-test-images/nginx:1.14-2",
                "usr/sbin/nginx",
            ),
            (
                "gcr.io/k8s-staging-cri-tools/hostnet-nginx-amd64",
                "usr/sbin/nginx",
            ),
            (
                "registry.k8s.io/e2e-test-images/httpd:2.4.39-4",
                "usr/local/apache2/bin/httpd-foreground",
            ),
        ] {
            let mode = fs::metadata(file_in(&service, image, script))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o111, 0o111, "{image}: {script} is not executable");
        }
        let hostnet = fs::read_to_string(file_in(
            &service,
            "gcr.io/k8s-staging-cri-tools/hostnet-nginx-amd64",
            "usr/sbin/nginx",
        ))
        .unwrap();
        assert!(
            hostnet.contains("-p 12003"),
            "hostnet-nginx listens on 12003"
        );

        // The pgrep stand-in finds a running sleep by name.
        let pgrep = file_in(
            &service,
            "registry.k8s.io/e2e-test-images/busybox:1.29-2",
            "bin/pgrep",
        );
        let mut sleep = Command::new("/bin/busybox")
            .args(["sleep", "60"])
            .spawn()
            .unwrap();
        let out = Command::new("/bin/busybox")
            .arg("sh")
            .arg(&pgrep)
            .arg("^busybox$")
            .output()
            .unwrap();
        let _ = sleep.kill();
        let _ = sleep.wait();
        assert!(out.status.success(), "pgrep found nothing");
        let pids = String::from_utf8_lossy(&out.stdout);
        assert!(
            pids.lines().any(|l| l == sleep.id().to_string()),
            "pgrep's {pids:?} lacks {}",
            sleep.id()
        );
    });
}
