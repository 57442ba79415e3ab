//! splitvm-input under real frontends and a real Linux driver, in the
//! nested lab (`tests/lab/scenarios/input/l1.sh`, one level-1 boot):
//!
//! - `input-evdev`: a uinput keyboard in level 1 passed through with
//!   `--evdev --grab` to a splitvm guest; the device is unplugged and
//!   plugged again between two batches of keys; the guest's caps-lock LED
//!   reaches the uinput device.
//! - `input-profile`: keyboard and touch profiles fed by `splitvm-input
//!   send`, under splitvm.
//! - `input-qemu`: the same two backends under QEMU as the frontend.
//!
//! QEMU runs inside the lab, not on the host: QEMU 7.2's `vhost-user-input`
//! (and `-pci`) refuse to start without KVM ("vhost initialization failed:
//! requires kvm", from `vhost_user_backend_dev_init`), and the host's KVM
//! cannot run Linux. Each guest checks /sys/class/input (name, ids,
//! capabilities) and prints the events its `evread` read.

use splitvm_tests::lab::L2Run;

type Ev = (u16, u16, i32);

fn events(run: &L2Run, tag: &str) -> Vec<Ev> {
    run.lines
        .iter()
        .filter_map(|l| l.strip_prefix(tag))
        .filter_map(|r| {
            let v: Vec<i64> = r
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            match v.as_slice() {
                [t, c, x] => Some((*t as u16, *c as u16, *x as i32)),
                _ => None,
            }
        })
        .collect()
}

fn taps(codes: &[u16]) -> Vec<Ev> {
    codes
        .iter()
        .flat_map(|&c| [(1, c, 1), (0, 0, 0), (1, c, 0), (0, 0, 0)])
        .collect()
}

/// Every console line that mentions `tag` (parsed or not), for failure
/// messages: a line another writer split shows up here but not in
/// [`events`].
fn raw(run: &L2Run, tag: &str) -> Vec<String> {
    let tag = tag.trim_end();
    run.lines
        .iter()
        .filter(|l| l.contains(tag))
        .cloned()
        .collect()
}

fn check_profile_run(name: &str, run: &L2Run, all: &str) {
    assert_eq!(run.exit, Some(0), "{name}: VMM exit\n{all}");
    assert_eq!(run.done_rc, Some(0), "{name}: scenario\n{all}");
    let r = |k: &str| {
        run.results
            .get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("{name}: no RESULT {k}\n{all}"))
    };
    assert_eq!(r("kbd_found"), "yes");
    // EV_SYN, EV_KEY, EV_LED; num/caps/scroll lock LEDs.
    assert_eq!(r("kbd_ev"), "20003");
    assert_eq!(r("kbd_led"), "7");
    assert_eq!(r("kbd_ids"), "0006:5356:0001");
    // INPUT_PROP_DIRECT; ABS_X/Y, MT_SLOT, MT_POSITION_X/Y, MT_TRACKING_ID.
    assert_eq!(r("touch_props"), "2");
    assert_eq!(r("touch_abs"), "260800000000003");
    assert_eq!(r("led_write"), "0");
    // REL_X, REL_Y, REL_HWHEEL, REL_WHEEL; the tablet: ABS_X, ABS_Y.
    assert_eq!(r("mouse_found"), "yes");
    assert_eq!(r("mouse_rel"), "143");
    assert_eq!(r("tablet_found"), "yes");
    assert_eq!(r("tablet_abs"), "3");
    assert_eq!(
        events(run, "MOUSE "),
        vec![(2, 0, 5), (2, 1, -3), (0, 0, 0)],
        "{name}: one mouse move; console: {:?}",
        raw(run, "MOUSE ")
    );
    assert_eq!(
        events(run, "TABLET "),
        vec![(3, 0, 1000), (3, 1, 2000), (0, 0, 0)],
        "{name}: one tablet position; console: {:?}",
        raw(run, "TABLET ")
    );
    assert_eq!(events(run, "KEYS1 "), taps(&[30, 48, 46]), "{name}: keys");
    let t = events(run, "TOUCH ");
    let pos = |e: Ev| {
        t.iter()
            .position(|x| *x == e)
            .unwrap_or_else(|| panic!("{name}: touch event {e:?} missing: {t:?}"))
    };
    // A new tracking id (ids go on counting across frontends) at (100,
    // 200), BTN_TOUCH, a move to x=150, lift.
    let down = t
        .iter()
        .position(|e| e.0 == 3 && e.1 == 0x39 && e.2 >= 0)
        .unwrap_or_else(|| panic!("{name}: no new tracking id: {t:?}"));
    assert!(down < pos((3, 0x35, 100)));
    assert!(pos((3, 0x36, 200)) < pos((1, 0x14a, 1)));
    assert!(pos((1, 0x14a, 1)) < pos((3, 0x35, 150)));
    assert!(pos((3, 0x35, 150)) < pos((3, 0x39, -1)));
    assert!(pos((3, 0x39, -1)) < pos((1, 0x14a, 0)));
}

#[test]
fn input_qemu_and_splitvm_guests_read_events_in_the_lab() {
    let lab = crate::nested_lab::lab();
    let all = lab.log();
    // Level-1 results (`L1-RESULT input_KEY=VALUE`).
    let l1 = |k: &str| lab.l1_get(&format!("input_{k}"));
    for l in lab.lines.iter().filter(|l| l.contains("INPUT-LAT")) {
        eprintln!("{l}");
    }
    assert_eq!(
        lab.l1_get("scenario_input_rc"),
        Some("0"),
        "input scenario in level 1\n{all}"
    );
    let runs = |name: &str| lab.l2_run(name);

    // Passthrough of a host device, unplugged and plugged again.
    let ev = runs("input-evdev").unwrap_or_else(|| panic!("no input-evdev run\n{all}"));
    assert_eq!(ev.exit, Some(0), "input-evdev VMM exit\n{all}");
    assert_eq!(ev.done_rc, Some(0), "input-evdev scenario\n{all}");
    assert_eq!(ev.results.get("kbd_found").map(String::as_str), Some("yes"));
    assert_eq!(
        ev.results.get("kbd_ids").map(String::as_str),
        Some("0006:5356:0010"),
        "ids of the uinput device"
    );
    assert_eq!(events(ev, "KEYS1 "), taps(&[30, 48, 46]), "first batch");
    assert_eq!(events(ev, "KEYS2 "), taps(&[32]), "after the replug");
    assert_eq!(l1("unplug_seen"), Some("yes"), "{all}");
    assert_eq!(l1("replug_seen"), Some("yes"), "{all}");
    assert_eq!(l1("evdev_led"), Some("1"), "LED to uinput\n{all}");
    assert_eq!(l1("evdev_backend_exit"), Some("0"));

    for name in ["input-profile", "input-qemu"] {
        let run = runs(name).unwrap_or_else(|| panic!("no {name} run\n{all}"));
        check_profile_run(name, run, &all);
        let vmm = if name == "input-qemu" {
            "qemu"
        } else {
            "splitvm"
        };
        // Measured, not asserted: round trips timed in the level-2 guest.
        let lat = l1(&format!("{vmm}_latency")).unwrap_or_default();
        assert!(
            lat.starts_with("n="),
            "{name}: latency measured: {lat:?}\n{all}"
        );
        assert_eq!(
            l1(&format!("{vmm}_led")),
            Some("1"),
            "{name}: LED reached the event-socket client\n{all}"
        );
    }
    // kill -9 of the keyboard's backend under splitvm: a new one took over
    // and carried the LED/key round trips above.
    assert_eq!(l1("kbd_restart"), Some("ok"), "{all}");
    assert_eq!(l1("kbd_backend_exit"), Some("0"));
    assert_eq!(l1("touch_backend_exit"), Some("0"));
    assert_eq!(l1("mouse_backend_exit"), Some("0"));
    assert_eq!(l1("tablet_backend_exit"), Some("0"));
    assert_eq!(l1("sockets_left"), Some("no"), "sockets removed at SIGTERM");
}
