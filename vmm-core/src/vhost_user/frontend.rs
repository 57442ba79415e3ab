//! One vhost-user connection: connect (retrying while the backend starts),
//! take ownership, negotiate features and protocol features.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;

/// `VHOST_USER_F_PROTOCOL_FEATURES`: a vhost-user bit in the features word.
pub const F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// Protocol features splitvm can use when the backend offers them.
pub fn wanted_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::RESET_DEVICE
        | VhostUserProtocolFeatures::BACKEND_REQ
        | VhostUserProtocolFeatures::INFLIGHT_SHMFD
}

/// How long a backend may take to answer while connecting.
const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(5);
/// How long any later request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The most queues any device may have; bounds the frontend's index checks.
const MAX_QUEUES: u64 = 64;

/// Errors on a backend's control socket.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    #[error("backend socket {path}: not accepting connections after {waited:?}: {source}")]
    Connect {
        path: String,
        waited: Duration,
        #[source]
        source: std::io::Error,
    },
    #[error("backend socket {path}: {reason}")]
    Channel { path: String, reason: String },
    #[error("backend socket {path}: ring address {gpa:#x} is outside guest memory")]
    BadRingAddress { path: String, gpa: u64 },
    #[error("backend socket {path}: {what} failed: {source}")]
    Request {
        path: String,
        what: &'static str,
        #[source]
        source: vhost::Error,
    },
}

/// A connected, negotiated backend.
pub struct BackendConnection {
    path: PathBuf,
    fe: Frontend,
    /// Features the backend offers (including `F_PROTOCOL_FEATURES`).
    pub features: u64,
    /// Protocol features both sides agreed on (empty without `F_PROTOCOL_FEATURES`).
    pub protocol: VhostUserProtocolFeatures,
    /// Queues the backend supports (`GET_QUEUE_NUM` with MQ, else unknown).
    pub queue_num: Option<u64>,
}

/// Connects to `path`, retrying with backoff (1 ms doubling to 100 ms) until `limit`.
pub fn connect_with_retry(path: &Path, limit: Duration) -> Result<UnixStream, FrontendError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) if start.elapsed() >= limit => {
                return Err(FrontendError::Connect {
                    path: path.display().to_string(),
                    waited: start.elapsed(),
                    source: e,
                })
            }
            Err(_) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
        }
    }
}

impl BackendConnection {
    /// Connects and negotiates: `SET_OWNER`, `GET_FEATURES`, protocol features.
    pub fn connect(path: &Path, limit: Duration) -> Result<BackendConnection, FrontendError> {
        let stream = connect_with_retry(path, limit)?;
        // A backend that accepts but never answers must not hang the VMM:
        // a short deadline while negotiating, a long one afterwards (a
        // GET_VRING_BASE may wait for the backend to drain).
        let timeouts = stream
            .set_read_timeout(Some(NEGOTIATION_TIMEOUT))
            .and_then(|_| stream.set_write_timeout(Some(NEGOTIATION_TIMEOUT)));
        if let Err(source) = timeouts {
            return Err(FrontendError::Connect {
                path: path.display().to_string(),
                waited: Duration::ZERO,
                source,
            });
        }
        let steady = stream.try_clone();
        let fe = Frontend::from_stream(stream, MAX_QUEUES);
        let mut conn = BackendConnection {
            path: path.to_path_buf(),
            fe,
            features: 0,
            protocol: VhostUserProtocolFeatures::empty(),
            queue_num: None,
        };
        conn.negotiate()?;
        if let Ok(s) = steady {
            let _ = s.set_read_timeout(Some(REQUEST_TIMEOUT));
            let _ = s.set_write_timeout(Some(REQUEST_TIMEOUT));
        }
        Ok(conn)
    }

    fn negotiate(&mut self) -> Result<(), FrontendError> {
        self.fe.set_owner().map_err(self.err("SET_OWNER"))?;
        self.features = self.fe.get_features().map_err(self.err("GET_FEATURES"))?;
        if self.features & F_PROTOCOL_FEATURES != 0 {
            let offered = self
                .fe
                .get_protocol_features()
                .map_err(self.err("GET_PROTOCOL_FEATURES"))?;
            let agreed = offered & wanted_protocol_features();
            self.fe
                .set_protocol_features(agreed)
                .map_err(self.err("SET_PROTOCOL_FEATURES"))?;
            self.protocol = agreed;
            if agreed.contains(VhostUserProtocolFeatures::MQ) {
                self.queue_num = Some(self.fe.get_queue_num().map_err(self.err("GET_QUEUE_NUM"))?);
            }
            if agreed.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                self.fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
        }
        log::info!(
            "{}: backend features {:#x}, protocol features {:?}, queues {:?}",
            self.path.display(),
            self.features,
            self.protocol,
            self.queue_num
        );
        Ok(())
    }

    /// Maps a vhost error to a [`FrontendError`] naming this socket and the request.
    pub fn err(&self, what: &'static str) -> impl FnOnce(vhost::Error) -> FrontendError + '_ {
        move |source| FrontendError::Request {
            path: self.path.display().to_string(),
            what,
            source,
        }
    }

    pub fn has(&self, f: VhostUserProtocolFeatures) -> bool {
        self.protocol.contains(f)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying frontend, for the vring and config requests.
    pub fn frontend_mut(&mut self) -> &mut Frontend {
        &mut self.fe
    }

    pub fn frontend(&self) -> &Frontend {
        &self.fe
    }
}
