//! ACPI tables (hardware-reduced): RSDP, XSDT, FADT, MADT, DSDT. Debian's
//! kernels find virtio-mmio devices only through `LNRO0005` entries here.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress};

use super::layout::{ACPI_END, APIC_ADDR, IOAPIC_ADDR, RSDP_ADDR, SERIAL_IRQ, SERIAL_PORT};
use crate::vstate::memory::GuestMemory;

const OEM_ID: [u8; 6] = *b"SPLTVM";
const OEM_REVISION: u32 = 1;
/// IA-PC boot architecture flags: no VGA, no MSI, no ASPM control.
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 3) | (1 << 4);

/// A memory-mapped device to describe in the DSDT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDeviceInfo {
    pub addr: u64,
    pub len: u64,
    pub gsi: u32,
}

/// Errors building ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("ACPI tables do not fit below 1 MiB ({0} bytes)")]
    TooBig(u64),
    #[error("writing ACPI tables failed: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

fn to_bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// The DSDT body: COM1 and every virtio-mmio device. Each device is built
/// and serialized in one expression: the AML builders borrow temporaries.
fn dsdt_body(devices: &[MmioDeviceInfo]) -> Vec<u8> {
    let mut body = Vec::new();
    aml::Device::new(
        "_SB_.COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::IO::new(SERIAL_PORT, SERIAL_PORT, 1, 8),
                    &aml::Interrupt::new(true, true, false, false, SERIAL_IRQ),
                ]),
            ),
        ],
    )
    .to_aml_bytes(&mut body);
    let hid: aml::AmlStr = "LNRO0005";
    for (i, d) in devices.iter().enumerate() {
        let uid = i as u32;
        let path = format!("_SB_.V{i:03X}");
        aml::Device::new(
            path.as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &hid),
                &aml::Name::new("_UID".into(), &uid),
                &aml::Name::new("_CCA".into(), &aml::ONE),
                &aml::Name::new(
                    "_CRS".into(),
                    &aml::ResourceTemplate::new(vec![
                        &aml::Memory32Fixed::new(true, d.addr as u32, d.len as u32),
                        &aml::Interrupt::new(true, true, false, false, d.gsi),
                    ]),
                ),
            ],
        )
        .to_aml_bytes(&mut body);
    }
    body
}

/// Builds all tables and writes them from `RSDP_ADDR` on. Returns the RSDP address.
pub fn setup_acpi(
    mem: &GuestMemory,
    cpus: u8,
    devices: &[MmioDeviceInfo],
) -> Result<u64, AcpiError> {
    let mut tables: Vec<(u64, Vec<u8>)> = Vec::new();
    // RSDP first (fixed address), tables after it, 16-byte aligned.
    let mut next = RSDP_ADDR + 64;
    let mut place = |bytes: Vec<u8>| -> u64 {
        let at = next;
        next = (next + bytes.len() as u64 + 15) & !15;
        tables.push((at, bytes));
        at
    };

    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"SPVMDSDT", OEM_REVISION);
    dsdt.append_slice(&dsdt_body(devices));
    let dsdt_addr = place(dsdt.as_slice().to_vec());

    let mut fadt = FADTBuilder::new(OEM_ID, *b"SPVMFACP", OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .dsdt_64(dsdt_addr);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*b"SPLITVM ").into();
    let fadt_addr = place(to_bytes(&fadt.finalize()));

    let mut madt = MADT::new(
        OEM_ID,
        *b"SPVMAPIC",
        OEM_REVISION,
        LocalInterruptController::Address(APIC_ADDR),
    );
    for id in 0..cpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_ADDR, 0));
    let madt_addr = place(to_bytes(&madt));

    let mut xsdt = XSDT::new(OEM_ID, *b"SPVMXSDT", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt_addr = place(to_bytes(&xsdt));

    if next > ACPI_END {
        return Err(AcpiError::TooBig(next - RSDP_ADDR));
    }
    let rsdp = Rsdp::new(OEM_ID, xsdt_addr);
    mem.write_slice(&to_bytes(&rsdp), GuestAddress(RSDP_ADDR))?;
    for (at, bytes) in tables {
        mem.write_slice(&bytes, GuestAddress(at))?;
    }
    Ok(RSDP_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::memory::create_guest_memory;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn tables_have_valid_checksums_and_devices() {
        let (mem, _f) = create_guest_memory(0x200_0000).unwrap();
        let dev = MmioDeviceInfo {
            addr: 0xd000_0000,
            len: 0x1000,
            gsi: 5,
        };
        setup_acpi(&mem, 2, &[dev]).unwrap();
        let mut rsdp = [0u8; 36];
        mem.read_slice(&mut rsdp, GuestAddress(RSDP_ADDR)).unwrap();
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(&rsdp), 0);
        let xsdt_addr = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
        let mut hdr = [0u8; 36];
        mem.read_slice(&mut hdr, GuestAddress(xsdt_addr)).unwrap();
        assert_eq!(&hdr[..4], b"XSDT");
        // Walk every table the XSDT names (FADT, MADT) and the DSDT.
        let len = u32::from_le_bytes(hdr[4..8].try_into().unwrap()) as usize;
        let mut x = vec![0u8; len];
        mem.read_slice(&mut x, GuestAddress(xsdt_addr)).unwrap();
        assert_eq!(sum(&x), 0);
        let mut sigs = Vec::new();
        for e in x[36..].chunks(8) {
            let a = u64::from_le_bytes(e.try_into().unwrap());
            mem.read_slice(&mut hdr, GuestAddress(a)).unwrap();
            let l = u32::from_le_bytes(hdr[4..8].try_into().unwrap()) as usize;
            let mut t = vec![0u8; l];
            mem.read_slice(&mut t, GuestAddress(a)).unwrap();
            assert_eq!(sum(&t), 0, "checksum of {:?}", &hdr[..4]);
            sigs.push(String::from_utf8_lossy(&hdr[..4]).to_string());
            if &hdr[..4] == b"FACP" {
                let dsdt = u64::from_le_bytes(t[140..148].try_into().unwrap());
                mem.read_slice(&mut hdr, GuestAddress(dsdt)).unwrap();
                let l = u32::from_le_bytes(hdr[4..8].try_into().unwrap()) as usize;
                let mut d = vec![0u8; l];
                mem.read_slice(&mut d, GuestAddress(dsdt)).unwrap();
                assert_eq!(&d[..4], b"DSDT");
                assert_eq!(sum(&d), 0);
                assert!(d.windows(8).any(|w| w == b"LNRO0005"));
            }
        }
        assert_eq!(sigs, ["FACP", "APIC"]);
    }
}
