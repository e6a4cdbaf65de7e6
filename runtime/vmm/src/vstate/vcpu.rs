//! vCPU setup and the per-vCPU run loop.
//!
//! Each vCPU runs KVM_RUN on its own thread. Port I/O and MMIO exits go to
//! the shared buses; pause and stop requests reach a thread inside KVM_RUN
//! through a signal whose handler sets `immediate_exit`, so a guest that
//! spins can always be stopped.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use kvm_bindings::{kvm_run, CpuId, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use super::{StopReason, StopSignal};
use crate::boot::{cpuid, msrs, regs, BootInfo};
use crate::devices::bus::Bus;
use crate::metrics::{ExitReason, VcpuCounters};

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("creating vCPU {id}: {source}")]
    Create { id: u8, source: std::io::Error },
    #[error("configuring vCPU {id} ({what}): {source}")]
    Configure {
        id: u8,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("installing the vCPU kick signal handler: {0}")]
    Signal(std::io::Error),
    #[error("starting the vCPU {id} thread: {source}")]
    Spawn { id: u8, source: std::io::Error },
}

fn io(e: kvm_ioctls::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(e.errno())
}

/// What every vCPU thread should be doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    Running,
    Paused,
    Stopped,
}

/// Shared run state plus a count of vCPUs that acknowledged a pause.
pub struct VcpuControl {
    state: Mutex<RunState>,
    changed: Condvar,
    paused: AtomicUsize,
    halted: AtomicUsize,
    count: usize,
}

impl VcpuControl {
    pub fn new(count: usize) -> Self {
        VcpuControl {
            state: Mutex::new(RunState::Running),
            changed: Condvar::new(),
            paused: AtomicUsize::new(0),
            halted: AtomicUsize::new(0),
            count,
        }
    }

    pub fn state(&self) -> RunState {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set(&self, state: RunState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
        self.changed.notify_all();
    }

    /// Number of vCPUs currently parked by a pause.
    pub fn paused_count(&self) -> usize {
        self.paused.load(Ordering::Acquire)
    }

    /// Waits (bounded) until every running vCPU has parked.
    pub fn wait_paused(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while self.paused_count() + self.halted.load(Ordering::Acquire) < self.count {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        true
    }

    /// Parks the calling vCPU while paused; returns the state that ended the wait.
    fn park(&self) -> RunState {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if *state == RunState::Paused {
            self.paused.fetch_add(1, Ordering::AcqRel);
            while *state == RunState::Paused {
                state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            self.paused.fetch_sub(1, Ordering::AcqRel);
        }
        *state
    }
}

thread_local! {
    // The kvm_run page of the vCPU on this thread, for the kick handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN.with(|run| {
        let run = run.get();
        if !run.is_null() {
            // SAFETY: the pointer is this thread's mapped kvm_run page, valid while the
            // vCPU thread lives; immediate_exit is a plain byte KVM reads at entry.
            unsafe { std::ptr::write_volatile(&mut (*run).immediate_exit, 1) };
        }
    });
}

/// The signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// Installs the kick handler (once per process).
pub fn install_kick_handler() -> Result<(), VcpuError> {
    register_signal_handler(kick_signal(), kick_handler)
        .map_err(|e| VcpuError::Signal(std::io::Error::from_raw_os_error(e.errno())))
}

/// A configured vCPU before its thread starts.
pub struct Vcpu {
    pub id: u8,
    fd: VcpuFd,
}

impl Vcpu {
    pub fn new(vm: &VmFd, id: u8) -> Result<Vcpu, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|e| VcpuError::Create { id, source: io(e) })?;
        Ok(Vcpu { id, fd })
    }

    /// CPUID, MSRs, registers, FPU and LAPIC for the boot entry. Application
    /// processors get the same registers but stay in wait-for-SIPI, as on hardware.
    pub fn configure(
        &self,
        base_cpuid: &CpuId,
        count: u8,
        boot: &BootInfo,
    ) -> Result<(), VcpuError> {
        let id = self.id;
        let err = |what: &'static str| {
            move |e: kvm_ioctls::Error| VcpuError::Configure {
                id,
                what,
                source: io(e),
            }
        };
        let mut cpuid = base_cpuid.clone();
        cpuid::filter_cpuid(&mut cpuid, id, count);
        self.fd.set_cpuid2(&cpuid).map_err(err("cpuid"))?;
        let msrs = msrs::boot_msrs();
        let written = self.fd.set_msrs(&msrs).map_err(err("msrs"))?;
        if written < msrs.as_slice().len() {
            // Some hosts (PVM) refuse a few boot MSRs; the kernel sets them itself.
            log::debug!(
                "vcpu {id}: KVM accepted {written} of {} boot MSRs (first refused: {:#x})",
                msrs.as_slice().len(),
                msrs.as_slice()[written].index
            );
        }
        self.fd
            .set_regs(&regs::boot_regs(boot.protocol, boot.entry))
            .map_err(err("registers"))?;
        let sregs = self.fd.get_sregs().map_err(err("segment registers"))?;
        self.fd
            .set_sregs(&regs::boot_sregs(
                sregs,
                boot.protocol,
                &boot.segments,
                boot.cr3,
            ))
            .map_err(err("segment registers"))?;
        self.fd.set_fpu(&regs::boot_fpu()).map_err(err("fpu"))?;
        let mut lapic = self.fd.get_lapic().map_err(err("lapic"))?;
        regs::configure_lint(&mut lapic.regs);
        self.fd.set_lapic(&lapic).map_err(err("lapic"))?;
        Ok(())
    }
}

/// Everything a vCPU thread shares with the rest of the VMM.
#[derive(Clone)]
pub struct VcpuContext {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub control: Arc<VcpuControl>,
    pub stop: Arc<StopSignal>,
    /// Called on the vCPU thread before the first KVM_RUN (seccomp).
    pub on_start: Option<Arc<dyn Fn() -> Result<(), String> + Send + Sync>>,
}

/// A running vCPU thread.
pub struct VcpuHandle {
    pub id: u8,
    thread: Option<JoinHandle<()>>,
    pthread: libc::pthread_t,
}

impl VcpuHandle {
    /// Interrupts KVM_RUN so the thread re-reads the run state.
    pub fn kick(&self) {
        // SAFETY: pthread is the id of a thread we spawned and have not joined.
        unsafe { libc::pthread_kill(self.pthread, kick_signal()) };
    }

    pub fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a vCPU thread needs once the boot data is ready.
pub struct VcpuStart {
    pub boot: Arc<BootInfo>,
    pub cpuid: Arc<CpuId>,
    pub count: u8,
    pub ctx: VcpuContext,
    pub counters: Arc<VcpuCounters>,
}

/// A vCPU thread started before the boot data exists: it creates its vCPU
/// right away (overlapping KVM_CREATE_VCPU and thread start-up with kernel
/// loading on the main thread), then waits for [`VcpuStart`], configures the
/// vCPU on its own thread (where KVM wants vCPU ioctls) and runs it.
pub struct PendingVcpu {
    pub handle: VcpuHandle,
    start: std::sync::mpsc::Sender<VcpuStart>,
    ready: std::sync::mpsc::Receiver<Result<(), VcpuError>>,
}

impl PendingVcpu {
    /// Hands over the boot data and waits until the vCPU is configured.
    pub fn start(self, start: VcpuStart) -> Result<VcpuHandle, VcpuError> {
        let id = self.handle.id;
        let gone = || VcpuError::Spawn {
            id,
            source: std::io::Error::other("vCPU thread exited during setup"),
        };
        // A failed create is reported on `ready` even if the thread already left.
        let _ = self.start.send(start);
        self.ready.recv().map_err(|_| gone())??;
        Ok(self.handle)
    }
}

/// Spawns the thread for vCPU `id` of `vm`.
pub fn spawn_vcpu(vm: Arc<VmFd>, id: u8) -> Result<PendingVcpu, VcpuError> {
    let (start_tx, start_rx) = std::sync::mpsc::channel::<VcpuStart>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(format!("vcpu{id}"))
        // The run loop needs little stack; keep the (lazily touched) reservation small.
        .stack_size(256 << 10)
        .spawn(move || {
            let vcpu = match Vcpu::new(&vm, id) {
                Ok(v) => v,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            drop(vm);
            // The main thread gave up (setup failed elsewhere): nothing to run.
            let Ok(start) = start_rx.recv() else { return };
            let configured = vcpu.configure(&start.cpuid, start.count, &start.boot);
            let ok = configured.is_ok();
            let _ = ready_tx.send(configured);
            if ok {
                run_vcpu(vcpu, start.ctx, start.counters);
            }
        })
        .map_err(|source| VcpuError::Spawn { id, source })?;
    use std::os::unix::thread::JoinHandleExt;
    let pthread = thread.as_pthread_t();
    Ok(PendingVcpu {
        handle: VcpuHandle {
            id,
            thread: Some(thread),
            pthread,
        },
        start: start_tx,
        ready: ready_rx,
    })
}

impl VcpuHandle {
    /// A handle for a vCPU run by the calling thread itself (see [`run_on_current_thread`]).
    pub fn current_thread(id: u8) -> VcpuHandle {
        VcpuHandle {
            id,
            thread: None,
            // SAFETY: pthread_self has no preconditions.
            pthread: unsafe { libc::pthread_self() },
        }
    }
}

/// Runs `vcpu` on the calling thread until the VM stops (the boot vCPU runs
/// on the main thread: no thread start-up before its first instruction).
pub fn run_on_current_thread(vcpu: Vcpu, ctx: VcpuContext, counters: Arc<VcpuCounters>) {
    run_vcpu(vcpu, ctx, counters)
}

fn run_vcpu(mut vcpu: Vcpu, ctx: VcpuContext, counters: Arc<VcpuCounters>) {
    let id = vcpu.id;
    KVM_RUN.with(|run| run.set(vcpu.fd.get_kvm_run() as *mut kvm_run));
    if let Some(hook) = &ctx.on_start {
        if let Err(e) = hook() {
            ctx.stop
                .request(StopReason::VmmError(format!("vcpu {id} setup: {e}")));
            return;
        }
    }
    loop {
        match ctx.control.park() {
            RunState::Stopped => break,
            RunState::Paused => continue,
            RunState::Running => {}
        }
        match handle_exit(&mut vcpu, &ctx, &counters) {
            Ok(true) => {}
            Ok(false) => break,
            Err(reason) => {
                ctx.stop.request(reason);
                break;
            }
        }
    }
    KVM_RUN.with(|run| run.set(std::ptr::null_mut()));
}

/// Runs the vCPU once. Ok(false): this vCPU is done; Err: the VM must stop.
fn handle_exit(
    vcpu: &mut Vcpu,
    ctx: &VcpuContext,
    counters: &VcpuCounters,
) -> Result<bool, StopReason> {
    let id = vcpu.id;
    match vcpu.fd.run() {
        Ok(exit) => match exit {
            VcpuExit::IoOut(port, data) => {
                counters.count(ExitReason::IoOut);
                if !ctx.pio.write(u64::from(port), data) {
                    counters.unhandled_pio.fetch_add(1, Ordering::Relaxed);
                }
                Ok(true)
            }
            VcpuExit::IoIn(port, data) => {
                counters.count(ExitReason::IoIn);
                if !ctx.pio.read(u64::from(port), data) {
                    counters.unhandled_pio.fetch_add(1, Ordering::Relaxed);
                    data.fill(0xff);
                }
                Ok(true)
            }
            VcpuExit::MmioRead(addr, data) => {
                counters.count(ExitReason::MmioRead);
                if !ctx.mmio.read(addr, data) {
                    if counters.unhandled_mmio.fetch_add(1, Ordering::Relaxed) < 8 {
                        log::warn!("vcpu {id}: read from unmapped address {addr:#x}");
                    }
                    data.fill(0xff);
                }
                Ok(true)
            }
            VcpuExit::MmioWrite(addr, data) => {
                counters.count(ExitReason::MmioWrite);
                if !ctx.mmio.write(addr, data)
                    && counters.unhandled_mmio.fetch_add(1, Ordering::Relaxed) < 8
                {
                    log::warn!("vcpu {id}: write to unmapped address {addr:#x} dropped");
                }
                Ok(true)
            }
            VcpuExit::Hlt => {
                // With the in-kernel LAPIC KVM handles HLT itself; an exit means
                // nothing can wake this vCPU.
                counters.count(ExitReason::Hlt);
                let halted = ctx.control.halted.fetch_add(1, Ordering::AcqRel) + 1;
                if halted == ctx.control.count {
                    return Err(StopReason::AllVcpusHalted);
                }
                Ok(false)
            }
            VcpuExit::Shutdown => {
                counters.count(ExitReason::Shutdown);
                Err(StopReason::GuestCrash(format!(
                    "vcpu {id}: triple fault (KVM shutdown exit)"
                )))
            }
            VcpuExit::SystemEvent(kind, _) => {
                counters.count(ExitReason::SystemEvent);
                match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => Err(StopReason::GuestPowerOff),
                    KVM_SYSTEM_EVENT_RESET => Err(StopReason::GuestReset),
                    other => Err(StopReason::GuestCrash(format!(
                        "vcpu {id}: system event {other}"
                    ))),
                }
            }
            VcpuExit::FailEntry(reason, cpu) => {
                counters.count(ExitReason::FailEntry);
                Err(StopReason::GuestCrash(format!(
                    "vcpu {id}: KVM entry failed (hardware reason {reason:#x}, cpu {cpu})"
                )))
            }
            VcpuExit::InternalError => {
                counters.count(ExitReason::InternalError);
                // SAFETY: KVM filled the `internal` member for an internal-error exit.
                let sub = unsafe { vcpu.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                let rip = vcpu.fd.get_regs().map(|r| r.rip).unwrap_or(0);
                Err(StopReason::GuestCrash(format!(
                    "vcpu {id}: KVM internal error (suberror {sub}) at rip {rip:#x}"
                )))
            }
            VcpuExit::Intr => {
                counters.count(ExitReason::Interrupted);
                Ok(true)
            }
            other => {
                counters.count(ExitReason::Other);
                Err(StopReason::GuestCrash(format!(
                    "vcpu {id}: unexpected exit {other:?}"
                )))
            }
        },
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
            counters.count(ExitReason::Interrupted);
            vcpu.fd.set_kvm_immediate_exit(0);
            Ok(true)
        }
        Err(e) => Err(StopReason::VmmError(format!(
            "vcpu {id}: KVM_RUN failed: {e}"
        ))),
    }
}
