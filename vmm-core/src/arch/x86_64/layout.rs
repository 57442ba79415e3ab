//! Guest physical address map (x86_64).
//!
//! ```text
//! 0x0000_0500  GDT            0x0000_0520  IDT
//! 0x0000_6000  PVH start info 0x0000_7000  zero page (boot_params)
//! 0x0000_8ff0  boot stack     0x0000_9000  PML4, PDPT, PD (identity map 1 GiB)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  EBDA: MP table
//! 0x000e_0000  ACPI: RSDP, XSDT, FADT, MADT, DSDT (reserved in e820)
//! 0x0010_0000  high memory: kernel, ..., initrd at the top of low RAM
//! 0xc000_0000  start of the 32-bit hole (no RAM up to 4 GiB)
//! 0xd000_0000  virtio-mmio windows, 4 KiB each
//! 0xfec0_0000  IOAPIC         0xfee0_0000  local APIC
//! 0x1_0000_0000 RAM above the hole
//! ```

pub const GDT_ADDR: u64 = 0x500;
pub const IDT_ADDR: u64 = 0x520;
pub const PVH_INFO_START: u64 = 0x6000;
pub const PVH_MODLIST_START: u64 = 0x6040;
pub const PVH_MEMMAP_START: u64 = 0x6100;
pub const ZERO_PAGE_START: u64 = 0x7000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
pub const CMDLINE_START: u64 = 0x20000;
/// x86 Linux's `COMMAND_LINE_SIZE`, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 2048;
pub const EBDA_START: u64 = 0x9fc00;
pub const RSDP_ADDR: u64 = 0xe0000;
pub const ACPI_END: u64 = 0x10_0000;
pub const HIMEM_START: u64 = 0x10_0000;

/// First address of the 32-bit MMIO hole; RAM stops here and resumes at 4 GiB.
pub const MMIO32_START: u64 = 0xc000_0000;
pub const FOUR_GIB: u64 = 0x1_0000_0000;
/// Virtio-mmio device windows.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const APIC_ADDR: u32 = 0xfee0_0000;

/// KVM needs three pages for the TSS and one for the identity map on Intel;
/// both sit just below the IOAPIC, inside the hole.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// Legacy I/O ports and IRQs.
pub const SERIAL_PORT: u16 = 0x3f8;
pub const SERIAL_IRQ: u32 = 4;
pub const I8042_PORT: u16 = 0x60;
pub const CMOS_PORT: u16 = 0x70;
/// First GSI handed to virtio devices (ISA IRQs stay below it).
pub const VIRTIO_GSI_START: u32 = 5;
/// The IOAPIC has 24 pins.
pub const GSI_MAX: u32 = 23;
