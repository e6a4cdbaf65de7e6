//! EFS and NFS volumes, mounted by the agent inside the pod VM over the
//! pod's own interface instead of being shared through the host.
//!
//! A CRI mount is one when its host path is
//! - a kubelet CSI volume of the EFS driver ([`kubelet`]): the file system
//!   named by its volumeHandle is mounted, at the handle's path and
//!   kubelet's subPath; or
//! - on an NFS mount of the host ([`mountinfo`]): that server's export is
//!   mounted, at the same directory.
//!
//! Names are resolved on the host; the guest gets `addr=` and EFS's
//! recommended NFS options. See docs/volumes.md.

pub mod config;
pub mod handle;
pub mod kubelet;
pub mod mountinfo;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use podvisor_proto::SharedMount;

pub use config::EfsConfig;
use mountinfo::MountTable;

/// Where the agent mounts a container's volumes in the guest:
/// `<GUEST_VOLUMES>/<container id>/<mount index>`.
pub const GUEST_VOLUMES: &str = "/run/podvisor/volumes";

/// The first agent protocol that mounts volumes (CreateContainer.volumes).
pub const MIN_AGENT_PROTOCOL: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum EfsError {
    #[error("EFS volumeHandle {handle:?} is malformed: {why}")]
    BadHandle { handle: String, why: String },
    #[error(
        "EFS volume {fs_id} uses access point {access_point}: access points need the EFS mount \
         helper's TLS and IAM authorization, which pod VMs do not have; use a volumeHandle \
         without one (\"{fs_id}\" or \"{fs_id}:/path\")"
    )]
    AccessPoint { fs_id: String, access_point: String },
    #[error(
        "EFS file system {fs_id} is not in volumes.efs.file_systems and no region is set for \
         volumes.efs.dns_name_template (set volumes.efs.region or AWS_REGION)"
    )]
    NoRegion { fs_id: String },
    #[error("resolving the NFS server {server}: {message}")]
    Resolve { server: String, message: String },
    #[error("reading {path}: {message}")]
    VolData { path: PathBuf, message: String },
    #[error("the kubelet subPath {host_path} of an EFS volume cannot be located: {why}")]
    SubPath { host_path: PathBuf, why: String },
    #[error(
        "host path {host_path} is on NFS version {version}; pod VMs mount NFS 4.0 and 4.1 only"
    )]
    NfsVersion { host_path: PathBuf, version: String },
    #[error("host path {host_path} is on NFS, but its source {source_name:?} names no server")]
    NfsSource {
        host_path: PathBuf,
        source_name: String,
    },
    #[error(
        "the pod's agent speaks protocol {0}; NFS volumes need {MIN_AGENT_PROTOCOL} or later \
         (rebuild the guest image)"
    )]
    AgentTooOld(u32),
}

/// Where a volume's files are: a server, and a directory on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NfsSource {
    /// As named (an address or a DNS name).
    pub server: String,
    /// Known from the host's mount; else resolved from `server`.
    pub addr: Option<Ipv4Addr>,
    pub path: String,
    /// "4.1" or "4.0".
    pub version: &'static str,
}

/// What the agent mounts, and where the container's bind comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestVolume {
    pub mount: SharedMount,
    pub guest_path: PathBuf,
}

/// EFS's recommended NFS client options, as kernel mount data.
pub fn mount_options(version: &str, addr: Ipv4Addr) -> Vec<String> {
    [
        format!("vers={version}"),
        format!("addr={addr}"),
        "rsize=1048576".into(),
        "wsize=1048576".into(),
        "hard".into(),
        "timeo=600".into(),
        "retrans=2".into(),
        "noresvport".into(),
    ]
    .into()
}

/// The NFS source behind `host_path`, if it is an EFS or NFS volume.
/// Reads kubelet's files; never touches the path itself (a stat on a hung
/// NFS mount would hang the daemon).
pub fn classify(
    host_path: &Path,
    mounts: &MountTable,
    config: &EfsConfig,
) -> Result<Option<NfsSource>, EfsError> {
    if let Some(csi) = kubelet::csi_volume(host_path, mounts)? {
        if csi.driver == kubelet::EFS_DRIVER {
            let handle = handle::parse(&csi.volume_handle)?;
            if let Some(access_point) = handle.access_point {
                return Err(EfsError::AccessPoint {
                    fs_id: handle.fs_id,
                    access_point,
                });
            }
            let mut path = handle.path;
            if let Some(sub) = csi.sub_path.filter(|s| !s.as_os_str().is_empty()) {
                path = join(&path, &sub.to_string_lossy()).ok_or_else(|| EfsError::SubPath {
                    host_path: host_path.to_path_buf(),
                    why: format!("{} is not a plain relative path", sub.display()),
                })?;
            }
            return Ok(Some(NfsSource {
                server: config.server_for(&handle.fs_id)?,
                addr: None,
                path,
                version: "4.1",
            }));
        }
    }
    let Some(mount) = mounts.containing(host_path).filter(|m| m.is_nfs()) else {
        return Ok(None);
    };
    let version = match mount.super_option("vers") {
        None | Some("4.1") | Some("4.2") => "4.1",
        Some("4") | Some("4.0") => "4.0",
        Some(other) => {
            return Err(EfsError::NfsVersion {
                host_path: host_path.to_path_buf(),
                version: other.to_string(),
            })
        }
    };
    let bad_source = || EfsError::NfsSource {
        host_path: host_path.to_path_buf(),
        source_name: mount.source.clone(),
    };
    let (server, source_path) = mount
        .source
        .find(":/")
        .map(|i| (&mount.source[..i], &mount.source[i + 1..]))
        .filter(|(s, _)| !s.is_empty())
        .ok_or_else(bad_source)?;
    let server = server.trim_start_matches('[').trim_end_matches(']');
    // mountinfo's root of an NFS mount is its directory on the server.
    let on_server = mount
        .fs_path(host_path)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| PathBuf::from(source_path));
    let path = handle::normalise(&on_server.to_string_lossy()).ok_or_else(bad_source)?;
    Ok(Some(NfsSource {
        server: server.to_string(),
        addr: mount.super_option("addr").and_then(|a| a.parse().ok()),
        path,
        version,
    }))
}

/// `base` + `relative`, normalised; None if `relative` escapes.
fn join(base: &str, relative: &str) -> Option<String> {
    handle::normalise(&format!("{base}/{relative}"))
}

/// Turns each EFS/NFS mount of a container into what the agent mounts.
/// One planner per CreateContainer: its clock bounds name resolution and
/// the agent's mounts together by `mount_timeout_secs`.
pub struct Planner<'a> {
    config: &'a EfsConfig,
    mounts: MountTable,
    deadline: Instant,
}

impl<'a> Planner<'a> {
    pub fn new(config: &'a EfsConfig) -> Self {
        let mounts = MountTable::read().unwrap_or_else(|e| {
            tracing::warn!(%e, "reading /proc/self/mountinfo; NFS host paths go through the share");
            MountTable::default()
        });
        Self::with_mounts(config, mounts)
    }

    pub fn with_mounts(config: &'a EfsConfig, mounts: MountTable) -> Self {
        Self::with_deadline(config, mounts, Instant::now() + config.mount_timeout())
    }

    fn with_deadline(config: &'a EfsConfig, mounts: MountTable, deadline: Instant) -> Self {
        Planner {
            config,
            mounts,
            deadline,
        }
    }

    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// The guest mount for CRI mount `index` of `container_id`, or None
    /// when its host path is neither EFS nor NFS.
    pub async fn plan(
        &self,
        container_id: &str,
        index: usize,
        host_path: &Path,
        readonly: bool,
    ) -> Result<Option<GuestVolume>, EfsError> {
        let Some(source) = classify(host_path, &self.mounts, self.config)? else {
            return Ok(None);
        };
        let addr = match source.addr {
            Some(a) => a,
            None => config::resolve(&source.server, self.remaining()).await?,
        };
        let guest_path = Path::new(GUEST_VOLUMES)
            .join(container_id)
            .join(index.to_string());
        tracing::info!(host_path = %host_path.display(), server = %source.server, %addr,
            path = %source.path, readonly, "NFS volume mounted in the guest");
        Ok(Some(GuestVolume {
            mount: SharedMount {
                fstype: "nfs4".into(),
                source: format!("{}:{}", source.server, source.path),
                target: guest_path.to_string_lossy().into_owned(),
                options: mount_options(source.version, addr),
                readonly,
            },
            guest_path,
        }))
    }

    /// What is left of the bound for the agent's mounts (at least 1 ms:
    /// 0 would mean the agent's default).
    pub fn timeout_ms(&self) -> u32 {
        u32::try_from(self.remaining().as_millis())
            .unwrap_or(u32::MAX)
            .max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> EfsConfig {
        EfsConfig {
            file_systems: [("fs-12345678".to_string(), "10.0.0.5".to_string())].into(),
            region: "us-east-1".into(),
            ..Default::default()
        }
    }

    fn kubelet_volume(root: &Path, handle: &str, driver: &str) -> PathBuf {
        let dir = root.join("pods/u/volumes/kubernetes.io~csi/pv");
        std::fs::create_dir_all(dir.join("mount")).unwrap();
        let data = serde_json::json!({"driverName": driver, "volumeHandle": handle});
        std::fs::write(dir.join("vol_data.json"), data.to_string()).unwrap();
        dir.join("mount")
    }

    #[test]
    fn efs_options_are_the_recommended_ones() {
        assert_eq!(
            mount_options("4.1", Ipv4Addr::new(10, 0, 0, 5)).join(","),
            "vers=4.1,addr=10.0.0.5,rsize=1048576,wsize=1048576,hard,timeo=600,retrans=2,noresvport"
        );
    }

    #[test]
    fn efs_csi_volumes_name_their_file_system() {
        let root = tempfile::tempdir().unwrap();
        let mount = kubelet_volume(root.path(), "fs-12345678:/team", kubelet::EFS_DRIVER);
        let s = classify(&mount, &MountTable::default(), &config())
            .unwrap()
            .unwrap();
        assert_eq!(
            s,
            NfsSource {
                server: "10.0.0.5".into(),
                addr: None,
                path: "/team".into(),
                version: "4.1"
            }
        );
        let other = tempfile::tempdir().unwrap();
        let mount = kubelet_volume(other.path(), "fs-abcdef01", kubelet::EFS_DRIVER);
        let s = classify(&mount, &MountTable::default(), &config())
            .unwrap()
            .unwrap();
        assert_eq!(s.server, "fs-abcdef01.efs.us-east-1.amazonaws.com");
        assert_eq!(s.path, "/");
    }

    #[test]
    fn access_points_and_other_drivers() {
        let root = tempfile::tempdir().unwrap();
        let mount = kubelet_volume(root.path(), "fs-12345678::fsap-0abc", kubelet::EFS_DRIVER);
        let err = classify(&mount, &MountTable::default(), &config()).unwrap_err();
        assert!(matches!(err, EfsError::AccessPoint { .. }), "{err}");
        assert!(err.to_string().contains("fsap-0abc"), "{err}");
        let other = tempfile::tempdir().unwrap();
        let mount = kubelet_volume(other.path(), "vol-1", "ebs.csi.aws.com");
        assert_eq!(
            classify(&mount, &MountTable::default(), &config()).unwrap(),
            None
        );
    }

    #[test]
    fn host_nfs_mounts_keep_server_address_and_directory() {
        let t = MountTable::parse(mountinfo::tests::SAMPLE);
        let s = classify(Path::new("/srv/team/x"), &t, &config())
            .unwrap()
            .unwrap();
        assert_eq!(
            s,
            NfsSource {
                server: "fs-1.efs.us-east-1.amazonaws.com".into(),
                addr: Some(Ipv4Addr::new(10, 0, 0, 5)),
                path: "/export/team a/x".into(),
                version: "4.1"
            }
        );
        assert_eq!(
            classify(Path::new("/mnt/bound"), &t, &config()).unwrap(),
            None
        );
        assert_eq!(classify(Path::new("/etc"), &t, &config()).unwrap(), None);
        let v3 = MountTable::parse("1 0 0:9 /e /m rw - nfs srv:/e rw,vers=3,addr=10.0.0.9\n");
        let err = classify(Path::new("/m"), &v3, &config()).unwrap_err();
        assert!(err.to_string().contains("version 3"), "{err}");
        let v40 = MountTable::parse("1 0 0:9 / /m rw - nfs4 [fd00::1]:/ rw,vers=4.0\n");
        let s = classify(Path::new("/m"), &v40, &config()).unwrap().unwrap();
        assert_eq!(
            (s.server.as_str(), s.version, s.addr),
            ("fd00::1", "4.0", None)
        );
    }

    #[test]
    fn the_agents_timeout_is_what_is_left_of_the_deadline() {
        let cfg = config();
        let now = Instant::now();
        let past = Planner::with_deadline(&cfg, MountTable::default(), now);
        assert_eq!(
            past.timeout_ms(),
            1,
            "spent: 1 ms, never 0 (the agent's default)"
        );
        let far = now + Duration::from_secs(u64::from(u32::MAX));
        let far = Planner::with_deadline(&cfg, MountTable::default(), far);
        assert_eq!(far.timeout_ms(), u32::MAX, "saturates");
        let soon =
            Planner::with_deadline(&cfg, MountTable::default(), now + Duration::from_secs(30));
        assert!(soon.timeout_ms() <= 30_000 && soon.timeout_ms() > 1);
    }

    #[tokio::test]
    async fn a_plan_names_the_guest_target_and_options() {
        let root = tempfile::tempdir().unwrap();
        let mount = kubelet_volume(root.path(), "fs-12345678:/team", kubelet::EFS_DRIVER);
        let cfg = config();
        let planner = Planner::with_mounts(&cfg, MountTable::default());
        let v = planner.plan("c1", 2, &mount, true).await.unwrap().unwrap();
        assert_eq!(v.guest_path, Path::new("/run/podvisor/volumes/c1/2"));
        assert_eq!(v.mount.source, "10.0.0.5:/team");
        assert_eq!(v.mount.fstype, "nfs4");
        assert!(v.mount.readonly);
        assert!(v.mount.options.contains(&"addr=10.0.0.5".to_string()));
        // Never more than the configured bound (how much less is the clock's).
        assert!(planner.timeout_ms() <= 30_000, "{}", planner.timeout_ms());
        assert_eq!(
            planner.plan("c1", 0, root.path(), false).await.unwrap(),
            None
        );
    }
}
