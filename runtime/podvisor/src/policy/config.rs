//! `[policy]` in the daemon's configuration file.

use serde::{Deserialize, Serialize};

use super::host_path::deserialize_host_path_roots;
use super::limits::{deserialize_limits, LimitsConfig};
use super::profile::{deserialize_profiles, validate_profiles, Profile};
use super::{PolicyConfigError, PolicyMode};

/// Profiles and limits; every key optional. Loading validates it (a bad
/// `[policy]` fails `Config::parse`), and `validate` checks one built in
/// code.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// `fargate` (every rule) or `vm` (what stays inside the VM is
    /// honoured there).
    pub mode: PolicyMode,
    /// Checked in order; the first whose selector matches a pod is its
    /// profile.
    #[serde(deserialize_with = "deserialize_profiles")]
    pub profiles: Vec<Profile>,
    #[serde(deserialize_with = "deserialize_limits")]
    pub limits: LimitsConfig,
    /// Where host paths may come from (`{pod_uid}` is the pod's uid);
    /// unset: the mode's default (see `host_path::default_roots`).
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "deserialize_host_path_roots"
    )]
    pub host_path_roots: Option<Vec<String>>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            mode: PolicyMode::Fargate,
            profiles: vec![Profile::default_profile()],
            limits: LimitsConfig::default(),
            host_path_roots: None,
        }
    }
}

impl PolicyConfig {
    pub fn validate(&self) -> Result<(), PolicyConfigError> {
        validate_profiles(&self.profiles)?;
        super::host_path::validate_roots(self.host_path_roots.iter().flatten())?;
        self.limits.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::policy::Selector;

    fn parse(text: &str) -> Result<PolicyConfig, String> {
        Config::parse(text).map(|c| c.policy)
    }

    #[test]
    fn the_default_is_valid_and_selects_every_namespace() {
        let d = PolicyConfig::default();
        assert_eq!(d.validate(), Ok(()));
        assert_eq!(d.profiles.len(), 1);
        assert_eq!(d.profiles[0].name, "default");
        assert_eq!(d.profiles[0].selectors[0].namespace, "*");
        assert!(d.profiles[0].selectors[0].labels.is_empty());
        assert_eq!(parse("").unwrap(), d);
        assert_eq!(parse("[policy]\n").unwrap(), d);
    }

    #[test]
    fn printed_defaults_contain_the_policy_and_parse_back() {
        let printed = Config::default().to_toml();
        assert!(printed.contains("[[policy.profiles]]"), "{printed}");
        assert!(printed.contains("namespace = \"*\""), "{printed}");
        assert_eq!(parse(&printed).unwrap(), PolicyConfig::default());
    }

    #[test]
    fn the_documented_shape_parses() {
        let text = r#"
[policy]
[[policy.profiles]]
name = "web"
[[policy.profiles.selectors]]
namespace = "prod-*"
labels = { app = "web", "app.kubernetes.io/tier" = "front?nd" }
[[policy.profiles.selectors]]
namespace = "staging"

[[policy.profiles]]
name = "default"
[[policy.profiles.selectors]]
namespace = "*"
labels = { }

[policy.limits]
nofile = { soft = 4096, hard = 65535 }
nproc = { soft = 1024 }
"#;
        let p = parse(text).unwrap();
        assert_eq!(p.profiles.len(), 2);
        assert_eq!(p.profiles[0].name, "web");
        assert_eq!(
            p.profiles[0].selectors[0]
                .labels
                .get("app.kubernetes.io/tier"),
            Some(&"front?nd".to_string())
        );
        assert_eq!(p.profiles[0].selectors[1].namespace, "staging");
        assert_eq!((p.limits.nofile.soft, p.limits.nofile.hard), (4096, 65535));
        assert_eq!((p.limits.nproc.soft, p.limits.nproc.hard), (1024, 65535));
        // And it survives printing.
        let c = Config {
            policy: p.clone(),
            ..Config::default()
        };
        assert_eq!(parse(&c.to_toml()).unwrap(), p);
    }

    #[test]
    fn bad_policies_fail_at_load() {
        let selectors = "[[policy.profiles.selectors]]\nnamespace = \"*\"\n".repeat(6);
        let six = format!("[[policy.profiles]]\nname = \"big\"\n{selectors}");
        let table = [
            (six.as_str(), "at most 5"),
            ("[policy]\nprofiles = []\n", "no pod could run"),
            (
                "[[policy.profiles]]\nname = \"x\"\n[[policy.profiles.selectors]]\nlabels = {a = \"b\"}\n",
                "namespace",
            ),
            ("[policy.limits]\nnofile = { soft = 70000 }\n", "above the hard limit"),
            ("[policy]\nprofile = []\n", "profile"),
            ("[policy.limits]\nnofile = { sfot = 1 }\n", "sfot"),
            ("[policy]\nhost_path_roots = [\"data\"]\n", "not an absolute path"),
        ];
        for (text, needle) in table {
            let err = parse(text).unwrap_err();
            assert!(err.contains(needle), "{needle} not in: {err}\n--- {text}");
        }
    }

    #[test]
    fn validate_catches_what_code_builds() {
        let mut p = PolicyConfig::default();
        p.profiles[0].selectors = vec![
            Selector {
                namespace: "*".into(),
                labels: Default::default(),
            };
            6
        ];
        assert!(matches!(
            p.validate(),
            Err(PolicyConfigError::TooManySelectors { count: 6, .. })
        ));
        let mut p = PolicyConfig::default();
        p.limits.nproc.soft = 70_000;
        assert!(matches!(
            p.validate(),
            Err(PolicyConfigError::SoftAboveHard { name: "nproc", .. })
        ));
    }
}
