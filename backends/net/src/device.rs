//! [`NetDevice`]: what every connection shares (taps, MAC, MTU, link state,
//! counters, the backend request channel), the feature bits offered, and
//! the rate limit for guest-triggered warnings.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{info, warn};
use vhost::vhost_user::message::VhostUserVirtioFeatures;

use crate::backend_req::ConfigChangeSender;
use crate::net::{self, Counters};
use crate::tap::Tap;

/// The device: taps and fixed settings, shared by every connection.
pub struct NetDevice {
    /// One tap fd per queue pair.
    pub taps: Vec<Tap>,
    /// MAC in the config space.
    pub mac: [u8; 6],
    /// MTU in the config space (`None`: MTU not offered).
    pub mtu: Option<u16>,
    /// Largest queue size accepted.
    pub queue_size: u16,
    /// Offloads (`TUN_F_*`) the tap accepts.
    pub tap_offloads: u32,
    /// Link state (config `status`).
    pub link_up: AtomicBool,
    /// Drop and pass counters.
    pub counters: Counters,
    /// The current connection's backend request channel, if any.
    pub backend_req: Mutex<Option<ConfigChangeSender>>,
}

impl NetDevice {
    /// Queue pairs.
    pub fn pairs(&self) -> u16 {
        u16::try_from(self.taps.len()).unwrap_or(u16::MAX)
    }

    /// Virtio feature bits offered.
    pub fn features(&self) -> u64 {
        let bit = |b: u32| 1u64 << b;
        let mut f = bit(net::F_VERSION_1)
            | bit(29) // RING_EVENT_IDX
            | bit(28) // RING_INDIRECT_DESC
            | bit(net::F_MAC)
            | bit(net::F_STATUS)
            | bit(net::F_MRG_RXBUF)
            | bit(net::F_CTRL_VQ)
            | bit(net::F_MQ)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if self.mtu.is_some() {
            f |= bit(net::F_MTU);
        }
        if self.tap_offloads & net::TUN_F_CSUM != 0 {
            f |= bit(net::F_CSUM) | bit(net::F_GUEST_CSUM);
            if self.tap_offloads & net::TUN_F_TSO4 != 0 {
                f |= bit(net::F_HOST_TSO4) | bit(net::F_GUEST_TSO4);
            }
            if self.tap_offloads & net::TUN_F_TSO6 != 0 {
                f |= bit(net::F_HOST_TSO6) | bit(net::F_GUEST_TSO6);
            }
        }
        f
    }

    /// Config-space bytes as they are now.
    pub fn config(&self) -> [u8; net::CONFIG_LEN] {
        net::config_space(
            self.mac,
            self.link_up.load(Ordering::SeqCst),
            self.pairs(),
            self.mtu.unwrap_or(1500),
        )
    }

    /// Sets the link state; tells the frontend when it changed. Returns
    /// whether the state changed.
    pub fn set_link(&self, up: bool) -> bool {
        if self.link_up.swap(up, Ordering::SeqCst) == up {
            return false;
        }
        info!("link {}", if up { "up" } else { "down" });
        let ch = self
            .backend_req
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match ch.as_ref() {
            Some(c) => {
                if let Err(e) = c.config_changed() {
                    warn!("cannot notify the frontend of the config change: {e}");
                }
            }
            None => info!(
                "no backend request channel: the frontend sees the link on its next config read"
            ),
        }
        true
    }
}

/// Names of feature bits, for logs.
pub fn feature_names(f: u64) -> String {
    const NAMES: &[(u32, &str)] = &[
        (net::F_CSUM, "CSUM"),
        (net::F_GUEST_CSUM, "GUEST_CSUM"),
        (net::F_MTU, "MTU"),
        (net::F_MAC, "MAC"),
        (net::F_GUEST_TSO4, "GUEST_TSO4"),
        (net::F_GUEST_TSO6, "GUEST_TSO6"),
        (net::F_HOST_TSO4, "HOST_TSO4"),
        (net::F_HOST_TSO6, "HOST_TSO6"),
        (net::F_MRG_RXBUF, "MRG_RXBUF"),
        (net::F_STATUS, "STATUS"),
        (net::F_CTRL_VQ, "CTRL_VQ"),
        (net::F_MQ, "MQ"),
        (28, "RING_INDIRECT_DESC"),
        (29, "RING_EVENT_IDX"),
        (30, "VHOST_USER_PROTOCOL_FEATURES"),
        (net::F_VERSION_1, "VERSION_1"),
    ];
    let mut out: Vec<String> = NAMES
        .iter()
        .filter(|(b, _)| f & (1u64 << b) != 0)
        .map(|(_, n)| (*n).to_string())
        .collect();
    let known = NAMES.iter().fold(0u64, |a, (b, _)| a | (1u64 << b));
    if f & !known != 0 {
        out.push(format!("{:#x}", f & !known));
    }
    out.join(" ")
}

/// Rate limit for guest-triggered warnings.
#[derive(Default)]
pub(crate) struct RateLimit {
    second: AtomicU64,
    count: AtomicU64,
}

impl RateLimit {
    const PER_SECOND: u64 = 10;

    pub(crate) fn allow(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.count.store(0, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed) < Self::PER_SECOND
    }
}
