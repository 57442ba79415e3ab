//! vCPU threads: configure a vCPU, run it, dispatch port and MMIO exits to
//! the buses, and report how the VM ended.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};

use super::memory::GuestMemory;
use super::run_state::{ExitCounters, RunState};
use super::vm::Vm;
use crate::arch::x86_64::boot::EntryPoint;
use crate::arch::x86_64::{cpuid, regs};
use crate::devices::bus::Bus;

/// How the VM ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmExitEvent {
    /// The guest reset the machine (i8042 0xFE, or a KVM reset event).
    Reset,
    /// The guest powered off through KVM's shutdown event, or the API
    /// asked for a graceful shutdown.
    Shutdown,
    /// The API asked to end the VM at once.
    Killed,
    /// A vCPU failed: a KVM internal error, a triple fault, a failed entry.
    Error { vcpu: u8, rip: u64, reason: String },
}

impl fmt::Display for VmExitEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmExitEvent::Reset => write!(f, "guest reset"),
            VmExitEvent::Shutdown => write!(f, "shut down"),
            VmExitEvent::Killed => write!(f, "killed through the API"),
            VmExitEvent::Error { vcpu, rip, reason } => {
                write!(f, "vcpu{vcpu} failed at rip {rip:#x}: {reason}")
            }
        }
    }
}

/// The first event that ends the VM; later ones are ignored.
#[derive(Clone, Default)]
pub struct ExitSignal(Arc<(Mutex<Option<VmExitEvent>>, Condvar)>);

impl ExitSignal {
    pub fn new() -> ExitSignal {
        ExitSignal::default()
    }

    pub fn signal(&self, ev: VmExitEvent) {
        let (m, cv) = &*self.0;
        if let Ok(mut slot) = m.lock() {
            if slot.is_none() {
                *slot = Some(ev);
                cv.notify_all();
            }
        }
    }

    pub fn is_set(&self) -> bool {
        self.0 .0.lock().map(|s| s.is_some()).unwrap_or(true)
    }

    /// Blocks until an event arrives, calling `tick` every `every` meanwhile.
    pub fn wait_ticking(&self, every: std::time::Duration, mut tick: impl FnMut()) -> VmExitEvent {
        let (m, cv) = &*self.0;
        loop {
            let slot = m.lock().unwrap_or_else(PoisonError::into_inner);
            let (slot, _) = cv
                .wait_timeout_while(slot, every, |s| s.is_none())
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(ev) = slot.clone() {
                return ev;
            }
            drop(slot);
            tick();
        }
    }

    /// Blocks until an event arrives.
    pub fn wait(&self) -> VmExitEvent {
        self.wait_ticking(std::time::Duration::from_secs(3600), || {})
    }
}

/// Errors creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("KVM_CREATE_VCPU {id} failed: {source}")]
    Create {
        id: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM_SET_CPUID2 failed: {0}")]
    Cpuid(#[source] kvm_ioctls::Error),
    #[error(transparent)]
    Vm(#[from] super::vm::VmError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
}

/// One vCPU and what its exits are dispatched to.
pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    exit: ExitSignal,
    run_state: RunState,
    counters: Arc<ExitCounters>,
}

impl Vcpu {
    /// Creates vCPU `id` of `count` and configures CPUID, MSRs, FPU and
    /// LAPIC; the boot vCPU (`entry` given) also gets its entry registers.
    /// The others wait in KVM for the guest's INIT/SIPI.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vm: &Vm,
        mem: &GuestMemory,
        id: u8,
        count: u8,
        entry: Option<EntryPoint>,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        exit: ExitSignal,
    ) -> Result<Vcpu, VcpuError> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(id))
            .map_err(|source| VcpuError::Create { id, source })?;
        let mut cpuid = vm.supported_cpuid()?;
        cpuid::configure(&mut cpuid, id, count);
        fd.set_cpuid2(&cpuid).map_err(VcpuError::Cpuid)?;
        regs::setup_msrs(&fd)?;
        regs::setup_fpu(&fd)?;
        regs::setup_lapic(&fd)?;
        if let Some(e) = entry {
            regs::setup_sregs(mem, &fd, e.mode)?;
            regs::setup_regs(&fd, e.mode, e.addr, e.boot_info)?;
        }
        Ok(Vcpu {
            id,
            fd,
            pio,
            mmio,
            exit,
            run_state: RunState::default(),
            counters: Arc::new(ExitCounters::default()),
        })
    }

    pub fn id(&self) -> u8 {
        self.id
    }

    /// Shares the VM's pause control with this vCPU.
    pub fn set_run_state(&mut self, rs: RunState) {
        self.run_state = rs;
    }

    /// This vCPU's exit counters.
    pub fn counters(&self) -> Arc<ExitCounters> {
        self.counters.clone()
    }

    /// Runs until the VM ends; returns the event that ended it.
    pub fn run(&mut self) -> VmExitEvent {
        loop {
            self.run_state.park_if_paused();
            if self.exit.is_set() {
                return self.exit.wait();
            }
            if let Some(ev) = self.run_once() {
                self.exit.signal(ev.clone());
                return ev;
            }
            if self.exit.is_set() {
                return self.exit.wait();
            }
        }
    }

    /// One KVM_RUN; `Some` when the VM must end.
    fn run_once(&mut self) -> Option<VmExitEvent> {
        let failure = match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                ExitCounters::bump(&self.counters.io);
                if !self.pio.read(u64::from(port), data) {
                    data.fill(0xff);
                }
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                ExitCounters::bump(&self.counters.io);
                self.pio.write(u64::from(port), data);
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                ExitCounters::bump(&self.counters.mmio);
                if !self.mmio.read(addr, data) {
                    data.fill(0xff);
                }
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                ExitCounters::bump(&self.counters.mmio);
                self.mmio.write(addr, data);
                None
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_RESET => return Some(VmExitEvent::Reset),
                KVM_SYSTEM_EVENT_SHUTDOWN => return Some(VmExitEvent::Shutdown),
                KVM_SYSTEM_EVENT_CRASH => Some("guest crash event".to_string()),
                k => Some(format!("system event {k}")),
            },
            Ok(VcpuExit::Shutdown) => Some("triple fault (KVM_EXIT_SHUTDOWN)".to_string()),
            Ok(VcpuExit::InternalError) => Some("KVM internal error".to_string()),
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some(format!(
                "VM entry failed: hardware reason {reason:#x} on host cpu {cpu}"
            )),
            Ok(VcpuExit::Hlt) => Some("halted with no irqchip to wake it".to_string()),
            Ok(VcpuExit::Intr) => {
                ExitCounters::bump(&self.counters.other);
                None
            }
            Ok(other) => Some(format!("unexpected exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => Some(format!("KVM_RUN failed: {e}")),
        };
        failure.map(|reason| VmExitEvent::Error {
            vcpu: self.id,
            rip: self.fd.get_regs().map(|r| r.rip).unwrap_or(0),
            reason,
        })
    }
}
