//! Admission: what a Fargate pod may not ask for, whatever profile
//! selected it.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use k8s_cri::v1::{ContainerConfig, NamespaceMode, NamespaceOption, PodSandboxConfig};

use super::{PolicyError, PolicyMode};

/// The label the DaemonSet controller puts on every pod it creates.
/// `controller-revision-hash` is no use here: StatefulSet pods carry it too.
pub const DAEMONSET_POD_LABEL: &str = "pod-template-generation";

/// The capabilities a container may add (Fargate: "supports only the
/// SYS_PTRACE kernel capability"), without the `CAP_` prefix.
pub const ALLOWED_ADDED_CAPABILITIES: &[&str] = &["SYS_PTRACE"];

/// One admission rule. Its name appears in every refusal it causes and in
/// `podvisor policy explain`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// A privileged sandbox or container: it would expect the host's
    /// devices and full capabilities, which a pod VM does not offer.
    Privileged,
    /// hostNetwork: the pod has its own network interface, never the node's.
    HostNetwork,
    /// hostPID: the node's processes are not visible from the pod's VM.
    HostPid,
    /// hostIPC: the node's IPC namespace is not shared with the pod's VM.
    HostIpc,
    /// A port mapping with a host port: the pod's ports are reached on its
    /// own IP address only (mode vm forwards host ports instead).
    HostPort,
    /// A DaemonSet pod (label `pod-template-generation`): DaemonSets run
    /// per node, and Fargate has no node to run them on.
    DaemonSet,
    /// Host devices, CDI devices (GPUs) or a mount of anything under the
    /// host's `/dev`: a pod VM gets only its own virtio devices.
    HostDevice,
    /// An added capability other than SYS_PTRACE.
    Capability,
    /// A host path outside `policy.host_path_roots`, or the node's /dev,
    /// /proc, /sys or podvisor's own directories (every mode).
    HostPath,
}

impl Rule {
    pub const ALL: [Rule; 9] = [
        Rule::Privileged,
        Rule::HostNetwork,
        Rule::HostPid,
        Rule::HostIpc,
        Rule::HostPort,
        Rule::DaemonSet,
        Rule::HostDevice,
        Rule::Capability,
        Rule::HostPath,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rule::Privileged => "privileged",
            Rule::HostNetwork => "host-network",
            Rule::HostPid => "host-pid",
            Rule::HostIpc => "host-ipc",
            Rule::HostPort => "host-port",
            Rule::DaemonSet => "daemonset",
            Rule::HostDevice => "host-device",
            Rule::Capability => "capability",
            Rule::HostPath => "host-path",
        }
    }

    /// One line for `podvisor policy explain`.
    pub fn explanation(self) -> &'static str {
        match self {
            Rule::Privileged => {
                "privileged sandboxes and containers: a pod VM has no host devices or host privileges to give (in mode vm they are privileged inside their VM)"
            }
            Rule::HostNetwork => {
                "hostNetwork is refused: each pod has its own network interface in its own VM"
            }
            Rule::HostPid => "hostPID is refused: the node's processes are outside the pod's VM",
            Rule::HostIpc => "hostIPC is refused: the node's IPC namespace is outside the pod's VM",
            Rule::HostPort => {
                "hostPort: a pod is reached on its own IP, never on a port of the node (mode vm forwards the node's port to the pod, as the CNI portmap plugin does)"
            }
            Rule::DaemonSet => {
                "DaemonSet pods (label pod-template-generation): Fargate has no node to run them on (mode vm runs them)"
            }
            Rule::HostDevice => {
                "host devices, CDI devices (GPUs) and mounts from the host's /dev are refused: a pod VM gets only virtio devices"
            }
            Rule::Capability => {
                "adding any capability but SYS_PTRACE is refused, as on Fargate (in mode vm any capability holds inside the VM)"
            }
            Rule::HostPath => {
                "host paths only below policy.host_path_roots, judged with symlinks resolved (default roots: in mode fargate kubelet's directory of the pod alone, as Fargate has no hostPath volumes; in mode vm /); never /dev, /proc, /sys or podvisor's state_dir and run_dir"
            }
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The text of `podvisor policy explain`: every rule, one per line, with
/// the modes that enforce it; `current` is marked.
pub fn explain(current: PolicyMode) -> String {
    let mut out = format!(
        "policy.mode = \"{}\" (modes: {})\n",
        current.name(),
        PolicyMode::ALL.map(PolicyMode::name).join(", ")
    );
    for rule in Rule::ALL {
        let modes: Vec<&str> = PolicyMode::ALL
            .into_iter()
            .filter(|m| m.enforces(rule))
            .map(PolicyMode::name)
            .collect();
        let state = if current.enforces(rule) {
            "refused"
        } else {
            "allowed"
        };
        out.push_str(&format!(
            "{:<14} {:<8} [{}] {}\n",
            rule.name(),
            state,
            modes.join(","),
            rule.explanation()
        ));
    }
    out
}

/// The sandbox-level rules, for RunPodSandbox.
pub fn admit_sandbox(pod: &PodSandboxConfig, mode: PolicyMode) -> Result<(), PolicyError> {
    let subject = || pod_subject(pod);
    let security = pod.linux.as_ref().and_then(|l| l.security_context.as_ref());
    if mode.enforces(Rule::Privileged) && security.is_some_and(|s| s.privileged) {
        return Err(forbid(
            Rule::Privileged,
            subject(),
            "the sandbox is privileged",
        ));
    }
    check_namespaces(security.and_then(|s| s.namespace_options.as_ref()), subject)?;
    if let Some(port) = pod
        .port_mappings
        .iter()
        .find(|p| p.host_port != 0)
        .filter(|_| mode.enforces(Rule::HostPort))
    {
        return Err(forbid(
            Rule::HostPort,
            subject(),
            format!(
                "container port {} is mapped to host port {}",
                port.container_port, port.host_port
            ),
        ));
    }
    if let Some(generation) = pod
        .labels
        .get(DAEMONSET_POD_LABEL)
        .filter(|_| mode.enforces(Rule::DaemonSet))
    {
        return Err(forbid(
            Rule::DaemonSet,
            subject(),
            format!("it is a DaemonSet pod ({DAEMONSET_POD_LABEL}={generation})"),
        ));
    }
    Ok(())
}

/// The container-level rules, for CreateContainer. `pod` is the request's
/// sandbox config, used only to name the pod in refusals.
pub fn admit_container(
    pod: Option<&PodSandboxConfig>,
    container: &ContainerConfig,
    mode: PolicyMode,
) -> Result<(), PolicyError> {
    let subject = || container_subject(pod, container);
    let security = container
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    if mode.enforces(Rule::Privileged) && security.is_some_and(|s| s.privileged) {
        return Err(forbid(
            Rule::Privileged,
            subject(),
            "the container is privileged",
        ));
    }
    check_namespaces(security.and_then(|s| s.namespace_options.as_ref()), subject)?;
    if let Some(device) = container.devices.first() {
        return Err(forbid(
            Rule::HostDevice,
            subject(),
            format!("it asks for host device {:?}", device.host_path),
        ));
    }
    if let Some(device) = container.cdi_devices.first() {
        return Err(forbid(
            Rule::HostDevice,
            subject(),
            format!("it asks for CDI device {:?}", device.name),
        ));
    }
    if let Some(mount) = container.mounts.iter().find(|m| is_under_dev(&m.host_path)) {
        return Err(forbid(
            Rule::HostDevice,
            subject(),
            format!(
                "it mounts the host's {:?} at {:?}",
                mount.host_path, mount.container_path
            ),
        ));
    }
    let caps = security
        .and_then(|s| s.capabilities.as_ref())
        .filter(|_| mode.enforces(Rule::Capability));
    if let Some(caps) = caps {
        let added = caps
            .add_capabilities
            .iter()
            .chain(&caps.add_ambient_capabilities);
        for cap in added {
            if !is_allowed_capability(cap) {
                return Err(forbid(
                    Rule::Capability,
                    subject(),
                    format!(
                        "it adds capability {cap:?}; only {} may be added",
                        ALLOWED_ADDED_CAPABILITIES.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn check_namespaces(
    options: Option<&NamespaceOption>,
    subject: impl Fn() -> String,
) -> Result<(), PolicyError> {
    let Some(options) = options else {
        return Ok(());
    };
    let node = NamespaceMode::Node as i32;
    for (mode, rule, what) in [
        (options.network, Rule::HostNetwork, "network"),
        (options.pid, Rule::HostPid, "PID"),
        (options.ipc, Rule::HostIpc, "IPC"),
    ] {
        if mode == node {
            return Err(forbid(
                rule,
                subject(),
                format!("it asks for the node's {what} namespace"),
            ));
        }
    }
    Ok(())
}

/// `CAP_SYS_PTRACE`, `sys_ptrace` and `SYS_PTRACE` are the same capability.
fn is_allowed_capability(name: &str) -> bool {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    ALLOWED_ADDED_CAPABILITIES.contains(&bare)
}

/// Whether a host path is `/dev` or below it, judged on the lexically
/// normalised path so `/dev//kvm` or `/tmp/../dev/kvm` are caught too.
fn is_under_dev(host_path: &str) -> bool {
    let mut normal = PathBuf::from("/");
    let path = Path::new(host_path);
    if !path.is_absolute() {
        return false;
    }
    for component in path.components() {
        match component {
            Component::Normal(part) => normal.push(part),
            Component::ParentDir => {
                normal.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    normal.starts_with("/dev")
}

fn forbid(rule: Rule, subject: String, detail: impl Into<String>) -> PolicyError {
    PolicyError::Forbidden {
        rule,
        subject,
        detail: detail.into(),
    }
}

fn pod_subject(pod: &PodSandboxConfig) -> String {
    let (name, namespace) = super::pod_identity(pod);
    format!("pod \"{namespace}/{name}\"")
}

pub(super) fn container_subject(
    pod: Option<&PodSandboxConfig>,
    container: &ContainerConfig,
) -> String {
    let name = container.metadata.as_ref().map_or("", |m| m.name.as_str());
    match pod {
        Some(pod) => format!("container {name:?} of {}", pod_subject(pod)),
        None => format!("container {name:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testutil::{container, pod};
    use k8s_cri::v1::{
        Capability, CdiDevice, Device, LinuxContainerConfig, LinuxContainerSecurityContext,
        LinuxPodSandboxConfig, LinuxSandboxSecurityContext, Mount, PortMapping,
    };

    fn node_ns(network: bool, pid: bool, ipc: bool) -> NamespaceOption {
        let mode = |host| {
            if host {
                NamespaceMode::Node as i32
            } else {
                NamespaceMode::Pod as i32
            }
        };
        NamespaceOption {
            network: mode(network),
            pid: mode(pid),
            ipc: mode(ipc),
            ..Default::default()
        }
    }

    fn pod_with_security(security: LinuxSandboxSecurityContext) -> PodSandboxConfig {
        PodSandboxConfig {
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(security),
                ..Default::default()
            }),
            ..pod("web", "prod", &[])
        }
    }

    fn container_with_security(security: LinuxContainerSecurityContext) -> ContainerConfig {
        ContainerConfig {
            linux: Some(LinuxContainerConfig {
                security_context: Some(security),
                ..Default::default()
            }),
            ..container("app")
        }
    }

    fn with_caps(add: &[&str], ambient: &[&str]) -> ContainerConfig {
        container_with_security(LinuxContainerSecurityContext {
            capabilities: Some(Capability {
                add_capabilities: add.iter().map(|s| s.to_string()).collect(),
                add_ambient_capabilities: ambient.iter().map(|s| s.to_string()).collect(),
                drop_capabilities: vec!["ALL".into()],
            }),
            ..Default::default()
        })
    }

    fn mount(host_path: &str, container_path: &str) -> Mount {
        Mount {
            host_path: host_path.into(),
            container_path: container_path.into(),
            ..Default::default()
        }
    }

    fn refused_rule(r: Result<(), PolicyError>) -> Rule {
        match r {
            Err(PolicyError::Forbidden { rule, .. }) => rule,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// What kubelet sends for an ordinary Deployment pod passes.
    #[test]
    fn an_ordinary_pod_and_container_are_admitted() {
        let p = PodSandboxConfig {
            port_mappings: vec![PortMapping {
                container_port: 8080,
                host_port: 0,
                ..Default::default()
            }],
            ..pod_with_security(LinuxSandboxSecurityContext {
                namespace_options: Some(node_ns(false, false, false)),
                ..Default::default()
            })
        };
        let mut p = p;
        p.labels.insert("pod-template-hash".into(), "7f9c".into());
        p.labels
            .insert("controller-revision-hash".into(), "abc".into());
        assert_eq!(admit_sandbox(&p, PolicyMode::Fargate), Ok(()));

        let mut c = with_caps(&["SYS_PTRACE", "cap_sys_ptrace"], &["CAP_SYS_PTRACE"]);
        if let Some(s) = c.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
            s.namespace_options = Some(node_ns(false, false, false));
        }
        c.mounts = vec![
            mount(
                "/var/lib/kubelet/pods/uid/containers/app/0",
                "/dev/termination-log",
            ),
            mount("/var/lib/kubelet/pods/uid/volumes/cm", "/etc/config"),
            mount("/devices", "/data"),
            mount("", "/image-volume"),
        ];
        assert_eq!(admit_container(Some(&p), &c, PolicyMode::Fargate), Ok(()));
        assert_eq!(
            admit_container(None, &container("bare"), PolicyMode::Fargate),
            Ok(())
        );
    }

    #[test]
    fn a_privileged_sandbox_is_refused() {
        let p = pod_with_security(LinuxSandboxSecurityContext {
            privileged: true,
            ..Default::default()
        });
        let err = admit_sandbox(&p, PolicyMode::Fargate).unwrap_err();
        assert_eq!(refused_rule(Err(err.clone())), Rule::Privileged);
        let message = err.to_string();
        assert!(message.contains("`privileged`"), "{message}");
        assert!(message.contains("prod/web"), "{message}");
    }

    #[test]
    fn a_privileged_container_is_refused() {
        let c = container_with_security(LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        });
        let err =
            admit_container(Some(&pod("web", "prod", &[])), &c, PolicyMode::Fargate).unwrap_err();
        assert_eq!(refused_rule(Err(err.clone())), Rule::Privileged);
        let message = err.to_string();
        assert!(
            message.contains("container \"app\" of pod \"prod/web\""),
            "{message}"
        );
    }

    #[test]
    fn host_network_pid_and_ipc_are_refused_in_sandbox_and_container() {
        for (ns, rule) in [
            (node_ns(true, false, false), Rule::HostNetwork),
            (node_ns(false, true, false), Rule::HostPid),
            (node_ns(false, false, true), Rule::HostIpc),
        ] {
            let p = pod_with_security(LinuxSandboxSecurityContext {
                namespace_options: Some(ns.clone()),
                ..Default::default()
            });
            assert_eq!(refused_rule(admit_sandbox(&p, PolicyMode::Fargate)), rule);
            let c = container_with_security(LinuxContainerSecurityContext {
                namespace_options: Some(ns),
                ..Default::default()
            });
            assert_eq!(
                refused_rule(admit_container(None, &c, PolicyMode::Fargate)),
                rule
            );
        }
    }

    #[test]
    fn a_host_port_is_refused() {
        let p = PodSandboxConfig {
            port_mappings: vec![
                PortMapping {
                    container_port: 80,
                    ..Default::default()
                },
                PortMapping {
                    container_port: 443,
                    host_port: 8443,
                    ..Default::default()
                },
            ],
            ..pod("web", "prod", &[])
        };
        let err = admit_sandbox(&p, PolicyMode::Fargate).unwrap_err();
        assert!(err.to_string().contains("host port 8443"), "{err}");
        assert_eq!(refused_rule(Err(err)), Rule::HostPort);
    }

    #[test]
    fn vm_mode_admits_privileged_capabilities_daemonsets_and_host_ports_but_not_the_node() {
        let vm = PolicyMode::Vm;
        let privileged_pod = pod_with_security(LinuxSandboxSecurityContext {
            privileged: true,
            ..Default::default()
        });
        assert_eq!(admit_sandbox(&privileged_pod, vm), Ok(()));
        let privileged = container_with_security(LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        });
        assert_eq!(admit_container(None, &privileged, vm), Ok(()));
        let admin = with_caps(&["NET_ADMIN", "SYS_ADMIN"], &["NET_RAW"]);
        assert_eq!(admit_container(None, &admin, vm), Ok(()));
        let daemon = pod("agent", "kube-system", &[("pod-template-generation", "3")]);
        assert_eq!(admit_sandbox(&daemon, vm), Ok(()));

        for (ns, rule) in [
            (node_ns(true, false, false), Rule::HostNetwork),
            (node_ns(false, true, false), Rule::HostPid),
            (node_ns(false, false, true), Rule::HostIpc),
        ] {
            let p = pod_with_security(LinuxSandboxSecurityContext {
                privileged: true,
                namespace_options: Some(ns),
                ..Default::default()
            });
            assert_eq!(refused_rule(admit_sandbox(&p, vm)), rule);
        }
        let host_port = PodSandboxConfig {
            port_mappings: vec![PortMapping {
                container_port: 80,
                host_port: 80,
                ..Default::default()
            }],
            ..pod("web", "prod", &[])
        };
        assert_eq!(
            admit_sandbox(&host_port, vm),
            Ok(()),
            "forwarded in mode vm"
        );
        assert_eq!(
            refused_rule(admit_sandbox(&host_port, PolicyMode::Fargate)),
            Rule::HostPort
        );
        let mut gpu = container("gpu");
        gpu.devices = vec![Device {
            host_path: "/dev/nvidia0".into(),
            ..Default::default()
        }];
        assert_eq!(
            refused_rule(admit_container(None, &gpu, vm)),
            Rule::HostDevice
        );
    }

    #[test]
    fn explain_marks_what_the_current_mode_refuses() {
        let text = explain(PolicyMode::Vm);
        assert!(text.starts_with("policy.mode = \"vm\""), "{text}");
        let line = |rule: &str| {
            text.lines()
                .find(|l| l.starts_with(rule))
                .unwrap_or_else(|| panic!("{rule} missing: {text}"))
                .to_string()
        };
        let words = |rule: &str| -> Vec<String> {
            line(rule)
                .split_whitespace()
                .take(3)
                .map(String::from)
                .collect()
        };
        assert_eq!(words("privileged"), ["privileged", "allowed", "[fargate]"]);
        assert_eq!(words("host-pid"), ["host-pid", "refused", "[fargate,vm]"]);
        assert_eq!(words("host-port"), ["host-port", "allowed", "[fargate]"]);
        assert!(line("host-port").contains("forwards"), "{text}");
        assert!(explain(PolicyMode::Fargate)
            .lines()
            .skip(1)
            .all(|l| l.contains("refused")));
    }

    #[test]
    fn a_daemonset_pod_is_refused() {
        let p = pod(
            "agent-x",
            "kube-system",
            &[("pod-template-generation", "1")],
        );
        assert_eq!(
            refused_rule(admit_sandbox(&p, PolicyMode::Fargate)),
            Rule::DaemonSet
        );
    }

    #[test]
    fn host_and_cdi_devices_and_dev_mounts_are_refused() {
        let mut with_device = container("gpu");
        with_device.devices = vec![Device {
            host_path: "/dev/nvidia0".into(),
            container_path: "/dev/nvidia0".into(),
            permissions: "rwm".into(),
        }];
        assert_eq!(
            refused_rule(admit_container(None, &with_device, PolicyMode::Fargate)),
            Rule::HostDevice
        );

        let mut with_cdi = container("gpu");
        with_cdi.cdi_devices = vec![CdiDevice {
            name: "nvidia.com/gpu=0".into(),
        }];
        assert_eq!(
            refused_rule(admit_container(None, &with_cdi, PolicyMode::Fargate)),
            Rule::HostDevice
        );

        for host_path in [
            "/dev/kvm",
            "/dev/nvidiactl",
            "/dev/nvidia-uvm",
            "/dev/dri",
            "/dev/dri/card0",
            "/dev",
            "/dev//kvm",
            "/tmp/../dev/kvm",
        ] {
            let mut c = container("app");
            c.mounts = vec![mount(host_path, "/mnt")];
            assert_eq!(
                refused_rule(admit_container(None, &c, PolicyMode::Fargate)),
                Rule::HostDevice,
                "{host_path}"
            );
        }
    }

    #[test]
    fn capabilities_other_than_sys_ptrace_are_refused() {
        for (add, ambient) in [
            (&["NET_ADMIN"][..], &[][..]),
            (&["SYS_PTRACE", "CAP_SYS_ADMIN"][..], &[][..]),
            (&["ALL"][..], &[][..]),
            (&[][..], &["NET_RAW"][..]),
            (&["SYS_PTRACEX"][..], &[][..]),
        ] {
            let err =
                admit_container(None, &with_caps(add, ambient), PolicyMode::Fargate).unwrap_err();
            assert!(err.to_string().contains("SYS_PTRACE"), "{err}");
            assert_eq!(
                refused_rule(Err(err)),
                Rule::Capability,
                "{add:?} {ambient:?}"
            );
        }
    }

    #[test]
    fn sys_ptrace_is_accepted_in_any_spelling() {
        for name in [
            "SYS_PTRACE",
            "CAP_SYS_PTRACE",
            "sys_ptrace",
            "Cap_Sys_Ptrace",
            " SYS_PTRACE ",
        ] {
            assert_eq!(
                admit_container(None, &with_caps(&[name], &[]), PolicyMode::Fargate),
                Ok(()),
                "{name}"
            );
        }
    }

    #[test]
    fn explain_lists_every_rule_once() {
        let text = explain(PolicyMode::Fargate);
        assert_eq!(
            text.lines().count(),
            Rule::ALL.len() + 1,
            "a mode line, then the rules"
        );
        for rule in Rule::ALL {
            let line = text
                .lines()
                .find(|l| l.split_whitespace().next() == Some(rule.name()))
                .unwrap_or_else(|| panic!("{} missing from {text}", rule.name()));
            assert!(line.contains(rule.explanation()), "{line}");
        }
    }
}
