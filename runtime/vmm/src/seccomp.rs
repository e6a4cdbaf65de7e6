//! Per-thread seccomp filters (built with seccompiler). After setup the VMM
//! thread (event loop: devices, control API) and each vCPU thread run with
//! their own allow list; any other syscall raises SIGSYS, whose handler
//! names the syscall and exits with the confinement exit code.
//!
//! Note that a virtio device is activated on the vCPU thread that writes
//! DRIVER_OK, so the vCPU list includes what activation needs (epoll_ctl,
//! dup, the tap offload ioctl, vhost-user messages).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::config::SeccompMode;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the seccomp filter: {0}")]
    Build(String),
    #[error("installing the seccomp filter: {0}")]
    Install(String),
    #[error("installing the SIGSYS handler: {0}")]
    Handler(std::io::Error),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    Vcpu,
    Vmm,
}

pub type Filter = BpfProgram;

const KVM_RUN: u64 = 0xae80;
const KVM_GET_REGS: u64 = 0x8090_ae81;
const TUNSETOFFLOAD: u64 = 0x4004_54d0;
const FIONBIO: u64 = 0x5421;
const FIOCLEX: u64 = 0x5451;

/// Syscalls every thread needs: memory, locks, signals, eventfd and log I/O, exit.
const COMMON: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
    libc::SYS_futex,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_epoll_ctl,
    libc::SYS_fcntl,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_rseq,
];

/// The event loop: epoll, sockets (vsock host side, control API), disk I/O,
/// randomness, kicking vCPUs, removing its sockets at exit.
const VMM_ONLY: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_accept4,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_readv,
    libc::SYS_lseek,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_getrandom,
    libc::SYS_tgkill,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
];

fn ioctl_rules(requests: &[u64]) -> Result<Vec<SeccompRule>, SeccompError> {
    requests
        .iter()
        .map(|&req| {
            let cond = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, req)
                .map_err(|e| SeccompError::Build(e.to_string()))?;
            SeccompRule::new(vec![cond]).map_err(|e| SeccompError::Build(e.to_string()))
        })
        .collect()
}

/// The syscall allow list for one kind of thread.
pub fn allowed_syscalls(kind: ThreadKind) -> Vec<i64> {
    let mut list = COMMON.to_vec();
    if kind == ThreadKind::Vmm {
        list.extend_from_slice(VMM_ONLY);
    }
    list
}

/// Compiles the filter for `kind`, or None when seccomp is off.
pub fn build_filter(kind: ThreadKind, mode: SeccompMode) -> Result<Option<Filter>, SeccompError> {
    let mismatch = match mode {
        SeccompMode::Off => return Ok(None),
        SeccompMode::Log => SeccompAction::Log,
        SeccompMode::On => SeccompAction::Trap,
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = allowed_syscalls(kind)
        .into_iter()
        .map(|nr| (nr, Vec::new()))
        .collect();
    let ioctls: &[u64] = match kind {
        ThreadKind::Vcpu => &[KVM_RUN, KVM_GET_REGS, TUNSETOFFLOAD, FIONBIO, FIOCLEX],
        ThreadKind::Vmm => &[TUNSETOFFLOAD, FIONBIO, FIOCLEX],
    };
    rules.insert(libc::SYS_ioctl, ioctl_rules(ioctls)?);
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|e| SeccompError::Build(e.to_string()))?;
    let program: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError::Build(e.to_string()))?;
    Ok(Some(program))
}

/// Handler for a syscall outside the allow list: say which, then exit.
extern "C" fn sigsys_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // siginfo_t for SIGSYS: the syscall number is the int at byte 24 (after the
    // 16-byte header and the 8-byte faulting address).
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers.
    let nr = unsafe { *(info as *const u8).add(24).cast::<i32>() };
    let mut msg = *b"podvisor-vmm: seccomp blocked syscall 0000\n";
    let mut n = nr.max(0) as u32;
    for i in (0..4).rev() {
        msg[38 + i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    // SAFETY: write and _exit are async-signal-safe and allowed by every filter.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(crate::error::exit_code::CONFINEMENT);
    }
}

/// Installs the SIGSYS reporter (once, before any filter).
pub fn install_sigsys_handler() -> Result<(), SeccompError> {
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, sigsys_handler)
        .map_err(|e| SeccompError::Handler(std::io::Error::from_raw_os_error(e.errno())))
}

/// Applies `filter` to the calling thread (no-op for None).
pub fn apply(filter: Option<&Filter>) -> Result<(), SeccompError> {
    match filter {
        Some(f) => seccompiler::apply_filter(f).map_err(|e| SeccompError::Install(e.to_string())),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_and_differ() {
        let vcpu = build_filter(ThreadKind::Vcpu, SeccompMode::On)
            .unwrap()
            .unwrap();
        let vmm = build_filter(ThreadKind::Vmm, SeccompMode::On)
            .unwrap()
            .unwrap();
        assert!(!vcpu.is_empty());
        assert!(vmm.len() > vcpu.len());
        assert!(build_filter(ThreadKind::Vmm, SeccompMode::Off)
            .unwrap()
            .is_none());
        assert!(!allowed_syscalls(ThreadKind::Vcpu).contains(&libc::SYS_socket));
        assert!(allowed_syscalls(ThreadKind::Vmm).contains(&libc::SYS_accept4));
        assert!(!allowed_syscalls(ThreadKind::Vmm).contains(&libc::SYS_execve));
    }
}
