//! Just enough of the i8042 keyboard controller for Linux's `reboot=k`:
//! command 0xFE on port 0x64 resets the machine, which ends the VM.

use super::bus::BusDevice;
use crate::vstate::vcpu::{ExitSignal, VmExitEvent};

const CMD_RESET_CPU: u8 = 0xfe;
/// Port 0x64 is offset 4 from the device base 0x60.
const COMMAND_OFFSET: u64 = 4;

pub struct I8042 {
    exit: ExitSignal,
}

impl I8042 {
    pub fn new(exit: ExitSignal) -> I8042 {
        I8042 { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty, so the kernel's
        // wait loops before the reset command finish at once.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            self.exit.signal(VmExitEvent::Reset);
        }
    }
}
