//! A real registry on 127.0.0.1 (Debian's docker-registry, storage in a
//! temp dir, no auth) and test images pushed to it with oci-client: busybox
//! from busybox-static, layers built entry by entry, manifest lists.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flate2::write::GzEncoder;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{
    OciDescriptor, OciImageIndex, OciImageManifest, IMAGE_CONFIG_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

pub const DOCKER_REGISTRY: &str = "/usr/bin/docker-registry";
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// The user `start_with_basic_auth` registries accept.
pub const TEST_USER: &str = "podvisor";
pub const TEST_PASSWORD: &str = "s3cret";
/// bcrypt of TEST_PASSWORD (`htpasswd -B` format), computed once.
const TEST_PASSWORD_BCRYPT: &str = "$2y$05$abcdefghijklmnopqrstuuLK7U1u6pVRmL7L1BBM2aS35PSZnDXlK";

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A docker-registry process serving 127.0.0.1:<free port>; killed on drop.
pub struct LocalRegistry {
    child: Child,
    dir: TempDir,
    addr: String,
    basic_auth: bool,
}

impl LocalRegistry {
    pub fn available() -> bool {
        Path::new(DOCKER_REGISTRY).is_file()
    }

    /// Starts a registry and waits until it answers `/v2/`.
    pub fn start() -> LocalRegistry {
        Self::start_inner(false, None)
    }

    /// A registry that wants HTTP basic auth as TEST_USER / TEST_PASSWORD.
    pub fn start_with_basic_auth() -> LocalRegistry {
        Self::start_inner(true, None)
    }

    /// A registry on `addr` (`127.0.0.1:PORT`), for a caller that had to
    /// name the address before the registry could start (a runtime's
    /// configuration); port 0 picks a free one, as `start` does.
    pub fn start_at(addr: &str) -> LocalRegistry {
        let fixed = addr.strip_suffix(":0").is_none().then_some(addr);
        Self::start_inner(false, fixed)
    }

    fn start_inner(basic_auth: bool, fixed: Option<&str>) -> LocalRegistry {
        assert!(
            Self::available(),
            "{DOCKER_REGISTRY} is missing: install Debian's docker-registry"
        );
        let mut dir = tempfile::Builder::new()
            .prefix("podvisor-registry")
            .tempdir()
            .unwrap();
        // The port is free when we look; if someone takes it before the
        // registry binds, the registry exits and we try another.
        let attempts = if fixed.is_some() { 1 } else { 5 };
        for _ in 0..attempts {
            let addr = match fixed {
                Some(addr) => addr.to_string(),
                None => {
                    let port = TcpListener::bind("127.0.0.1:0")
                        .unwrap()
                        .local_addr()
                        .unwrap()
                        .port();
                    format!("127.0.0.1:{port}")
                }
            };
            let config = dir.path().join("config.yml");
            let mut yaml = format!(
                "version: 0.1\n\
                 log:\n  level: info\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n",
                dir.path().join("storage").display()
            );
            if basic_auth {
                let htpasswd = dir.path().join("htpasswd");
                fs::write(&htpasswd, format!("{TEST_USER}:{TEST_PASSWORD_BCRYPT}\n")).unwrap();
                yaml.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: podvisor-test\n    path: {}\n",
                    htpasswd.display()
                ));
            }
            fs::write(&config, yaml).unwrap();
            let log = File::create(dir.path().join("registry.log")).unwrap();
            let child = Command::new(DOCKER_REGISTRY)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawning docker-registry");
            let mut registry = LocalRegistry {
                child,
                dir,
                addr,
                basic_auth,
            };
            if registry.wait_ready() {
                return registry;
            }
            let _ = registry.child.kill();
            let _ = registry.child.wait();
            dir = std::mem::replace(&mut registry.dir, tempfile::tempdir().unwrap());
        }
        match fixed {
            Some(addr) => panic!("docker-registry did not start on {addr} (is the port taken?)"),
            None => panic!("docker-registry did not start"),
        }
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(mut s) = TcpStream::connect(&self.addr) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let req = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr);
                let mut answer = String::new();
                if s.write_all(req.as_bytes()).is_ok() && s.read_to_string(&mut answer).is_ok() {
                    // 401: up, and wanting credentials.
                    let status = answer.split(' ').nth(1).unwrap_or("");
                    if status == "200" || (self.basic_auth && status == "401") {
                        return true;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// `127.0.0.1:<port>`: the registry part of image names.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The registry's log, access log included.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// How many GETs of blobs (layers and configs) the registry served.
    pub fn blob_gets(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains("/blobs/sha256:"))
            .count()
    }

    /// How many GETs of blob `digest` the registry served.
    pub fn blob_gets_of(&self, digest: &str) -> usize {
        let needle = format!("/blobs/{digest}");
        self.log()
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains(&needle))
            .count()
    }

    /// Where the registry keeps blob `digest`: rewriting it makes the
    /// registry serve content that no longer matches its digest.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    fn auth(&self) -> RegistryAuth {
        if self.basic_auth {
            RegistryAuth::Basic(TEST_USER.into(), TEST_PASSWORD.into())
        } else {
            RegistryAuth::Anonymous
        }
    }

    fn client() -> Client {
        Client::try_from(ClientConfig {
            protocol: ClientProtocol::Http,
            ..Default::default()
        })
        .unwrap()
    }

    /// Pushes `image` as `repo:tag` (an OCI manifest).
    pub async fn push(&self, repo: &str, tag: &str, image: &TestImage) -> Pushed {
        let client = Self::client();
        let reference = Reference::with_tag(self.addr.clone(), repo.into(), tag.into());
        let config_bytes = serde_json::to_vec(&image.config).unwrap();
        let config_digest = sha256(&config_bytes);
        let manifest = OciImageManifest {
            schema_version: 2,
            media_type: Some(OCI_IMAGE_MEDIA_TYPE.into()),
            config: OciDescriptor {
                media_type: IMAGE_CONFIG_MEDIA_TYPE.into(),
                digest: config_digest.clone(),
                size: config_bytes.len() as i64,
                ..Default::default()
            },
            layers: image
                .layers
                .iter()
                .map(|l| OciDescriptor {
                    media_type: l.media_type.clone(),
                    digest: sha256(&l.data),
                    size: l.data.len() as i64,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let layers: Vec<ImageLayer> = image
            .layers
            .iter()
            .map(|l| ImageLayer::new(l.data.clone(), l.media_type.clone(), None))
            .collect();
        client
            .push(
                &reference,
                &layers,
                Config::new(config_bytes, IMAGE_CONFIG_MEDIA_TYPE.into(), None),
                &self.auth(),
                Some(manifest),
            )
            .await
            .expect("pushing the test image");
        let (bytes, manifest_digest) = client
            .pull_manifest_raw(&reference, &self.auth(), &[OCI_IMAGE_MEDIA_TYPE])
            .await
            .unwrap();
        Pushed {
            manifest_digest,
            manifest_size: bytes.len() as i64,
            config_digest,
            layer_digests: image.layers.iter().map(|l| sha256(&l.data)).collect(),
            diff_ids: image.layers.iter().map(|l| l.diff_id.clone()).collect(),
        }
    }

    /// Pushes a manifest list as `repo:tag` whose entries are already pushed
    /// manifests of `repo`, each with its (os, architecture).
    pub async fn push_index(
        &self,
        repo: &str,
        tag: &str,
        entries: &[(&Pushed, &str, &str)],
    ) -> String {
        let client = Self::client();
        let reference = Reference::with_tag(self.addr.clone(), repo.into(), tag.into());
        let index: OciImageIndex = serde_json::from_value(json!({
            "schemaVersion": 2,
            "mediaType": OCI_IMAGE_INDEX_MEDIA_TYPE,
            "manifests": entries.iter().map(|(p, os, arch)| json!({
                "mediaType": OCI_IMAGE_MEDIA_TYPE,
                "digest": p.manifest_digest,
                "size": p.manifest_size,
                "platform": {"os": os, "architecture": arch},
            })).collect::<Vec<_>>(),
        }))
        .unwrap();
        client
            .push_manifest_list(&reference, &self.auth(), index)
            .await
            .expect("pushing the manifest list");
        client
            .fetch_manifest_digest(&reference, &self.auth())
            .await
            .unwrap()
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `push` put in the registry.
#[derive(Clone, Debug)]
pub struct Pushed {
    pub manifest_digest: String,
    pub manifest_size: i64,
    pub config_digest: String,
    /// Bottom-most first.
    pub layer_digests: Vec<String>,
    pub diff_ids: Vec<String>,
}

/// One layer blob.
#[derive(Clone, Debug)]
pub struct LayerBlob {
    pub data: Vec<u8>,
    pub media_type: String,
    /// sha256 of the uncompressed tar.
    pub diff_id: String,
}

/// Layers plus an image config (whose rootfs.diff_ids `new` fills in).
#[derive(Clone, Debug)]
pub struct TestImage {
    pub layers: Vec<LayerBlob>,
    pub config: Value,
}

impl TestImage {
    /// `container_config` is the config's `config` object (Env, Cmd, User,
    /// WorkingDir, ...).
    pub fn new(layers: Vec<LayerBlob>, architecture: &str, container_config: Value) -> TestImage {
        let config = json!({
            "architecture": architecture,
            "os": "linux",
            "config": container_config,
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            },
        });
        TestImage { layers, config }
    }
}

/// A busybox image: one gzip layer of `rootfs::busybox_rootfs`, with
/// Env PATH, Cmd ["sh"], the given User and WorkingDir.
pub fn busybox_image(user: &str, working_dir: &str) -> TestImage {
    let dir = tempfile::tempdir().unwrap();
    let root = crate::rootfs::busybox_rootfs(dir.path());
    let mut layer = LayerBuilder::new();
    let mut tar = layer.builder.take().unwrap();
    tar.follow_symlinks(false);
    tar.append_dir_all(".", &root).unwrap();
    layer.builder = Some(tar);
    TestImage::new(
        vec![layer.gzip()],
        "amd64",
        json!({
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["sh"],
            "User": user,
            "WorkingDir": working_dir,
            "Labels": {"org.podvisor.test": "busybox"},
        }),
    )
}

/// Builds a layer tar entry by entry, with exact owners, modes and mtimes.
pub struct LayerBuilder {
    builder: Option<tar::Builder<Vec<u8>>>,
    /// Applied to every entry.
    pub mtime: u64,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerBuilder {
    pub fn new() -> LayerBuilder {
        LayerBuilder {
            builder: Some(tar::Builder::new(Vec::new())),
            mtime: 1_600_000_000,
        }
    }

    fn header(&self, kind: tar::EntryType, mode: u32, uid: u64, gid: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(self.mtime);
        h.set_size(0);
        h
    }

    fn append(&mut self, mut h: tar::Header, path: &str, data: &[u8]) -> &mut Self {
        h.set_size(data.len() as u64);
        self.builder
            .as_mut()
            .unwrap()
            .append_data(&mut h, path, data)
            .unwrap();
        self
    }

    /// Any raw header (for hostile entries): the path is written as is.
    pub fn raw(
        &mut self,
        kind: tar::EntryType,
        path: &str,
        link: Option<&str>,
        data: &[u8],
    ) -> &mut Self {
        let mut h = self.header(kind, 0o644, 0, 0);
        {
            let name = &mut h.as_old_mut().name;
            name.fill(0);
            name[..path.len()].copy_from_slice(path.as_bytes());
        }
        if let Some(l) = link {
            let linkname = &mut h.as_old_mut().linkname;
            linkname.fill(0);
            linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.builder.as_mut().unwrap().append(&h, data).unwrap();
        self
    }

    pub fn dir(&mut self, path: &str, mode: u32, uid: u64, gid: u64) -> &mut Self {
        let h = self.header(tar::EntryType::Directory, mode, uid, gid);
        self.append(h, path, &[])
    }

    pub fn file(&mut self, path: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> &mut Self {
        let h = self.header(tar::EntryType::Regular, mode, uid, gid);
        self.append(h, path, data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = self.header(tar::EntryType::Symlink, 0o777, 0, 0);
        self.builder
            .as_mut()
            .unwrap()
            .append_link(&mut h, path, target)
            .unwrap();
        self
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = self.header(tar::EntryType::Link, 0o644, 0, 0);
        self.builder
            .as_mut()
            .unwrap()
            .append_link(&mut h, path, target)
            .unwrap();
        self
    }

    pub fn fifo(&mut self, path: &str, mode: u32) -> &mut Self {
        let h = self.header(tar::EntryType::Fifo, mode, 0, 0);
        self.append(h, path, &[])
    }

    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) -> &mut Self {
        let mut h = self.header(tar::EntryType::Char, 0o666, 0, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.append(h, path, &[])
    }

    pub fn block_device(&mut self, path: &str, major: u32, minor: u32) -> &mut Self {
        let mut h = self.header(tar::EntryType::Block, 0o660, 0, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.append(h, path, &[])
    }

    /// `.wh.NAME` next to `path`'s NAME: hides `path` of lower layers.
    pub fn whiteout(&mut self, path: &str) -> &mut Self {
        let (dir, name) = path.rsplit_once('/').map_or(("", path), |(d, n)| (d, n));
        let wh = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&wh, &[], 0o600, 0, 0)
    }

    /// `.wh..wh..opq` in `dir`: hides everything lower layers have there.
    pub fn opaque(&mut self, dir: &str) -> &mut Self {
        self.file(&format!("{dir}/.wh..wh..opq"), &[], 0o600, 0, 0)
    }

    /// A PAX header carrying `SCHILY.xattr.<name>` for the next entry.
    pub fn pax_xattr(&mut self, path: &str, name: &str, value: &[u8]) -> &mut Self {
        let mut record = Vec::new();
        let body_len = format!(" SCHILY.xattr.{name}=").len() + value.len() + 1;
        // The length prefix counts its own digits.
        let mut len = body_len + 1;
        while len != body_len + len.to_string().len() {
            len = body_len + len.to_string().len();
        }
        record.extend_from_slice(format!("{len} SCHILY.xattr.{name}=").as_bytes());
        record.extend_from_slice(value);
        record.push(b'\n');
        let h = self.header(tar::EntryType::XHeader, 0o644, 0, 0);
        self.append(h, &format!("PaxHeaders/{path}"), &record)
    }

    fn finish(mut self) -> Vec<u8> {
        self.builder.take().unwrap().into_inner().unwrap()
    }

    pub fn gzip(self) -> LayerBlob {
        let tar = self.finish();
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        LayerBlob {
            data: gz.finish().unwrap(),
            media_type: LAYER_GZIP.into(),
            diff_id: sha256(&tar),
        }
    }

    pub fn uncompressed(self) -> LayerBlob {
        let tar = self.finish();
        LayerBlob {
            diff_id: sha256(&tar),
            media_type: LAYER_TAR.into(),
            data: tar,
        }
    }

    /// The uncompressed tar, for tests that unpack without a registry.
    pub fn tar(self) -> Vec<u8> {
        self.finish()
    }
}
