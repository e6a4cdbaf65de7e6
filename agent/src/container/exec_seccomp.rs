//! Seccomp for execs.
//!
//! libcontainer builds an exec's spec from the container's namespaces and
//! cgroup only, so an exec (kubectl exec, probes, ExecSync) would run
//! without the container's seccomp filter. [`SeccompExecutor`] loads the
//! filter in the exec's own process, right before it runs the command.
//!
//! Loading a filter needs CAP_SYS_ADMIN or no_new_privs. An exec that may
//! gain privileges (no_new_privs unset) therefore gets CAP_SYS_ADMIN (and
//! CAP_SETPCAP, to drop it again) on top of its own capabilities until the
//! filter is loaded: [`grant_for_filter`] adds them to the process spec and
//! the executor drops them from every set before the command runs.

use std::collections::HashMap;

use caps::CapSet;
use libcontainer::workload::{
    default::get_executor, Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError,
};
use oci_spec::runtime::{Capability, LinuxCapabilities, LinuxSeccomp, Process, Spec};

/// Loads `seccomp` and drops `temporary` capabilities, then runs the
/// process as libcontainer's default executor does.
#[derive(Clone)]
pub struct SeccompExecutor {
    pub seccomp: LinuxSeccomp,
    pub temporary: Vec<Temporary>,
}

/// A capability added for loading the filter, and the sets it was added to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Temporary {
    pub cap: Capability,
    pub bounding: bool,
    pub effective: bool,
    pub permitted: bool,
}

impl Executor for SeccompExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        let notify = libcontainer::seccomp::initialize_seccomp(&self.seccomp).map_err(|e| {
            ExecutorError::Other(format!("loading the container's seccomp filter: {e}"))
        })?;
        if let Some(fd) = notify {
            // No listener for execs: a notify rule then fails its syscall.
            let _ = nix::unistd::close(fd);
        }
        // CAP_SETPCAP goes last: dropping from the bounding set needs it.
        let mut order = self.temporary.clone();
        order.sort_by_key(|t| t.cap == Capability::Setpcap);
        for t in order {
            let cap = to_caps(t.cap);
            for (set, added) in [
                (CapSet::Bounding, t.bounding),
                (CapSet::Effective, t.effective),
                (CapSet::Permitted, t.permitted),
            ] {
                if added {
                    caps::drop(None, set, cap).map_err(|e| {
                        ExecutorError::Other(format!("dropping {cap} after loading seccomp: {e}"))
                    })?;
                }
            }
        }
        get_executor().exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        get_executor().validate(spec)
    }

    fn setup_envs(&self, envs: HashMap<String, String>) -> Result<(), ExecutorSetEnvsError> {
        get_executor().setup_envs(envs)
    }
}

fn to_caps(cap: Capability) -> caps::Capability {
    match cap {
        Capability::SysAdmin => caps::Capability::CAP_SYS_ADMIN,
        _ => caps::Capability::CAP_SETPCAP,
    }
}

/// Gives an exec that lacks no_new_privs what it needs to load a filter;
/// returns what was added, for the executor to drop.
pub fn grant_for_filter(process: &mut Process) -> Vec<Temporary> {
    if process.no_new_privileges() == Some(true) {
        return vec![];
    }
    let mut caps = process.capabilities().clone().unwrap_or_default();
    let mut added = Vec::new();
    for cap in [Capability::SysAdmin, Capability::Setpcap] {
        let t = Temporary {
            cap,
            bounding: insert(&mut caps, cap, Set::Bounding),
            effective: insert(&mut caps, cap, Set::Effective),
            permitted: insert(&mut caps, cap, Set::Permitted),
        };
        if t.bounding || t.effective || t.permitted {
            added.push(t);
        }
    }
    process.set_capabilities(Some(caps));
    added
}

enum Set {
    Bounding,
    Effective,
    Permitted,
}

/// Adds `cap` to one set; true if it was not there.
fn insert(caps: &mut LinuxCapabilities, cap: Capability, set: Set) -> bool {
    let current = match set {
        Set::Bounding => caps.bounding(),
        Set::Effective => caps.effective(),
        Set::Permitted => caps.permitted(),
    };
    let mut updated = current.clone().unwrap_or_default();
    if !updated.insert(cap) {
        return false;
    }
    match set {
        Set::Bounding => caps.set_bounding(Some(updated)),
        Set::Effective => caps.set_effective(Some(updated)),
        Set::Permitted => caps.set_permitted(Some(updated)),
    };
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::spec::parse_process;

    #[test]
    fn only_execs_that_may_gain_privileges_get_temporary_capabilities() {
        let mut nnp = parse_process(
            br#"{"args":["ps"],"cwd":"/","user":{"uid":0,"gid":0},"noNewPrivileges":true}"#,
        )
        .unwrap();
        assert!(grant_for_filter(&mut nnp).is_empty());
        assert!(nnp.capabilities().is_none());

        let mut open = parse_process(
            br#"{"args":["ps"],"cwd":"/","user":{"uid":0,"gid":0},"noNewPrivileges":false,
                "capabilities":{"bounding":["CAP_SETPCAP"],"effective":["CAP_SETPCAP"],"permitted":["CAP_SETPCAP"]}}"#,
        )
        .unwrap();
        assert_eq!(
            grant_for_filter(&mut open),
            vec![Temporary {
                cap: Capability::SysAdmin,
                bounding: true,
                effective: true,
                permitted: true
            }]
        );
        let caps = open.capabilities().clone().unwrap();
        assert!(caps
            .effective()
            .as_ref()
            .unwrap()
            .contains(&Capability::SysAdmin));
        assert!(caps
            .bounding()
            .as_ref()
            .unwrap()
            .contains(&Capability::Setpcap));
    }
}
