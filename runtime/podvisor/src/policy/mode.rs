//! `policy.mode`: how much of Fargate's admission a node applies.

use serde::{Deserialize, Serialize};

use super::admission::Rule;

/// Which admission rules are enforced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    /// Every rule, as Fargate applies them.
    #[default]
    Fargate,
    /// Kata-like: the pod's VM is the boundary, so what stays inside it is
    /// honoured there (privileged containers get every capability and the
    /// guest's devices, capabilities may be added, DaemonSet pods run), and
    /// host ports are forwarded to the pod as the CNI portmap plugin does.
    /// What would put the node inside the pod stays refused: the node's
    /// namespaces and its devices.
    Vm,
}

impl PolicyMode {
    pub const ALL: [PolicyMode; 2] = [PolicyMode::Fargate, PolicyMode::Vm];

    pub fn name(self) -> &'static str {
        match self {
            PolicyMode::Fargate => "fargate",
            PolicyMode::Vm => "vm",
        }
    }

    /// Whether `rule` refuses pods in this mode.
    pub fn enforces(self, rule: Rule) -> bool {
        match self {
            PolicyMode::Fargate => true,
            PolicyMode::Vm => !matches!(
                rule,
                Rule::Privileged | Rule::Capability | Rule::DaemonSet | Rule::HostPort
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_mode_waives_what_stays_inside_the_vm_and_host_ports() {
        for rule in Rule::ALL {
            assert!(PolicyMode::Fargate.enforces(rule), "{rule}");
        }
        let waived: Vec<Rule> = Rule::ALL
            .into_iter()
            .filter(|r| !PolicyMode::Vm.enforces(*r))
            .collect();
        assert_eq!(
            waived,
            vec![
                Rule::Privileged,
                Rule::HostPort,
                Rule::DaemonSet,
                Rule::Capability
            ]
        );
    }
}
