//! The malformed chains every backend gets, as one table: loops, `next`
//! past the table, a head past the queue, addresses outside memory or
//! wrapping, zero and huge lengths, the wrong direction, and broken
//! indirect tables (odd length, empty, huge, outside memory, nested).
//! [`run_malformed_chains`] submits each on a queue of a [`Device`], waits
//! for the chain to come back (or, for a head the device cannot name, not),
//! then asserts that a correct request still completes. Device-specific
//! expectations (status bytes, counters) stay in each device's tests.

use std::time::Duration;

use super::{Desc, HostileFrontend, F_INDIRECT, F_NEXT, F_WRITE};

/// A device under hostile test.
pub trait Device {
    /// Its frontend.
    fn fe(&mut self) -> &mut HostileFrontend;
    /// Makes the device use a buffer on queue `q` (for queues the device
    /// fills on its own schedule: an input event, a frame on the wire).
    fn trigger(&mut self, _q: usize) {}
    /// A correct request that must complete correctly; `tag` names the
    /// case it follows.
    fn assert_alive(&mut self, tag: &str);
}

/// What became of one malformed chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The case.
    pub what: String,
    /// The used length it came back with, `None` if it never came back.
    pub used_len: Option<u32>,
}

fn d(addr: u64, len: u32, flags: u16) -> Desc {
    Desc {
        addr,
        len,
        flags,
        next: 0,
    }
}

/// How a case is put on the ring.
enum Shape {
    /// Written as a chain in fresh slots.
    Chain(Vec<Desc>),
    /// Two descriptors pointing at each other.
    Loop(Desc),
    /// One descriptor whose `next` is past the table.
    NextPastTable(Desc),
    /// An avail entry naming a descriptor past the queue: no used entry
    /// can name it, so none is expected.
    HeadPastQueue,
}

fn cases(fe: &mut HostileFrontend, dir: u16) -> Vec<(&'static str, Shape)> {
    let end = fe.mem.size;
    let buf = fe.alloc(4096);
    let wrong = dir ^ F_WRITE;
    let nested = fe.buf(&d(buf, 64, F_INDIRECT).bytes());
    let table = fe.buf(&[d(buf, 64, dir).bytes(), d(buf, 64, dir).bytes()].concat());
    vec![
        ("zero-length descriptor", Shape::Chain(vec![d(buf, 0, dir)])),
        ("length u32::MAX", Shape::Chain(vec![d(buf, u32::MAX, dir)])),
        (
            "address outside memory",
            Shape::Chain(vec![d(end + 0x1000, 64, dir)]),
        ),
        (
            "buffer across the end of memory",
            Shape::Chain(vec![d(end - 8, 64, dir)]),
        ),
        (
            "address wraps past u64::MAX",
            Shape::Chain(vec![d(u64::MAX - 7, 64, dir)]),
        ),
        ("wrong direction", Shape::Chain(vec![d(buf, 64, wrong)])),
        (
            "direction flips back",
            Shape::Chain(vec![
                d(buf, 32, dir),
                d(buf + 32, 32, wrong),
                d(buf, 32, dir),
            ]),
        ),
        (
            "chain as long as the queue, zero lengths",
            Shape::Chain(vec![d(buf, 0, dir); usize::from(fe.queues[0].ring.size)]),
        ),
        ("loop", Shape::Loop(d(buf, 64, dir))),
        ("next past the table", Shape::NextPastTable(d(buf, 64, dir))),
        ("head past the queue size", Shape::HeadPastQueue),
        (
            "indirect table of 20 bytes",
            Shape::Chain(vec![d(table, 20, F_INDIRECT)]),
        ),
        (
            "empty indirect table",
            Shape::Chain(vec![d(table, 0, F_INDIRECT)]),
        ),
        (
            "indirect table of 2^28 entries",
            Shape::Chain(vec![d(table, !15u32, F_INDIRECT)]),
        ),
        (
            "indirect table outside memory",
            Shape::Chain(vec![d(end + 0x1000, 32, F_INDIRECT)]),
        ),
        (
            "nested indirect table",
            Shape::Chain(vec![d(nested, 16, F_INDIRECT)]),
        ),
        (
            "indirect descriptor with NEXT",
            Shape::Chain(vec![d(table, 32, F_INDIRECT), d(buf, 64, dir)]),
        ),
    ]
}

/// Puts `shape` on queue `q`; returns its head.
fn put(fe: &mut HostileFrontend, q: usize, shape: Shape) -> u16 {
    let ring = fe.queues[q].ring.clone();
    match shape {
        Shape::Chain(descs) => fe.write_raw(q, &descs),
        Shape::Loop(desc) => {
            let a = fe.write_raw(q, &[desc, desc]);
            let b = (a + 1) % ring.size;
            ring.write_desc(
                &fe.mem,
                a,
                Desc {
                    flags: desc.flags | F_NEXT,
                    next: b,
                    ..desc
                },
            );
            ring.write_desc(
                &fe.mem,
                b,
                Desc {
                    flags: desc.flags | F_NEXT,
                    next: a,
                    ..desc
                },
            );
            a
        }
        Shape::NextPastTable(desc) => {
            let a = fe.write_raw(q, &[desc]);
            let next = ring.size.saturating_add(7);
            ring.write_desc(
                &fe.mem,
                a,
                Desc {
                    flags: desc.flags | F_NEXT,
                    next,
                    ..desc
                },
            );
            a
        }
        Shape::HeadPastQueue => ring.size.saturating_add(1000),
    }
}

/// Runs every malformed chain on queue `q` of `dev` (`dir`: the direction
/// of that queue's buffers, 0 or [`F_WRITE`]); after each, a correct
/// request must complete. Returns what came back, for the log.
pub fn run_malformed_chains<D: Device>(dev: &mut D, q: usize, dir: u16) -> Vec<Outcome> {
    let list = cases(dev.fe(), dir);
    let mut out = Vec::new();
    for (what, shape) in list {
        let expect_used = !matches!(shape, Shape::HeadPastQueue);
        let head = put(dev.fe(), q, shape);
        dev.fe().submit(q, head);
        dev.trigger(q);
        let used_len = if expect_used {
            let limit = dev.fe().timeout;
            let (id, len) = dev
                .fe()
                .try_wait_used(q, limit)
                .unwrap_or_else(|| panic!("{what}: chain never returned"));
            assert_eq!(id, u32::from(head), "{what}: used id");
            Some(len)
        } else {
            // Nothing names this head; give a wrong used entry a moment to
            // show up before the good request (which checks its own id).
            assert_eq!(
                dev.fe().try_wait_used(q, Duration::from_millis(100)),
                None,
                "{what}: a used entry for a head the device cannot have"
            );
            None
        };
        dev.assert_alive(what);
        out.push(Outcome {
            what: what.to_string(),
            used_len,
        });
    }
    for o in &out {
        eprintln!(
            "malformed chain on queue {q}: {:40} -> used {:?}",
            o.what, o.used_len
        );
    }
    out
}
