//! Wiring: builds the VM from a [`VmConfig`], starts the vCPUs and runs
//! the event loop (device fds, stop/reset events, control API) until the
//! VM stops.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{IoEventAddress, VmFd};
use linux_loader::loader::Cmdline;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::{Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::boot::layout::{
    CMDLINE_MAX, I8042_PORT_BASE, I8042_PORT_LEN, IRQ_KEYBOARD, IRQ_SERIAL, IRQ_VIRTIO_FIRST,
    IRQ_VIRTIO_LAST, SERIAL_PORT_BASE, SERIAL_PORT_LEN, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE,
};
use crate::boot::{prepare_boot, BootSpec};
use crate::config::VmConfig;
use crate::control::{ControlServer, Request};
use crate::devices::bus::Bus;
use crate::devices::legacy::{CountingWriter, SerialConsole, I8042};
use crate::devices::virtio::mmio::{MmioTransport, REG_QUEUE_NOTIFY};
use crate::devices::virtio::{split_event_data, EventRegistrar, VirtioDevice};
use crate::error::{DeviceError, VmmError};
use crate::metrics::Metrics;
use crate::seccomp::{self, ThreadKind};
use crate::vstate::vcpu::{self, RunState, Vcpu, VcpuContext, VcpuControl, VcpuHandle, VcpuStart};
use crate::vstate::vm::Vm;
use crate::vstate::{StopReason, StopSignal};

/// Event-loop tokens of slot 0 (the VMM itself); device slots start at 1.
const TOKEN_STOP: u32 = 0;
const TOKEN_RESET: u32 = 1;
const TOKEN_CONTROL: u32 = 2;

/// Attaches virtio-mmio devices: MMIO window, IRQ, ioeventfds, cmdline entry.
struct DeviceManager<'a> {
    vm: &'a VmFd,
    mem: Arc<GuestMemoryMmap>,
    epoll: Arc<Epoll>,
    mmio: Bus,
    cmdline: Cmdline,
    devices: Vec<Arc<Mutex<dyn VirtioDevice>>>,
}

impl DeviceManager<'_> {
    fn attach(&mut self, device: Arc<Mutex<dyn VirtioDevice>>) -> Result<(), VmmError> {
        let too_many = || DeviceError::TooMany(IRQ_VIRTIO_LAST - IRQ_VIRTIO_FIRST + 1);
        let index = u32::try_from(self.devices.len()).map_err(|_| too_many())?;
        let irq = IRQ_VIRTIO_FIRST.saturating_add(index);
        if irq > IRQ_VIRTIO_LAST {
            return Err(too_many().into());
        }
        let base = VIRTIO_MMIO_BASE + u64::from(index) * VIRTIO_MMIO_SIZE;
        let irqfd = EventFd::new(EFD_NONBLOCK).map_err(DeviceError::Events)?;
        self.vm
            .register_irqfd(&irqfd, irq)
            .map_err(|e| DeviceError::Kvm(std::io::Error::from_raw_os_error(e.errno())))?;
        let events = EventRegistrar::new(self.epoll.clone(), index + 1);
        let transport = MmioTransport::new(device.clone(), self.mem.clone(), irqfd, events)
            .map_err(DeviceError::Events)?;
        for (queue, evt) in (0u32..).zip(transport.queue_evts()) {
            self.vm
                .register_ioevent(evt, &IoEventAddress::Mmio(base + REG_QUEUE_NOTIFY), queue)
                .map_err(|e| DeviceError::Kvm(std::io::Error::from_raw_os_error(e.errno())))?;
        }
        self.mmio
            .insert(Arc::new(Mutex::new(transport)), base, VIRTIO_MMIO_SIZE)
            .map_err(DeviceError::from)?;
        self.cmdline
            .add_virtio_mmio_device(VIRTIO_MMIO_SIZE, GuestAddress(base), irq, None)
            .map_err(|e| crate::boot::BootError::Cmdline(e.to_string()))?;
        self.devices.push(device);
        Ok(())
    }
}

fn open_console(cfg: &VmConfig) -> Result<Box<dyn Write + Send>, DeviceError> {
    match &cfg.console {
        None => Ok(Box::new(std::io::sink())),
        Some(p) if p.as_os_str() == "-" => {
            // Unbuffered: each guest byte reaches stdout as it is written.
            // SAFETY: dup returns a new fd we own (or -1, checked).
            let fd = unsafe { libc::dup(1) };
            if fd < 0 {
                return Err(DeviceError::Console {
                    path: p.clone(),
                    source: std::io::Error::last_os_error(),
                });
            }
            // SAFETY: fd is a freshly duplicated descriptor owned by nobody else.
            Ok(Box::new(unsafe { File::from_raw_fd(fd) }))
        }
        Some(p) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map(|f| Box::new(f) as Box<dyn Write + Send>)
            .map_err(|source| DeviceError::Console {
                path: p.clone(),
                source,
            }),
    }
}

/// Creates the configured virtio devices; returns files to remove at exit.
fn create_virtio_devices(
    cfg: &VmConfig,
    dm: &mut DeviceManager<'_>,
    metrics: &Metrics,
    shared_mem: Option<&Arc<File>>,
) -> Result<Vec<std::path::PathBuf>, VmmError> {
    let mut cleanup = Vec::new();
    use crate::devices::virtio::{block, net, rng, vhost_user_fs, vsock};
    for (i, b) in cfg.block.iter().enumerate() {
        let dev = block::Block::open(
            &b.path,
            b.read_only,
            metrics.add_device(format!("block{i}")),
        )
        .map_err(|source| DeviceError::Block {
            path: b.path.clone(),
            source,
        })?;
        dm.attach(Arc::new(Mutex::new(dev)))?;
    }
    for (i, n) in cfg.net.iter().enumerate() {
        let dev = net::Net::new(n, metrics.add_device(format!("net{i}")))
            .map_err(|e| DeviceError::Net(e.to_string()))?;
        dm.attach(Arc::new(Mutex::new(dev)))?;
    }
    if let Some(v) = &cfg.vsock {
        let dev = vsock::Vsock::new(v.cid, &v.socket, metrics.add_device("vsock"))
            .map_err(|e| DeviceError::Vsock(e.to_string()))?;
        cleanup.push(dev.socket_path().to_path_buf());
        dm.attach(Arc::new(Mutex::new(dev)))?;
    }
    if cfg.rng {
        dm.attach(Arc::new(Mutex::new(rng::Rng::new(
            metrics.add_device("rng"),
        ))))?;
    }
    for f in &cfg.fs {
        let file = shared_mem.ok_or_else(|| DeviceError::Fs {
            tag: f.tag.clone(),
            msg: "guest memory is not shared".into(),
        })?;
        let dev = vhost_user_fs::Fs::connect(f, dm.mem.clone(), file.clone()).map_err(|e| {
            DeviceError::Fs {
                tag: f.tag.clone(),
                msg: e.to_string(),
            }
        })?;
        dm.attach(Arc::new(Mutex::new(dev)))?;
    }
    Ok(cleanup)
}

/// Everything the event loop touches.
struct Runtime {
    epoll: Arc<Epoll>,
    stop: Arc<StopSignal>,
    reset_evt: EventFd,
    control: Option<ControlServer>,
    devices: Vec<Arc<Mutex<dyn VirtioDevice>>>,
    vcpu_control: Arc<VcpuControl>,
    vcpus: Vec<VcpuHandle>,
    metrics: Arc<Metrics>,
    started: Instant,
    i8042: Arc<Mutex<I8042>>,
    /// Set by `shutdown`: the guest got Ctrl-Alt-Del and must reset by then.
    shutdown_deadline: Option<Instant>,
}

impl Runtime {
    fn kick_all(&self) {
        for v in &self.vcpus {
            v.kick();
        }
    }

    fn handle_control(&mut self) {
        let Some(server) = &self.control else { return };
        while let Some((stream, request)) = server.accept() {
            let reply = match request {
                None => "{\"ok\":false,\"error\":\"unknown command (status, pause, resume, shutdown, kill, counters)\"}".to_string(),
                Some(Request::Status) => {
                    let state = match self.vcpu_control.state() {
                        RunState::Running => "running",
                        RunState::Paused => "paused",
                        RunState::Stopped => "stopping",
                    };
                    format!(
                        "{{\"ok\":true,\"state\":\"{state}\",\"vcpus\":{},\"uptime_ms\":{}}}",
                        self.vcpus.len(),
                        self.started.elapsed().as_millis()
                    )
                }
                Some(Request::Pause) => {
                    self.vcpu_control.set(RunState::Paused);
                    self.kick_all();
                    if self.vcpu_control.wait_paused(Duration::from_secs(2)) {
                        "{\"ok\":true,\"state\":\"paused\"}".to_string()
                    } else {
                        "{\"ok\":false,\"error\":\"vCPUs did not pause in time\"}".to_string()
                    }
                }
                Some(Request::Resume) => {
                    self.vcpu_control.set(RunState::Running);
                    "{\"ok\":true,\"state\":\"running\"}".to_string()
                }
                Some(Request::Shutdown(grace)) => {
                    // Ask the guest first (Ctrl-Alt-Del); stop anyway after the grace period.
                    self.i8042
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .ctrl_alt_del();
                    self.shutdown_deadline = Some(Instant::now() + grace);
                    format!(
                        "{{\"ok\":true,\"state\":\"stopping\",\"grace_ms\":{}}}",
                        grace.as_millis()
                    )
                }
                Some(Request::Kill) => {
                    self.stop.request(StopReason::Killed);
                    "{\"ok\":true,\"state\":\"stopping\"}".to_string()
                }
                Some(Request::Counters) => {
                    format!("{{\"ok\":true,\"counters\":{}}}", self.metrics.to_json())
                }
            };
            ControlServer::reply(stream, &reply);
        }
    }

    fn run(&mut self) -> Result<StopReason, VmmError> {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let timeout = match self.shutdown_deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        log::info!("guest did not shut down within the grace period; stopping it");
                        return Ok(StopReason::ShutdownRequested);
                    }
                    i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1)
                }
                None => -1,
            };
            let n = match self.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(VmmError::EventLoop(e)),
            };
            for ev in &events[..n] {
                let (slot, token) = split_event_data(ev.data());
                if slot == 0 {
                    match token {
                        TOKEN_STOP => {
                            let _ = self.stop.evt.read();
                        }
                        TOKEN_RESET => {
                            let _ = self.reset_evt.read();
                            self.stop.request(StopReason::GuestReset);
                        }
                        TOKEN_CONTROL => self.handle_control(),
                        _ => {}
                    }
                } else if let Some(dev) = self.devices.get(slot as usize - 1) {
                    dev.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .handle_event(token, ev.event_set());
                }
            }
            if let Some(reason) = self.stop.reason() {
                return Ok(reason);
            }
        }
    }

    fn stop_vcpus(&mut self) {
        self.vcpu_control.set(RunState::Stopped);
        self.kick_all();
        for v in &mut self.vcpus {
            v.join();
        }
    }
}

/// Builds and runs the VM; returns why it stopped.
pub fn run(cfg: &VmConfig) -> Result<StopReason, VmmError> {
    let started = Instant::now();
    let vm = Vm::new(cfg.mem_size(), !cfg.fs.is_empty())?;
    log::debug!("{:?}: VM and memory created", started.elapsed());
    // vCPU threads start now and create their vCPUs while this thread loads
    // the kernel and builds devices.
    vcpu::install_kick_handler()?;
    // The boot vCPU runs on this thread; application processors get their own.
    let boot_vcpu = Vcpu::new(&vm.fd, 0)?;
    let mut pending = Vec::with_capacity(cfg.vcpus as usize);
    for id in 1..cfg.vcpus {
        pending.push(vcpu::spawn_vcpu(vm.fd.clone(), id)?);
    }
    let mem = vm.ram.mem.clone();
    let epoll = Arc::new(Epoll::new().map_err(VmmError::EventLoop)?);
    let metrics = Arc::new(Metrics::default());
    let stop = Arc::new(StopSignal::new().map_err(VmmError::EventLoop)?);
    let kvm_err =
        |e: kvm_ioctls::Error| DeviceError::Kvm(std::io::Error::from_raw_os_error(e.errno()));

    // Legacy devices on port I/O.
    let mut pio = Bus::new();
    let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(DeviceError::Events)?;
    vm.fd
        .register_irqfd(&serial_irq, IRQ_SERIAL)
        .map_err(kvm_err)?;
    let console = CountingWriter::new(open_console(cfg)?, metrics.add_device("console"));
    pio.insert(
        Arc::new(Mutex::new(SerialConsole::new(serial_irq, console))),
        u64::from(SERIAL_PORT_BASE),
        u64::from(SERIAL_PORT_LEN),
    )
    .map_err(DeviceError::from)?;
    let reset_evt = EventFd::new(EFD_NONBLOCK).map_err(DeviceError::Events)?;
    let i8042_evt = reset_evt.try_clone().map_err(DeviceError::Events)?;
    let kbd_irq = EventFd::new(EFD_NONBLOCK).map_err(DeviceError::Events)?;
    vm.fd
        .register_irqfd(&kbd_irq, IRQ_KEYBOARD)
        .map_err(kvm_err)?;
    let i8042 = Arc::new(Mutex::new(I8042::new(i8042_evt, kbd_irq)));
    pio.insert(
        i8042.clone(),
        u64::from(I8042_PORT_BASE),
        u64::from(I8042_PORT_LEN),
    )
    .map_err(DeviceError::from)?;

    // virtio-mmio devices, each announced on the command line.
    let cmdline = Cmdline::try_from(&cfg.cmdline, CMDLINE_MAX)
        .map_err(|e| crate::boot::BootError::Cmdline(e.to_string()))?;
    let mut dm = DeviceManager {
        vm: &vm.fd,
        mem: mem.clone(),
        epoll: epoll.clone(),
        mmio: Bus::new(),
        cmdline,
        devices: Vec::new(),
    };
    let cleanup = create_virtio_devices(cfg, &mut dm, &metrics, vm.ram.shared_file.as_ref())?;
    let DeviceManager {
        mmio,
        cmdline,
        devices,
        ..
    } = dm;

    let boot = prepare_boot(
        &mem,
        &BootSpec {
            kernel: &cfg.kernel,
            initrd: cfg.initrd.as_deref(),
            cmdline: &cmdline,
            protocol: cfg.boot_protocol,
            mem_size: cfg.mem_size(),
            vcpu_count: cfg.vcpus,
        },
    )?;

    log::debug!("{:?}: devices and boot data ready", started.elapsed());
    let base_cpuid = vm
        .kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| crate::vstate::vcpu::VcpuError::Configure {
            id: 0,
            what: "supported cpuid",
            source: std::io::Error::from_raw_os_error(e.errno()),
        })?;
    let control = match &cfg.api_socket {
        Some(p) => Some(ControlServer::bind(p)?),
        None => None,
    };
    let reg = |fd: i32, token: u32| {
        epoll
            .ctl(
                vmm_sys_util::epoll::ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, u64::from(token)),
            )
            .map_err(VmmError::EventLoop)
    };
    reg(stop.evt.as_raw_fd(), TOKEN_STOP)?;
    reg(reset_evt.as_raw_fd(), TOKEN_RESET)?;
    if let Some(c) = &control {
        reg(c.listener().as_raw_fd(), TOKEN_CONTROL)?;
    }

    if let (Some(uid), Some(gid)) = (cfg.uid, cfg.gid) {
        crate::privileges::drop_to(uid, gid)?;
    }

    seccomp::install_sigsys_handler()?;
    let vcpu_filter = seccomp::build_filter(ThreadKind::Vcpu, cfg.seccomp)?;
    let vmm_filter = seccomp::build_filter(ThreadKind::Vmm, cfg.seccomp)?;
    let vcpu_control = Arc::new(VcpuControl::new(cfg.vcpus as usize));
    let on_start: Arc<dyn Fn() -> Result<(), String> + Send + Sync> =
        Arc::new(move || seccomp::apply(vcpu_filter.as_ref()).map_err(|e| e.to_string()));
    let ctx = VcpuContext {
        pio: Arc::new(pio),
        mmio: Arc::new(mmio),
        control: vcpu_control.clone(),
        stop: stop.clone(),
        on_start: Some(on_start),
    };
    boot_vcpu.configure(&base_cpuid, cfg.vcpus, &boot)?;
    let boot = Arc::new(boot);
    let base_cpuid = Arc::new(base_cpuid);
    let boot_counters = metrics.add_vcpu();
    let mut handles = vec![VcpuHandle::current_thread(0)];
    for p in pending {
        handles.push(p.start(VcpuStart {
            boot: boot.clone(),
            cpuid: base_cpuid.clone(),
            count: cfg.vcpus,
            ctx: ctx.clone(),
            counters: metrics.add_vcpu(),
        })?);
    }
    log::debug!("{:?}: vCPUs configured", started.elapsed());

    let mut runtime = Runtime {
        epoll,
        stop,
        reset_evt,
        control,
        devices,
        vcpu_control,
        vcpus: handles,
        metrics,
        started,
        i8042,
        shutdown_deadline: None,
    };
    // The event loop gets its own thread; this one becomes vCPU 0.
    let event_loop = std::thread::Builder::new()
        .name("vmm".into())
        .spawn(move || {
            seccomp::apply(vmm_filter.as_ref())?;
            let result = runtime.run();
            runtime.stop_vcpus();
            for path in cleanup {
                let _ = std::fs::remove_file(path);
            }
            // Dropped here, on the thread allowed to unlink the control socket.
            drop(runtime);
            result
        })
        .map_err(VmmError::EventLoop)?;
    vcpu::run_on_current_thread(boot_vcpu, ctx, boot_counters);
    let result = event_loop
        .join()
        .unwrap_or_else(|_| Ok(StopReason::VmmError("event loop thread panicked".into())));
    // Keep the VM (and its memory) alive until the vCPU threads are gone.
    drop(vm);
    result
}
