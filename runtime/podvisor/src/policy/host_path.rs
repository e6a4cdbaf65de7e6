//! Which host paths a container may mount (rule `host-path`): only below
//! one of `policy.host_path_roots`, and never the node's pseudo file
//! systems or podvisor's own directories, whatever the roots say.
//!
//! Fargate supports no hostPath volumes; kubelet's own volumes of a pod
//! (emptyDir, configMap, secret, projected, its /etc/hosts and
//! termination log) all live in kubelet's directory of that pod, so that
//! directory is the default root in mode `fargate`. Mode `vm` (Kata-like)
//! allows any path by default.
//!
//! Paths are judged after the host resolved them (symlinks followed): the
//! caller opens the path and passes the path of what it opened, so a
//! symlink under an allowed root pointing elsewhere is judged by where it
//! points, and the mount is made from that same open file.

use std::path::{Component, Path, PathBuf};

use k8s_cri::v1::{ContainerConfig, PodSandboxConfig};

use super::admission::{container_subject, Rule};
use super::{PolicyConfigError, PolicyError, PolicyMode};

/// Stands for the pod's uid in a root.
pub const POD_UID: &str = "{pod_uid}";
/// kubelet's directory of a pod (its default `--root-dir`).
pub const KUBELET_POD_DIR: &str = "/var/lib/kubelet/pods/{pod_uid}";
/// Refused in every mode, with everything below them and every path
/// holding them: the node's devices, processes and kernel interfaces.
pub const NODE_PATHS: [&str; 3] = ["/dev", "/proc", "/sys"];

/// The roots in effect when `policy.host_path_roots` is not set.
pub fn default_roots(mode: PolicyMode) -> Vec<String> {
    match mode {
        PolicyMode::Fargate => vec![KUBELET_POD_DIR.to_string()],
        PolicyMode::Vm => vec!["/".to_string()],
    }
}

/// Why a configured root cannot be used.
pub fn root_problem(root: &str) -> Option<&'static str> {
    let path = Path::new(root);
    if !path.is_absolute() {
        return Some("it is not an absolute path");
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Some("it contains '..'");
    }
    None
}

/// Refuses a configured root that is relative or has a `..`.
pub fn validate_roots<'a>(
    roots: impl IntoIterator<Item = &'a String>,
) -> Result<(), PolicyConfigError> {
    for root in roots {
        if let Some(problem) = root_problem(root) {
            return Err(PolicyConfigError::BadHostPathRoot {
                root: root.clone(),
                problem,
            });
        }
    }
    Ok(())
}

pub(crate) fn deserialize_host_path_roots<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<String>>, D::Error> {
    let roots = <Vec<String> as serde::Deserialize>::deserialize(d)?;
    validate_roots(&roots).map_err(serde::de::Error::custom)?;
    Ok(Some(roots))
}

/// The host-path rule for one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPathRules {
    /// As configured, `{pod_uid}` filled in (for messages).
    roots: Vec<PathBuf>,
    /// Never allowed: [`NODE_PATHS`], state_dir and run_dir, with what
    /// they hold and what holds them.
    denied: Vec<(PathBuf, &'static str)>,
}

/// A host path the rule refuses, and why, for the refusal's detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPathRefusal {
    OutsideRoots { roots: Vec<PathBuf> },
    Denied { path: PathBuf, what: &'static str },
}

impl std::fmt::Display for HostPathRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPathRefusal::OutsideRoots { roots } if roots.is_empty() => f.write_str(
                "no host path is allowed (policy.host_path_roots allows none for this pod)",
            ),
            HostPathRefusal::OutsideRoots { roots } => {
                let list: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
                write!(
                    f,
                    "only paths under {} may be mounted (policy.host_path_roots; Fargate supports no \
                     hostPath volumes, only kubelet's own volumes of the pod)",
                    list.join(", ")
                )
            }
            HostPathRefusal::Denied { path, what } => write!(
                f,
                "it is or holds {what} {}, which no pod may mount",
                path.display()
            ),
        }
    }
}

/// Whether `uid` can stand in a path as one component.
fn is_plain_component(uid: &str) -> bool {
    !uid.is_empty() && uid != "." && uid != ".." && !uid.contains('/') && !uid.contains('\0')
}

/// Resolves `path` when it exists (its symlinks too), else keeps it.
fn resolved(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

impl HostPathRules {
    /// The rule for pod `pod_uid`, given the configured roots and
    /// podvisor's own directories.
    pub fn new(roots: &[String], pod_uid: &str, own_dirs: [&Path; 2]) -> HostPathRules {
        let roots = roots
            .iter()
            .filter_map(|root| {
                if !root.contains(POD_UID) {
                    return Some(PathBuf::from(root));
                }
                // A uid with a '/' or '..' would move the root elsewhere:
                // such a pod gets no root from this template.
                is_plain_component(pod_uid).then(|| PathBuf::from(root.replace(POD_UID, pod_uid)))
            })
            .collect();
        let mut denied: Vec<(PathBuf, &'static str)> = NODE_PATHS
            .iter()
            .map(|p| (PathBuf::from(p), "the node's"))
            .collect();
        denied.push((resolved(own_dirs[0]), "podvisor's state_dir"));
        denied.push((resolved(own_dirs[1]), "podvisor's run_dir"));
        HostPathRules { roots, denied }
    }

    /// Judges `path`, the host's resolved (absolute, symlink-free) path of
    /// what will be mounted.
    pub fn check(&self, path: &Path) -> Result<(), HostPathRefusal> {
        for (denied, what) in &self.denied {
            if path.starts_with(denied) || denied.starts_with(path) {
                return Err(HostPathRefusal::Denied {
                    path: denied.clone(),
                    what,
                });
            }
        }
        // A root is compared both as written and resolved (a kubelet root
        // dir reached through a symlink).
        let allowed = self
            .roots
            .iter()
            .any(|root| path.starts_with(root) || path.starts_with(resolved(root)));
        if allowed {
            Ok(())
        } else {
            Err(HostPathRefusal::OutsideRoots {
                roots: self.roots.clone(),
            })
        }
    }
}

/// Judges mount `index` of a CreateContainer request, whose host path
/// resolved to `resolved`; the refusal names rule `host-path`.
pub fn admit_host_path(
    rules: &HostPathRules,
    pod: Option<&PodSandboxConfig>,
    container: &ContainerConfig,
    index: usize,
    resolved: &Path,
) -> Result<(), PolicyError> {
    let Err(refusal) = rules.check(resolved) else {
        return Ok(());
    };
    let asked = container
        .mounts
        .get(index)
        .map_or("", |m| m.host_path.as_str());
    let shown = if Path::new(asked) == resolved {
        format!("{asked:?}")
    } else {
        format!(
            "{asked:?} (resolved on the host to {:?})",
            resolved.display().to_string()
        )
    };
    Err(PolicyError::Forbidden {
        rule: Rule::HostPath,
        subject: container_subject(pod, container),
        detail: format!("mount {index} is host path {shown}: {refusal}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(roots: &[&str], uid: &str) -> HostPathRules {
        let roots: Vec<String> = roots.iter().map(|r| r.to_string()).collect();
        HostPathRules::new(
            &roots,
            uid,
            [Path::new("/var/lib/podvisor"), Path::new("/run/podvisor")],
        )
    }

    #[test]
    fn fargate_allows_only_the_pods_own_kubelet_directory() {
        let r = rules(
            &default_roots(PolicyMode::Fargate)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            "u-1",
        );
        let pod_dir = Path::new("/var/lib/kubelet/pods/u-1");
        for ok in [
            "",
            "volumes/kubernetes.io~empty-dir/cache",
            "etc-hosts",
            "containers/app/0a1b",
        ] {
            assert_eq!(r.check(&pod_dir.join(ok)), Ok(()), "{ok}");
        }
        for refused in [
            "/etc",
            "/var/lib/kubelet/pods/u-2/volumes",
            "/var/lib/kubelet/pods",
            "/tmp/x",
        ] {
            let err = r.check(Path::new(refused)).unwrap_err();
            assert!(
                err.to_string()
                    .contains("only paths under /var/lib/kubelet/pods/u-1"),
                "{refused}: {err}"
            );
        }
    }

    #[test]
    fn a_uid_that_is_not_one_component_gets_no_root() {
        for uid in ["../../../etc", "a/b", "..", ".", ""] {
            let r = rules(&[KUBELET_POD_DIR], uid);
            let none = Err(HostPathRefusal::OutsideRoots { roots: vec![] });
            assert_eq!(r.check(Path::new("/etc/passwd")), none, "{uid}");
            assert_eq!(
                r.check(Path::new("/var/lib/kubelet/pods/a/b")),
                none,
                "{uid}"
            );
            assert_eq!(
                r.check(Path::new("/var/lib/kubelet/pods/x"))
                    .unwrap_err()
                    .to_string(),
                "no host path is allowed (policy.host_path_roots allows none for this pod)"
            );
        }
    }

    #[test]
    fn vm_allows_any_path_but_the_nodes_and_podvisors_own() {
        let r = rules(&["/"], "u");
        assert_eq!(r.check(Path::new("/tmp/data")), Ok(()));
        assert_eq!(r.check(Path::new("/etc")), Ok(()));
        for (refused, holder) in [
            ("/dev/kvm", "/dev"),
            ("/proc", "/proc"),
            ("/sys/fs/cgroup", "/sys"),
            ("/var/lib/podvisor/sandboxes/x/share", "/var/lib/podvisor"),
            ("/run/podvisor", "/run/podvisor"),
            // Holding them would expose them through its submounts.
            ("/", "/dev"),
            ("/var/lib", "/var/lib/podvisor"),
            ("/run", "/run/podvisor"),
        ] {
            match r.check(Path::new(refused)) {
                Err(HostPathRefusal::Denied { path, .. }) => {
                    assert_eq!(path, Path::new(holder), "{refused}")
                }
                other => panic!("{refused}: {other:?}"),
            }
        }
    }

    #[test]
    fn configured_roots_must_be_absolute_without_dot_dot() {
        assert_eq!(root_problem("/data/{pod_uid}"), None);
        assert!(root_problem("data").is_some());
        assert!(root_problem("/data/../etc").is_some());
    }
}
