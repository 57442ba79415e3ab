//! What differs between the device types splitvm attaches through
//! vhost-user: type id, config size, and how many queues there are.

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
