//! x86_64: address map, boot protocols, CPUID, registers, firmware tables.

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;
