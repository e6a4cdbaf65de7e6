//! Seccomp profiles: which one a container gets (CRI `SecurityProfile`, or
//! the deprecated `seccomp_profile_path`), podvisor's own RuntimeDefault
//! profile, and Localhost profiles read from the host, all as the OCI
//! `linux.seccomp` object the agent loads in the guest (for the container's
//! process and every exec).

use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SeccompError {
    #[error("seccomp profile {0:?} is not a known profile (runtime/default, unconfined, localhost/<absolute path>)")]
    UnknownProfile(String),
    #[error("seccomp profile type {0} is not RuntimeDefault, Unconfined or Localhost")]
    UnknownType(i32),
    #[error("Localhost seccomp profile {0:?} is not an absolute path on the node")]
    RelativePath(String),
    #[error("Localhost seccomp profile {path}: cannot read it: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("Localhost seccomp profile {path}: not a valid seccomp profile: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

type Result<T> = std::result::Result<T, SeccompError>;

/// Which profile applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Profile {
    Unconfined,
    RuntimeDefault,
    Localhost(PathBuf),
}

/// The container's own profile if it names one, else the pod's; none at
/// all is unconfined (the CRI's rule for an absent profile).
pub fn choose(
    container: &cri::LinuxContainerSecurityContext,
    sandbox: Option<&cri::LinuxSandboxSecurityContext>,
) -> Result<Profile> {
    #[allow(deprecated)]
    let own = (
        container.seccomp.as_ref(),
        container.seccomp_profile_path.as_str(),
    );
    if let Some(p) = from_fields(own.0, own.1)? {
        return Ok(p);
    }
    Ok(sandbox_profile(sandbox)?.unwrap_or(Profile::Unconfined))
}

/// The pod-level profile, if the sandbox names one.
pub fn sandbox_profile(
    sandbox: Option<&cri::LinuxSandboxSecurityContext>,
) -> Result<Option<Profile>> {
    let Some(sandbox) = sandbox else {
        return Ok(None);
    };
    #[allow(deprecated)]
    from_fields(
        sandbox.seccomp.as_ref(),
        sandbox.seccomp_profile_path.as_str(),
    )
}

fn from_fields(profile: Option<&cri::SecurityProfile>, path: &str) -> Result<Option<Profile>> {
    use cri::security_profile::ProfileType;
    if let Some(p) = profile {
        return match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::RuntimeDefault) => Ok(Some(Profile::RuntimeDefault)),
            Ok(ProfileType::Unconfined) => Ok(Some(Profile::Unconfined)),
            Ok(ProfileType::Localhost) => localhost(&p.localhost_ref).map(Some),
            Err(_) => Err(SeccompError::UnknownType(p.profile_type)),
        };
    }
    match path {
        "" => Ok(None),
        "unconfined" => Ok(Some(Profile::Unconfined)),
        "runtime/default" | "docker/default" => Ok(Some(Profile::RuntimeDefault)),
        other => match other.strip_prefix("localhost/") {
            Some(rest) => localhost(rest).map(Some),
            None => Err(SeccompError::UnknownProfile(other.to_string())),
        },
    }
}

fn localhost(path: &str) -> Result<Profile> {
    if !path.starts_with('/') {
        return Err(SeccompError::RelativePath(path.to_string()));
    }
    Ok(Profile::Localhost(PathBuf::from(path)))
}

/// The OCI `linux.seccomp` for a profile and the container's capabilities
/// (rules of the default profile and Docker-style `includes`/`excludes`
/// depend on them); `None` when unconfined.
pub fn oci(profile: &Profile, caps: &[String]) -> Result<Option<Value>> {
    match profile {
        Profile::Unconfined => Ok(None),
        Profile::RuntimeDefault => Ok(Some(runtime_default(caps))),
        Profile::Localhost(path) => load_localhost(path, caps).map(Some),
    }
}

/// Profiles are a few KiB; Docker's default is about 20.
const MAX_PROFILE_BYTES: u64 = 1 << 20;

/// The profile's text. The path is the client's, read as root: a FIFO or a
/// device (`/dev/zero`) would hang the daemon or fill its memory, so only
/// a regular file of bounded size is read.
fn read_profile(path: &Path) -> std::result::Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("it is not a regular file".into());
    }
    if meta.len() > MAX_PROFILE_BYTES {
        return Err(format!("it is larger than {MAX_PROFILE_BYTES} bytes"));
    }
    let mut text = String::new();
    file.take(MAX_PROFILE_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    Ok(text)
}

/// Reads a Localhost profile, in the OCI form or Docker's (`name`,
/// `archMap`, `includes`/`excludes`), and reduces it to the OCI form.
pub fn load_localhost(path: &Path, caps: &[String]) -> Result<Value> {
    let text = read_profile(path).map_err(|reason| SeccompError::Unreadable {
        path: path.to_path_buf(),
        reason,
    })?;
    let invalid = |reason: String| SeccompError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let file: ProfileFile = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    check_action(&file.default_action).map_err(invalid)?;
    let mut architectures = file.architectures.clone();
    for entry in &file.arch_map {
        if entry.architecture == "SCMP_ARCH_X86_64" {
            architectures.push(entry.architecture.clone());
            architectures.extend(entry.sub_architectures.iter().cloned());
        }
    }
    let mut rules = Vec::new();
    for (i, rule) in file.syscalls.iter().enumerate() {
        check_action(&rule.action).map_err(|r| invalid(format!("syscalls[{i}]: {r}")))?;
        if !rule.applies(caps) {
            continue;
        }
        let mut names = rule.names.clone();
        names.extend(rule.name.iter().cloned());
        if names.is_empty() {
            return Err(invalid(format!("syscalls[{i}] names no syscall")));
        }
        let mut out = json!({ "names": names, "action": rule.action });
        if let Some(errno) = rule.errno_ret {
            out["errnoRet"] = json!(errno);
        }
        if !rule.args.is_empty() {
            out["args"] = json!(rule.args);
        }
        rules.push(out);
    }
    let mut profile = json!({ "defaultAction": file.default_action, "syscalls": rules });
    if let Some(errno) = file.default_errno_ret {
        profile["defaultErrnoRet"] = json!(errno);
    }
    if !architectures.is_empty() {
        profile["architectures"] = json!(architectures);
    }
    if !file.flags.is_empty() {
        profile["flags"] = json!(file.flags);
    }
    // What the agent will parse: refuse here what it would refuse there.
    serde_json::from_value::<oci_spec::runtime::LinuxSeccomp>(profile.clone())
        .map_err(|e| invalid(e.to_string()))?;
    Ok(profile)
}

fn check_action(action: &str) -> std::result::Result<(), String> {
    match action {
        "SCMP_ACT_KILL"
        | "SCMP_ACT_KILL_PROCESS"
        | "SCMP_ACT_KILL_THREAD"
        | "SCMP_ACT_TRAP"
        | "SCMP_ACT_ERRNO"
        | "SCMP_ACT_TRACE"
        | "SCMP_ACT_ALLOW"
        | "SCMP_ACT_LOG" => Ok(()),
        "SCMP_ACT_NOTIFY" => {
            Err("SCMP_ACT_NOTIFY needs a seccomp agent, which podvisor has not".into())
        }
        other => Err(format!("{other:?} is not a seccomp action")),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProfileFile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    arch_map: Vec<ArchMap>,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    syscalls: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: String,
    #[serde(default)]
    sub_architectures: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    name: Option<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<Value>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
}

#[derive(Deserialize, Default)]
struct Filter {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
}

impl Rule {
    /// Docker's conditions: every included capability present, no excluded
    /// one; arches are matched against amd64 (the only guest architecture).
    fn applies(&self, caps: &[String]) -> bool {
        let has = |c: &String| caps.iter().any(|k| k.eq_ignore_ascii_case(c));
        let amd64 = |a: &String| matches!(a.as_str(), "amd64" | "x86_64" | "x32" | "386");
        self.includes.caps.iter().all(has)
            && !self.excludes.caps.iter().any(has)
            && (self.includes.arches.is_empty() || self.includes.arches.iter().any(amd64))
            && !self.excludes.arches.iter().any(amd64)
    }
}

// ---------------------------------------------------------------------------
// RuntimeDefault: podvisor's own allow-list for x86_64. Everything not listed
// fails with EPERM. Left out on purpose: the kernel keyring (keyctl, add_key,
// request_key), module loading, kexec, bpf, perf_event_open, reboot, swap,
// acct, setting the clock, file handles (open_by_handle_at can escape a
// bind mount), userfaultfd, io_uring, the new mount API, quotactl, syslog,
// obsolete or x86-privileged calls (iopl, ioperm, modify_ldt, uselib,
// _sysctl, ...). Some calls are allowed only with a capability.

/// Allowed for every container.
#[rustfmt::skip]
const ALLOWED: &[&str] = &[
    // files and descriptors
    "read", "write", "open", "openat", "openat2", "close", "close_range", "creat", "lseek",
    "pread64", "pwrite64", "readv", "writev", "preadv", "pwritev", "preadv2", "pwritev2", "stat",
    "fstat", "lstat", "newfstatat", "statx", "statfs", "fstatfs", "access", "faccessat",
    "faccessat2", "dup", "dup2", "dup3", "fcntl", "flock", "fsync", "fdatasync", "syncfs", "sync",
    "sync_file_range", "truncate", "ftruncate", "fallocate", "fadvise64", "readahead", "getdents",
    "getdents64", "getcwd", "chdir", "fchdir", "rename", "renameat", "renameat2", "mkdir",
    "mkdirat", "rmdir", "link", "linkat", "unlink", "unlinkat", "symlink", "symlinkat", "readlink",
    "readlinkat", "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown",
    "fchownat", "umask", "mknod", "mknodat", "utime", "utimes", "utimensat", "futimesat",
    "setxattr", "lsetxattr", "fsetxattr", "getxattr", "lgetxattr", "fgetxattr", "listxattr",
    "llistxattr", "flistxattr", "removexattr", "lremovexattr", "fremovexattr", "sendfile",
    "splice", "tee", "vmsplice", "copy_file_range", "pipe", "pipe2", "ioctl", "chroot",
    "memfd_create", "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
    // polling and events
    "poll", "ppoll", "select", "pselect6", "epoll_create", "epoll_create1", "epoll_ctl",
    "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2", "signalfd", "signalfd4",
    "timerfd_create", "timerfd_settime", "timerfd_gettime", "io_setup", "io_destroy",
    "io_getevents", "io_pgetevents", "io_submit", "io_cancel",
    // memory
    "brk", "mmap", "munmap", "mprotect", "mremap", "msync", "mincore", "madvise", "mlock",
    "mlock2", "munlock", "mlockall", "munlockall", "membarrier", "pkey_mprotect", "pkey_alloc",
    "pkey_free", "get_mempolicy", "set_mempolicy", "mbind", "process_madvise",
    // processes and threads
    "fork", "vfork", "execve", "execveat", "exit", "exit_group", "wait4", "waitid", "kill",
    "tkill", "tgkill", "getpid", "getppid", "gettid", "getpgid", "setpgid", "getpgrp", "getsid",
    "setsid", "set_tid_address", "set_robust_list", "get_robust_list", "futex", "futex_waitv",
    "futex_wake", "futex_wait", "futex_requeue", "rseq", "arch_prctl", "prctl", "seccomp",
    "sched_yield", "sched_setparam", "sched_getparam", "sched_setscheduler", "sched_getscheduler",
    "sched_get_priority_max", "sched_get_priority_min", "sched_rr_get_interval",
    "sched_setaffinity", "sched_getaffinity", "sched_setattr", "sched_getattr", "getpriority",
    "setpriority", "ioprio_get", "ioprio_set", "getrlimit", "setrlimit", "prlimit64", "getrusage",
    "times", "capget", "capset", "pidfd_open", "pidfd_send_signal", "restart_syscall", "getcpu",
    "uname", "sysinfo", "getrandom", "sethostname", "setdomainname", "landlock_create_ruleset",
    "landlock_add_rule", "landlock_restrict_self",
    // credentials
    "getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid", "getgroups", "setuid",
    "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups", "setfsuid",
    "setfsgid",
    // signals and time
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigtimedwait",
    "rt_sigqueueinfo", "rt_tgsigqueueinfo", "rt_sigsuspend", "sigaltstack", "pause", "nanosleep",
    "clock_nanosleep", "alarm", "getitimer", "setitimer", "timer_create", "timer_settime",
    "timer_gettime", "timer_getoverrun", "timer_delete", "time", "gettimeofday", "clock_gettime",
    "clock_getres", "adjtimex", "clock_adjtime",
    // System V and POSIX IPC (namespaced)
    "shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop", "semctl", "msgget",
    "msgsnd", "msgrcv", "msgctl", "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive",
    "mq_notify", "mq_getsetattr",
    // sockets
    "socket", "socketpair", "connect", "accept", "accept4", "bind", "listen", "getsockname",
    "getpeername", "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "shutdown",
    "setsockopt", "getsockopt",
];

/// Namespace flags of clone(2): CLONE_NEWTIME, NEWNS, NEWCGROUP, NEWUTS,
/// NEWIPC, NEWUSER, NEWPID, NEWNET.
const CLONE_NAMESPACE_FLAGS: u64 = 0x80
    | 0x0002_0000
    | 0x0200_0000
    | 0x0400_0000
    | 0x0800_0000
    | 0x1000_0000
    | 0x2000_0000
    | 0x4000_0000;

/// personality(2) values that only query or pick a plain Linux flavour:
/// PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and 0xffffffff (query).
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// Allowed only with the capability that their use needs anyway.
const WITH_CAPABILITY: &[(&str, &[&str])] = &[
    (
        "CAP_SYS_PTRACE",
        &[
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "kcmp",
            "pidfd_getfd",
        ],
    ),
    (
        "CAP_SYS_ADMIN",
        &[
            "unshare",
            "setns",
            "mount",
            "umount2",
            "pivot_root",
            "fanotify_init",
        ],
    ),
];

/// The RuntimeDefault profile for a container with `caps`.
pub fn runtime_default(caps: &[String]) -> Value {
    let has = |cap: &str| caps.iter().any(|c| c == cap);
    let mut allowed: Vec<&str> = ALLOWED.to_vec();
    for (cap, calls) in WITH_CAPABILITY {
        if has(cap) {
            allowed.extend_from_slice(calls);
        }
    }
    let mut rules = vec![json!({ "names": allowed, "action": "SCMP_ACT_ALLOW" })];
    if has("CAP_SYS_ADMIN") {
        rules.push(json!({ "names": ["clone"], "action": "SCMP_ACT_ALLOW" }));
    } else {
        // A thread or process, but no new namespace (a user namespace needs
        // no capability and is a common first step of kernel exploits).
        rules.push(json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{ "index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ" }],
        }));
    }
    // clone3 passes its flags in memory, out of seccomp's sight: ENOSYS
    // makes the C libraries fall back to clone, whose flags it can check.
    rules
        .push(json!({ "names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOSYS }));
    for value in PERSONALITIES {
        rules.push(json!({
            "names": ["personality"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{ "index": 0, "value": value, "op": "SCMP_CMP_EQ" }],
        }));
    }
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": libc::EPERM,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the profile does with a syscall and its first argument.
    fn verdict(profile: &Value, name: &str, arg0: u64) -> String {
        for rule in profile["syscalls"].as_array().unwrap() {
            if !rule["names"].as_array().unwrap().iter().any(|n| n == name) {
                continue;
            }
            let matches = rule["args"].as_array().is_none_or(|args| {
                args.iter().all(|a| {
                    let v = a["value"].as_u64().unwrap();
                    match a["op"].as_str().unwrap() {
                        "SCMP_CMP_EQ" => arg0 == v,
                        "SCMP_CMP_MASKED_EQ" => arg0 & v == a["valueTwo"].as_u64().unwrap(),
                        op => panic!("{op}"),
                    }
                })
            });
            if matches {
                return rule["action"].as_str().unwrap().to_string();
            }
        }
        profile["defaultAction"].as_str().unwrap().to_string()
    }

    fn default_caps() -> Vec<String> {
        crate::container::spec::DEFAULT_CAPABILITIES
            .iter()
            .map(|c| c.to_string())
            .collect()
    }

    #[test]
    fn runtime_default_blocks_dangerous_calls_and_allows_common_ones() {
        let p = runtime_default(&default_caps());
        assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(p["defaultErrnoRet"], libc::EPERM);
        for blocked in [
            "keyctl",
            "add_key",
            "request_key",
            "ptrace",
            "mount",
            "umount2",
            "unshare",
            "setns",
            "kexec_load",
            "kexec_file_load",
            "bpf",
            "perf_event_open",
            "reboot",
            "swapon",
            "swapoff",
            "init_module",
            "finit_module",
            "delete_module",
            "acct",
            "settimeofday",
            "clock_settime",
            "open_by_handle_at",
            "userfaultfd",
            "io_uring_setup",
        ] {
            assert_eq!(verdict(&p, blocked, 0), "SCMP_ACT_ERRNO", "{blocked}");
        }
        for allowed in [
            "read",
            "openat",
            "execve",
            "chmod",
            "socket",
            "futex",
            "exit_group",
            "wait4",
        ] {
            assert_eq!(verdict(&p, allowed, 0), "SCMP_ACT_ALLOW", "{allowed}");
        }
        // clone: a thread yes, a user namespace no.
        let thread = 0x0001_0000 | 0x100 | 0x200 | 0x400 | 0x800; // CLONE_THREAD|VM|FS|FILES|SIGHAND
        assert_eq!(verdict(&p, "clone", thread), "SCMP_ACT_ALLOW");
        assert_eq!(verdict(&p, "clone", thread | 0x1000_0000), "SCMP_ACT_ERRNO");
        assert_eq!(verdict(&p, "personality", 0x8), "SCMP_ACT_ALLOW");
        assert_eq!(verdict(&p, "personality", 0x0040_0000), "SCMP_ACT_ERRNO"); // READ_IMPLIES_EXEC
        assert_eq!(
            p["syscalls"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["names"][0] == "clone3")
                .unwrap()["errnoRet"],
            libc::ENOSYS
        );
        // The agent's parser takes it.
        serde_json::from_value::<oci_spec::runtime::LinuxSeccomp>(p).unwrap();
    }

    #[test]
    fn ptrace_follows_cap_sys_ptrace() {
        let mut caps = default_caps();
        caps.push("CAP_SYS_PTRACE".into());
        let p = runtime_default(&caps);
        assert_eq!(verdict(&p, "ptrace", 0), "SCMP_ACT_ALLOW");
        assert_eq!(verdict(&p, "process_vm_readv", 0), "SCMP_ACT_ALLOW");
        assert_eq!(verdict(&p, "unshare", 0), "SCMP_ACT_ERRNO");
    }

    #[test]
    fn profiles_are_chosen_container_first_then_pod() {
        use cri::security_profile::ProfileType;
        let profile = |t: ProfileType, r: &str| cri::SecurityProfile {
            profile_type: t as i32,
            localhost_ref: r.into(),
        };
        let mut c = cri::LinuxContainerSecurityContext::default();
        let mut s = cri::LinuxSandboxSecurityContext::default();
        assert_eq!(choose(&c, Some(&s)).unwrap(), Profile::Unconfined);
        s.seccomp = Some(profile(ProfileType::RuntimeDefault, ""));
        assert_eq!(choose(&c, Some(&s)).unwrap(), Profile::RuntimeDefault);
        c.seccomp = Some(profile(ProfileType::Localhost, "/etc/p.json"));
        assert_eq!(
            choose(&c, Some(&s)).unwrap(),
            Profile::Localhost("/etc/p.json".into())
        );
        c.seccomp = Some(profile(ProfileType::Unconfined, ""));
        assert_eq!(choose(&c, Some(&s)).unwrap(), Profile::Unconfined);
        c.seccomp = Some(profile(ProfileType::Localhost, "p.json"));
        assert_eq!(
            choose(&c, None),
            Err(SeccompError::RelativePath("p.json".into()))
        );
        #[allow(deprecated)]
        let old = |path: &str| cri::LinuxContainerSecurityContext {
            seccomp_profile_path: path.into(),
            ..Default::default()
        };
        assert_eq!(
            choose(&old("runtime/default"), None).unwrap(),
            Profile::RuntimeDefault
        );
        assert_eq!(
            choose(&old("localhost//x/y.json"), None).unwrap(),
            Profile::Localhost("/x/y.json".into())
        );
        assert!(matches!(
            choose(&old("bogus"), None),
            Err(SeccompError::UnknownProfile(_))
        ));
    }

    #[test]
    fn localhost_profiles_are_read_checked_and_reduced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        std::fs::write(
            &path,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["chmod","fchmodat"],"action":"SCMP_ACT_ERRNO"},
                {"name":"ptrace","action":"SCMP_ACT_ERRNO","includes":{"caps":["CAP_SYS_PTRACE"]}}]}"#,
        )
        .unwrap();
        let p = load_localhost(&path, &default_caps()).unwrap();
        assert_eq!(verdict(&p, "chmod", 0), "SCMP_ACT_ERRNO");
        assert_eq!(
            verdict(&p, "ptrace", 0),
            "SCMP_ACT_ALLOW",
            "rule needs CAP_SYS_PTRACE"
        );
        assert!(matches!(
            load_localhost(&dir.path().join("missing.json"), &[]),
            Err(SeccompError::Unreadable { .. })
        ));
        std::fs::write(&path, "{not json").unwrap();
        assert!(matches!(
            load_localhost(&path, &[]),
            Err(SeccompError::Invalid { .. })
        ));
        std::fs::write(&path, r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#).unwrap();
        let err = load_localhost(&path, &[]).unwrap_err().to_string();
        assert!(err.contains("SCMP_ACT_NOTIFY"), "{err}");
    }

    #[test]
    fn localhost_profiles_are_regular_files_of_bounded_size() {
        // Neither an endless device nor a FIFO nobody writes is read.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        for path in [Path::new("/dev/zero"), fifo.as_path()] {
            let err = load_localhost(path, &[]).unwrap_err().to_string();
            assert!(err.contains("not a regular file"), "{err}");
        }
        let big = dir.path().join("big.json");
        let too_big = usize::try_from(MAX_PROFILE_BYTES).unwrap() + 1;
        std::fs::write(&big, vec![b' '; too_big]).unwrap();
        let err = load_localhost(&big, &[]).unwrap_err().to_string();
        assert!(err.contains("larger than"), "{err}");
    }
}
