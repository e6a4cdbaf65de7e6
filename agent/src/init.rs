//! What the agent does before serving: as PID 1 of a pod VM it builds the
//! guest's userspace mounts; in host test mode it isolates itself so that
//! nothing it mounts or names leaks into the host.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::error::{AgentError, Result};

struct GuestMount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

const GUEST_MOUNTS: &[GuestMount] = &[
    GuestMount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    GuestMount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    GuestMount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    GuestMount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    },
    GuestMount {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
    GuestMount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
    },
    GuestMount {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
    GuestMount {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
];

/// Set in the environment once PID 1 runs from its tmpfs root.
const SWITCHED_ROOT_ENV: &str = "PODVISOR_AGENT_SWITCHED_ROOT";

/// The initramfs is the kernel's `rootfs`, which `pivot_root` cannot leave,
/// so no container could start. Like switch_root, PID 1 copies itself onto a
/// tmpfs, makes that the root, frees the initramfs copy and re-executes.
/// Returns only when already switched (or on error).
pub fn switch_to_tmpfs_root() -> Result<()> {
    if std::env::var_os(SWITCHED_ROOT_ENV).is_some() {
        return Ok(());
    }
    let exe = fs::read_link("/proc/self/exe").unwrap_or_else(|_| "/init".into());
    let new_root = Path::new("/newroot");
    fs::create_dir_all(new_root).map_err(|e| AgentError::io("mkdir /newroot", e))?;
    mount(
        Some("tmpfs"),
        new_root,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(|e| AgentError::sys("mount tmpfs root", e))?;
    fs::copy(&exe, new_root.join("init"))
        .map_err(|e| AgentError::io("copy agent to tmpfs root", e))?;
    // The initramfs copy is no longer needed; its pages are freed on exec.
    let _ = fs::remove_file(&exe);
    std::env::set_current_dir(new_root).map_err(|e| AgentError::io("chdir /newroot", e))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| AgentError::sys("move tmpfs onto /", e))?;
    nix::unistd::chroot(".").map_err(|e| AgentError::sys("chroot", e))?;
    std::env::set_current_dir("/").map_err(|e| AgentError::io("chdir /", e))?;
    std::env::set_var(SWITCHED_ROOT_ENV, "1");
    let args: Vec<std::ffi::CString> = std::env::args()
        .map(|a| std::ffi::CString::new(a).unwrap_or_default())
        .collect();
    let err = nix::unistd::execv(c"/init", &args).unwrap_err();
    Err(AgentError::sys("re-exec from the tmpfs root", err))
}

/// Prepares the guest as its PID 1. Runs before any thread is started.
/// The agent's own RLIMIT_NOFILE and RLIMIT_NPROC: the kernel gives PID 1
/// 1024/4096 open files, too few for a pod with many containers and
/// streams, and below the hard limit (65535) its containers get. Processes
/// the agent starts get their spec's limits, never these.
const AGENT_RLIMIT: u64 = 65535;

fn set_own_limits() {
    use nix::sys::resource::{setrlimit, Resource};
    for resource in [Resource::RLIMIT_NOFILE, Resource::RLIMIT_NPROC] {
        if let Err(e) = setrlimit(resource, AGENT_RLIMIT, AGENT_RLIMIT) {
            eprintln!("podvisor-agent: setting {resource:?} to {AGENT_RLIMIT}: {e}");
        }
    }
}

pub fn setup_guest() -> Result<()> {
    set_own_limits();
    switch_to_tmpfs_root()?;
    for m in GUEST_MOUNTS {
        fs::create_dir_all(m.target)
            .map_err(|e| AgentError::io(format!("mkdir {}", m.target), e))?;
        match mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data) {
            Ok(()) | Err(nix::Error::EBUSY) => {}
            Err(e) => {
                return Err(AgentError::sys(
                    format!("mount {} on {}", m.fstype, m.target),
                    e,
                ))
            }
        }
    }
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        if !Path::new(link).exists() {
            let _ = symlink(target, link);
        }
    }
    // devtmpfs made /dev/ptmx a node of the initial devpts instance; the
    // container runtime expects it to point into ours.
    let _ = fs::remove_file("/dev/ptmx");
    let _ = symlink("pts/ptmx", "/dev/ptmx");
    enable_cgroup_controllers();
    if let Err(e) = bring_up_loopback() {
        tracing::warn!(%e, "cannot bring up lo");
    }
    Ok(())
}

/// Lets child cgroups use every controller the kernel offers.
fn enable_cgroup_controllers() {
    let Ok(available) = fs::read_to_string("/sys/fs/cgroup/cgroup.controllers") else {
        return;
    };
    for controller in available.split_whitespace() {
        if let Err(e) = fs::write(
            "/sys/fs/cgroup/cgroup.subtree_control",
            format!("+{controller}"),
        ) {
            tracing::warn!(controller, %e, "cannot enable cgroup controller");
        }
    }
}

fn bring_up_loopback() -> std::io::Result<()> {
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq naming "lo".
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        let mut rc = libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= libc::c_short::try_from(libc::IFF_UP).expect("IFF_UP is 1");
            rc = libc::ioctl(sock, libc::SIOCSIFFLAGS, &req);
        }
        let err = std::io::Error::last_os_error();
        libc::close(sock);
        if rc != 0 {
            return Err(err);
        }
    }
    Ok(())
}

/// Host test mode: a private mount and UTS namespace (so mounts vanish with
/// the agent and sethostname stays ours), and subreaper status so orphans of
/// containers come back to us. Runs before any thread is started.
pub fn setup_host() -> Result<()> {
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS)
        .map_err(|e| AgentError::sys("unshare mount+uts namespaces", e))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| AgentError::sys("make / private", e))?;
    // SAFETY: prctl with an integer argument.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(AgentError::io(
            "PR_SET_CHILD_SUBREAPER",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// The value of `key=` on the kernel command line.
pub fn kernel_param(key: &str) -> Option<String> {
    let cmdline = fs::read_to_string("/proc/cmdline").ok()?;
    cmdline
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=').map(str::to_string))
}

/// Flushes file systems and ends the VM. Only for PID 1.
///
/// A reset, not a power-off: both backends end the VM on a guest reset
/// (qemu runs with -no-reboot; podvisor-vmm exits on the i8042 reset that
/// `reboot=k` uses), and podvisor-vmm has no ACPI to power off through.
pub fn end_vm() -> ! {
    nix::unistd::sync();
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    tracing::error!(?err, "reboot failed");
    // PID 1 exiting panics the kernel, which (panic=-1) resets the VM.
    std::process::exit(1);
}
