//! kubelet's pod CIDR (UpdateRuntimeConfig): which part of its value pods
//! can use, and the copy kept in `<state_dir>/network/pod_cidr` so a
//! restarted daemon allocates from it before kubelet sends it again.

use std::path::{Path, PathBuf};

use super::cidr::{CidrError, Ipv4Cidr};

pub const STATE_FILE: &str = "pod_cidr";

#[derive(Debug, thiserror::Error)]
pub enum PodCidrError {
    #[error("pod CIDR {value:?}: {source}")]
    Syntax {
        value: String,
        #[source]
        source: CidrError,
    },
    #[error("pod CIDR {0:?} has no IPv4 CIDR; podvisor gives pods IPv4 addresses only")]
    NoIpv4(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The IPv4 CIDR of kubelet's `pod_cidr`: one CIDR, or a dual-stack
/// "v4,v6" (or "v6,v4") pair. None when kubelet sent nothing.
pub fn parse(value: &str) -> Result<Option<Ipv4Cidr>, PodCidrError> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    let mut parts = value.split(',').map(str::trim);
    let v4 = parts
        .find(|p| !p.contains(':'))
        .ok_or_else(|| PodCidrError::NoIpv4(value.into()))?;
    v4.parse().map(Some).map_err(|source| PodCidrError::Syntax {
        value: value.into(),
        source,
    })
}

/// The pod CIDR a previous daemon took from kubelet, if any.
pub fn load(dir: &Path) -> Result<Option<Ipv4Cidr>, PodCidrError> {
    let path = dir.join(STATE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map(Some).map_err(|e| PodCidrError::Io {
            path,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PodCidrError::Io { path, source }),
    }
}

pub fn store(dir: &Path, cidr: Ipv4Cidr) -> Result<(), PodCidrError> {
    let path = dir.join(STATE_FILE);
    crate::persist::write_atomic(&path, format!("{cidr}\n").as_bytes())
        .map_err(|source| PodCidrError::Io { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_ipv4_cidr_of_a_single_or_dual_stack_value() {
        let v4 = |s: &str| parse(s).unwrap().map(|c| c.to_string());
        assert_eq!(v4("10.244.1.0/24").as_deref(), Some("10.244.1.0/24"));
        assert_eq!(
            v4("10.244.1.0/24,fd00:10:244:1::/64").as_deref(),
            Some("10.244.1.0/24")
        );
        assert_eq!(
            v4(" fd00:10:244:1::/64 , 10.244.2.0/24").as_deref(),
            Some("10.244.2.0/24")
        );
        assert_eq!(
            v4(""),
            None,
            "kubelet sends an empty CIDR before it has one"
        );
    }

    #[test]
    fn refuses_what_is_no_ipv4_cidr() {
        let err = parse("fd00:10:244:1::/64").unwrap_err();
        assert!(matches!(err, PodCidrError::NoIpv4(_)), "{err}");
        let err = parse("10.244.1.1/24").unwrap_err().to_string();
        assert!(err.contains("host bits"), "{err}");
        let err = parse("10.244.1.0").unwrap_err().to_string();
        assert!(err.contains("CIDR notation"), "{err}");
    }

    #[test]
    fn survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let cidr: Ipv4Cidr = "10.244.3.0/24".parse().unwrap();
        store(dir.path(), cidr).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(cidr));
        std::fs::write(dir.path().join(STATE_FILE), "garbage").unwrap();
        // A corrupt file is not guessed at: the error names it.
        let err = load(dir.path()).unwrap_err();
        assert!(
            matches!(&err, PodCidrError::Io { source, .. } if source.kind() == std::io::ErrorKind::InvalidData),
            "{err:?}"
        );
        assert!(err.to_string().contains(STATE_FILE), "{err}");
    }
}
