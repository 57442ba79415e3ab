//! The input backend's event-socket line protocol: every line of the input
//! parsed against every profile's capabilities, with the touch state
//! carried from line to line as the event socket does, and any resulting
//! status line rendered.

use splitvm_input::json::{self, Command, TouchState};
use splitvm_input::profiles::Profile;

/// Fuzz body: `data` as newline-separated lines (invalid UTF-8 is replaced,
/// as a reader would see it).
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for profile in [
        Profile::Keyboard,
        Profile::Mouse,
        Profile::Tablet,
        Profile::Touch,
    ] {
        let caps = profile.capabilities(None);
        let mut touch = TouchState::default();
        for (n, line) in text.split('\n').enumerate() {
            match json::parse_line(line, &caps, &mut touch) {
                Ok(Command::Events(evs)) => {
                    for ev in evs {
                        let _ = json::status_line(ev);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = json::error_line(&e, n as u64);
                }
            }
        }
    }
}
