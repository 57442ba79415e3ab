//! The `INFLIGHT_SHMFD` messages, which `vhost-user-backend` does not
//! implement, answered in front of it (see `splitvm_backends::proxy`):
//!
//! - `GET_INFLIGHT_FD`: a zeroed, sealed memfd sized for the frontend's
//!   `num_queues`/`queue_size` ([`crate::inflight::allocate`]); on failure
//!   `mmap_size` 0 and no fd, as libvhost-user answers.
//! - `SET_INFLIGHT_FD`: the frontend's region is checked and mapped, and
//!   every queue tracks into it and reconciles with it before its next pop.
//! - `SET_VRING_KICK` (forwarded): with a region set, the new kick eventfd
//!   is signalled once, so a restarted backend resubmits without waiting for
//!   a guest kick that will not come (libvhost-user does the same).
//! - `SET_PROTOCOL_FEATURES` (forwarded): remembered, for `REPLY_ACK`.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use log::{info, warn};
use splitvm_backends::proxy::{Intercept, Message, Verdict};
use vhost::vhost_user::message::VhostUserProtocolFeatures;

use crate::inflight::{self, InflightMsg, Region};
use crate::vhu_blk::VhostUserBlkBackend;

const SET_PROTOCOL_FEATURES: u32 = 16;
const SET_VRING_KICK: u32 = 12;
const GET_INFLIGHT_FD: u32 = 31;
const SET_INFLIGHT_FD: u32 = 32;
/// `SET_VRING_KICK` payload bit: no fd (polling mode).
const VRING_NOFD: u64 = 0x100;

/// See the module docs.
pub struct BlkIntercept {
    backend: VhostUserBlkBackend,
    protocol: AtomicU64,
    region_set: std::sync::atomic::AtomicBool,
}

impl BlkIntercept {
    /// The hook for one connection of `backend`.
    pub fn new(backend: VhostUserBlkBackend) -> Self {
        BlkIntercept {
            backend,
            protocol: AtomicU64::new(0),
            region_set: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn acked(&self, f: VhostUserProtocolFeatures) -> bool {
        self.protocol.load(Ordering::Relaxed) & f.bits() != 0
    }

    fn get_inflight(&self, msg: &Message) -> Message {
        let answer = InflightMsg::parse(&msg.body).and_then(|m| {
            if !self.acked(VhostUserProtocolFeatures::INFLIGHT_SHMFD) {
                return Err(inflight::InflightError::BadRequest(
                    "INFLIGHT_SHMFD not negotiated",
                ));
            }
            inflight::allocate(m.num_queues, m.queue_size)
        });
        match answer {
            Ok((file, m)) => {
                info!(
                    "inflight region: {} queue(s) of {}, {} bytes",
                    m.num_queues, m.queue_size, m.mmap_size
                );
                Message::reply(GET_INFLIGHT_FD, m.to_bytes(), vec![file])
            }
            Err(e) => {
                warn!("GET_INFLIGHT_FD: {e}");
                let none = InflightMsg {
                    mmap_size: 0,
                    mmap_offset: 0,
                    num_queues: 0,
                    queue_size: 0,
                };
                Message::reply(GET_INFLIGHT_FD, none.to_bytes(), Vec::new())
            }
        }
    }

    fn set_inflight(&self, mut msg: Message) -> Option<Message> {
        let res = (|| {
            let m = InflightMsg::parse(&msg.body)?;
            if msg.files.len() != 1 {
                return Err(inflight::InflightError::BadRequest("expected one fd"));
            }
            let file = msg
                .files
                .pop()
                .ok_or(inflight::InflightError::BadRequest("expected one fd"))?;
            if m.num_queues > self.backend.queues() {
                warn!(
                    "inflight region covers {} queues, the device has {}",
                    m.num_queues,
                    self.backend.queues()
                );
            }
            Region::map(file, &m)
        })();
        let ok = match res {
            Ok(region) => {
                self.backend.install_inflight(&region);
                self.region_set.store(true, Ordering::Relaxed);
                info!("inflight region set: {} queue(s)", region.num_queues());
                true
            }
            Err(e) => {
                warn!("SET_INFLIGHT_FD: {e}");
                false
            }
        };
        (msg.need_reply() && self.acked(VhostUserProtocolFeatures::REPLY_ACK)).then(|| {
            let code: u64 = if ok { 0 } else { 1 };
            Message::reply(SET_INFLIGHT_FD, code.to_le_bytes().to_vec(), Vec::new())
        })
    }
}

fn u64_body(body: &[u8]) -> Option<u64> {
    let b: [u8; 8] = body.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

impl Intercept for BlkIntercept {
    fn on_request(&self, msg: Message) -> io::Result<Verdict> {
        match msg.request {
            GET_INFLIGHT_FD => Ok(Verdict::Handled(Some(self.get_inflight(&msg)))),
            SET_INFLIGHT_FD => Ok(Verdict::Handled(self.set_inflight(msg))),
            SET_PROTOCOL_FEATURES => {
                if let Some(f) = u64_body(&msg.body) {
                    self.protocol.store(f, Ordering::Relaxed);
                }
                Ok(Verdict::Forward(msg))
            }
            SET_VRING_KICK if self.region_set.load(Ordering::Relaxed) => {
                let nofd = u64_body(&msg.body).is_none_or(|v| v & VRING_NOFD != 0);
                if let (false, Some(mut f)) = (nofd, msg.files.first()) {
                    if let Err(e) = f.write_all(&1u64.to_ne_bytes()) {
                        warn!("cannot kick the new kick eventfd: {e}");
                    }
                }
                Ok(Verdict::Forward(msg))
            }
            _ => Ok(Verdict::Forward(msg)),
        }
    }
}
