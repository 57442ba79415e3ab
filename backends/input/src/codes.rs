//! Names of the event types and codes the JSON event socket accepts and
//! prints (`linux/input-event-codes.h`): keys A–Z, digits, common keys,
//! `BTN_*`, `REL_*`, `ABS_*`, `LED_*`. Anything else can be given by number.

use crate::input::{EV_ABS, EV_KEY, EV_LED, EV_MSC, EV_REL, EV_SW, EV_SYN};

/// Event types by name.
pub const TYPES: &[(&str, u16)] = &[
    ("EV_SYN", EV_SYN),
    ("EV_KEY", EV_KEY),
    ("EV_REL", EV_REL),
    ("EV_ABS", EV_ABS),
    ("EV_MSC", EV_MSC),
    ("EV_SW", EV_SW),
    ("EV_LED", EV_LED),
];

/// `(type, name, code)`.
pub const CODES: &[(u16, &str, u16)] = &[
    (EV_KEY, "KEY_ESC", 1),
    (EV_KEY, "KEY_1", 2),
    (EV_KEY, "KEY_2", 3),
    (EV_KEY, "KEY_3", 4),
    (EV_KEY, "KEY_4", 5),
    (EV_KEY, "KEY_5", 6),
    (EV_KEY, "KEY_6", 7),
    (EV_KEY, "KEY_7", 8),
    (EV_KEY, "KEY_8", 9),
    (EV_KEY, "KEY_9", 10),
    (EV_KEY, "KEY_0", 11),
    (EV_KEY, "KEY_MINUS", 12),
    (EV_KEY, "KEY_EQUAL", 13),
    (EV_KEY, "KEY_BACKSPACE", 14),
    (EV_KEY, "KEY_TAB", 15),
    (EV_KEY, "KEY_Q", 16),
    (EV_KEY, "KEY_W", 17),
    (EV_KEY, "KEY_E", 18),
    (EV_KEY, "KEY_R", 19),
    (EV_KEY, "KEY_T", 20),
    (EV_KEY, "KEY_Y", 21),
    (EV_KEY, "KEY_U", 22),
    (EV_KEY, "KEY_I", 23),
    (EV_KEY, "KEY_O", 24),
    (EV_KEY, "KEY_P", 25),
    (EV_KEY, "KEY_LEFTBRACE", 26),
    (EV_KEY, "KEY_RIGHTBRACE", 27),
    (EV_KEY, "KEY_ENTER", 28),
    (EV_KEY, "KEY_LEFTCTRL", 29),
    (EV_KEY, "KEY_A", 30),
    (EV_KEY, "KEY_S", 31),
    (EV_KEY, "KEY_D", 32),
    (EV_KEY, "KEY_F", 33),
    (EV_KEY, "KEY_G", 34),
    (EV_KEY, "KEY_H", 35),
    (EV_KEY, "KEY_J", 36),
    (EV_KEY, "KEY_K", 37),
    (EV_KEY, "KEY_L", 38),
    (EV_KEY, "KEY_SEMICOLON", 39),
    (EV_KEY, "KEY_APOSTROPHE", 40),
    (EV_KEY, "KEY_GRAVE", 41),
    (EV_KEY, "KEY_LEFTSHIFT", 42),
    (EV_KEY, "KEY_BACKSLASH", 43),
    (EV_KEY, "KEY_Z", 44),
    (EV_KEY, "KEY_X", 45),
    (EV_KEY, "KEY_C", 46),
    (EV_KEY, "KEY_V", 47),
    (EV_KEY, "KEY_B", 48),
    (EV_KEY, "KEY_N", 49),
    (EV_KEY, "KEY_M", 50),
    (EV_KEY, "KEY_COMMA", 51),
    (EV_KEY, "KEY_DOT", 52),
    (EV_KEY, "KEY_SLASH", 53),
    (EV_KEY, "KEY_RIGHTSHIFT", 54),
    (EV_KEY, "KEY_KPASTERISK", 55),
    (EV_KEY, "KEY_LEFTALT", 56),
    (EV_KEY, "KEY_SPACE", 57),
    (EV_KEY, "KEY_CAPSLOCK", 58),
    (EV_KEY, "KEY_F1", 59),
    (EV_KEY, "KEY_F2", 60),
    (EV_KEY, "KEY_F3", 61),
    (EV_KEY, "KEY_F4", 62),
    (EV_KEY, "KEY_F5", 63),
    (EV_KEY, "KEY_F6", 64),
    (EV_KEY, "KEY_F7", 65),
    (EV_KEY, "KEY_F8", 66),
    (EV_KEY, "KEY_F9", 67),
    (EV_KEY, "KEY_F10", 68),
    (EV_KEY, "KEY_NUMLOCK", 69),
    (EV_KEY, "KEY_SCROLLLOCK", 70),
    (EV_KEY, "KEY_F11", 87),
    (EV_KEY, "KEY_F12", 88),
    (EV_KEY, "KEY_KPENTER", 96),
    (EV_KEY, "KEY_RIGHTCTRL", 97),
    (EV_KEY, "KEY_RIGHTALT", 100),
    (EV_KEY, "KEY_HOME", 102),
    (EV_KEY, "KEY_UP", 103),
    (EV_KEY, "KEY_PAGEUP", 104),
    (EV_KEY, "KEY_LEFT", 105),
    (EV_KEY, "KEY_RIGHT", 106),
    (EV_KEY, "KEY_END", 107),
    (EV_KEY, "KEY_DOWN", 108),
    (EV_KEY, "KEY_PAGEDOWN", 109),
    (EV_KEY, "KEY_INSERT", 110),
    (EV_KEY, "KEY_DELETE", 111),
    (EV_KEY, "KEY_LEFTMETA", 125),
    (EV_KEY, "KEY_RIGHTMETA", 126),
    (EV_KEY, "BTN_LEFT", 0x110),
    (EV_KEY, "BTN_RIGHT", 0x111),
    (EV_KEY, "BTN_MIDDLE", 0x112),
    (EV_KEY, "BTN_SIDE", 0x113),
    (EV_KEY, "BTN_EXTRA", 0x114),
    (EV_KEY, "BTN_TOOL_PEN", 0x140),
    (EV_KEY, "BTN_TOOL_FINGER", 0x145),
    (EV_KEY, "BTN_TOUCH", 0x14a),
    (EV_KEY, "BTN_TOOL_DOUBLETAP", 0x14d),
    (EV_SYN, "SYN_REPORT", 0),
    (EV_SYN, "SYN_DROPPED", 3),
    (EV_REL, "REL_X", 0),
    (EV_REL, "REL_Y", 1),
    (EV_REL, "REL_HWHEEL", 6),
    (EV_REL, "REL_WHEEL", 8),
    (EV_ABS, "ABS_X", 0),
    (EV_ABS, "ABS_Y", 1),
    (EV_ABS, "ABS_PRESSURE", 24),
    (EV_ABS, "ABS_MT_SLOT", 47),
    (EV_ABS, "ABS_MT_TOUCH_MAJOR", 48),
    (EV_ABS, "ABS_MT_POSITION_X", 53),
    (EV_ABS, "ABS_MT_POSITION_Y", 54),
    (EV_ABS, "ABS_MT_TRACKING_ID", 57),
    (EV_MSC, "MSC_SCAN", 4),
    (EV_LED, "LED_NUML", 0),
    (EV_LED, "LED_CAPSL", 1),
    (EV_LED, "LED_SCROLLL", 2),
];

/// `KEY_A`.
pub const KEY_A: u16 = 30;
/// `KEY_CAPSLOCK`.
pub const KEY_CAPSLOCK: u16 = 58;
/// `BTN_LEFT`.
pub const BTN_LEFT: u16 = 0x110;
/// `BTN_RIGHT`.
pub const BTN_RIGHT: u16 = 0x111;
/// `BTN_MIDDLE`.
pub const BTN_MIDDLE: u16 = 0x112;
/// `BTN_TOUCH`.
pub const BTN_TOUCH: u16 = 0x14a;
/// `BTN_TOOL_FINGER`.
pub const BTN_TOOL_FINGER: u16 = 0x145;
/// `REL_X`.
pub const REL_X: u16 = 0;
/// `REL_Y`.
pub const REL_Y: u16 = 1;
/// `REL_HWHEEL`.
pub const REL_HWHEEL: u16 = 6;
/// `REL_WHEEL`.
pub const REL_WHEEL: u16 = 8;
/// `ABS_X`.
pub const ABS_X: u16 = 0;
/// `ABS_Y`.
pub const ABS_Y: u16 = 1;
/// `ABS_MT_SLOT`.
pub const ABS_MT_SLOT: u16 = 0x2f;
/// `ABS_MT_POSITION_X`.
pub const ABS_MT_POSITION_X: u16 = 0x35;
/// `ABS_MT_POSITION_Y`.
pub const ABS_MT_POSITION_Y: u16 = 0x36;
/// `ABS_MT_TRACKING_ID`.
pub const ABS_MT_TRACKING_ID: u16 = 0x39;
/// `LED_NUML`.
pub const LED_NUML: u16 = 0;
/// `LED_CAPSL`.
pub const LED_CAPSL: u16 = 1;
/// `LED_SCROLLL`.
pub const LED_SCROLLL: u16 = 2;
/// `INPUT_PROP_DIRECT`.
pub const INPUT_PROP_DIRECT: u16 = 1;
/// `BUS_VIRTUAL`.
pub const BUS_VIRTUAL: u16 = 6;

/// The event type called `name`.
pub fn type_by_name(name: &str) -> Option<u16> {
    TYPES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// The name of event type `t`.
pub fn type_name(t: u16) -> Option<&'static str> {
    TYPES.iter().find(|(_, v)| *v == t).map(|(n, _)| *n)
}

/// The code called `name`, with its type.
pub fn code_by_name(name: &str) -> Option<(u16, u16)> {
    CODES
        .iter()
        .find(|(_, n, _)| *n == name)
        .map(|(t, _, c)| (*t, *c))
}

/// The name of `code` of type `t`.
pub fn code_name(t: u16, code: u16) -> Option<&'static str> {
    CODES
        .iter()
        .find(|(ty, _, c)| *ty == t && *c == code)
        .map(|(_, n, _)| *n)
}

/// Every `KEY_*` code of the table (the keyboard profile reports them).
pub fn keyboard_keys() -> impl Iterator<Item = u16> {
    CODES
        .iter()
        .filter(|(t, n, _)| *t == EV_KEY && n.starts_with("KEY_"))
        .map(|(_, _, c)| *c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(code_by_name("KEY_A"), Some((EV_KEY, KEY_A)));
        assert_eq!(code_by_name("KEY_0"), Some((EV_KEY, 11)));
        assert_eq!(code_by_name("KEY_Z"), Some((EV_KEY, 44)));
        assert_eq!(code_name(EV_LED, LED_CAPSL), Some("LED_CAPSL"));
        assert_eq!(type_by_name("EV_ABS"), Some(EV_ABS));
        for (t, n, c) in CODES {
            assert_eq!(code_by_name(n), Some((*t, *c)), "{n}");
        }
    }
}
