//! The pod's share: the one host directory its virtiofsd exports. Nothing
//! is copied into it; what the guest may see (image layers, kubelet's
//! host-path volumes) is bind-mounted into it, read-only where it must be.
//!
//! virtiofsd serves the share from its own mount namespace, made when it
//! started. The share is therefore a mount of its own with shared
//! propagation, so binds made later (a container created after boot)
//! propagate into virtiofsd's copy.
//!
//! A host path is never bound into the share straight from the host: a
//! bind of a shared mount joins the host's peer group, so the host's later
//! mounts would reach virtiofsd even for a private mount, and unmounting
//! the share's copy of a submount would unmount the host's own. Instead
//! the host path is cloned into a detached tree that is made private or a
//! slave of the host (CRI's PRIVATE and HOST_TO_CONTAINER), and read-only
//! at the top or throughout, and the finished tree is attached in
//! virtiofsd's mount namespace only, as runc attaches a container's
//! volumes in the container's namespace: virtiofsd answers EROFS where the
//! container must not write, sees the host's later mounts exactly when the
//! container should, and the host can still remove a directory that is a
//! mount point in the copy (the kernel then detaches the copy's mount),
//! which it could not if the copy were in the host's own namespace.
//!
//! virtiofsd serves a read-only peer of the share, so the guest can write
//! nowhere but where a volume lets it.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::host_path::HostPath;
use super::mode::{ReadOnly, VolumeMode};
use super::mount_api::{DetachedTree, TreePropagation};

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
    #[error("{what} {path}: {source}")]
    MountApi {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "host paths are shared with open_tree and mount_setattr, which this kernel lacks \
         (Linux 5.12 or later is needed)"
    )]
    NoMountApi,
    #[error("the pod's virtiofsd is not running, so host paths cannot be shared with its VM")]
    NoServer,
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
    server: Option<Server>,
}

/// The process serving the share (virtiofsd) and where the served
/// directory is in its mount namespace.
#[derive(Clone, Debug)]
struct Server {
    pid: u32,
    served_dir: PathBuf,
}

impl PodShare {
    pub fn new(dir: impl Into<PathBuf>, guest_dir: impl Into<PathBuf>) -> Self {
        PodShare {
            dir: dir.into(),
            guest_dir: guest_dir.into(),
            server: None,
        }
    }

    /// The share as served by process `pid`, which sees the served
    /// directory at `served_dir` (virtiofsd's sandbox makes it its root).
    pub fn served_by(mut self, pid: u32, served_dir: impl Into<PathBuf>) -> Self {
        self.server = Some(Server {
            pid,
            served_dir: served_dir.into(),
        });
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What virtiofsd serves: a read-only peer of the share, beside it.
    /// Mounts made in the share (layers, host paths) appear in it with
    /// their own flags, so the guest can write exactly where they let it
    /// and nowhere else: not in the share's own directories, whatever the
    /// guest kernel does.
    pub fn served_dir(&self) -> PathBuf {
        let name = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.dir.with_file_name(format!("{name}-served"))
    }

    /// Creates the share, makes it a shared mount of its own, and mounts
    /// its read-only peer that virtiofsd serves; done before virtiofsd
    /// starts. Idempotent.
    pub fn prepare(&self) -> Result<()> {
        let served = self.served_dir();
        for dir in [&self.dir, &served] {
            std::fs::create_dir_all(dir).map_err(|source| ShareError::Io {
                what: "creating the pod share",
                path: dir.clone(),
                source,
            })?;
        }
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
        })?;
        if !is_mountpoint(&served) {
            // A bind of a shared mount is its peer: later mounts in the
            // share propagate into it (and from it into virtiofsd's copy).
            bind(&self.dir, &served, true, "mounting the served pod share")?;
        }
        Ok(())
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
            let mode = VolumeMode {
                readonly: ReadOnly::Recursive,
                propagation: TreePropagation::Private,
            };
            let tree = DetachedTree::clone_of(layer)
                .map_err(mount_api_err("cloning the mounts of", layer))?;
            // In the share itself: peers carry it to virtiofsd.
            prepare_tree(tree, layer, mode)?
                .attach(&target)
                .map_err(mount_api_err("mounting in the pod share at", &target))?;
        }
        Ok(self.guest_dir.join(relative))
    }

    /// Shows a host path (a directory or a single file) of one container to
    /// the guest, with the mode's propagation and read-only flags, cloned
    /// from the file that was opened and judged. Returns its path in the
    /// guest.
    pub fn expose_host_path(
        &self,
        container_id: &str,
        index: usize,
        host: &HostPath,
        mode: VolumeMode,
    ) -> Result<PathBuf> {
        let server = self.server.as_ref().ok_or(ShareError::NoServer)?;
        let relative = Path::new(MOUNTS).join(container_id).join(index.to_string());
        make_target(&self.dir.join(&relative), host.is_dir())?;
        let source = host.resolved();
        let tree = DetachedTree::clone_of_fd(host.fd())
            .map_err(mount_api_err("cloning the mounts of", source))?;
        let tree = prepare_tree(tree, source, mode)?;
        let target = server.served_dir.join(&relative);
        tree.attach_in_namespace_of(server.pid, &target)
            .map_err(mount_api_err(
                "mounting in virtiofsd's mount namespace at",
                &target,
            ))?;
        Ok(self.guest_dir.join(relative))
    }

    /// Takes a container's host paths out of the share: removing their
    /// mount points detaches virtiofsd's mounts on them.
    pub fn release_container(&self, container_id: &str) {
        let dir = self.dir.join(MOUNTS).join(container_id);
        unmount_tree(&dir);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Unmounts everything in the share and the share itself. The
    /// directory stays (the sandbox's removal deletes it, which is safe
    /// only once this succeeded).
    pub fn teardown(&self) -> Result<()> {
        for dir in [self.dir.clone(), self.served_dir()] {
            unmount_tree(&dir);
            if !mounts_under(&dir).is_empty() {
                return Err(ShareError::StillMounted(dir));
            }
        }
        Ok(())
    }
}

fn mount_api_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ShareError {
    let path = path.to_path_buf();
    move |source| match source.raw_os_error() {
        Some(libc::ENOSYS) => ShareError::NoMountApi,
        _ => ShareError::MountApi { what, path, source },
    }
}

/// Gives a clone of the mount tree at `source` `mode`'s propagation and
/// read-only flags, and nodev and nosuid, while it is detached: image
/// layers keep their setuid files and host paths may hold setuid files
/// or device nodes, and none of them may ever act on the host.
fn prepare_tree(tree: DetachedTree, source: &Path, mode: VolumeMode) -> Result<DetachedTree> {
    tree.make_nodev_nosuid().map_err(mount_api_err(
        "setting nodev,nosuid on the mounts of",
        source,
    ))?;
    tree.set_propagation(mode.propagation)
        .map_err(mount_api_err(
            "setting the propagation of the mounts of",
            source,
        ))?;
    match mode.readonly {
        ReadOnly::No => Ok(()),
        ReadOnly::Top => tree.make_readonly(false),
        ReadOnly::Recursive => tree.make_readonly(true),
    }
    .map_err(mount_api_err("making read-only the mounts of", source))?;
    Ok(tree)
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

    use std::process::{Child, Command, Stdio};

    /// The mounts a test made and the stand-in for virtiofsd, undone even
    /// when an assertion fails.
    struct Scene {
        base: tempfile::TempDir,
        ns: Child,
    }

    impl Drop for Scene {
        fn drop(&mut self) {
            let _ = self.ns.kill();
            let _ = self.ns.wait();
            unmount_tree(self.base.path());
        }
    }

    fn tmpfs(at: &Path) {
        mount(
            Some("test"),
            at,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
    }

    fn errno_of_creating(path: &Path) -> Option<i32> {
        std::fs::write(path, b"x")
            .err()
            .map(|e| e.raw_os_error().unwrap())
    }

    /// What virtiofsd serves: the share as seen from a mount namespace
    /// made after the share, slave to the host (as virtiofsd's sandbox is).
    #[test]
    fn host_paths_reach_virtiofsd_with_their_read_only_and_propagation_modes() {
        let test = "host_paths_reach_virtiofsd_with_their_read_only_and_propagation_modes";
        if !podvisor_test_skip::require_root(test) {
            return;
        }
        let base = tempfile::Builder::new()
            .prefix("pv-share-")
            .tempdir()
            .unwrap();
        // The host path: a shared mount (as critest makes it) with a tmpfs
        // below it, and a directory the host mounts on later.
        let host = base.path().join("host");
        std::fs::create_dir_all(host.join("tmpfs")).unwrap();
        std::fs::create_dir_all(host.join("late")).unwrap();
        std::fs::create_dir_all(host.join("gone")).unwrap();
        let share = PodShare::new(base.path().join("share"), "/guest");
        share.prepare().unwrap();
        let ns = Command::new("unshare")
            .args(["--mount", "--propagation", "slave", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare (util-linux)");
        let served_dir = share.served_dir();
        let share = share.served_by(ns.id(), served_dir);
        let scene = Scene { base, ns };
        bind(&host, &host, false, "test").unwrap();
        mount(
            None::<&str>,
            &host,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .unwrap();
        tmpfs(&host.join("tmpfs"));
        tmpfs(&host.join("gone"));
        // Wait until the namespace exists (unshare has exec'd sleep).
        let served_root = PathBuf::from(format!("/proc/{}/root", scene.ns.id()));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_link(format!("/proc/{}/exe", scene.ns.id()))
            .map(|e| !e.ends_with("sleep"))
            .unwrap_or(true)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "unshare did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let served_share = served_root.join(share.served_dir().strip_prefix("/").unwrap());
        let served = |index: usize| served_share.join(MOUNTS).join("c").join(index.to_string());

        let modes = [
            (ReadOnly::Top, TreePropagation::Private),
            (ReadOnly::Recursive, TreePropagation::Private),
            (ReadOnly::No, TreePropagation::Slave),
            (ReadOnly::No, TreePropagation::Private),
        ];
        for (index, (readonly, propagation)) in modes.into_iter().enumerate() {
            let mode = VolumeMode {
                readonly,
                propagation,
            };
            let opened = HostPath::open(&host).unwrap();
            let guest = share.expose_host_path("c", index, &opened, mode).unwrap();
            assert_eq!(guest, Path::new("/guest/mounts/c").join(index.to_string()));
        }

        // The share's own directories take nothing; neither do layers.
        let layer = scene.base.path().join("layer");
        std::fs::create_dir_all(layer.join("etc")).unwrap();
        share.expose_layer(&layer).unwrap();
        for path in [
            "f",
            "mounts/f",
            "mounts/c/f",
            "layers/layer/f",
            "layers/layer/etc/f",
        ] {
            assert_eq!(
                errno_of_creating(&served_share.join(path)),
                Some(libc::EROFS),
                "{path}"
            );
        }
        // Neither a layer nor a host path can act on the host with a
        // setuid file or a device node.
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let layer_mount = share.dir().join("layers/layer");
        let options = info
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(layer_mount.to_str().unwrap()))
            .and_then(|l| l.split(' ').nth(5))
            .expect("the layer's bind in the share");
        for flag in ["ro", "nosuid", "nodev"] {
            assert!(
                options.split(',').any(|o| o == flag),
                "{flag} not in {options}"
            );
        }
        let served_info =
            std::fs::read_to_string(format!("/proc/{}/mountinfo", scene.ns.id())).unwrap();
        let host_path_mounts: Vec<&str> = served_info
            .lines()
            .filter(|l| l.contains("/mounts/c/"))
            .collect();
        assert!(!host_path_mounts.is_empty());
        for line in host_path_mounts {
            let options = line.split(' ').nth(5).unwrap();
            assert!(
                options.contains("nosuid") && options.contains("nodev"),
                "{line}"
            );
        }

        // Read-only at the top: the host path refuses, its tmpfs takes it.
        assert_eq!(errno_of_creating(&served(0).join("f")), Some(libc::EROFS));
        assert_eq!(errno_of_creating(&served(0).join("tmpfs/f")), None);
        // Recursively: both refuse.
        assert_eq!(errno_of_creating(&served(1).join("f")), Some(libc::EROFS));
        assert_eq!(
            errno_of_creating(&served(1).join("tmpfs/g")),
            Some(libc::EROFS)
        );
        // Writable: both take it, and the writes land on the host.
        assert_eq!(errno_of_creating(&served(2).join("f")), None);
        assert!(host.join("f").exists());
        assert_eq!(errno_of_creating(&served(3).join("tmpfs/h")), None);
        assert!(host.join("tmpfs/h").exists());

        // The host mounts something after the fact: only the slave sees it.
        tmpfs(&host.join("late"));
        std::fs::write(host.join("late/marker"), b"late").unwrap();
        assert!(served(2).join("late/marker").exists(), "HOST_TO_CONTAINER");
        for private in [0, 1, 3] {
            assert!(
                !served(private).join("late/marker").exists(),
                "PRIVATE mount {private} saw a later host mount"
            );
        }

        // Nothing is mounted in the daemon's namespace, so the host can
        // take a mount away and remove its directory (critest does).
        assert!(mounts_under(&share.dir().join(MOUNTS)).is_empty());
        umount2(&host.join("gone"), MntFlags::MNT_DETACH).unwrap();
        std::fs::remove_dir(host.join("gone")).expect("removing a directory the share copied");
        let served_mounts = || {
            let info =
                std::fs::read_to_string(format!("/proc/{}/mountinfo", scene.ns.id())).unwrap();
            info.lines().filter(|l| l.contains("/mounts/c/")).count()
        };
        assert!(
            served_mounts() >= 4,
            "the served copies are in the server's namespace"
        );

        // Taking the container's paths out unmounts nothing of the host's.
        share.release_container("c");
        assert_eq!(served_mounts(), 0, "the server's copies were left");
        assert!(
            is_mountpoint(&host.join("tmpfs")),
            "the host's tmpfs was unmounted"
        );
        assert!(
            is_mountpoint(&host.join("late")),
            "the host's later mount was unmounted"
        );
        assert!(host.join("tmpfs/h").exists());
        assert!(mounts_under(&share.dir().join(MOUNTS)).is_empty());
        assert!(mounts_under(&share.served_dir().join(MOUNTS)).is_empty());
        share.teardown().unwrap();
        assert!(mounts_under(scene.base.path())
            .iter()
            .all(|m| m.starts_with(&host)));
    }
}
