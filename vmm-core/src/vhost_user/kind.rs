//! What differs between the device types splitvm attaches through
//! vhost-user: type id, config size, and how many queues there are.

use super::frontend::F_PROTOCOL_FEATURES;
use crate::devices::virtio::{TYPE_BLOCK, TYPE_INPUT, TYPE_NET};

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
pub const VIRTIO_F_ACCESS_PLATFORM: u64 = 1 << 33;
/// `VHOST_F_LOG_ALL`: a vhost bit (dirty logging), not a virtio one.
const VHOST_F_LOG_ALL: u64 = 1 << 26;
/// `VIRTIO_F_RING_PACKED`: the frontend reads split rings (where a
/// restarted backend resumes, ring counters), so packed rings stay off.
const VIRTIO_F_RING_PACKED: u64 = 1 << 34;
/// Net features that live in the config space or need the control queue:
/// CTRL_GUEST_OFFLOADS, MTU, MAC, STATUS, CTRL_VQ, CTRL_RX, CTRL_VLAN,
/// CTRL_RX_EXTRA, GUEST_ANNOUNCE, MQ, CTRL_MAC_ADDR, VQ_NOTF_COAL,
/// NOTF_COAL, HASH_REPORT, RSS, SPEED_DUPLEX.
const NET_CONFIG_OR_CTRL: u64 = 1 << 2
    | 1 << 3
    | 1 << 5
    | 1 << 16
    | VIRTIO_NET_F_CTRL_VQ
    | 1 << 18
    | 1 << 19
    | 1 << 20
    | 1 << 21
    | VIRTIO_NET_F_MQ
    | 1 << 23
    | 1 << 52
    | 1 << 53
    | 1 << 57
    | 1 << 60
    | 1 << 63;
/// Queue size offered to the driver; backends accept up to their `--queue-size`.
pub const DEFAULT_QUEUE_SIZE: u16 = 256;

impl DeviceKind {
    /// Short name used for device names (`blk0`) and logs.
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Block => "blk",
            DeviceKind::Net => "net",
            DeviceKind::Input => "input",
        }
    }

    pub fn device_type(self) -> u32 {
        match self {
            DeviceKind::Block => TYPE_BLOCK,
            DeviceKind::Net => TYPE_NET,
            DeviceKind::Input => TYPE_INPUT,
        }
    }

    /// Bytes of config space fetched from the backend.
    pub fn config_size(self) -> u32 {
        match self {
            // virtio_blk_config up to write_zeroes_may_unmap and padding.
            DeviceKind::Block => 60,
            // mac, status, max_virtqueue_pairs, mtu.
            DeviceKind::Net => 12,
            // select, subsel, size, reserved[5], union of 128 bytes.
            DeviceKind::Input => 136,
        }
    }

    /// The features the guest is offered out of the backend's `offered`.
    /// `config` says whether the backend serves the config space
    /// (`VHOST_USER_PROTOCOL_F_CONFIG`). A net backend that does follows
    /// splitvm-net's convention: config space and control queue are the
    /// backend's. One that does not follows QEMU's (DPDK, OVS, ...): both
    /// belong to the frontend, and such backends never look at a control
    /// queue. splitvm has neither of its own, so it hides every feature
    /// that needs them; otherwise the guest reads zeros for MAC, link state
    /// or MTU, and waits forever for the answer to its first control
    /// command (DPDK 22.11 offers MTU, CTRL_VQ, CTRL_RX, MQ, GUEST_ANNOUNCE).
    pub fn guest_features(self, offered: u64, config: bool) -> u64 {
        let mut f = offered
            & !(F_PROTOCOL_FEATURES
                | VIRTIO_F_ACCESS_PLATFORM
                | VHOST_F_LOG_ALL
                | VIRTIO_F_RING_PACKED);
        if self == DeviceKind::Net && !config {
            f &= !NET_CONFIG_OR_CTRL;
        }
        f
    }

    /// The most queues a backend answering `GET_QUEUE_NUM` with
    /// `queue_num` serves. For net devices the answer counts queue pairs
    /// (QEMU's reading; DPDK 22.11 answers 128, its limit of pairs); the
    /// control queue comes on top. Other devices count queues.
    pub fn max_queues(self, queue_num: u64) -> usize {
        let n = usize::try_from(queue_num).unwrap_or(usize::MAX);
        match self {
            DeviceKind::Net => n.saturating_mul(2).saturating_add(1),
            DeviceKind::Block | DeviceKind::Input => n,
        }
    }

    /// Number of queues, from the config space where the device type says so.
    pub fn num_queues(self, config: &[u8], features: u64) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;

    const VERSION_1: u64 = 1 << 32;
    const MRG_RXBUF: u64 = 1 << 15;
    const EVENT_IDX: u64 = 1 << 29;
    const CSUM: u64 = 1;
    const MAC: u64 = 1 << 5;
    const STATUS: u64 = 1 << 16;
    const MTU: u64 = 1 << 3;
    const GUEST_ANNOUNCE: u64 = 1 << 21;

    /// What DPDK 22.11's vhost PMD (Debian's dpdk-testpmd) answered to
    /// `GET_FEATURES` here: CSUM, GUEST_CSUM, MTU, GSO, GUEST_TSO4/6,
    /// GUEST_ECN, GUEST_UFO, HOST_ECN, HOST_UFO, MRG_RXBUF, CTRL_VQ,
    /// CTRL_RX, GUEST_ANNOUNCE, MQ, LOG_ALL, ANY_LAYOUT, INDIRECT_DESC,
    /// EVENT_IDX, PROTOCOL_FEATURES, VERSION_1, RING_PACKED, IN_ORDER; its
    /// protocol features lack CONFIG.
    const DPDK: u64 = 0xd_7c66_e7cb;

    #[test]
    fn net_without_config_hides_config_and_control_queue_features() {
        let f = DeviceKind::Net.guest_features(DPDK, false);
        assert_eq!(f, 0x9_3800_e7c3);
        for bit in [MTU, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MQ, GUEST_ANNOUNCE] {
            assert_ne!(DPDK & bit, 0);
            assert_eq!(f & bit, 0, "bit {bit:#x}");
        }
        assert_eq!(
            f & (VERSION_1 | MRG_RXBUF | EVENT_IDX | CSUM),
            VERSION_1 | MRG_RXBUF | EVENT_IDX | CSUM
        );
        // Hence no control queue: one RX and one TX queue.
        assert_eq!(DeviceKind::Net.num_queues(&[0; 12], f), 2);
    }

    #[test]
    fn net_with_config_keeps_them() {
        let offered = VERSION_1 | MAC | STATUS | MTU | VIRTIO_NET_F_CTRL_VQ | VIRTIO_NET_F_MQ;
        let f = DeviceKind::Net.guest_features(offered | F_PROTOCOL_FEATURES, true);
        assert_eq!(f, offered);
        let mut config = [0u8; 12];
        config[8] = 2; // max_virtqueue_pairs
        assert_eq!(DeviceKind::Net.num_queues(&config, f), 5);
    }

    #[test]
    fn vhost_and_transport_bits_never_reach_the_guest() {
        for kind in [DeviceKind::Block, DeviceKind::Net, DeviceKind::Input] {
            let f = kind.guest_features(u64::MAX, true);
            for bit in [
                F_PROTOCOL_FEATURES,
                VIRTIO_F_ACCESS_PLATFORM,
                VHOST_F_LOG_ALL,
                VIRTIO_F_RING_PACKED,
            ] {
                assert_eq!(f & bit, 0, "{kind:?} bit {bit:#x}");
            }
            assert_ne!(f & VERSION_1, 0);
        }
    }

    #[test]
    fn queue_num_counts_pairs_for_net_only() {
        // DPDK with queues=1 answers 1: RX, TX (and a control queue).
        assert_eq!(DeviceKind::Net.max_queues(1), 3);
        assert!(DeviceKind::Net.max_queues(1) >= DeviceKind::Net.num_queues(&[0; 12], 0));
        assert_eq!(DeviceKind::Block.max_queues(4), 4);
        assert_eq!(DeviceKind::Input.max_queues(2), 2);
        assert_eq!(DeviceKind::Net.max_queues(u64::MAX), usize::MAX);
    }
}
