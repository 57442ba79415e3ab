//! Command-line arguments every backend takes (`#[command(flatten)]`).

use std::path::PathBuf;

use clap::Args;
use log::LevelFilter;

/// Arguments shared by every splitvm backend.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct CommonArgs {
    /// Path of the vhost-user unix socket to listen on (a stale one is replaced).
    #[arg(long, value_name = "PATH")]
    pub socket_path: PathBuf,

    /// Log level (error, warn, info, debug, trace, off); `RUST_LOG` overrides it.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: LevelFilter,

    /// Sandbox (namespaces, Landlock, no capabilities, seccomp): `off` is for debugging only.
    #[arg(long, value_name = "on|off", value_enum, default_value = "on")]
    pub sandbox: crate::sandbox::Mode,
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
    fn common_args_require_socket_path() {
        assert!(Wrap::try_parse_from(["x"]).is_err());
        let w =
            Wrap::try_parse_from(["x", "--socket-path", "/tmp/s", "--log-level", "debug"]).unwrap();
        assert_eq!(w.common.socket_path, PathBuf::from("/tmp/s"));
        assert_eq!(w.common.log_level, LevelFilter::Debug);
        assert_eq!(w.common.sandbox, crate::sandbox::Mode::On, "on by default");
        let w = Wrap::try_parse_from(["x", "--socket-path", "/s", "--sandbox", "off"]).unwrap();
        assert_eq!(w.common.sandbox, crate::sandbox::Mode::Off);
        assert!(Wrap::try_parse_from(["x", "--socket-path", "/s", "--sandbox", "no"]).is_err());
    }
}
