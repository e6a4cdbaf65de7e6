//! Fargate profiles: which pods this node runs at all.

use std::collections::{BTreeMap, HashMap};

use k8s_cri::v1::PodSandboxConfig;
use serde::{Deserialize, Deserializer, Serialize};

use super::glob::glob_match;
use super::{PolicyConfigError, PolicyError};

/// Sandbox annotation that records the name of the profile that selected
/// the pod (Fargate itself records it as `eks.amazonaws.com/fargate-profile`).
pub const PROFILE_ANNOTATION: &str = "podvisor.io/fargate-profile";

/// Fargate's limit on selectors per profile.
pub const MAX_SELECTORS: usize = 5;

/// A named set of selectors; a pod that any of them matches may run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    #[serde(default)]
    pub selectors: Vec<Selector>,
}

/// Matches a pod by namespace and labels. Wildcards `*` and `?` work in the
/// namespace and in both the keys and the values of `labels`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    pub namespace: String,
    /// Every entry must match some label of the pod; none means any pod of
    /// the namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl Selector {
    pub fn matches(&self, namespace: &str, labels: &HashMap<String, String>) -> bool {
        glob_match(&self.namespace, namespace)
            && self.labels.iter().all(|(key, value)| {
                labels
                    .iter()
                    .any(|(k, v)| glob_match(key, k) && glob_match(value, v))
            })
    }
}

impl Profile {
    /// The profile that selects every namespace: the default configuration.
    pub fn default_profile() -> Profile {
        Profile {
            name: "default".to_string(),
            selectors: vec![Selector {
                namespace: "*".to_string(),
                labels: BTreeMap::new(),
            }],
        }
    }

    pub fn matches(&self, namespace: &str, labels: &HashMap<String, String>) -> bool {
        self.selectors.iter().any(|s| s.matches(namespace, labels))
    }
}

/// The first profile, in configuration order, with a selector that matches
/// the pod (deterministic where Fargate picks one at random).
pub fn select_profile<'a>(
    profiles: &'a [Profile],
    pod: &PodSandboxConfig,
) -> Result<&'a Profile, PolicyError> {
    let (name, namespace) = super::pod_identity(pod);
    profiles
        .iter()
        .find(|p| p.matches(namespace, &pod.labels))
        .ok_or_else(|| PolicyError::NoMatchingProfile {
            pod: name.to_string(),
            namespace: namespace.to_string(),
            profiles: profiles.iter().map(|p| p.name.clone()).collect(),
        })
}

pub(crate) fn validate_profiles(profiles: &[Profile]) -> Result<(), PolicyConfigError> {
    if profiles.is_empty() {
        return Err(PolicyConfigError::NoProfiles);
    }
    for (index, profile) in profiles.iter().enumerate() {
        if profile.name.is_empty() {
            return Err(PolicyConfigError::EmptyProfileName { index });
        }
        if profiles[..index].iter().any(|p| p.name == profile.name) {
            return Err(PolicyConfigError::DuplicateProfile {
                name: profile.name.clone(),
            });
        }
        if profile.selectors.is_empty() {
            return Err(PolicyConfigError::NoSelectors {
                profile: profile.name.clone(),
            });
        }
        if profile.selectors.len() > MAX_SELECTORS {
            return Err(PolicyConfigError::TooManySelectors {
                profile: profile.name.clone(),
                count: profile.selectors.len(),
                max: MAX_SELECTORS,
            });
        }
        if let Some(index) = profile
            .selectors
            .iter()
            .position(|s| s.namespace.is_empty())
        {
            return Err(PolicyConfigError::EmptyNamespace {
                profile: profile.name.clone(),
                index,
            });
        }
    }
    Ok(())
}

/// Deserializes `policy.profiles` and validates it, so a bad list is a
/// configuration error at load time.
pub(crate) fn deserialize_profiles<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<Profile>, D::Error> {
    let profiles = Vec::<Profile>::deserialize(d)?;
    validate_profiles(&profiles).map_err(serde::de::Error::custom)?;
    Ok(profiles)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testutil::pod;

    fn selector(namespace: &str, labels: &[(&str, &str)]) -> Selector {
        Selector {
            namespace: namespace.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn profile(name: &str, selectors: Vec<Selector>) -> Profile {
        Profile {
            name: name.to_string(),
            selectors,
        }
    }

    #[test]
    fn selectors_match_namespace_and_label_subsets() {
        let app_web = [("app", "web"), ("tier", "frontend"), ("x", "1")];
        // (selector, pod namespace, pod labels, matches?)
        type Case<'a> = (Selector, &'a str, &'a [(&'a str, &'a str)], bool);
        let table: &[Case] = &[
            (selector("*", &[]), "anything", &[], true),
            (selector("default", &[]), "default", &[], true),
            (selector("default", &[]), "kube-system", &[], false),
            (selector("team-*", &[]), "team-a", &[], true),
            (selector("team-*", &[]), "prod", &[], false),
            (selector("team-?", &[]), "team-b", &[], true),
            (selector("team-?", &[]), "team-bb", &[], false),
            // Labels: a subset of the pod's labels matches.
            (selector("*", &[("app", "web")]), "ns", &app_web, true),
            (
                selector("*", &[("app", "web"), ("tier", "frontend")]),
                "ns",
                &app_web,
                true,
            ),
            // Every selector label must be present...
            (
                selector("*", &[("app", "web"), ("team", "a")]),
                "ns",
                &app_web,
                false,
            ),
            // ...with a matching value.
            (selector("*", &[("app", "db")]), "ns", &app_web, false),
            (selector("*", &[("app", "web")]), "ns", &[], false),
            // Wildcards in values and in keys.
            (selector("*", &[("app", "w*")]), "ns", &app_web, true),
            (selector("*", &[("app", "we?")]), "ns", &app_web, true),
            (
                selector("*", &[("app", "we?")]),
                "ns",
                &[("app", "webb")],
                false,
            ),
            (selector("*", &[("ti*", "front*")]), "ns", &app_web, true),
            (selector("*", &[("ti*", "back*")]), "ns", &app_web, false),
            // Namespace and labels must both match.
            (selector("prod", &[("app", "web")]), "dev", &app_web, false),
        ];
        for (sel, namespace, labels, want) in table {
            let labels = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(
                sel.matches(namespace, &labels),
                *want,
                "{sel:?} vs {namespace} {labels:?}"
            );
        }
    }

    #[test]
    fn the_first_matching_profile_is_selected() {
        let profiles = vec![
            profile("web", vec![selector("prod", &[("app", "web")])]),
            profile(
                "prod",
                vec![selector("staging", &[]), selector("prod", &[])],
            ),
            profile("all", vec![selector("*", &[])]),
        ];
        let table = [
            ("prod", vec![("app", "web")], "web"),
            ("prod", vec![("app", "db")], "prod"),
            ("staging", vec![], "prod"),
            ("dev", vec![("app", "web")], "all"),
        ];
        for (namespace, labels, want) in table {
            let p = pod("p", namespace, &labels);
            assert_eq!(
                select_profile(&profiles, &p).unwrap().name,
                want,
                "{namespace}"
            );
        }
    }

    #[test]
    fn a_pod_that_matches_nothing_is_refused_naming_pod_namespace_and_profiles() {
        let profiles = vec![
            profile("web", vec![selector("prod", &[("app", "web")])]),
            profile("batch", vec![selector("batch-*", &[])]),
        ];
        let err = select_profile(&profiles, &pod("api-7f9", "dev", &[("app", "web")])).unwrap_err();
        assert!(
            matches!(err, PolicyError::NoMatchingProfile { .. }),
            "{err:?}"
        );
        let message = err.to_string();
        for needle in ["\"api-7f9\"", "\"dev\"", "web, batch"] {
            assert!(message.contains(needle), "{needle} missing: {message}");
        }
    }

    #[test]
    fn the_default_profile_selects_every_namespace() {
        let profiles = vec![Profile::default_profile()];
        for namespace in ["default", "kube-system", ""] {
            let p = pod("p", namespace, &[("a", "b")]);
            assert_eq!(select_profile(&profiles, &p).unwrap().name, "default");
        }
    }

    #[test]
    fn profile_lists_are_validated() {
        let five = vec![selector("*", &[]); 5];
        let six = vec![selector("*", &[]); 6];
        assert_eq!(validate_profiles(&[profile("p", five)]), Ok(()));
        assert_eq!(
            validate_profiles(&[profile("p", six)]),
            Err(PolicyConfigError::TooManySelectors {
                profile: "p".into(),
                count: 6,
                max: 5
            })
        );
        assert_eq!(validate_profiles(&[]), Err(PolicyConfigError::NoProfiles));
        assert_eq!(
            validate_profiles(&[profile("", vec![selector("*", &[])])]),
            Err(PolicyConfigError::EmptyProfileName { index: 0 })
        );
        assert_eq!(
            validate_profiles(&[profile("p", vec![])]),
            Err(PolicyConfigError::NoSelectors {
                profile: "p".into()
            })
        );
        assert_eq!(
            validate_profiles(&[profile("p", vec![selector("*", &[]), selector("", &[])])]),
            Err(PolicyConfigError::EmptyNamespace {
                profile: "p".into(),
                index: 1
            })
        );
        let one = || profile("p", vec![selector("*", &[])]);
        assert_eq!(
            validate_profiles(&[one(), one()]),
            Err(PolicyConfigError::DuplicateProfile { name: "p".into() })
        );
    }
}
