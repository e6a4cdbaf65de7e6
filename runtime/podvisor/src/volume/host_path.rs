//! A host path a container mounts, opened once: the policy judges where
//! the open file really is (symlinks resolved by the kernel), and the
//! mount is cloned from that same open file, so a symlink swapped in
//! after the check changes nothing.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::share::ShareError;

#[derive(Debug)]
pub struct HostPath {
    fd: OwnedFd,
    resolved: PathBuf,
    is_dir: bool,
}

impl HostPath {
    /// Opens `path` (O_PATH: nothing is read, a FIFO does not block) and
    /// reads back where it is.
    pub fn open(path: &Path) -> Result<HostPath, ShareError> {
        let io = |source| ShareError::Io {
            what: "opening the host path",
            path: path.to_path_buf(),
            source,
        };
        let file = File::options()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => ShareError::MissingHostPath(path.into()),
                _ => io(e),
            })?;
        let fd = OwnedFd::from(file);
        let resolved = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        ))
        .map_err(io)?;
        let meta = nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&fd))
            .map_err(|e| io(e.into()))?;
        Ok(HostPath {
            fd,
            resolved,
            is_dir: meta.st_mode & libc::S_IFMT == libc::S_IFDIR,
        })
    }

    /// Where the opened file is on the host: absolute, no symlinks.
    pub fn resolved(&self) -> &Path {
        &self.resolved
    }

    pub fn is_dir(&self) -> bool {
        self.is_dir
    }

    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_are_resolved_to_what_was_opened() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("to-etc")).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("to-real")).unwrap();
        let canonical = std::fs::canonicalize(&real).unwrap();
        let opened = HostPath::open(&dir.path().join("to-real")).unwrap();
        assert_eq!(opened.resolved(), canonical);
        assert!(opened.is_dir());
        let etc = HostPath::open(&dir.path().join("to-etc/hostname")).unwrap();
        assert_eq!(etc.resolved(), Path::new("/etc/hostname"));
        assert!(!etc.is_dir());
        assert!(matches!(
            HostPath::open(&dir.path().join("missing")),
            Err(ShareError::MissingHostPath(_))
        ));
    }
}
