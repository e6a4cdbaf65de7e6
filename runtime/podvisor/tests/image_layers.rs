//! Layers pulled from a real registry and unpacked as overlay lower
//! directories: whiteouts, opaque directories, hard links, symlinks, modes,
//! owners, mtimes, xattrs, FIFOs; device nodes and security.* xattrs
//! dropped, setuid bits kept, the store private to root; and an actual
//! overlay mount of them on the host. Needs root and docker-registry.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use podvisor::image::{ImageService, RegistryConfig};
use podvisor_tests::prerequisite;
use podvisor_tests::registry::{LayerBuilder, LocalRegistry, TestImage};
use serde_json::json;
use tempfile::TempDir;

const MTIME: i64 = 1_600_000_000;

fn setup(test: &str) -> Option<(LocalRegistry, TempDir, ImageService)> {
    let root = nix::unistd::geteuid().is_root();
    if !prerequisite(test, "root", root, "run the tests as root") {
        return None;
    }
    if !prerequisite(
        test,
        "docker-registry",
        LocalRegistry::available(),
        "apt-get install docker-registry",
    ) {
        return None;
    }
    let registry = LocalRegistry::start();
    let dir = tempfile::Builder::new()
        .prefix("podvisor-images")
        .tempdir()
        .unwrap();
    let service = ImageService::open(dir.path().join("images"), RegistryConfig::default()).unwrap();
    Some((registry, dir, service))
}

/// Bottom layer (uncompressed): files that the top layer hides.
/// Top layer (gzip): a whiteout, an opaque dir, and one of every entry kind.
fn two_layer_image() -> TestImage {
    let mut bottom = LayerBuilder::new();
    bottom
        .dir("etc", 0o755, 0, 0)
        .file("etc/removed", b"gone\n", 0o644, 0, 0)
        .file("etc/kept", b"kept\n", 0o644, 0, 0)
        .dir("opq", 0o755, 0, 0)
        .file("opq/lower1", b"1\n", 0o644, 0, 0)
        .file("opq/lower2", b"2\n", 0o644, 0, 0)
        .dir("opq/sub", 0o755, 0, 0)
        .file("opq/sub/deep", b"deep\n", 0o644, 0, 0)
        .dir("keep", 0o755, 0, 0)
        .file("keep/a", b"a\n", 0o644, 0, 0);
    let mut top = LayerBuilder::new();
    top.dir("etc", 0o755, 0, 0)
        .whiteout("etc/removed")
        .dir("opq", 0o755, 0, 0)
        .opaque("opq")
        .file("opq/upper", b"upper\n", 0o644, 0, 0)
        .dir("data", 0o750, 1000, 1000)
        .pax_xattr("data/orig", "user.podvisor", b"hello")
        .file("data/orig", b"hello\n", 0o640, 1000, 2000)
        .hardlink("data/link", "data/orig")
        .symlink("data/rel", "orig")
        .symlink("data/abs", "/etc/passwd")
        .pax_xattr(
            "data/suid",
            "security.capability",
            &[
                1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        )
        .file("data/suid", b"#!/bin/sh\n", 0o4755, 0, 0)
        .file("data/sgid", b"#!/bin/sh\n", 0o2755, 0, 50)
        .dir("data/sticky", 0o1777, 0, 0)
        .fifo("data/fifo", 0o620)
        .char_device("data/null", 1, 3)
        .block_device("data/sda", 8, 0)
        // A whiteout written in overlay's own form, not as .wh.
        .char_device("etc/also-removed", 0, 0);
    TestImage::new(
        vec![bottom.uncompressed(), top.gzip()],
        "amd64",
        json!({"Cmd": ["sh"]}),
    )
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer of the given length.
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return None;
    }
    buf.truncate(len as usize);
    Some(buf)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

async fn pull_two_layers(registry: &LocalRegistry, service: &ImageService) -> Vec<PathBuf> {
    registry.push("layers", "latest", &two_layer_image()).await;
    let img = service
        .pull(&format!("{}/layers", registry.addr()), None)
        .await
        .unwrap();
    let layers = service.layers_for(&img.id).unwrap();
    assert_eq!(layers.len(), 2);
    // Top-most first.
    assert_eq!(
        layers[0].file_name().unwrap().to_string_lossy(),
        img.layers[1].diff_id.strip_prefix("sha256:").unwrap()
    );
    layers
}

#[tokio::test]
async fn layers_unpack_as_overlay_lower_directories() {
    let Some((registry, _dir, service)) = setup("layers_unpack_as_overlay_lower_directories")
    else {
        return;
    };
    let layers = pull_two_layers(&registry, &service).await;
    let (top, bottom) = (&layers[0], &layers[1]);

    // The bottom layer is just its files.
    assert_eq!(
        fs::read_to_string(bottom.join("etc/removed")).unwrap(),
        "gone\n"
    );
    assert_eq!(names(&bottom.join("opq")), ["lower1", "lower2", "sub"]);
    assert_eq!(xattr(&bottom.join("opq"), "trusted.overlay.opaque"), None);

    // Whiteout: a 0/0 character device with the hidden name, no .wh. file.
    let wh = fs::symlink_metadata(top.join("etc/removed")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert_eq!(names(&top.join("etc")), ["also-removed", "removed"]);
    // Opaque directory: the xattr, no marker file, the layer's own entry.
    assert_eq!(
        xattr(&top.join("opq"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(names(&top.join("opq")), ["upper"]);

    let data = top.join("data");
    let orig = fs::symlink_metadata(data.join("orig")).unwrap();
    assert_eq!(fs::read_to_string(data.join("orig")).unwrap(), "hello\n");
    assert_eq!(orig.mode() & 0o7777, 0o640);
    assert_eq!((orig.uid(), orig.gid()), (1000, 2000));
    assert_eq!(orig.mtime(), MTIME);
    assert_eq!(
        xattr(&data.join("orig"), "user.podvisor").as_deref(),
        Some(&b"hello"[..])
    );
    // Hard link: the same inode.
    let link = fs::symlink_metadata(data.join("link")).unwrap();
    assert_eq!(link.ino(), orig.ino());
    assert_eq!(orig.nlink(), 2);
    // Symlinks kept as written, never followed.
    assert_eq!(fs::read_link(data.join("rel")).unwrap(), Path::new("orig"));
    assert_eq!(
        fs::read_link(data.join("abs")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert!(fs::symlink_metadata(data.join("abs"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        fs::symlink_metadata(data.join("abs")).unwrap().mtime(),
        MTIME
    );
    // Special mode bits survive the chown.
    let suid = fs::symlink_metadata(data.join("suid")).unwrap();
    assert_eq!(suid.mode() & 0o7777, 0o4755);
    let sgid = fs::symlink_metadata(data.join("sgid")).unwrap();
    assert_eq!((sgid.mode() & 0o7777, sgid.gid()), (0o2755, 50));
    let sticky = fs::symlink_metadata(data.join("sticky")).unwrap();
    assert!(sticky.is_dir());
    assert_eq!(sticky.mode() & 0o7777, 0o1777);
    let fifo = fs::symlink_metadata(data.join("fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o7777, 0o620);
    // Device nodes are dropped; an overlay-form whiteout is no device.
    for device in ["null", "sda"] {
        assert!(
            fs::symlink_metadata(data.join(device)).is_err(),
            "device node {device} was unpacked into the store"
        );
    }
    let wh = fs::symlink_metadata(top.join("etc/also-removed")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    // File capabilities are not set on the host's copy.
    assert_eq!(xattr(&data.join("suid"), "security.capability"), None);
    // The store, setuid files and all, is root's alone.
    let store = top.ancestors().nth(3).unwrap();
    assert_eq!(store.file_name().unwrap(), "images", "{}", store.display());
    assert_eq!(fs::metadata(store).unwrap().mode() & 0o7777, 0o700);
    // Directory owner, mode and mtime (set after its children were made).
    let d = fs::symlink_metadata(&data).unwrap();
    assert_eq!((d.uid(), d.gid(), d.mode() & 0o7777), (1000, 1000, 0o750));
    assert_eq!(d.mtime(), MTIME);
    assert_eq!(
        fs::symlink_metadata(top.join("opq")).unwrap().mtime(),
        MTIME
    );
}

/// Unmounts on drop, so a failed assertion leaves no mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[tokio::test]
async fn an_overlay_of_the_layers_shows_the_merged_image() {
    let Some((registry, dir, service)) = setup("an_overlay_of_the_layers_shows_the_merged_image")
    else {
        return;
    };
    let layers = pull_two_layers(&registry, &service).await;
    let target = dir.path().join("merged");
    fs::create_dir(&target).unwrap();
    let lowerdir = layers
        .iter()
        .map(|p| p.to_str().unwrap())
        .collect::<Vec<_>>()
        .join(":");
    nix::mount::mount(
        Some("overlay"),
        &target,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(format!("lowerdir={lowerdir}").as_str()),
    )
    .expect("mounting the overlay");
    let _mounted = Mounted(target.clone());

    // The whiteout hid the lower file; its neighbour is still there.
    assert!(fs::symlink_metadata(target.join("etc/removed")).is_err());
    assert_eq!(names(&target.join("etc")), ["kept"]);
    // The opaque directory hid everything below it, kept its own entry.
    assert_eq!(names(&target.join("opq")), ["upper"]);
    assert!(fs::symlink_metadata(target.join("opq/sub/deep")).is_err());
    // Untouched lower content shows through; upper content is there.
    assert_eq!(fs::read_to_string(target.join("keep/a")).unwrap(), "a\n");
    assert_eq!(
        fs::read_to_string(target.join("data/link")).unwrap(),
        "hello\n"
    );
    assert_eq!(
        fs::symlink_metadata(target.join("data/suid"))
            .unwrap()
            .mode()
            & 0o7777,
        0o4755
    );
    assert_eq!(
        names(&target),
        ["data", "etc", "keep", "opq"],
        "nothing of the store's bookkeeping shows"
    );
}
