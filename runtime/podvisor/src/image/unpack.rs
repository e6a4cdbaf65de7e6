//! One layer tar → one directory that overlayfs can stack as a lower layer.
//!
//! The layer is unpacked on its own, not on top of its parents, so the
//! directory holds exactly the layer's diff: OCI whiteouts become overlay
//! whiteouts (`.wh.NAME` → character device 0/0 `NAME`, `.wh..wh..opq` →
//! `trusted.overlay.opaque=y` on the directory), everything else keeps its
//! type, owner, mode (setuid/setgid/sticky too), mtime and xattrs, except:
//! - device nodes are dropped (logged): the store is on the host, and a
//!   layer must not put a device of the host's in it; a whiteout already in
//!   overlay form (a 0/0 character device) is kept, it is no device;
//! - `security.*` xattrs (file capabilities, LSM labels) and overlay's own
//!   `trusted.overlay.*` are not copied: a layer does not set them on the
//!   host's files.
//!
//! Setuid files stay setuid (they matter inside the guest); every host
//! mount of a layer is nosuid and nodev (`volume::share`).
//!
//! Every path is resolved component by component from a directory fd with
//! `O_NOFOLLOW`: an entry under a symlink, or with `..` or an absolute path,
//! is refused, so nothing is ever written outside the layer directory.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{
    fchmod, fchmodat, fstatat, futimens, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag,
    UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use sha2::{Digest, Sha256};
use tar::EntryType;

/// The xattr overlayfs reads to make a lower directory hide what is below it.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The layer is malformed or hostile (escaping paths, missing link
    /// targets, unknown entry types).
    #[error("layer entry {path:?}: {reason}")]
    BadEntry { path: String, reason: String },
    #[error("layer entry {path:?}: {source}")]
    Entry {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("reading layer: {0}")]
    Read(#[source] io::Error),
    #[error("uncompressed layer has digest {actual}, the image config says {expected}")]
    DiffIdMismatch { expected: String, actual: String },
    #[error("unsupported layer media type {0}")]
    MediaType(String),
}

type Result<T, E = UnpackError> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// sha256 of the uncompressed tar: the layer's diff id.
    pub diff_id: String,
    pub entries: u64,
}

/// Whether `media_type` is a layer we know how to unpack.
pub fn is_layer_media_type(media_type: &str) -> bool {
    let known = [
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.foreign.diff.tar",
    ];
    known.iter().any(|k| {
        media_type
            .strip_prefix(k)
            .is_some_and(|rest| matches!(rest, "" | "+gzip" | "+zstd" | ".gzip"))
    })
}

/// Unpacks the layer blob at `blob` into `dest` (an existing, empty
/// directory) and returns its diff id, checked against `expected_diff_id`
/// when given. The compression is recognised by its magic bytes, as
/// containerd does, since media types are sometimes wrong.
pub fn unpack_layer(
    blob: &Path,
    media_type: &str,
    expected_diff_id: Option<&str>,
    dest: &Path,
) -> Result<Unpacked> {
    if !is_layer_media_type(media_type) {
        return Err(UnpackError::MediaType(media_type.to_string()));
    }
    let file = File::open(blob).map_err(UnpackError::Read)?;
    let mut input = BufReader::with_capacity(256 * 1024, file);
    let magic = input.fill_buf().map_err(UnpackError::Read)?;
    let tar: Box<dyn Read> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(input))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(input).map_err(UnpackError::Read)?)
    } else {
        Box::new(input)
    };
    unpack_tar(tar, expected_diff_id, dest)
}

/// Unpacks an uncompressed tar stream into `dest`.
pub fn unpack_tar(tar: impl Read, expected_diff_id: Option<&str>, dest: &Path) -> Result<Unpacked> {
    let mut hashing = HashingReader {
        inner: tar,
        hasher: Sha256::new(),
    };
    let root = Root::open(dest)?;
    let mut dir_times = Vec::new();
    let mut entries = 0;
    for entry in tar::Archive::new(&mut hashing)
        .entries()
        .map_err(UnpackError::Read)?
    {
        let entry = entry.map_err(UnpackError::Read)?;
        entries += 1;
        root.entry(entry, &mut dir_times)?;
    }
    // The diff id covers the whole stream, padding after the end marker too.
    io::copy(&mut hashing, &mut io::sink()).map_err(UnpackError::Read)?;
    // Directory mtimes last: creating their children changed them.
    for (comps, mtime) in dir_times.iter().rev() {
        root.set_dir_time(comps, mtime)?;
    }
    let diff_id = format!("sha256:{}", hex::encode(hashing.hasher.finalize()));
    if let Some(expected) = expected_diff_id {
        if expected != diff_id {
            return Err(UnpackError::DiffIdMismatch {
                expected: expected.to_string(),
                actual: diff_id,
            });
        }
    }
    Ok(Unpacked { diff_id, entries })
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The header fields we apply, PAX overrides included.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: TimeSpec,
    xattrs: Vec<(CString, Vec<u8>)>,
}

/// The layer directory, and every path operation confined to it.
struct Root {
    fd: OwnedFd,
}

fn bad(path: &[u8], reason: impl Into<String>) -> UnpackError {
    UnpackError::BadEntry {
        path: String::from_utf8_lossy(path).into_owned(),
        reason: reason.into(),
    }
}

fn io_err(path: &[u8], e: impl Into<io::Error>) -> UnpackError {
    UnpackError::Entry {
        path: String::from_utf8_lossy(path).into_owned(),
        source: e.into(),
    }
}

/// The components of a tar path, refusing anything that could leave the
/// layer directory.
fn components(path: &[u8]) -> Result<Vec<OsString>> {
    if path.starts_with(b"/") {
        return Err(bad(path, "absolute path"));
    }
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(bad(path, "path contains '..'")),
            c => out.push(OsStr::from_bytes(c).to_os_string()),
        }
    }
    Ok(out)
}

fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: fd was just returned by a successful open and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

impl Root {
    fn open(dest: &Path) -> Result<Root> {
        let fd = nix::fcntl::open(dest, DIR_FLAGS, Mode::empty())
            .map_err(|e| io_err(dest.as_os_str().as_bytes(), e))?;
        Ok(Root { fd: owned(fd) })
    }

    /// Opens the directory `comps` below the root without following any
    /// symlink, creating missing directories (0755, root) when `create`.
    fn open_dir(&self, path: &[u8], comps: &[OsString], create: bool) -> Result<OwnedFd> {
        let mut cur = owned(
            openat(Some(self.fd.as_raw_fd()), ".", DIR_FLAGS, Mode::empty())
                .map_err(|e| io_err(path, e))?,
        );
        for c in comps {
            let dirfd = Some(cur.as_raw_fd());
            let next = match openat(dirfd, c.as_os_str(), DIR_FLAGS, Mode::empty()) {
                Ok(fd) => owned(fd),
                // A parent the layer does not list (tools that write layers
                // list them all; this is for hand-made ones).
                Err(Errno::ENOENT) if create => {
                    mkdirat(dirfd, c.as_os_str(), Mode::from_bits_truncate(0o755))
                        .map_err(|e| io_err(path, e))?;
                    let fd = owned(
                        openat(dirfd, c.as_os_str(), DIR_FLAGS, Mode::empty())
                            .map_err(|e| io_err(path, e))?,
                    );
                    // Not left to the umask: every user must be able to get through.
                    fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(0o755))
                        .map_err(|e| io_err(path, e))?;
                    fd
                }
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    let symlink = fstatat(dirfd, c.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK);
                    let why = if symlink {
                        "is a symlink; refusing to follow it"
                    } else {
                        "is not a directory"
                    };
                    return Err(bad(path, format!("{c:?} {why}")));
                }
                Err(e) => return Err(io_err(path, e)),
            };
            cur = next;
        }
        Ok(cur)
    }

    fn entry<R: Read>(
        &self,
        mut entry: tar::Entry<'_, R>,
        dir_times: &mut Vec<(Vec<OsString>, TimeSpec)>,
    ) -> Result<()> {
        let path = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader) {
            return Ok(());
        }
        let meta = meta(&mut entry, &path)?;
        let comps = components(&path)?;
        let Some((name, parents)) = comps.split_last() else {
            // The layer root itself ("./").
            if !kind.is_dir() {
                return Err(bad(&path, "the layer root must be a directory"));
            }
            apply_fd_meta(&self.fd, &meta, &path)?;
            dir_times.push((Vec::new(), meta.mtime));
            return Ok(());
        };
        let dir = self.open_dir(&path, parents, true)?;
        let dirfd = dir.as_raw_fd();
        let name_bytes = name.as_bytes();

        if name_bytes == OPAQUE_WHITEOUT.as_bytes() {
            return set_xattr_fd(dirfd, OPAQUE_XATTR, b"y").map_err(|e| io_err(&path, e));
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                // Other AUFS metadata (.wh..wh.plnk, ...): nothing for overlay.
                return Ok(());
            }
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(bad(&path, "whiteout without a name"));
            }
            let hidden = OsStr::from_bytes(hidden);
            remove_existing(dirfd, hidden).map_err(|e| io_err(&path, e))?;
            mknodat(Some(dirfd), hidden, SFlag::S_IFCHR, Mode::empty(), 0)
                .map_err(|e| io_err(&path, e))?;
            return Ok(());
        }

        match kind {
            EntryType::Directory => {
                match fstatat(Some(dirfd), name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {}
                    Ok(_) => {
                        remove_existing(dirfd, name).map_err(|e| io_err(&path, e))?;
                        mkdirat(
                            Some(dirfd),
                            name.as_os_str(),
                            Mode::from_bits_truncate(0o700),
                        )
                        .map_err(|e| io_err(&path, e))?;
                    }
                    Err(Errno::ENOENT) => mkdirat(
                        Some(dirfd),
                        name.as_os_str(),
                        Mode::from_bits_truncate(0o700),
                    )
                    .map_err(|e| io_err(&path, e))?,
                    Err(e) => return Err(io_err(&path, e)),
                }
                let fd = owned(
                    openat(Some(dirfd), name.as_os_str(), DIR_FLAGS, Mode::empty())
                        .map_err(|e| io_err(&path, e))?,
                );
                apply_fd_meta(&fd, &meta, &path)?;
                dir_times.push((comps.clone(), meta.mtime));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                remove_existing(dirfd, name).map_err(|e| io_err(&path, e))?;
                let fd = openat(
                    Some(dirfd),
                    name.as_os_str(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| io_err(&path, e))?;
                let mut file = File::from(owned(fd));
                io::copy(&mut entry, &mut file).map_err(|e| io_err(&path, e))?;
                file.flush().map_err(|e| io_err(&path, e))?;
                let fd = OwnedFd::from(file);
                apply_fd_meta(&fd, &meta, &path)?;
                futimens(fd.as_raw_fd(), &meta.mtime, &meta.mtime).map_err(|e| io_err(&path, e))?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad(&path, "symlink without a target"))?
                    .into_owned();
                remove_existing(dirfd, name).map_err(|e| io_err(&path, e))?;
                // The target is not checked: it is only ever resolved inside the
                // container's root, never by us.
                symlinkat(OsStr::from_bytes(&target), Some(dirfd), name.as_os_str())
                    .map_err(|e| io_err(&path, e))?;
                self.apply_at_meta(dirfd, name, &meta, &path, false)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad(&path, "hardlink without a target"))?
                    .into_owned();
                let tcomps = components(&target)?;
                let Some((tname, tparents)) = tcomps.split_last() else {
                    return Err(bad(&path, "hardlink to the layer root"));
                };
                if tcomps == comps {
                    return Ok(());
                }
                let tdir = self.open_dir(&path, tparents, false).map_err(|_| {
                    bad(
                        &path,
                        format!(
                            "hardlink target {:?} is not in the layer",
                            String::from_utf8_lossy(&target)
                        ),
                    )
                })?;
                match fstatat(
                    Some(tdir.as_raw_fd()),
                    tname.as_os_str(),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                ) {
                    Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                        return Err(bad(&path, "hardlink to a directory"))
                    }
                    Ok(_) => {}
                    Err(_) => {
                        return Err(bad(
                            &path,
                            format!(
                                "hardlink target {:?} is not in the layer",
                                String::from_utf8_lossy(&target)
                            ),
                        ))
                    }
                }
                remove_existing(dirfd, name).map_err(|e| io_err(&path, e))?;
                // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink.
                linkat(
                    Some(tdir.as_raw_fd()),
                    tname.as_os_str(),
                    Some(dirfd),
                    name.as_os_str(),
                    AtFlags::empty(),
                )
                .map_err(|e| io_err(&path, e))?;
            }
            EntryType::Char | EntryType::Block if !is_overlay_whiteout(&entry, kind, &path)? => {
                tracing::warn!(
                    path = %String::from_utf8_lossy(&path),
                    "layer entry is a device node; dropped (a pod VM gets only its own devices)"
                );
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (sflag, dev) = match kind {
                    EntryType::Fifo => (SFlag::S_IFIFO, 0),
                    _ => {
                        let major = entry
                            .header()
                            .device_major()
                            .map_err(|e| io_err(&path, e))?
                            .unwrap_or(0);
                        let minor = entry
                            .header()
                            .device_minor()
                            .map_err(|e| io_err(&path, e))?
                            .unwrap_or(0);
                        let sflag = if kind == EntryType::Char {
                            SFlag::S_IFCHR
                        } else {
                            SFlag::S_IFBLK
                        };
                        (sflag, libc::makedev(major, minor))
                    }
                };
                remove_existing(dirfd, name).map_err(|e| io_err(&path, e))?;
                mknodat(
                    Some(dirfd),
                    name.as_os_str(),
                    sflag,
                    Mode::from_bits_truncate(0o600),
                    dev,
                )
                .map_err(|e| io_err(&path, e))?;
                self.apply_at_meta(dirfd, name, &meta, &path, true)?;
            }
            other => {
                return Err(bad(&path, format!("unsupported entry type {other:?}")));
            }
        }
        Ok(())
    }

    /// Owner, mode, xattrs and times of something we must not open (a
    /// symlink, a device, a FIFO), by name in its directory.
    fn apply_at_meta(
        &self,
        dirfd: RawFd,
        name: &OsStr,
        meta: &Meta,
        path: &[u8],
        chmod: bool,
    ) -> Result<()> {
        fchownat(
            Some(dirfd),
            name,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| io_err(path, e))?;
        if chmod {
            // Not a symlink (those have no mode), so following is harmless.
            fchmodat(
                Some(dirfd),
                name,
                Mode::from_bits_truncate(meta.mode),
                FchmodatFlags::FollowSymlink,
            )
            .map_err(|e| io_err(path, e))?;
        }
        if !meta.xattrs.is_empty() {
            // lsetxattr through the directory fd's /proc link: no path we
            // resolve ourselves, and the final component is not followed.
            let mut p = format!("/proc/self/fd/{dirfd}/").into_bytes();
            p.extend_from_slice(name.as_bytes());
            let p = CString::new(p).map_err(|_| bad(path, "NUL in name"))?;
            for (key, value) in &meta.xattrs {
                // The kernel allows user.* only on files and directories.
                if key.as_bytes().starts_with(b"user.") {
                    continue;
                }
                // SAFETY: valid C strings and a buffer of the given length.
                let rc = unsafe {
                    libc::lsetxattr(
                        p.as_ptr(),
                        key.as_ptr(),
                        value.as_ptr().cast(),
                        value.len(),
                        0,
                    )
                };
                if rc != 0 {
                    xattr_failed(key, path, io::Error::last_os_error())?;
                }
            }
        }
        utimensat(
            Some(dirfd),
            name,
            &meta.mtime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| io_err(path, e))
    }

    fn set_dir_time(&self, comps: &[OsString], mtime: &TimeSpec) -> Result<()> {
        let shown = comps
            .iter()
            .map(|c| c.to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        // A later entry may have replaced or whited out the directory.
        let Ok(dir) = self.open_dir(shown.as_bytes(), comps, false) else {
            return Ok(());
        };
        futimens(dir.as_raw_fd(), mtime, mtime).map_err(|e| io_err(shown.as_bytes(), e))
    }
}

/// Owner first (chown clears setuid bits and file capabilities), then mode,
/// then xattrs.
fn apply_fd_meta(fd: &OwnedFd, meta: &Meta, path: &[u8]) -> Result<()> {
    let raw = fd.as_raw_fd();
    fchown(
        raw,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
    )
    .map_err(|e| io_err(path, e))?;
    fchmod(raw, Mode::from_bits_truncate(meta.mode)).map_err(|e| io_err(path, e))?;
    for (key, value) in &meta.xattrs {
        // SAFETY: valid C string and a buffer of the given length.
        let rc =
            unsafe { libc::fsetxattr(raw, key.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
        if rc != 0 {
            xattr_failed(key, path, io::Error::last_os_error())?;
        }
    }
    Ok(())
}

/// A filesystem without a namespace (ENOTSUP) loses that xattr, as with
/// containerd; anything else fails the layer.
fn xattr_failed(key: &CString, path: &[u8], e: io::Error) -> Result<()> {
    if e.raw_os_error() == Some(libc::ENOTSUP) {
        tracing::warn!(
            path = %String::from_utf8_lossy(path),
            xattr = %key.to_string_lossy(),
            "filesystem does not support this xattr; skipped"
        );
        return Ok(());
    }
    Err(io_err(path, e))
}

fn set_xattr_fd(fd: RawFd, key: &str, value: &[u8]) -> io::Result<()> {
    let key = CString::new(key).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: valid C string and a buffer of the given length.
    let rc = unsafe { libc::fsetxattr(fd, key.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes room for a new entry: a later entry for the same path replaces the
/// earlier one, whatever its type.
fn remove_existing(dirfd: RawFd, name: &OsStr) -> io::Result<()> {
    match fstatat(Some(dirfd), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
            let mut p = std::path::PathBuf::from(format!("/proc/self/fd/{dirfd}"));
            p.push(name);
            std::fs::remove_dir_all(p)
        }
        Ok(_) => Ok(unlinkat(Some(dirfd), name, UnlinkatFlags::NoRemoveDir)?),
    }
}

fn meta<R: Read>(entry: &mut tar::Entry<'_, R>, path: &[u8]) -> Result<Meta> {
    let h = entry.header();
    let num = |r: io::Result<u64>| r.map_err(|e| io_err(path, e));
    let uid = u32::try_from(num(h.uid())?).map_err(|_| bad(path, "uid out of range"))?;
    let gid = u32::try_from(num(h.gid())?).map_err(|_| bad(path, "gid out of range"))?;
    let mode = h.mode().map_err(|e| io_err(path, e))? & 0o7777;
    let mut mtime = TimeSpec::new(num(h.mtime())? as i64, 0);
    let mut xattrs = Vec::new();
    if let Some(pax) = entry.pax_extensions().map_err(|e| io_err(path, e))? {
        for ext in pax {
            let ext = ext.map_err(|e| io_err(path, e))?;
            let Ok(key) = ext.key() else { continue };
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                // Overlay's own attributes are ours to set, never a layer's: a
                // redirect or metacopy could reach into other layers. Nor
                // are security.* (capabilities, LSM labels) set on host files.
                if name.starts_with("trusted.overlay.") || name.starts_with("security.") {
                    tracing::debug!(
                        path = %String::from_utf8_lossy(path),
                        xattr = name,
                        "layer xattr not copied"
                    );
                    continue;
                }
                let name = CString::new(name).map_err(|_| bad(path, "NUL in xattr name"))?;
                xattrs.push((name, ext.value_bytes().to_vec()));
            } else if key == "mtime" {
                if let Some(t) = ext.value().ok().and_then(parse_pax_time) {
                    mtime = t;
                }
            }
        }
    }
    Ok(Meta {
        uid,
        gid,
        mode,
        mtime,
        xattrs,
    })
}

/// A 0/0 character device: overlay's own form of a whiteout, which some
/// layers carry as is.
fn is_overlay_whiteout<R: Read>(
    entry: &tar::Entry<'_, R>,
    kind: EntryType,
    path: &[u8],
) -> Result<bool> {
    let h = entry.header();
    let major = h.device_major().map_err(|e| io_err(path, e))?.unwrap_or(0);
    let minor = h.device_minor().map_err(|e| io_err(path, e))?.unwrap_or(0);
    Ok(kind == EntryType::Char && major == 0 && minor == 0)
}

/// PAX times are decimal seconds with an optional fraction: "1600000000.5".
fn parse_pax_time(s: &str) -> Option<TimeSpec> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let nanos = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse::<i64>().ok()?
    };
    // A negative time's fraction counts towards the past.
    let nanos = if secs < 0 || s.starts_with('-') {
        -nanos
    } else {
        nanos
    };
    Some(TimeSpec::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_refuse_escapes() {
        for (path, reason) in [
            (&b"/etc/passwd"[..], "absolute path"),
            (b"a/../../b", "path contains '..'"),
            (b"..", "path contains '..'"),
        ] {
            let err = components(path).unwrap_err();
            assert!(
                matches!(&err, UnpackError::BadEntry { reason: r, .. } if r == reason),
                "{err:?}"
            );
        }
        assert_eq!(components(b"./a//b/./c/").unwrap(), ["a", "b", "c"]);
        assert!(components(b"./").unwrap().is_empty());
    }

    #[test]
    fn layer_media_types() {
        for t in [
            "application/vnd.oci.image.layer.v1.tar",
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        ] {
            assert!(is_layer_media_type(t), "{t}");
        }
        assert!(!is_layer_media_type("application/vnd.in-toto+json"));
        assert!(!is_layer_media_type(
            "application/vnd.oci.image.layer.v1.tar+bzip2"
        ));
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time("12"), Some(TimeSpec::new(12, 0)));
        assert_eq!(parse_pax_time("12.5"), Some(TimeSpec::new(12, 500_000_000)));
        assert_eq!(
            parse_pax_time("1.1234567891"),
            Some(TimeSpec::new(1, 123_456_789))
        );
        assert_eq!(parse_pax_time("x"), None);
    }
}
