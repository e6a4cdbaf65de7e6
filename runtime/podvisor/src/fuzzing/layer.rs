//! Layer unpacking as a registry's tar makes it: whatever the stream holds,
//! nothing may appear outside the layer directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::{tar_builder, Input};
use crate::image::unpack::unpack_tar;

/// `<tmp>/pvfz-unpack-<pid>-<n>/{layer,outside}`, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Option<Scratch> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("pvfz-unpack-{}-{n}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        let s = Scratch(dir);
        std::fs::create_dir(s.layer()).ok()?;
        std::fs::create_dir(s.outside()).ok()?;
        Some(s)
    }

    fn layer(&self) -> PathBuf {
        self.0.join("layer")
    }

    fn outside(&self) -> PathBuf {
        self.0.join("outside")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// First byte odd: the rest is the tar stream as is; even: it describes
/// entries that `tar_builder` writes with valid checksums.
pub fn layer_unpack(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Some(scratch) = Scratch::new() else {
        return;
    };
    let tar = if mode & 1 == 1 {
        rest.to_vec()
    } else {
        tar_builder::build(&mut Input::new(rest), &scratch.outside())
    };
    let _ = unpack_tar(&tar[..], None, &scratch.layer());
    assert_eq!(
        names(&scratch.outside()),
        Vec::<String>::new(),
        "the layer wrote outside its directory"
    );
    assert_eq!(
        names(&scratch.0),
        ["layer", "outside"],
        "the layer wrote next to its directory"
    );
}
