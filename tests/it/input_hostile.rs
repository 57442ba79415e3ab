//! splitvm-input against the hostile frontend, beyond what `input.rs`
//! covers: the shared malformed-chain table on both queues, an avail index
//! left more than a queue ahead while events wait, and malformed
//! vhost-user messages. After each case a key press still arrives in an
//! eventq buffer and an LED still reaches the event socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use splitvm_tests::hostile::cases::{run_malformed_chains, Device};
use splitvm_tests::hostile::input::{
    decode, spawn_profile, EventClient, InputDev, CFG_ID_NAME, EVENTQ, STATUSQ,
};
use splitvm_tests::hostile::msg::{run_message_cases, Verdict};
use splitvm_tests::hostile::{within, HostileFrontend, EVENT_IDX, F_WRITE};
use splitvm_tests::proc::ChildGuard;

const T: Duration = Duration::from_secs(10);
const EV_KEY: u16 = 1;
const EV_LED: u16 = 0x11;
const KEY_B: u16 = 48;

struct Fx {
    dev: InputDev,
    events: EventClient,
}

/// Posts buffers until the release of `code` arrives (earlier events, such
/// as those the triggers sent, are skipped).
fn key_arrives(dev: &mut InputDev, code: u16) {
    for _ in 0..64 {
        dev.post_event_buffers(1);
        let (id, len) = dev.fe.wait_used(EVENTQ);
        let at = dev.outstanding[EVENTQ]
            .remove(&(id as u16))
            .unwrap_or_else(|| panic!("used id {id} was not outstanding"));
        if len == 8 && decode(&dev.fe.mem.read(at, 8)) == (EV_KEY, code, 0) {
            return;
        }
    }
    panic!("key {code} never arrived");
}

impl Device for Fx {
    fn fe(&mut self) -> &mut HostileFrontend {
        &mut self.dev.fe
    }

    fn trigger(&mut self, q: usize) {
        if q == EVENTQ {
            self.events.send(r#"{"key":"KEY_A"}"#);
        }
    }

    fn assert_alive(&mut self, _tag: &str) {
        self.events.send(r#"{"key":"KEY_B"}"#);
        key_arrives(&mut self.dev, KEY_B);
        self.dev.status((EV_LED, 1, 1));
        let led = r#"{"code":"LED_CAPSL","type":"EV_LED","value":1}"#;
        // Earlier lines (what the malformed statusq chains carried) are
        // skipped; `line` fails the test if the LED never comes.
        while self.events.line(T) != led {}
    }
}

fn start(dir: &Path) -> (ChildGuard, PathBuf, EventClient) {
    let (child, sock, events) = spawn_profile(dir, "keyboard", &[]);
    let c = EventClient::connect(&events, T);
    (child, sock, c)
}

#[test]
fn input_hostile_malformed_chain_table() {
    let dir = tempfile::tempdir().unwrap();
    let (child, sock, events) = start(dir.path());
    let mut f = Fx {
        dev: InputDev::connect(&sock),
        events,
    };
    let eventq = run_malformed_chains(&mut f, EVENTQ, F_WRITE);
    for o in &eventq {
        assert!(
            matches!(o.used_len, None | Some(0) | Some(8)),
            "{}: {:?}",
            o.what,
            o.used_len
        );
    }
    run_malformed_chains(&mut f, STATUSQ, 0);
    drop(f);
    child.signal(libc::SIGTERM);
    let (st, lines) = child.finish(T);
    assert_eq!(st.code(), Some(0), "{lines:#?}");
}

/// See `blk_hostile_avail_index_overrun_left_in_place`: with events
/// waiting, the eventq worker must not spin on an avail index more than a
/// queue ahead.
#[test]
fn input_hostile_avail_index_overrun_left_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, sock, mut events) = start(dir.path());
    let mut dev = InputDev::connect(&sock);
    assert!(dev.fe.acked & EVENT_IDX != 0, "EVENT_IDX negotiated");
    events.send(r#"{"key":"KEY_A"}"#);
    events.sync(T);
    {
        let fe = &mut dev.fe;
        let q = &mut fe.queues[EVENTQ];
        let idx = q.ring.avail_idx.wrapping_add(q.ring.size + 5);
        q.ring.set_avail_idx(&fe.mem, idx);
        q.kick.write(1).unwrap();
    }
    drop(dev);
    child.wait_for_line("frontend disconnected", T);
    let s = sock.clone();
    let dev = within(
        "a new frontend is served",
        Duration::from_secs(20),
        move || InputDev::connect(&s),
    );
    let mut f = Fx { dev, events };
    f.assert_alive("after-overrun");
}

#[test]
fn input_hostile_vhost_user_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (child, sock, mut events) = start(dir.path());
    let s = sock.clone();
    let out = run_message_cases(&sock, 2, T, |what| {
        let s = s.clone();
        let mut dev = within(what, Duration::from_secs(20), move || InputDev::connect(&s));
        assert_eq!(dev.string(CFG_ID_NAME), "splitvm keyboard", "after {what}");
        events.send(r#"{"key":"KEY_B"}"#);
        key_arrives(&mut dev, KEY_B);
    });
    assert!(out.iter().any(|(_, v)| *v == Verdict::Dropped));
    child.signal(libc::SIGTERM);
    let (st, lines) = child.finish(T);
    assert_eq!(st.code(), Some(0), "{lines:#?}");
}
