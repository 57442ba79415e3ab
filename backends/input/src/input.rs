//! The virtio-input device model: the config space (`select`/`subsel`
//! answered from a [`Capabilities`] snapshot) and the bounded queue of
//! events waiting for guest buffers. No sockets and no `unsafe`, so fuzz
//! targets and unit tests drive it directly.

use std::collections::{BTreeMap, VecDeque};

/// Event types (`linux/input-event-codes.h`).
pub const EV_SYN: u16 = 0x00;
/// Keys and buttons.
pub const EV_KEY: u16 = 0x01;
/// Relative axes.
pub const EV_REL: u16 = 0x02;
/// Absolute axes.
pub const EV_ABS: u16 = 0x03;
/// Miscellaneous.
pub const EV_MSC: u16 = 0x04;
/// Switches.
pub const EV_SW: u16 = 0x05;
/// LEDs.
pub const EV_LED: u16 = 0x11;
/// Sounds.
pub const EV_SND: u16 = 0x12;
/// Autorepeat.
pub const EV_REP: u16 = 0x14;
/// Force feedback.
pub const EV_FF: u16 = 0x15;
/// Highest event type.
pub const EV_MAX: u16 = 0x1f;
/// `SYN_REPORT`: ends one report.
pub const SYN_REPORT: u16 = 0;
/// `SYN_DROPPED`: the source lost events.
pub const SYN_DROPPED: u16 = 3;

/// `VIRTIO_INPUT_CFG_UNSET`.
pub const CFG_UNSET: u8 = 0x00;
/// `VIRTIO_INPUT_CFG_ID_NAME`.
pub const CFG_ID_NAME: u8 = 0x01;
/// `VIRTIO_INPUT_CFG_ID_SERIAL`.
pub const CFG_ID_SERIAL: u8 = 0x02;
/// `VIRTIO_INPUT_CFG_ID_DEVIDS`.
pub const CFG_ID_DEVIDS: u8 = 0x03;
/// `VIRTIO_INPUT_CFG_PROP_BITS`.
pub const CFG_PROP_BITS: u8 = 0x10;
/// `VIRTIO_INPUT_CFG_EV_BITS`.
pub const CFG_EV_BITS: u8 = 0x11;
/// `VIRTIO_INPUT_CFG_ABS_INFO`.
pub const CFG_ABS_INFO: u8 = 0x12;

/// Bytes of the union in `struct virtio_input_config`.
pub const CFG_PAYLOAD: usize = 128;
/// Bytes of `struct virtio_input_config` (select, subsel, size, 5 reserved, union).
pub const CONFIG_SIZE: usize = 8 + CFG_PAYLOAD;
/// Bytes of `struct virtio_input_event`.
pub const EVENT_SIZE: usize = 8;

/// One input event as virtio-input carries it (`le16 type, le16 code, le32 value`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InputEvent {
    /// `EV_*`.
    pub type_: u16,
    /// Code within the type.
    pub code: u16,
    /// Value.
    pub value: i32,
}

impl InputEvent {
    /// An event.
    pub const fn new(type_: u16, code: u16, value: i32) -> Self {
        InputEvent { type_, code, value }
    }

    /// `EV_SYN`/`SYN_REPORT`.
    pub const fn syn() -> Self {
        InputEvent::new(EV_SYN, SYN_REPORT, 0)
    }

    /// Whether this event ends a report.
    pub fn is_syn_report(&self) -> bool {
        self.type_ == EV_SYN && self.code == SYN_REPORT
    }

    /// The 8 bytes of a `virtio_input_event`.
    pub fn to_bytes(&self) -> [u8; EVENT_SIZE] {
        let mut b = [0u8; EVENT_SIZE];
        b[..2].copy_from_slice(&self.type_.to_le_bytes());
        b[2..4].copy_from_slice(&self.code.to_le_bytes());
        b[4..].copy_from_slice(&self.value.to_le_bytes());
        b
    }

    /// Parses a `virtio_input_event`.
    pub fn from_bytes(b: &[u8; EVENT_SIZE]) -> Self {
        InputEvent {
            type_: u16::from_le_bytes([b[0], b[1]]),
            code: u16::from_le_bytes([b[2], b[3]]),
            value: i32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
}

/// `struct virtio_input_absinfo` (and the useful part of `input_absinfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AbsInfo {
    /// Minimum.
    pub min: i32,
    /// Maximum.
    pub max: i32,
    /// Fuzz.
    pub fuzz: i32,
    /// Flat.
    pub flat: i32,
    /// Resolution.
    pub res: i32,
}

impl AbsInfo {
    /// A range with no fuzz, flat or resolution.
    pub const fn range(min: i32, max: i32) -> Self {
        AbsInfo {
            min,
            max,
            fuzz: 0,
            flat: 0,
            res: 0,
        }
    }
}

/// `struct virtio_input_devids`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DevIds {
    /// `BUS_*`.
    pub bustype: u16,
    /// Vendor.
    pub vendor: u16,
    /// Product.
    pub product: u16,
    /// Version.
    pub version: u16,
}

/// What the device is and what it can report: everything the config space
/// exposes. Built from an evdev device or a profile.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// `ID_NAME`.
    pub name: String,
    /// `ID_SERIAL`.
    pub serial: String,
    /// `ID_DEVIDS`.
    pub ids: DevIds,
    /// `PROP_BITS` bitmap (`INPUT_PROP_*`).
    pub props: Vec<u8>,
    /// `EV_BITS` bitmaps by event type (a type with no bits is absent).
    pub ev_bits: BTreeMap<u16, Vec<u8>>,
    /// `ABS_INFO` by axis.
    pub abs: BTreeMap<u16, AbsInfo>,
}

/// Sets bit `n` of a little-endian bitmap, growing it (up to the payload size).
pub fn set_bit(map: &mut Vec<u8>, n: u16) {
    let byte = usize::from(n / 8);
    if byte >= CFG_PAYLOAD {
        return;
    }
    if map.len() <= byte {
        map.resize(byte + 1, 0);
    }
    map[byte] |= 1 << (n % 8);
}

/// Whether bit `n` of a bitmap is set.
pub fn test_bit(map: &[u8], n: u16) -> bool {
    map.get(usize::from(n / 8))
        .is_some_and(|b| b & (1 << (n % 8)) != 0)
}

impl Capabilities {
    /// Declares that the device reports `code` of `type_`.
    pub fn set(&mut self, type_: u16, code: u16) {
        set_bit(self.ev_bits.entry(type_).or_default(), code);
    }

    /// Declares an absolute axis with its range.
    pub fn set_abs(&mut self, code: u16, info: AbsInfo) {
        self.set(EV_ABS, code);
        self.abs.insert(code, info);
    }

    /// Declares an `INPUT_PROP_*`.
    pub fn set_prop(&mut self, prop: u16) {
        set_bit(&mut self.props, prop);
    }

    /// Whether the device reports `code` of `type_` (`EV_SYN` always).
    pub fn supports(&self, type_: u16, code: u16) -> bool {
        type_ == EV_SYN || self.ev_bits.get(&type_).is_some_and(|m| test_bit(m, code))
    }
}

/// The `select`/`subsel` registers of the config space.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConfigSpace {
    /// `select`.
    pub select: u8,
    /// `subsel`.
    pub subsel: u8,
}

fn trimmed(map: &[u8]) -> &[u8] {
    let end = map.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    &map[..end.min(CFG_PAYLOAD)]
}

impl ConfigSpace {
    /// A driver write of `data` at `offset`: only `select` (0) and `subsel`
    /// (1) are writable; other bytes are ignored.
    pub fn write(&mut self, offset: u32, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            match u64::from(offset) + i as u64 {
                0 => self.select = b,
                1 => self.subsel = b,
                _ => {}
            }
        }
    }

    /// The payload the current `select`/`subsel` selects (empty when there
    /// is nothing to report, which the driver reads as `size == 0`).
    pub fn payload(&self, caps: &Capabilities) -> Vec<u8> {
        let sub = u16::from(self.subsel);
        let mut p = match self.select {
            CFG_ID_NAME if self.subsel == 0 => caps.name.as_bytes().to_vec(),
            CFG_ID_SERIAL if self.subsel == 0 => caps.serial.as_bytes().to_vec(),
            CFG_ID_DEVIDS if self.subsel == 0 => {
                let ids = caps.ids;
                [ids.bustype, ids.vendor, ids.product, ids.version]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect()
            }
            CFG_PROP_BITS if self.subsel == 0 => trimmed(&caps.props).to_vec(),
            CFG_EV_BITS => caps
                .ev_bits
                .get(&sub)
                .map(|m| trimmed(m).to_vec())
                .unwrap_or_default(),
            CFG_ABS_INFO => caps
                .abs
                .get(&sub)
                .filter(|_| caps.supports(EV_ABS, sub))
                .map(|a| {
                    [a.min, a.max, a.fuzz, a.flat, a.res]
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect()
                })
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        p.truncate(CFG_PAYLOAD);
        p
    }

    /// The whole `virtio_input_config` as the driver reads it now.
    pub fn bytes(&self, caps: &Capabilities) -> [u8; CONFIG_SIZE] {
        let p = self.payload(caps);
        let mut b = [0u8; CONFIG_SIZE];
        b[0] = self.select;
        b[1] = self.subsel;
        // `payload` is at most CFG_PAYLOAD (128) bytes, so it fits a u8.
        b[2] = u8::try_from(p.len()).unwrap_or(u8::MAX);
        b[8..8 + p.len()].copy_from_slice(&p);
        b
    }

    /// `size` bytes at `offset` (zero past the end of the structure).
    pub fn read(&self, caps: &Capabilities, offset: u32, size: u32) -> Vec<u8> {
        let all = self.bytes(caps);
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let size = usize::try_from(size).unwrap_or(0);
        let mut out: Vec<u8> = all.iter().skip(start).take(size).copied().collect();
        out.resize(size, 0);
        out
    }
}

/// Events waiting for guest buffers. Only whole reports (ending with
/// `SYN_REPORT`) become deliverable; the one being built stays aside. Past
/// `limit` queued events, whole oldest reports are dropped and counted; a
/// report whose first events already reached the guest is never dropped,
/// so the guest never sees part of a report.
#[derive(Debug)]
pub struct EventQueue {
    reports: VecDeque<Vec<InputEvent>>,
    partial: Vec<InputEvent>,
    front_sent: usize,
    queued: usize,
    limit: usize,
    dropped_reports: u64,
    dropped_events: u64,
}

impl EventQueue {
    /// An empty queue holding at most about `limit` events.
    pub fn new(limit: usize) -> Self {
        EventQueue {
            reports: VecDeque::new(),
            partial: Vec::new(),
            front_sent: 0,
            queued: 0,
            limit: limit.max(1),
            dropped_reports: 0,
            dropped_events: 0,
        }
    }

    /// Adds one event; a `SYN_REPORT` completes the report being built.
    pub fn push(&mut self, ev: InputEvent) {
        self.partial.push(ev);
        if ev.is_syn_report() {
            let r = std::mem::take(&mut self.partial);
            self.queued += r.len();
            self.reports.push_back(r);
            self.enforce_limit();
        } else if self.partial.len() > self.limit {
            // A source that never ends its report: drop what it built.
            self.dropped_events += self.partial.len() as u64;
            self.dropped_reports += 1;
            self.partial.clear();
        }
    }

    /// Drops the report being built (the source lost events: `SYN_DROPPED`).
    pub fn discard_partial(&mut self) {
        if !self.partial.is_empty() {
            self.dropped_events += self.partial.len() as u64;
            self.dropped_reports += 1;
            self.partial.clear();
        }
    }

    fn enforce_limit(&mut self) {
        while self.queued > self.limit {
            // Index of the oldest report nothing of which was delivered.
            let victim = usize::from(self.front_sent > 0);
            let Some(r) = self.reports.remove(victim) else {
                break;
            };
            self.queued -= r.len();
            self.dropped_events += r.len() as u64;
            self.dropped_reports += 1;
        }
    }

    /// The next deliverable event.
    pub fn peek(&self) -> Option<InputEvent> {
        self.reports
            .front()
            .and_then(|r| r.get(self.front_sent))
            .copied()
    }

    /// Marks the event [`peek`](Self::peek) returned as delivered.
    pub fn advance(&mut self) {
        let Some(front) = self.reports.front() else {
            return;
        };
        self.front_sent += 1;
        self.queued = self.queued.saturating_sub(1);
        if self.front_sent >= front.len() {
            self.reports.pop_front();
            self.front_sent = 0;
        }
    }

    /// Drops everything queued (not counted as overflow); returns how many
    /// events were dropped.
    pub fn clear(&mut self) -> usize {
        let n = self.queued + self.partial.len();
        self.reports.clear();
        self.partial.clear();
        self.front_sent = 0;
        self.queued = 0;
        n
    }

    /// Deliverable events queued.
    pub fn len(&self) -> usize {
        self.queued
    }

    /// Whether nothing is deliverable.
    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// Reports dropped because the queue was full.
    pub fn dropped_reports(&self) -> u64 {
        self.dropped_reports
    }

    /// Events dropped with them.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: u16, v: i32) -> InputEvent {
        InputEvent::new(EV_KEY, code, v)
    }

    fn drain(q: &mut EventQueue) -> Vec<InputEvent> {
        let mut out = Vec::new();
        while let Some(e) = q.peek() {
            out.push(e);
            q.advance();
        }
        out
    }

    #[test]
    fn event_bytes_round_trip() {
        let e = InputEvent::new(EV_ABS, 0x35, -7);
        assert_eq!(InputEvent::from_bytes(&e.to_bytes()), e);
        assert_eq!(key(30, 1).to_bytes(), [1, 0, 30, 0, 1, 0, 0, 0]);
    }

    #[test]
    fn queue_delivers_only_whole_reports_in_order() {
        let mut q = EventQueue::new(64);
        q.push(key(30, 1));
        assert_eq!(q.peek(), None, "no SYN yet");
        q.push(InputEvent::syn());
        q.push(key(30, 0));
        q.push(InputEvent::syn());
        assert_eq!(
            drain(&mut q),
            vec![key(30, 1), InputEvent::syn(), key(30, 0), InputEvent::syn()]
        );
        assert!(q.is_empty());
    }

    #[test]
    fn queue_overflow_drops_whole_oldest_reports() {
        let mut q = EventQueue::new(4);
        for code in 1..=5u16 {
            q.push(key(code, 1));
            q.push(InputEvent::syn());
        }
        assert_eq!(q.dropped_reports(), 3);
        assert_eq!(q.dropped_events(), 6);
        assert_eq!(
            drain(&mut q),
            vec![key(4, 1), InputEvent::syn(), key(5, 1), InputEvent::syn()]
        );
    }

    #[test]
    fn queue_never_drops_a_partly_delivered_report() {
        let mut q = EventQueue::new(4);
        q.push(key(1, 1));
        q.push(key(2, 1));
        q.push(InputEvent::syn());
        assert_eq!(q.peek(), Some(key(1, 1)));
        q.advance();
        for code in 10..=12u16 {
            q.push(key(code, 1));
            q.push(InputEvent::syn());
        }
        let got = drain(&mut q);
        assert_eq!(&got[..2], &[key(2, 1), InputEvent::syn()]);
        assert_eq!(&got[2..], &[key(12, 1), InputEvent::syn()]);
    }

    #[test]
    fn config_space_selects_payloads() {
        let mut caps = Capabilities {
            name: "kbd".into(),
            serial: "s1".into(),
            ids: DevIds {
                bustype: 6,
                vendor: 0x1234,
                product: 2,
                version: 1,
            },
            ..Default::default()
        };
        caps.set(EV_KEY, 30);
        caps.set_abs(0, AbsInfo::range(0, 32767));
        caps.set_prop(1);
        let mut c = ConfigSpace::default();
        assert_eq!(c.read(&caps, 0, 8), vec![0; 8], "unset");
        c.write(0, &[CFG_ID_NAME, 0]);
        let b = c.read(&caps, 0, CONFIG_SIZE as u32);
        assert_eq!(b[2], 3);
        assert_eq!(&b[8..11], b"kbd");
        c.write(0, &[CFG_EV_BITS]);
        c.write(1, &[EV_KEY as u8]);
        let b = c.bytes(&caps);
        assert_eq!(b[2], 4);
        assert_eq!(b[8 + 3], 1 << 6);
        c.write(0, &[CFG_EV_BITS, EV_REL as u8]);
        assert_eq!(c.bytes(&caps)[2], 0);
        c.write(0, &[CFG_ABS_INFO, 0]);
        let b = c.bytes(&caps);
        assert_eq!(b[2], 20);
        assert_eq!(&b[12..16], &32767i32.to_le_bytes());
        c.write(0, &[CFG_ID_DEVIDS, 0]);
        assert_eq!(&c.bytes(&caps)[8..12], &[6, 0, 0x34, 0x12]);
        c.write(0, &[CFG_PROP_BITS, 0]);
        assert_eq!(&c.bytes(&caps)[2..3], &[1]);
        assert_eq!(c.read(&caps, 130, 20).len(), 20, "padded past the end");
        assert_eq!(c.read(&caps, u32::MAX, 4), vec![0; 4]);
    }
}
