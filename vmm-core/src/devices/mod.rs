//! Devices the VMM itself emulates: the port/MMIO buses and the few legacy
//! devices a Linux guest expects (16550 serial, i8042 reset, CMOS clock).

pub mod bus;
pub mod cmos;
pub mod console_out;
pub mod i8042;
pub mod serial;
pub mod virtio;
