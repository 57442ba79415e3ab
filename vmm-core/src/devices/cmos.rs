//! A CMOS real-time clock that reports the host's UTC time, so the guest's
//! boot-time RTC read terminates (all-ones reads would leave the
//! update-in-progress bit set forever).

use std::time::{SystemTime, UNIX_EPOCH};

use super::bus::BusDevice;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

#[derive(Default)]
pub struct Cmos {
    index: u8,
}

fn bcd(v: u64) -> u8 {
    (((v / 10) % 10) << 4 | (v % 10)) as u8
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn register(index: u8, now: u64) -> u8 {
    let days = (now / 86_400) as i64;
    let secs = now % 86_400;
    let (y, m, d) = civil(days);
    match index {
        REG_SECONDS => bcd(secs % 60),
        REG_MINUTES => bcd(secs / 60 % 60),
        REG_HOURS => bcd(secs / 3600),
        REG_WEEKDAY => bcd(((days + 4).rem_euclid(7) + 1) as u64),
        REG_DAY => bcd(d),
        REG_MONTH => bcd(m),
        REG_YEAR => bcd(y.rem_euclid(100) as u64),
        REG_CENTURY => bcd((y / 100) as u64),
        REG_A => 0x26, // 32.768 kHz time base, 1024 Hz rate, no update in progress
        REG_B => 0x02, // 24-hour mode, BCD
        REG_D => 0x80, // valid RAM and time
        _ => 0,
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = if offset == 1 {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            register(self.index, now)
        } else {
            self.index
        };
        data.fill(v);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 {
            // Bit 7 is the NMI mask, not part of the index.
            self.index = data.first().copied().unwrap_or(0) & 0x7f;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_a_known_date_in_bcd() {
        // 2026-11-30 09:45:07 UTC, a Monday.
        let t = 1_796_031_907;
        assert_eq!(register(REG_YEAR, t), 0x26);
        assert_eq!(register(REG_CENTURY, t), 0x20);
        assert_eq!(register(REG_MONTH, t), 0x11);
        assert_eq!(register(REG_DAY, t), 0x30);
        assert_eq!(register(REG_HOURS, t), 0x09);
        assert_eq!(register(REG_MINUTES, t), 0x45);
        assert_eq!(register(REG_SECONDS, t), 0x07);
        assert_eq!(register(REG_WEEKDAY, t), 0x02);
        assert_eq!(register(REG_A, t) & 0x80, 0, "update-in-progress clear");
    }
}
