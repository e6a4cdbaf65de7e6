//! A cgroup per pod VM on the host, holding the VM's processes to the CPU
//! time its Fargate size grants: a 0.25 vCPU pod gets one vCPU and a CFS
//! quota of a quarter of a host CPU. cgroup v2 (`cpu.max`) or v1's cpu
//! controller (`cpu.cfs_quota_us`), whichever the host has.

use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";
/// Our subtree under the hierarchy's root.
const PARENT: &str = "podvisor";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup hierarchy with the cpu controller is mounted at {ROOT} (set sandbox.cpu_quota = false to run pods without a CPU quota)")]
    NoCpuController,
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// The pod VM's cgroup; removed with [`VmCgroup::remove`].
#[derive(Clone, Debug)]
pub struct VmCgroup {
    path: PathBuf,
    version: Version,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn detect() -> Result<(Version, PathBuf), CgroupError> {
    let root = Path::new(ROOT);
    if root.join("cgroup.controllers").is_file() {
        let controllers =
            std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        if controllers.split_whitespace().any(|c| c == "cpu") {
            return Ok((Version::V2, root.to_path_buf()));
        }
        return Err(CgroupError::NoCpuController);
    }
    let v1 = root.join("cpu");
    if v1.join("cpu.cfs_quota_us").is_file() {
        return Ok((Version::V1, v1));
    }
    Err(CgroupError::NoCpuController)
}

impl VmCgroup {
    /// Where the cgroup of pod `id` is (whether or not it exists yet).
    pub fn locate(id: &str) -> Result<VmCgroup, CgroupError> {
        let (version, root) = detect()?;
        Ok(VmCgroup {
            path: root.join(PARENT).join(id),
            version,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the cgroup with `quota_us` of CPU time per `period_us`.
    pub fn create(id: &str, quota_us: u64, period_us: u64) -> Result<VmCgroup, CgroupError> {
        let cgroup = Self::locate(id)?;
        let parent = cgroup.path.parent().unwrap_or(Path::new(ROOT));
        std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
        if cgroup.version == Version::V2 {
            // Children get the cpu controller only if each parent hands it on.
            let control = parent.join("cgroup.subtree_control");
            let root_control = Path::new(ROOT).join("cgroup.subtree_control");
            for file in [root_control, control] {
                std::fs::write(&file, "+cpu")
                    .map_err(io("enabling the cpu controller in", &file))?;
            }
        }
        std::fs::create_dir_all(&cgroup.path).map_err(io("creating", &cgroup.path))?;
        match cgroup.version {
            Version::V2 => {
                let file = cgroup.path.join("cpu.max");
                std::fs::write(&file, format!("{quota_us} {period_us}"))
                    .map_err(io("writing", &file))?;
            }
            Version::V1 => {
                let period = cgroup.path.join("cpu.cfs_period_us");
                std::fs::write(&period, period_us.to_string()).map_err(io("writing", &period))?;
                let quota = cgroup.path.join("cpu.cfs_quota_us");
                std::fs::write(&quota, quota_us.to_string()).map_err(io("writing", &quota))?;
            }
        }
        Ok(cgroup)
    }

    /// Moves a process (with all its threads on v2) into the cgroup.
    pub fn add(&self, pid: u32) -> Result<(), CgroupError> {
        let file = self.path.join("cgroup.procs");
        std::fs::write(&file, pid.to_string()).map_err(io("adding a process to", &file))
    }

    /// The quota as written: (quota_us, period_us).
    pub fn quota(&self) -> Option<(u64, u64)> {
        match self.version {
            Version::V2 => {
                let max = std::fs::read_to_string(self.path.join("cpu.max")).ok()?;
                let mut parts = max.split_whitespace();
                Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
            }
            Version::V1 => {
                let read = |f: &str| -> Option<u64> {
                    std::fs::read_to_string(self.path.join(f))
                        .ok()?
                        .trim()
                        .parse()
                        .ok()
                };
                Some((read("cpu.cfs_quota_us")?, read("cpu.cfs_period_us")?))
            }
        }
    }

    /// Removes the cgroup once its processes are gone (idempotent).
    pub fn remove(&self) {
        match std::fs::remove_dir(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.path.display(), %e, "removing the pod VM's cgroup")
            }
        }
    }
}
