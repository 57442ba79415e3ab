//! splitvm-input as a real process under the hostile frontend: config space
//! per profile, events from the JSON event socket into eventq buffers
//! (order, SYN boundaries), errors for bad lines, overflow without buffers,
//! LEDs from the statusq to event-socket clients, malformed chains, serving
//! again after a disconnect, and a clean SIGTERM.

use std::process::Command;
use std::time::Duration;

use splitvm_tests::hostile::input::{
    bit, encode, spawn_input, spawn_profile, Ev, EventClient, InputDev, CFG_EV_BITS, CFG_ID_DEVIDS,
    CFG_ID_NAME, CFG_ID_SERIAL, CFG_PROP_BITS, EVENTQ, STATUSQ, SYN,
};
use splitvm_tests::hostile::{Desc, F_WRITE};
use splitvm_tests::wait::wait_for;

const T: Duration = Duration::from_secs(10);
const EV_KEY: u16 = 1;
const EV_REL: u16 = 2;
const EV_ABS: u16 = 3;
const EV_LED: u16 = 0x11;
const KEY_A: u16 = 30;
const KEY_B: u16 = 48;
const KEY_C: u16 = 46;
const KEY_D: u16 = 32;
const KEY_E: u16 = 18;
const BTN_LEFT: u16 = 0x110;
const BTN_TOUCH: u16 = 0x14a;
const ABS_MT_SLOT: u8 = 0x2f;
const ABS_MT_POSITION_X: u8 = 0x35;
const ABS_MT_POSITION_Y: u8 = 0x36;
const ABS_MT_TRACKING_ID: u8 = 0x39;
const INPUT_PROP_DIRECT: u16 = 1;

fn tap(code: u16) -> Vec<Ev> {
    vec![(EV_KEY, code, 1), SYN, (EV_KEY, code, 0), SYN]
}

#[test]
fn input_config_space_per_profile() {
    let dir = tempfile::tempdir().unwrap();
    for (i, profile) in ["keyboard", "mouse", "tablet", "touch"].iter().enumerate() {
        let d = dir.path().join(profile);
        std::fs::create_dir_all(&d).unwrap();
        let (child, sock, _) = spawn_profile(&d, profile, &[]);
        let mut dev = InputDev::connect(&sock);
        assert_eq!(dev.string(CFG_ID_NAME), format!("splitvm {profile}"));
        assert_eq!(
            dev.string(CFG_ID_SERIAL),
            format!("splitvm-input-{profile}")
        );
        let ids = dev.select(CFG_ID_DEVIDS, 0);
        assert_eq!(ids.len(), 8);
        assert_eq!(&ids[..4], &[6, 0, 0x56, 0x53], "BUS_VIRTUAL, vendor");
        assert_eq!(
            u16::from_le_bytes([ids[4], ids[5]]),
            i as u16 + 1,
            "product"
        );
        let keys = dev.select(CFG_EV_BITS, EV_KEY as u8);
        let rel = dev.select(CFG_EV_BITS, EV_REL as u8);
        let abs = dev.select(CFG_EV_BITS, EV_ABS as u8);
        let leds = dev.select(CFG_EV_BITS, EV_LED as u8);
        let props = dev.select(CFG_PROP_BITS, 0);
        assert!(dev.select(0x7f, 0).is_empty(), "unknown select");
        match *profile {
            "keyboard" => {
                for k in [KEY_A, KEY_B, 2, 11, 28, 57, 58] {
                    assert!(bit(&keys, k), "key {k}");
                }
                assert!(bit(&leds, 1), "LED_CAPSL");
                assert!(rel.is_empty() && abs.is_empty());
            }
            "mouse" => {
                assert!(bit(&keys, BTN_LEFT) && !bit(&keys, KEY_A));
                assert!(bit(&rel, 0) && bit(&rel, 1) && bit(&rel, 8));
                assert!(abs.is_empty() && leds.is_empty());
            }
            "tablet" => {
                assert!(bit(&keys, BTN_LEFT));
                assert!(bit(&abs, 0) && bit(&abs, 1));
                assert_eq!(dev.abs_info(0), Some([0, 32767, 0, 0, 0]));
                assert_eq!(dev.abs_info(1), Some([0, 32767, 0, 0, 0]));
                assert_eq!(dev.abs_info(2), None, "ABS_Z is not reported");
                assert!(props.is_empty());
            }
            _ => {
                assert!(bit(&keys, BTN_TOUCH));
                for a in [0, 1, ABS_MT_SLOT, ABS_MT_POSITION_X, ABS_MT_POSITION_Y] {
                    assert!(bit(&abs, u16::from(a)), "abs {a:#x}");
                }
                assert_eq!(dev.abs_info(ABS_MT_SLOT), Some([0, 9, 0, 0, 0]));
                assert_eq!(dev.abs_info(ABS_MT_TRACKING_ID), Some([0, 65535, 0, 0, 0]));
                assert_eq!(dev.abs_info(ABS_MT_POSITION_X), Some([0, 32767, 0, 0, 0]));
                assert_eq!(dev.abs_info(ABS_MT_POSITION_Y), Some([0, 32767, 0, 0, 0]));
                assert!(bit(&props, INPUT_PROP_DIRECT), "INPUT_PROP_DIRECT");
            }
        }
        drop(dev);
        child.signal(libc::SIGTERM);
        let (st, _) = child.finish(T);
        assert_eq!(st.code(), Some(0), "{profile}: clean stop");
    }
}

#[test]
fn input_events_arrive_in_order_with_syn_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let (_child, sock, events) = spawn_profile(dir.path(), "keyboard", &[]);
    let mut dev = InputDev::connect(&sock);
    let mut c = EventClient::connect(&events, T);
    dev.post_event_buffers(32);
    c.send(r#"{"key":"KEY_A"}"#);
    c.send(r#"{"type":"EV_KEY","code":"KEY_B","value":1}"#);
    c.send(r#"{"type":1,"code":48,"value":0}"#);
    c.send(r#"{"type":"EV_SYN","code":"SYN_REPORT","value":0}"#);
    c.send(r#"{"key":"KEY_C","value":1}"#);
    assert!(c.sync(T).is_empty(), "no errors");
    let mut want = tap(KEY_A);
    want.extend([(EV_KEY, KEY_B, 1), (EV_KEY, KEY_B, 0), SYN]);
    want.extend([(EV_KEY, KEY_C, 1), SYN]);
    assert_eq!(dev.events(want.len()), want);
    // Events sent while buffers wait arrive at once, too.
    c.send(r#"{"key":"KEY_D"}"#);
    assert_eq!(dev.events(4), tap(KEY_D));
}

#[test]
fn input_pointer_and_touch_events() {
    let dir = tempfile::tempdir().unwrap();
    let (_child, sock, events) = spawn_profile(dir.path(), "touch", &[]);
    let mut dev = InputDev::connect(&sock);
    let mut c = EventClient::connect(&events, T);
    dev.post_event_buffers(64);
    c.send(r#"{"touch":[{"slot":0,"x":100,"y":200},{"slot":1,"x":300,"y":400}]}"#);
    c.send(r#"{"touch":[{"slot":1,"up":true}]}"#);
    c.send(r#"{"touch":[{"slot":0,"up":true}]}"#);
    assert!(c.sync(T).is_empty());
    let abs = |c: u8, v| (EV_ABS, u16::from(c), v);
    let mut want = vec![
        abs(ABS_MT_SLOT, 0),
        abs(ABS_MT_TRACKING_ID, 0),
        abs(ABS_MT_POSITION_X, 100),
        abs(ABS_MT_POSITION_Y, 200),
        abs(ABS_MT_SLOT, 1),
        abs(ABS_MT_TRACKING_ID, 1),
        abs(ABS_MT_POSITION_X, 300),
        abs(ABS_MT_POSITION_Y, 400),
        (EV_KEY, BTN_TOUCH, 1),
        (EV_KEY, 0x145, 1),
        abs(0, 100),
        abs(1, 200),
        SYN,
    ];
    want.extend([abs(ABS_MT_SLOT, 1), abs(ABS_MT_TRACKING_ID, -1), SYN]);
    want.extend([
        abs(ABS_MT_SLOT, 0),
        abs(ABS_MT_TRACKING_ID, -1),
        (EV_KEY, BTN_TOUCH, 0),
        (EV_KEY, 0x145, 0),
        SYN,
    ]);
    assert_eq!(dev.events(want.len()), want);
}

#[test]
fn input_bad_json_line_gets_error_and_connection_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let (_child, sock, events) = spawn_profile(dir.path(), "mouse", &[]);
    let mut dev = InputDev::connect(&sock);
    let mut c = EventClient::connect(&events, T);
    c.send("{this is not json");
    let e = c.line(T);
    assert!(
        e.starts_with(r#"{"error":"bad JSON"#) && e.contains(r#""line":1"#),
        "{e}"
    );
    c.send(r#"{"key":"KEY_A"}"#);
    let e = c.line(T);
    assert!(e.contains("is not reported by"), "mouse has no KEY_A: {e}");
    c.send(&"x".repeat(70_000));
    assert!(c.line(T).contains("longer than"));
    c.send(r#"{"move":[3,-4]}"#);
    c.send(r#"{"key":"BTN_LEFT"}"#);
    assert!(c.sync(T).is_empty());
    dev.post_event_buffers(8);
    let mut want = vec![(EV_REL, 0, 3), (EV_REL, 1, -4), SYN];
    want.extend(tap(BTN_LEFT));
    assert_eq!(dev.events(want.len()), want);
}

#[test]
fn input_overflow_without_buffers_drops_whole_oldest_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (_child, sock, events) =
        spawn_profile(dir.path(), "keyboard", &["--max-queued-events", "8"]);
    let mut dev = InputDev::connect(&sock);
    let mut c = EventClient::connect(&events, T);
    // A report of three events: two keys down, then SYN.
    c.send(r#"{"key":"KEY_A","value":1}"#);
    for k in ["KEY_B", "KEY_C", "KEY_D", "KEY_E"] {
        c.send(&format!(r#"{{"key":"{k}"}}"#));
    }
    assert!(c.sync(T).is_empty());
    c.send(r#"{"stats":true}"#);
    let s = c.line(T);
    // 2 + 4*4 = 18 events in 9 reports; 8 fit: the last 4 reports.
    assert_eq!(
        s, r#"{"dropped_events":10,"dropped_reports":5,"queued":8}"#,
        "stats"
    );
    dev.post_event_buffers(16);
    let mut want = tap(KEY_D);
    want.extend(tap(KEY_E));
    assert_eq!(dev.events(8), want);
    assert_eq!(
        dev.fe.try_wait_used(EVENTQ, Duration::from_millis(200)),
        None,
        "nothing else queued"
    );
}

#[test]
fn input_led_on_statusq_reaches_event_socket_client() {
    let dir = tempfile::tempdir().unwrap();
    let (_child, sock, events) = spawn_profile(dir.path(), "keyboard", &[]);
    let mut dev = InputDev::connect(&sock);
    let mut a = EventClient::connect(&events, T);
    let mut b = EventClient::connect(&events, T);
    a.sync(T);
    b.sync(T);
    dev.status((EV_LED, 1, 1));
    let want = r#"{"code":"LED_CAPSL","type":"EV_LED","value":1}"#;
    assert_eq!(a.line(T), want);
    assert_eq!(b.line(T), want);
    dev.status((EV_LED, 7, 0));
    assert_eq!(a.line(T), r#"{"code":7,"type":"EV_LED","value":0}"#);
}

#[test]
fn input_hostile_chains_never_crash_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, sock, events) = spawn_profile(dir.path(), "keyboard", &[]);
    let mut dev = InputDev::connect(&sock);
    let mut c = EventClient::connect(&events, T);
    c.send(r#"{"key":"KEY_A"}"#);
    assert!(c.sync(T).is_empty());
    let outside = dev.fe.mem.size + 0x1000;
    let short = dev.alloc(8);
    let ro = dev.alloc(8);
    let bad: Vec<Vec<Desc>> = vec![
        vec![Desc {
            addr: short,
            len: 4,
            flags: F_WRITE,
            next: 0,
        }],
        vec![Desc {
            addr: ro,
            len: 8,
            flags: 0,
            next: 0,
        }],
        vec![Desc {
            addr: outside,
            len: 8,
            flags: F_WRITE,
            next: 0,
        }],
        vec![Desc {
            addr: u64::MAX - 3,
            len: 8,
            flags: F_WRITE,
            next: 0,
        }],
        // An indirect table outside memory.
        vec![Desc {
            addr: outside,
            len: 64,
            flags: 4,
            next: 0,
        }],
    ];
    for descs in &bad {
        let head = dev.write_raw(EVENTQ, descs);
        dev.fe.submit(EVENTQ, head);
        let (id, len) = dev.fe.wait_used(EVENTQ);
        assert_eq!((id, len), (u32::from(head), 0), "rejected: {descs:?}");
    }
    assert_eq!(
        dev.fe.mem.read(ro, 8),
        vec![0; 8],
        "read-only buffer untouched"
    );
    // An avail index far ahead of the ring (more heads than entries).
    let idx = dev.fe.queues[EVENTQ].ring.avail_idx;
    let size = dev.fe.queues[EVENTQ].ring.size;
    dev.fe.queues[EVENTQ]
        .ring
        .set_avail_idx(&dev.fe.mem, idx.wrapping_add(size + 5));
    dev.fe.queues[EVENTQ].kick.write(1).unwrap();
    dev.fe.queues[EVENTQ].ring.set_avail_idx(&dev.fe.mem, idx);
    // Bad status buffers: too short, write-only, outside memory.
    for d in [
        Desc {
            addr: short,
            len: 4,
            flags: 0,
            next: 0,
        },
        Desc {
            addr: short,
            len: 8,
            flags: F_WRITE,
            next: 0,
        },
        Desc {
            addr: outside,
            len: 8,
            flags: 0,
            next: 0,
        },
    ] {
        let head = dev.write_raw(STATUSQ, &[d]);
        dev.fe.submit(STATUSQ, head);
        assert_eq!(dev.fe.wait_used(STATUSQ).0, u32::from(head));
    }
    // A status event split over two descriptors still counts.
    let led = encode((EV_LED, 1, 1));
    let (p1, p2) = (dev.alloc(8), dev.alloc(8));
    dev.fe.mem.write(p1, &led[..3]);
    dev.fe.mem.write(p2, &led[3..]);
    let head = dev.write_raw(
        STATUSQ,
        &[
            Desc {
                addr: p1,
                len: 3,
                flags: 0,
                next: 0,
            },
            Desc {
                addr: p2,
                len: 5,
                flags: 0,
                next: 0,
            },
        ],
    );
    dev.fe.submit(STATUSQ, head);
    dev.fe.wait_used(STATUSQ);
    assert_eq!(
        c.line(T),
        r#"{"code":"LED_CAPSL","type":"EV_LED","value":1}"#
    );
    // The events were kept for good buffers.
    dev.post_event_buffers(4);
    assert_eq!(dev.events(4), tap(KEY_A));
    // The backend logs after it returned the buffer: wait for the line
    // rather than look once (under load it came after the check).
    child.wait_for_line("guest buffer rejected", T);
    child.signal(libc::SIGTERM);
    let (st, _) = child.finish(T);
    assert_eq!(st.code(), Some(0));
    assert!(!sock.exists() && !events.exists(), "sockets removed");
}

#[test]
fn input_serves_again_after_a_frontend_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, sock, events) = spawn_profile(dir.path(), "tablet", &["--name", "pad"]);
    let mut c = EventClient::connect(&events, T);
    for round in 0..3 {
        let mut dev = InputDev::connect(&sock);
        assert_eq!(dev.string(CFG_ID_NAME), "pad", "round {round}");
        dev.post_event_buffers(3);
        c.send(&format!(r#"{{"abs":[{round},32767]}}"#));
        assert_eq!(
            dev.events(3),
            vec![(EV_ABS, 0, round), (EV_ABS, 1, 32767), SYN]
        );
        drop(dev);
        child.wait_for_line("frontend disconnected", T);
    }
    child.signal(libc::SIGTERM);
    let (st, _) = child.finish(T);
    assert_eq!(st.code(), Some(0));
}

#[test]
fn input_cli_refuses_bad_sources() {
    let dir = tempfile::tempdir().unwrap();
    let (child, sock, _) = spawn_input(dir.path(), &["--evdev", "/nonexistent/event7"]);
    let (st, lines) = child.finish(T);
    assert_eq!(st.code(), Some(1));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("cannot open /nonexistent/event7")),
        "{lines:?}"
    );
    assert!(!sock.exists());
    // A regular file is not an evdev device.
    let f = dir.path().join("plain");
    std::fs::write(&f, b"x").unwrap();
    let (child, _, _) = spawn_input(dir.path(), &["--evdev", f.to_str().unwrap()]);
    let (st, lines) = child.finish(T);
    assert_eq!(st.code(), Some(1));
    assert!(lines.iter().any(|l| l.contains("EVIOCGNAME")), "{lines:?}");
    let (child, _, _) = spawn_input(dir.path(), &["--profile", "mouse"]);
    assert_eq!(child.finish(T).0.code(), Some(1));
}

#[test]
fn input_send_subcommand_prints_errors_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (_child, sock, events) = spawn_profile(dir.path(), "keyboard", &[]);
    let mut dev = InputDev::connect(&sock);
    wait_for("event socket", T, || events.exists().then_some(()));
    let bin = splitvm_tests::bin_path("splitvm-input");
    let out = Command::new(&bin)
        .args(["send", "--event-socket"])
        .arg(&events)
        .args([r#"{"key":"KEY_E"}"#])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    dev.post_event_buffers(4);
    assert_eq!(dev.events(4), tap(KEY_E));
    let out = Command::new(&bin)
        .args(["send", "--event-socket"])
        .arg(&events)
        .args([r#"{"key":"KEY_NOPE"}"#, r#"{"key":"KEY_B"}"#])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(r#""line":1"#) && stdout.contains("unknown code"),
        "{stdout}"
    );
    dev.post_event_buffers(4);
    assert_eq!(
        dev.events(4),
        tap(KEY_B),
        "the good line still went through"
    );
}

#[test]
fn input_send_latency_mode_times_led_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let (_child, sock, events) = spawn_profile(dir.path(), "keyboard", &[]);
    let mut dev = InputDev::connect(&sock);
    wait_for("event socket", T, || events.exists().then_some(()));
    let mut cmd = Command::new(splitvm_tests::bin_path("splitvm-input"));
    cmd.args(["send", "--latency", "3", "--event-socket"])
        .arg(&events);
    let mut send = splitvm_tests::proc::ChildGuard::spawn("send", cmd);
    // Play the guest: answer each key press with an LED toggle.
    dev.post_event_buffers(12);
    let mut led = 0;
    for _ in 0..3 {
        let got = dev.events(4);
        assert_eq!(got[0].0, EV_KEY);
        led ^= 1;
        dev.status((EV_LED, 1, led));
        dev.post_event_buffers(4);
    }
    let line = send.wait_for_line("latency n=", T);
    assert!(line.contains("n=3 median_us="), "{line}");
    let (st, _) = send.finish(T);
    assert!(st.success());
}

#[test]
fn input_send_echo_mode_answers_leds_with_taps() {
    let dir = tempfile::tempdir().unwrap();
    let (_child, sock, events) = spawn_profile(dir.path(), "keyboard", &[]);
    let mut dev = InputDev::connect(&sock);
    wait_for("event socket", T, || events.exists().then_some(()));
    let mut cmd = Command::new(splitvm_tests::bin_path("splitvm-input"));
    cmd.args(["send", "--echo", "2", "--event-socket"])
        .arg(&events)
        .arg(r#"{"key":"KEY_B"}"#);
    let mut send = splitvm_tests::proc::ChildGuard::spawn("send", cmd);
    // The starting tap, then one tap per LED the "guest" sends.
    dev.post_event_buffers(4);
    assert_eq!(dev.events(4), tap(KEY_B));
    for led in [1, 0] {
        dev.post_event_buffers(4);
        dev.status((EV_LED, 1, led));
        assert_eq!(dev.events(4), tap(KEY_A));
    }
    send.wait_for_line("echoed 2", T);
    let (st, _) = send.finish(T);
    assert!(st.success());
}
