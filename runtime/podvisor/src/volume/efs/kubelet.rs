//! kubelet's CSI volume directories. For a CSI volume kubelet writes
//! `pods/<uid>/volumes/kubernetes.io~csi/<volume>/vol_data.json` (the
//! driver and volumeHandle among its keys) beside the volume's `mount`
//! directory, and hands the runtime either that `mount` directory or, for a
//! `subPath`, a bind of a directory inside it at
//! `pods/<uid>/volume-subpaths/<volume>/<container>/<index>`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::mountinfo::MountTable;
use super::EfsError;

pub const EFS_DRIVER: &str = "efs.csi.aws.com";

/// A CSI volume as kubelet describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsiVolume {
    pub driver: String,
    pub volume_handle: String,
    /// For a kubelet subPath: the directory inside the volume, relative.
    pub sub_path: Option<PathBuf>,
}

#[derive(Deserialize)]
struct VolData {
    #[serde(rename = "driverName")]
    driver_name: String,
    #[serde(rename = "volumeHandle")]
    volume_handle: String,
}

/// The CSI volume behind `host_path`, if it is a kubelet CSI volume path.
pub fn csi_volume(host_path: &Path, mounts: &MountTable) -> Result<Option<CsiVolume>, EfsError> {
    if host_path.file_name().is_some_and(|n| n == "mount") {
        let volume_dir = host_path.parent().unwrap_or(host_path);
        return Ok(
            read_vol_data(volume_dir)?.map(|(driver, volume_handle)| CsiVolume {
                driver,
                volume_handle,
                sub_path: None,
            }),
        );
    }
    let Some((volume_dir, _)) = subpath_volume_dir(host_path) else {
        return Ok(None);
    };
    let Some((driver, volume_handle)) = read_vol_data(&volume_dir)? else {
        return Ok(None);
    };
    let sub_path = Some(sub_path(host_path, &volume_dir.join("mount"), mounts)?);
    Ok(Some(CsiVolume {
        driver,
        volume_handle,
        sub_path,
    }))
}

/// `<pod>/volume-subpaths/<volume>/<container>/<index>` gives
/// `<pod>/volumes/kubernetes.io~csi/<volume>` and the volume's name.
fn subpath_volume_dir(host_path: &Path) -> Option<(PathBuf, String)> {
    let index = host_path.file_name()?.to_str()?;
    index.parse::<u32>().ok()?;
    let container_dir = host_path.parent()?;
    let volume_subpaths = container_dir.parent()?;
    let volume = volume_subpaths.file_name()?.to_str()?.to_string();
    let subpaths_root = volume_subpaths.parent()?;
    if subpaths_root.file_name()? != "volume-subpaths" {
        return None;
    }
    let pod_dir = subpaths_root.parent()?;
    let dir = pod_dir
        .join("volumes")
        .join("kubernetes.io~csi")
        .join(&volume);
    Some((dir, volume))
}

fn read_vol_data(volume_dir: &Path) -> Result<Option<(String, String)>, EfsError> {
    let path = volume_dir.join("vol_data.json");
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(EfsError::VolData {
                path,
                message: e.to_string(),
            })
        }
    };
    let data: VolData = serde_json::from_slice(&text).map_err(|e| EfsError::VolData {
        path: path.clone(),
        message: format!("not the JSON kubelet writes: {e}"),
    })?;
    Ok(Some((data.driver_name, data.volume_handle)))
}

/// Which directory of the volume kubelet's subpath bind at `host_path`
/// shows: both are located in their file system through the mount table
/// (the bind's root against where the volume's `mount` directory lies).
fn sub_path(
    host_path: &Path,
    volume_mount: &Path,
    mounts: &MountTable,
) -> Result<PathBuf, EfsError> {
    let unknown = |why: &str| EfsError::SubPath {
        host_path: host_path.to_path_buf(),
        why: why.to_string(),
    };
    let bind = mounts
        .at(host_path)
        .ok_or_else(|| unknown("it is not a mount point (kubelet binds subpaths there)"))?;
    let volume = mounts
        .containing(volume_mount)
        .ok_or_else(|| unknown("the volume's mount directory is on no mount"))?;
    let volume_root = volume
        .fs_path(volume_mount)
        .ok_or_else(|| unknown("the volume's mount directory is on no mount"))?;
    if volume.dev != bind.dev {
        return Err(unknown(
            "it is not on the file system of the volume's mount directory",
        ));
    }
    let sub = bind
        .root
        .strip_prefix(&volume_root)
        .map_err(|_| unknown("it shows a directory outside the volume"))?;
    Ok(sub.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubelet_volume(root: &Path, handle: &str, driver: &str) -> PathBuf {
        let dir = root.join("pods/uid-1/volumes/kubernetes.io~csi/efs-pv");
        std::fs::create_dir_all(dir.join("mount")).unwrap();
        let data = serde_json::json!({
            "attachmentID": "csi-123",
            "driverName": driver,
            "nodeName": "node-1",
            "specVolID": "efs-pv",
            "volumeHandle": handle,
            "volumeLifecycleMode": "Persistent",
        });
        std::fs::write(dir.join("vol_data.json"), data.to_string()).unwrap();
        dir.join("mount")
    }

    #[test]
    fn a_mount_directory_with_vol_data_is_a_csi_volume() {
        let root = tempfile::tempdir().unwrap();
        let mount = kubelet_volume(root.path(), "fs-12345678:/a", EFS_DRIVER);
        let v = csi_volume(&mount, &MountTable::default()).unwrap().unwrap();
        assert_eq!(v.driver, EFS_DRIVER);
        assert_eq!(v.volume_handle, "fs-12345678:/a");
        assert_eq!(v.sub_path, None);
        // A plain directory called mount is a host path.
        let plain = root.path().join("other/mount");
        std::fs::create_dir_all(&plain).unwrap();
        assert_eq!(csi_volume(&plain, &MountTable::default()).unwrap(), None);
        assert_eq!(
            csi_volume(root.path(), &MountTable::default()).unwrap(),
            None
        );
    }

    #[test]
    fn malformed_vol_data_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let mount = kubelet_volume(root.path(), "fs-1", EFS_DRIVER);
        std::fs::write(mount.parent().unwrap().join("vol_data.json"), "{").unwrap();
        let err = csi_volume(&mount, &MountTable::default()).unwrap_err();
        assert!(err.to_string().contains("vol_data.json"), "{err}");
    }

    #[test]
    fn a_kubelet_subpath_maps_to_its_directory_in_the_volume() {
        let root = tempfile::tempdir().unwrap();
        let mount = kubelet_volume(root.path(), "fs-12345678", EFS_DRIVER);
        let sub = root.path().join("pods/uid-1/volume-subpaths/efs-pv/app/0");
        std::fs::create_dir_all(&sub).unwrap();
        let r = root.path().display();
        // kubelet's dir on the root file system; the subpath bound from
        // <mount>/team/a.
        let table = MountTable::parse(&format!(
            "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n\
             2 1 8:1 {r}/pods/uid-1/volumes/kubernetes.io~csi/efs-pv/mount/team/a {sub} rw - ext4 /dev/sda1 rw\n",
            sub = sub.display()
        ));
        let v = csi_volume(&sub, &table).unwrap().unwrap();
        assert_eq!(v.sub_path.as_deref(), Some(Path::new("team/a")));
        // The same with the volume itself NFS-mounted on the host.
        let table = MountTable::parse(&format!(
            "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n\
             2 1 0:50 /export {mount} rw - nfs4 h:/export rw,addr=10.0.0.5\n\
             3 1 0:50 /export/team {sub} rw - nfs4 h:/export rw,addr=10.0.0.5\n",
            mount = mount.display(),
            sub = sub.display()
        ));
        let v = csi_volume(&sub, &table).unwrap().unwrap();
        assert_eq!(v.sub_path.as_deref(), Some(Path::new("team")));
        // Not a mount point: kubelet did not make it, we cannot tell.
        let table = MountTable::parse("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n");
        let err = csi_volume(&sub, &table).unwrap_err().to_string();
        assert!(err.contains("not a mount point"), "{err}");
        // Another file system than the volume's.
        let table = MountTable::parse(&format!(
            "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n\
             2 1 8:2 /x {sub} rw - ext4 /dev/sdb1 rw\n",
            sub = sub.display()
        ));
        let err = csi_volume(&sub, &table).unwrap_err();
        assert!(matches!(err, EfsError::SubPath { .. }), "{err}");
    }

    #[test]
    fn subpath_paths_need_kubelets_layout() {
        assert!(
            subpath_volume_dir(Path::new("/var/lib/kubelet/pods/u/volume-subpaths/v/c/0"))
                .is_some()
        );
        assert_eq!(
            subpath_volume_dir(Path::new("/var/lib/kubelet/pods/u/volume-subpaths/v/c/0"))
                .unwrap()
                .0,
            Path::new("/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/v")
        );
        assert!(subpath_volume_dir(Path::new("/var/lib/kubelet/pods/u/other/v/c/0")).is_none());
        assert!(
            subpath_volume_dir(Path::new("/var/lib/kubelet/pods/u/volume-subpaths/v/c/x"))
                .is_none()
        );
    }
}
