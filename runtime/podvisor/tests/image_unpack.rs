//! Layer unpacking without a registry: hostile layers (path traversal,
//! symlink and hardlink escapes) are refused without touching anything
//! outside the layer; compressions; diff id checks; entries replacing
//! earlier ones; overlay attributes a layer must not set. Needs root.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use podvisor::image::unpack::{unpack_layer, unpack_tar, UnpackError};
use podvisor_tests::prerequisite;
use podvisor_tests::registry::{sha256, LayerBuilder, LAYER_GZIP, LAYER_TAR, LAYER_ZSTD};
use tar::EntryType;

fn as_root(test: &str) -> bool {
    prerequisite(
        test,
        "root",
        nix::unistd::geteuid().is_root(),
        "run the tests as root",
    )
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn hostile_layers_are_refused_and_nothing_outside_is_touched() {
    if !as_root("hostile_layers_are_refused_and_nothing_outside_is_touched") {
        return;
    }
    type Build = Box<dyn Fn(&Path) -> Vec<u8>>;
    let cases: Vec<(&str, Build, &str)> = vec![
        (
            "dot-dot",
            Box::new(|_| {
                let mut l = LayerBuilder::new();
                l.raw(EntryType::Regular, "a/../../escape", None, b"x");
                l.tar()
            }),
            "'..'",
        ),
        (
            "absolute",
            Box::new(|outside| {
                let mut l = LayerBuilder::new();
                let p = format!("{}/abs", outside.display());
                l.raw(EntryType::Regular, &p, None, b"x");
                l.tar()
            }),
            "absolute path",
        ),
        (
            "through an absolute symlink",
            Box::new(|outside| {
                let mut l = LayerBuilder::new();
                l.symlink("evil", outside.to_str().unwrap());
                l.file("evil/pwned", b"x", 0o644, 0, 0);
                l.tar()
            }),
            "symlink",
        ),
        (
            "through a relative symlink",
            Box::new(|_| {
                let mut l = LayerBuilder::new();
                l.dir("a", 0o755, 0, 0).symlink("a/up", "../..");
                l.file("a/up/pwned", b"x", 0o644, 0, 0);
                l.tar()
            }),
            "symlink",
        ),
        (
            "a whiteout through a symlink",
            Box::new(|outside| {
                let mut l = LayerBuilder::new();
                l.symlink("evil", outside.to_str().unwrap());
                l.raw(EntryType::Regular, "evil/.wh.victim", None, b"");
                l.tar()
            }),
            "symlink",
        ),
        (
            "an opaque marker through a symlink",
            Box::new(|outside| {
                let mut l = LayerBuilder::new();
                l.symlink("evil", outside.to_str().unwrap());
                l.raw(EntryType::Regular, "evil/.wh..wh..opq", None, b"");
                l.tar()
            }),
            "symlink",
        ),
        (
            "a hardlink out of the layer",
            Box::new(|_| {
                let mut l = LayerBuilder::new();
                l.raw(EntryType::Link, "h", Some("../victim"), b"");
                l.tar()
            }),
            "'..'",
        ),
        (
            "a hardlink through a symlink",
            Box::new(|outside| {
                let mut l = LayerBuilder::new();
                l.symlink("evil", outside.to_str().unwrap());
                l.hardlink("h", "evil/victim");
                l.tar()
            }),
            "not in the layer",
        ),
        (
            "a hardlink to nothing",
            Box::new(|_| {
                let mut l = LayerBuilder::new();
                l.hardlink("h", "missing");
                l.tar()
            }),
            "not in the layer",
        ),
    ];
    for (what, build, reason) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let (layer, outside) = (tmp.path().join("layer"), tmp.path().join("outside"));
        fs::create_dir(&layer).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("victim"), b"precious").unwrap();
        let tar = build(&outside);
        let err = unpack_tar(&tar[..], None, &layer).unwrap_err();
        assert!(
            matches!(err, UnpackError::BadEntry { .. }),
            "{what}: {err:?}"
        );
        assert!(err.to_string().contains(reason), "{what}: {err}");
        assert_eq!(names(&outside), ["victim"], "{what}");
        assert_eq!(
            fs::read(outside.join("victim")).unwrap(),
            b"precious",
            "{what}"
        );
        assert!(!tmp.path().join("escape").exists(), "{what}");
    }

    // A hardlink to a symlink links the symlink, not what it points to.
    let tmp = tempfile::tempdir().unwrap();
    let (layer, outside) = (tmp.path().join("layer"), tmp.path().join("outside"));
    fs::create_dir(&layer).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("victim"), b"precious").unwrap();
    let mut l = LayerBuilder::new();
    l.symlink("s", outside.join("victim").to_str().unwrap())
        .hardlink("h", "s");
    unpack_tar(&l.tar()[..], None, &layer).unwrap();
    assert!(fs::symlink_metadata(layer.join("h"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::metadata(outside.join("victim")).unwrap().nlink(), 1);
}

#[test]
fn compressions_and_diff_ids() {
    if !as_root("compressions_and_diff_ids") {
        return;
    }
    let mut l = LayerBuilder::new();
    l.dir("d", 0o755, 0, 0)
        .file("d/f", b"content\n", 0o644, 0, 0);
    let tar = l.tar();
    let diff_id = sha256(&tar);
    let tmp = tempfile::tempdir().unwrap();

    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&tar).unwrap();
        e.finish().unwrap()
    };
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    for (name, media_type, bytes) in [
        ("plain", LAYER_TAR, &tar),
        ("gzip", LAYER_GZIP, &gz),
        ("zstd", LAYER_ZSTD, &zst),
        // Compression is recognised by content, whatever the media type says.
        ("mislabelled", LAYER_TAR, &gz),
    ] {
        let blob = tmp.path().join(format!("{name}.blob"));
        fs::write(&blob, bytes).unwrap();
        let dest = tmp.path().join(name);
        fs::create_dir(&dest).unwrap();
        let unpacked = unpack_layer(&blob, media_type, Some(&diff_id), &dest).unwrap();
        assert_eq!(unpacked.diff_id, diff_id, "{name}");
        assert_eq!(
            fs::read_to_string(dest.join("d/f")).unwrap(),
            "content\n",
            "{name}"
        );
    }

    let blob = tmp.path().join("gzip.blob");
    let dest = tmp.path().join("wrong");
    fs::create_dir(&dest).unwrap();
    let wrong = format!("sha256:{}", "0".repeat(64));
    let err = unpack_layer(&blob, LAYER_GZIP, Some(&wrong), &dest).unwrap_err();
    assert!(matches!(err, UnpackError::DiffIdMismatch { .. }), "{err:?}");

    let dest = tmp.path().join("wasm");
    fs::create_dir(&dest).unwrap();
    let err = unpack_layer(
        &blob,
        "application/vnd.wasm.content.layer.v1+wasm",
        None,
        &dest,
    )
    .unwrap_err();
    assert!(matches!(err, UnpackError::MediaType(_)), "{err:?}");
    assert_eq!(names(&dest), Vec::<String>::new());

    // Not a tar at all.
    let junk = tmp.path().join("junk.blob");
    fs::write(&junk, vec![0x42u8; 4096]).unwrap();
    let dest = tmp.path().join("junk");
    fs::create_dir(&dest).unwrap();
    let err = unpack_layer(&junk, LAYER_TAR, None, &dest).unwrap_err();
    assert!(matches!(err, UnpackError::Read(_)), "{err:?}");
}

#[test]
fn later_entries_replace_earlier_ones() {
    if !as_root("later_entries_replace_earlier_ones") {
        return;
    }
    let mut l = LayerBuilder::new();
    l.file("x", b"file", 0o644, 0, 0)
        .dir("x", 0o700, 0, 0)
        .file("x/y", b"y", 0o644, 0, 0)
        .dir("d", 0o755, 0, 0)
        .file("d/child", b"c", 0o644, 0, 0)
        .file("d", b"now a file", 0o600, 0, 0)
        .file("f", b"old", 0o644, 0, 0)
        .symlink("f", "target")
        .file("w", b"w", 0o644, 0, 0)
        .whiteout("w")
        .dir(".", 0o711, 0, 0);
    let tmp = tempfile::tempdir().unwrap();
    unpack_tar(&l.tar()[..], None, tmp.path()).unwrap();
    let root = tmp.path();
    assert!(root.join("x").is_dir());
    assert_eq!(fs::read_to_string(root.join("x/y")).unwrap(), "y");
    assert_eq!(fs::read_to_string(root.join("d")).unwrap(), "now a file");
    assert_eq!(fs::read_link(root.join("f")).unwrap(), Path::new("target"));
    let w = fs::symlink_metadata(root.join("w")).unwrap();
    assert_eq!(w.mode() & libc::S_IFMT, libc::S_IFCHR);
    // The "./" entry sets the layer root's own mode.
    assert_eq!(fs::metadata(root).unwrap().mode() & 0o7777, 0o711);
}

#[test]
fn a_layer_cannot_set_overlay_or_security_attributes() {
    if !as_root("a_layer_cannot_set_overlay_or_security_attributes") {
        return;
    }
    let mut l = LayerBuilder::new();
    l.pax_xattr("d", "trusted.overlay.redirect", b"/etc")
        .dir("d", 0o755, 0, 0)
        .pax_xattr(
            "f",
            "security.capability",
            &[
                1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        )
        .file("f", b"bin", 0o755, 0, 0);
    let tmp = tempfile::tempdir().unwrap();
    unpack_tar(&l.tar()[..], None, tmp.path()).unwrap();
    let get = |p: &Path, name: &str| {
        let p = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        let n = std::ffi::CString::new(name).unwrap();
        let mut buf = [0u8; 64];
        // SAFETY: valid C strings and a buffer of the given length.
        let len =
            unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        (len >= 0).then(|| buf[..len as usize].to_vec())
    };
    assert_eq!(get(&tmp.path().join("d"), "trusted.overlay.redirect"), None);
    // File capabilities and LSM labels are not set on the host's files.
    assert_eq!(get(&tmp.path().join("f"), "security.capability"), None);
    assert_eq!(
        std::fs::read(tmp.path().join("f")).unwrap(),
        b"bin",
        "the file itself is unpacked"
    );
}
