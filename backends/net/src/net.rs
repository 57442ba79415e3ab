//! The virtio-net model without sockets or `unsafe`: feature bits, the
//! config space, the `virtio_net_hdr` and its checks, control-queue
//! commands, and the drop counters. Fuzz targets link this file directly.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// `VIRTIO_NET_F_CSUM`: the driver may send frames with partial checksums.
pub const F_CSUM: u32 = 0;
/// `VIRTIO_NET_F_GUEST_CSUM`: the driver accepts frames with partial checksums.
pub const F_GUEST_CSUM: u32 = 1;
/// `VIRTIO_NET_F_MTU`.
pub const F_MTU: u32 = 3;
/// `VIRTIO_NET_F_MAC`.
pub const F_MAC: u32 = 5;
/// `VIRTIO_NET_F_GUEST_TSO4`.
pub const F_GUEST_TSO4: u32 = 7;
/// `VIRTIO_NET_F_GUEST_TSO6`.
pub const F_GUEST_TSO6: u32 = 8;
/// `VIRTIO_NET_F_HOST_TSO4`.
pub const F_HOST_TSO4: u32 = 11;
/// `VIRTIO_NET_F_HOST_TSO6`.
pub const F_HOST_TSO6: u32 = 12;
/// `VIRTIO_NET_F_MRG_RXBUF`.
pub const F_MRG_RXBUF: u32 = 15;
/// `VIRTIO_NET_F_STATUS`.
pub const F_STATUS: u32 = 16;
/// `VIRTIO_NET_F_CTRL_VQ`.
pub const F_CTRL_VQ: u32 = 17;
/// `VIRTIO_NET_F_MQ`.
pub const F_MQ: u32 = 22;
/// `VIRTIO_F_VERSION_1`.
pub const F_VERSION_1: u32 = 32;

/// `VIRTIO_NET_S_LINK_UP`.
pub const S_LINK_UP: u16 = 1;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`.
pub const HDR_F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`.
pub const HDR_F_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_ECN`.
pub const GSO_ECN: u8 = 0x80;

/// `virtio_net_hdr_mrg_rxbuf`: the header with `num_buffers`, used when
/// `VERSION_1` or `MRG_RXBUF` is negotiated (and always on the tap).
pub const HDR_LEN: usize = 12;
/// The legacy header without `num_buffers`.
pub const HDR_LEN_LEGACY: usize = 10;
/// Ethernet header.
pub const ETH_HLEN: usize = 14;
/// Largest frame (without the virtio header) accepted in either direction:
/// a 64 KiB GSO packet plus an Ethernet and a VLAN header.
pub const MAX_FRAME: usize = 65535 + ETH_HLEN + 4;
/// Config space size: mac[6], status, max_virtqueue_pairs, mtu.
pub const CONFIG_LEN: usize = 12;

/// `TUN_F_CSUM`: the tap may pass partial checksums.
pub const TUN_F_CSUM: u32 = 0x01;
/// `TUN_F_TSO4`.
pub const TUN_F_TSO4: u32 = 0x02;
/// `TUN_F_TSO6`.
pub const TUN_F_TSO6: u32 = 0x04;

/// Control queue: classes, commands and acks.
pub mod ctrl {
    /// `VIRTIO_NET_CTRL_RX`.
    pub const CLASS_RX: u8 = 0;
    /// `VIRTIO_NET_CTRL_MAC`.
    pub const CLASS_MAC: u8 = 1;
    /// `VIRTIO_NET_CTRL_MQ`.
    pub const CLASS_MQ: u8 = 4;
    /// `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`.
    pub const MQ_VQ_PAIRS_SET: u8 = 0;
    /// `VIRTIO_NET_OK`.
    pub const OK: u8 = 0;
    /// `VIRTIO_NET_ERR`.
    pub const ERR: u8 = 1;
}

/// Why a frame or a chain was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    /// TX chain shorter than the virtio header.
    #[error("chain of {0} bytes has no complete virtio-net header")]
    ShortHeader(usize),
    /// TX frame shorter than an Ethernet header.
    #[error("frame of {0} bytes is shorter than an Ethernet header")]
    Runt(usize),
    /// Frame larger than [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds {MAX_FRAME}")]
    TooBig(usize),
    /// `csum_start + csum_offset` outside the frame.
    #[error("checksum at {start}+{offset} lies outside a {len}-byte frame")]
    BadCsum {
        /// `csum_start`.
        start: u16,
        /// `csum_offset`.
        offset: u16,
        /// Frame length.
        len: usize,
    },
    /// NEEDS_CSUM without the CSUM feature.
    #[error("partial checksum but CSUM was not negotiated")]
    CsumNotNegotiated,
    /// A GSO type that was not negotiated or does not exist.
    #[error("GSO type {0:#x} not negotiated")]
    BadGsoType(u8),
    /// A GSO header whose lengths make no sense.
    #[error("GSO header hdr_len {hdr_len} gso_size {gso_size} for a {len}-byte frame")]
    BadGso {
        /// `hdr_len`.
        hdr_len: u16,
        /// `gso_size`.
        gso_size: u16,
        /// Frame length.
        len: usize,
    },
    /// A descriptor chain the device cannot use (wrong direction, loop, too long).
    #[error("malformed descriptor chain: {0}")]
    BadChain(&'static str),
    /// An RX chain too small for the frame (without merged buffers).
    #[error("RX buffer of {have} bytes cannot hold a {need}-byte frame")]
    RxBufferTooSmall {
        /// Capacity of the chain.
        have: usize,
        /// Header plus frame.
        need: usize,
    },
}

/// A `virtio_net_hdr` (little-endian in memory).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `HDR_F_*`.
    pub flags: u8,
    /// `GSO_*`.
    pub gso_type: u8,
    /// Length of the headers to replicate per segment.
    pub hdr_len: u16,
    /// Segment payload size.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where the checksum goes, from `csum_start`.
    pub csum_offset: u16,
    /// Buffers this packet spans (RX with merged buffers).
    pub num_buffers: u16,
}

impl VnetHdr {
    /// Parses the first 10 or 12 bytes of `b` (`num_buffers` is 0 if absent).
    pub fn parse(b: &[u8]) -> Option<Self> {
        let le = |i: usize| b.get(i..i + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
        Some(VnetHdr {
            flags: *b.first()?,
            gso_type: *b.get(1)?,
            hdr_len: le(2)?,
            gso_size: le(4)?,
            csum_start: le(6)?,
            csum_offset: le(8)?,
            num_buffers: le(10).unwrap_or(0),
        })
    }

    /// The 12-byte form.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }
}

/// Length of the virtio header for the negotiated `features`.
pub fn hdr_len(features: u64) -> usize {
    if features & ((1 << F_VERSION_1) | (1 << F_MRG_RXBUF)) != 0 {
        HDR_LEN
    } else {
        HDR_LEN_LEGACY
    }
}

/// Checks a TX packet: `hdr` as the driver wrote it and a frame of
/// `frame_len` bytes, against the negotiated `features`. What passes is
/// safe to hand the tap.
pub fn check_tx(hdr: &VnetHdr, frame_len: usize, features: u64) -> Result<(), NetError> {
    let has = |f: u32| features & (1u64 << f) != 0;
    if frame_len < ETH_HLEN {
        return Err(NetError::Runt(frame_len));
    }
    if frame_len > MAX_FRAME {
        return Err(NetError::TooBig(frame_len));
    }
    if hdr.flags & HDR_F_NEEDS_CSUM != 0 {
        if !has(F_CSUM) {
            return Err(NetError::CsumNotNegotiated);
        }
        let end = usize::from(hdr.csum_start) + usize::from(hdr.csum_offset) + 2;
        if end > frame_len {
            return Err(NetError::BadCsum {
                start: hdr.csum_start,
                offset: hdr.csum_offset,
                len: frame_len,
            });
        }
    }
    let gso = hdr.gso_type & !GSO_ECN;
    let ok_type = match gso {
        GSO_NONE => hdr.gso_type & GSO_ECN == 0,
        GSO_TCPV4 => has(F_HOST_TSO4),
        GSO_TCPV6 => has(F_HOST_TSO6),
        _ => false,
    };
    // ECN is never offered.
    if !ok_type || hdr.gso_type & GSO_ECN != 0 {
        return Err(NetError::BadGsoType(hdr.gso_type));
    }
    if gso != GSO_NONE {
        let bad = hdr.gso_size == 0
            || usize::from(hdr.hdr_len) > frame_len
            || hdr.flags & HDR_F_NEEDS_CSUM == 0;
        if bad {
            return Err(NetError::BadGso {
                hdr_len: hdr.hdr_len,
                gso_size: hdr.gso_size,
                len: frame_len,
            });
        }
    }
    Ok(())
}

/// The tap offload flags (`TUN_F_*`) matching the guest features the
/// driver acked: what the tap may hand us for the guest.
pub fn tap_offloads(features: u64) -> u32 {
    let has = |f: u32| features & (1u64 << f) != 0;
    let mut o = 0;
    if has(F_GUEST_CSUM) {
        o |= TUN_F_CSUM;
        if has(F_GUEST_TSO4) {
            o |= TUN_F_TSO4;
        }
        if has(F_GUEST_TSO6) {
            o |= TUN_F_TSO6;
        }
    }
    o
}

/// The config space bytes.
pub fn config_space(mac: [u8; 6], link_up: bool, pairs: u16, mtu: u16) -> [u8; CONFIG_LEN] {
    let mut b = [0u8; CONFIG_LEN];
    b[..6].copy_from_slice(&mac);
    let status = if link_up { S_LINK_UP } else { 0 };
    b[6..8].copy_from_slice(&status.to_le_bytes());
    b[8..10].copy_from_slice(&pairs.to_le_bytes());
    b[10..12].copy_from_slice(&mtu.to_le_bytes());
    b
}

/// What a control command asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtrlCmd {
    /// `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`.
    SetPairs(u16),
    /// RX mode or MAC filter commands: accepted, the tap sees everything.
    Accept,
    /// Anything else.
    Unsupported {
        /// Class.
        class: u8,
        /// Command.
        cmd: u8,
    },
}

/// Parses a control command from the readable bytes of a chain.
pub fn parse_ctrl(out: &[u8]) -> Option<CtrlCmd> {
    let (&class, rest) = out.split_first()?;
    let (&cmd, data) = rest.split_first()?;
    Some(match (class, cmd) {
        (ctrl::CLASS_MQ, ctrl::MQ_VQ_PAIRS_SET) => {
            let v = data.get(..2)?;
            CtrlCmd::SetPairs(u16::from_le_bytes([v[0], v[1]]))
        }
        (ctrl::CLASS_RX | ctrl::CLASS_MAC, _) => CtrlCmd::Accept,
        _ => CtrlCmd::Unsupported { class, cmd },
    })
}

/// Counters of what the backend dropped or passed, shared by all workers
/// and connections; logged at exit.
#[derive(Debug, Default)]
pub struct Counters {
    /// Frames sent to the tap.
    pub tx_frames: AtomicU64,
    /// Frames delivered to the guest.
    pub rx_frames: AtomicU64,
    /// TX packets dropped because the guest's chain or header was bad.
    pub tx_bad: AtomicU64,
    /// TX packets the tap refused.
    pub tx_tap_errors: AtomicU64,
    /// Frames from the tap dropped because the guest had no RX buffers.
    pub rx_no_buffers: AtomicU64,
    /// Frames from the tap dropped because the guest's buffers were bad or too small.
    pub rx_bad_buffers: AtomicU64,
    /// Control commands refused.
    pub ctrl_bad: AtomicU64,
}

impl Counters {
    /// Adds one to `c`.
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        write!(
            f,
            "tx_frames={} rx_frames={} tx_bad={} tx_tap_errors={} rx_no_buffers={} rx_bad_buffers={} ctrl_bad={}",
            g(&self.tx_frames),
            g(&self.rx_frames),
            g(&self.tx_bad),
            g(&self.tx_tap_errors),
            g(&self.rx_no_buffers),
            g(&self.rx_bad_buffers),
            g(&self.ctrl_bad)
        )
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u64 = u64::MAX;

    fn hdr(flags: u8, gso_type: u8, hdr_len: u16, gso_size: u16, cs: u16, co: u16) -> VnetHdr {
        VnetHdr {
            flags,
            gso_type,
            hdr_len,
            gso_size,
            csum_start: cs,
            csum_offset: co,
            num_buffers: 0,
        }
    }

    #[test]
    fn vnet_hdr_round_trip() {
        let h = hdr(1, 1, 54, 1448, 34, 16);
        assert_eq!(VnetHdr::parse(&h.to_bytes()), Some(h));
        assert_eq!(VnetHdr::parse(&[0; 9]), None);
        assert_eq!(VnetHdr::parse(&[0; 10]).map(|h| h.num_buffers), Some(0));
    }

    #[test]
    fn check_tx_accepts_plain_and_offloaded() {
        assert_eq!(check_tx(&VnetHdr::default(), 60, 0), Ok(()));
        assert_eq!(check_tx(&hdr(1, 0, 0, 0, 34, 16), 60, ALL), Ok(()));
        assert_eq!(check_tx(&hdr(1, 1, 54, 1448, 34, 16), 9000, ALL), Ok(()));
    }

    #[test]
    fn check_tx_rejects_lies() {
        let f = ALL;
        assert_eq!(
            check_tx(&VnetHdr::default(), 13, f),
            Err(NetError::Runt(13))
        );
        assert!(matches!(
            check_tx(&VnetHdr::default(), MAX_FRAME + 1, f),
            Err(NetError::TooBig(_))
        ));
        assert!(matches!(
            check_tx(&hdr(1, 0, 0, 0, 50, 9), 60, f),
            Err(NetError::BadCsum { .. })
        ));
        assert!(matches!(
            check_tx(&hdr(1, 0, 0, 0, 0xffff, 0xffff), 60, f),
            Err(NetError::BadCsum { .. })
        ));
        assert_eq!(
            check_tx(&hdr(1, 0, 0, 0, 34, 16), 60, 0),
            Err(NetError::CsumNotNegotiated)
        );
        assert_eq!(
            check_tx(&hdr(1, 3, 54, 100, 34, 6), 600, f),
            Err(NetError::BadGsoType(3))
        );
        assert_eq!(
            check_tx(&hdr(1, 1, 54, 1448, 34, 16), 600, 1 << F_CSUM),
            Err(NetError::BadGsoType(1))
        );
        assert!(matches!(
            check_tx(&hdr(1, 1, 54, 0, 34, 16), 600, f),
            Err(NetError::BadGso { .. })
        ));
        assert!(matches!(
            check_tx(&hdr(1, 1, 5000, 100, 34, 16), 600, f),
            Err(NetError::BadGso { .. })
        ));
    }

    #[test]
    fn ctrl_commands() {
        assert_eq!(parse_ctrl(&[4, 0, 2, 0]), Some(CtrlCmd::SetPairs(2)));
        assert_eq!(parse_ctrl(&[4, 0, 2]), None);
        assert_eq!(parse_ctrl(&[0, 1, 1]), Some(CtrlCmd::Accept));
        assert_eq!(
            parse_ctrl(&[2, 0]),
            Some(CtrlCmd::Unsupported { class: 2, cmd: 0 })
        );
        assert_eq!(parse_ctrl(&[4]), None);
    }

    /// Random headers, lengths, feature sets and control bytes: every
    /// answer is a value, never a panic (a poor man's fuzzer; `net.rs` is
    /// also what a fuzz target would link).
    #[test]
    fn random_guest_input_never_panics() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..200_000 {
            let r = next();
            let b = r.to_le_bytes();
            let mut raw = [0u8; 12];
            raw[..8].copy_from_slice(&b);
            raw[8..].copy_from_slice(&next().to_le_bytes()[..4]);
            let n = (r >> 40) as usize % 13;
            if let Some(h) = VnetHdr::parse(&raw[..n]) {
                let len = (next() % (MAX_FRAME as u64 + 100)) as usize;
                let _ = check_tx(&h, len, next());
            }
            let _ = parse_ctrl(&raw[..n]);
            let _ = tap_offloads(next());
        }
    }

    #[test]
    fn config_and_mac() {
        let m = parse_mac("52:54:00:12:34:56").unwrap();
        assert_eq!(m, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:56:78"), None);
        assert_eq!(parse_mac("52:54:00:12:34:5g"), None);
        let c = config_space(m, true, 2, 1500);
        assert_eq!(&c[6..], &[1, 0, 2, 0, 0xdc, 0x05]);
        assert_eq!(hdr_len(1 << F_VERSION_1), 12);
        assert_eq!(hdr_len(0), 10);
        assert_eq!(tap_offloads(1 << F_GUEST_TSO4), 0);
    }
}
