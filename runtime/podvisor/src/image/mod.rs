//! Images: pull from registries, a content-addressed store, and layers
//! unpacked once each into directories that pod VMs get read-only through
//! virtio-fs and stack with overlayfs. `ImageService` is what CRI's
//! ImageService (PullImage, ListImages, ImageStatus, RemoveImage,
//! ImageFsInfo) and container creation call.

pub mod error;
pub mod reference;
pub mod registry;
pub mod store;
pub mod unpack;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures_util::{stream, StreamExt, TryStreamExt};
use oci_client::manifest::OciDescriptor;
use serde::Deserialize;

pub use error::{ImageError, Result};
pub use reference::ImageRef;
pub use registry::{Credentials, RegistryConfig};
pub use store::{FsInfo, Image, Layer, RuntimeConfig};

use registry::{BlobSink, Session};
use store::{BlobWriter, LayerError, Store};

/// Layers downloaded and unpacked at once per pull.
const PARALLEL_LAYERS: usize = 3;

#[derive(Clone)]
pub struct ImageService {
    store: Arc<Store>,
    registry: Arc<RegistryConfig>,
}

impl ImageService {
    /// Opens the store at `root` (the daemon uses /var/lib/podvisor/images),
    /// removing leftovers of a crash. Blocking.
    pub fn open(root: impl AsRef<Path>, registry: RegistryConfig) -> Result<ImageService> {
        registry.validate().map_err(ImageError::Config)?;
        Ok(ImageService {
            store: Arc::new(Store::open(root.as_ref())?),
            registry: Arc::new(registry),
        })
    }

    pub fn root(&self) -> &Path {
        self.store.root()
    }

    /// Pulls `reference` (any spelling: `busybox`, `quay.io/a/b:1`,
    /// `name@sha256:...`) for linux/amd64, downloading and unpacking only
    /// what the store lacks. Returns the image record; its `id` is CRI's
    /// image ref.
    pub async fn pull(&self, reference: &str, credentials: Option<&Credentials>) -> Result<Image> {
        let result = self.pull_inner(reference, credentials).await;
        if result.is_err() {
            // What the failed pull fetched is referenced by no image: drop it.
            if let Err(e) = self.gc().await {
                tracing::warn!(error = %e, "garbage collection after a failed pull");
            }
        }
        result
    }

    async fn pull_inner(
        &self,
        reference: &str,
        credentials: Option<&Credentials>,
    ) -> Result<Image> {
        let started = Instant::now();
        let image = ImageRef::parse(reference).map_err(|e| ImageError::InvalidReference {
            reference: reference.to_string(),
            reason: e.to_string(),
        })?;
        let shown = image.to_string();
        let (session, resolved) = registry::resolve(&self.registry, &image, credentials).await?;
        let manifest = &resolved.manifest;
        let config_desc = &manifest.config;
        let mut lease_keys = vec![
            resolved.top_digest.clone(),
            resolved.manifest_digest.clone(),
            config_desc.digest.clone(),
        ];
        lease_keys.extend(manifest.layers.iter().map(|l| l.digest.clone()));
        let _lease = self.store.lease(lease_keys);

        self.fetch_if_missing(&session, config_desc, &shown).await?;
        let config_bytes = self.store.read_blob(&config_desc.digest)?;
        let config = parse_config(&config_bytes, &shown)?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::Registry {
                reference: shown,
                message: format!(
                    "the manifest has {} layers but the config {} diff ids",
                    manifest.layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            });
        }
        let _diff_lease = self.store.lease(config.rootfs.diff_ids.iter().cloned());

        // Owned items: a closure over borrowed ones makes the future
        // lifetime-generic, which a Send-bound gRPC handler cannot hold.
        let jobs: Vec<(OciDescriptor, String)> = manifest
            .layers
            .iter()
            .cloned()
            .zip(config.rootfs.diff_ids.iter().cloned())
            .collect();
        let (session_ref, shown_ref) = (&session, &shown);
        let results: Vec<bool> = stream::iter(jobs)
            .map(|(desc, diff_id)| async move {
                self.ensure_layer(session_ref, &desc, &diff_id, shown_ref)
                    .await
            })
            .buffer_unordered(PARALLEL_LAYERS)
            .try_collect()
            .await?;
        let downloaded = results.iter().filter(|d| **d).count();

        // Manifests last: their presence never implies the layers are there.
        let store = self.store.clone();
        let index = resolved.index.clone();
        let (mdigest, mbytes) = (
            resolved.manifest_digest.clone(),
            resolved.manifest_bytes.clone(),
        );
        let shown2 = shown.clone();
        blocking(move || {
            if let Some((d, bytes)) = index {
                if !store.has_blob(&d)? {
                    store.write_blob(&d, &bytes, &shown2)?;
                }
            }
            if !store.has_blob(&mdigest)? {
                store.write_blob(&mdigest, &mbytes, &shown2)?;
            }
            Ok(())
        })
        .await?;

        let layers: Vec<Layer> = manifest
            .layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .map(|(d, diff_id)| Layer {
                digest: d.digest.clone(),
                diff_id: diff_id.clone(),
                size: d.size.max(0) as u64,
                media_type: d.media_type.clone(),
            })
            .collect();
        let mut blobs = Vec::new();
        if let Some((d, _)) = &resolved.index {
            blobs.push(d.clone());
        }
        blobs.push(resolved.manifest_digest.clone());
        blobs.push(config_desc.digest.clone());
        blobs.extend(layers.iter().map(|l| l.digest.clone()));
        let record = Image {
            id: config_desc.digest.clone(),
            repo_tags: image.repo_tag().into_iter().collect(),
            repo_digests: vec![image.repo_digest(&resolved.top_digest)],
            manifest_digest: resolved.manifest_digest.clone(),
            size: config_bytes.len() as u64 + layers.iter().map(|l| l.size).sum::<u64>(),
            layers,
            config: config.runtime_config(),
            os: config.os.clone(),
            architecture: config.architecture.clone(),
            blobs,
            pulled_at: store::pulled_now(),
        };
        let store = self.store.clone();
        let record = blocking(move || store.commit_image(record)).await?;
        tracing::info!(
            image = %shown,
            id = %record.id,
            endpoint = %session.endpoint.host,
            layers_downloaded = downloaded,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "image pulled"
        );
        Ok(record)
    }

    /// Downloads blob `desc` unless the store has it.
    async fn fetch_if_missing(
        &self,
        session: &Session,
        desc: &OciDescriptor,
        shown: &str,
    ) -> Result<bool> {
        let _guard = self.store.lock(&format!("blob {}", desc.digest)).await;
        if self.store.has_blob(&desc.digest)? {
            return Ok(false);
        }
        let size = u64::try_from(desc.size).ok().filter(|s| *s > 0);
        let mut writer = Writer(self.store.blob_writer(&desc.digest, size, shown)?);
        session.fetch_blob(desc, &mut writer).await?;
        blocking(move || writer.0.commit()).await?;
        Ok(true)
    }

    /// Makes sure layer `diff_id` is unpacked; true when it was not.
    async fn ensure_layer(
        &self,
        session: &Session,
        desc: &OciDescriptor,
        diff_id: &str,
        shown: &str,
    ) -> Result<bool> {
        // Not the blob's key: an uncompressed layer's digest is its diff id.
        let _guard = self.store.lock(&format!("layer {diff_id}")).await;
        if self.store.has_layer(diff_id)? {
            return Ok(false);
        }
        self.fetch_if_missing(session, desc, shown).await?;
        let store = self.store.clone();
        let (digest, media_type, diff) = (
            desc.digest.clone(),
            desc.media_type.clone(),
            diff_id.to_string(),
        );
        let res =
            tokio::task::spawn_blocking(move || store.unpack_layer(&digest, &media_type, &diff))
                .await
                .map_err(|e| ImageError::io("unpacking a layer", std::io::Error::other(e)))?;
        match res {
            Ok(()) => Ok(true),
            Err(LayerError::Store(e)) => Err(e),
            Err(LayerError::Unpack(e)) => Err(ImageError::Registry {
                reference: shown.to_string(),
                message: format!("layer {}: {e}", desc.digest),
            }),
        }
    }

    /// Every image, for ListImages.
    pub fn list(&self) -> Vec<Image> {
        self.store.list()
    }

    /// The image `reference` names (id, tag or digest), or None: CRI's
    /// ImageStatus answers an unknown image with an empty response.
    pub fn status(&self, reference: &str) -> Result<Option<Image>> {
        self.store.find(reference)
    }

    /// Like `status`, but an unknown image is `ImageError::NotFound`.
    pub fn get(&self, reference: &str) -> Result<Image> {
        self.store
            .find(reference)?
            .ok_or_else(|| ImageError::NotFound(reference.to_string()))
    }

    /// Removes the image `reference` names, with all its tags, and the
    /// blobs and layers no other image uses. `in_use(id)` returns the
    /// container using image `id`, if any; then nothing is removed.
    /// Ok(false) when there was no such image (CRI's RemoveImage is
    /// idempotent).
    pub async fn remove(
        &self,
        reference: &str,
        in_use: impl Fn(&str) -> Option<String>,
    ) -> Result<bool> {
        let Some(image) = self.store.find(reference)? else {
            return Ok(false);
        };
        if let Some(container) = in_use(&image.id) {
            return Err(ImageError::InUse {
                image: reference.to_string(),
                container,
            });
        }
        let store = self.store.clone();
        let id = image.id.clone();
        let removed = blocking(move || store.remove(&id)).await?;
        if removed {
            tracing::info!(image = %reference, id = %image.id, "image removed");
        }
        Ok(removed)
    }

    /// The image's unpacked layer directories, top-most first: overlayfs's
    /// `lowerdir` order. A layer that occurs twice is listed once, at its
    /// top-most place: the lower copy could add nothing the upper one does
    /// not already show or hide, and overlayfs refuses a directory twice.
    pub fn layers_for(&self, image: &str) -> Result<Vec<PathBuf>> {
        let image = self.get(image)?;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for layer in image.layers.iter().rev() {
            if !seen.insert(layer.diff_id.clone()) {
                continue;
            }
            let p = self.store.layer_path(&layer.diff_id)?;
            if !p.is_dir() {
                return Err(ImageError::io(
                    format!(
                        "layer {} of image {} is missing from the store; pull the image again",
                        layer.diff_id,
                        image.display_name()
                    ),
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                ));
            }
            out.push(p);
        }
        Ok(out)
    }

    /// Bytes and inodes used by the store and its filesystem's mountpoint,
    /// for ImageFsInfo. Walks the store.
    pub async fn fs_info(&self) -> Result<FsInfo> {
        let store = self.store.clone();
        blocking(move || store.fs_info()).await
    }

    /// Collects unreferenced blobs and layers (removal does this already).
    pub async fn gc(&self) -> Result<()> {
        let store = self.store.clone();
        blocking(move || store.gc().map(|_| ())).await
    }
}

struct Writer(BlobWriter);

impl BlobSink for Writer {
    fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.0.write_chunk(chunk)
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ImageError::io("image store task", std::io::Error::other(e)))?
}

/// The parts of the OCI image config we use.
#[derive(Deserialize, Default)]
#[serde(default)]
struct ConfigFile {
    architecture: String,
    os: String,
    config: Option<ContainerConfig>,
    rootfs: RootFs,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct ContainerConfig {
    user: Option<String>,
    env: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    working_dir: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    stop_signal: Option<String>,
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    volumes: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RootFs {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<String>,
}

fn parse_config(bytes: &[u8], shown: &str) -> Result<ConfigFile> {
    let bad = |message: String| ImageError::Registry {
        reference: shown.to_string(),
        message,
    };
    let config: ConfigFile =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("unreadable image config: {e}")))?;
    if config.rootfs.kind != "layers" {
        return Err(bad(format!(
            "image config rootfs type {:?} is not \"layers\"",
            config.rootfs.kind
        )));
    }
    for d in &config.rootfs.diff_ids {
        reference::parse_digest(d).map_err(|e| bad(format!("image config diff id: {e}")))?;
    }
    // A single-platform image for another machine would not run in our VMs.
    let os_ok = config.os.is_empty() || config.os == registry::OS;
    let arch_ok = config.architecture.is_empty() || config.architecture == registry::ARCHITECTURE;
    if !os_ok || !arch_ok {
        return Err(ImageError::NotInRegistry {
            reference: shown.to_string(),
            message: format!(
                "the image is for {}/{}, not {}/{}",
                config.os,
                config.architecture,
                registry::OS,
                registry::ARCHITECTURE
            ),
        });
    }
    Ok(config)
}

impl ConfigFile {
    fn runtime_config(&self) -> RuntimeConfig {
        let Some(c) = &self.config else {
            return RuntimeConfig::default();
        };
        RuntimeConfig {
            user: c.user.clone().unwrap_or_default(),
            env: c.env.clone().unwrap_or_default(),
            entrypoint: c.entrypoint.clone().unwrap_or_default(),
            cmd: c.cmd.clone().unwrap_or_default(),
            working_dir: c.working_dir.clone().unwrap_or_default(),
            labels: c.labels.clone().unwrap_or_default(),
            stop_signal: c.stop_signal.clone().unwrap_or_default(),
            exposed_ports: c
                .exposed_ports
                .iter()
                .flat_map(|m| m.keys().cloned())
                .collect(),
            volumes: c.volumes.iter().flat_map(|m| m.keys().cloned()).collect(),
        }
    }
}
