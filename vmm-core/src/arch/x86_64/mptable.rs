//! Intel MultiProcessor table (spec 1.4) in the EBDA, for kernels built
//! without ACPI: processors, the ISA bus, the IOAPIC and identity-routed
//! ISA interrupts.

use vm_memory::{Bytes, GuestAddress};

use super::layout::{APIC_ADDR, EBDA_START, IOAPIC_ADDR};
use crate::vstate::memory::GuestMemory;

/// Errors writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("too many vCPUs for the MP table: {0}")]
    TooManyCpus(u8),
    #[error("writing the MP table failed: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const ISA_IRQS: u8 = 16;
/// Family 6, as a generic signature.
const CPU_SIGNATURE: u32 = 0x600;
/// FPU and APIC present.
const CPU_FEATURES: u32 = 0x201;

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_sub(*b))
}

/// Builds the table bytes to be placed at `base`.
fn build(base: u64, cpus: u8) -> Vec<u8> {
    let config_addr = base + 16;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        entries.extend([MP_PROCESSOR, id, APIC_VERSION]);
        entries.push(CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 });
        entries.extend(CPU_SIGNATURE.to_le_bytes());
        entries.extend(CPU_FEATURES.to_le_bytes());
        entries.extend([0u8; 8]);
        count += 1;
    }
    entries.extend([MP_BUS, 0]);
    entries.extend(*b"ISA   ");
    count += 1;
    let ioapic_id = cpus.saturating_add(1);
    entries.extend([MP_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend(IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for irq in 0..ISA_IRQS {
        // KVM's default routing sends ISA IRQ n to IOAPIC pin n.
        entries.extend([MP_INTSRC, MP_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    entries.extend([MP_LINTSRC, MP_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend([MP_LINTSRC, MP_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let mut header = Vec::with_capacity(44);
    header.extend(*b"PCMP");
    header.extend(((44 + entries.len()) as u16).to_le_bytes());
    header.push(4); // spec revision 1.4
    header.push(0); // checksum, below
    header.extend(*b"SPLITVM ");
    header.extend(*b"000000000000");
    header.extend(0u32.to_le_bytes()); // OEM table pointer
    header.extend(0u16.to_le_bytes()); // OEM table size
    header.extend(count.to_le_bytes());
    header.extend(APIC_ADDR.to_le_bytes());
    header.extend([0, 0, 0, 0]); // extended table length, checksum, reserved
    let mut table = header;
    table.extend(entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16);
    fp.extend(*b"_MP_");
    fp.extend((config_addr as u32).to_le_bytes());
    fp.push(1); // length in 16-byte units
    fp.push(4); // spec revision
    fp.push(0); // checksum, below
    fp.extend([0u8; 5]);
    fp[10] = checksum(&fp);
    fp.extend(table);
    fp
}

/// Writes the MP floating pointer and configuration table at the EBDA.
pub fn setup_mptable(mem: &GuestMemory, cpus: u8) -> Result<(), MptableError> {
    if cpus >= 254 {
        return Err(MptableError::TooManyCpus(cpus));
    }
    let bytes = build(EBDA_START, cpus);
    mem.write_slice(&bytes, GuestAddress(EBDA_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_are_zero_and_counts_match() {
        let b = build(EBDA_START, 2);
        assert_eq!(&b[0..4], b"_MP_");
        assert_eq!(b[..16].iter().fold(0u8, |a, x| a.wrapping_add(*x)), 0);
        let len = u16::from_le_bytes([b[20], b[21]]) as usize;
        assert_eq!(len, b.len() - 16);
        assert_eq!(b[16..].iter().fold(0u8, |a, x| a.wrapping_add(*x)), 0);
        // 2 CPUs + bus + IOAPIC + 16 interrupts + 2 local interrupts.
        assert_eq!(u16::from_le_bytes([b[16 + 34], b[16 + 35]]), 22);
    }
}
