//! [`VmmControl`] for the running VMM: what the management API can see and
//! change. Holds only shared handles, so the API thread never blocks the
//! vCPUs except through the device locks a vCPU would take too.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::metrics::backend_counters_all;
use super::{
    ApiError, BackendState, DeviceInfo, DeviceMetrics, Metrics, VcpuMetrics, VmInfo, VmState,
    VmmControl,
};
use crate::devices::virtio::mmio::MmioTransport;
use crate::vhost_user::frontend::BackendConnection;
use crate::vhost_user::monitor::with_device;
use crate::vstate::run_state::{ExitCounters, RunState, Want};
use crate::vstate::vcpu::{ExitSignal, VmExitEvent};

/// A vhost-user device as the API names it.
#[derive(Clone)]
pub struct DeviceHandle {
    pub name: String,
    pub transport: Arc<Mutex<MmioTransport>>,
}

/// Everything the API needs from the VMM.
pub struct VmmHandle {
    pub vcpus: u8,
    pub memory_bytes: u64,
    pub kernel: PathBuf,
    pub cmdline: String,
    pub started: Instant,
    pub devices: Vec<DeviceHandle>,
    pub run_state: RunState,
    pub counters: Mutex<Vec<Arc<ExitCounters>>>,
    pub exit: ExitSignal,
    pub shutting_down: AtomicBool,
    /// How long a swap waits for the new backend's socket.
    pub swap_connect_timeout: Duration,
}

/// How long pausing may take before the API reports failure.
const PAUSE_LIMIT: Duration = Duration::from_secs(5);

impl VmmHandle {
    fn device(&self, name: &str) -> Result<&DeviceHandle, ApiError> {
        self.devices
            .iter()
            .find(|d| d.name == name)
            .ok_or_else(|| ApiError::NotFound(format!("no device named {name:?}")))
    }

    fn device_info(&self, d: &DeviceHandle) -> Option<DeviceInfo> {
        with_device(&d.transport, |v| DeviceInfo {
            name: d.name.clone(),
            kind: v.kind().name().to_string(),
            socket: v.socket().to_path_buf(),
            backend_pid: v.backend_pid(),
            state: if v.is_connected() {
                BackendState::Connected
            } else {
                BackendState::Reconnecting
            },
            offered_features: crate::devices::virtio::VirtioDevice::features(v),
            negotiated_features: v.acked_features(),
            reconnects: v.reconnects(),
            link_up: v.link_up(),
        })
    }

    fn vcpu_count(&self) -> usize {
        self.counters.lock().map(|c| c.len()).unwrap_or(0)
    }
}

impl VmmControl for VmmHandle {
    fn info(&self) -> VmInfo {
        let state = if self.shutting_down.load(Ordering::SeqCst) {
            VmState::ShuttingDown
        } else if self.run_state.want() == Want::Pause {
            VmState::Paused
        } else {
            VmState::Running
        };
        VmInfo {
            state,
            vcpus: self.vcpus,
            memory_bytes: self.memory_bytes,
            kernel: self.kernel.clone(),
            cmdline: self.cmdline.clone(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            pid: std::process::id(),
        }
    }

    fn pause(&self) -> Result<(), ApiError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ApiError::Conflict("the VM is shutting down".into()));
        }
        if self.run_state.pause(self.vcpu_count(), PAUSE_LIMIT) {
            Ok(())
        } else {
            Err(ApiError::Failed(format!(
                "vCPUs did not stop within {PAUSE_LIMIT:?}"
            )))
        }
    }

    fn resume(&self) -> Result<(), ApiError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ApiError::Conflict("the VM is shutting down".into()));
        }
        self.run_state.resume();
        Ok(())
    }

    fn shutdown(&self) -> Result<(), ApiError> {
        if self.shutting_down.swap(true, Ordering::SeqCst) {
            return Err(ApiError::Conflict("the VM is already shutting down".into()));
        }
        // Stop the guest, then stop each device's queues: GET_VRING_BASE
        // lets every backend finish what it has in flight.
        let paused = self.run_state.pause(self.vcpu_count(), PAUSE_LIMIT);
        if !paused {
            log::warn!("shutdown: vCPUs did not pause; stopping devices anyway");
        }
        for d in &self.devices {
            if let Ok(mut t) = d.transport.lock() {
                t.stop();
            }
        }
        self.exit.signal(VmExitEvent::Shutdown);
        Ok(())
    }

    fn kill(&self) -> Result<(), ApiError> {
        self.exit.signal(VmExitEvent::Killed);
        Ok(())
    }

    fn devices(&self) -> Vec<DeviceInfo> {
        self.devices
            .iter()
            .filter_map(|d| self.device_info(d))
            .collect()
    }

    fn swap(&self, device: &str, socket: &Path) -> Result<(), ApiError> {
        let d = self.device(device)?;
        // Connect and negotiate before touching the device: if the new
        // backend is not there, nothing changes.
        let conn = BackendConnection::connect(socket, self.swap_connect_timeout)
            .map_err(|e| ApiError::Failed(e.to_string()))?;
        match with_device(&d.transport, |v| v.swap(conn)) {
            Some(Ok(_old)) => Ok(()),
            Some(Err(e)) => Err(ApiError::Failed(e.to_string())),
            None => Err(ApiError::Failed(format!(
                "{device} is not a vhost-user device"
            ))),
        }
    }

    fn set_link(&self, device: &str, up: bool) -> Result<(), ApiError> {
        let d = self.device(device)?;
        let notifier = {
            let mut t = d
                .transport
                .lock()
                .map_err(|_| ApiError::Failed("device lock poisoned".into()))?;
            let notifier = t.config_notifier();
            let r = t
                .device_mut()
                .as_any_mut()
                .downcast_mut::<crate::vhost_user::device::VhostUserDevice>()
                .map(|v| v.set_link(up));
            match r {
                Some(Ok(())) => notifier,
                Some(Err(e)) => return Err(ApiError::Conflict(e)),
                None => return Err(ApiError::Conflict(format!("{device} has no link"))),
            }
        };
        notifier.notify();
        Ok(())
    }

    fn metrics(&self) -> Metrics {
        let mut devices = Vec::new();
        let mut sockets = Vec::new();
        for d in &self.devices {
            let Some((m, socket)) = with_device(&d.transport, |v| {
                let (requests, in_flight) = v.ring_counters();
                let m = DeviceMetrics {
                    name: d.name.clone(),
                    requests,
                    in_flight,
                    reconnects: v.reconnects(),
                    errors: v.errors(),
                    ..DeviceMetrics::default()
                };
                (m, v.socket().to_path_buf())
            }) else {
                continue;
            };
            devices.push(m);
            sockets.push(socket);
        }
        // Outside the device locks: a backend may be slow to answer.
        let paths: Vec<&Path> = sockets.iter().map(PathBuf::as_path).collect();
        for (m, b) in devices.iter_mut().zip(backend_counters_all(&paths)) {
            if let Some(b) = b {
                m.backend_requests = Some(b.requests);
                m.bytes_read = Some(b.bytes_read);
                m.bytes_written = Some(b.bytes_written);
                m.io_errors = Some(b.io_errors);
            }
        }
        let vcpus = self
            .counters
            .lock()
            .map(|c| {
                c.iter()
                    .enumerate()
                    .map(|(i, c)| VcpuMetrics {
                        id: i as u8,
                        io_exits: c.io.load(Ordering::Relaxed),
                        mmio_exits: c.mmio.load(Ordering::Relaxed),
                        other_exits: c.other.load(Ordering::Relaxed),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Metrics { devices, vcpus }
    }
}
