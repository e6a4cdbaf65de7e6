//! Finding the host programs the runtime starts (podvisor-vmm, virtiofsd).

use std::path::{Path, PathBuf};

/// `configured` when set (it must exist), else the first existing of
/// `preferred`, then `name` in PATH, then `fallback`. `Err` names what was
/// looked for.
pub fn locate(
    configured: &Path,
    name: &str,
    preferred: &[PathBuf],
    fallback: &[PathBuf],
) -> Result<PathBuf, String> {
    if !configured.as_os_str().is_empty() {
        return if configured.is_file() {
            Ok(configured.to_path_buf())
        } else {
            Err(configured.display().to_string())
        };
    }
    let in_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect())
        .unwrap_or_default();
    preferred
        .iter()
        .chain(&in_path)
        .chain(fallback)
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_path_wins_and_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("tool");
        std::fs::write(&tool, b"").unwrap();
        assert_eq!(locate(&tool, "x", &[], &[]), Ok(tool.clone()));
        assert_eq!(
            locate(
                &dir.path().join("nope"),
                "x",
                std::slice::from_ref(&tool),
                &[]
            ),
            Err(dir.path().join("nope").display().to_string())
        );
        assert_eq!(
            locate(
                Path::new(""),
                "no-such-tool-here",
                &[dir.path().join("missing")],
                std::slice::from_ref(&tool)
            ),
            Ok(tool)
        );
        assert_eq!(
            locate(Path::new(""), "no-such-tool-here", &[], &[]),
            Err("no-such-tool-here".into())
        );
    }
}
