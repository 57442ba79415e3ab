//! Sending `VHOST_USER_BACKEND_CONFIG_CHANGE_MSG` to the frontend, and the
//! message hook ([`NetIntercept`]) that makes it possible.
//!
//! vhost 0.18's `Backend` (the handle vhost-user-backend passes to
//! `set_backend_req_fd`) forwards shared-object and shmem requests only:
//! its `handle_config_change` is the trait default (`ENOSYS`) and its socket
//! is private. So splitvm-net sits behind the serve loop's message proxy and
//! keeps a duplicate of the channel when `SET_BACKEND_REQ_FD` passes. The
//! config-change message has no body and no NEED_REPLY flag, so nothing is
//! ever read from the channel and the crate (which never sends on it for
//! this device) cannot interleave with it.
//!
//! The same hook deals with `SET_VRING_ENABLE` sent before `SET_FEATURES`
//! has acked `VHOST_USER_F_PROTOCOL_FEATURES`: QEMU 7.2's virtio-net does
//! that (`virtio_net_set_queue_pairs` when the driver sets its features,
//! before `vhost_dev_start`) and never enables the rings again, while
//! vhost-user-backend 0.24 answers it with `InactiveFeature` and drops the
//! connection. The first such message is replaced by a `SET_FEATURES` that
//! acks only `PROTOCOL_FEATURES` (QEMU sends the enables several times, so
//! the replaced one is repeated); the later ones then pass, and the real
//! `SET_FEATURES` overrides the stand-in.

use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};

use log::{debug, info};
use splitvm_backends::proxy::{Intercept, Message, Verdict};

use crate::device::NetDevice;

/// `VHOST_USER_BACKEND_CONFIG_CHANGE_MSG`.
const CONFIG_CHANGE_MSG: u32 = 2;
/// Header flag: protocol version 1.
const VERSION_1: u32 = 0x1;
/// `VHOST_USER_SET_FEATURES`.
const SET_FEATURES: u32 = 2;
/// `VHOST_USER_SET_VRING_ENABLE`.
const SET_VRING_ENABLE: u32 = 18;
/// `VHOST_USER_SET_BACKEND_REQ_FD`.
const SET_BACKEND_REQ_FD: u32 = 21;
/// `VHOST_USER_F_PROTOCOL_FEATURES`.
const PROTOCOL_FEATURES: u64 = 1 << 30;

/// Errors using the channel.
#[derive(Debug, thiserror::Error)]
pub enum BackendReqError {
    /// Writing the message failed.
    #[error("backend request channel: {0}")]
    Io(#[source] io::Error),
}

/// The frontend's backend request channel (a duplicate of the socket the
/// crate's `Backend` holds).
pub struct ConfigChangeSender {
    sock: File,
}

impl ConfigChangeSender {
    /// Tells the frontend the config space changed.
    pub fn config_changed(&self) -> Result<(), BackendReqError> {
        let mut msg = [0u8; 12];
        msg[..4].copy_from_slice(&CONFIG_CHANGE_MSG.to_le_bytes());
        msg[4..8].copy_from_slice(&VERSION_1.to_le_bytes());
        (&self.sock).write_all(&msg).map_err(BackendReqError::Io)
    }
}

/// The per-connection message hook (see the module docs).
pub struct NetIntercept {
    dev: Arc<NetDevice>,
    features_set: AtomicBool,
}

impl NetIntercept {
    /// A hook for one connection to `dev`.
    pub fn new(dev: Arc<NetDevice>) -> Self {
        NetIntercept {
            dev,
            features_set: AtomicBool::new(false),
        }
    }
}

impl Intercept for NetIntercept {
    fn on_request(&self, msg: Message) -> io::Result<Verdict> {
        log::trace!(
            "frontend request {} ({} bytes)",
            msg.request,
            msg.body.len()
        );
        match msg.request {
            SET_FEATURES => {
                let f = msg
                    .body
                    .get(..8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map_or(0, u64::from_le_bytes);
                self.features_set
                    .store(f & PROTOCOL_FEATURES != 0, Ordering::SeqCst);
            }
            SET_VRING_ENABLE if !self.features_set.load(Ordering::SeqCst) => {
                if msg.need_reply() {
                    debug!("SET_VRING_ENABLE before SET_FEATURES: acknowledged, not forwarded");
                    let body = 0u64.to_le_bytes().to_vec();
                    return Ok(Verdict::Handled(Some(Message::reply(
                        msg.request,
                        body,
                        Vec::new(),
                    ))));
                }
                // Ack PROTOCOL_FEATURES in its place (no reply expected for
                // either), so that the daemon accepts the SET_VRING_ENABLEs
                // that follow; QEMU repeats them, and the real SET_FEATURES
                // replaces this one.
                debug!("SET_VRING_ENABLE before SET_FEATURES: sending SET_FEATURES(PROTOCOL_FEATURES) first");
                self.features_set.store(true, Ordering::SeqCst);
                return Ok(Verdict::Forward(Message {
                    request: SET_FEATURES,
                    flags: VERSION_1,
                    body: PROTOCOL_FEATURES.to_le_bytes().to_vec(),
                    files: Vec::new(),
                }));
            }
            SET_BACKEND_REQ_FD => {
                if let Some(f) = msg.files.first() {
                    let sock = f.try_clone()?;
                    info!("backend request channel set up: link changes are notified");
                    *self
                        .dev
                        .backend_req
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) =
                        Some(ConfigChangeSender { sock });
                }
            }
            _ => {}
        }
        Ok(Verdict::Forward(msg))
    }
}
