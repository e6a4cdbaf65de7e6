//! Why the policy refuses a pod, and why it refuses a configuration.

use super::admission::Rule;
use super::sizing::{decimal, LARGEST};

/// A pod or container the policy refuses. The CRI layer maps each variant
/// to the gRPC code named in its doc comment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// No selector of any profile matches the pod, so Fargate would not
    /// run it at all. gRPC: `FailedPrecondition` (forbidden by policy).
    #[error(
        "pod {pod:?} in namespace {namespace:?} matches no Fargate profile (profiles checked: {})",
        list(.profiles)
    )]
    NoMatchingProfile {
        pod: String,
        namespace: String,
        profiles: Vec<String>,
    },
    /// An admission rule forbids what the pod or container asks for.
    /// gRPC: `FailedPrecondition` (forbidden by policy).
    #[error("{subject} is refused by Fargate rule `{rule}`: {detail}")]
    Forbidden {
        rule: Rule,
        /// `pod "ns/name"` or `container "c" of pod "ns/name"`.
        subject: String,
        detail: String,
    },
    /// The pod asks for more than the largest Fargate configuration.
    /// gRPC: `ResourceExhausted`: no VM this runtime offers has that much
    /// capacity; the request itself is well-formed, so not InvalidArgument.
    #[error(
        "pod requests {} vCPU and {memory_mib} MiB of memory, more than the largest Fargate configuration ({})",
        decimal(*.millicpus, 1000),
        LARGEST
    )]
    TooLarge { millicpus: u64, memory_mib: u64 },
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// A `[policy]` configuration that cannot be used; reported when the
/// configuration is loaded (or by `PolicyConfig::validate`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyConfigError {
    #[error("policy.profiles is empty: no pod could run")]
    NoProfiles,
    #[error("policy.profiles[{index}] has an empty name")]
    EmptyProfileName { index: usize },
    #[error("policy.profiles: the name {name:?} is used twice")]
    DuplicateProfile { name: String },
    #[error("profile {profile:?} has no selectors, so it selects no pod")]
    NoSelectors { profile: String },
    #[error("profile {profile:?} has {count} selectors; a profile has at most {max}")]
    TooManySelectors {
        profile: String,
        count: usize,
        max: usize,
    },
    #[error("selector {index} of profile {profile:?} has an empty namespace (use \"*\" for every namespace)")]
    EmptyNamespace { profile: String, index: usize },
    #[error("policy.host_path_roots: {root:?} cannot be used: {problem}")]
    BadHostPathRoot { root: String, problem: &'static str },
    #[error("policy.limits.{name}: soft limit {soft} is above the hard limit {hard}")]
    SoftAboveHard {
        name: &'static str,
        soft: u64,
        hard: u64,
    },
}
