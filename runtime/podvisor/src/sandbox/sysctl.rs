//! The pod's sysctls (PodSandboxConfig.linux.sysctls), checked before the
//! VM boots. The agent writes them under /proc/sys in the VM, whose
//! namespaces are the pod's: the network namespace every container shares
//! and the IPC namespace of IPC=POD containers. Any sysctl only touches the
//! pod's own kernel, so "unsafe" ones are allowed too.

use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SysctlError {
    #[error(
        "sysctl {0:?}: not a sysctl name (dot-separated words of [A-Za-z0-9_-], no '/' or '..')"
    )]
    BadName(String),
    #[error("sysctl {name:?}: its value {value:?} is empty or has control characters")]
    BadValue { name: String, value: String },
}

/// Checks every name and value; returns them sorted.
pub fn validate(
    sysctls: &std::collections::HashMap<String, String>,
) -> Result<BTreeMap<String, String>, SysctlError> {
    let mut out = BTreeMap::new();
    for (name, value) in sysctls {
        let good_name = !name.is_empty()
            && name.split('.').all(|w| {
                !w.is_empty()
                    && w.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            });
        if !good_name {
            return Err(SysctlError::BadName(name.clone()));
        }
        if value.trim().is_empty() || value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(SysctlError::BadValue {
                name: name.clone(),
                value: value.clone(),
            });
        }
        out.insert(name.clone(), value.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn one(name: &str, value: &str) -> Result<BTreeMap<String, String>, SysctlError> {
        validate(&HashMap::from([(name.to_string(), value.to_string())]))
    }

    #[test]
    fn names_and_values_are_checked() {
        assert!(one("kernel.shm_rmid_forced", "1").is_ok());
        assert!(one("net.ipv4.ip_local_port_range", "1024 65000").is_ok());
        assert!(one("fs.mqueue.msg_max", "100").is_ok());
        for bad in [
            "net/ipv4/ip_forward",
            "kernel..shmmax",
            "../../etc",
            ".kernel.msgmax",
            "kernel.msgmax.",
            "",
        ] {
            assert_eq!(
                one(bad, "1"),
                Err(SysctlError::BadName(bad.into())),
                "{bad}"
            );
        }
        assert!(matches!(
            one("kernel.msgmax", "1\n2"),
            Err(SysctlError::BadValue { .. })
        ));
        assert!(matches!(
            one("kernel.msgmax", " "),
            Err(SysctlError::BadValue { .. })
        ));
    }
}
