//! The pod's share: the one host directory its virtiofsd exports. Nothing
//! is copied into it; what the guest may see (image layers, kubelet's
//! host-path volumes) is bind-mounted into it, read-only where it must be.
//!
//! virtiofsd serves the share from its own mount namespace, made when it
//! started. The share is therefore a mount of its own with shared
//! propagation, so binds made later (a container created after boot)
//! propagate into virtiofsd's copy.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Layers go under here, named by their digest: every container of the pod
/// that uses a layer shares one bind of it.
const LAYERS: &str = "layers";
/// Host-path volumes go under `mounts/<container id>/<index>`.
const MOUNTS: &str = "mounts";

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("{what} {path}: {source}")]
    Mount {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("host path {0} does not exist")]
    MissingHostPath(PathBuf),
    #[error("{0} still has mounts under it after unmounting")]
    StillMounted(PathBuf),
}

pub type Result<T, E = ShareError> = std::result::Result<T, E>;

/// One pod's share directory on the host and where the guest mounts it.
#[derive(Clone, Debug)]
pub struct PodShare {
    dir: PathBuf,
    guest_dir: PathBuf,
}

impl PodShare {
    pub fn new(dir: impl Into<PathBuf>, guest_dir: impl Into<PathBuf>) -> Self {
        PodShare {
            dir: dir.into(),
            guest_dir: guest_dir.into(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the share and makes it a shared mount of its own; done
    /// before virtiofsd starts. Idempotent.
    pub fn prepare(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|source| ShareError::Io {
            what: "creating the pod share",
            path: self.dir.clone(),
            source,
        })?;
        if !is_mountpoint(&self.dir) {
            bind(
                &self.dir,
                &self.dir,
                false,
                "binding the pod share onto itself",
            )?;
        }
        mount(
            None::<&str>,
            &self.dir,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .map_err(|source| ShareError::Mount {
            what: "making the pod share a shared mount",
            path: self.dir.clone(),
            source,
        })
    }

    /// Shows an unpacked image layer to the guest, read-only; returns its
    /// path in the guest. Idempotent.
    pub fn expose_layer(&self, layer: &Path) -> Result<PathBuf> {
        let name = layer
            .file_name()
            .map(|n| n.to_string_lossy().replace(':', "-"))
            .unwrap_or_default();
        let relative = Path::new(LAYERS).join(name);
        let target = self.dir.join(&relative);
        if !is_mountpoint(&target) {
            make_target(&target, true)?;
            bind(layer, &target, true, "sharing an image layer")?;
        }
        Ok(self.guest_dir.join(relative))
    }

    /// Shows a host path (a directory or a single file) of one container to
    /// the guest; read-only when `readonly`. Returns its path in the guest.
    pub fn expose_host_path(
        &self,
        container_id: &str,
        index: usize,
        host: &Path,
        readonly: bool,
    ) -> Result<PathBuf> {
        let meta = std::fs::metadata(host).map_err(|_| ShareError::MissingHostPath(host.into()))?;
        let relative = Path::new(MOUNTS).join(container_id).join(index.to_string());
        let target = self.dir.join(&relative);
        if is_mountpoint(&target) {
            unmount_tree(&target);
        }
        make_target(&target, meta.is_dir())?;
        bind(host, &target, readonly, "sharing a host path")?;
        Ok(self.guest_dir.join(relative))
    }

    /// Takes a container's host paths out of the share.
    pub fn release_container(&self, container_id: &str) {
        let dir = self.dir.join(MOUNTS).join(container_id);
        unmount_tree(&dir);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Unmounts everything in the share and the share itself. The
    /// directory stays (the sandbox's removal deletes it, which is safe
    /// only once this succeeded).
    pub fn teardown(&self) -> Result<()> {
        unmount_tree(&self.dir);
        if mounts_under(&self.dir).is_empty() {
            Ok(())
        } else {
            Err(ShareError::StillMounted(self.dir.clone()))
        }
    }
}

fn make_target(target: &Path, dir: bool) -> Result<()> {
    let io = |source| ShareError::Io {
        what: "creating a mount point in the pod share",
        path: target.to_path_buf(),
        source,
    };
    if dir {
        std::fs::create_dir_all(target).map_err(io)
    } else {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(target)
            .map(drop)
            .map_err(io)
    }
}

fn bind(source: &Path, target: &Path, readonly: bool, what: &'static str) -> Result<()> {
    let err = |source| ShareError::Mount {
        what,
        path: target.to_path_buf(),
        source,
    };
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(err)?;
    if readonly {
        // A bind mount takes read-only only on a remount.
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        if let Err(e) = mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
            let _ = umount2(target, MntFlags::MNT_DETACH);
            return Err(err(e));
        }
    }
    Ok(())
}

/// Mount points at or under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return vec![];
    };
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Lazily unmounts everything at or under `dir`, repeating for paths
/// mounted over more than once.
pub fn unmount_tree(dir: &Path) {
    // A path can be mounted over more than once; unmount until it is not.
    for _ in 0..8 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return;
        }
        for m in mounts {
            if let Err(e) = umount2(&m, MntFlags::MNT_DETACH) {
                tracing::warn!(path = %m.display(), %e, "unmounting from the pod share");
            }
        }
    }
}

pub fn is_mountpoint(path: &Path) -> bool {
    mounts_under(path).iter().any(|m| m == path)
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).ok();
            if let Some(v) = digits.and_then(|d| u8::from_str_radix(d, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape(r"/a\040b\134c"), "/a b\\c");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/trailing\04"), r"/trailing\04");
    }
}
