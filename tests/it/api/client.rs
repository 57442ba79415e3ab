//! A minimal HTTP/1.1 client for the API tests: raw bytes in, the parsed
//! answer out, and calls checked against `docs/api.yaml`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::spec::{Operations, Spec};

/// An answer as it came off the socket.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The `error` of a JSON error body.
    pub fn error(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("error body not JSON ({e}): {}", self.text()));
        v["error"].as_str().expect("error field").to_string()
    }
}

pub fn parse_reply(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {:?}", String::from_utf8_lossy(raw)));
    let head = std::str::from_utf8(&raw[..split]).expect("head is UTF-8");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
    let status = status_line[9..12].parse().expect("status code");
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').expect("header line");
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let body = raw[split + 4..].to_vec();
    let r = Reply {
        status,
        headers,
        body,
    };
    if let Some(n) = r.header("content-length") {
        assert_eq!(n.parse::<usize>().unwrap(), r.body.len(), "Content-Length");
    }
    r
}

/// Writes `bytes` (write errors ignored: the server may answer and close
/// first), optionally half-closes, and reads the answer until EOF.
pub fn exchange(sock: &Path, bytes: &[u8], half_close: bool) -> Reply {
    let mut s = UnixStream::connect(sock).expect("connect to the API socket");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(bytes);
    if half_close {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the answer");
    parse_reply(&raw)
}

/// One well-formed request.
pub fn call(sock: &Path, method: &str, path: &str, body: Option<&str>) -> Reply {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    exchange(sock, req.as_bytes(), false)
}

/// Calls the API and checks the answer against the spec; records the
/// operation in `seen`.
pub fn checked(
    spec: &Spec,
    seen: &mut Operations,
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Reply {
    let r = call(sock, method, path, body);
    let op = spec.check(method, path, r.status, r.header("content-type"), &r.body);
    seen.insert(op);
    r
}
