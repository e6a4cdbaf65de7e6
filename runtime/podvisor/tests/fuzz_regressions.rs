//! Replays every input in `fuzz/regressions/<target>/` (inputs that once
//! crashed a fuzz target, kept after the fix) and `fuzz/seeds/<target>/`
//! through the same entry points the `fuzz/daemon` targets call, so the
//! normal test command (no nightly, no libFuzzer) catches a regression.

use std::path::{Path, PathBuf};

use podvisor::fuzzing::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(target);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(it) => it.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("reading {}: {e}", dir.display()),
    };
    files.retain(|p| p.is_file());
    files.sort();
    files
}

fn replay(kind: &str) -> usize {
    let mut n = 0;
    for (target, entry) in TARGETS {
        for file in inputs(kind, target) {
            let data = std::fs::read(&file).unwrap();
            // Shown when the entry point panics, naming the input to rerun.
            eprintln!("{target}: {}", file.display());
            entry(&data);
            n += 1;
        }
    }
    n
}

#[test]
fn regression_inputs_still_pass() {
    replay("regressions");
}

#[test]
fn every_target_has_seeds_and_they_pass() {
    for (target, _) in TARGETS {
        assert!(
            !inputs("seeds", target).is_empty(),
            "fuzz/seeds/{target}/ is empty"
        );
    }
    assert!(replay("seeds") >= TARGETS.len());
}
