//! A VMM as the API sees it, for driving the server without KVM.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use vmm_core::api::{
    ApiError, BackendState, DeviceInfo, DeviceMetrics, Metrics, VcpuMetrics, VmInfo, VmState,
    VmmControl,
};

/// A VMM as the API sees it: two devices (blk0, net0), state in a mutex.
pub struct FakeVmm {
    state: Mutex<FakeState>,
    /// A swap to a socket named `hang*` waits here while `hold_swaps`.
    pub swap_gate: Condvar,
}

pub struct FakeState {
    pub paused: bool,
    pub shutting_down: bool,
    pub killed: bool,
    pub blk_socket: PathBuf,
    pub net_link: bool,
    pub pause_fails: bool,
    pub hold_swaps: bool,
}

impl FakeVmm {
    pub fn new() -> Arc<FakeVmm> {
        Arc::new(FakeVmm {
            state: Mutex::new(FakeState {
                paused: false,
                shutting_down: false,
                killed: false,
                blk_socket: "/run/blk0.sock".into(),
                net_link: true,
                pause_fails: false,
                hold_swaps: true,
            }),
            swap_gate: Condvar::new(),
        })
    }
    pub fn st(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }
}

impl VmmControl for FakeVmm {
    fn info(&self) -> VmInfo {
        let s = self.st();
        VmInfo {
            state: match (s.shutting_down, s.paused) {
                (true, _) => VmState::ShuttingDown,
                (_, true) => VmState::Paused,
                _ => VmState::Running,
            },
            vcpus: 2,
            memory_bytes: 64 << 20,
            kernel: "/boot/vmlinux".into(),
            cmdline: "console=ttyS0 reboot=k panic=1".into(),
            uptime_ms: 1234,
            pid: 4242,
        }
    }
    fn pause(&self) -> Result<(), ApiError> {
        let mut s = self.st();
        if s.pause_fails {
            return Err(ApiError::Failed("vCPUs did not stop".into()));
        }
        if s.shutting_down {
            return Err(ApiError::Conflict("the VM is shutting down".into()));
        }
        s.paused = true;
        Ok(())
    }
    fn resume(&self) -> Result<(), ApiError> {
        self.st().paused = false;
        Ok(())
    }
    fn shutdown(&self) -> Result<(), ApiError> {
        let mut s = self.st();
        if s.shutting_down {
            return Err(ApiError::Conflict("already shutting down".into()));
        }
        s.shutting_down = true;
        Ok(())
    }
    fn kill(&self) -> Result<(), ApiError> {
        self.st().killed = true;
        Ok(())
    }
    fn devices(&self) -> Vec<DeviceInfo> {
        let s = self.st();
        let dev = |name: &str, kind: &str, socket: PathBuf, link| DeviceInfo {
            name: name.into(),
            kind: kind.into(),
            socket,
            backend_pid: Some(99),
            state: BackendState::Connected,
            offered_features: 0x1_3000_0000,
            negotiated_features: 0x1_0000_0000,
            reconnects: 0,
            link_up: link,
        };
        vec![
            dev("blk0", "blk", s.blk_socket.clone(), None),
            dev("net0", "net", "/run/net0.sock".into(), Some(s.net_link)),
        ]
    }
    fn swap(&self, device: &str, socket: &Path) -> Result<(), ApiError> {
        if socket.to_string_lossy().contains("hang") {
            let st = self.st();
            let (_st, t) = self
                .swap_gate
                .wait_timeout_while(st, Duration::from_secs(30), |s| s.hold_swaps)
                .unwrap();
            assert!(!t.timed_out(), "the test never released the swap");
        }
        if socket.to_string_lossy().contains("fail") {
            return Err(ApiError::Failed("backend did not negotiate".into()));
        }
        match device {
            "blk0" => self.st().blk_socket = socket.to_path_buf(),
            "net0" => {}
            _ => return Err(ApiError::NotFound(device.into())),
        }
        Ok(())
    }
    fn set_link(&self, device: &str, up: bool) -> Result<(), ApiError> {
        match device {
            "net0" => {
                self.st().net_link = up;
                Ok(())
            }
            _ => Err(ApiError::Conflict(format!("{device} has no link"))),
        }
    }
    fn metrics(&self) -> Metrics {
        Metrics {
            devices: vec![
                DeviceMetrics {
                    name: "blk0".into(),
                    requests: 10,
                    in_flight: 1,
                    reconnects: 0,
                    errors: 0,
                    backend_requests: Some(12),
                    bytes_read: Some(4096),
                    bytes_written: Some(8192),
                    io_errors: Some(1),
                },
                // A backend without a metrics socket: its counters are null.
                DeviceMetrics {
                    name: "net0".into(),
                    requests: 3,
                    ..DeviceMetrics::default()
                },
            ],
            vcpus: (0..2)
                .map(|id| VcpuMetrics {
                    id,
                    io_exits: 5,
                    mmio_exits: 6,
                    other_exits: 7,
                })
                .collect(),
        }
    }
}
