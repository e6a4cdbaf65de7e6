//! The host's mount table (`/proc/self/mountinfo`, see proc(5)), as far as
//! NFS volumes need it: which mount a path lies on, what part of its file
//! system a mount shows, and an NFS mount's server and options.

use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the file system.
    pub dev: String,
    /// The directory of the file system this mount shows (for NFS: the
    /// path on the server).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
    pub super_options: String,
}

impl MountEntry {
    pub fn is_nfs(&self) -> bool {
        matches!(self.fstype.as_str(), "nfs" | "nfs4")
    }

    /// The value of `key=` among the super options.
    pub fn super_option(&self, key: &str) -> Option<&str> {
        self.super_options
            .split(',')
            .find_map(|o| o.strip_prefix(key)?.strip_prefix('='))
    }

    /// Where `path` (at or under the mount point) is within the mount's
    /// file system.
    pub fn fs_path(&self, path: &Path) -> Option<PathBuf> {
        let rest = path.strip_prefix(&self.mount_point).ok()?;
        Some(if rest.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(rest)
        })
    }
}

#[derive(Clone, Debug, Default)]
pub struct MountTable {
    entries: Vec<MountEntry>,
}

impl MountTable {
    pub fn read() -> std::io::Result<MountTable> {
        std::fs::read_to_string("/proc/self/mountinfo").map(|t| MountTable::parse(&t))
    }

    /// Lines that do not parse are skipped.
    pub fn parse(text: &str) -> MountTable {
        MountTable {
            entries: text.lines().filter_map(parse_line).collect(),
        }
    }

    /// The top-most mount whose mount point is exactly `path`.
    pub fn at(&self, path: &Path) -> Option<&MountEntry> {
        self.entries.iter().rev().find(|e| e.mount_point == path)
    }

    /// The mount `path` lies on: the longest mount point that contains it,
    /// the latest one where several are stacked.
    pub fn containing(&self, path: &Path) -> Option<&MountEntry> {
        self.entries
            .iter()
            .rev()
            .filter(|e| path.starts_with(&e.mount_point))
            .max_by_key(|e| e.mount_point.components().count())
    }
}

fn parse_line(line: &str) -> Option<MountEntry> {
    // id parent major:minor root mount-point options [optional...] - type source super
    let fields: Vec<&str> = line.split(' ').collect();
    let dash = fields.iter().position(|f| *f == "-")?;
    if dash < 6 || fields.len() < dash + 4 {
        return None;
    }
    Some(MountEntry {
        dev: fields[2].to_string(),
        root: PathBuf::from(unescape(fields[3])),
        mount_point: PathBuf::from(unescape(fields[4])),
        fstype: unescape(fields[dash + 1]),
        source: unescape(fields[dash + 2]),
        super_options: unescape(fields[dash + 3]),
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(v)) => {
                out.push(v);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const SAMPLE: &str = "\
22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
40 22 0:50 /export /mnt/nfs rw,relatime shared:30 - nfs4 fs-1.efs.us-east-1.amazonaws.com:/export rw,vers=4.1,rsize=1048576,wsize=1048576,namlen=255,hard,proto=tcp,timeo=600,retrans=2,sec=sys,clientaddr=10.0.1.7,local_lock=none,addr=10.0.0.5
41 22 0:50 /export/team\\040a /srv/team rw,relatime shared:31 - nfs4 fs-1.efs.us-east-1.amazonaws.com:/export rw,vers=4.1,addr=10.0.0.5
42 22 253:1 /var/data /mnt/bound rw,relatime - ext4 /dev/vda1 rw
";

    #[test]
    fn lines_parse_with_optional_fields_and_escapes() {
        let t = MountTable::parse(SAMPLE);
        let team = t.at(Path::new("/srv/team")).unwrap();
        assert_eq!(team.root, Path::new("/export/team a"));
        assert_eq!(team.fstype, "nfs4");
        assert_eq!(team.super_option("addr"), Some("10.0.0.5"));
        assert_eq!(team.super_option("vers"), Some("4.1"));
        assert_eq!(team.super_option("clientaddr"), None);
        let bound = t.at(Path::new("/mnt/bound")).unwrap();
        assert!(!bound.is_nfs());
        assert!(MountTable::parse("garbage\n1 2 3\n").entries.is_empty());
    }

    #[test]
    fn the_containing_mount_is_the_longest_prefix() {
        let t = MountTable::parse(SAMPLE);
        let on = |p: &str| t.containing(Path::new(p)).unwrap().mount_point.clone();
        assert_eq!(on("/mnt/nfs/a/b"), Path::new("/mnt/nfs"));
        assert_eq!(on("/mnt/nfsx"), Path::new("/"));
        assert_eq!(on("/etc"), Path::new("/"));
        let nfs = t.containing(Path::new("/mnt/nfs/a/b")).unwrap();
        assert_eq!(
            nfs.fs_path(Path::new("/mnt/nfs/a/b")).unwrap(),
            Path::new("/export/a/b")
        );
        assert_eq!(
            nfs.fs_path(Path::new("/mnt/nfs")).unwrap(),
            Path::new("/export")
        );
    }
}
