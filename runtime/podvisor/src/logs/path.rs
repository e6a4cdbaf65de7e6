//! Where a container's CRI log file may be: `log_path` (ContainerConfig)
//! below the pod's `log_directory` (PodSandboxConfig), never outside it.
//!
//! The daemon writes the file as root, so a `log_path` is refused when it
//! is absolute or has a `..`, and the file is opened walking from a
//! descriptor of `log_directory` one component at a time with
//! `O_NOFOLLOW`: a symlink anywhere below the directory (planted before or
//! swapped in while we walk) is refused, never followed. Directories
//! kubelet did not make yet (`<log_directory>/<container>/`) are made the
//! same way, beneath the directory descriptor.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, mkdirat, Mode};

#[derive(Debug, thiserror::Error)]
pub enum LogPathError {
    #[error("log_path {path:?} is absolute: log_path must be relative to the pod's log_directory")]
    Absolute { path: String },
    #[error("log_path {path:?} contains '..': log_path must stay inside the pod's log_directory")]
    ParentDir { path: String },
    #[error("log_path {path:?} names no file in the pod's log_directory")]
    NoFile { path: String },
    #[error("log_path {path:?} contains a NUL byte")]
    Nul { path: String },
    #[error("recorded log file {path:?} is not below the pod's log_directory {dir:?}")]
    NotBelow { path: String, dir: String },
    #[error(
        "log_path {path:?} needs the pod's log_directory to be an absolute path, and it is {dir:?} \
         (kubelet sets it in RunPodSandbox)"
    )]
    NoDirectory { path: String, dir: String },
    #[error(
        "log_path {path:?}: {component:?} in the pod's log_directory is a symlink: log files are \
         never reached through symlinks"
    )]
    Symlink { path: String, component: String },
    #[error("log_path {path:?}: {component:?} in the pod's log_directory is not a directory")]
    NotDirectory { path: String, component: String },
    #[error("log_path {path:?} exists and is not a regular file with one link")]
    NotRegular { path: String },
    #[error("log file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl LogPathError {
    /// The request's fault (InvalidArgument), not the node's.
    pub fn is_invalid_input(&self) -> bool {
        !matches!(self, LogPathError::Io { .. })
    }
}

type Result<T, E = LogPathError> = std::result::Result<T, E>;

/// A `log_path` checked to be a plain relative path below an absolute
/// `log_directory`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogPath {
    dir: PathBuf,
    /// The components of `log_path`, the file name last; never empty.
    components: Vec<PathBuf>,
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

fn owned(fd: i32) -> OwnedFd {
    // SAFETY: fd was just returned by a successful open and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

impl LogPath {
    /// Checks `log_path` lexically against `log_directory`.
    pub fn new(log_directory: &str, log_path: &str) -> Result<LogPath> {
        let path = || log_path.to_string();
        let rel = Path::new(log_path);
        if log_path.contains('\0') {
            return Err(LogPathError::Nul { path: path() });
        }
        if rel.is_absolute() {
            return Err(LogPathError::Absolute { path: path() });
        }
        let mut components = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(part) => components.push(PathBuf::from(part)),
                Component::CurDir => {}
                Component::ParentDir => return Err(LogPathError::ParentDir { path: path() }),
                Component::RootDir | Component::Prefix(_) => {
                    return Err(LogPathError::Absolute { path: path() })
                }
            }
        }
        if components.is_empty() || log_path.ends_with('/') {
            return Err(LogPathError::NoFile { path: path() });
        }
        if !Path::new(log_directory).is_absolute() {
            return Err(LogPathError::NoDirectory {
                path: path(),
                dir: log_directory.to_string(),
            });
        }
        Ok(LogPath {
            dir: PathBuf::from(log_directory),
            components,
        })
    }

    /// A `log_path` as a record keeps it (joined to the directory), split
    /// again and checked as [`LogPath::new`] does.
    pub fn from_full(log_directory: &str, full: &Path) -> Result<LogPath> {
        let rel = full
            .strip_prefix(log_directory)
            .map_err(|_| LogPathError::NotBelow {
                path: full.to_string_lossy().into_owned(),
                dir: log_directory.to_string(),
            })?;
        LogPath::new(log_directory, &rel.to_string_lossy())
    }

    /// `log_directory/log_path`, as CRI reports it.
    pub fn full(&self) -> PathBuf {
        self.components
            .iter()
            .fold(self.dir.clone(), |p, c| p.join(c))
    }

    fn shown(&self) -> String {
        self.components
            .iter()
            .map(|c| c.to_string_lossy())
            .collect::<Vec<_>>()
            .join("/")
    }

    fn io(&self) -> impl Fn(Errno) -> LogPathError + '_ {
        move |e| LogPathError::Io {
            path: self.full(),
            source: e.into(),
        }
    }

    /// Why opening `name` in `dirfd` as a directory failed with `e`.
    fn refusal(&self, dirfd: i32, name: &OsStr, e: Errno) -> LogPathError {
        let component = name.to_string_lossy().into_owned();
        match fstatat(Some(dirfd), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => LogPathError::Symlink {
                path: self.shown(),
                component,
            },
            Ok(_) if matches!(e, Errno::ENOTDIR | Errno::ELOOP) => LogPathError::NotDirectory {
                path: self.shown(),
                component,
            },
            _ => self.io()(e),
        }
    }

    /// Walks the directories of `log_path` from a descriptor of the log
    /// directory, making missing ones when `create`. `None`: one is missing
    /// (and `create` is false).
    fn parent(&self, create: bool) -> Result<Option<OwnedFd>> {
        let root = match nix::fcntl::open(
            &self.dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => owned(fd),
            Err(Errno::ENOENT) if !create => return Ok(None),
            Err(Errno::ENOENT) => {
                // The log directory itself is kubelet's (trusted); only
                // what is below it comes from log_path.
                std::fs::create_dir_all(&self.dir).map_err(|source| LogPathError::Io {
                    path: self.dir.clone(),
                    source,
                })?;
                return self.parent(create);
            }
            Err(e) => return Err(self.io()(e)),
        };
        let mut cur = root;
        let (_, dirs) = self.components.split_last().expect("never empty");
        for name in dirs {
            let name = name.as_os_str();
            let dirfd = cur.as_raw_fd();
            cur = match openat(Some(dirfd), name, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => owned(fd),
                Err(Errno::ENOENT) if !create => return Ok(None),
                Err(Errno::ENOENT) => {
                    match mkdirat(Some(dirfd), name, Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(self.io()(e)),
                    }
                    openat(Some(dirfd), name, DIR_FLAGS, Mode::empty())
                        .map(owned)
                        .map_err(|e| self.refusal(dirfd, name, e))?
                }
                Err(e) => return Err(self.refusal(dirfd, name, e)),
            };
        }
        Ok(Some(cur))
    }

    fn file_name(&self) -> &OsStr {
        self.components.last().expect("never empty").as_os_str()
    }

    /// What CreateContainer checks before anything exists: nothing already
    /// on the way is a symlink, and the file, if there, is a plain file.
    /// Creates nothing.
    pub fn check_existing(&self) -> Result<()> {
        let Some(dir) = self.parent(false)? else {
            return Ok(());
        };
        match fstatat(
            Some(dir.as_raw_fd()),
            self.file_name(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(self.io()(e)),
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => Err(LogPathError::Symlink {
                path: self.shown(),
                component: self.file_name().to_string_lossy().into_owned(),
            }),
            Ok(st) if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_nlink != 1 => {
                Err(LogPathError::NotRegular { path: self.shown() })
            }
            Ok(_) => Ok(()),
        }
    }

    /// Opens the log file for appending, creating it (0640) and its
    /// directories below the log directory; never follows a symlink there.
    pub fn open(&self) -> Result<File> {
        let dir = self.parent(true)?.expect("created");
        let name = self.file_name();
        // O_NONBLOCK: a FIFO planted at the path must not hang the daemon;
        // it is refused just below.
        let flags = OFlag::O_WRONLY
            | OFlag::O_APPEND
            | OFlag::O_CREAT
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_CLOEXEC;
        let fd = openat(
            Some(dir.as_raw_fd()),
            name,
            flags,
            Mode::from_bits_truncate(0o640),
        )
        .map(owned)
        .map_err(|e| {
            let st = fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW);
            match st.map(|st| st.st_mode & libc::S_IFMT) {
                Ok(libc::S_IFLNK) => LogPathError::Symlink {
                    path: self.shown(),
                    component: name.to_string_lossy().into_owned(),
                },
                Ok(kind) if kind != libc::S_IFREG => {
                    LogPathError::NotRegular { path: self.shown() }
                }
                _ => self.io()(e),
            }
        })?;
        let st = fstat(fd.as_raw_fd()).map_err(self.io())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_nlink != 1 {
            return Err(LogPathError::NotRegular { path: self.shown() });
        }
        Ok(File::from(fd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn dir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("pv-logs-")
            .tempdir()
            .unwrap()
    }

    #[test]
    fn lexical_rules() {
        let ok = LogPath::new("/var/log/pods/p", "c/0.log").unwrap();
        assert_eq!(ok.full(), Path::new("/var/log/pods/p/c/0.log"));
        assert_eq!(
            LogPath::new("/logs", "./c//0.log").unwrap().full(),
            Path::new("/logs/c/0.log")
        );
        let err = |dir: &str, p: &str| LogPath::new(dir, p).unwrap_err().to_string();
        assert!(err("/logs", "/etc/x.log").contains("is absolute"));
        assert!(err("/logs", "../x.log").contains("contains '..'"));
        assert!(err("/logs", "c/../../x.log").contains("contains '..'"));
        assert!(err("/logs", "").contains("names no file"));
        assert!(err("/logs", "c/").contains("names no file"));
        assert!(err("", "x.log").contains("absolute path"));
        assert!(err("logs", "x.log").contains("absolute path"));
        assert!(err("/logs", "a\0b").contains("NUL"));
    }

    #[test]
    fn records_split_back_into_the_same_path() {
        let p = LogPath::new("/logs/pod", "c/1.log").unwrap();
        assert_eq!(LogPath::from_full("/logs/pod", &p.full()).unwrap(), p);
        let err = LogPath::from_full("/logs/other", &p.full()).unwrap_err();
        assert!(
            matches!(&err, LogPathError::NotBelow { dir, .. } if dir == "/logs/other"),
            "{err:?}"
        );
    }

    #[test]
    fn missing_directories_are_made_below_the_log_directory() {
        let d = dir();
        let p = LogPath::new(d.path().to_str().unwrap(), "c/sub/0.log").unwrap();
        p.check_existing().unwrap();
        assert!(!d.path().join("c").exists(), "the check created something");
        use std::io::Write;
        p.open().unwrap().write_all(b"line\n").unwrap();
        p.open().unwrap().write_all(b"more\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("c/sub/0.log")).unwrap(),
            "line\nmore\n"
        );
        p.check_existing().unwrap();
    }

    #[test]
    fn symlinks_below_the_log_directory_are_never_followed() {
        let d = dir();
        let outside = dir();
        symlink(outside.path(), d.path().join("evil")).unwrap();
        std::fs::create_dir(d.path().join("c")).unwrap();
        symlink(outside.path().join("f.log"), d.path().join("c/0.log")).unwrap();
        let root = d.path().to_str().unwrap();
        for (rel, component) in [("evil/x.log", "evil"), ("c/0.log", "0.log")] {
            let p = LogPath::new(root, rel).unwrap();
            for err in [p.check_existing().unwrap_err(), p.open().unwrap_err()] {
                assert!(
                    matches!(&err, LogPathError::Symlink { component: c, .. } if c == component),
                    "{rel}: {err}"
                );
                assert!(err.is_invalid_input());
            }
        }
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        // A plain file on the way, and a FIFO as the log, are refused too.
        std::fs::write(d.path().join("file"), b"").unwrap();
        let p = LogPath::new(root, "file/x.log").unwrap();
        assert!(matches!(p.open(), Err(LogPathError::NotDirectory { .. })));
        nix::unistd::mkfifo(&d.path().join("fifo.log"), Mode::from_bits_truncate(0o600)).unwrap();
        let p = LogPath::new(root, "fifo.log").unwrap();
        assert!(matches!(
            p.check_existing(),
            Err(LogPathError::NotRegular { .. })
        ));
        assert!(matches!(p.open(), Err(LogPathError::NotRegular { .. })));
    }
}
