//! Fargate rules (issue #8): which pods run at all (profiles), what they
//! may not ask for (admission), how big their VM is (sizing), and the
//! rlimits of their processes (limits). See docs/policy.md.
//!
//! RunPodSandbox calls [`PolicyConfig::admit_pod`] (profile, sandbox
//! admission, size); CreateContainer calls [`admit_container`] and puts
//! [`LimitsConfig::oci_rlimits`] in the container's spec and every exec.

mod admission;
mod config;
mod error;
mod glob;
mod host_path;
mod limits;
mod mode;
mod profile;
mod sizing;
#[cfg(test)]
mod testutil;

pub use admission::{
    admit_container, admit_sandbox, explain, Rule, ALLOWED_ADDED_CAPABILITIES, DAEMONSET_POD_LABEL,
};
pub use config::PolicyConfig;
pub use error::{PolicyConfigError, PolicyError};
pub use host_path::{
    admit_host_path, default_roots, HostPathRefusal, HostPathRules, KUBELET_POD_DIR, NODE_PATHS,
    POD_UID,
};
pub use limits::{LimitsConfig, Rlimit, DEFAULT_RLIMIT_HARD, DEFAULT_RLIMIT_SOFT};
pub use mode::PolicyMode;
pub use profile::{select_profile, Profile, Selector, MAX_SELECTORS, PROFILE_ANNOTATION};
pub use sizing::{
    size, Capacity, Request, VmSize, CAPACITY_PROVISIONED_ANNOTATION, CPU_PERIOD_US, LARGEST,
    SYSTEM_OVERHEAD_MIB,
};

use k8s_cri::v1::PodSandboxConfig;

/// A pod the policy lets run: the profile that selected it and its VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodAdmission {
    pub profile: String,
    pub size: VmSize,
}

impl PodAdmission {
    /// The annotations the runtime adds to the sandbox.
    pub fn annotations(&self) -> [(&'static str, String); 2] {
        [
            (PROFILE_ANNOTATION, self.profile.clone()),
            (
                CAPACITY_PROVISIONED_ANNOTATION,
                self.size.capacity_provisioned(),
            ),
        ]
    }
}

impl PolicyConfig {
    /// Everything RunPodSandbox asks of the policy, in Fargate's order: a
    /// profile must select the pod, the sandbox rules must pass, and the
    /// pod must fit a configuration (sized from the sandbox's `resources`
    /// plus `overhead`).
    pub fn admit_pod(&self, pod: &PodSandboxConfig) -> Result<PodAdmission, PolicyError> {
        let profile = select_profile(&self.profiles, pod)?;
        admit_sandbox(pod, self.mode)?;
        let size = size(Request::of_sandbox(pod.linux.as_ref()))?;
        Ok(PodAdmission {
            profile: profile.name.clone(),
            size,
        })
    }
}

impl PolicyConfig {
    /// The container rules of CreateContainer, in this node's mode.
    pub fn admit_container(
        &self,
        pod: Option<&PodSandboxConfig>,
        container: &k8s_cri::v1::ContainerConfig,
    ) -> Result<(), PolicyError> {
        admit_container(pod, container, self.mode)
    }
}

impl PolicyConfig {
    /// `policy.host_path_roots`, or the mode's default.
    pub fn host_path_roots(&self) -> Vec<String> {
        self.host_path_roots
            .clone()
            .unwrap_or_else(|| default_roots(self.mode))
    }

    /// The host-path rule for pod `pod_uid`; `own_dirs` are the daemon's
    /// state_dir and run_dir.
    pub fn host_path_rules(&self, pod_uid: &str, own_dirs: [&std::path::Path; 2]) -> HostPathRules {
        HostPathRules::new(&self.host_path_roots(), pod_uid, own_dirs)
    }

    /// `podvisor policy explain`: the rules, then the host-path roots in
    /// effect.
    pub fn explain(&self) -> String {
        let origin = if self.host_path_roots.is_some() {
            "configured"
        } else {
            "the mode's default"
        };
        format!(
            "{}host_path_roots = {:?} ({origin}; {POD_UID} is the pod's uid)\n",
            explain(self.mode),
            self.host_path_roots()
        )
    }
}

/// The pod's name and namespace ("" when kubelet sent no metadata).
fn pod_identity(pod: &PodSandboxConfig) -> (&str, &str) {
    pod.metadata
        .as_ref()
        .map_or(("", ""), |m| (m.name.as_str(), m.namespace.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::{LinuxContainerResources, LinuxPodSandboxConfig, PortMapping};
    use std::collections::BTreeMap;

    fn policy() -> PolicyConfig {
        PolicyConfig {
            profiles: vec![Profile {
                name: "prod".into(),
                selectors: vec![Selector {
                    namespace: "prod".into(),
                    labels: BTreeMap::new(),
                }],
            }],
            ..PolicyConfig::default()
        }
    }

    #[test]
    fn admit_pod_returns_profile_size_and_annotations() {
        let mut pod = testutil::pod("web", "prod", &[]);
        pod.linux = Some(LinuxPodSandboxConfig {
            resources: Some(LinuxContainerResources {
                cpu_quota: 100_000,
                cpu_period: 100_000,
                memory_limit_in_bytes: 3 << 30,
                ..Default::default()
            }),
            ..Default::default()
        });
        let admitted = policy().admit_pod(&pod).unwrap();
        assert_eq!(admitted.profile, "prod");
        assert_eq!(admitted.size.memory_mib, 3 * 1024 + 256);
        assert_eq!(
            admitted.annotations(),
            [
                ("podvisor.io/fargate-profile", "prod".to_string()),
                ("CapacityProvisioned", "1vCPU 3GB".to_string()),
            ]
        );
    }

    #[test]
    fn explain_ends_with_the_host_path_roots_in_effect() {
        let fargate = PolicyConfig::default().explain();
        assert!(fargate.ends_with(
            "host_path_roots = [\"/var/lib/kubelet/pods/{pod_uid}\"] (the mode's default; {pod_uid} is the pod's uid)\n"
        ), "{fargate}");
        let vm = PolicyConfig {
            mode: PolicyMode::Vm,
            ..PolicyConfig::default()
        };
        assert!(vm
            .explain()
            .contains("host_path_roots = [\"/\"] (the mode's default"));
        let configured = PolicyConfig {
            host_path_roots: Some(vec!["/srv/volumes".into()]),
            ..vm
        };
        assert!(configured
            .explain()
            .contains("host_path_roots = [\"/srv/volumes\"] (configured"));
        assert!(configured.explain().contains("host-path "));
    }

    #[test]
    fn admit_pod_checks_profile_then_rules_then_size() {
        let p = policy();
        let unselected = testutil::pod("web", "dev", &[("pod-template-generation", "1")]);
        assert!(matches!(
            p.admit_pod(&unselected),
            Err(PolicyError::NoMatchingProfile { .. })
        ));
        let mut forbidden = testutil::pod("web", "prod", &[]);
        forbidden.port_mappings = vec![PortMapping {
            host_port: 80,
            ..Default::default()
        }];
        forbidden.linux = Some(LinuxPodSandboxConfig {
            resources: Some(LinuxContainerResources {
                cpu_quota: 10_000_000,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(matches!(
            p.admit_pod(&forbidden),
            Err(PolicyError::Forbidden {
                rule: Rule::HostPort,
                ..
            })
        ));
        forbidden.port_mappings.clear();
        assert!(matches!(
            p.admit_pod(&forbidden),
            Err(PolicyError::TooLarge {
                millicpus: 100_000,
                ..
            })
        ));
    }
}
