//! The EFS CSI driver's volumeHandle: `fs-id`, `fs-id:/path`,
//! `fs-id::fsap-id` or `fs-id:/path:fsap-id` (the path defaults to `/`).

use super::EfsError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeHandle {
    pub fs_id: String,
    /// Absolute, normalised (no `.`, `..`, empty or trailing components).
    pub path: String,
    pub access_point: Option<String>,
}

/// `prefix` followed by 1 to 40 lower-case letters and digits, as EFS
/// ids (`fs-0123456789abcdef0`, `fsap-…`) are.
fn is_id(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix).is_some_and(|rest| {
        (1..=40).contains(&rest.len())
            && rest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}

pub fn parse(handle: &str) -> Result<VolumeHandle, EfsError> {
    let bad = |why: &str| EfsError::BadHandle {
        handle: handle.to_string(),
        why: why.to_string(),
    };
    let mut parts = handle.splitn(3, ':');
    let fs_id = parts.next().unwrap_or_default();
    if !is_id(fs_id, "fs-") {
        return Err(bad("it does not start with a file system id (fs-…)"));
    }
    let path = match parts.next() {
        None | Some("") => "/".to_string(),
        Some(p) if p.contains(|c: char| c == ',' || c.is_whitespace()) => {
            return Err(bad("its path has commas or white space"))
        }
        Some(p) => {
            normalise(p).ok_or_else(|| bad("its path is not absolute, or has '.' or '..'"))?
        }
    };
    let access_point = match parts.next() {
        None | Some("") => None,
        Some(ap) if is_id(ap, "fsap-") => Some(ap.to_string()),
        Some(_) => return Err(bad("its third part is not an access point id (fsap-…)")),
    };
    Ok(VolumeHandle {
        fs_id: fs_id.to_string(),
        path,
        access_point,
    })
}

/// `/a//b/` becomes `/a/b`; relative paths, `.`, `..` and control
/// characters are refused (the server would resolve `..`, perhaps outside
/// what the volume names).
pub fn normalise(path: &str) -> Option<String> {
    if !path.starts_with('/') || path.contains(char::is_control) {
        return None;
    }
    let mut out = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." {
            return None;
        }
        out.push('/');
        out.push_str(part);
    }
    Some(if out.is_empty() { "/".into() } else { out })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(fs: &str, path: &str, ap: Option<&str>) -> VolumeHandle {
        VolumeHandle {
            fs_id: fs.into(),
            path: path.into(),
            access_point: ap.map(Into::into),
        }
    }

    #[test]
    fn every_csi_handle_format_parses() {
        let fs = "fs-0123456789abcdef0";
        assert_eq!(parse(fs).unwrap(), handle(fs, "/", None));
        assert_eq!(
            parse(&format!("{fs}:/data/app")).unwrap(),
            handle(fs, "/data/app", None)
        );
        assert_eq!(
            parse(&format!("{fs}::fsap-0abc123")).unwrap(),
            handle(fs, "/", Some("fsap-0abc123"))
        );
        assert_eq!(
            parse(&format!("{fs}:/x/:fsap-0abc123")).unwrap(),
            handle(fs, "/x", Some("fsap-0abc123"))
        );
        assert_eq!(
            parse("fs-12345678:").unwrap(),
            handle("fs-12345678", "/", None)
        );
    }

    #[test]
    fn malformed_handles_are_refused() {
        for h in [
            "",
            "fs-",
            "vol-123",
            "FS-123",
            "fs-12/3",
            "fs-123:relative",
            "fs-123:/a/../b",
            "fs-123:/a,b",
            "fs-123:/a b",
            "fs-123:/a:ap-1",
            "fs-123:/a:fsap-1:extra",
        ] {
            let err = parse(h).unwrap_err();
            assert!(matches!(err, EfsError::BadHandle { .. }), "{h:?}: {err}");
        }
        let err = parse("fs-1:/../etc").unwrap_err().to_string();
        assert!(err.contains("fs-1:/../etc"), "{err}");
    }

    #[test]
    fn paths_are_normalised() {
        assert_eq!(normalise("/").as_deref(), Some("/"));
        assert_eq!(normalise("//a///b/").as_deref(), Some("/a/b"));
        assert_eq!(normalise("/a/./b"), None);
        assert_eq!(normalise("a"), None);
    }
}
