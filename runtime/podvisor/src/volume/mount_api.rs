//! Linux's file-descriptor mount API (open_tree, mount_setattr,
//! move_mount; Linux 5.12 or later), through raw syscalls: nix has none
//! of them.
//!
//! A host path is cloned into a detached tree in the daemon's mount
//! namespace (where kubelet's mounts are), given its propagation and
//! read-only flags while nothing can see it yet, and only then attached,
//! possibly in another process's mount namespace (virtiofsd's).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// How a tree receives mount events from the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TreePropagation {
    /// Receives nothing: what was mounted when it was cloned stays.
    Private,
    /// Receives mounts and unmounts of the source's peer group (when the
    /// source is a shared mount) and sends nothing back.
    Slave,
}

/// A detached copy of a mount tree; unmounted when dropped unattached.
#[derive(Debug)]
pub struct DetachedTree(OwnedFd);

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

/// Turns a raw syscall return into the errno on failure.
fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

impl DetachedTree {
    /// Clones the mount tree at `path` (with every mount below it), as a
    /// recursive bind mount would, without attaching it anywhere.
    pub fn clone_of(path: &Path) -> io::Result<Self> {
        let path = c_path(path)?;
        let flags =
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_RECURSIVE as libc::c_uint;
        // SAFETY: open_tree reads a NUL-terminated path that lives across
        // the call; it returns a new file descriptor or -1.
        let fd = check(unsafe {
            libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags)
        })?;
        let fd = i32::try_from(fd).map_err(io::Error::other)?;
        // SAFETY: the descriptor was just returned to us and nothing else
        // owns it.
        Ok(DetachedTree(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Clones the mount tree at the open file `fd` (an O_PATH descriptor
    /// will do), as [`DetachedTree::clone_of`] does for a path.
    pub fn clone_of_fd(fd: BorrowedFd<'_>) -> io::Result<Self> {
        let flags = libc::OPEN_TREE_CLONE
            | libc::OPEN_TREE_CLOEXEC
            | libc::AT_RECURSIVE as libc::c_uint
            | libc::AT_EMPTY_PATH as libc::c_uint;
        // SAFETY: the path is an empty C string and the descriptor is
        // borrowed for the call; open_tree returns a new descriptor or -1.
        let new = check(unsafe {
            libc::syscall(libc::SYS_open_tree, fd.as_raw_fd(), c"".as_ptr(), flags)
        })?;
        let new = i32::try_from(new).map_err(io::Error::other)?;
        // SAFETY: the descriptor was just returned to us and nothing else
        // owns it.
        Ok(DetachedTree(unsafe { OwnedFd::from_raw_fd(new) }))
    }

    fn set_attr(&self, attr: &libc::mount_attr, recursive: bool) -> io::Result<()> {
        let flags = libc::AT_EMPTY_PATH | if recursive { libc::AT_RECURSIVE } else { 0 };
        // SAFETY: the path is an empty C string and `attr` a live
        // mount_attr whose size is passed with it; the kernel only reads
        // them.
        check(unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                self.0.as_raw_fd(),
                c"".as_ptr(),
                flags,
                attr as *const libc::mount_attr,
                std::mem::size_of::<libc::mount_attr>(),
            )
        })
        .map(drop)
    }

    /// Sets the propagation of every mount in the tree.
    pub fn set_propagation(&self, propagation: TreePropagation) -> io::Result<()> {
        let kind = match propagation {
            TreePropagation::Private => libc::MS_PRIVATE,
            TreePropagation::Slave => libc::MS_SLAVE,
        };
        let attr = libc::mount_attr {
            attr_set: 0,
            attr_clr: 0,
            propagation: kind,
            userns_fd: 0,
        };
        self.set_attr(&attr, true)
    }

    /// Makes the top mount read-only, or every mount of the tree when
    /// `recursive`.
    pub fn make_readonly(&self, recursive: bool) -> io::Result<()> {
        let attr = libc::mount_attr {
            attr_set: libc::MOUNT_ATTR_RDONLY,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        self.set_attr(&attr, recursive)
    }

    /// Sets nodev and nosuid on every mount of the tree: nothing in it can
    /// open a device or gain privileges through it on the host (what the
    /// guest makes of the files' modes is the guest's).
    pub fn make_nodev_nosuid(&self) -> io::Result<()> {
        let attr = libc::mount_attr {
            attr_set: libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_NOSUID,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        self.set_attr(&attr, true)
    }

    /// Mounts the tree on `target`, which must exist (a directory for a
    /// directory tree, a file for a file).
    pub fn attach(self, target: &Path) -> io::Result<()> {
        let target = c_path(target)?;
        // SAFETY: both paths are NUL-terminated strings that live across
        // the call; the descriptor is ours.
        check(unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                self.0.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                libc::MOVE_MOUNT_F_EMPTY_PATH,
            )
        })
        .map(drop)
    }
}

impl DetachedTree {
    /// Mounts the tree on `target` as process `pid` sees it, in that
    /// process's mount namespace only: nothing is mounted in the daemon's
    /// own namespace. `target` is resolved from the namespace's root.
    pub fn attach_in_namespace_of(self, pid: u32, target: &Path) -> io::Result<()> {
        let ns = File::open(format!("/proc/{pid}/ns/mnt"))?;
        let target = target.to_path_buf();
        // setns into a mount namespace changes the calling thread's root
        // and working directory, so it runs on a thread of its own that
        // first stops sharing them with the daemon's other threads, and
        // then ends.
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
                    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNS)?;
                    self.attach(&target)
                })
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the mount thread panicked")))
        })
    }
}
