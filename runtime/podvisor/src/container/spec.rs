//! A CRI ContainerConfig plus its image's config, turned into the OCI
//! runtime spec the agent runs. Only what the CRI request and the image say
//! is filled in here; the agent adds the in-guest parts (rootfs, default
//! mounts and namespaces, the pod's /etc files).

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_cri::v1 as cri;
use podvisor_proto::PRIVILEGED_ANNOTATION;
use serde_json::{json, Value};

use super::seccomp::{self, SeccompError};
use crate::image::RuntimeConfig;
use crate::policy::LimitsConfig;

/// containerd's default capabilities for a container that is not privileged.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability of the guest kernel (Linux 6.1: 0 to 40), for a
/// privileged container.
pub const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("no command to run: the request has no command or args and image {0} has no entrypoint or cmd")]
    NoCommand(String),
    #[error("user {user:?} not found in the image's /etc/passwd")]
    UnknownUser { user: String },
    #[error("group {group:?} not found in the image's /etc/group")]
    UnknownGroup { group: String },
    #[error("working directory {0:?} is not an absolute path")]
    RelativeWorkingDir(String),
    #[error("mount container_path {0:?} is not an absolute path")]
    RelativeMountPath(String),
    #[error("supplemental group {0} is not a valid gid")]
    BadGroup(i64),
    #[error("{field} {value} is not a valid id (0 to 4294967295)")]
    BadId { field: &'static str, value: i64 },
    #[error("{0} sets run_as_group without run_as_user or run_as_username: a group alone cannot be applied")]
    RunAsGroupWithoutUser(&'static str),
    #[error("NamespaceMode TARGET needs namespace_options.target_id, the container whose PID namespace to join")]
    NoTarget,
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

/// Where a container's processes live (CRI NamespaceOption.pid).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PidMode {
    /// A PID namespace of its own.
    Container,
    /// The pod's, shared by its POD-mode containers.
    Pod,
    /// That of this container (CRI id), for ephemeral containers.
    Target(String),
}

/// A host path made visible in the guest, and where the container sees it.
#[derive(Clone, Debug)]
pub struct GuestMount {
    pub guest_path: PathBuf,
    pub container_path: String,
    pub readonly: bool,
    pub propagation: i32,
}

pub struct SpecInput<'a> {
    pub config: &'a cri::ContainerConfig,
    pub image_name: &'a str,
    pub image: &'a RuntimeConfig,
    /// The image's layers, top-most first, to look users and groups up in.
    pub layers: &'a [PathBuf],
    pub hostname: &'a str,
    pub mounts: &'a [GuestMount],
    /// RLIMIT_NOFILE and RLIMIT_NPROC of the process and its execs.
    pub limits: &'a LimitsConfig,
    /// The pod's config as the request carries it: its namespace options
    /// and seccomp profile apply where the container names none.
    pub sandbox: Option<&'a cri::PodSandboxConfig>,
}

fn sandbox_security(
    sandbox: Option<&cri::PodSandboxConfig>,
) -> Option<&cri::LinuxSandboxSecurityContext> {
    sandbox
        .and_then(|s| s.linux.as_ref())
        .and_then(|l| l.security_context.as_ref())
}

/// The container's namespace options, else the pod's; absent is all POD,
/// the CRI's default.
fn namespace_options(
    security: &cri::LinuxContainerSecurityContext,
    sandbox: Option<&cri::PodSandboxConfig>,
) -> cri::NamespaceOption {
    security
        .namespace_options
        .clone()
        .or_else(|| sandbox_security(sandbox).and_then(|s| s.namespace_options.clone()))
        .unwrap_or_default()
}

/// The container's PID namespace.
pub fn pid_mode(
    config: &cri::ContainerConfig,
    sandbox: Option<&cri::PodSandboxConfig>,
) -> Result<PidMode, SpecError> {
    let security = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default();
    let ns = namespace_options(&security, sandbox);
    Ok(match cri::NamespaceMode::try_from(ns.pid) {
        Ok(cri::NamespaceMode::Container) => PidMode::Container,
        Ok(cri::NamespaceMode::Target) if ns.target_id.is_empty() => {
            return Err(SpecError::NoTarget)
        }
        Ok(cri::NamespaceMode::Target) => PidMode::Target(ns.target_id),
        // NODE is refused by policy before this.
        _ => PidMode::Pod,
    })
}

/// A group without a user cannot be honoured: the image's user would run
/// with a group it never had. Refused, as the CRI expects.
pub fn check_run_as_group(
    security: Option<&cri::LinuxContainerSecurityContext>,
    sandbox: Option<&cri::LinuxSandboxSecurityContext>,
) -> Result<(), SpecError> {
    if let Some(c) = security {
        if c.run_as_group.is_some() && c.run_as_user.is_none() && c.run_as_username.is_empty() {
            return Err(SpecError::RunAsGroupWithoutUser(
                "the container's security context",
            ));
        }
    }
    if let Some(s) = sandbox {
        if s.run_as_group.is_some() && s.run_as_user.is_none() {
            return Err(SpecError::RunAsGroupWithoutUser(
                "the pod sandbox's security context",
            ));
        }
    }
    Ok(())
}

/// The OCI spec, as JSON.
pub fn build(input: &SpecInput<'_>) -> Result<Value, SpecError> {
    let config = input.config;
    let linux = config.linux.clone().unwrap_or_default();
    let security = linux.security_context.clone().unwrap_or_default();
    let resources = linux.resources.clone().unwrap_or_default();
    check_run_as_group(Some(&security), sandbox_security(input.sandbox))?;

    let args = command_line(config, input.image)
        .ok_or_else(|| SpecError::NoCommand(input.image_name.to_string()))?;
    let cwd = [
        config.working_dir.as_str(),
        input.image.working_dir.as_str(),
    ]
    .into_iter()
    .find(|d| !d.is_empty())
    .unwrap_or("/");
    if !cwd.starts_with('/') {
        return Err(SpecError::RelativeWorkingDir(cwd.to_string()));
    }
    let user = resolve_user(&security, &input.image.user, input.layers)?;
    // Privileged (allowed only in policy mode `vm`) means privileged in the
    // guest: every capability, no masked or read-only paths, writable /sys
    // and cgroupfs, every device of the VM. The VM stays the boundary.
    let privileged = security.privileged;
    let caps = if privileged {
        ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect()
    } else {
        capabilities(security.capabilities.as_ref())
    };

    let mut process = json!({
        "terminal": config.tty,
        "user": {
            "uid": user.uid,
            "gid": user.gid,
            "additionalGids": user.additional_gids,
        },
        "args": args,
        "env": environment(config, input.image, input.hostname),
        "cwd": cwd,
        "capabilities": {
            "bounding": caps,
            "effective": caps,
            "permitted": caps,
        },
        "rlimits": input.limits.oci_rlimits(),
        "noNewPrivileges": security.no_new_privs,
    });
    if resources.oom_score_adj != 0 {
        process["oomScoreAdj"] = json!(resources.oom_score_adj);
    }

    let mut mounts = Vec::new();
    for m in input.mounts {
        if !m.container_path.starts_with('/') {
            return Err(SpecError::RelativeMountPath(m.container_path.clone()));
        }
        let mut options = vec!["rbind", if m.readonly { "ro" } else { "rw" }];
        options.push(match cri::MountPropagation::try_from(m.propagation) {
            Ok(cri::MountPropagation::PropagationBidirectional) => "rshared",
            Ok(cri::MountPropagation::PropagationHostToContainer) => "rslave",
            _ => "rprivate",
        });
        mounts.push(json!({
            "destination": m.container_path,
            "type": "bind",
            "source": m.guest_path,
            "options": options,
        }));
    }

    // No network namespace: the pod's network is the VM's. No IPC
    // namespace for IPC=POD: the VM's is the pod's, where the pod's IPC
    // sysctls are set. A cgroup namespace, so /sys/fs/cgroup in the
    // container is its own cgroup. The agent picks the PID namespace
    // (CreateContainerRequest.pid_namespace).
    let own_ipc =
        namespace_options(&security, input.sandbox).ipc == cri::NamespaceMode::Container as i32;
    let namespaces: Vec<Value> = ["pid", "ipc", "uts", "mount", "cgroup"]
        .iter()
        .filter(|t| own_ipc || **t != "ipc")
        .map(|t| json!({ "type": t }))
        .collect();
    let mut oci_resources = oci_resources(&resources);
    if privileged {
        oci_resources["devices"] = json!([{ "allow": true, "access": "rwm" }]);
    }
    let mut linux_spec = json!({
        "resources": oci_resources,
        "namespaces": namespaces,
    });
    let profile = seccomp::choose(&security, sandbox_security(input.sandbox))?;
    // Privileged means unconfined, whatever profile is named (the CRI's
    // rule; critest checks that a blocking profile is ignored).
    if !privileged {
        if let Some(filter) = seccomp::oci(&profile, &caps)? {
            linux_spec["seccomp"] = filter;
        }
    }
    if privileged {
        // Empty, not absent: absent gets the agent's defaults.
        linux_spec["maskedPaths"] = json!([]);
        linux_spec["readonlyPaths"] = json!([]);
    } else {
        if !security.masked_paths.is_empty() {
            linux_spec["maskedPaths"] = json!(security.masked_paths);
        }
        if !security.readonly_paths.is_empty() {
            linux_spec["readonlyPaths"] = json!(security.readonly_paths);
        }
    }

    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": { "path": "rootfs", "readonly": security.readonly_rootfs },
        "hostname": input.hostname,
        "linux": linux_spec,
    });
    if !mounts.is_empty() || privileged {
        // Without mounts the agent adds the default ones (/proc, /dev, ...).
        spec["mounts"] = json!(default_mounts(privileged)
            .into_iter()
            .chain(mounts)
            .collect::<Vec<_>>());
    }
    if privileged {
        spec["annotations"] = json!({ PRIVILEGED_ANNOTATION: "true" });
    }
    Ok(spec)
}

/// Docker's rule: the request's command replaces the entrypoint, its args
/// replace the image's cmd.
fn command_line(config: &cri::ContainerConfig, image: &RuntimeConfig) -> Option<Vec<String>> {
    let mut args = if !config.command.is_empty() {
        config.command.clone()
    } else {
        image.entrypoint.clone()
    };
    if !config.args.is_empty() {
        args.extend(config.args.iter().cloned());
    } else if config.command.is_empty() {
        args.extend(image.cmd.iter().cloned());
    }
    (!args.is_empty() && !args[0].is_empty()).then_some(args)
}

/// The image's environment, overridden by the request's, plus HOSTNAME and
/// a PATH when neither gives one.
fn environment(
    config: &cri::ContainerConfig,
    image: &RuntimeConfig,
    hostname: &str,
) -> Vec<String> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut order = Vec::new();
    let mut set = |key: &str, value: &str| {
        if env.insert(key.to_string(), value.to_string()).is_none() {
            order.push(key.to_string());
        }
    };
    set("PATH", &DEFAULT_PATH[5..]);
    if !hostname.is_empty() {
        set("HOSTNAME", hostname);
    }
    for entry in &image.env {
        let (k, v) = entry.split_once('=').unwrap_or((entry, ""));
        set(k, v);
    }
    for kv in &config.envs {
        set(&kv.key, &kv.value);
    }
    order.iter().map(|k| format!("{k}={}", env[k])).collect()
}

fn capabilities(requested: Option<&cri::Capability>) -> Vec<String> {
    let normalize = |c: &String| {
        let c = c.to_ascii_uppercase();
        if c.starts_with("CAP_") || c == "ALL" {
            c
        } else {
            format!("CAP_{c}")
        }
    };
    let mut caps: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    let Some(requested) = requested else {
        return caps;
    };
    let add: Vec<String> = requested.add_capabilities.iter().map(normalize).collect();
    let drop: Vec<String> = requested.drop_capabilities.iter().map(normalize).collect();
    // As kubelet's other runtimes read it: adding ALL starts from every
    // capability and then drops; otherwise drops apply to the default set
    // first (dropping ALL empties it) and the adds come after. Policy mode
    // `fargate` refuses any add but SYS_PTRACE before this.
    if add.iter().any(|c| c == "ALL") {
        caps = ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect();
        caps.retain(|c| !drop.contains(c));
        return caps;
    }
    if drop.iter().any(|c| c == "ALL") {
        caps.clear();
    } else {
        caps.retain(|c| !drop.contains(c));
    }
    for add in add {
        if !caps.contains(&add) {
            caps.push(add);
        }
    }
    caps
}

fn oci_resources(r: &cri::LinuxContainerResources) -> Value {
    let mut cpu = serde_json::Map::new();
    if r.cpu_shares > 0 {
        cpu.insert("shares".into(), json!(r.cpu_shares));
    }
    if r.cpu_quota > 0 {
        cpu.insert("quota".into(), json!(r.cpu_quota));
    }
    if r.cpu_period > 0 {
        cpu.insert("period".into(), json!(r.cpu_period));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), json!(r.cpuset_cpus));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.insert("mems".into(), json!(r.cpuset_mems));
    }
    let mut memory = serde_json::Map::new();
    if r.memory_limit_in_bytes > 0 {
        memory.insert("limit".into(), json!(r.memory_limit_in_bytes));
    }
    if r.memory_swap_limit_in_bytes > 0 {
        memory.insert("swap".into(), json!(r.memory_swap_limit_in_bytes));
    }
    let mut out = serde_json::Map::new();
    if !cpu.is_empty() {
        out.insert("cpu".into(), Value::Object(cpu));
    }
    if !memory.is_empty() {
        out.insert("memory".into(), Value::Object(memory));
    }
    if !r.unified.is_empty() {
        out.insert("unified".into(), json!(r.unified));
    }
    Value::Object(out)
}

/// The OCI `linux.resources` for UpdateContainerResources.
pub fn update_resources(r: &cri::LinuxContainerResources) -> Value {
    oci_resources(r)
}

/// What the agent would add if the spec had no mounts; given explicitly
/// when the spec lists mounts of its own.
fn default_mounts(privileged: bool) -> Vec<Value> {
    let sys = if privileged { "rw" } else { "ro" };
    vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", sys]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", sys]}),
    ]
}

#[derive(Debug, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// The security context's user wins over the image's `USER`; names are
/// looked up in the image's /etc/passwd and /etc/group.
fn resolve_user(
    security: &cri::LinuxContainerSecurityContext,
    image_user: &str,
    layers: &[PathBuf],
) -> Result<User, SpecError> {
    let (user_part, group_part) = match image_user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (image_user, None),
    };
    let passwd = read_image_file(layers, "etc/passwd");
    let lookup_user = |name: &str| -> Result<(u32, u32), SpecError> {
        passwd_entry(&passwd, |fields| fields[0] == name).ok_or_else(|| SpecError::UnknownUser {
            user: name.to_string(),
        })
    };
    let (uid, mut gid) = if let Some(uid) = &security.run_as_user {
        let uid = u32::try_from(uid.value).map_err(|_| SpecError::BadId {
            field: "run_as_user",
            value: uid.value,
        })?;
        (uid, primary_gid(&passwd, uid))
    } else if !security.run_as_username.is_empty() {
        lookup_user(&security.run_as_username)?
    } else if user_part.is_empty() {
        (0, 0)
    } else if let Ok(uid) = user_part.parse::<u32>() {
        (uid, primary_gid(&passwd, uid))
    } else {
        lookup_user(user_part)?
    };
    if let Some(group) = group_part.filter(|g| !g.is_empty()) {
        gid = match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups = read_image_file(layers, "etc/group");
                groups
                    .lines()
                    .map(|l| l.split(':').collect::<Vec<_>>())
                    .find(|f| f.len() >= 3 && f[0] == group)
                    .and_then(|f| f[2].parse().ok())
                    .ok_or_else(|| SpecError::UnknownGroup {
                        group: group.to_string(),
                    })?
            }
        };
    }
    if let Some(g) = &security.run_as_group {
        gid = u32::try_from(g.value).map_err(|_| SpecError::BadId {
            field: "run_as_group",
            value: g.value,
        })?;
    }
    // The groups the image's /etc/group lists the user in come first, then
    // the request's supplemental groups: what kubelet's other runtimes give
    // a process (SupplementalGroupsPolicy "Merge", the default).
    let mut additional_gids = image_groups_of(uid, &passwd, &read_image_file(layers, "etc/group"));
    for g in &security.supplemental_groups {
        let g = u32::try_from(*g).map_err(|_| SpecError::BadGroup(*g))?;
        if !additional_gids.contains(&g) {
            additional_gids.push(g);
        }
    }
    Ok(User {
        uid,
        gid,
        additional_gids,
    })
}

/// The gids of the groups in `group` that name `uid`'s user (from
/// `passwd`) as a member.
fn image_groups_of(uid: u32, passwd: &str, group: &str) -> Vec<u32> {
    let uid = uid.to_string();
    let Some(name) = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 3 && f[2] == uid)
        .map(|f| f[0].to_string())
    else {
        return Vec::new();
    };
    let mut gids = Vec::new();
    for fields in group.lines().map(|l| l.split(':').collect::<Vec<_>>()) {
        if fields.len() < 4 || !fields[3].split(',').any(|m| m.trim() == name) {
            continue;
        }
        if let Ok(gid) = fields[2].parse::<u32>() {
            if !gids.contains(&gid) {
                gids.push(gid);
            }
        }
    }
    gids
}

fn primary_gid(passwd: &str, uid: u32) -> u32 {
    passwd_entry(passwd, |f| f[2] == uid.to_string()).map_or(0, |(_, gid)| gid)
}

fn passwd_entry(passwd: &str, pick: impl Fn(&[&str]) -> bool) -> Option<(u32, u32)> {
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .find(|f| pick(f))
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
}

/// The file as the container would see it: from the top-most layer that
/// has it. Missing or unreadable is empty.
fn read_image_file(layers: &[PathBuf], relative: &str) -> String {
    layers
        .iter()
        .map(|l| l.join(relative))
        .find(|p| p.symlink_metadata().is_ok_and(|m| m.is_file()))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(entrypoint: &[&str], cmd: &[&str]) -> RuntimeConfig {
        RuntimeConfig {
            entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn config(command: &[&str], args: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn command_follows_dockers_rule() {
        let img = image(&["/entry"], &["default"]);
        let line = |c: &[&str], a: &[&str]| command_line(&config(c, a), &img).unwrap();
        assert_eq!(line(&[], &[]), ["/entry", "default"]);
        assert_eq!(line(&[], &["x"]), ["/entry", "x"]);
        assert_eq!(line(&["/bin/sh"], &[]), ["/bin/sh"]);
        assert_eq!(
            line(&["/bin/sh"], &["-c", "true"]),
            ["/bin/sh", "-c", "true"]
        );
        let bare = image(&[], &[]);
        assert_eq!(command_line(&config(&[], &[]), &bare), None);
        assert_eq!(command_line(&config(&[], &["ls"]), &bare).unwrap(), ["ls"]);
    }

    #[test]
    fn request_env_overrides_image_env() {
        let mut img = image(&[], &["sh"]);
        img.env = vec!["A=image".into(), "PATH=/image/bin".into()];
        let mut cfg = config(&[], &[]);
        cfg.envs = vec![cri::KeyValue {
            key: "A".into(),
            value: "pod".into(),
        }];
        let env = environment(&cfg, &img, "web-1");
        assert_eq!(env, ["PATH=/image/bin", "HOSTNAME=web-1", "A=pod"]);
    }

    #[test]
    fn capabilities_add_and_drop() {
        let caps = capabilities(Some(&cri::Capability {
            add_capabilities: vec!["sys_ptrace".into()],
            drop_capabilities: vec!["NET_RAW".into(), "CAP_MKNOD".into()],
            add_ambient_capabilities: vec![],
        }));
        assert!(caps.contains(&"CAP_SYS_PTRACE".to_string()));
        assert!(!caps.contains(&"CAP_NET_RAW".to_string()));
        assert!(!caps.contains(&"CAP_MKNOD".to_string()));
        assert!(caps.contains(&"CAP_CHOWN".to_string()));
        let none = capabilities(Some(&cri::Capability {
            add_capabilities: vec!["NET_ADMIN".into()],
            drop_capabilities: vec!["all".into()],
            add_ambient_capabilities: vec![],
        }));
        assert_eq!(none, ["CAP_NET_ADMIN"]);
        let all = capabilities(Some(&cri::Capability {
            add_capabilities: vec!["ALL".into()],
            drop_capabilities: vec!["sys_admin".into()],
            add_ambient_capabilities: vec![],
        }));
        assert_eq!(all.len(), ALL_CAPABILITIES.len() - 1);
        assert!(all.contains(&"CAP_BPF".to_string()));
        assert!(!all.contains(&"CAP_SYS_ADMIN".to_string()));
    }

    #[test]
    fn users_resolve_from_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("top");
        let bottom = dir.path().join("bottom");
        std::fs::create_dir_all(top.join("etc")).unwrap();
        std::fs::create_dir_all(bottom.join("etc")).unwrap();
        std::fs::write(bottom.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::fs::write(
            top.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nwww:x:33:34::/var/www:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(top.join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let layers = [top, bottom];
        let sc = cri::LinuxContainerSecurityContext::default();
        let user = |image_user: &str| resolve_user(&sc, image_user, &layers);
        assert_eq!(user("").unwrap().uid, 0);
        assert_eq!(
            user("www").unwrap(),
            User {
                uid: 33,
                gid: 34,
                additional_gids: vec![]
            }
        );
        assert_eq!(user("33").unwrap().gid, 34);
        assert_eq!(user("www:staff").unwrap().gid, 50);
        assert_eq!(
            user("1000:7").unwrap(),
            User {
                uid: 1000,
                gid: 7,
                additional_gids: vec![]
            }
        );
        assert_eq!(
            user("nobody"),
            Err(SpecError::UnknownUser {
                user: "nobody".into()
            })
        );
        let sc = cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 33 }),
            run_as_group: Some(cri::Int64Value { value: 99 }),
            supplemental_groups: vec![5],
            ..Default::default()
        };
        assert_eq!(
            resolve_user(&sc, "root", &layers).unwrap(),
            User {
                uid: 33,
                gid: 99,
                additional_gids: vec![5]
            }
        );
        // Ids beyond a u32 are refused, not wrapped (2^32 would be root).
        for (field, value) in [("run_as_user", 1 << 32), ("run_as_user", -1)] {
            let sc = cri::LinuxContainerSecurityContext {
                run_as_user: Some(cri::Int64Value { value }),
                ..Default::default()
            };
            assert_eq!(
                resolve_user(&sc, "root", &layers),
                Err(SpecError::BadId { field, value })
            );
        }
        let sc = cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 33 }),
            run_as_group: Some(cri::Int64Value { value: 1 << 32 }),
            ..Default::default()
        };
        let err = resolve_user(&sc, "root", &layers).unwrap_err();
        assert_eq!(
            err.to_string(),
            "run_as_group 4294967296 is not a valid id (0 to 4294967295)"
        );
    }

    #[test]
    fn spec_carries_mounts_limits_and_resources() {
        let img = image(&[], &["sh"]);
        let mut cfg = config(&[], &[]);
        cfg.linux = Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                cpu_quota: 50_000,
                cpu_period: 100_000,
                memory_limit_in_bytes: 64 << 20,
                ..Default::default()
            }),
            security_context: None,
        });
        let mounts = [GuestMount {
            guest_path: "/run/podvisor/share/mounts/c/0".into(),
            container_path: "/data".into(),
            readonly: true,
            propagation: 0,
        }];
        let spec = build(&SpecInput {
            config: &cfg,
            image_name: "busybox",
            image: &img,
            layers: &[],
            hostname: "pod",
            mounts: &mounts,
            limits: &LimitsConfig::default(),
            sandbox: None,
        })
        .unwrap();
        assert_eq!(spec["process"]["args"], json!(["sh"]));
        assert_eq!(spec["process"]["rlimits"][0]["hard"], json!(65535));
        assert_eq!(spec["linux"]["resources"]["cpu"]["quota"], json!(50_000));
        assert_eq!(
            spec["linux"]["resources"]["memory"]["limit"],
            json!(64 << 20)
        );
        let data = spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/data")
            .unwrap();
        assert_eq!(data["options"], json!(["rbind", "ro", "rprivate"]));
        assert!(spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["destination"] == "/proc"));
        // The agent's OCI parser takes what we build.
        let _: oci_spec::runtime::Spec = serde_json::from_value(spec).unwrap();
    }

    #[test]
    fn relative_paths_are_refused() {
        let img = image(&[], &["sh"]);
        let mut cfg = config(&[], &[]);
        cfg.working_dir = "app".into();
        let input = SpecInput {
            config: &cfg,
            image_name: "img",
            image: &img,
            layers: &[],
            hostname: "",
            mounts: &[],
            limits: &LimitsConfig::default(),
            sandbox: None,
        };
        assert_eq!(
            build(&input),
            Err(SpecError::RelativeWorkingDir("app".into()))
        );
    }

    fn spec_for(
        config: &cri::ContainerConfig,
        sandbox: Option<&cri::PodSandboxConfig>,
    ) -> Result<Value, SpecError> {
        build(&SpecInput {
            config,
            image_name: "img",
            image: &image(&[], &["sh"]),
            layers: &[],
            hostname: "",
            mounts: &[],
            limits: &LimitsConfig::default(),
            sandbox,
        })
    }

    fn with_security(sc: cri::LinuxContainerSecurityContext) -> cri::ContainerConfig {
        let mut cfg = config(&[], &[]);
        cfg.linux = Some(cri::LinuxContainerConfig {
            resources: None,
            security_context: Some(sc),
        });
        cfg
    }

    fn sandbox_with(sc: cri::LinuxSandboxSecurityContext) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(sc),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn namespace_types(spec: &Value) -> Vec<String> {
        spec["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn run_as_group_needs_a_user() {
        let group = Some(cri::Int64Value { value: 1002 });
        let err = spec_for(
            &with_security(cri::LinuxContainerSecurityContext {
                run_as_group: group,
                ..Default::default()
            }),
            None,
        )
        .unwrap_err();
        assert_eq!(
            err,
            SpecError::RunAsGroupWithoutUser("the container's security context")
        );
        assert!(err.to_string().contains("run_as_group without run_as_user"));
        for user in [
            cri::LinuxContainerSecurityContext {
                run_as_group: group,
                run_as_user: Some(cri::Int64Value { value: 1000 }),
                ..Default::default()
            },
            cri::LinuxContainerSecurityContext {
                run_as_group: group,
                run_as_username: "root".into(),
                ..Default::default()
            },
        ] {
            // A user name not in the (empty) image fails later, for that reason.
            let result = spec_for(&with_security(user), None);
            assert!(
                !matches!(result, Err(SpecError::RunAsGroupWithoutUser(_))),
                "{result:?}"
            );
        }
        let pod = sandbox_with(cri::LinuxSandboxSecurityContext {
            run_as_group: group,
            ..Default::default()
        });
        assert_eq!(
            spec_for(&config(&[], &[]), Some(&pod)).unwrap_err(),
            SpecError::RunAsGroupWithoutUser("the pod sandbox's security context")
        );
    }

    #[test]
    fn ipc_is_the_pods_unless_the_container_asks_for_its_own() {
        let spec = spec_for(&config(&[], &[]), None).unwrap();
        assert_eq!(namespace_types(&spec), ["pid", "uts", "mount", "cgroup"]);
        let own = with_security(cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                ipc: cri::NamespaceMode::Container as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
        let spec = spec_for(&own, None).unwrap();
        assert!(namespace_types(&spec).contains(&"ipc".to_string()));
    }

    #[test]
    fn pid_mode_follows_the_container_then_the_pod() {
        let ns = |pid: cri::NamespaceMode, target: &str| cri::NamespaceOption {
            pid: pid as i32,
            target_id: target.into(),
            ..Default::default()
        };
        assert_eq!(pid_mode(&config(&[], &[]), None).unwrap(), PidMode::Pod);
        let pod = sandbox_with(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(ns(cri::NamespaceMode::Container, "")),
            ..Default::default()
        });
        assert_eq!(
            pid_mode(&config(&[], &[]), Some(&pod)).unwrap(),
            PidMode::Container
        );
        let target = with_security(cri::LinuxContainerSecurityContext {
            namespace_options: Some(ns(cri::NamespaceMode::Target, "abc")),
            ..Default::default()
        });
        assert_eq!(
            pid_mode(&target, Some(&pod)).unwrap(),
            PidMode::Target("abc".into())
        );
        let no_target = with_security(cri::LinuxContainerSecurityContext {
            namespace_options: Some(ns(cri::NamespaceMode::Target, "")),
            ..Default::default()
        });
        assert_eq!(pid_mode(&no_target, None), Err(SpecError::NoTarget));
    }

    #[test]
    fn seccomp_profiles_reach_the_spec() {
        let unconfined = spec_for(&config(&[], &[]), None).unwrap();
        assert!(unconfined["linux"].get("seccomp").is_none());
        let default = with_security(cri::LinuxContainerSecurityContext {
            seccomp: Some(cri::SecurityProfile::default()),
            ..Default::default()
        });
        let spec = spec_for(&default, None).unwrap();
        assert_eq!(spec["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        let _: oci_spec::runtime::Spec = serde_json::from_value(spec).unwrap();
        let missing = with_security(cri::LinuxContainerSecurityContext {
            seccomp: Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::Localhost as i32,
                localhost_ref: "/nonexistent/profile.json".into(),
            }),
            ..Default::default()
        });
        let err = spec_for(&missing, None).unwrap_err();
        assert!(
            matches!(err, SpecError::Seccomp(SeccompError::Unreadable { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("/nonexistent/profile.json"));
    }

    #[test]
    fn a_privileged_container_is_privileged_and_unconfined_inside_the_guest() {
        let spec = spec_for(
            &with_security(cri::LinuxContainerSecurityContext {
                privileged: true,
                seccomp: Some(cri::SecurityProfile {
                    profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                    localhost_ref: String::new(),
                }),
                ..Default::default()
            }),
            None,
        )
        .unwrap();
        let caps = spec["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap();
        assert_eq!(caps.len(), ALL_CAPABILITIES.len());
        assert!(caps.contains(&json!("CAP_SYS_ADMIN")));
        assert!(
            spec["linux"].get("seccomp").is_none(),
            "privileged is unconfined"
        );
        assert_eq!(spec["linux"]["maskedPaths"], json!([]));
        assert_eq!(spec["linux"]["readonlyPaths"], json!([]));
        assert_eq!(
            spec["linux"]["resources"]["devices"],
            json!([{ "allow": true, "access": "rwm" }])
        );
        assert_eq!(spec["annotations"][PRIVILEGED_ANNOTATION], json!("true"));
        let sys = spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/sys")
            .unwrap();
        assert!(sys["options"].as_array().unwrap().contains(&json!("rw")));
    }

    #[test]
    fn an_ordinary_container_keeps_the_defaults() {
        let spec = spec_for(
            &with_security(cri::LinuxContainerSecurityContext::default()),
            None,
        )
        .unwrap();
        let caps = spec["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap();
        assert_eq!(caps.len(), DEFAULT_CAPABILITIES.len());
        assert!(!caps.contains(&json!("CAP_SYS_ADMIN")));
        assert!(spec["linux"].get("maskedPaths").is_none(), "agent defaults");
        assert!(spec["linux"]["resources"].get("devices").is_none());
        assert!(spec.get("annotations").is_none());
        assert!(spec.get("mounts").is_none(), "agent defaults");
    }

    #[test]
    fn the_image_groups_of_the_user_come_before_the_requested_ones() {
        let passwd = "root:x:0:0::/root:/bin/sh\ndefault-user:x:1000:1000::/home:/bin/sh\n";
        let group = "root:x:0:\nusers:x:100:other\ngroup-defined-in-image:x:50000:default-user\nwheel:x:10:root, default-user\n";
        assert_eq!(image_groups_of(1000, passwd, group), vec![50000, 10]);
        assert_eq!(image_groups_of(0, passwd, group), vec![10]);
        assert!(
            image_groups_of(4242, passwd, group).is_empty(),
            "no such user"
        );
    }
}
