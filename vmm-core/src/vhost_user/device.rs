//! A virtio device whose queues a vhost-user backend serves. Generic over
//! the device type: block, net and input differ only in [`DeviceKind`].

use std::path::Path;
use std::time::Duration;

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::VhostUserFrontend;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::backend_req::{BackendReqThread, ConfigState};
use super::frontend::{BackendConnection, FrontendError, F_PROTOCOL_FEATURES};
use crate::devices::virtio::mmio::ConfigNotifier;
use crate::devices::virtio::{
    Activation, DeviceError, VirtioDevice, TYPE_BLOCK, TYPE_INPUT, TYPE_NET,
};
use crate::vstate::memory::GuestMemory;

/// A raw fd owned elsewhere, lent to `set_backend_request_fd`.
struct BorrowedRawFd(std::os::fd::RawFd);

impl std::os::fd::AsRawFd for BorrowedRawFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

/// The kinds of device splitvm attaches through vhost-user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Block,
    Net,
    Input,
}

const VIRTIO_BLK_F_MQ: u64 = 1 << 12;
const VIRTIO_NET_F_CTRL_VQ: u64 = 1 << 17;
const VIRTIO_NET_F_MQ: u64 = 1 << 22;
/// `VIRTIO_F_ACCESS_PLATFORM`: there is no IOMMU here.
const VIRTIO_F_ACCESS_PLATFORM: u64 = 1 << 33;
/// Queue size offered to the driver; backends accept up to their `--queue-size`.
pub const DEFAULT_QUEUE_SIZE: u16 = 256;

impl DeviceKind {
    pub fn device_type(self) -> u32 {
        match self {
            DeviceKind::Block => TYPE_BLOCK,
            DeviceKind::Net => TYPE_NET,
            DeviceKind::Input => TYPE_INPUT,
        }
    }

    /// Bytes of config space fetched from the backend.
    fn config_size(self) -> u32 {
        match self {
            // virtio_blk_config up to write_zeroes_may_unmap and padding.
            DeviceKind::Block => 60,
            // mac, status, max_virtqueue_pairs, mtu.
            DeviceKind::Net => 12,
            // select, subsel, size, reserved[5], union of 128 bytes.
            DeviceKind::Input => 136,
        }
    }

    /// Number of queues, from the config space where the device type says so.
    fn num_queues(self, config: &[u8], features: u64) -> usize {
        let le16 = |off: usize| {
            config
                .get(off..off + 2)
                .map_or(1, |b| usize::from(u16::from_le_bytes([b[0], b[1]])))
        };
        match self {
            DeviceKind::Block if features & VIRTIO_BLK_F_MQ != 0 => le16(34).max(1),
            DeviceKind::Block => 1,
            DeviceKind::Net => {
                let pairs = if features & VIRTIO_NET_F_MQ != 0 {
                    le16(8).max(1)
                } else {
                    1
                };
                2 * pairs + usize::from(features & VIRTIO_NET_F_CTRL_VQ != 0)
            }
            DeviceKind::Input => 2,
        }
    }
}

/// A device served by a vhost-user backend process.
pub struct VhostUserDevice {
    kind: DeviceKind,
    conn: BackendConnection,
    mem: GuestMemory,
    config: Vec<u8>,
    num_queues: usize,
    /// Queues handed to the backend by the last activation.
    started: Vec<usize>,
    config_state: ConfigState,
    _backend_req: Option<BackendReqThread>,
}

impl VhostUserDevice {
    /// Connects to the backend at `socket` and reads its config space.
    pub fn connect(
        kind: DeviceKind,
        socket: &Path,
        mem: GuestMemory,
        limit: Duration,
    ) -> Result<VhostUserDevice, FrontendError> {
        let conn = BackendConnection::connect(socket, limit)?;
        let mut dev = VhostUserDevice {
            kind,
            conn,
            mem,
            config: vec![0; kind.config_size() as usize],
            num_queues: 0,
            started: Vec::new(),
            config_state: ConfigState::default(),
            _backend_req: None,
        };
        dev.start_backend_requests()?;
        dev.refresh_config()?;
        let mut n = kind.num_queues(&dev.config, dev.conn.features);
        if let Some(max) = dev.conn.queue_num {
            n = n.min(max as usize);
        }
        dev.num_queues = n.max(1);
        Ok(dev)
    }

    /// With `BACKEND_REQ`, opens the channel a backend uses to report
    /// config changes.
    fn start_backend_requests(&mut self) -> Result<(), FrontendError> {
        if !self.conn.has(VhostUserProtocolFeatures::BACKEND_REQ) {
            return Ok(());
        }
        let name = self.conn.path().display().to_string();
        let reply_ack = self.conn.has(VhostUserProtocolFeatures::REPLY_ACK);
        let (thread, fd) = BackendReqThread::start(&name, self.config_state.clone(), reply_ack)
            .map_err(|e| FrontendError::Channel {
                path: name.clone(),
                reason: e.to_string(),
            })?;
        let fd = BorrowedRawFd(fd);
        self.conn
            .frontend()
            .set_backend_request_fd(&fd)
            .map_err(self.conn.err("SET_BACKEND_REQ_FD"))?;
        self._backend_req = Some(thread);
        Ok(())
    }

    fn refresh_config(&mut self) -> Result<(), FrontendError> {
        if !self.conn.has(VhostUserProtocolFeatures::CONFIG) {
            return Ok(());
        }
        let size = self.kind.config_size();
        let zero = vec![0u8; size as usize];
        let (_, payload) = self
            .conn
            .frontend()
            .get_config(0, size, VhostUserConfigFlags::WRITABLE, &zero)
            .map_err(self.conn.err("GET_CONFIG"))?;
        self.config = payload;
        Ok(())
    }

    /// The backend's socket path.
    pub fn socket(&self) -> &Path {
        self.conn.path()
    }

    fn start(&mut self, act: &Activation<'_>) -> Result<(), FrontendError> {
        let mut features = act.features;
        if self.conn.features & F_PROTOCOL_FEATURES != 0 {
            features |= F_PROTOCOL_FEATURES;
        }
        self.conn
            .frontend()
            .set_features(features)
            .map_err(self.conn.err("SET_FEATURES"))?;
        let regions = self
            .mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.conn.err("describing guest memory"))?;
        self.conn
            .frontend()
            .set_mem_table(&regions)
            .map_err(self.conn.err("SET_MEM_TABLE"))?;
        let enable = self.conn.features & F_PROTOCOL_FEATURES != 0;
        for (i, q) in act.queues.iter().enumerate() {
            if !q.ready || q.size == 0 {
                continue;
            }
            let va = |gpa: u64| {
                self.mem
                    .get_host_address(GuestAddress(gpa))
                    .map(|p| p as u64)
                    .map_err(|_| FrontendError::BadRingAddress {
                        path: self.conn.path().display().to_string(),
                        gpa,
                    })
            };
            let ring = VringConfigData {
                queue_max_size: DEFAULT_QUEUE_SIZE,
                queue_size: q.size,
                flags: 0,
                desc_table_addr: va(q.desc)?,
                used_ring_addr: va(q.used)?,
                avail_ring_addr: va(q.avail)?,
                log_addr: None,
            };
            let (kick, call) = (&act.kicks[i], act.call);
            let fe = self.conn.frontend();
            let r = fe
                .set_vring_num(i, q.size)
                .and_then(|_| fe.set_vring_addr(i, &ring))
                .and_then(|_| fe.set_vring_base(i, 0))
                .and_then(|_| fe.set_vring_call(i, call))
                .and_then(|_| fe.set_vring_kick(i, kick))
                .and_then(|_| {
                    if enable {
                        fe.set_vring_enable(i, true)
                    } else {
                        Ok(())
                    }
                });
            r.map_err(self.conn.err("setting up a vring"))?;
            self.started.push(i);
        }
        Ok(())
    }
}

impl VirtioDevice for VhostUserDevice {
    fn device_type(&self) -> u32 {
        self.kind.device_type()
    }

    fn features(&self) -> u64 {
        self.conn.features & !(F_PROTOCOL_FEATURES | VIRTIO_F_ACCESS_PLATFORM)
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![DEFAULT_QUEUE_SIZE; self.num_queues]
    }

    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        if self
            .config_state
            .stale
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            if let Err(e) = self.refresh_config() {
                log::warn!("{e}");
            }
        }
        let start = offset as usize;
        match self.config.get(start..start.saturating_add(data.len())) {
            Some(src) => data.copy_from_slice(src),
            None => data.fill(0),
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if !self.conn.has(VhostUserProtocolFeatures::CONFIG)
            || offset as usize + data.len() > self.config.len()
        {
            return;
        }
        let r = self
            .conn
            .frontend()
            .set_config(offset as u32, VhostUserConfigFlags::WRITABLE, data)
            .map_err(self.conn.err("SET_CONFIG"));
        // Some fields select what the rest shows (virtio-input): re-read.
        if let Err(e) = r.and_then(|_| self.refresh_config()) {
            log::warn!("{e}");
        }
    }

    fn activate(&mut self, act: Activation<'_>) -> Result<(), DeviceError> {
        self.start(&act).map_err(|e| DeviceError(e.to_string()))?;
        log::info!(
            "{}: started {} queue(s), features {:#x}",
            self.conn.path().display(),
            self.started.len(),
            act.features
        );
        Ok(())
    }

    fn set_config_notifier(&mut self, notifier: ConfigNotifier) {
        if let Ok(mut n) = self.config_state.notifier.lock() {
            *n = Some(notifier);
        }
    }

    fn reset(&mut self) {
        // GET_VRING_BASE stops each ring; the backend finishes what it has.
        for i in std::mem::take(&mut self.started) {
            if let Err(e) = self.conn.frontend().get_vring_base(i) {
                log::warn!("{}: GET_VRING_BASE {i}: {e}", self.conn.path().display());
            }
        }
        if self.conn.has(VhostUserProtocolFeatures::RESET_DEVICE) {
            if let Err(e) = self.conn.frontend().reset_device() {
                log::warn!("{}: RESET_DEVICE: {e}", self.conn.path().display());
            }
        }
    }
}
