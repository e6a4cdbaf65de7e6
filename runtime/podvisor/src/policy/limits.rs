//! The rlimits of every container process (init and exec).

use oci_spec::runtime::{PosixRlimit, PosixRlimitBuilder, PosixRlimitType};
use serde::{Deserialize, Deserializer, Serialize};

use super::PolicyConfigError;

/// Fargate's defaults for RLIMIT_NOFILE and RLIMIT_NPROC.
pub const DEFAULT_RLIMIT_SOFT: u64 = 1024;
pub const DEFAULT_RLIMIT_HARD: u64 = 65535;

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Rlimit {
    pub soft: u64,
    pub hard: u64,
}

impl Default for Rlimit {
    fn default() -> Self {
        Rlimit {
            soft: DEFAULT_RLIMIT_SOFT,
            hard: DEFAULT_RLIMIT_HARD,
        }
    }
}

/// `[policy.limits]`.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub nofile: Rlimit,
    pub nproc: Rlimit,
}

impl LimitsConfig {
    pub fn validate(&self) -> Result<(), PolicyConfigError> {
        for (name, limit) in [("nofile", self.nofile), ("nproc", self.nproc)] {
            if limit.soft > limit.hard {
                return Err(PolicyConfigError::SoftAboveHard {
                    name,
                    soft: limit.soft,
                    hard: limit.hard,
                });
            }
        }
        Ok(())
    }

    /// The `process.rlimits` of a container's OCI spec, for its init
    /// process and for every exec.
    pub fn oci_rlimits(&self) -> Vec<PosixRlimit> {
        [
            (PosixRlimitType::RlimitNofile, self.nofile),
            (PosixRlimitType::RlimitNproc, self.nproc),
        ]
        .into_iter()
        .map(|(typ, limit)| {
            PosixRlimitBuilder::default()
                .typ(typ)
                .soft(limit.soft)
                .hard(limit.hard)
                .build()
                // The builder fails only on a field left unset.
                .expect("every rlimit field is set")
        })
        .collect()
    }
}

/// Deserializes `policy.limits` and validates it, so soft > hard is a
/// configuration error at load time.
pub(crate) fn deserialize_limits<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<LimitsConfig, D::Error> {
    let limits = LimitsConfig::deserialize(d)?;
    limits.validate().map_err(serde::de::Error::custom)?;
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(nofile: (u64, u64), nproc: (u64, u64)) -> LimitsConfig {
        LimitsConfig {
            nofile: Rlimit {
                soft: nofile.0,
                hard: nofile.1,
            },
            nproc: Rlimit {
                soft: nproc.0,
                hard: nproc.1,
            },
        }
    }

    #[test]
    fn defaults_are_soft_1024_hard_65535() {
        assert_eq!(
            LimitsConfig::default(),
            limits((1024, 65535), (1024, 65535))
        );
        assert_eq!(LimitsConfig::default().validate(), Ok(()));
    }

    #[test]
    fn soft_above_hard_is_refused() {
        assert_eq!(limits((10, 10), (0, 5)).validate(), Ok(()));
        assert_eq!(
            limits((2048, 1024), (1, 2)).validate(),
            Err(PolicyConfigError::SoftAboveHard {
                name: "nofile",
                soft: 2048,
                hard: 1024
            })
        );
        let err = limits((1, 2), (6, 5)).validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "policy.limits.nproc: soft limit 6 is above the hard limit 5"
        );
    }

    #[test]
    fn oci_rlimits_carry_both_limits() {
        let got = limits((100, 200), (300, 400)).oci_rlimits();
        let got: Vec<_> = got.iter().map(|r| (r.typ(), r.soft(), r.hard())).collect();
        assert_eq!(
            got,
            vec![
                (PosixRlimitType::RlimitNofile, 100, 200),
                (PosixRlimitType::RlimitNproc, 300, 400),
            ]
        );
        let json = serde_json::to_string(&LimitsConfig::default().oci_rlimits()).unwrap();
        assert_eq!(
            json,
            r#"[{"type":"RLIMIT_NOFILE","hard":65535,"soft":1024},{"type":"RLIMIT_NPROC","hard":65535,"soft":1024}]"#
        );
    }
}
