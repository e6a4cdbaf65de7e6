//! Turns the runtime's OCI spec into the one the agent runs: the rootfs it
//! mounted, the pod's shared files, and the defaults a pod expects where the
//! spec leaves a field out (rlimits, capabilities, namespaces, mounts).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    get_default_maskedpaths, get_default_mounts, get_default_readonly_paths, Capability,
    LinuxCapabilities, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxSeccomp,
    LinuxSeccompArgBuilder, LinuxSeccompOperator, Mount, MountBuilder, PosixRlimit,
    PosixRlimitBuilder, PosixRlimitType, Process, RootBuilder, Spec,
};

use crate::error::{AgentError, Result};

/// Soft and hard RLIMIT_NOFILE / RLIMIT_NPROC of every process the agent
/// starts, unless the spec says otherwise (Fargate's values).
pub const DEFAULT_RLIMIT_SOFT: u64 = 1024;
pub const DEFAULT_RLIMIT_HARD: u64 = 65535;

/// containerd's default capability set for unprivileged containers.
pub const DEFAULT_CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Files the agent writes at sandbox setup and bind-mounts into every
/// container that does not mount the same target itself.
#[derive(Clone, Debug, Default)]
pub struct SandboxFiles {
    pub hosts: Option<PathBuf>,
    pub resolv_conf: Option<PathBuf>,
    pub hostname: Option<PathBuf>,
}

/// Hard limits the agent cannot raise (it lacks CAP_SYS_RESOURCE): requested
/// hard limits above them are lowered to them, with a warning, because the
/// kernel would refuse the whole container otherwise.
#[derive(Clone, Copy, Debug, Default)]
pub struct RlimitCeiling {
    pub nofile: Option<u64>,
    pub nproc: Option<u64>,
}

pub struct SpecContext<'a> {
    pub container_id: &'a str,
    pub rootfs: &'a Path,
    pub cgroups_parent: &'a str,
    pub sandbox_files: &'a SandboxFiles,
    pub tty: bool,
    pub ceiling: RlimitCeiling,
    /// The guest's /dev, for privileged containers (None: refuse them).
    pub devices: Option<&'a Path>,
    /// A PID namespace to join instead of a new one (the pod's, or a
    /// target container's).
    pub pid_namespace: Option<&'a Path>,
}

pub fn parse_spec(json: &[u8]) -> Result<Spec> {
    if json.is_empty() {
        return Err(AgentError::MalformedSpec("oci_spec_json is empty".into()));
    }
    serde_json::from_slice(json).map_err(|e| AgentError::MalformedSpec(e.to_string()))
}

pub fn parse_process(json: &[u8]) -> Result<Process> {
    if json.is_empty() {
        return Err(AgentError::MalformedSpec(
            "oci_process_json is empty".into(),
        ));
    }
    serde_json::from_slice(json).map_err(|e| AgentError::MalformedSpec(e.to_string()))
}

/// Adjusts a container's spec in place.
pub fn prepare_spec(spec: &mut Spec, ctx: &SpecContext<'_>) -> Result<()> {
    if !spec.version().starts_with("1.") {
        return Err(AgentError::MalformedSpec(format!(
            "ociVersion {:?} is not 1.x",
            spec.version()
        )));
    }
    let mut process = spec
        .process()
        .clone()
        .ok_or_else(|| AgentError::MalformedSpec("the spec has no process".into()))?;
    validate_process(&process)?;
    process.set_terminal(Some(ctx.tty));
    fill_process_defaults(&mut process, ctx.ceiling);
    spec.set_process(Some(process));

    let readonly = spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false);
    spec.set_root(Some(
        RootBuilder::default()
            .path(ctx.rootfs)
            .readonly(readonly)
            .build()
            .map_err(|e| AgentError::MalformedSpec(e.to_string()))?,
    ));

    let mut mounts = spec.mounts().clone().unwrap_or_else(get_default_mounts);
    add_sandbox_mounts(&mut mounts, ctx.sandbox_files);
    spec.set_mounts(Some(mounts));

    let mut linux = spec.linux().clone().unwrap_or_default();
    let namespaces = linux
        .namespaces()
        .clone()
        .unwrap_or_else(default_namespaces);
    // The pod's network is the VM's: containers never get a network
    // namespace of their own, or they would have no interface at all.
    let mut namespaces: Vec<LinuxNamespace> = namespaces
        .into_iter()
        .filter(|ns| ns.typ() != LinuxNamespaceType::Network)
        .filter(|ns| ctx.pid_namespace.is_none() || ns.typ() != LinuxNamespaceType::Pid)
        .collect();
    if let Some(path) = ctx.pid_namespace {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Pid)
                .path(path)
                .build()
                .map_err(|e| AgentError::MalformedSpec(e.to_string()))?,
        );
    }
    linux.set_namespaces(Some(namespaces));
    if linux.cgroups_path().is_none() {
        linux.set_cgroups_path(Some(PathBuf::from(format!(
            "{}/{}",
            ctx.cgroups_parent, ctx.container_id
        ))));
    }
    if linux.masked_paths().is_none() {
        linux.set_masked_paths(Some(get_default_maskedpaths()));
    }
    if linux.readonly_paths().is_none() {
        linux.set_readonly_paths(Some(get_default_readonly_paths()));
    }
    if is_privileged(spec) {
        let root = ctx.devices.ok_or_else(|| {
            AgentError::FailedPrecondition(
                "a privileged container gets the VM's devices, so it runs only inside a pod VM, not in host test mode".into(),
            )
        })?;
        let mut devices = linux.devices().clone().unwrap_or_default();
        devices.extend(guest_devices(root)?);
        linux.set_devices(Some(devices));
    }
    let filtered = linux.seccomp().is_some();
    if let Some(mut seccomp) = linux.seccomp().clone() {
        masked_eq_for_libcontainer(&mut seccomp);
        linux.set_seccomp(Some(seccomp));
    }
    spec.set_linux(Some(linux));
    if filtered {
        allow_early_seccomp(spec);
    }
    Ok(())
}

fn device_number(n: u64) -> Result<i64> {
    i64::try_from(n)
        .map_err(|_| AgentError::MalformedSpec(format!("device number {n} out of range")))
}

fn is_privileged(spec: &Spec) -> bool {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(podvisor_proto::PRIVILEGED_ANNOTATION))
        .is_some_and(|v| v == "true")
}

/// Directories under /dev that are mounted anew in every container.
const PER_CONTAINER_DEV_DIRS: &[&str] = &["pts", "shm", "mqueue"];
/// Device names that are the agent's own channel to the runtime; no
/// container, however privileged, gets them.
const AGENT_CHANNEL_DEVICES: &[&str] = &["vsock", "vhost-vsock", "virtio-ports", "hvc0"];
/// Bounds the walk of a /dev that something in the guest may have filled.
const MAX_DEVICES: usize = 4096;

/// Every character and block device under `root`, as OCI devices at the
/// same paths, for a privileged container.
fn guest_devices(root: &Path) -> Result<Vec<oci_spec::runtime::LinuxDevice>> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| AgentError::io(format!("listing {}", dir.display()), e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let kind = meta.file_type();
            if kind.is_dir() {
                let per_container = dir == root && PER_CONTAINER_DEV_DIRS.contains(&name.as_str());
                if !(per_container || AGENT_CHANNEL_DEVICES.contains(&name.as_str())) {
                    dirs.push(path);
                }
                continue;
            }
            let typ = if kind.is_char_device() {
                oci_spec::runtime::LinuxDeviceType::C
            } else if kind.is_block_device() {
                oci_spec::runtime::LinuxDeviceType::B
            } else {
                continue;
            };
            if AGENT_CHANNEL_DEVICES.contains(&name.as_str()) || name.starts_with("vport") {
                continue;
            }
            if out.len() == MAX_DEVICES {
                return Err(AgentError::FailedPrecondition(format!(
                    "the guest's {} holds more than {MAX_DEVICES} devices",
                    root.display()
                )));
            }
            let rdev = meta.rdev();
            let device = oci_spec::runtime::LinuxDeviceBuilder::default()
                .path(Path::new("/dev").join(path.strip_prefix(root).unwrap_or(&path)))
                .typ(typ)
                .major(device_number(nix::sys::stat::major(rdev))?)
                .minor(device_number(nix::sys::stat::minor(rdev))?)
                .file_mode(meta.mode() & 0o7777)
                .uid(meta.uid())
                .gid(meta.gid())
                .build()
                .map_err(|e| AgentError::MalformedSpec(e.to_string()))?;
            out.push(device);
        }
    }
    out.sort_by(|a, b| a.path().cmp(b.path()));
    Ok(out)
}

/// The OCI runtime spec (and runc) read SCMP_CMP_MASKED_EQ as
/// `(arg & value) == valueTwo`; libcontainer takes `valueTwo` as the mask
/// and `value` as the datum. Swap them so a profile means what it says.
fn masked_eq_for_libcontainer(seccomp: &mut LinuxSeccomp) {
    let Some(mut syscalls) = seccomp.syscalls().clone() else {
        return;
    };
    for syscall in &mut syscalls {
        let Some(mut args) = syscall.args().clone() else {
            continue;
        };
        for arg in &mut args {
            if arg.op() == LinuxSeccompOperator::ScmpCmpMaskedEq {
                let (mask, datum) = (arg.value(), arg.value_two().unwrap_or(0));
                *arg = LinuxSeccompArgBuilder::default()
                    .index(arg.index())
                    .value(datum)
                    .value_two(mask)
                    .op(arg.op())
                    .build()
                    .expect("every field is set");
            }
        }
        syscall.set_args(Some(args));
    }
    seccomp.set_syscalls(Some(syscalls));
}

/// Without no_new_privs a process needs CAP_SYS_ADMIN to load a seccomp
/// filter, so libcontainer must load it before it drops capabilities; it
/// does that only when `noNewPrivileges` is absent, and treats an explicit
/// `false` like `true` there (and fails). Absent and `false` mean the same
/// to the kernel, so say absent.
fn allow_early_seccomp(spec: &mut Spec) {
    if let Some(mut process) = spec.process().clone() {
        if process.no_new_privileges() == Some(false) {
            process.set_no_new_privileges(None);
            spec.set_process(Some(process));
        }
    }
}

/// Adjusts the process of an exec in place; missing fields are inherited
/// from the container's own process.
pub fn prepare_exec_process(
    process: &mut Process,
    container: &Process,
    tty: bool,
    ceiling: RlimitCeiling,
) -> Result<()> {
    validate_process(process)?;
    process.set_terminal(Some(tty));
    if process.env().is_none() {
        process.set_env(container.env().clone());
    }
    if process.capabilities().is_none() {
        process.set_capabilities(container.capabilities().clone());
    }
    if process.no_new_privileges().is_none() {
        process.set_no_new_privileges(container.no_new_privileges());
    }
    if process.rlimits().is_none() {
        process.set_rlimits(container.rlimits().clone());
    }
    fill_process_defaults(process, ceiling);
    Ok(())
}

/// libcontainer reports a missing working directory only as a failed
/// syscall, so check it first, resolving symlinks inside the rootfs. A cwd
/// under a mount of the spec is left to the mount (it may create it).
pub fn check_cwd(cwd: &Path, mounts: &[Mount], rootfs: &Path) -> Result<()> {
    if mounts.iter().any(|m| cwd.starts_with(m.destination())) && cwd != Path::new("/") {
        return Ok(());
    }
    let missing = || {
        AgentError::InvalidArgument(format!(
            "working directory {} does not exist in the container's rootfs",
            cwd.display()
        ))
    };
    let resolved = safe_path::scoped_join(rootfs, cwd).map_err(|_| missing())?;
    if resolved.is_dir() {
        Ok(())
    } else {
        Err(missing())
    }
}

fn validate_process(process: &Process) -> Result<()> {
    let args = process.args().as_deref().unwrap_or_default();
    if args.is_empty() || args[0].is_empty() {
        return Err(AgentError::InvalidArgument(
            "process.args is empty: nothing to run".into(),
        ));
    }
    if !process.cwd().is_absolute() {
        return Err(AgentError::InvalidArgument(format!(
            "process.cwd {:?} is not an absolute path",
            process.cwd()
        )));
    }
    Ok(())
}

fn fill_process_defaults(process: &mut Process, c: RlimitCeiling) {
    let mut rlimits = process.rlimits().clone().unwrap_or_default();
    for (typ, ceiling) in [
        (PosixRlimitType::RlimitNofile, c.nofile),
        (PosixRlimitType::RlimitNproc, c.nproc),
    ] {
        if !rlimits.iter().any(|r| r.typ() == typ) {
            rlimits.push(rlimit(typ, DEFAULT_RLIMIT_SOFT, DEFAULT_RLIMIT_HARD));
        }
        if let Some(ceiling) = ceiling {
            clamp_rlimit(&mut rlimits, typ, ceiling);
        }
    }
    process.set_rlimits(Some(rlimits));
    if process.capabilities().is_none() {
        let set: HashSet<Capability> = DEFAULT_CAPABILITIES.iter().copied().collect();
        let mut caps = LinuxCapabilities::default();
        caps.set_bounding(Some(set.clone()))
            .set_effective(Some(set.clone()))
            .set_permitted(Some(set))
            .set_inheritable(None)
            .set_ambient(None);
        process.set_capabilities(Some(caps));
    }
    if process.no_new_privileges().is_none() {
        process.set_no_new_privileges(Some(true));
    }
}

fn rlimit(typ: PosixRlimitType, soft: u64, hard: u64) -> PosixRlimit {
    PosixRlimitBuilder::default()
        .typ(typ)
        .soft(soft)
        .hard(hard)
        .build()
        .expect("all rlimit fields are set")
}

fn clamp_rlimit(rlimits: &mut [PosixRlimit], typ: PosixRlimitType, ceiling: u64) {
    for r in rlimits.iter_mut().filter(|r| r.typ() == typ) {
        if r.hard() > ceiling {
            tracing::warn!(
                ?typ,
                requested = r.hard(),
                ceiling,
                "cannot raise this hard limit without CAP_SYS_RESOURCE; lowering it"
            );
            let soft = r.soft().min(ceiling);
            *r = rlimit(typ, soft, ceiling);
        }
    }
}

fn default_namespaces() -> Vec<LinuxNamespace> {
    [
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Ipc,
        // Its own cgroup root: /sys/fs/cgroup shows the container's limits.
        LinuxNamespaceType::Cgroup,
    ]
    .into_iter()
    .map(|typ| {
        LinuxNamespaceBuilder::default()
            .typ(typ)
            .build()
            .expect("namespace type is set")
    })
    .collect()
}

fn add_sandbox_mounts(mounts: &mut Vec<Mount>, files: &SandboxFiles) {
    for (source, target) in [
        (&files.hosts, "/etc/hosts"),
        (&files.resolv_conf, "/etc/resolv.conf"),
        (&files.hostname, "/etc/hostname"),
    ] {
        let Some(source) = source else { continue };
        if mounts.iter().any(|m| m.destination() == Path::new(target)) {
            continue;
        }
        mounts.push(
            MountBuilder::default()
                .destination(target)
                .typ("bind")
                .source(source)
                .options(vec!["rbind".to_string(), "rprivate".to_string()])
                .build()
                .expect("mount fields are set"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx<'a>(files: &'a SandboxFiles, ceiling: RlimitCeiling) -> SpecContext<'a> {
        SpecContext {
            container_id: "c1",
            rootfs: Path::new("/run/c1/rootfs"),
            cgroups_parent: "/podvisor",
            sandbox_files: files,
            tty: false,
            ceiling,
            devices: None,
            pid_namespace: None,
        }
    }

    fn minimal_spec() -> Spec {
        parse_spec(br#"{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}}}"#)
            .unwrap()
    }

    fn limit(p: &Process, typ: PosixRlimitType) -> (u64, u64) {
        let r = p
            .rlimits()
            .as_ref()
            .unwrap()
            .iter()
            .find(|r| r.typ() == typ)
            .unwrap();
        (r.soft(), r.hard())
    }

    #[test]
    fn fills_fargate_rlimits_caps_namespaces_and_cgroup() {
        let mut spec = minimal_spec();
        prepare_spec(
            &mut spec,
            &ctx(&SandboxFiles::default(), RlimitCeiling::default()),
        )
        .unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(limit(p, PosixRlimitType::RlimitNofile), (1024, 65535));
        assert_eq!(limit(p, PosixRlimitType::RlimitNproc), (1024, 65535));
        let caps = p
            .capabilities()
            .as_ref()
            .unwrap()
            .bounding()
            .clone()
            .unwrap();
        assert!(caps.contains(&Capability::Chown) && !caps.contains(&Capability::SysAdmin));
        let linux = spec.linux().as_ref().unwrap();
        let ns: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        assert!(
            ns.contains(&LinuxNamespaceType::Pid) && !ns.contains(&LinuxNamespaceType::Network)
        );
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/podvisor/c1"))
        );
        assert_eq!(
            spec.root().as_ref().unwrap().path(),
            Path::new("/run/c1/rootfs")
        );
    }

    #[test]
    fn keeps_rlimits_the_spec_sets_and_clamps_to_the_ceiling() {
        let mut spec = parse_spec(
            br#"{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0},
                "rlimits":[{"type":"RLIMIT_NOFILE","soft":4096,"hard":8192}]}}"#,
        )
        .unwrap();
        let ceiling = RlimitCeiling {
            nofile: Some(2048),
            nproc: None,
        };
        prepare_spec(&mut spec, &ctx(&SandboxFiles::default(), ceiling)).unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(limit(p, PosixRlimitType::RlimitNofile), (2048, 2048));
        assert_eq!(limit(p, PosixRlimitType::RlimitNproc), (1024, 65535));
    }

    #[test]
    fn drops_network_namespace_and_adds_sandbox_files() {
        let mut spec = parse_spec(
            br#"{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}},
                "linux":{"namespaces":[{"type":"network"},{"type":"mount"}]},
                "mounts":[{"destination":"/etc/hostname","type":"bind","source":"/x"}]}"#,
        )
        .unwrap();
        let files = SandboxFiles {
            hosts: Some("/run/sandbox/hosts".into()),
            resolv_conf: None,
            hostname: Some("/run/sandbox/hostname".into()),
        };
        prepare_spec(&mut spec, &ctx(&files, RlimitCeiling::default())).unwrap();
        let ns = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert_eq!(ns.len(), 1);
        let mounts = spec.mounts().as_ref().unwrap();
        let hosts: Vec<_> = mounts
            .iter()
            .filter(|m| m.destination() == Path::new("/etc/hosts"))
            .collect();
        assert_eq!(hosts.len(), 1);
        let hostname: Vec<_> = mounts
            .iter()
            .filter(|m| m.destination() == Path::new("/etc/hostname"))
            .collect();
        assert_eq!(
            hostname[0].source().as_deref(),
            Some(Path::new("/x")),
            "the spec's own mount wins"
        );
    }

    #[test]
    fn joins_a_given_pid_namespace_instead_of_a_new_one() {
        let mut spec = minimal_spec();
        let files = SandboxFiles::default();
        let mut c = ctx(&files, RlimitCeiling::default());
        c.pid_namespace = Some(Path::new("/proc/42/ns/pid"));
        prepare_spec(&mut spec, &c).unwrap();
        let ns = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        let pid: Vec<_> = ns
            .iter()
            .filter(|n| n.typ() == LinuxNamespaceType::Pid)
            .collect();
        assert_eq!(pid.len(), 1);
        assert_eq!(pid[0].path().as_deref(), Some(Path::new("/proc/42/ns/pid")));
        assert!(ns.iter().any(|n| n.typ() == LinuxNamespaceType::Ipc));
    }

    #[test]
    fn a_filtered_process_without_no_new_privs_loads_seccomp_early() {
        let json = |nnp: bool, seccomp: bool| {
            format!(
                r#"{{"ociVersion":"1.0.2","process":{{"args":["sh"],"cwd":"/","user":{{"uid":0,"gid":0}},"noNewPrivileges":{nnp}}}{}}}"#,
                if seccomp {
                    r#","linux":{"seccomp":{"defaultAction":"SCMP_ACT_ALLOW"}}"#
                } else {
                    ""
                }
            )
        };
        let files = SandboxFiles::default();
        let nnp = |nnp: bool, seccomp: bool| {
            let mut spec = parse_spec(json(nnp, seccomp).as_bytes()).unwrap();
            prepare_spec(&mut spec, &ctx(&files, RlimitCeiling::default())).unwrap();
            spec.process().as_ref().unwrap().no_new_privileges()
        };
        assert_eq!(nnp(false, true), None);
        let mut spec = parse_spec(
            br#"{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}},
                "linux":{"seccomp":{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["clone"],
                "action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":268435456,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}]}]}}}"#,
        )
        .unwrap();
        prepare_spec(&mut spec, &ctx(&files, RlimitCeiling::default())).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let arg = linux
            .seccomp()
            .as_ref()
            .unwrap()
            .syscalls()
            .as_ref()
            .unwrap()[0]
            .args()
            .as_ref()
            .unwrap()[0];
        assert_eq!(
            (arg.value(), arg.value_two()),
            (0, Some(268435456)),
            "mask in valueTwo for libcontainer"
        );
        assert_eq!(nnp(true, true), Some(true));
        assert_eq!(nnp(false, false), Some(false));
    }

    #[test]
    fn rejects_specs_without_a_runnable_process() {
        let files = SandboxFiles::default();
        let malformed = |e: &AgentError| matches!(e, AgentError::MalformedSpec(_));
        let invalid = |e: &AgentError| matches!(e, AgentError::InvalidArgument(_));
        type IsKind = fn(&AgentError) -> bool;
        let cases: [(&[u8], IsKind, &str); 4] = [
            (
                br#"{"ociVersion":"1.0.2"}"#,
                malformed,
                "the spec has no process",
            ),
            (
                br#"{"ociVersion":"1.0.2","process":{"args":[],"cwd":"/","user":{"uid":0,"gid":0}}}"#,
                invalid,
                "process.args is empty",
            ),
            (
                br#"{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"tmp","user":{"uid":0,"gid":0}}}"#,
                invalid,
                "process.cwd \"tmp\" is not an absolute path",
            ),
            (
                br#"{"ociVersion":"0.9","process":{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}}}"#,
                malformed,
                "ociVersion \"0.9\" is not 1.x",
            ),
        ];
        for (json, kind, why) in cases {
            let mut spec = parse_spec(json).unwrap();
            let err = prepare_spec(&mut spec, &ctx(&files, RlimitCeiling::default())).unwrap_err();
            assert!(kind(&err) && err.to_string().contains(why), "{err:?}");
        }
        assert!(matches!(
            parse_spec(b"{not json"),
            Err(AgentError::MalformedSpec(_))
        ));
    }

    #[test]
    fn exec_inherits_the_containers_env_and_limits() {
        let mut spec = minimal_spec();
        prepare_spec(
            &mut spec,
            &ctx(&SandboxFiles::default(), RlimitCeiling::default()),
        )
        .unwrap();
        let container = spec.process().clone().unwrap();
        let mut exec =
            parse_process(br#"{"args":["ps"],"cwd":"/","user":{"uid":0,"gid":0}}"#).unwrap();
        prepare_exec_process(&mut exec, &container, true, RlimitCeiling::default()).unwrap();
        assert_eq!(limit(&exec, PosixRlimitType::RlimitNofile), (1024, 65535));
        assert_eq!(exec.terminal(), Some(true));
        assert_eq!(exec.env(), container.env());
    }

    #[test]
    fn privileged_containers_get_the_guests_devices_but_not_the_agents_channel() {
        use nix::sys::stat::{makedev, mknod, Mode, SFlag};
        if !podvisor_test_skip::require_root(
            "privileged_containers_get_the_guests_devices_but_not_the_agents_channel",
        ) {
            return;
        }
        let dev = tempfile::tempdir().unwrap();
        let node = |rel: &str, major: u64, minor: u64| {
            let path = dev.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            mknod(
                &path,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o600),
                makedev(major, minor),
            )
            .unwrap();
            // Not through mknod's mode, which the umask trims.
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o620))
                .unwrap();
        };
        node("null", 1, 3);
        node("net/tun", 10, 200);
        node("pts/0", 136, 0);
        node("vport1p1", 245, 1);
        node("vsock", 10, 121);
        std::fs::write(dev.path().join("notes"), "not a device").unwrap();
        std::fs::create_dir(dev.path().join("block")).unwrap();
        mknod(
            &dev.path().join("block/vda"),
            SFlag::S_IFBLK,
            Mode::from_bits_truncate(0o660),
            makedev(254, 0),
        )
        .unwrap();

        let mut spec = minimal_spec();
        let annotations = [(
            podvisor_proto::PRIVILEGED_ANNOTATION.to_string(),
            "true".to_string(),
        )];
        spec.set_annotations(Some(annotations.into_iter().collect()));
        let files = SandboxFiles::default();
        let mut refused = spec.clone();
        let err = prepare_spec(&mut refused, &ctx(&files, RlimitCeiling::default())).unwrap_err();
        assert!(matches!(err, AgentError::FailedPrecondition(_)), "{err}");

        let context = SpecContext {
            devices: Some(dev.path()),
            ..ctx(&files, RlimitCeiling::default())
        };
        prepare_spec(&mut spec, &context).unwrap();
        let devices = spec.linux().as_ref().unwrap().devices().clone().unwrap();
        let listed: Vec<(String, i64, i64)> = devices
            .iter()
            .map(|d| (d.path().display().to_string(), d.major(), d.minor()))
            .collect();
        assert_eq!(
            listed,
            vec![
                ("/dev/block/vda".to_string(), 254, 0),
                ("/dev/net/tun".to_string(), 10, 200),
                ("/dev/null".to_string(), 1, 3),
            ]
        );
        assert_eq!(devices[2].file_mode(), Some(0o620));

        let mut plain = minimal_spec();
        prepare_spec(&mut plain, &context).unwrap();
        assert!(plain.linux().as_ref().unwrap().devices().is_none());
    }
}
