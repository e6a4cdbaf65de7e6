//! How much a container has written: the size and inode count of its
//! writable overlay layer (`bundle/upper`), and the room its filesystem has.
//! kubelet reports it as the container's writable layer and cAdvisor's
//! `container_fs_*` metrics.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A walk stops after this many entries: a container can create files
/// faster than anyone should count them, and stats must answer.
pub const MAX_ENTRIES: u64 = 1_000_000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerUsage {
    /// Allocated bytes (blocks, not apparent sizes) under the layer.
    pub bytes: u64,
    /// Files, directories and links under the layer.
    pub inodes: u64,
    /// Size of the filesystem the layer lives on.
    pub capacity_bytes: u64,
    /// The walk stopped at [`MAX_ENTRIES`]: `bytes` and `inodes` are lower
    /// bounds.
    pub truncated: bool,
}

/// Measures the layer at `upper`. A missing layer is empty.
pub fn measure(upper: &Path) -> LayerUsage {
    let mut usage = LayerUsage::default();
    if let Ok(fs) = nix::sys::statvfs::statvfs(upper) {
        usage.capacity_bytes = fs.blocks().saturating_mul(fs.fragment_size());
    }
    let mut dirs = vec![upper.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if usage.inodes == MAX_ENTRIES {
                usage.truncated = true;
                return usage;
            }
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            usage.inodes += 1;
            // st_blocks counts 512-byte units whatever the block size.
            usage.bytes = usage
                .bytes
                .saturating_add(meta.blocks().saturating_mul(512));
            if meta.is_dir() {
                dirs.push(entry.path());
            }
        }
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_directories_are_counted_with_their_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let empty = measure(dir.path());
        assert_eq!((empty.bytes, empty.inodes), (0, 0));
        assert!(empty.capacity_bytes > 0);
        std::fs::create_dir_all(dir.path().join("var/log")).unwrap();
        std::fs::write(dir.path().join("var/log/app.log"), vec![7u8; 64 * 1024]).unwrap();
        std::os::unix::fs::symlink("app.log", dir.path().join("var/log/current")).unwrap();
        let used = measure(dir.path());
        assert_eq!(used.inodes, 4, "var, var/log, app.log, current");
        assert!(used.bytes >= 64 * 1024, "{used:?}");
        assert!(!used.truncated);
        assert_eq!(measure(&dir.path().join("missing")).inodes, 0);
    }
}
