//! Pod-wide setup: hostname, DNS, /etc/hosts, sysctls, the pod's network
//! interface and routes (see `network`), shared mounts.
//!
//! The files are written under the agent's state directory and bind-mounted
//! into every container (see `container::spec`). In guest mode the agent also
//! applies them to the VM itself; in host test mode it touches nothing of the
//! host but its own private mount and UTS namespaces.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use podvisor_proto::{DnsConfig, HostEntry, SetupSandboxRequest, SharedMount};

use crate::container::SandboxFiles;
use crate::error::{AgentError, Result};
use crate::Mode;

/// Applies a sandbox setup request and returns the files to share.
pub fn setup(req: &SetupSandboxRequest, state_dir: &Path, mode: Mode) -> Result<SandboxFiles> {
    let dir = state_dir.join("sandbox");
    fs::create_dir_all(&dir).map_err(|e| AgentError::io("create sandbox dir", e))?;
    let hostname = if req.hostname.is_empty() {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into())
    } else {
        validate_hostname(&req.hostname)?;
        nix::unistd::sethostname(&req.hostname).map_err(|e| AgentError::sys("sethostname", e))?;
        req.hostname.clone()
    };
    let files = SandboxFiles {
        hosts: Some(write_atomic(
            &dir.join("hosts"),
            &render_hosts(&hostname, &req.hosts)?,
        )?),
        resolv_conf: Some(write_atomic(
            &dir.join("resolv.conf"),
            &render_resolv_conf(req.dns.as_ref().unwrap_or(&DnsConfig::default()))?,
        )?),
        hostname: Some(write_atomic(
            &dir.join("hostname"),
            &format!("{hostname}\n"),
        )?),
    };

    let touches_host_network =
        !req.sysctls.is_empty() || !req.interfaces.is_empty() || !req.routes.is_empty();
    if mode == Mode::Host && touches_host_network {
        return Err(AgentError::FailedPrecondition(
            "sysctls, interfaces and routes are applied only inside a pod VM, not in host test mode".into(),
        ));
    }
    for (key, value) in &req.sysctls {
        apply_sysctl(key, value)?;
    }
    if !req.interfaces.is_empty() || !req.routes.is_empty() {
        // Before the mounts: an NFS share needs the pod's network.
        crate::network::configure(&req.interfaces, &req.routes)?;
    }
    if mode == Mode::Guest {
        crate::volume::set_nfs_client_identifier();
    }
    for m in &req.mounts {
        mount_shared(m)?;
    }
    Ok(files)
}

fn validate_hostname(name: &str) -> Result<()> {
    let ok = name.len() <= 64
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if ok {
        Ok(())
    } else {
        Err(AgentError::InvalidArgument(format!(
            "hostname {name:?} is not a valid DNS name of at most 64 characters"
        )))
    }
}

fn check_line_safe(what: &str, value: &str) -> Result<()> {
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(AgentError::InvalidArgument(format!(
            "{what} {value:?} is empty or contains whitespace"
        )));
    }
    Ok(())
}

pub fn render_hosts(hostname: &str, extra: &[HostEntry]) -> Result<String> {
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    for entry in extra {
        entry.ip.parse::<std::net::IpAddr>().map_err(|_| {
            AgentError::InvalidArgument(format!("hosts entry ip {:?} is not an address", entry.ip))
        })?;
        for name in &entry.names {
            check_line_safe("hosts entry name", name)?;
        }
        if !entry.names.is_empty() {
            let _ = writeln!(out, "{}\t{}", entry.ip, entry.names.join(" "));
        }
    }
    let _ = writeln!(out, "127.0.1.1\t{hostname}");
    Ok(out)
}

pub fn render_resolv_conf(dns: &DnsConfig) -> Result<String> {
    let mut out = String::new();
    for server in &dns.servers {
        server.parse::<std::net::IpAddr>().map_err(|_| {
            AgentError::InvalidArgument(format!("DNS server {server:?} is not an address"))
        })?;
        let _ = writeln!(out, "nameserver {server}");
    }
    if !dns.searches.is_empty() {
        for s in &dns.searches {
            check_line_safe("DNS search domain", s)?;
        }
        let _ = writeln!(out, "search {}", dns.searches.join(" "));
    }
    if !dns.options.is_empty() {
        for o in &dns.options {
            check_line_safe("DNS option", o)?;
        }
        let _ = writeln!(out, "options {}", dns.options.join(" "));
    }
    Ok(out)
}

/// Writes a file so that readers never see half of it.
fn write_atomic(path: &Path, content: &str) -> Result<PathBuf> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, content).map_err(|e| AgentError::io(format!("write {}", tmp.display()), e))?;
    fs::rename(&tmp, path).map_err(|e| AgentError::io(format!("rename {}", path.display()), e))?;
    Ok(path.to_path_buf())
}

fn apply_sysctl(key: &str, value: &str) -> Result<()> {
    let valid = !key.is_empty()
        && !key.contains("..")
        && !key.starts_with(['/', '.'])
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
    if !valid {
        return Err(AgentError::InvalidArgument(format!(
            "sysctl name {key:?} is not valid"
        )));
    }
    let path = Path::new("/proc/sys").join(key.replace('.', "/"));
    fs::write(&path, value).map_err(|e| AgentError::io(format!("sysctl {key}={value}"), e))
}

fn mount_shared(m: &SharedMount) -> Result<()> {
    let target = Path::new(&m.target);
    if !target.is_absolute() {
        return Err(AgentError::InvalidArgument(format!(
            "mount target {:?} is not an absolute path",
            m.target
        )));
    }
    fs::create_dir_all(target).map_err(|e| AgentError::io(format!("create {}", m.target), e))?;
    let mut flags = MsFlags::empty();
    if m.readonly {
        flags |= MsFlags::MS_RDONLY;
    }
    let (fstype, data) = match m.fstype.as_str() {
        "bind" => {
            flags |= MsFlags::MS_BIND | MsFlags::MS_REC;
            (None, None)
        }
        "virtiofs" | "nfs4" | "nfs" | "tmpfs" | "9p" | "erofs" | "ext4" => {
            (Some(m.fstype.as_str()), Some(m.options.join(",")))
        }
        other => {
            return Err(AgentError::InvalidArgument(format!(
            "mount type {other:?} is not supported (bind, virtiofs, nfs4, tmpfs, 9p, erofs, ext4)"
        )))
        }
    };
    mount(
        Some(m.source.as_str()),
        target,
        fstype,
        flags,
        data.as_deref().filter(|d| !d.is_empty()),
    )
    .map_err(|e| {
        AgentError::sys(
            format!("mount {} {} at {}", m.fstype, m.source, m.target),
            e,
        )
    })?;
    // A bind mount ignores MS_RDONLY until it is remounted.
    if m.readonly && m.fstype == "bind" {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| AgentError::sys(format!("remount {} read-only", m.target), e))?;
    }
    tracing::info!(fstype = %m.fstype, source = %m.source, target = %m.target, "mounted");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_file_has_localhost_extras_and_hostname() {
        let text = render_hosts(
            "web-0",
            &[HostEntry {
                ip: "10.0.0.5".into(),
                names: vec!["db".into(), "db.local".into()],
            }],
        )
        .unwrap();
        assert!(text.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(text.contains("10.0.0.5\tdb db.local\n"));
        assert!(text.ends_with("127.0.1.1\tweb-0\n"));
        let err = render_hosts(
            "x",
            &[HostEntry {
                ip: "nope".into(),
                names: vec!["a".into()],
            }],
        )
        .unwrap_err();
        assert!(
            matches!(&err, AgentError::InvalidArgument(m) if m == "hosts entry ip \"nope\" is not an address"),
            "{err:?}"
        );
    }

    #[test]
    fn resolv_conf_follows_the_dns_config() {
        let text = render_resolv_conf(&DnsConfig {
            servers: vec!["10.100.0.10".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        })
        .unwrap();
        assert_eq!(
            text,
            "nameserver 10.100.0.10\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5\n"
        );
        let bad = DnsConfig {
            servers: vec![],
            searches: vec!["a b".into()],
            options: vec![],
        };
        let err = render_resolv_conf(&bad).unwrap_err();
        assert!(
            matches!(&err, AgentError::InvalidArgument(m) if m.starts_with("DNS search domain \"a b\"")),
            "{err:?}"
        );
    }

    #[test]
    fn host_mode_refuses_interfaces_and_routes() {
        // Host test mode shares the host's network: never reconfigure it.
        let dir = std::env::temp_dir().join(format!("pv-agent-sandbox-{}", std::process::id()));
        let req = SetupSandboxRequest {
            interfaces: vec![podvisor_proto::Interface {
                name: "eth0".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let err = setup(&req, &dir, Mode::Host).unwrap_err();
        assert!(matches!(err, AgentError::FailedPrecondition(_)), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn hostnames_are_validated() {
        assert!(validate_hostname("pod-1.example").is_ok());
        for bad in ["bad name", ""] {
            let err = validate_hostname(bad).unwrap_err();
            assert!(
                matches!(err, AgentError::InvalidArgument(_)),
                "{bad:?}: {err}"
            );
            assert_eq!(
                tonic::Status::from(err).code(),
                tonic::Code::InvalidArgument
            );
        }
    }
}
