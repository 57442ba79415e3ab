//! Command-line arguments every backend takes (`#[command(flatten)]`).

use std::path::PathBuf;

use clap::Args;
use log::LevelFilter;

use crate::listener::{self, ListenError, ListenOn};

/// Arguments shared by every splitvm backend.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct CommonArgs {
    /// Path of the vhost-user unix socket to listen on (a stale one is replaced).
    #[arg(long, value_name = "PATH", conflicts_with = "socket_fd")]
    pub socket_path: Option<PathBuf>,

    /// An inherited, listening unix socket to serve instead of a path (its
    /// path is never removed). Without either flag, systemd socket
    /// activation (LISTEN_FDS=1, LISTEN_PID, fd 3) is used.
    #[arg(long, value_name = "N")]
    pub socket_fd: Option<i32>,

    /// Log level (error, warn, info, debug, trace, off); `RUST_LOG` overrides it.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: LevelFilter,

    /// Sandbox (namespaces, Landlock, no capabilities, seccomp): `off` is for debugging only.
    #[arg(long, value_name = "on|off", value_enum, default_value = "on")]
    pub sandbox: crate::sandbox::Mode,

    /// Unix socket serving this process's I/O counters as one JSON line per
    /// connection. Default: `<socket-path>.metrics`; none with an inherited
    /// socket unless given.
    #[arg(long, value_name = "PATH")]
    pub metrics_socket: Option<PathBuf>,
}

impl CommonArgs {
    /// Where to listen: `--socket-path`, `--socket-fd`, or socket activation.
    pub fn listen(&self) -> Result<ListenOn, ListenError> {
        listener::resolve(self.socket_path.clone(), self.socket_fd)
    }

    /// Where to serve the I/O counters: `--metrics-socket`, else
    /// `<socket-path>.metrics`, else nowhere (an inherited socket).
    pub fn metrics_path(&self) -> Option<PathBuf> {
        self.metrics_socket.clone().or_else(|| {
            self.socket_path
                .as_deref()
                .map(crate::metrics::default_path)
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Wrap {
        #[command(flatten)]
        common: CommonArgs,
    }

    #[test]
    fn common_args_take_a_path_or_an_fd() {
        let w =
            Wrap::try_parse_from(["x", "--socket-path", "/tmp/s", "--log-level", "debug"]).unwrap();
        assert_eq!(w.common.listen().unwrap(), ListenOn::Path("/tmp/s".into()));
        assert_eq!(w.common.log_level, LevelFilter::Debug);
        assert_eq!(w.common.sandbox, crate::sandbox::Mode::On, "on by default");
        let w = Wrap::try_parse_from(["x", "--socket-path", "/s", "--sandbox", "off"]).unwrap();
        assert_eq!(w.common.sandbox, crate::sandbox::Mode::Off);
        assert!(Wrap::try_parse_from(["x", "--socket-path", "/s", "--sandbox", "no"]).is_err());
        let w = Wrap::try_parse_from(["x", "--log-level", "warn", "--socket-fd", "3"]).unwrap();
        assert_eq!(w.common.listen().unwrap(), ListenOn::Fd(3));
        let both = Wrap::try_parse_from(["x", "--socket-fd", "3", "--socket-path", "/s"]);
        assert!(both.is_err(), "the two exclude each other");
    }

    #[test]
    fn metrics_socket_follows_the_socket_path_unless_given() {
        let w = Wrap::try_parse_from(["x", "--socket-path", "/r/b.sock"]).unwrap();
        assert_eq!(w.common.metrics_path(), Some("/r/b.sock.metrics".into()));
        let w = Wrap::try_parse_from(["x", "--socket-fd", "3"]).unwrap();
        assert_eq!(w.common.metrics_path(), None, "inherited: none by default");
        let w = Wrap::try_parse_from(["x", "--socket-fd", "3", "--metrics-socket", "/m"]).unwrap();
        assert_eq!(w.common.metrics_path(), Some("/m".into()));
    }
}
