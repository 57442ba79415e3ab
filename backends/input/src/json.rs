//! The event socket's line protocol: one JSON object per line, turned into
//! input events (or a control command). Pure: no sockets.
//!
//! | line | events |
//! |---|---|
//! | `{"type":"EV_KEY","code":"KEY_A","value":1}` | that one event (type/code by name or number) |
//! | `{"key":"KEY_A"}` | press, SYN, release, SYN |
//! | `{"key":"KEY_A","value":1}` | that key event, SYN |
//! | `{"move":[dx,dy]}` | `REL_X`/`REL_Y` (non-zero ones), SYN |
//! | `{"wheel":n}` | `REL_WHEEL`, SYN |
//! | `{"abs":[x,y]}` | `ABS_X`, `ABS_Y`, SYN |
//! | `{"touch":[{"slot":0,"x":..,"y":..},{"slot":1,"up":true}]}` | MT slots, tracking ids, positions, `BTN_TOUCH`, SYN |
//! | `{"ping":V}` | none; the reply is `{"pong":V}` once earlier lines are queued |
//! | `{"stats":true}` | none; the reply is the queue counters |
//!
//! Events the device does not report are refused (the guest would drop them).

use serde_json::{Map, Value};

use crate::codes::{
    self, ABS_MT_POSITION_X, ABS_MT_POSITION_Y, ABS_MT_SLOT, ABS_MT_TRACKING_ID, ABS_X, ABS_Y,
    BTN_TOOL_FINGER, BTN_TOUCH, REL_WHEEL, REL_X, REL_Y,
};
use crate::input::{Capabilities, InputEvent, EV_ABS, EV_KEY, EV_REL, EV_SYN};

/// What one line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Queue these events.
    Events(Vec<InputEvent>),
    /// Reply `{"pong":V}`.
    Ping(Value),
    /// Reply with the queue counters.
    Stats,
}

/// Multitouch state shared by every client of one device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TouchState {
    slots: Vec<Option<i32>>,
    next_id: i32,
}

impl TouchState {
    fn active(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }
}

fn int(v: &Value, what: &str) -> Result<i32, String> {
    v.as_i64()
        .and_then(|n| i32::try_from(n).ok())
        .ok_or_else(|| format!("{what} must be a 32-bit integer, got {v}"))
}

fn u16_of(v: &Value, what: &str) -> Result<u16, String> {
    v.as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| format!("{what} must be a name or a number 0..=65535, got {v}"))
}

fn event_type(v: &Value) -> Result<u16, String> {
    match v {
        Value::String(s) => codes::type_by_name(s).ok_or_else(|| format!("unknown type {s:?}")),
        _ => u16_of(v, "type"),
    }
}

/// A code by name (`KEY_A`, which also fixes its type) or number.
fn event_code(v: &Value, type_: Option<u16>) -> Result<(Option<u16>, u16), String> {
    match v {
        Value::String(s) => {
            let (t, c) = codes::code_by_name(s).ok_or_else(|| format!("unknown code {s:?}"))?;
            if type_.is_some_and(|want| want != t) {
                return Err(format!("{s} is not a code of that type"));
            }
            Ok((Some(t), c))
        }
        _ => Ok((type_, u16_of(v, "code")?)),
    }
}

fn check(caps: &Capabilities, ev: InputEvent) -> Result<InputEvent, String> {
    if caps.supports(ev.type_, ev.code) {
        return Ok(ev);
    }
    let t = codes::type_name(ev.type_).map_or_else(|| ev.type_.to_string(), str::to_string);
    let c = codes::code_name(ev.type_, ev.code).map_or_else(|| ev.code.to_string(), str::to_string);
    Err(format!("{t} {c} is not reported by {:?}", caps.name))
}

fn check_abs(caps: &Capabilities, code: u16, v: i32) -> Result<InputEvent, String> {
    let ev = check(caps, InputEvent::new(EV_ABS, code, v))?;
    if let Some(a) = caps.abs.get(&code) {
        if v < a.min || v > a.max {
            let name = codes::code_name(EV_ABS, code).unwrap_or("axis");
            return Err(format!("{name} {v} is outside {}..={}", a.min, a.max));
        }
    }
    Ok(ev)
}

fn pair(v: &Value, what: &str) -> Result<(i32, i32), String> {
    match v.as_array().map(Vec::as_slice) {
        Some([a, b]) => Ok((int(a, what)?, int(b, what)?)),
        _ => Err(format!("{what} must be [x, y], got {v}")),
    }
}

/// Parses one line. `touch` is updated only when the line is accepted.
pub fn parse_line(
    line: &str,
    caps: &Capabilities,
    touch: &mut TouchState,
) -> Result<Command, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("bad JSON: {e}"))?;
    let Value::Object(o) = v else {
        return Err("expected a JSON object".into());
    };
    let syn = InputEvent::syn();
    if let Some(p) = o.get("ping") {
        return Ok(Command::Ping(p.clone()));
    }
    if o.contains_key("stats") {
        return Ok(Command::Stats);
    }
    if let Some(t) = o.get("type") {
        let t = event_type(t)?;
        let code = o.get("code").ok_or("\"code\" is missing")?;
        let (_, code) = event_code(code, Some(t))?;
        let value = o.get("value").map_or(Ok(0), |v| int(v, "value"))?;
        let ev = InputEvent::new(t, code, value);
        return Ok(Command::Events(vec![if t == EV_ABS {
            check_abs(caps, code, value)?
        } else {
            check(caps, ev)?
        }]));
    }
    if let Some(k) = o.get("key") {
        let (t, code) = event_code(k, Some(EV_KEY))?;
        let key = |v| check(caps, InputEvent::new(t.unwrap_or(EV_KEY), code, v));
        return Ok(Command::Events(match o.get("value") {
            Some(v) => vec![key(int(v, "value")?)?, syn],
            None => vec![key(1)?, syn, key(0)?, syn],
        }));
    }
    if let Some(m) = o.get("move") {
        let (dx, dy) = pair(m, "move")?;
        let mut ev = Vec::new();
        for (code, d) in [(REL_X, dx), (REL_Y, dy)] {
            let e = check(caps, InputEvent::new(EV_REL, code, d))?;
            if d != 0 {
                ev.push(e);
            }
        }
        ev.push(syn);
        return Ok(Command::Events(ev));
    }
    if let Some(w) = o.get("wheel") {
        let n = int(w, "wheel")?;
        return Ok(Command::Events(vec![
            check(caps, InputEvent::new(EV_REL, REL_WHEEL, n))?,
            syn,
        ]));
    }
    if let Some(a) = o.get("abs") {
        let (x, y) = pair(a, "abs")?;
        return Ok(Command::Events(vec![
            check_abs(caps, ABS_X, x)?,
            check_abs(caps, ABS_Y, y)?,
            syn,
        ]));
    }
    if let Some(t) = o.get("touch") {
        let mut next = touch.clone();
        let ev = touch_events(t, caps, &mut next)?;
        *touch = next;
        return Ok(Command::Events(ev));
    }
    let keys: Vec<&String> = o.keys().collect();
    Err(format!(
        "no known command in {keys:?}; use type/code/value, key, move, wheel, abs, touch, ping or stats"
    ))
}

fn touch_events(
    t: &Value,
    caps: &Capabilities,
    st: &mut TouchState,
) -> Result<Vec<InputEvent>, String> {
    let contacts = t
        .as_array()
        .ok_or("touch must be a list of {\"slot\",\"x\",\"y\"} or {\"slot\",\"up\":true}")?;
    let max_slot = caps
        .abs
        .get(&ABS_MT_SLOT)
        .filter(|_| caps.supports(EV_ABS, ABS_MT_SLOT))
        .map(|a| a.max)
        .ok_or_else(|| format!("{:?} is not a multitouch device", caps.name))?;
    let id_max = caps.abs.get(&ABS_MT_TRACKING_ID).map_or(65535, |a| a.max);
    let slots = usize::try_from(max_slot.saturating_add(1)).unwrap_or(0);
    st.slots.resize(slots, None);
    let was_active = st.active();
    let mut ev = Vec::new();
    let mut first_pos = None;
    for c in contacts {
        let c: &Map<String, Value> = c.as_object().ok_or("each contact must be an object")?;
        let slot = int(c.get("slot").ok_or("a contact needs \"slot\"")?, "slot")?;
        let idx = usize::try_from(slot)
            .ok()
            .filter(|&i| i < slots)
            .ok_or_else(|| format!("slot {slot} is outside 0..={max_slot}"))?;
        ev.push(check_abs(caps, ABS_MT_SLOT, slot)?);
        if c.get("up").and_then(Value::as_bool).unwrap_or(false) {
            if st.slots[idx].take().is_none() {
                return Err(format!("slot {slot} is not touching"));
            }
            ev.push(InputEvent::new(EV_ABS, ABS_MT_TRACKING_ID, -1));
            continue;
        }
        let x = int(c.get("x").ok_or("a contact needs \"x\" and \"y\"")?, "x")?;
        let y = int(c.get("y").ok_or("a contact needs \"x\" and \"y\"")?, "y")?;
        if st.slots[idx].is_none() {
            let id = st.next_id;
            st.next_id = if id >= id_max { 0 } else { id + 1 };
            st.slots[idx] = Some(id);
            ev.push(check_abs(caps, ABS_MT_TRACKING_ID, id)?);
        }
        ev.push(check_abs(caps, ABS_MT_POSITION_X, x)?);
        ev.push(check_abs(caps, ABS_MT_POSITION_Y, y)?);
        first_pos.get_or_insert((x, y));
    }
    let now_active = st.active();
    if (was_active == 0) != (now_active == 0) {
        let v = i32::from(now_active > 0);
        ev.push(check(caps, InputEvent::new(EV_KEY, BTN_TOUCH, v))?);
        if caps.supports(EV_KEY, BTN_TOOL_FINGER) {
            ev.push(InputEvent::new(EV_KEY, BTN_TOOL_FINGER, v));
        }
    }
    if let Some((x, y)) = first_pos {
        ev.push(check_abs(caps, ABS_X, x)?);
        ev.push(check_abs(caps, ABS_Y, y)?);
    }
    ev.push(InputEvent::new(EV_SYN, 0, 0));
    Ok(ev)
}

/// The JSON line for a status event sent back to clients:
/// `{"type":"EV_LED","code":"LED_CAPSL","value":1}` (numbers for unknown names).
pub fn status_line(ev: InputEvent) -> String {
    let t = codes::type_name(ev.type_).map_or_else(|| Value::from(ev.type_), Value::from);
    let c = codes::code_name(ev.type_, ev.code).map_or_else(|| Value::from(ev.code), Value::from);
    let mut m = Map::new();
    m.insert("type".into(), t);
    m.insert("code".into(), c);
    m.insert("value".into(), Value::from(ev.value));
    Value::Object(m).to_string()
}

/// `{"error":"..."}` with the 1-based line number.
pub fn error_line(msg: &str, line: u64) -> String {
    let mut m = Map::new();
    m.insert("error".into(), Value::from(msg));
    m.insert("line".into(), Value::from(line));
    Value::Object(m).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::{BTN_LEFT, KEY_A, LED_CAPSL};
    use crate::input::EV_LED;
    use crate::profiles::Profile;

    fn parse(p: Profile, line: &str) -> Result<Command, String> {
        parse_line(line, &p.capabilities(None), &mut TouchState::default())
    }

    fn events(p: Profile, line: &str) -> Vec<InputEvent> {
        match parse(p, line) {
            Ok(Command::Events(e)) => e,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn key_forms() {
        let k = Profile::Keyboard;
        let a = |v| InputEvent::new(EV_KEY, KEY_A, v);
        let syn = InputEvent::syn();
        assert_eq!(events(k, r#"{"key":"KEY_A"}"#), vec![a(1), syn, a(0), syn]);
        assert_eq!(events(k, r#"{"key":30,"value":1}"#), vec![a(1), syn]);
        assert_eq!(
            events(k, r#"{"type":"EV_KEY","code":"KEY_A","value":1}"#),
            vec![a(1)]
        );
        assert_eq!(events(k, r#"{"type":1,"code":30,"value":2}"#), vec![a(2)]);
        assert_eq!(
            events(k, r#"{"type":"EV_SYN","code":"SYN_REPORT"}"#),
            vec![syn]
        );
    }

    #[test]
    fn bad_lines_are_refused_with_a_reason() {
        let k = Profile::Keyboard;
        for (line, needle) in [
            ("{not json", "bad JSON"),
            ("[1,2]", "object"),
            (r#"{"key":"KEY_NOPE"}"#, "unknown code"),
            (r#"{"key":"REL_X"}"#, "not a code of that type"),
            (r#"{"move":[1,2]}"#, "not reported"),
            (r#"{"type":"EV_KEY","code":"KEY_A","value":1e99}"#, "32-bit"),
            (r#"{"hello":1}"#, "no known command"),
            (r#"{"touch":[]}"#, "not a multitouch"),
        ] {
            let e = parse(k, line).unwrap_err();
            assert!(e.contains(needle), "{line}: {e}");
        }
        let e = parse(Profile::Tablet, r#"{"abs":[0,40000]}"#).unwrap_err();
        assert!(e.contains("outside"), "{e}");
    }

    #[test]
    fn pointer_forms() {
        let rel = |c, v| InputEvent::new(EV_REL, c, v);
        assert_eq!(
            events(Profile::Mouse, r#"{"move":[5,0]}"#),
            vec![rel(REL_X, 5), InputEvent::syn()]
        );
        assert_eq!(
            events(Profile::Mouse, r#"{"key":"BTN_LEFT","value":1}"#)[0],
            InputEvent::new(EV_KEY, BTN_LEFT, 1)
        );
        assert_eq!(
            events(Profile::Tablet, r#"{"abs":[100,32767]}"#),
            vec![
                InputEvent::new(EV_ABS, ABS_X, 100),
                InputEvent::new(EV_ABS, ABS_Y, 32767),
                InputEvent::syn()
            ]
        );
    }

    #[test]
    fn touch_tracks_slots_and_lifts() {
        let caps = Profile::Touch.capabilities(None);
        let mut st = TouchState::default();
        let abs = |c, v| InputEvent::new(EV_ABS, c, v);
        let Ok(Command::Events(down)) = parse_line(
            r#"{"touch":[{"slot":0,"x":10,"y":20},{"slot":1,"x":30,"y":40}]}"#,
            &caps,
            &mut st,
        ) else {
            panic!()
        };
        assert_eq!(
            down,
            vec![
                abs(ABS_MT_SLOT, 0),
                abs(ABS_MT_TRACKING_ID, 0),
                abs(ABS_MT_POSITION_X, 10),
                abs(ABS_MT_POSITION_Y, 20),
                abs(ABS_MT_SLOT, 1),
                abs(ABS_MT_TRACKING_ID, 1),
                abs(ABS_MT_POSITION_X, 30),
                abs(ABS_MT_POSITION_Y, 40),
                InputEvent::new(EV_KEY, BTN_TOUCH, 1),
                InputEvent::new(EV_KEY, BTN_TOOL_FINGER, 1),
                abs(ABS_X, 10),
                abs(ABS_Y, 20),
                InputEvent::syn(),
            ]
        );
        let Ok(Command::Events(up)) = parse_line(
            r#"{"touch":[{"slot":0,"up":true},{"slot":1,"up":true}]}"#,
            &caps,
            &mut st,
        ) else {
            panic!()
        };
        assert_eq!(up[1], abs(ABS_MT_TRACKING_ID, -1));
        assert!(up.contains(&InputEvent::new(EV_KEY, BTN_TOUCH, 0)));
        // A refused line leaves the state alone.
        let before = st.clone();
        assert!(parse_line(r#"{"touch":[{"slot":0,"up":true}]}"#, &caps, &mut st).is_err());
        assert!(parse_line(r#"{"touch":[{"slot":10,"x":1,"y":1}]}"#, &caps, &mut st).is_err());
        assert_eq!(st, before);
    }

    #[test]
    fn status_lines_use_names() {
        assert_eq!(
            status_line(InputEvent::new(EV_LED, LED_CAPSL, 1)),
            r#"{"code":"LED_CAPSL","type":"EV_LED","value":1}"#
        );
        assert!(error_line("x", 3).contains(r#""line":3"#));
    }
}
