//! The content-addressed image store under one root directory:
//!
//! ```text
//! blobs/<alg>/<hex>          manifests, configs, layer blobs (verified)
//! layers/<alg>/<hex>/        one unpacked layer per diff id (an overlay lower dir)
//! images/<alg>/<hex>.json    one record per image id (= config digest)
//! tmp/                       downloads and unpacks in progress; emptied at open
//! ```
//!
//! Everything lands by rename from `tmp/` (same filesystem), after fsync, so
//! a crash leaves either the old state or the new one, and at worst orphans
//! that the next garbage collection removes. Records are kept in memory too:
//! the daemon is the store's only user.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};

use super::error::{ImageError, IoContext, Result};
use super::reference::{parse_digest, ImageRef};
use super::unpack::{self, UnpackError};

/// One image as the runtime knows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Image {
    /// The config digest, as containerd does.
    pub id: String,
    /// `docker.io/library/busybox:latest`, ...
    pub repo_tags: Vec<String>,
    /// `docker.io/library/busybox@sha256:...`: what a tag resolved to (the
    /// index digest for multi-platform images).
    pub repo_digests: Vec<String>,
    /// The linux/amd64 image manifest.
    pub manifest_digest: String,
    /// Compressed layers plus config, as registries and containerd count.
    pub size: u64,
    /// Bottom-most first, as in the manifest.
    pub layers: Vec<Layer>,
    pub config: RuntimeConfig,
    pub os: String,
    pub architecture: String,
    /// Every blob this image keeps alive: indexes, manifest, config, layers.
    pub blobs: Vec<String>,
    /// Seconds since the epoch of the last pull.
    pub pulled_at: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Layer {
    /// The (compressed) blob's digest.
    pub digest: String,
    /// The uncompressed tar's digest: names the unpacked directory.
    pub diff_id: String,
    pub size: u64,
    pub media_type: String,
}

/// What the runtime needs from the image config to build a container spec.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct RuntimeConfig {
    /// `user`, `uid`, `user:group` or `uid:gid`; empty: root.
    pub user: String,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: String,
    pub exposed_ports: Vec<String>,
    pub volumes: Vec<String>,
}

impl Image {
    /// CRI's `uid` / `username` pair: a numeric user (before any `:group`)
    /// is a uid, anything else a name.
    pub fn uid_and_username(&self) -> (Option<i64>, String) {
        let user = self.config.user.split(':').next().unwrap_or("");
        match user.parse::<i64>() {
            Ok(uid) => (Some(uid), String::new()),
            Err(_) if user.is_empty() => (None, String::new()),
            Err(_) => (None, user.to_string()),
        }
    }

    /// The repository part of the first tag or digest, for messages.
    pub fn display_name(&self) -> &str {
        self.repo_tags
            .first()
            .or(self.repo_digests.first())
            .map_or(self.id.as_str(), |s| s.as_str())
    }
}

/// `du` of the store, for CRI's ImageFsInfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsInfo {
    /// The mountpoint of the filesystem the store is on.
    pub mountpoint: PathBuf,
    pub used_bytes: u64,
    pub inodes_used: u64,
    /// Nanoseconds since the epoch when this was measured.
    pub timestamp_nanos: i64,
}

pub struct Store {
    root: PathBuf,
    state: Mutex<State>,
    locks: KeyedLocks,
}

struct State {
    images: BTreeMap<String, Image>,
    /// Digests (blobs and diff ids) that pulls in progress are using: the
    /// garbage collector leaves them alone.
    leases: HashMap<String, usize>,
}

/// `sha256:<hex>` → (`sha256`, `<hex>`), only for digests we accept.
fn split(digest: &str) -> Result<(&str, &str)> {
    parse_digest(digest).map_err(|e| ImageError::Registry {
        reference: digest.to_string(),
        message: e.to_string(),
    })?;
    Ok(digest.split_once(':').expect("checked by parse_digest"))
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Store {
    /// Opens (creating) the store at `root`, drops leftovers of a crash and
    /// collects garbage.
    pub fn open(root: &Path) -> Result<Store> {
        for d in ["blobs", "layers", "images", "tmp"] {
            fs::create_dir_all(root.join(d))
                .ctx(|| format!("creating {}", root.join(d).display()))?;
        }
        // Layers hold setuid files owned by root: no host user may reach them.
        fs::set_permissions(root, fs::Permissions::from_mode(0o700))
            .ctx(|| format!("making {} private", root.display()))?;
        let tmp = root.join("tmp");
        for entry in fs::read_dir(&tmp).ctx(|| format!("reading {}", tmp.display()))? {
            let p = entry.ctx(|| format!("reading {}", tmp.display()))?.path();
            remove_any(&p).ctx(|| format!("removing leftover {}", p.display()))?;
        }
        let mut images = BTreeMap::new();
        let records = root.join("images");
        for alg in fs::read_dir(&records).ctx(|| format!("reading {}", records.display()))? {
            let alg = alg.ctx(|| format!("reading {}", records.display()))?.path();
            for rec in fs::read_dir(&alg).ctx(|| format!("reading {}", alg.display()))? {
                let rec = rec.ctx(|| format!("reading {}", alg.display()))?.path();
                let parsed = fs::read(&rec)
                    .map_err(|e| e.to_string())
                    .and_then(|b| serde_json::from_slice::<Image>(&b).map_err(|e| e.to_string()));
                match parsed {
                    Ok(image) => {
                        images.insert(image.id.clone(), image);
                    }
                    // Written atomically, so only tampering gets here: the
                    // image is forgotten and can be pulled again.
                    Err(e) => {
                        tracing::warn!(record = %rec.display(), error = %e, "unreadable image record ignored")
                    }
                }
            }
        }
        let store = Store {
            root: root.to_path_buf(),
            state: Mutex::new(State {
                images,
                leases: HashMap::new(),
            }),
            locks: KeyedLocks::default(),
        };
        store.gc()?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        let (alg, hex) = split(digest)?;
        Ok(self.root.join("blobs").join(alg).join(hex))
    }

    pub fn layer_path(&self, diff_id: &str) -> Result<PathBuf> {
        let (alg, hex) = split(diff_id)?;
        Ok(self.root.join("layers").join(alg).join(hex))
    }

    fn record_path(&self, id: &str) -> Result<PathBuf> {
        let (alg, hex) = split(id)?;
        Ok(self
            .root
            .join("images")
            .join(alg)
            .join(format!("{hex}.json")))
    }

    fn tmp_path(&self, what: &str) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{what}-{}-{n}", std::process::id()))
    }

    pub fn has_blob(&self, digest: &str) -> Result<bool> {
        Ok(self.blob_path(digest)?.is_file())
    }

    pub fn has_layer(&self, diff_id: &str) -> Result<bool> {
        Ok(self.layer_path(diff_id)?.is_dir())
    }

    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let p = self.blob_path(digest)?;
        fs::read(&p).ctx(|| format!("reading {}", p.display()))
    }

    /// Serialises work on one digest (a download, an unpack): concurrent
    /// pulls wait for it and then find it done.
    pub async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        self.locks.lock(key).await
    }

    /// Keeps `digests` from the garbage collector until the lease is dropped.
    pub fn lease(self: &Arc<Self>, digests: impl IntoIterator<Item = String>) -> Lease {
        let digests: Vec<String> = digests.into_iter().collect();
        let mut st = self.state();
        for d in &digests {
            *st.leases.entry(d.clone()).or_default() += 1;
        }
        Lease {
            store: Arc::downgrade(self),
            digests,
        }
    }

    /// A writer for blob `digest`: bytes go to a temp file and are hashed;
    /// `commit` checks digest and size and moves the file into place, and a
    /// writer dropped without commit leaves nothing.
    /// `image` names the pull in error messages.
    pub fn blob_writer(&self, digest: &str, size: Option<u64>, image: &str) -> Result<BlobWriter> {
        let target = self.blob_path(digest)?;
        let tmp = self.tmp_path("blob");
        let file = File::create(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
        let hasher = match split(digest)?.0 {
            "sha512" => Hasher::Sha512(Sha512::new()),
            _ => Hasher::Sha256(Sha256::new()),
        };
        Ok(BlobWriter {
            file: Some(io::BufWriter::with_capacity(256 * 1024, file)),
            tmp,
            target,
            digest: digest.to_string(),
            expected_size: size,
            image: image.to_string(),
            written: 0,
            hasher: Some(hasher),
        })
    }

    /// Stores a blob we hold in memory (manifests), verifying it.
    pub fn write_blob(&self, digest: &str, bytes: &[u8], image: &str) -> Result<()> {
        let mut w = self.blob_writer(digest, Some(bytes.len() as u64), image)?;
        w.write_chunk(bytes)?;
        w.commit()
    }

    /// Unpacks blob `digest` into the layer directory for `diff_id` (checked
    /// against the uncompressed stream). Blocking: run it off the runtime.
    pub fn unpack_layer(
        &self,
        digest: &str,
        media_type: &str,
        diff_id: &str,
    ) -> std::result::Result<(), LayerError> {
        let target = self.layer_path(diff_id)?;
        if target.is_dir() {
            return Ok(());
        }
        let blob = self.blob_path(digest)?;
        let tmp = self.tmp_path("layer");
        let cleanup = RemoveOnDrop(tmp.clone());
        fs::create_dir(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
        let started = std::time::Instant::now();
        let unpacked = unpack::unpack_layer(&blob, media_type, Some(diff_id), &tmp)
            .map_err(LayerError::Unpack)?;
        sync_filesystem(&tmp).ctx(|| format!("syncing {}", tmp.display()))?;
        let parent = target.parent().expect("layer paths have a parent");
        fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
        match fs::rename(&tmp, &target) {
            Ok(()) => {}
            // Someone (another process) got there first with the same content.
            Err(e) if target.is_dir() => {
                tracing::debug!(error = %e, layer = %diff_id, "layer already unpacked");
            }
            Err(e) => {
                return Err(
                    ImageError::io(format!("moving layer to {}", target.display()), e).into(),
                )
            }
        }
        fsync_dir(parent).ctx(|| format!("syncing {}", parent.display()))?;
        drop(cleanup);
        tracing::info!(layer = %diff_id, entries = unpacked.entries, elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX), "layer unpacked");
        Ok(())
    }

    /// Records `image` (a pull's result). An image already known under the
    /// same id keeps its other tags and digests; a tag moves off any image
    /// that had it before, which stays reachable by id and digest.
    pub fn commit_image(&self, mut image: Image) -> Result<Image> {
        let mut st = self.state();
        if let Some(old) = st.images.get(&image.id) {
            for t in &old.repo_tags {
                if !image.repo_tags.contains(t) {
                    image.repo_tags.push(t.clone());
                }
            }
            for d in &old.repo_digests {
                if !image.repo_digests.contains(d) {
                    image.repo_digests.push(d.clone());
                }
            }
            for b in &old.blobs {
                if !image.blobs.contains(b) {
                    image.blobs.push(b.clone());
                }
            }
        }
        let moved: Vec<String> = st
            .images
            .values()
            .filter(|i| i.id != image.id && i.repo_tags.iter().any(|t| image.repo_tags.contains(t)))
            .map(|i| i.id.clone())
            .collect();
        for id in moved {
            let mut other = st.images[&id].clone();
            other.repo_tags.retain(|t| !image.repo_tags.contains(t));
            self.write_record(&other)?;
            st.images.insert(id, other);
        }
        self.write_record(&image)?;
        st.images.insert(image.id.clone(), image.clone());
        Ok(image)
    }

    fn write_record(&self, image: &Image) -> Result<()> {
        let path = self.record_path(&image.id)?;
        let bytes = serde_json::to_vec_pretty(image).expect("records serialise");
        atomic_write(&self.tmp_path("record"), &path, &bytes)
            .ctx(|| format!("writing {}", path.display()))
    }

    pub fn list(&self) -> Vec<Image> {
        self.state().images.values().cloned().collect()
    }

    /// Finds an image by id (`sha256:<hex>`, the bare hex, or a unique
    /// prefix of either, as crictl users type them), tag or digest reference,
    /// in any spelling that normalises the same. Names are tried before id
    /// prefixes, as containerd does: `abc` is first `docker.io/library/abc`.
    pub fn find(&self, reference: &str) -> Result<Option<Image>> {
        let st = self.state();
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        let is_hex = !hex.is_empty() && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if is_hex && hex.len() == 64 {
            if let Some(i) = st.images.get(&format!("sha256:{hex}")) {
                return Ok(Some(i.clone()));
            }
        }
        let by_name = match ImageRef::parse(reference) {
            Ok(r) => find_by_name(&st.images, &r),
            Err(_) if is_hex => None,
            Err(e) => {
                return Err(ImageError::InvalidReference {
                    reference: reference.to_string(),
                    reason: e.to_string(),
                })
            }
        };
        if by_name.is_some() || !is_hex {
            return Ok(by_name.cloned());
        }
        let prefix = format!("sha256:{hex}");
        let mut matches = st
            .images
            .range(prefix.clone()..)
            .take_while(|(id, _)| id.starts_with(&prefix));
        match (matches.next(), matches.next()) {
            (Some((_, image)), None) => Ok(Some(image.clone())),
            (Some(_), Some(_)) => Err(ImageError::InvalidReference {
                reference: reference.to_string(),
                reason: "more than one image id starts with it".into(),
            }),
            (None, _) => Ok(None),
        }
    }

    /// Forgets image `id` and collects what no other image uses.
    pub fn remove(&self, id: &str) -> Result<bool> {
        {
            let mut st = self.state();
            if st.images.remove(id).is_none() {
                return Ok(false);
            }
            let path = self.record_path(id)?;
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(ImageError::io(format!("removing {}", path.display()), e)),
            }
            if let Some(parent) = path.parent() {
                fsync_dir(parent).ctx(|| format!("syncing {}", parent.display()))?;
            }
        }
        self.gc()?;
        Ok(true)
    }

    /// Removes blobs and layers no image record and no pull in progress
    /// uses. Under the lock they are only renamed into `tmp/` (cheap), and
    /// deleted after it is released.
    pub fn gc(&self) -> Result<GcStats> {
        let trash = self.tmp_path("trash");
        fs::create_dir(&trash).ctx(|| format!("creating {}", trash.display()))?;
        let _cleanup = RemoveOnDrop(trash.clone());
        let mut stats = GcStats::default();
        {
            let st = self.state();
            let mut keep: HashSet<String> = st.leases.keys().cloned().collect();
            for image in st.images.values() {
                keep.extend(image.blobs.iter().cloned());
                keep.extend(image.layers.iter().map(|l| l.diff_id.clone()));
                keep.insert(image.id.clone());
            }
            for (kind, counter) in [("blobs", &mut stats.blobs), ("layers", &mut stats.layers)] {
                let dir = self.root.join(kind);
                for alg in fs::read_dir(&dir).ctx(|| format!("reading {}", dir.display()))? {
                    let alg = alg.ctx(|| format!("reading {}", dir.display()))?;
                    let alg_name = alg.file_name().to_string_lossy().into_owned();
                    for item in fs::read_dir(alg.path())
                        .ctx(|| format!("reading {}", alg.path().display()))?
                    {
                        let item = item.ctx(|| format!("reading {}", alg.path().display()))?;
                        let digest = format!("{alg_name}:{}", item.file_name().to_string_lossy());
                        if keep.contains(&digest) {
                            continue;
                        }
                        let to = trash.join(format!(
                            "{kind}-{alg_name}-{}",
                            item.file_name().to_string_lossy()
                        ));
                        fs::rename(item.path(), &to)
                            .ctx(|| format!("collecting {}", item.path().display()))?;
                        *counter += 1;
                    }
                }
            }
        }
        if stats.blobs + stats.layers > 0 {
            tracing::info!(
                blobs = stats.blobs,
                layers = stats.layers,
                "image store garbage collected"
            );
        }
        Ok(stats)
    }

    /// Bytes and inodes used under the root, and the mountpoint it is on.
    /// Hard links are counted once. Blocking: walks the whole store.
    pub fn fs_info(&self) -> Result<FsInfo> {
        let mut seen = HashSet::new();
        let mut used = (0u64, 0u64);
        walk_usage(&self.root, &mut seen, &mut used)
            .ctx(|| format!("measuring {}", self.root.display()))?;
        let mountpoint = mountpoint_of(&self.root)
            .ctx(|| format!("finding the mountpoint of {}", self.root.display()))?;
        let timestamp_nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        Ok(FsInfo {
            mountpoint,
            used_bytes: used.0,
            inodes_used: used.1,
            timestamp_nanos,
        })
    }

    fn release(&self, digests: &[String]) {
        let mut st = self.state();
        for d in digests {
            if let Some(n) = st.leases.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    st.leases.remove(d);
                }
            }
        }
    }
}

fn find_by_name<'a>(images: &'a BTreeMap<String, Image>, r: &ImageRef) -> Option<&'a Image> {
    match (&r.digest, r.repo_tag()) {
        (Some(d), _) => {
            let wanted = r.repo_digest(d);
            let name = r.name();
            images.values().find(|i| {
                i.repo_digests.contains(&wanted)
                    || (&i.manifest_digest == d
                        && i.repo_digests
                            .iter()
                            .chain(&i.repo_tags)
                            .any(|x| same_repository(x, &name)))
            })
        }
        (None, Some(tag)) => images.values().find(|i| i.repo_tags.contains(&tag)),
        (None, None) => None,
    }
}

/// Repo tag or digest `x` names repository `name` (`registry/path`).
fn same_repository(x: &str, name: &str) -> bool {
    x.strip_prefix(name)
        .is_some_and(|rest| rest.starts_with(':') || rest.starts_with('@'))
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcStats {
    pub blobs: u64,
    pub layers: u64,
}

/// Unpacking fails either in the store (I/O) or in the layer's content.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error(transparent)]
    Store(#[from] ImageError),
    #[error(transparent)]
    Unpack(UnpackError),
}

pub struct Lease {
    store: Weak<Store>,
    digests: Vec<String>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(store) = self.store.upgrade() {
            store.release(&self.digests);
        }
    }
}

enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

pub struct BlobWriter {
    file: Option<io::BufWriter<File>>,
    tmp: PathBuf,
    target: PathBuf,
    digest: String,
    expected_size: Option<u64>,
    image: String,
    written: u64,
    hasher: Option<Hasher>,
}

impl BlobWriter {
    pub fn write_chunk(&mut self, chunk: &[u8]) -> Result<()> {
        self.written += chunk.len() as u64;
        if let Some(max) = self.expected_size {
            if self.written > max {
                return Err(self.mismatch(format!(
                    "blob {} is larger than the {max} bytes its descriptor says",
                    self.digest
                )));
            }
        }
        match self.hasher.as_mut().expect("not committed") {
            Hasher::Sha256(h) => h.update(chunk),
            Hasher::Sha512(h) => h.update(chunk),
        }
        let file = self.file.as_mut().expect("not committed");
        file.write_all(chunk)
            .ctx(|| format!("writing {}", self.tmp.display()))
    }

    fn mismatch(&self, message: String) -> ImageError {
        ImageError::Registry {
            reference: self.image.clone(),
            message,
        }
    }

    /// Verifies, syncs and moves the blob into place.
    pub fn commit(mut self) -> Result<()> {
        if let Some(expected) = self.expected_size {
            if self.written != expected {
                return Err(self.mismatch(format!(
                    "blob {} has {} bytes, its descriptor says {expected}",
                    self.digest, self.written
                )));
            }
        }
        let actual = match self.hasher.take().expect("not committed") {
            Hasher::Sha256(h) => format!("sha256:{}", hex::encode(h.finalize())),
            Hasher::Sha512(h) => format!("sha512:{}", hex::encode(h.finalize())),
        };
        if actual != self.digest {
            return Err(self.mismatch(format!(
                "blob {} failed verification: its content has digest {actual}",
                self.digest
            )));
        }
        let file = self.file.take().expect("not committed");
        let file = file.into_inner().map_err(|e| {
            ImageError::io(format!("writing {}", self.tmp.display()), e.into_error())
        })?;
        file.sync_all()
            .ctx(|| format!("syncing {}", self.tmp.display()))?;
        let parent = self.target.parent().expect("blob paths have a parent");
        fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
        fs::rename(&self.tmp, &self.target)
            .ctx(|| format!("moving blob to {}", self.target.display()))?;
        fsync_dir(parent).ctx(|| format!("syncing {}", parent.display()))
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // Never committed: nothing of it may remain.
        if self.hasher.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Per-key async mutexes; entries vanish when nobody holds or waits.
#[derive(Default)]
struct KeyedLocks {
    map: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, w| w.strong_count() > 0);
            match map.get(key).and_then(Weak::upgrade) {
                Some(m) => m,
                None => {
                    let m = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key.to_string(), Arc::downgrade(&m));
                    m
                }
            }
        };
        m.lock_owned().await
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = remove_any(&self.0);
        }
    }
}

fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// temp + fsync + rename + fsync(dir).
pub(crate) fn atomic_write(tmp: &Path, target: &Path, bytes: &[u8]) -> io::Result<()> {
    let parent = target.parent().expect("targets have a parent");
    fs::create_dir_all(parent)?;
    let result = (|| {
        let mut f = File::create(tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(tmp, target)?;
        fsync_dir(parent)
    })();
    if result.is_err() {
        let _ = fs::remove_file(tmp);
    }
    result
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// One syncfs instead of an fsync per file of the layer: the layer must be
/// on disk before the rename makes it count as unpacked.
fn sync_filesystem(p: &Path) -> io::Result<()> {
    let f = File::open(p)?;
    // SAFETY: a valid open fd.
    if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn walk_usage(p: &Path, seen: &mut HashSet<(u64, u64)>, used: &mut (u64, u64)) -> io::Result<()> {
    let m = match fs::symlink_metadata(p) {
        Ok(m) => m,
        // Removed while we walk (a collection, a finished download).
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if m.nlink() <= 1 || m.is_dir() || seen.insert((m.dev(), m.ino())) {
        used.0 += m.blocks() * 512;
        used.1 += 1;
    }
    if m.is_dir() {
        let entries = match fs::read_dir(p) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            walk_usage(&entry?.path(), seen, used)?;
        }
    }
    Ok(())
}

/// Walks up from `p` to the last directory on the same device.
fn mountpoint_of(p: &Path) -> io::Result<PathBuf> {
    let mut cur = fs::canonicalize(p)?;
    let dev = fs::metadata(&cur)?.dev();
    while let Some(parent) = cur.parent() {
        if fs::metadata(parent)?.dev() != dev {
            break;
        }
        cur = parent.to_path_buf();
    }
    Ok(cur)
}

pub(crate) fn pulled_now() -> u64 {
    now_secs()
}
