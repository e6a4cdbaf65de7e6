//! The one skip rule of every test in the workspace.
//!
//! A test whose prerequisite (root, `/dev/kvm`, a tool, a kernel module) is
//! missing:
//! - under CI (`CI` set to anything but empty, `0` or `false`) fails: CI
//!   never passes by skipping;
//! - elsewhere is skipped, and says so twice: a `SKIPPED <test>: <reason>`
//!   line on stderr, and a `<test>: <reason>` line appended to the file that
//!   `PODVISOR_SKIP_LOG` names (when set). nextest hides a passing test's
//!   output, so `scripts/test.sh` points that variable at a fresh file and
//!   prints its lines after the run.
//!
//! Usage: `if !podvisor_test_skip::require_root(test) { return; }`.

use std::io::Write;
use std::path::Path;

/// The environment variable naming the skip log.
pub const SKIP_LOG_ENV: &str = "PODVISOR_SKIP_LOG";

/// What the rule says about one prerequisite.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The prerequisite is there.
    Run,
    /// Skip the test, for this reason.
    Skip(String),
    /// Fail the test with this message (CI).
    Fail(String),
}

/// The rule itself, free of the environment so it can be tested.
pub fn decide(ci: bool, test: &str, what: &str, available: bool, hint: &str) -> Verdict {
    if available {
        Verdict::Run
    } else if ci {
        Verdict::Fail(format!("{test}: {what} is missing in CI: {hint}"))
    } else {
        Verdict::Skip(format!("{what} is missing ({hint})"))
    }
}

/// Whether the tests run under CI.
pub fn in_ci() -> bool {
    ci_value(std::env::var("CI").ok().as_deref())
}

fn ci_value(value: Option<&str>) -> bool {
    !matches!(value.map(str::trim), None | Some("" | "0" | "false"))
}

/// True when `what` is available. When not: panics under CI, else records
/// the skip and returns false (the caller returns).
pub fn require(test: &str, what: &str, available: bool, hint: &str) -> bool {
    match decide(in_ci(), test, what, available, hint) {
        Verdict::Run => true,
        Verdict::Fail(message) => panic!("{message}"),
        Verdict::Skip(reason) => {
            record_skip(test, &reason);
            false
        }
    }
}

/// True when the test runs as root (mounts, namespaces, cgroups, devices).
pub fn require_root(test: &str) -> bool {
    require(test, "root", is_root(), "run the tests as root")
}

/// True when `/dev/kvm` opens read-write.
pub fn require_kvm(test: &str) -> bool {
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    let hint = match &opened {
        Ok(_) => String::new(),
        Err(e) => format!("/dev/kvm: {e}"),
    };
    require(test, "a usable /dev/kvm", opened.is_ok(), &hint)
}

/// Whether the effective user is root.
pub fn is_root() -> bool {
    // SAFETY: geteuid takes no arguments, cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// Records a skip: stderr, and the skip log when `PODVISOR_SKIP_LOG` is set.
/// A log that cannot be written fails the test: a lost skip would be silent.
fn record_skip(test: &str, reason: &str) {
    eprintln!("SKIPPED {test}: {reason}");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        if let Err(e) = append_line(Path::new(&path), &format!("{test}: {reason}")) {
            panic!(
                "{test}: cannot append to {SKIP_LOG_ENV} {}: {e}",
                Path::new(&path).display()
            );
        }
    }
}

/// Appends one line with a single `write` on an `O_APPEND` file, so lines of
/// tests running in parallel processes do not interleave.
pub fn append_line(path: &Path, line: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let line = format!("{}\n", line.replace('\n', " "));
    file.write_all(line.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_present_prerequisite_runs_everywhere() {
        assert_eq!(decide(true, "t", "root", true, "h"), Verdict::Run);
        assert_eq!(decide(false, "t", "root", true, "h"), Verdict::Run);
    }

    #[test]
    fn a_missing_prerequisite_fails_in_ci_and_skips_elsewhere() {
        assert_eq!(
            decide(true, "t", "root", false, "run as root"),
            Verdict::Fail("t: root is missing in CI: run as root".into())
        );
        assert_eq!(
            decide(false, "t", "root", false, "run as root"),
            Verdict::Skip("root is missing (run as root)".into())
        );
    }

    #[test]
    fn ci_is_any_value_but_empty_zero_or_false() {
        assert!(ci_value(Some("true")));
        assert!(ci_value(Some("1")));
        assert!(!ci_value(None));
        assert!(!ci_value(Some("")));
        assert!(!ci_value(Some("0")));
        assert!(!ci_value(Some("false")));
    }

    #[test]
    fn skip_lines_are_appended_one_per_line() {
        let dir = std::env::temp_dir().join(format!("podvisor-test-skip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("skips");
        let _ = std::fs::remove_file(&log);
        append_line(&log, "a: root is missing").unwrap();
        append_line(&log, "b: two\nlines").unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(text, "a: root is missing\nb: two lines\n");
    }
}
