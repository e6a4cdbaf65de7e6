//! Stand-ins for the images critest (the CRI validation suite of
//! kubernetes-sigs/cri-tools, v1.29 and v1.31) pulls, so that it can run
//! here without reaching gcr.io or registry.k8s.io: every stand-in is served
//! by a local registry under the repository path of the name critest uses,
//! and the runtime reaches it through `registry.mirrors`.
//!
//! Every image is built from Debian's busybox, small shell scripts of our own and image configs. Where a
//! stand-in differs from the upstream image:
//!
//! - The busybox base is Debian's dynamically linked busybox 1.35 (with
//!   the libraries `ldd` names) and every applet hard-linked in `/bin`, as
//!   upstream links them, not the upstream busybox 1.29/1.36 image. Not
//!   busybox-static: its shell runs applets without exec'ing them, where
//!   upstream's looks commands up in `PATH` (the MaskedPaths spec masks
//!   `/bin/ls` and expects `sh -c ls` to fail with busybox's message).
//!   `scripts/install-deps.sh` unpacks that binary to [`BUSYBOX`] (the
//!   package conflicts with busybox-static, which the rest of the project
//!   uses). Debian's build has
//!   no `pgrep` and no `ipcs`, which critest runs; both are shell scripts
//!   here (`pgrep PATTERN` over `/proc/*/comm`, `ipcs [-m|-q|-s|-a]` printing
//!   `/proc/sysvipc`). `/etc/passwd` and `/etc/group` hold the entries the
//!   specs use (root, nobody 65534, www-data 33, users 100).
//! - nginx (`e2e-test-images/nginx:1.14-2`, `hostnet-nginx-amd64`) is
//!   busybox httpd serving a small index page on port 80 (12003 for
//!   hostnet-nginx). What the specs check of nginx is kept: the pid in
//!   `/var/run/nginx.pid`, a process whose name is `nginx` (for `pidof`),
//!   "master process" in its command line (for the PID-namespace specs),
//!   and HTTP 200 on `/`. No nginx configuration, modules or worker
//!   processes.
//! - httpd (`e2e-test-images/httpd:2.4.39-4`) is busybox httpd on port 80
//!   started by `httpd-foreground`, which first prints Apache's
//!   `Command line: 'httpd -D FOREGROUND'` line to stderr (the multi-container
//!   log spec looks for it). No Apache.
//! - nonewprivs (`e2e-test-images/nonewprivs:1.3`) prints
//!   `Effective uid: N` as upstream does, but through a setuid-root busybox
//!   whose `/etc/busybox.conf` keeps the setuid for `id` only, instead of a
//!   setuid program of its own.
//! - The `test-image-*` images are the busybox base plus an empty file named
//!   after the image (or tag), as upstream builds them; the user images set
//!   the same `USER` as upstream (`1002`, `www-data`, `1003:1004`,
//!   `www-data:1004`); test-image-predefined-group has `default-user` (1000)
//!   in `group-defined-in-image` (50000) and `USER 1000`.
//! - Upstream publishes most of these for six platforms; the stand-ins
//!   are linux/amd64 only, behind a one-entry manifest list where upstream
//!   has a list.
//! - `test-image-digest@sha256:9700f9a2…` cannot be served: its digest is
//!   fixed upstream, and no image built here can have it (see
//!   [`UNREPRODUCIBLE`]). The spec that pulls it fails.

use serde_json::{json, Value};

use crate::registry::{sha256, LayerBlob, LayerBuilder, LocalRegistry, TestImage};

/// The registry hosts critest's images come from.
pub const GCR: &str = "gcr.io";
pub const K8S: &str = "registry.k8s.io";
/// Not used by critest; `docker.io/library/busybox` is served for pulls
/// by hand (`crictl pull busybox`).
pub const DOCKER_HUB: &str = "docker.io";
pub const REGISTRIES: [&str; 3] = [GCR, K8S, DOCKER_HUB];

/// The repository prefix of critest's own test images on gcr.io.
const CRI_TOOLS: &str = "k8s-staging-cri-tools";
/// The repository prefix of Kubernetes' e2e images on registry.k8s.io.
const E2E: &str = "e2e-test-images";

/// Image names critest pulls that no stand-in can answer to.
pub const UNREPRODUCIBLE: &[&str] = &[
    "gcr.io/k8s-staging-cri-tools/test-image-digest@sha256:9700f9a2f5bf2c45f2f605a0bd3bce7cf37420ec9d3ed50ac2758413308766bf",
];

const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Debian's dynamically linked busybox, unpacked by scripts/install-deps.sh.
pub const BUSYBOX: &str = "/var/cache/podvisor/busybox/busybox";
/// busybox-static, for the setuid stand-in (its build honours
/// /etc/busybox.conf).
const BUSYBOX_STATIC: &str = "/bin/busybox";

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
daemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
bin:x:2:2:bin:/bin:/bin/false\n\
sys:x:3:3:sys:/dev:/bin/false\n\
www-data:x:33:33:www-data:/var/www:/bin/false\n\
nobody:x:65534:65534:nobody:/home:/bin/false\n";

const GROUP: &str = "root:x:0:\n\
daemon:x:1:\n\
bin:x:2:\n\
sys:x:3:\n\
www-data:x:33:\n\
users:x:100:\n\
nogroup:x:65534:\n";

/// `pgrep PATTERN`: what critest's `pgrep sleep` needs of procps' pgrep.
const PGREP: &str = r#"#!/bin/ash
# pgrep PATTERN: the pids of processes whose name matches PATTERN (an
# extended regular expression); exit 1 when none does. Stand-in for the
# applet Debian's busybox lacks.
if [ $# -ne 1 ]; then
    echo "usage: pgrep PATTERN" >&2
    exit 2
fi
status=1
for dir in /proc/[0-9]*; do
    read -r name < "$dir/comm" 2>/dev/null || continue
    if echo "$name" | grep -Eq -- "$1"; then
        echo "${dir#/proc/}"
        status=0
    fi
done
exit $status
"#;

/// `ipcs -m`: the System V objects of the caller's IPC namespace.
const IPCS: &str = r#"#!/bin/ash
# ipcs [-m|-q|-s|-a]: the System V IPC objects of this IPC namespace, as the
# kernel lists them in /proc/sysvipc. Stand-in for the applet Debian's
# busybox lacks.
show() {
    echo "------ $1 --------"
    cat "/proc/sysvipc/$2"
    echo
}
case "${1:--a}" in
    -m) show "Shared Memory Segments" shm ;;
    -q) show "Message Queues" msg ;;
    -s) show "Semaphore Arrays" sem ;;
    -a)
        show "Message Queues" msg
        show "Shared Memory Segments" shm
        show "Semaphore Arrays" sem
        ;;
    *)
        echo "usage: ipcs [-m|-q|-s|-a]" >&2
        exit 2
        ;;
esac
"#;

/// One stand-in: pushed as `repository:tag` for every tag.
pub struct StandIn {
    /// The registry host of the names critest uses.
    pub registry: &'static str,
    /// The repository path, the same on the mirror as upstream.
    pub repository: String,
    pub tags: Vec<&'static str>,
    pub image: TestImage,
    /// Pushed behind a manifest list (one linux/amd64 entry), as upstream
    /// publishes it.
    pub index: bool,
}

impl StandIn {
    /// The image names this stand-in answers to, as critest spells them.
    pub fn references(&self) -> Vec<String> {
        self.tags
            .iter()
            .map(|t| format!("{}/{}:{t}", self.registry, self.repository))
            .collect()
    }

    /// The image id a runtime reports for it: the config's digest.
    pub fn image_id(&self) -> String {
        sha256(&serde_json::to_vec(&self.image.config).unwrap())
    }
}

/// Every stand-in critest v1.29.0 and v1.31.1 pull (both use the same names).
pub fn stand_ins() -> Vec<StandIn> {
    let base = busybox_layer();
    let image = |extra: Vec<LayerBlob>, config: Value| {
        let mut layers = vec![base.clone()];
        layers.extend(extra);
        TestImage::new(layers, "amd64", config)
    };
    let shell = |user: &str| {
        json!({
            "Env": [PATH],
            "Cmd": ["sh"],
            "User": user,
        })
    };
    let stand_in = |registry, repository: String, tags: Vec<&'static str>, image, index| StandIn {
        registry,
        repository,
        tags,
        image,
        index,
    };
    let cri_tools = |name: &str| format!("{CRI_TOOLS}/{name}");
    let mut out = vec![
        // The default container image of almost every spec.
        stand_in(
            K8S,
            format!("{E2E}/busybox"),
            vec!["1.29-2"],
            image(vec![], shell("")),
            true,
        ),
        stand_in(
            K8S,
            format!("{E2E}/nginx"),
            vec!["1.14-2"],
            image(vec![nginx_layer(80)], nginx_config(80)),
            true,
        ),
        // Named per architecture by critest itself ("hostnet-nginx-" + GOARCH).
        stand_in(
            GCR,
            cri_tools("hostnet-nginx-amd64"),
            vec!["latest"],
            image(vec![nginx_layer(12003)], nginx_config(12003)),
            false,
        ),
        stand_in(
            K8S,
            format!("{E2E}/httpd"),
            vec!["2.4.39-4"],
            image(
                vec![httpd_layer()],
                json!({
                    "Env": ["PATH=/usr/local/apache2/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                    "Cmd": ["httpd-foreground"],
                    "WorkingDir": "/usr/local/apache2",
                    "ExposedPorts": {"80/tcp": {}},
                }),
            ),
            true,
        ),
        stand_in(
            K8S,
            format!("{E2E}/nonewprivs"),
            vec!["1.3"],
            image(
                vec![setuid_id_layer()],
                json!({
                    "Env": [PATH],
                    // A path, not the applet name: the shell would run the
                    // applet in its own process, which has dropped the setuid.
                    "Cmd": ["sh", "-c", "echo \"Effective uid: $(/bin/id -u)\""],
                }),
            ),
            true,
        ),
        // The three tags name one image (one id).
        stand_in(
            GCR,
            cri_tools("test-image-tags"),
            vec!["1", "2", "3"],
            image(vec![marker_layer("same-image")], shell("")),
            true,
        ),
        stand_in(
            GCR,
            cri_tools("test-image-user-uid"),
            vec!["latest"],
            image(vec![], shell("1002")),
            true,
        ),
        stand_in(
            GCR,
            cri_tools("test-image-user-username"),
            vec!["latest"],
            image(vec![], shell("www-data")),
            true,
        ),
        stand_in(
            GCR,
            cri_tools("test-image-user-uid-group"),
            vec!["latest"],
            image(vec![], shell("1003:1004")),
            true,
        ),
        stand_in(
            GCR,
            cri_tools("test-image-user-username-group"),
            vec!["latest"],
            image(vec![], shell("www-data:1004")),
            true,
        ),
        stand_in(
            GCR,
            cri_tools("test-image-predefined-group"),
            vec!["latest"],
            image(vec![predefined_group_layer()], shell("1000")),
            true,
        ),
        stand_in(
            DOCKER_HUB,
            "library/busybox".into(),
            vec!["latest"],
            image(vec![], shell("")),
            true,
        ),
    ];
    // Distinct images: each has a file of its own name.
    for name in [
        "test-image-1",
        "test-image-2",
        "test-image-3",
        "test-image-latest",
    ] {
        out.push(stand_in(
            GCR,
            cri_tools(name),
            vec!["latest"],
            image(vec![marker_layer(name)], shell("")),
            true,
        ));
    }
    // test-image-tag:test and :all are two images, as upstream.
    for tag in ["test", "all"] {
        out.push(stand_in(
            GCR,
            cri_tools("test-image-tag"),
            vec![tag],
            image(vec![marker_layer(tag)], shell("")),
            true,
        ));
    }
    out
}

/// What [`publish`] pushed: every name and the image id behind it.
pub struct Published {
    pub reference: String,
    pub image_id: String,
    /// The digest the tag resolves to (the manifest list's, if any).
    pub digest: String,
}

/// Pushes every stand-in to `registry` under its repository path.
pub async fn publish(registry: &LocalRegistry) -> Vec<Published> {
    let mut out = Vec::new();
    for s in stand_ins() {
        let image_id = s.image_id();
        for (tag, reference) in s.tags.iter().zip(s.references()) {
            let digest = if s.index {
                // The single-platform manifest goes under a tag of its own,
                // so that the registry keeps it; the list goes under `tag`.
                let platform_tag = format!("{tag}-linux-amd64");
                let pushed = registry.push(&s.repository, &platform_tag, &s.image).await;
                registry
                    .push_index(&s.repository, tag, &[(&pushed, "linux", "amd64")])
                    .await
            } else {
                registry
                    .push(&s.repository, tag, &s.image)
                    .await
                    .manifest_digest
            };
            out.push(Published {
                reference,
                image_id: image_id.clone(),
                digest,
            });
        }
    }
    out
}

/// The `[registry]` section that sends the runtime's pulls of critest's
/// registries to `mirror_url` (`http://127.0.0.1:PORT`).
pub fn mirrors_toml(mirror_url: &str) -> String {
    let entries: Vec<String> = REGISTRIES
        .iter()
        .map(|r| format!("{r:?} = [{mirror_url:?}]"))
        .collect();
    format!("[registry]\nmirrors = {{ {} }}\n", entries.join(", "))
}

/// The base layer: busybox with a link per applet in /bin, the pgrep and
/// ipcs scripts, passwd and group, and the directories images expect.
fn busybox_layer() -> LayerBlob {
    let busybox = std::fs::read(BUSYBOX).unwrap_or_else(|e| {
        panic!("reading {BUSYBOX} ({e}): scripts/install-deps.sh unpacks Debian's busybox there")
    });
    let list = std::process::Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .expect("busybox --list");
    let mut layer = LayerBuilder::new();
    for dir in [
        "bin", "dev", "etc", "home", "proc", "run", "sys", "usr", "usr/bin", "usr/sbin", "var",
        "var/run", "var/www",
    ] {
        layer.dir(dir, 0o755, 0, 0);
    }
    layer.dir("root", 0o700, 0, 0);
    layer.dir("tmp", 0o1777, 0, 0);
    layer.file("bin/busybox", &busybox, 0o755, 0, 0);
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            layer.hardlink(&format!("bin/{applet}"), "bin/busybox");
        }
    }
    add_libraries_of(&mut layer, BUSYBOX);
    layer.file("bin/pgrep", PGREP.as_bytes(), 0o755, 0, 0);
    layer.file("bin/ipcs", IPCS.as_bytes(), 0o755, 0, 0);
    layer.file("etc/passwd", PASSWD.as_bytes(), 0o644, 0, 0);
    layer.file("etc/group", GROUP.as_bytes(), 0o644, 0, 0);
    layer.gzip()
}

/// The loader and libraries `binary` links, at the paths `ldd` names
/// (where the loader looks for them).
fn add_libraries_of(layer: &mut LayerBuilder, binary: &str) {
    let ldd = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .expect("ldd");
    let mut dirs = std::collections::BTreeSet::new();
    let mut libs = Vec::new();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        let Some(path) = path.filter(|p| p.starts_with('/')) else {
            continue;
        };
        let relative = path.trim_start_matches('/').to_string();
        let mut dir = std::path::Path::new(&relative).parent();
        while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_string_lossy().into_owned());
            dir = d.parent();
        }
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        libs.push((relative, data));
    }
    assert!(!libs.is_empty(), "ldd named no libraries for {binary}");
    for dir in dirs {
        if dir != "usr" && dir != "usr/bin" {
            layer.dir(&dir, 0o755, 0, 0);
        }
    }
    for (path, data) in libs {
        layer.file(&path, &data, 0o755, 0, 0);
    }
}

/// An empty file named `name` at the root: what makes test images differ.
fn marker_layer(name: &str) -> LayerBlob {
    let mut layer = LayerBuilder::new();
    layer.file(name, b"", 0o644, 0, 0);
    layer.gzip()
}

/// nginx's stand-in listening on `port`. `/usr/lib/nginx/nginx` links to
/// busybox, so the server's process name is `nginx`; argv[0] starts with
/// "busybox" (busybox then runs the applet in argv[1]) and says "master
/// process", as nginx's master does.
fn nginx_layer(port: u16) -> LayerBlob {
    let script = format!(
        r#"#!/bin/ash
# Stand-in for nginx: busybox httpd serving /usr/share/nginx/html on port {port}.
# The arguments nginx would take ("-g 'daemon off;'") are ignored.
echo $$ > /var/run/nginx.pid
exec -a "busybox nginx: master process nginx -g daemon off;" /usr/lib/nginx/nginx \
    httpd -f -p {port} -h /usr/share/nginx/html
"#
    );
    let mut layer = LayerBuilder::new();
    for dir in [
        "usr/lib",
        "usr/lib/nginx",
        "usr/share",
        "usr/share/nginx",
        "usr/share/nginx/html",
    ] {
        layer.dir(dir, 0o755, 0, 0);
    }
    layer.symlink("usr/lib/nginx/nginx", "/bin/busybox");
    layer.file("usr/sbin/nginx", script.as_bytes(), 0o755, 0, 0);
    layer.file(
        "usr/share/nginx/html/index.html",
        b"<!DOCTYPE html>\n<html><body><p>podvisor nginx stand-in</p></body></html>\n",
        0o644,
        0,
        0,
    );
    layer.gzip()
}

fn nginx_config(port: u16) -> Value {
    json!({
        "Env": [PATH],
        "Cmd": ["nginx", "-g", "daemon off;"],
        "ExposedPorts": {format!("{port}/tcp"): {}},
    })
}

/// Apache httpd's stand-in: busybox httpd on port 80, after the line
/// Apache logs at start.
fn httpd_layer() -> LayerBlob {
    let script = r#"#!/bin/ash
# Stand-in for Apache's httpd-foreground: busybox httpd on port 80. The line
# below is the one Apache logs when it starts in the foreground.
echo "[mpm_event:notice] AH00094: Command line: 'httpd -D FOREGROUND'" >&2
exec /bin/httpd -f -p 80 -h /usr/local/apache2/htdocs
"#;
    let mut layer = LayerBuilder::new();
    for dir in [
        "usr/local",
        "usr/local/apache2",
        "usr/local/apache2/bin",
        "usr/local/apache2/htdocs",
    ] {
        layer.dir(dir, 0o755, 0, 0);
    }
    layer.file(
        "usr/local/apache2/bin/httpd-foreground",
        script.as_bytes(),
        0o755,
        0,
        0,
    );
    layer.file(
        "usr/local/apache2/htdocs/index.html",
        b"<html><body><p>podvisor httpd stand-in</p></body></html>\n",
        0o644,
        0,
        0,
    );
    layer.gzip()
}

/// busybox setuid root, with `/etc/busybox.conf` keeping the setuid for
/// `id` only (every other applet drops it, as Debian builds busybox): `id -u`
/// then prints 0 unless no_new_privs stops the setuid.
fn setuid_id_layer() -> LayerBlob {
    let busybox = std::fs::read(BUSYBOX_STATIC).expect("reading busybox-static");
    let mut layer = LayerBuilder::new();
    layer.file("bin/busybox", &busybox, 0o4755, 0, 0);
    // The base layer's /bin/id is a hard link to the base's busybox.
    layer.hardlink("bin/id", "bin/busybox");
    // busybox ignores the file unless root owns it and only root can write it.
    layer.file("etc/busybox.conf", b"[SUID]\nid = sxx 0.0\n", 0o600, 0, 0);
    layer.gzip()
}

/// What upstream's `adduser -u 1000 default-user; addgroup -g 50000
/// group-defined-in-image; addgroup default-user group-defined-in-image`
/// leaves in /etc.
fn predefined_group_layer() -> LayerBlob {
    let passwd =
        format!("{PASSWD}default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\n");
    let group =
        format!("{GROUP}default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n");
    let mut layer = LayerBuilder::new();
    layer.file("etc/passwd", passwd.as_bytes(), 0o644, 0, 0);
    layer.file("etc/group", group.as_bytes(), 0o644, 0, 0);
    layer.dir("home/default-user", 0o755, 1000, 1000);
    layer.gzip()
}
