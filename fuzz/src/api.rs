//! The API server's request path: the bytes go into one end of a
//! socketpair, the other end is served by `api::http::serve_connection` (head
//! parsing, limits, body, routing, JSON bodies) against a VMM stand-in with
//! two devices; the answer must be an HTTP/1.1 status line.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vmm_core::api::http::{self, Limits};
use vmm_core::api::{ApiError, BackendState, DeviceInfo, Metrics, VmInfo, VmState, VmmControl};

/// A VMM that answers everything and changes nothing.
struct Stub;

fn device(name: &str, kind: &str) -> DeviceInfo {
    DeviceInfo {
        name: name.into(),
        kind: kind.into(),
        socket: PathBuf::from(format!("/run/splitvm/{name}.sock")),
        backend_pid: Some(1),
        state: BackendState::Connected,
        offered_features: 1 << 32,
        negotiated_features: 1 << 32,
        reconnects: 0,
        link_up: (kind == "net").then_some(true),
    }
}

impl VmmControl for Stub {
    fn info(&self) -> VmInfo {
        VmInfo {
            state: VmState::Running,
            vcpus: 1,
            memory_bytes: 1 << 27,
            kernel: PathBuf::from("/boot/vmlinuz"),
            cmdline: "console=ttyS0".into(),
            uptime_ms: 1,
            pid: 1,
        }
    }
    fn pause(&self) -> Result<(), ApiError> {
        Ok(())
    }
    fn resume(&self) -> Result<(), ApiError> {
        Err(ApiError::Conflict("not paused".into()))
    }
    fn shutdown(&self) -> Result<(), ApiError> {
        Ok(())
    }
    fn kill(&self) -> Result<(), ApiError> {
        Ok(())
    }
    fn devices(&self) -> Vec<DeviceInfo> {
        vec![device("blk0", "blk"), device("net0", "net")]
    }
    fn swap(&self, device: &str, socket: &Path) -> Result<(), ApiError> {
        if socket.as_os_str().is_empty() {
            return Err(ApiError::BadRequest(format!("{device}: empty socket")));
        }
        Ok(())
    }
    fn set_link(&self, device: &str, _up: bool) -> Result<(), ApiError> {
        if device == "net0" {
            Ok(())
        } else {
            Err(ApiError::BadRequest("not a net device".into()))
        }
    }
    fn metrics(&self) -> Metrics {
        Metrics::default()
    }
}

/// Fuzz body: `data` is everything the client sends before closing its
/// write side.
pub fn run(data: &[u8]) {
    let Ok((mut client, server)) = UnixStream::pair() else {
        return;
    };
    let limits = Limits {
        request_timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    // The server reads until the request is whole or the client's EOF, so
    // the client writes everything first (bounded by the fuzzer's max_len,
    // far below the socket buffer) and then closes its side.
    if client.write_all(data).is_err() {
        return;
    }
    let _ = client.shutdown(Shutdown::Write);
    http::serve_connection(server, &Stub, &limits);
    let mut answer = Vec::new();
    let _ = client.read_to_end(&mut answer);
    // Only a client that sent nothing gets no answer.
    assert!(
        (data.is_empty() && answer.is_empty()) || answer.starts_with(b"HTTP/1.1 "),
        "not an HTTP answer: {:?}",
        String::from_utf8_lossy(&answer)
    );
}
