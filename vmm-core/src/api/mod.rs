//! The management API's view of the VMM. [`VmmControl`] is what the HTTP
//! server (`http.rs`) calls; the VMM implements it (`control.rs`). The
//! types are the JSON bodies described in `docs/api.yaml`.

pub mod http;
pub mod metrics;
pub mod routes;
mod slots;

use std::path::PathBuf;

pub mod control;

use serde::{Deserialize, Serialize};

/// Run state of the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Running,
    Paused,
    ShuttingDown,
}

/// `GET /vm`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    pub state: VmState,
    pub vcpus: u8,
    pub memory_bytes: u64,
    pub kernel: PathBuf,
    pub cmdline: String,
    pub uptime_ms: u64,
    pub pid: u32,
}

/// Connection state of a device's backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendState {
    Connected,
    /// The backend went away; splitvm waits for a new one.
    Reconnecting,
}

/// `GET /devices`: one entry per device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// `blk0`, `net0`, `input0`...
    pub name: String,
    /// `blk`, `net` or `input`.
    pub kind: String,
    pub socket: PathBuf,
    /// The backend's process id (`SO_PEERCRED`), when connected.
    pub backend_pid: Option<u32>,
    pub state: BackendState,
    /// Virtio features the backend offers.
    pub offered_features: u64,
    /// Virtio features the driver accepted (0 before it started the device).
    pub negotiated_features: u64,
    pub reconnects: u64,
    /// Link state for net devices as the VMM reports it to the guest.
    pub link_up: Option<bool>,
}

/// Per-device counters the VMM can see from the rings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceMetrics {
    pub name: String,
    /// Requests completed (advance of the used rings).
    pub requests: u64,
    /// Requests the guest made available and the backend has not completed.
    pub in_flight: u64,
    pub reconnects: u64,
    /// Failed vhost-user requests to the backend.
    pub errors: u64,
    /// From the backend's metrics socket (`<socket>.metrics`; `None` when
    /// it has none, e.g. a third-party backend): requests it completed.
    pub backend_requests: Option<u64>,
    /// Bytes the backend read from guest buffers (block writes, net TX).
    pub bytes_read: Option<u64>,
    /// Bytes the backend wrote into guest buffers (block reads, net RX,
    /// input events).
    pub bytes_written: Option<u64>,
    /// Requests the backend completed with an error status.
    pub io_errors: Option<u64>,
}

/// Per-vCPU exit counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuMetrics {
    pub id: u8,
    pub io_exits: u64,
    pub mmio_exits: u64,
    pub other_exits: u64,
}

/// `GET /metrics.json`; `GET /metrics` renders the same as Prometheus text.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    pub devices: Vec<DeviceMetrics>,
    pub vcpus: Vec<VcpuMetrics>,
}

/// An API error: the HTTP status it maps to and a message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApiError {
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 400.
    #[error("{0}")]
    BadRequest(String),
    /// 409: the request does not fit the VM's state.
    #[error("{0}")]
    Conflict(String),
    /// 500/502: the VMM or a backend failed.
    #[error("{0}")]
    Failed(String),
}

/// What the management API can ask of a running VMM.
pub trait VmmControl: Send + Sync {
    fn info(&self) -> VmInfo;
    fn pause(&self) -> Result<(), ApiError>;
    fn resume(&self) -> Result<(), ApiError>;
    /// Stops the devices' queues (backends drain), then ends the VMM with status 0.
    fn shutdown(&self) -> Result<(), ApiError>;
    /// Ends the VMM at once (status 0 is not promised).
    fn kill(&self) -> Result<(), ApiError>;
    fn devices(&self) -> Vec<DeviceInfo>;
    /// Moves `device` to the backend listening on `socket`.
    fn swap(&self, device: &str, socket: &std::path::Path) -> Result<(), ApiError>;
    /// Sets a net device's link state as the guest sees it.
    fn set_link(&self, device: &str, up: bool) -> Result<(), ApiError>;
    fn metrics(&self) -> Metrics;
}
