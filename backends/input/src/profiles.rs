//! Synthetic devices for `--profile`: what each one tells the guest it is
//! and can report. Events come from the JSON event socket.

use crate::codes::{
    self, ABS_MT_POSITION_X, ABS_MT_POSITION_Y, ABS_MT_SLOT, ABS_MT_TRACKING_ID, ABS_X, ABS_Y,
    BTN_LEFT, BTN_MIDDLE, BTN_RIGHT, BTN_TOOL_FINGER, BTN_TOUCH, BUS_VIRTUAL, INPUT_PROP_DIRECT,
    LED_CAPSL, LED_NUML, LED_SCROLLL, REL_HWHEEL, REL_WHEEL, REL_X, REL_Y,
};
use crate::input::{AbsInfo, Capabilities, DevIds, EV_KEY, EV_LED, EV_REL};

/// Vendor id of the synthetic devices ("SV").
pub const VENDOR: u16 = 0x5356;
/// Largest coordinate of the absolute axes (tablet and touch screen).
pub const ABS_MAX: i32 = 32767;
/// Multitouch slots of the touch screen.
pub const TOUCH_SLOTS: i32 = 10;
/// Largest `ABS_MT_TRACKING_ID`.
pub const TRACKING_ID_MAX: i32 = 65535;

/// A synthetic device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// Keyboard: keys, LEDs (num, caps, scroll lock).
    Keyboard,
    /// Relative mouse: three buttons, X/Y, wheels.
    Mouse,
    /// Absolute tablet: three buttons, X/Y in 0..=32767, wheel.
    Tablet,
    /// Multitouch screen: 10 slots, direct input, X/Y in 0..=32767.
    Touch,
}

impl Profile {
    /// Lower-case name (`keyboard`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Profile::Keyboard => "keyboard",
            Profile::Mouse => "mouse",
            Profile::Tablet => "tablet",
            Profile::Touch => "touch",
        }
    }

    /// What the device tells the guest. `name` overrides the default
    /// `splitvm <profile>`.
    pub fn capabilities(self, name: Option<&str>) -> Capabilities {
        let product = match self {
            Profile::Keyboard => 1,
            Profile::Mouse => 2,
            Profile::Tablet => 3,
            Profile::Touch => 4,
        };
        let mut c = Capabilities {
            name: name.map_or_else(|| format!("splitvm {}", self.name()), str::to_string),
            serial: format!("splitvm-input-{}", self.name()),
            ids: DevIds {
                bustype: BUS_VIRTUAL,
                vendor: VENDOR,
                product,
                version: 1,
            },
            ..Default::default()
        };
        let full = AbsInfo::range(0, ABS_MAX);
        match self {
            Profile::Keyboard => {
                for k in codes::keyboard_keys() {
                    c.set(EV_KEY, k);
                }
                for l in [LED_NUML, LED_CAPSL, LED_SCROLLL] {
                    c.set(EV_LED, l);
                }
            }
            Profile::Mouse => {
                for b in [BTN_LEFT, BTN_RIGHT, BTN_MIDDLE] {
                    c.set(EV_KEY, b);
                }
                for r in [REL_X, REL_Y, REL_WHEEL, REL_HWHEEL] {
                    c.set(EV_REL, r);
                }
            }
            Profile::Tablet => {
                for b in [BTN_LEFT, BTN_RIGHT, BTN_MIDDLE] {
                    c.set(EV_KEY, b);
                }
                c.set_abs(ABS_X, full);
                c.set_abs(ABS_Y, full);
                c.set(EV_REL, REL_WHEEL);
            }
            Profile::Touch => {
                c.set(EV_KEY, BTN_TOUCH);
                c.set(EV_KEY, BTN_TOOL_FINGER);
                c.set_abs(ABS_X, full);
                c.set_abs(ABS_Y, full);
                c.set_abs(ABS_MT_SLOT, AbsInfo::range(0, TOUCH_SLOTS - 1));
                c.set_abs(ABS_MT_TRACKING_ID, AbsInfo::range(0, TRACKING_ID_MAX));
                c.set_abs(ABS_MT_POSITION_X, full);
                c.set_abs(ABS_MT_POSITION_Y, full);
                c.set_prop(INPUT_PROP_DIRECT);
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::{KEY_A, KEY_CAPSLOCK};
    use crate::input::{test_bit, EV_ABS};

    #[test]
    fn profiles_report_what_they_promise() {
        let k = Profile::Keyboard.capabilities(None);
        assert_eq!(k.name, "splitvm keyboard");
        assert!(k.supports(EV_KEY, KEY_A) && k.supports(EV_KEY, KEY_CAPSLOCK));
        assert!(k.supports(EV_LED, LED_CAPSL));
        assert!(!k.supports(EV_REL, REL_X));
        let m = Profile::Mouse.capabilities(Some("m"));
        assert_eq!(m.name, "m");
        assert!(m.supports(EV_REL, REL_Y) && m.supports(EV_KEY, BTN_LEFT));
        let t = Profile::Touch.capabilities(None);
        assert_eq!(t.abs[&ABS_MT_SLOT], AbsInfo::range(0, 9));
        assert_eq!(t.abs[&ABS_MT_POSITION_X].max, ABS_MAX);
        assert!(test_bit(&t.props, INPUT_PROP_DIRECT));
        let tab = Profile::Tablet.capabilities(None);
        assert!(tab.props.is_empty());
        assert!(tab.supports(EV_ABS, ABS_Y));
    }
}
