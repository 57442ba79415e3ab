//! `splitvm ctl`: a client of the management API (`docs/api.yaml`) on the
//! VMM's unix socket. A plain `UnixStream`, one HTTP/1.1 request per
//! connection, and the answer read until the server closes. [`run`] returns
//! what to print; `main.rs` prints it.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Subcommand, ValueEnum};
use serde::de::DeserializeOwned;

use crate::api::routes::{ErrorBody, LinkRequest, SwapRequest};
use crate::api::{BackendState, DeviceInfo, Metrics, VmInfo, VmState};

/// Largest answer the client reads.
const MAX_RESPONSE: u64 = 16 << 20;

/// Talk to a running splitvm through its API socket.
#[derive(clap::Args, Debug, Clone)]
pub struct CtlArgs {
    /// The socket given to `splitvm run --api-socket`.
    #[arg(long)]
    pub api_socket: PathBuf,
    /// Print the API's JSON (or Prometheus text) as it came.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for an answer (a swap waits for the new backend).
    #[arg(long, global = true, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum CtlCommand {
    /// The VM's state, size, kernel and uptime.
    Info,
    /// Stop the vCPUs.
    Pause,
    /// Run paused vCPUs again.
    Resume,
    /// Stop the devices' queues, then end the VMM with status 0.
    Shutdown,
    /// End the VMM at once.
    Kill,
    /// The devices and their backends.
    Devices,
    /// Move a device to the backend listening on another socket.
    Swap {
        /// Device name (`blk0`, `net0`...).
        device: String,
        /// Socket of the new backend.
        #[arg(long)]
        socket: PathBuf,
    },
    /// Set a net device's link state as the guest sees it.
    Link {
        /// Device name (`net0`...).
        device: String,
        state: LinkState,
    },
    /// Device and vCPU counters (`--json`: JSON; `--prometheus`: Prometheus text).
    Metrics {
        /// Print the Prometheus text exposition of `GET /metrics`.
        #[arg(long)]
        prometheus: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LinkState {
    Up,
    Down,
}

/// Errors of `splitvm ctl`; each is one line.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot connect to API socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("talking to the API: {0}")]
    Io(#[source] io::Error),
    #[error("no answer from the API within {0:?}")]
    Timeout(Duration),
    #[error("the API answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("bad answer from the API: {0}")]
    BadResponse(String),
}

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// Percent-encodes a path segment (everything but RFC 3986 unreserved).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Sends one request and reads the whole answer. An answer of zero bytes
/// (the server went away) is `Ok(None)`.
pub fn request(
    socket: &std::path::Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Option<HttpResponse>, CtlError> {
    let mut s = UnixStream::connect(socket).map_err(|source| CtlError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    s.set_read_timeout(Some(timeout)).map_err(CtlError::Io)?;
    s.set_write_timeout(Some(timeout)).map_err(CtlError::Io)?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(b) = body {
        let _ = write!(
            req,
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        );
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    s.write_all(&bytes).map_err(CtlError::Io)?;
    let mut raw = Vec::new();
    match s.take(MAX_RESPONSE + 1).read_to_end(&mut raw) {
        Ok(_) => {}
        // The VMM ended (kill) before or while answering.
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset && raw.is_empty() => return Ok(None),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            return Err(CtlError::Timeout(timeout))
        }
        Err(e) => return Err(CtlError::Io(e)),
    }
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.len() as u64 > MAX_RESPONSE {
        return Err(CtlError::BadResponse(format!(
            "larger than {MAX_RESPONSE} bytes"
        )));
    }
    parse_response(&raw).map(Some)
}

/// Parses a whole HTTP/1.1 answer (the server closes after it).
pub fn parse_response(raw: &[u8]) -> Result<HttpResponse, CtlError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err(CtlError::BadResponse(
                "connection closed inside the head".into(),
            ))
        }
        Err(e) => return Err(CtlError::BadResponse(e.to_string())),
    };
    let status = resp
        .code
        .ok_or_else(|| CtlError::BadResponse("no status code".into()))?;
    let mut content_type = None;
    let mut length = None;
    for h in resp.headers.iter() {
        let value = String::from_utf8_lossy(h.value).trim().to_string();
        if h.name.eq_ignore_ascii_case("content-type") {
            content_type = Some(value);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| CtlError::BadResponse(format!("bad Content-Length {value:?}")))?,
            );
        }
    }
    let mut body = raw[head_len..].to_vec();
    if let Some(n) = length {
        if body.len() < n {
            return Err(CtlError::BadResponse(format!(
                "body of {} bytes; Content-Length says {n}",
                body.len()
            )));
        }
        body.truncate(n);
    }
    Ok(HttpResponse {
        status,
        content_type,
        body,
    })
}

/// Turns a non-2xx answer into [`CtlError::Api`] with the API's message.
fn check(resp: HttpResponse) -> Result<HttpResponse, CtlError> {
    if (200..300).contains(&resp.status) {
        return Ok(resp);
    }
    let message = match serde_json::from_slice::<ErrorBody>(&resp.body) {
        Ok(e) => e.error,
        Err(_) => String::from_utf8_lossy(&resp.body).trim().to_string(),
    };
    Err(CtlError::Api {
        status: resp.status,
        message,
    })
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, CtlError> {
    serde_json::from_slice(body).map_err(|e| CtlError::BadResponse(e.to_string()))
}

fn state_name(s: VmState) -> &'static str {
    match s {
        VmState::Running => "running",
        VmState::Paused => "paused",
        VmState::ShuttingDown => "shutting down",
    }
}

fn human_info(i: &VmInfo) -> String {
    format!(
        "state    {}\nvcpus    {}\nmemory   {} MiB\nkernel   {}\ncmdline  {}\nuptime   {:.1} s\npid      {}\n",
        state_name(i.state),
        i.vcpus,
        i.memory_bytes >> 20,
        i.kernel.display(),
        i.cmdline,
        i.uptime_ms as f64 / 1000.0,
        i.pid
    )
}

fn human_devices(ds: &[DeviceInfo]) -> String {
    let mut out = format!(
        "{:<10} {:<6} {:<12} {:>8} {:>10} {:<5} SOCKET\n",
        "NAME", "KIND", "STATE", "PID", "RECONNECTS", "LINK"
    );
    for d in ds {
        let state = match d.state {
            BackendState::Connected => "connected",
            BackendState::Reconnecting => "reconnecting",
        };
        let pid = d.backend_pid.map_or("-".to_string(), |p| p.to_string());
        let link = match d.link_up {
            Some(true) => "up",
            Some(false) => "down",
            None => "-",
        };
        let _ = writeln!(
            out,
            "{:<10} {:<6} {:<12} {:>8} {:>10} {:<5} {}",
            d.name,
            d.kind,
            state,
            pid,
            d.reconnects,
            link,
            d.socket.display()
        );
    }
    out
}

fn human_metrics(m: &Metrics) -> String {
    // `-`: the backend exports no counters.
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    let mut out = format!(
        "{:<10} {:>12} {:>10} {:>10} {:>8} {:>14} {:>14} {:>9}\n",
        "DEVICE",
        "REQUESTS",
        "IN_FLIGHT",
        "RECONNECTS",
        "ERRORS",
        "BYTES_READ",
        "BYTES_WRITTEN",
        "IO_ERRORS"
    );
    for d in &m.devices {
        let _ = writeln!(
            out,
            "{:<10} {:>12} {:>10} {:>10} {:>8} {:>14} {:>14} {:>9}",
            d.name,
            d.requests,
            d.in_flight,
            d.reconnects,
            d.errors,
            opt(d.bytes_read),
            opt(d.bytes_written),
            opt(d.io_errors)
        );
    }
    let _ = writeln!(
        out,
        "\n{:<10} {:>12} {:>10} {:>10}",
        "VCPU", "IO_EXITS", "MMIO_EXITS", "OTHER"
    );
    for v in &m.vcpus {
        let _ = writeln!(
            out,
            "{:<10} {:>12} {:>10} {:>10}",
            v.id, v.io_exits, v.mmio_exits, v.other_exits
        );
    }
    out
}

fn body_text(resp: &HttpResponse) -> String {
    let mut s = String::from_utf8_lossy(&resp.body).into_owned();
    if !s.is_empty() && !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, CtlError> {
    serde_json::to_vec(v).map_err(|e| CtlError::BadResponse(e.to_string()))
}

/// Runs one `splitvm ctl` command; returns what to print on stdout.
pub fn run(args: &CtlArgs) -> Result<String, CtlError> {
    let sock = args.api_socket.as_path();
    let timeout = Duration::from_secs(args.timeout);
    let get = |path: &str| -> Result<HttpResponse, CtlError> {
        request(sock, "GET", path, None, timeout)?
            .ok_or_else(|| CtlError::BadResponse("the VMM closed the connection".into()))
            .and_then(check)
    };
    let put = |path: &str, body: Option<Vec<u8>>, ends_vmm: bool| -> Result<(), CtlError> {
        match request(sock, "PUT", path, body.as_deref(), timeout)? {
            Some(resp) => check(resp).map(|_| ()),
            // kill and shutdown may end the VMM before it answers.
            None if ends_vmm => Ok(()),
            None => Err(CtlError::BadResponse(
                "the VMM closed the connection".into(),
            )),
        }
    };
    let done = |msg: &str| {
        if args.json {
            String::new()
        } else {
            format!("{msg}\n")
        }
    };
    Ok(match &args.command {
        CtlCommand::Info => {
            let r = get("/vm")?;
            if args.json {
                body_text(&r)
            } else {
                human_info(&decode(&r.body)?)
            }
        }
        CtlCommand::Pause => {
            put("/vm/pause", None, false)?;
            done("paused")
        }
        CtlCommand::Resume => {
            put("/vm/resume", None, false)?;
            done("resumed")
        }
        CtlCommand::Shutdown => {
            put("/vm/shutdown", None, true)?;
            done("shutting down")
        }
        CtlCommand::Kill => {
            put("/vm/kill", None, true)?;
            done("killed")
        }
        CtlCommand::Devices => {
            let r = get("/devices")?;
            if args.json {
                body_text(&r)
            } else {
                human_devices(&decode::<Vec<DeviceInfo>>(&r.body)?)
            }
        }
        CtlCommand::Swap { device, socket } => {
            let body = to_json(&SwapRequest {
                socket: socket.clone(),
            })?;
            put(
                &format!("/devices/{}/swap", encode_segment(device)),
                Some(body),
                false,
            )?;
            done(&format!("{device}: now served by {}", socket.display()))
        }
        CtlCommand::Link { device, state } => {
            let up = *state == LinkState::Up;
            let body = to_json(&LinkRequest { up })?;
            put(
                &format!("/devices/{}/link", encode_segment(device)),
                Some(body),
                false,
            )?;
            done(&format!(
                "{device}: link {}",
                if up { "up" } else { "down" }
            ))
        }
        CtlCommand::Metrics { prometheus: true } => body_text(&get("/metrics")?),
        CtlCommand::Metrics { prometheus: false } => {
            let r = get("/metrics.json")?;
            if args.json {
                body_text(&r)
            } else {
                human_metrics(&decode(&r.body)?)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_encode() {
        assert_eq!(encode_segment("blk0"), "blk0");
        assert_eq!(encode_segment("a/b c%"), "a%2Fb%20c%25");
    }

    #[test]
    fn responses_parse() {
        let r = parse_response(
            b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"error\":\"x\"}",
        )
        .unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        match check(r) {
            Err(CtlError::Api { status, message }) => {
                assert_eq!((status, message.as_str()), (404, "x"))
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
        assert!(parse_response(b"garbage").is_err());
        let r = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert!(check(r).is_ok());
    }
}
