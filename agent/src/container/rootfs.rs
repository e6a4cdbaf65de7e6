//! A container's root filesystem: the read-only layers the runtime shared
//! into the guest, stacked under a writable upper layer in guest storage.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{AgentError, Result};
use podvisor_proto::Rootfs;

/// A mounted rootfs; [`RootfsMount::unmount`] undoes it.
#[derive(Debug)]
pub struct RootfsMount {
    target: PathBuf,
}

impl RootfsMount {
    pub fn path(&self) -> &Path {
        &self.target
    }

    pub fn unmount(&self) -> Result<()> {
        match umount2(&self.target, MntFlags::empty()) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
            // Still busy (a process we do not know holds it): detach it so
            // the container can be deleted; the kernel frees it when unused.
            Err(nix::Error::EBUSY) => umount2(&self.target, MntFlags::MNT_DETACH)
                .map_err(|e| AgentError::sys(format!("umount {}", self.target.display()), e)),
            Err(e) => Err(AgentError::sys(
                format!("umount {}", self.target.display()),
                e,
            )),
        }
    }
}

/// Mounts the rootfs at `bundle/rootfs`, using `bundle/upper` and
/// `bundle/work` for the writable layer.
pub fn mount_rootfs(bundle: &Path, rootfs: &Rootfs) -> Result<RootfsMount> {
    if rootfs.lower_dirs.is_empty() {
        return Err(AgentError::InvalidArgument(
            "rootfs.lower_dirs is empty: the container has no root filesystem".into(),
        ));
    }
    for dir in &rootfs.lower_dirs {
        let path = Path::new(dir);
        if !path.is_absolute() {
            return Err(AgentError::InvalidArgument(format!(
                "rootfs layer {dir:?} is not an absolute path"
            )));
        }
        if dir.contains(':') || dir.contains(',') {
            return Err(AgentError::InvalidArgument(format!(
                "rootfs layer {dir:?} contains ':' or ',', which overlayfs cannot take"
            )));
        }
        if !path.is_dir() {
            return Err(AgentError::Rootfs {
                path: path.to_path_buf(),
                reason: "does not exist or is not a directory".into(),
            });
        }
    }
    let target = bundle.join("rootfs");
    fs::create_dir_all(&target).map_err(|e| AgentError::io("create rootfs dir", e))?;

    if rootfs.writable_in_place {
        if rootfs.lower_dirs.len() != 1 {
            return Err(AgentError::InvalidArgument(
                "rootfs.writable_in_place takes exactly one directory".into(),
            ));
        }
        mount(
            Some(rootfs.lower_dirs[0].as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| AgentError::sys("bind-mount rootfs", e))?;
        return Ok(RootfsMount { target });
    }

    let upper = bundle.join("upper");
    let work = bundle.join("work");
    for dir in [&upper, &work] {
        fs::create_dir_all(dir).map_err(|e| AgentError::io("create overlay dir", e))?;
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        rootfs.lower_dirs.join(":"),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        &target,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|e| AgentError::Rootfs {
        path: target.clone(),
        reason: format!("overlay mount failed: {e}"),
    })?;
    Ok(RootfsMount { target })
}
