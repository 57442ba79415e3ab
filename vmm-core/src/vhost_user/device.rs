//! A virtio device whose queues a vhost-user backend serves. Generic over
//! the device type ([`DeviceKind`]). It remembers what the driver set up, so
//! a new backend (after a crash, or a swap) can be given the same state.

use std::any::Any;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserInflight, VhostUserProtocolFeatures,
};
use vhost::vhost_user::VhostUserFrontend;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::backend_req::{BackendReqThread, ConfigState};
use super::frontend::{BackendConnection, FrontendError, F_PROTOCOL_FEATURES};
pub use super::kind::{DeviceKind, DEFAULT_QUEUE_SIZE};
use crate::devices::virtio::mmio::ConfigNotifier;
use crate::devices::virtio::{Activation, DeviceError, QueueConfig, VirtioDevice};
use crate::vstate::memory::GuestMemory;

/// A raw fd owned elsewhere, lent to the vhost crate for one call.
struct LentFd(std::os::fd::RawFd);

impl AsRawFd for LentFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

/// What the driver configured at DRIVER_OK, kept for replays.
struct Running {
    features: u64,
    queues: Vec<QueueConfig>,
    kicks: Vec<EventFd>,
    call: EventFd,
}

/// The used indices of a device's running queues (see
/// [`VhostUserDevice::used_reader`]).
pub struct UsedReader {
    mem: GuestMemory,
    addrs: Vec<GuestAddress>,
}

impl UsedReader {
    /// The current used index of each running queue.
    pub fn read(&self) -> Vec<u16> {
        self.addrs
            .iter()
            .map(|a| self.mem.read_obj::<u16>(*a).unwrap_or(0))
            .collect()
    }
}

/// A device served by a vhost-user backend process.
pub struct VhostUserDevice {
    kind: DeviceKind,
    conn: BackendConnection,
    /// False between a backend's death and the next successful restore.
    connected: bool,
    mem: GuestMemory,
    config: Vec<u8>,
    num_queues: usize,
    running: Option<Running>,
    /// The inflight region (`INFLIGHT_SHMFD`), kept across backends.
    inflight: Option<(File, VhostUserInflight)>,
    config_state: ConfigState,
    backend_req: Option<BackendReqThread>,
    reconnects: u64,
    /// Link state forced by the VMM's API (net only).
    link_override: Option<bool>,
    /// Written when the connection is replaced, so the monitor watches the new one.
    conn_changed: std::sync::Arc<EventFd>,
    /// Requests completed per queue as last seen, and their running total.
    used_seen: Vec<u16>,
    completed: u64,
    errors: u64,
}

/// `VIRTIO_NET_F_STATUS` and the config `status` field's link bit.
const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
const NET_STATUS_OFFSET: usize = 6;
const VIRTIO_NET_S_LINK_UP: u8 = 1;

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
            connected: true,
            mem,
            config: vec![0; kind.config_size() as usize],
            num_queues: 0,
            running: None,
            inflight: None,
            config_state: ConfigState::default(),
            backend_req: None,
            reconnects: 0,
            link_override: None,
            conn_changed: std::sync::Arc::new(
                EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).map_err(|e| {
                    FrontendError::Channel {
                        path: socket.display().to_string(),
                        reason: e.to_string(),
                    }
                })?,
            ),
            used_seen: Vec::new(),
            completed: 0,
            errors: 0,
        };
        dev.start_backend_requests()?;
        dev.refresh_config()?;
        let mut n = kind.num_queues(&dev.config, dev.features());
        if let Some(max) = dev.conn.queue_num {
            n = n.min(kind.max_queues(max));
        }
        dev.num_queues = n.max(1);
        Ok(dev)
    }

    /// The backend's socket path.
    pub fn socket(&self) -> &Path {
        self.conn.path()
    }

    pub fn kind(&self) -> DeviceKind {
        self.kind
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// How many times a new backend has taken over.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// A duplicate of the connection's socket, for watching it hang up.
    pub fn watch_fd(&self) -> Option<OwnedFd> {
        // SAFETY: dup of a socket fd we own; the result is owned by the OwnedFd.
        let fd = unsafe { libc::dup(self.conn.frontend().as_raw_fd()) };
        // SAFETY: `fd` is a fresh descriptor returned by dup and owned by nobody else.
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Signalled whenever the device moves to another connection.
    pub fn conn_changed(&self) -> std::sync::Arc<EventFd> {
        self.conn_changed.clone()
    }

    /// With `BACKEND_REQ`, opens the channel a backend uses to report
    /// config changes.
    fn start_backend_requests(&mut self) -> Result<(), FrontendError> {
        self.backend_req = None;
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
        self.conn
            .frontend_mut()
            .set_backend_request_fd(&LentFd(fd))
            .map_err(self.conn.err("SET_BACKEND_REQ_FD"))?;
        self.backend_req = Some(thread);
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
            .frontend_mut()
            .get_config(0, size, VhostUserConfigFlags::WRITABLE, &zero)
            .map_err(self.conn.err("GET_CONFIG"))?;
        self.config = payload;
        Ok(())
    }

    fn ring_va(&self, gpa: u64) -> Result<u64, FrontendError> {
        self.mem
            .get_host_address(GuestAddress(gpa))
            .map(|p| p as u64)
            .map_err(|_| FrontendError::BadRingAddress {
                path: self.conn.path().display().to_string(),
                gpa,
            })
    }

    /// Sends the inflight region: created by the first backend that offers
    /// `INFLIGHT_SHMFD`, handed to every later one.
    fn setup_inflight(&mut self) -> Result<(), FrontendError> {
        if !self.conn.has(VhostUserProtocolFeatures::INFLIGHT_SHMFD) {
            return Ok(());
        }
        if self.inflight.is_none() {
            let want = VhostUserInflight {
                num_queues: self.num_queues as u16,
                queue_size: DEFAULT_QUEUE_SIZE,
                ..Default::default()
            };
            let got = self
                .conn
                .frontend_mut()
                .get_inflight_fd(&want)
                .map_err(self.conn.err("GET_INFLIGHT_FD"))?;
            self.inflight = Some((got.1, got.0));
        }
        if let Some((file, info)) = &self.inflight {
            self.conn
                .frontend_mut()
                .set_inflight_fd(info, file.as_raw_fd())
                .map_err(self.conn.err("SET_INFLIGHT_FD"))?;
        }
        Ok(())
    }

    /// Hands the backend everything the driver set up. `bases` gives each
    /// queue's next available index (0 on a fresh start).
    fn start(&mut self, bases: &[u16]) -> Result<(), FrontendError> {
        let Some(run) = &self.running else {
            return Ok(());
        };
        let mut features = run.features;
        if self.conn.features & F_PROTOCOL_FEATURES != 0 {
            features |= F_PROTOCOL_FEATURES;
        }
        let mut rings = Vec::new();
        for (i, q) in run.queues.iter().enumerate() {
            if q.ready && q.size > 0 {
                let ring = VringConfigData {
                    queue_max_size: DEFAULT_QUEUE_SIZE,
                    queue_size: q.size,
                    flags: 0,
                    desc_table_addr: self.ring_va(q.desc)?,
                    used_ring_addr: self.ring_va(q.used)?,
                    avail_ring_addr: self.ring_va(q.avail)?,
                    log_addr: None,
                };
                rings.push((i, q.size, ring, bases.get(i).copied().unwrap_or(0)));
            }
        }
        self.setup_inflight()?;
        let regions = self
            .mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.conn.err("describing guest memory"))?;
        let enable = self.conn.features & F_PROTOCOL_FEATURES != 0;
        let Some(run) = &self.running else {
            return Ok(());
        };
        let fe = self.conn.frontend_mut();
        let r = fe
            .set_features(features)
            .and_then(|_| fe.set_mem_table(&regions).map(|_| ()));
        r.map_err(self.conn.err("SET_FEATURES/SET_MEM_TABLE"))?;
        let path = self.conn.path().display().to_string();
        let fe = self.conn.frontend_mut();
        for (i, size, ring, base) in &rings {
            let i = *i;
            let r = fe
                .set_vring_num(i, *size)
                .and_then(|_| fe.set_vring_addr(i, ring))
                .and_then(|_| fe.set_vring_base(i, *base))
                .and_then(|_| fe.set_vring_call(i, &run.call))
                .and_then(|_| fe.set_vring_kick(i, &run.kicks[i]))
                .and_then(|_| {
                    if enable {
                        fe.set_vring_enable(i, true)
                    } else {
                        Ok(())
                    }
                });
            r.map_err(|source| FrontendError::Request {
                path: path.clone(),
                what: "setting up a vring",
                source,
            })?;
        }
        log::info!(
            "{}: started {} queue(s), features {features:#x}",
            self.conn.path().display(),
            rings.len()
        );
        Ok(())
    }

    /// Where each queue resumes after its backend died without telling us
    /// its position: the guest's used index. Requests after it are replayed
    /// (exactly once when the backend tracks them in the inflight region).
    fn bases_from_used_rings(&self) -> Vec<u16> {
        let Some(run) = &self.running else {
            return Vec::new();
        };
        run.queues
            .iter()
            .map(|q| {
                if q.ready {
                    self.mem
                        .read_obj::<u16>(GuestAddress(q.used + 2))
                        .unwrap_or(0)
                } else {
                    0
                }
            })
            .collect()
    }

    /// Reads every running queue's used index without holding the device:
    /// for timing a new backend's first completion from the monitor thread.
    pub fn used_reader(&self) -> Option<UsedReader> {
        let run = self.running.as_ref()?;
        let addrs = run
            .queues
            .iter()
            .filter(|q| q.ready)
            .map(|q| GuestAddress(q.used + 2))
            .collect();
        Some(UsedReader {
            mem: self.mem.clone(),
            addrs,
        })
    }

    /// Stops every running queue (`GET_VRING_BASE`); returns their positions.
    fn stop_queues(&mut self) -> Result<Vec<u16>, FrontendError> {
        let Some(run) = &self.running else {
            return Ok(Vec::new());
        };
        let ready: Vec<bool> = run.queues.iter().map(|q| q.ready).collect();
        let mut bases = vec![0u16; ready.len()];
        for (i, r) in ready.iter().enumerate() {
            if *r {
                let b = self
                    .conn
                    .frontend_mut()
                    .get_vring_base(i)
                    .map_err(self.conn.err("GET_VRING_BASE"))?;
                bases[i] = b as u16;
            }
        }
        Ok(bases)
    }

    /// The backend went away: stop using its connection.
    pub fn mark_disconnected(&mut self) {
        self.connected = false;
        self.backend_req = None;
    }

    /// A new backend on the same socket takes over after the old one died.
    pub fn restore(&mut self, conn: BackendConnection) -> Result<(), FrontendError> {
        self.conn = conn;
        self.connected = true;
        self.start_backend_requests()?;
        self.refresh_config()?;
        let bases = self.bases_from_used_rings();
        self.start(&bases)?;
        self.nudge();
        self.reconnects += 1;
        Ok(())
    }

    /// After a backend change, kicks every running queue and raises the
    /// device interrupt once. A dying backend may have consumed the guest's
    /// last kick without popping the request (and with `EVENT_IDX` the guest
    /// will not kick again until the device moves `avail_event`), or written
    /// the used ring without signalling the call eventfd (and the guest
    /// waits for that interrupt forever). Both notifications are harmless
    /// when nothing was lost: the backend finds the ring as it is and the
    /// guest's interrupt handler finds no new used entries.
    fn nudge(&self) {
        let Some(run) = &self.running else {
            return;
        };
        for (q, kick) in run.queues.iter().zip(&run.kicks) {
            if q.ready && q.size > 0 {
                if let Err(e) = kick.write(1) {
                    log::warn!("{}: kicking a queue: {e}", self.socket().display());
                }
            }
        }
        if let Err(e) = run.call.write(1) {
            log::warn!("{}: raising the interrupt: {e}", self.socket().display());
        }
    }

    /// Moves the device to the backend behind `new`: the old one is
    /// quiesced (`GET_VRING_BASE`), the new one gets the same state. If the
    /// new one fails, the old one is restarted where it stopped.
    pub fn swap(&mut self, new: BackendConnection) -> Result<PathBuf, FrontendError> {
        let bases = if self.connected {
            self.stop_queues()?
        } else {
            self.bases_from_used_rings()
        };
        let old = std::mem::replace(&mut self.conn, new);
        let old_path = old.path().to_path_buf();
        let result = self
            .start_backend_requests()
            .and_then(|_| self.refresh_config())
            .and_then(|_| self.start(&bases));
        match result {
            Ok(()) => {
                self.nudge();
                self.connected = true;
                self.reconnects += 1;
                let _ = self.conn_changed.write(1);
                log::info!(
                    "swapped {} -> {}",
                    old_path.display(),
                    self.conn.path().display()
                );
                Ok(old_path)
            }
            Err(e) => {
                log::warn!(
                    "swap to {} failed ({e}); keeping {}",
                    self.conn.path().display(),
                    old_path.display()
                );
                self.conn = old;
                self.start_backend_requests()?;
                self.start(&bases)?;
                self.nudge();
                Err(e)
            }
        }
    }

    /// Forces the link state the guest sees (net devices offering STATUS).
    pub fn set_link(&mut self, up: bool) -> Result<(), String> {
        if self.kind != DeviceKind::Net {
            return Err(format!("{} is not a net device", self.socket().display()));
        }
        if self.features() & VIRTIO_NET_F_STATUS == 0 {
            return Err("the guest is not offered VIRTIO_NET_F_STATUS".to_string());
        }
        self.link_override = Some(up);
        Ok(())
    }

    /// The link state the guest sees, for net devices.
    pub fn link_up(&self) -> Option<bool> {
        if self.kind != DeviceKind::Net {
            return None;
        }
        if self.features() & VIRTIO_NET_F_STATUS == 0 {
            // Without STATUS the guest assumes the link is up.
            return Some(true);
        }
        let status = self.config.get(NET_STATUS_OFFSET).copied().unwrap_or(0);
        Some(
            self.link_override
                .unwrap_or(status & VIRTIO_NET_S_LINK_UP != 0),
        )
    }

    /// The backend process's pid, from the socket's peer credentials, if
    /// that process still runs.
    pub fn backend_pid(&self) -> Option<u32> {
        if !self.connected {
            return None;
        }
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `cred`, a
        // properly sized and aligned ucred; the fd is our connected socket.
        let rc = unsafe {
            libc::getsockopt(
                self.conn.frontend().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        // The credentials are those of whoever last called listen() on the
        // socket when splitvm connected. A socket a supervisor owns may have
        // taken the connection while the previous backend was already dead
        // (the new one accepted it from the backlog): report no pid then
        // rather than a dead one.
        let pid = (rc == 0 && cred.pid > 0).then_some(cred.pid as u32)?;
        std::path::Path::new(&format!("/proc/{pid}"))
            .exists()
            .then_some(pid)
    }

    /// Requests completed so far and requests in flight, read from the
    /// rings in guest memory (the VMM is not on the data path to count).
    pub fn ring_counters(&mut self) -> (u64, u64) {
        let Some(run) = &self.running else {
            return (self.completed, 0);
        };
        let mut in_flight = 0u64;
        self.used_seen.resize(run.queues.len(), 0);
        for (i, q) in run.queues.iter().enumerate() {
            if !q.ready {
                continue;
            }
            let used = self
                .mem
                .read_obj::<u16>(GuestAddress(q.used + 2))
                .unwrap_or(0);
            let avail = self
                .mem
                .read_obj::<u16>(GuestAddress(q.avail + 2))
                .unwrap_or(0);
            self.completed += u64::from(used.wrapping_sub(self.used_seen[i]));
            self.used_seen[i] = used;
            in_flight += u64::from(avail.wrapping_sub(used));
        }
        (self.completed, in_flight)
    }

    /// Failed requests to the backend.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Negotiated virtio features (0 before the driver started the device).
    pub fn acked_features(&self) -> u64 {
        self.running.as_ref().map_or(0, |r| r.features)
    }
}

impl VirtioDevice for VhostUserDevice {
    fn device_type(&self) -> u32 {
        self.kind.device_type()
    }

    fn features(&self) -> u64 {
        self.kind.guest_features(
            self.conn.features,
            self.conn.has(VhostUserProtocolFeatures::CONFIG),
        )
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![DEFAULT_QUEUE_SIZE; self.num_queues]
    }

    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        if self.connected
            && self
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
        if let Some(up) = self.link_override {
            if start <= NET_STATUS_OFFSET && NET_STATUS_OFFSET < start + data.len() {
                let b = &mut data[NET_STATUS_OFFSET - start];
                *b = if up {
                    *b | VIRTIO_NET_S_LINK_UP
                } else {
                    *b & !VIRTIO_NET_S_LINK_UP
                };
            }
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if !self.connected
            || !self.conn.has(VhostUserProtocolFeatures::CONFIG)
            || offset as usize + data.len() > self.config.len()
        {
            return;
        }
        let r = self
            .conn
            .frontend_mut()
            .set_config(offset as u32, VhostUserConfigFlags::WRITABLE, data)
            .map_err(self.conn.err("SET_CONFIG"));
        // Some fields select what the rest shows (virtio-input): re-read.
        if let Err(e) = r.and_then(|_| self.refresh_config()) {
            self.errors += 1;
            log::warn!("{e}");
        }
    }

    fn activate(&mut self, act: Activation<'_>) -> Result<(), DeviceError> {
        let clone = |e: &EventFd| e.try_clone().map_err(|e| DeviceError(e.to_string()));
        self.running = Some(Running {
            features: act.features,
            queues: act.queues.to_vec(),
            kicks: act.kicks.iter().map(clone).collect::<Result<_, _>>()?,
            call: clone(act.call)?,
        });
        if !self.connected {
            // The monitor hands this state to the next backend.
            log::warn!(
                "{}: activated while the backend is away",
                self.socket().display()
            );
            return Ok(());
        }
        self.used_seen = vec![0; self.num_queues];
        let zeros = vec![0; self.num_queues];
        self.start(&zeros).map_err(|e| {
            self.errors += 1;
            DeviceError(e.to_string())
        })
    }

    fn set_config_notifier(&mut self, notifier: ConfigNotifier) {
        if let Ok(mut n) = self.config_state.notifier.lock() {
            *n = Some(notifier);
        }
    }

    fn reset(&mut self) {
        if self.connected {
            if let Err(e) = self.stop_queues() {
                self.errors += 1;
                log::warn!("{e}");
            }
            if self.conn.has(VhostUserProtocolFeatures::RESET_DEVICE) {
                if let Err(e) = self.conn.frontend_mut().reset_device() {
                    log::warn!("{}: RESET_DEVICE: {e}", self.socket().display());
                }
            }
        }
        self.running = None;
        // A reset driver starts over: nothing in flight survives it.
        self.inflight = None;
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
