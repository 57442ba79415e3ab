//! Handing a running device from one backend to the next: after a crash
//! (restore, with positions from the guest's used rings), or on request
//! (swap, with positions from the old backend's `GET_VRING_BASE`).

use std::path::PathBuf;

use vhost::VhostBackend;
use vm_memory::{Bytes, GuestAddress};

use super::VhostUserDevice;
use crate::vhost_user::frontend::{BackendConnection, FrontendError};
use crate::vstate::memory::GuestMemory;

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

impl VhostUserDevice {
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
    pub(super) fn stop_queues(&mut self) -> Result<Vec<u16>, FrontendError> {
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
}
