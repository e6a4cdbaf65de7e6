//! Sizing: the Fargate vCPU/memory configuration a pod gets, and the VM
//! that provides it.

use std::fmt;

use k8s_cri::v1::{LinuxContainerResources, LinuxPodSandboxConfig};

use super::PolicyError;

/// Sandbox annotation with the configuration provisioned for the pod, in
/// Fargate's format (`0.25vCPU 0.5GB`); Fargate uses the same key.
pub const CAPACITY_PROVISIONED_ANNOTATION: &str = "CapacityProvisioned";

/// Memory Fargate adds to every pod's VM for its system components.
pub const SYSTEM_OVERHEAD_MIB: u64 = 256;

/// The CFS period the VM's CPU quota is expressed against.
pub const CPU_PERIOD_US: u64 = 100_000;

/// The kernel's CFS period when a container's says 0.
const DEFAULT_CFS_PERIOD_US: u64 = 100_000;
const MIB: u64 = 1024 * 1024;

/// One vCPU tier: its memory range in MiB and the step between sizes
/// (GB here means 1024 MiB, as on Fargate).
struct Tier {
    millicpus: u32,
    min_mib: u32,
    max_mib: u32,
    step_mib: u32,
}

const fn tier(millicpus: u32, min_gb: u32, max_gb: u32, step_gb: u32) -> Tier {
    Tier {
        millicpus,
        min_mib: min_gb * 1024,
        max_mib: max_gb * 1024,
        step_mib: step_gb * 1024,
    }
}

/// Fargate's table, smallest first. 0.25 vCPU is the one tier that is not
/// a plain range: 0.5, 1 and 2 GB.
const TIERS: [Tier; 7] = [
    Tier {
        millicpus: 250,
        min_mib: 512,
        max_mib: 2048,
        step_mib: 512,
    },
    tier(500, 1, 4, 1),
    tier(1000, 2, 8, 1),
    tier(2000, 4, 16, 1),
    tier(4000, 8, 30, 1),
    tier(8000, 16, 60, 4),
    tier(16000, 32, 120, 8),
];

/// The 0.25 vCPU tier has no 1.5 GB size.
fn allowed(t: &Tier, mib: u32) -> bool {
    !(t.millicpus == 250 && mib == 1536)
}

/// The largest configuration: a pod asking for more is refused.
pub const LARGEST: Capacity = Capacity {
    millicpus: 16000,
    memory_mib: 120 * 1024,
};

/// What a pod asks for: CPU in thousandths of a vCPU, memory in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub millicpus: u64,
    pub memory_bytes: u64,
}

impl Request {
    /// CPU from quota/period (0 period = the kernel's 100ms), falling back
    /// to cpu_shares/1024 when there is no quota (a request without a
    /// limit); memory from memory_limit_in_bytes. Zero or negative values
    /// mean "not set".
    pub fn from_resources(r: &LinuxContainerResources) -> Request {
        let millicpus = if r.cpu_quota > 0 {
            let period = u64::try_from(r.cpu_period)
                .ok()
                .filter(|&p| p > 0)
                .unwrap_or(DEFAULT_CFS_PERIOD_US);
            ceil_div(r.cpu_quota.unsigned_abs().saturating_mul(1000), period)
        } else if r.cpu_shares > 0 {
            ceil_div(r.cpu_shares.unsigned_abs().saturating_mul(1000), 1024)
        } else {
            0
        };
        Request {
            millicpus,
            memory_bytes: u64::try_from(r.memory_limit_in_bytes).unwrap_or(0),
        }
    }

    /// The pod's request from its sandbox config: `resources` (the sum
    /// kubelet computed for the pod) plus the RuntimeClass `overhead`.
    pub fn of_sandbox(linux: Option<&LinuxPodSandboxConfig>) -> Request {
        let Some(linux) = linux else {
            return Request::default();
        };
        Self::sum(
            [linux.resources.as_ref(), linux.overhead.as_ref()]
                .into_iter()
                .flatten(),
        )
    }

    /// The pod's request as the sum of its containers' resources, for a
    /// runtime that sizes from CreateContainer requests instead.
    pub fn sum<'a>(resources: impl IntoIterator<Item = &'a LinuxContainerResources>) -> Request {
        resources
            .into_iter()
            .map(Request::from_resources)
            .fold(Request::default(), |a, b| Request {
                millicpus: a.millicpus.saturating_add(b.millicpus),
                memory_bytes: a.memory_bytes.saturating_add(b.memory_bytes),
            })
    }

    fn memory_mib(self) -> u64 {
        ceil_div(self.memory_bytes, MIB)
    }
}

/// One Fargate vCPU/memory configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub millicpus: u32,
    pub memory_mib: u32,
}

/// Fargate's `CapacityProvisioned` format: `0.25vCPU 0.5GB`, `4vCPU 30GB`.
impl fmt::Display for Capacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}vCPU {}GB",
            decimal(self.millicpus.into(), 1000),
            decimal(self.memory_mib.into(), 1024)
        )
    }
}

/// The VM that provides a configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmSize {
    pub capacity: Capacity,
    /// Whole vCPUs: the configuration's vCPUs rounded up.
    pub vcpus: u32,
    /// CPU time of the VM process in percent of one host CPU: 25 for
    /// 0.25 vCPU, 400 for 4. It caps a fractional vCPU.
    pub cpu_quota_percent: u32,
    /// The configuration's memory plus the 256 MiB for system components.
    pub memory_mib: u64,
}

impl VmSize {
    /// The VM process's CFS quota per `CPU_PERIOD_US`.
    pub fn cpu_quota_us(&self) -> u64 {
        u64::from(self.cpu_quota_percent) * CPU_PERIOD_US / 100
    }

    /// The value of the `CapacityProvisioned` annotation.
    pub fn capacity_provisioned(&self) -> String {
        self.capacity.to_string()
    }
}

/// The smallest configuration (lowest vCPU, then lowest memory) that fits
/// both the CPU and the memory of `request`, and the VM for it.
pub fn size(request: Request) -> Result<VmSize, PolicyError> {
    let want_mib = request.memory_mib();
    let capacity = TIERS
        .iter()
        .filter(|t| u64::from(t.millicpus) >= request.millicpus)
        .find_map(|t| {
            (t.min_mib..=t.max_mib)
                .step_by(t.step_mib as usize)
                .filter(|&mib| allowed(t, mib))
                .find(|&mib| u64::from(mib) >= want_mib)
                .map(|memory_mib| Capacity {
                    millicpus: t.millicpus,
                    memory_mib,
                })
        })
        .ok_or(PolicyError::TooLarge {
            millicpus: request.millicpus,
            memory_mib: want_mib,
        })?;
    Ok(VmSize {
        capacity,
        vcpus: capacity.millicpus.div_ceil(1000),
        cpu_quota_percent: capacity.millicpus / 10,
        memory_mib: u64::from(capacity.memory_mib) + SYSTEM_OVERHEAD_MIB,
    })
}

fn ceil_div(n: u64, d: u64) -> u64 {
    n.div_ceil(d)
}

/// `n / d` in decimal with at most three places and no trailing zeros.
pub(crate) fn decimal(n: u64, d: u64) -> String {
    let (whole, rem) = (n / d, n % d);
    if rem == 0 {
        return whole.to_string();
    }
    let frac = format!("{:03}", rem * 1000 / d);
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: u64 = 1024 * MIB;

    fn req(millicpus: u64, memory_bytes: u64) -> Request {
        Request {
            millicpus,
            memory_bytes,
        }
    }

    fn provisioned(millicpus: u64, memory_bytes: u64) -> String {
        size(req(millicpus, memory_bytes))
            .unwrap_or_else(|e| panic!("{millicpus}m {memory_bytes}B: {e}"))
            .capacity_provisioned()
    }

    #[test]
    fn each_tier_has_its_smallest_and_largest_memory() {
        let table = [
            (250, GB / 2, "0.25vCPU 0.5GB"),
            (250, GB, "0.25vCPU 1GB"),
            (250, 2 * GB, "0.25vCPU 2GB"),
            (500, GB, "0.5vCPU 1GB"),
            (500, 4 * GB, "0.5vCPU 4GB"),
            (1000, 2 * GB, "1vCPU 2GB"),
            (1000, 8 * GB, "1vCPU 8GB"),
            (2000, 4 * GB, "2vCPU 4GB"),
            (2000, 16 * GB, "2vCPU 16GB"),
            (4000, 8 * GB, "4vCPU 8GB"),
            (4000, 30 * GB, "4vCPU 30GB"),
            (8000, 16 * GB, "8vCPU 16GB"),
            (8000, 60 * GB, "8vCPU 60GB"),
            (16000, 32 * GB, "16vCPU 32GB"),
            (16000, 120 * GB, "16vCPU 120GB"),
        ];
        for (m, bytes, want) in table {
            assert_eq!(provisioned(m, bytes), want, "{m}m {bytes}B");
        }
    }

    #[test]
    fn memory_rounds_up_to_the_tiers_step() {
        let table = [
            (250, GB / 2 + 1, "0.25vCPU 1GB"),
            (250, GB + GB / 2, "0.25vCPU 2GB"),
            (500, GB + 1, "0.5vCPU 2GB"),
            (4000, 8 * GB + GB / 2, "4vCPU 9GB"),
            (8000, 17 * GB, "8vCPU 20GB"),
            (8000, 20 * GB + 1, "8vCPU 24GB"),
            (16000, 33 * GB, "16vCPU 40GB"),
            (16000, 112 * GB + 1, "16vCPU 120GB"),
        ];
        for (m, bytes, want) in table {
            assert_eq!(provisioned(m, bytes), want, "{m}m {bytes}B");
        }
    }

    #[test]
    fn a_small_request_gets_its_tiers_smallest_memory() {
        assert_eq!(provisioned(1000, 0), "1vCPU 2GB");
        assert_eq!(provisioned(8000, GB), "8vCPU 16GB");
    }

    #[test]
    fn memory_beyond_a_tier_moves_up_to_the_next_vcpu_tier() {
        let table = [
            (250, 3 * GB, "0.5vCPU 3GB"),
            (500, 5 * GB, "1vCPU 5GB"),
            (1000, 9 * GB, "2vCPU 9GB"),
            (2000, 17 * GB, "4vCPU 17GB"),
            (4000, 31 * GB, "8vCPU 32GB"),
            (8000, 61 * GB, "16vCPU 64GB"),
            (0, 100 * GB, "16vCPU 104GB"),
        ];
        for (m, bytes, want) in table {
            assert_eq!(provisioned(m, bytes), want, "{m}m {bytes}B");
        }
    }

    #[test]
    fn fractional_cpus_round_up_to_a_tier() {
        assert_eq!(provisioned(1, 0), "0.25vCPU 0.5GB");
        assert_eq!(provisioned(251, 0), "0.5vCPU 1GB");
        assert_eq!(provisioned(300, 0), "0.5vCPU 1GB");
        assert_eq!(provisioned(1001, 0), "2vCPU 4GB");
        assert_eq!(provisioned(4100, 0), "8vCPU 16GB");
    }

    #[test]
    fn no_resources_get_the_smallest_configuration() {
        assert_eq!(provisioned(0, 0), "0.25vCPU 0.5GB");
        let r = Request::of_sandbox(None);
        assert_eq!(size(r).unwrap().capacity_provisioned(), "0.25vCPU 0.5GB");
        let r = Request::of_sandbox(Some(&LinuxPodSandboxConfig::default()));
        assert_eq!(size(r).unwrap().capacity_provisioned(), "0.25vCPU 0.5GB");
    }

    #[test]
    fn the_vm_gets_whole_vcpus_a_quota_and_256_mib_more() {
        let table = [
            (0, 0, 1, 25, 25_000, 512 + 256),
            (300, 0, 1, 50, 50_000, 1024 + 256),
            (1000, 0, 1, 100, 100_000, 2048 + 256),
            (4000, 30 * GB, 4, 400, 400_000, 30 * 1024 + 256),
            (16000, 120 * GB, 16, 1600, 1_600_000, 120 * 1024 + 256),
        ];
        for (m, bytes, vcpus, percent, quota, mib) in table {
            let vm = size(req(m, bytes)).unwrap();
            assert_eq!(
                (
                    vm.vcpus,
                    vm.cpu_quota_percent,
                    vm.cpu_quota_us(),
                    vm.memory_mib
                ),
                (vcpus, percent, quota, mib),
                "{m}m {bytes}B"
            );
        }
    }

    #[test]
    fn more_than_the_largest_configuration_is_refused() {
        for (m, bytes) in [
            (16001, 0),
            (0, 120 * GB + 1),
            (16000, 121 * GB),
            (u64::MAX, u64::MAX),
        ] {
            let err = size(req(m, bytes)).unwrap_err();
            assert!(matches!(err, PolicyError::TooLarge { .. }), "{err:?}");
            assert!(err.to_string().contains("16vCPU 120GB"), "{err}");
        }
        let err = size(req(16001, 120 * GB)).unwrap_err();
        assert!(
            err.to_string().contains("16.001 vCPU and 122880 MiB"),
            "{err}"
        );
    }

    #[test]
    fn requests_come_from_quota_shares_and_memory_limit() {
        let r = |cpu_quota, cpu_period, cpu_shares, memory_limit_in_bytes| {
            Request::from_resources(&LinuxContainerResources {
                cpu_quota,
                cpu_period,
                cpu_shares,
                memory_limit_in_bytes,
                ..Default::default()
            })
        };
        assert_eq!(r(150_000, 100_000, 0, 0), req(1500, 0));
        assert_eq!(r(25_000, 100_000, 1024, 0), req(250, 0), "quota wins");
        assert_eq!(r(30_001, 100_000, 0, 0), req(301, 0), "rounds up");
        assert_eq!(r(50_000, 0, 0, 0), req(500, 0), "default period");
        assert_eq!(r(0, 100_000, 512, 0), req(500, 0), "shares fallback");
        assert_eq!(r(-1, 100_000, 2048, 0), req(2000, 0), "-1 = no quota");
        assert_eq!(r(0, 0, 0, 3 * GB as i64), req(0, 3 * GB));
        assert_eq!(r(0, 0, -5, -1), req(0, 0), "negatives are unset");
        assert_eq!(r(i64::MAX, 1, 0, i64::MAX), req(u64::MAX, i64::MAX as u64));
    }

    #[test]
    fn a_sandbox_request_is_resources_plus_overhead() {
        let linux = LinuxPodSandboxConfig {
            resources: Some(LinuxContainerResources {
                cpu_quota: 200_000,
                cpu_period: 100_000,
                memory_limit_in_bytes: (4 * GB) as i64,
                ..Default::default()
            }),
            overhead: Some(LinuxContainerResources {
                cpu_quota: 10_000,
                cpu_period: 100_000,
                memory_limit_in_bytes: (GB / 4) as i64,
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = Request::of_sandbox(Some(&linux));
        assert_eq!(r, req(2100, 4 * GB + GB / 4));
        assert_eq!(size(r).unwrap().capacity_provisioned(), "4vCPU 8GB");
    }

    #[test]
    fn container_requests_are_summed() {
        let c = |cpu_quota, cpu_shares, gb: u64| LinuxContainerResources {
            cpu_quota,
            cpu_period: 100_000,
            cpu_shares,
            memory_limit_in_bytes: (gb * GB) as i64,
            ..Default::default()
        };
        let containers = [c(50_000, 0, 1), c(0, 256, 0), c(0, 0, 2)];
        let r = Request::sum(&containers);
        assert_eq!(r, req(750, 3 * GB));
        assert_eq!(size(r).unwrap().capacity_provisioned(), "1vCPU 3GB");
        assert_eq!(Request::sum(&[]), req(0, 0));
    }

    #[test]
    fn capacities_format_like_fargate() {
        let table = [
            (250, 512, "0.25vCPU 0.5GB"),
            (500, 1024, "0.5vCPU 1GB"),
            (1000, 2048, "1vCPU 2GB"),
            (4000, 30720, "4vCPU 30GB"),
            (16000, 122880, "16vCPU 120GB"),
        ];
        for (millicpus, memory_mib, want) in table {
            let c = Capacity {
                millicpus,
                memory_mib,
            };
            assert_eq!(c.to_string(), want);
        }
        assert_eq!(decimal(16001, 1000), "16.001");
        assert_eq!(decimal(1500, 1000), "1.5");
    }
}
