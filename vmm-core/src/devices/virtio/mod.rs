//! Virtio devices as the VMM sees them: a [`VirtioDevice`] (features, config
//! space, queue activation) behind a transport. Only virtio-mmio exists; a
//! PCI transport would drive the same trait.

pub mod mmio;

use vmm_sys_util::eventfd::EventFd;

/// Virtio device ids (virtio 1.2, 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_INPUT: u32 = 18;

/// `VIRTIO_F_VERSION_1`.
pub const F_VERSION_1: u64 = 1 << 32;

/// One virtqueue as the driver configured it (guest physical addresses).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueConfig {
    pub size: u16,
    pub ready: bool,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

/// What the transport hands a device when the driver sets DRIVER_OK.
pub struct Activation<'a> {
    pub features: u64,
    pub queues: &'a [QueueConfig],
    /// Per-queue eventfds the guest's notify writes signal (ioeventfds).
    pub kicks: &'a [EventFd],
    /// The eventfd that raises the device's interrupt (an irqfd).
    pub call: &'a EventFd,
}

/// Errors from a device behind a transport.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DeviceError(pub String);

/// A virtio device model.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// Features offered to the driver.
    fn features(&self) -> u64;
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> Vec<u16>;
    fn read_config(&mut self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver set DRIVER_OK: start serving the queues.
    fn activate(&mut self, act: Activation<'_>) -> Result<(), DeviceError>;
    /// The driver reset the device (status 0): stop serving.
    fn reset(&mut self);
    /// Gives the device a way to raise config-change interrupts.
    fn set_config_notifier(&mut self, _notifier: mmio::ConfigNotifier) {}
    /// For code that knows the concrete device (reconnect, swap).
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}
