//! Command line of `splitvm-input` and its validation into [`Config`].

use std::path::PathBuf;

use clap::Parser;
use splitvm_backends::cli::CommonArgs;

use crate::profiles::Profile;
use crate::{Config, Source};

/// splitvm vhost-user input backend: passes a host evdev device through,
/// or serves a synthetic device fed from a JSON event socket.
///
/// `splitvm-input send --event-socket PATH [JSON...]` sends events to a
/// running backend's event socket (see `splitvm-input send --help`).
#[derive(Parser, Debug)]
#[command(name = "splitvm-input", version)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Host evdev device to pass through (`/dev/input/eventN`).
    #[arg(long, value_name = "PATH", conflicts_with = "profile")]
    pub evdev: Option<PathBuf>,
    /// Take exclusive use of the evdev device (EVIOCGRAB).
    #[arg(long, requires = "evdev")]
    pub grab: bool,
    /// Synthetic device to serve instead of an evdev device.
    #[arg(long, value_enum, value_name = "PROFILE")]
    pub profile: Option<Profile>,
    /// Unix socket of newline-delimited JSON events (with --profile).
    #[arg(long, value_name = "PATH", requires = "profile")]
    pub event_socket: Option<PathBuf>,
    /// Device name the guest sees (with --profile; default "splitvm <profile>").
    #[arg(long, value_name = "NAME", requires = "profile")]
    pub name: Option<String>,
    /// Events kept while the guest has no buffers; past it whole oldest reports are dropped.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_queued_events: usize,
}

/// Invalid arguments.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// No socket to listen on, or an unusable activation environment.
    #[error("{0}")]
    Listen(String),
    /// Neither source given.
    #[error("one of --evdev PATH or --profile NAME --event-socket PATH is required")]
    NoSource,
    /// A profile without its event socket.
    #[error("--profile needs --event-socket PATH")]
    NoEventSocket,
    /// Name too long for the config space.
    #[error("--name is {0} bytes; at most 128 fit")]
    Name(usize),
    /// Queue bound out of range.
    #[error("--max-queued-events must be 1..=1048576, got {0}")]
    MaxQueued(usize),
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(a: Args) -> Result<Self, Self::Error> {
        let listen = a
            .common
            .listen()
            .map_err(|e| ConfigError::Listen(e.to_string()))?;
        if !(1..=1 << 20).contains(&a.max_queued_events) {
            return Err(ConfigError::MaxQueued(a.max_queued_events));
        }
        if let Some(n) = &a.name {
            if n.len() > crate::input::CFG_PAYLOAD {
                return Err(ConfigError::Name(n.len()));
            }
        }
        let source = match (a.evdev, a.profile, a.event_socket) {
            (Some(path), None, _) => Source::Evdev { path, grab: a.grab },
            (None, Some(profile), Some(event_socket)) => Source::Profile {
                profile,
                event_socket,
                name: a.name,
            },
            (None, Some(_), None) => return Err(ConfigError::NoEventSocket),
            _ => return Err(ConfigError::NoSource),
        };
        Ok(Config {
            metrics: a.common.metrics_path(),
            listen,
            sandbox: a.common.sandbox,
            source,
            max_queued_events: a.max_queued_events,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Config, ConfigError> {
        let mut v = vec!["splitvm-input", "--socket-path", "/s"];
        v.extend_from_slice(extra);
        Config::try_from(Args::try_parse_from(v).unwrap())
    }

    #[test]
    fn config_sources() {
        let c = parse(&["--evdev", "/dev/input/event3", "--grab"]).unwrap();
        assert_eq!(
            c.source,
            Source::Evdev {
                path: "/dev/input/event3".into(),
                grab: true
            }
        );
        let c = parse(&["--profile", "touch", "--event-socket", "/e"]).unwrap();
        assert!(matches!(
            c.source,
            Source::Profile {
                profile: Profile::Touch,
                ..
            }
        ));
        assert_eq!(c.max_queued_events, 1024);
    }

    #[test]
    fn config_rejects_bad_combinations() {
        assert_eq!(parse(&[]), Err(ConfigError::NoSource));
        assert_eq!(
            parse(&["--profile", "mouse"]),
            Err(ConfigError::NoEventSocket)
        );
        assert_eq!(
            parse(&["--evdev", "/x", "--max-queued-events", "0"]),
            Err(ConfigError::MaxQueued(0))
        );
        let base = ["splitvm-input", "--socket-path", "/s"];
        for bad in [
            &["--grab"][..],
            &["--evdev", "/x", "--profile", "mouse"],
            &["--event-socket", "/e"],
            &["--profile", "joystick"],
        ] {
            let v: Vec<&str> = base.iter().chain(bad).copied().collect();
            assert!(Args::try_parse_from(v).is_err(), "{bad:?}");
        }
    }
}
