//! The API's router: a request's method, target and body in, a response out.
//! No sockets here (`http.rs` does those), so every edge case is a plain
//! function call and a fuzz target can drive it directly.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::metrics::render_prometheus;
use super::{ApiError, VmmControl};

/// `Content-Type` of JSON bodies.
pub const JSON: &str = "application/json";
/// `Content-Type` of `GET /metrics` (Prometheus text exposition format).
pub const PROMETHEUS: &str = "text/plain; version=0.0.4";

/// A unix socket path must fit `sockaddr_un.sun_path` with its NUL.
const SUN_PATH_MAX: usize = 107;

/// `PUT /devices/{name}/swap` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwapRequest {
    /// Socket of the backend that takes the device over.
    pub socket: PathBuf,
}

/// `PUT /devices/{name}/link` body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkRequest {
    pub up: bool,
}

/// Every error body: `{"error": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub error: String,
}

/// What the router answers; `http.rs` writes it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// `None` for an empty body (204).
    pub content_type: Option<&'static str>,
    pub body: Vec<u8>,
    /// The `Allow` header of a 405.
    pub allow: Option<&'static str>,
}

impl Response {
    /// 204 No Content.
    pub fn no_content() -> Response {
        Response {
            status: 204,
            content_type: None,
            body: Vec::new(),
            allow: None,
        }
    }

    /// `status` with `{"error": message}`.
    pub fn error(status: u16, message: impl Into<String>) -> Response {
        Response::json(
            status,
            &ErrorBody {
                error: message.into(),
            },
        )
    }

    /// `status` with `value` as JSON.
    pub fn json<T: Serialize>(status: u16, value: &T) -> Response {
        match serde_json::to_vec(value) {
            Ok(body) => Response {
                status,
                content_type: Some(JSON),
                body,
                allow: None,
            },
            Err(e) => {
                log::error!("api: serializing a response: {e}");
                Response {
                    status: 500,
                    content_type: Some(JSON),
                    body: br#"{"error":"cannot serialize the response"}"#.to_vec(),
                    allow: None,
                }
            }
        }
    }

    fn method_not_allowed(method: &str, allow: &'static str) -> Response {
        Response {
            allow: Some(allow),
            ..Response::error(405, format!("method {method} not allowed; use {allow}"))
        }
    }
}

/// A VM action: `PUT /vm/{action}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VmAction {
    Pause,
    Resume,
    Shutdown,
    Kill,
}

/// The resource a target names, before the method is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Route {
    Vm,
    VmAction(VmAction),
    Devices,
    Device(String),
    Swap(String),
    Link(String),
    Metrics,
    MetricsJson,
}

impl Route {
    /// The one method the route takes.
    fn method(&self) -> &'static str {
        match self {
            Route::Vm | Route::Devices | Route::Device(_) | Route::Metrics | Route::MetricsJson => {
                "GET"
            }
            Route::VmAction(_) | Route::Swap(_) | Route::Link(_) => "PUT",
        }
    }
}

/// Why a target names no route.
#[derive(Debug, PartialEq, Eq)]
enum TargetError {
    /// 404.
    NoRoute,
    /// 400: bad percent-encoding or not an origin-form path.
    Malformed(String),
}

/// Decodes `%XX` escapes of one path segment.
fn percent_decode(seg: &str) -> Result<String, TargetError> {
    let bytes = seg.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| TargetError::Malformed(format!("bad percent-escape in {seg:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| TargetError::Malformed(format!("path segment {seg:?} is not UTF-8")))
}

fn parse_target(target: &str) -> Result<Route, TargetError> {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let Some(rest) = path.strip_prefix('/') else {
        return Err(TargetError::Malformed(format!(
            "request target {target:?} is not an absolute path"
        )));
    };
    let segs: Vec<&str> = rest.split('/').collect();
    let route = match segs.as_slice() {
        ["vm"] => Route::Vm,
        ["vm", "pause"] => Route::VmAction(VmAction::Pause),
        ["vm", "resume"] => Route::VmAction(VmAction::Resume),
        ["vm", "shutdown"] => Route::VmAction(VmAction::Shutdown),
        ["vm", "kill"] => Route::VmAction(VmAction::Kill),
        ["devices"] => Route::Devices,
        ["devices", name] if !name.is_empty() => Route::Device(percent_decode(name)?),
        ["devices", name, "swap"] if !name.is_empty() => Route::Swap(percent_decode(name)?),
        ["devices", name, "link"] if !name.is_empty() => Route::Link(percent_decode(name)?),
        ["metrics"] => Route::Metrics,
        ["metrics.json"] => Route::MetricsJson,
        _ => return Err(TargetError::NoRoute),
    };
    Ok(route)
}

/// Status of an [`ApiError`]. `Failed` is 502 where a backend did the
/// failing (`backend` set: swap, link) and 500 otherwise.
pub fn status_of(err: &ApiError, backend: bool) -> u16 {
    match err {
        ApiError::BadRequest(_) => 400,
        ApiError::NotFound(_) => 404,
        ApiError::Conflict(_) => 409,
        ApiError::Failed(_) if backend => 502,
        ApiError::Failed(_) => 500,
    }
}

fn from_result(r: Result<(), ApiError>, backend: bool) -> Response {
    match r {
        Ok(()) => Response::no_content(),
        Err(e) => Response::error(status_of(&e, backend), e.to_string()),
    }
}

/// Parses a JSON body into `T`. Errors name the offending field (the path
/// from `serde_path_to_error`), so `{"up": "yes"}` says `up: invalid type`.
pub fn parse_body<T: DeserializeOwned>(body: &[u8], example: &str) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest(format!(
            "missing JSON body; expected {example}"
        )));
    }
    // serde takes `[true]` for a struct too; the API takes only objects.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::BadRequest(format!(
            "body must be a JSON object: {example}"
        )));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::BadRequest(format!("body is not valid JSON: {inner}"))
        } else if path == "." {
            ApiError::BadRequest(format!("{inner}; expected {example}"))
        } else {
            ApiError::BadRequest(format!("field `{path}`: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::BadRequest(format!("trailing data after the JSON body: {e}")))?;
    Ok(value)
}

/// Checks the socket a swap names before the VMM tries it: a path that is
/// not a listening place for a backend is the client's mistake (400), not a
/// backend failure.
fn check_socket_path(p: &Path) -> Result<(), ApiError> {
    let len = p.as_os_str().len();
    if len == 0 {
        return Err(ApiError::BadRequest("field `socket`: empty path".into()));
    }
    if len > SUN_PATH_MAX {
        return Err(ApiError::BadRequest(format!(
            "field `socket`: {len} bytes; a unix socket path holds at most {SUN_PATH_MAX}"
        )));
    }
    if p.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(ApiError::BadRequest(
            "field `socket`: path contains a NUL byte".into(),
        ));
    }
    match std::fs::metadata(p) {
        Ok(md) if md.file_type().is_socket() => Ok(()),
        Ok(_) => Err(ApiError::BadRequest(format!(
            "field `socket`: {} is not a unix socket",
            p.display()
        ))),
        Err(e) => Err(ApiError::BadRequest(format!(
            "field `socket`: {}: {e}",
            p.display()
        ))),
    }
}

/// The device whose backend listens on `socket` now, if any.
fn socket_user(control: &dyn VmmControl, socket: &Path) -> Option<String> {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let want = canon(socket);
    control
        .devices()
        .into_iter()
        .find(|d| canon(&d.socket) == want)
        .map(|d| d.name)
}

fn require_device(control: &dyn VmmControl, name: &str) -> Result<(), Response> {
    if control.devices().iter().any(|d| d.name == name) {
        Ok(())
    } else {
        Err(Response::error(404, format!("no device named {name:?}")))
    }
}

/// Answers one request. `target` is the request-target as sent (a query
/// string is ignored); `body` is the whole body.
pub fn handle(control: &dyn VmmControl, method: &str, target: &str, body: &[u8]) -> Response {
    let route = match parse_target(target) {
        Ok(r) => r,
        Err(TargetError::NoRoute) => {
            return Response::error(404, format!("no such path: {target}"));
        }
        Err(TargetError::Malformed(m)) => return Response::error(400, m),
    };
    let allow = route.method();
    if method != allow {
        return Response::method_not_allowed(method, allow);
    }
    match route {
        Route::Vm => Response::json(200, &control.info()),
        Route::VmAction(a) => from_result(
            match a {
                VmAction::Pause => control.pause(),
                VmAction::Resume => control.resume(),
                VmAction::Shutdown => control.shutdown(),
                VmAction::Kill => control.kill(),
            },
            false,
        ),
        Route::Devices => Response::json(200, &control.devices()),
        Route::Device(name) => match control.devices().into_iter().find(|d| d.name == name) {
            Some(d) => Response::json(200, &d),
            None => Response::error(404, format!("no device named {name:?}")),
        },
        Route::Swap(name) => {
            if let Err(r) = require_device(control, &name) {
                return r;
            }
            let req: SwapRequest = match parse_body(body, r#"{"socket": "/path/to/backend.sock"}"#)
            {
                Ok(r) => r,
                Err(e) => return from_result(Err(e), true),
            };
            if let Err(e) = check_socket_path(&req.socket) {
                return from_result(Err(e), true);
            }
            if let Some(user) = socket_user(control, &req.socket) {
                // A backend serves one frontend at a time: connecting again
                // would only wait.
                return Response::error(
                    409,
                    format!("{} already serves {user}", req.socket.display()),
                );
            }
            from_result(control.swap(&name, &req.socket), true)
        }
        Route::Link(name) => {
            if let Err(r) = require_device(control, &name) {
                return r;
            }
            match parse_body::<LinkRequest>(body, r#"{"up": true}"#) {
                Ok(req) => from_result(control.set_link(&name, req.up), true),
                Err(e) => from_result(Err(e), true),
            }
        }
        Route::Metrics => Response {
            status: 200,
            content_type: Some(PROMETHEUS),
            body: render_prometheus(&control.metrics()).into_bytes(),
            allow: None,
        },
        Route::MetricsJson => Response::json(200, &control.metrics()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(parse_target("/vm"), Ok(Route::Vm));
        assert_eq!(parse_target("/vm?x=1"), Ok(Route::Vm));
        assert_eq!(
            parse_target("/devices/blk%30/swap"),
            Ok(Route::Swap("blk0".into()))
        );
        assert_eq!(parse_target("/vm/"), Err(TargetError::NoRoute));
        assert_eq!(parse_target("/devices//swap"), Err(TargetError::NoRoute));
        assert!(matches!(
            parse_target("/devices/%zz"),
            Err(TargetError::Malformed(_))
        ));
        assert!(matches!(
            parse_target("/devices/%ff"),
            Err(TargetError::Malformed(_))
        ));
        assert!(matches!(parse_target("*"), Err(TargetError::Malformed(_))));
        assert!(matches!(
            parse_target("/devices/%4"),
            Err(TargetError::Malformed(_))
        ));
    }

    #[test]
    fn body_errors_name_the_field() {
        let e = parse_body::<LinkRequest>(br#"{"up": "yes"}"#, "x").unwrap_err();
        assert!(e.to_string().starts_with("field `up`: invalid type"), "{e}");
        let e = parse_body::<LinkRequest>(br#"{"up": true, "down": 1}"#, "x").unwrap_err();
        assert!(e.to_string().contains("unknown field `down`"), "{e}");
        let e = parse_body::<LinkRequest>(br#"{}"#, "x").unwrap_err();
        assert!(e.to_string().contains("missing field `up`"), "{e}");
        let e = parse_body::<LinkRequest>(b"{", "x").unwrap_err();
        assert!(e.to_string().contains("not valid JSON"), "{e}");
        let e = parse_body::<LinkRequest>(br#"{"up": true} x"#, "x").unwrap_err();
        assert!(e.to_string().contains("trailing"), "{e}");
        let e = parse_body::<LinkRequest>(b"[true]", "x").unwrap_err();
        assert!(e.to_string().contains("JSON object"), "{e}");
        assert_eq!(
            parse_body::<LinkRequest>(br#" {"up": false} "#, "x"),
            Ok(LinkRequest { up: false })
        );
    }

    #[test]
    fn socket_paths_are_checked() {
        assert!(check_socket_path(Path::new("")).is_err());
        assert!(check_socket_path(Path::new("/nonexistent/x.sock")).is_err());
        assert!(check_socket_path(Path::new("/")).is_err());
        assert!(check_socket_path(&PathBuf::from("/".repeat(200))).is_err());
    }
}
