//! Network file systems a container mounts from inside the guest (EFS and
//! other NFS servers), over the pod's own interface. The runtime names each
//! one with its guest `target`; the container's spec bind-mounts the target.
//!
//! Every mount runs under one deadline for the whole request (see
//! [`timed`]); on any failure what was mounted is unmounted and the
//! directories made for it are removed, so a failed create leaves nothing.

mod timed;

use std::path::{Component, Path, PathBuf};

use nix::mount::{umount2, MntFlags, MsFlags};
use podvisor_proto::SharedMount;
use tokio::time::{Duration, Instant};

use crate::error::{AgentError, Result};
use crate::reaper::Reaper;
use timed::{MountCall, Outcome};

/// Used when the request gives no bound.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The mounted volumes of one container; [`Volumes::unmount`] undoes them.
#[derive(Debug, Default)]
pub struct Volumes {
    mounted: Vec<PathBuf>,
    /// Directories made for the targets, outermost first.
    created: Vec<PathBuf>,
}

impl Volumes {
    /// Detaches every mount (a lazy unmount never blocks, even on a server
    /// that went away) and removes the directories made for them.
    pub fn unmount(&mut self) {
        for target in self.mounted.drain(..).rev() {
            match umount2(&target, MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {
                    tracing::info!(target = %target.display(), "volume unmounted")
                }
                Err(e) => tracing::warn!(target = %target.display(), %e, "unmounting a volume"),
            }
        }
        for dir in self.created.drain(..).rev() {
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// The kernel's NFSv4 client identifier of this VM. By default it is
/// built from the hostname, and two pods with the same hostname (same
/// name, other namespaces) would look like one client to the server and
/// take each other's leases and locks; the VM's boot id is unique. Best
/// effort: a kernel without the file keeps its default.
pub fn set_nfs_client_identifier() {
    const IDENTIFIER: &str = "/sys/fs/nfs/net/nfs_client/identifier";
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let boot_id = boot_id.trim();
    if boot_id.is_empty() || !Path::new(IDENTIFIER).exists() {
        return;
    }
    if let Err(e) = std::fs::write(IDENTIFIER, boot_id) {
        tracing::warn!(%e, "setting the NFS client identifier");
    }
}

/// A validated volume request.
struct Volume<'a> {
    request: &'a SharedMount,
    target: PathBuf,
    /// The server's address, for messages.
    server: String,
}

/// Mounts every volume, all within `timeout`; on failure nothing stays.
pub async fn mount_all(
    reaper: &Reaper,
    requests: &[SharedMount],
    timeout: Duration,
) -> Result<Volumes> {
    let volumes = requests.iter().map(validate).collect::<Result<Vec<_>>>()?;
    let deadline = Instant::now() + timeout;
    let mut done = Volumes::default();
    for volume in &volumes {
        if let Err(e) = mount_one(reaper, volume, deadline, timeout, &mut done).await {
            done.unmount();
            return Err(e);
        }
    }
    Ok(done)
}

async fn mount_one(
    reaper: &Reaper,
    volume: &Volume<'_>,
    deadline: Instant,
    timeout: Duration,
    done: &mut Volumes,
) -> Result<()> {
    let m = volume.request;
    let what = format!("mounting {} {} at {}", m.fstype, m.source, m.target);
    if is_mountpoint(&volume.target) {
        return Err(AgentError::FailedPrecondition(format!(
            "{what}: something is already mounted there"
        )));
    }
    done.created.extend(make_dirs(&volume.target)?);
    // As kubelet mounts NFS volumes: no nosuid or nodev of our own.
    let flags = if m.readonly {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    let call = MountCall::new(&m.source, &m.target, &m.fstype, &m.options.join(","), flags)?;
    let started = Instant::now();
    match timed::mount(reaper, call, deadline).await? {
        Outcome::Mounted => {
            done.mounted.push(volume.target.clone());
            tracing::info!(source = %m.source, target = %m.target, readonly = m.readonly,
                elapsed = ?started.elapsed(), "volume mounted");
            Ok(())
        }
        Outcome::Failed(errno) => Err(AgentError::Mount {
            what,
            message: format!(
                "{} ({errno:?}) from the NFS server {}",
                errno.desc(),
                volume.server
            ),
        }),
        Outcome::TimedOut => {
            // The kill may have raced a mount that had just succeeded.
            if is_mountpoint(&volume.target) {
                done.mounted.push(volume.target.clone());
            }
            Err(AgentError::MountTimeout {
                what,
                message: format!(
                    "the NFS server {} did not answer within {:.0?} (the volumes' mount timeout); \
                     check that it is reachable from the pod's network on TCP port 2049",
                    volume.server, timeout
                ),
            })
        }
    }
}

fn validate(m: &SharedMount) -> Result<Volume<'_>> {
    let bad = |why: String| AgentError::InvalidArgument(format!("volume {:?}: {why}", m.target));
    if !matches!(m.fstype.as_str(), "nfs4" | "nfs") {
        return Err(bad(format!(
            "type {:?} is not a volume type (nfs4, nfs)",
            m.fstype
        )));
    }
    let target = Path::new(&m.target);
    let normal = target.is_absolute()
        && target.components().count() > 1
        && target
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !normal || m.target.ends_with('/') {
        return Err(bad(
            "target must be an absolute path without '.' or '..'".into()
        ));
    }
    let path_ok = m
        .source
        .rsplit_once(':')
        .is_some_and(|(host, path)| !host.is_empty() && path.starts_with('/'));
    if !path_ok {
        return Err(bad(format!("source {:?} is not host:/path", m.source)));
    }
    if let Some(o) = m
        .options
        .iter()
        .find(|o| o.is_empty() || o.contains(',') || o.contains(char::is_whitespace))
    {
        return Err(bad(format!(
            "mount option {o:?} is empty or contains ',' or space"
        )));
    }
    // The kernel connects to addr=; the guest has no resolver for names.
    let server = m
        .options
        .iter()
        .find_map(|o| o.strip_prefix("addr="))
        .ok_or_else(|| bad("options have no addr= (the server's IP address)".into()))?;
    Ok(Volume {
        request: m,
        target: target.to_path_buf(),
        server: server.to_string(),
    })
}

/// Creates `dir` and its missing parents; returns those it made,
/// outermost first.
fn make_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut missing: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|d| !d.exists())
        .map(Path::to_path_buf)
        .collect();
    missing.reverse();
    for d in &missing {
        match std::fs::create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(AgentError::io(format!("create {}", d.display()), e)),
        }
    }
    Ok(missing)
}

fn is_mountpoint(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|p| unescape(p) == wanted)
}

/// mountinfo writes space, tab, newline and backslash as \ooo.
fn unescape(field: &str) -> String {
    let mut out = Vec::with_capacity(field.len());
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(v)) => {
                out.push(v);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nfs(target: &str, source: &str, options: &[&str]) -> SharedMount {
        SharedMount {
            fstype: "nfs4".into(),
            source: source.into(),
            target: target.into(),
            options: options.iter().map(|s| s.to_string()).collect(),
            readonly: false,
        }
    }

    #[test]
    fn volume_requests_are_validated() {
        let ok = nfs("/run/v/c/0", "10.0.0.5:/", &["vers=4.1", "addr=10.0.0.5"]);
        assert_eq!(validate(&ok).unwrap().server, "10.0.0.5");
        let err = |m: SharedMount| validate(&m).err().unwrap().to_string();
        assert!(err(nfs("/run/v/c/0", "10.0.0.5:/", &["vers=4.1"])).contains("addr="));
        assert!(err(nfs("run/v", "h:/", &["addr=1.2.3.4"])).contains("absolute"));
        assert!(err(nfs("/run/../etc", "h:/", &["addr=1.2.3.4"])).contains("'..'"));
        assert!(err(nfs("/", "h:/", &["addr=1.2.3.4"])).contains("absolute"));
        assert!(err(nfs("/v", "h:relative", &["addr=1.2.3.4"])).contains("host:/path"));
        assert!(err(nfs("/v", ":/x", &["addr=1.2.3.4"])).contains("host:/path"));
        assert!(err(nfs("/v", "h:/", &["addr=1.2.3.4", "ro,rw"])).contains("','"));
        let mut other = ok.clone();
        other.fstype = "ext4".into();
        assert!(err(other).contains("not a volume type"));
    }

    #[test]
    fn made_directories_are_listed_outermost_first() {
        let base = std::env::temp_dir().join(format!("pv-agent-vol-{}", std::process::id()));
        let target = base.join("c1/0");
        let made = make_dirs(&target).unwrap();
        assert_eq!(made, [base.clone(), base.join("c1"), target.clone()]);
        assert!(make_dirs(&target).unwrap().is_empty(), "nothing new");
        let mut v = Volumes {
            mounted: vec![],
            created: made,
        };
        v.unmount();
        assert!(!base.exists());
    }

    #[test]
    fn mountinfo_fields_are_unescaped() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/x\0"), r"/x\0");
    }
}
