//! Loading the kernel and initrd, and writing the boot information the
//! kernel reads: the zero page (Linux boot protocol) or the PVH start info.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{BzImage, Cmdline, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, ReadVolatile};

use super::layout::{
    CMDLINE_START, EBDA_START, HIMEM_START, PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START,
    ZERO_PAGE_START,
};
use super::regs::EntryMode;
use crate::vstate::memory::GuestMemory;

/// Errors loading the guest's kernel and initrd.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("kernel {path}: {source}")]
    KernelOpen {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel {path}: not an ELF vmlinux or bzImage")]
    KernelFormat { path: String },
    #[error("kernel {path}: {source}")]
    KernelLoad {
        path: String,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error("kernel {path}: PVH boot requested but the ELF has no PVH entry note")]
    NoPvhEntry { path: String },
    #[error("initrd {path}: {source}")]
    InitrdOpen {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("initrd {path}: {size} bytes do not fit in guest memory after the kernel")]
    InitrdTooBig { path: String, size: u64 },
    #[error("writing the command line failed: {0}")]
    Cmdline(#[source] linux_loader::loader::Error),
    #[error("writing boot parameters failed: {0}")]
    BootParams(#[source] linux_loader::configurator::Error),
    #[error("guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// What kind of kernel image a file holds, from its magic numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    Elf,
    BzImage,
}

/// Reads the magic numbers of `file`: `\x7fELF` at 0, or `HdrS` at 0x202.
pub fn detect_format(file: &mut File) -> std::io::Result<Option<KernelFormat>> {
    let mut head = [0u8; 0x206];
    file.seek(SeekFrom::Start(0))?;
    let n = read_up_to(file, &mut head)?;
    file.seek(SeekFrom::Start(0))?;
    if n >= 4 && &head[..4] == b"\x7fELF" {
        return Ok(Some(KernelFormat::Elf));
    }
    if n >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        return Ok(Some(KernelFormat::BzImage));
    }
    Ok(None)
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Where and how the boot vCPU starts.
#[derive(Clone, Copy, Debug)]
pub struct EntryPoint {
    pub mode: EntryMode,
    pub addr: u64,
    /// Start-info address for PVH.
    pub boot_info: u64,
}

/// Which protocol the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BootProtocol {
    /// 64-bit Linux boot protocol, or PVH when the ELF offers nothing else.
    #[default]
    Linux,
    Pvh,
}

/// A loaded kernel, before the boot information is written.
pub struct LoadedKernel {
    entry: EntryPoint,
    kernel_end: u64,
    setup_header: Option<setup_header>,
}

/// Loads the kernel image into guest memory.
pub fn load_kernel(
    mem: &GuestMemory,
    path: &Path,
    protocol: BootProtocol,
) -> Result<LoadedKernel, BootError> {
    let p = path.display().to_string();
    let mut f = File::open(path).map_err(|source| BootError::KernelOpen {
        path: p.clone(),
        source,
    })?;
    let fmt = detect_format(&mut f)
        .map_err(|source| BootError::KernelOpen {
            path: p.clone(),
            source,
        })?
        .ok_or_else(|| BootError::KernelFormat { path: p.clone() })?;
    let load_err = |source| BootError::KernelLoad {
        path: p.clone(),
        source,
    };
    match fmt {
        KernelFormat::Elf => {
            let r =
                Elf::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START))).map_err(load_err)?;
            let pvh = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(a) => Some(a.raw_value()),
                _ => None,
            };
            // PVH when asked, or when the ELF's entry point is not a 64-bit
            // one (a PVH-only kernel's e_entry is below 1 MiB or unusable).
            let entry = match (protocol, pvh) {
                (BootProtocol::Pvh, Some(a)) => EntryPoint {
                    mode: EntryMode::Pvh,
                    addr: a,
                    boot_info: PVH_INFO_START,
                },
                (BootProtocol::Pvh, None) => return Err(BootError::NoPvhEntry { path: p }),
                (BootProtocol::Linux, Some(a)) if r.kernel_load.raw_value() < HIMEM_START => {
                    EntryPoint {
                        mode: EntryMode::Pvh,
                        addr: a,
                        boot_info: PVH_INFO_START,
                    }
                }
                (BootProtocol::Linux, _) => EntryPoint {
                    mode: EntryMode::Linux64,
                    addr: r.kernel_load.raw_value(),
                    boot_info: ZERO_PAGE_START,
                },
            };
            Ok(LoadedKernel {
                entry,
                kernel_end: r.kernel_end,
                setup_header: None,
            })
        }
        KernelFormat::BzImage => {
            if protocol == BootProtocol::Pvh {
                return Err(BootError::NoPvhEntry { path: p });
            }
            let r = BzImage::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START)))
                .map_err(load_err)?;
            // The 64-bit entry of a bzImage sits 0x200 bytes into the
            // protected-mode code.
            Ok(LoadedKernel {
                entry: EntryPoint {
                    mode: EntryMode::Linux64,
                    addr: r.kernel_load.raw_value() + 0x200,
                    boot_info: ZERO_PAGE_START,
                },
                kernel_end: r.kernel_end,
                setup_header: r.setup_header,
            })
        }
    }
}

/// Where the initrd was placed.
#[derive(Clone, Copy, Debug)]
pub struct InitrdInfo {
    pub addr: u64,
    pub size: u64,
}

/// Loads the initrd at the top of low RAM (below the 32-bit hole), page-aligned.
pub fn load_initrd(
    mem: &GuestMemory,
    path: &Path,
    kernel_end: u64,
) -> Result<InitrdInfo, BootError> {
    let p = path.display().to_string();
    let open_err = |source| BootError::InitrdOpen {
        path: p.clone(),
        source,
    };
    let mut f = File::open(path).map_err(open_err)?;
    let size = f.metadata().map_err(open_err)?.len();
    let low_end = mem
        .iter()
        .next()
        .map(|r| r.start_addr().raw_value() + r.len())
        .unwrap_or(0);
    let addr = low_end
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end)
        .ok_or_else(|| BootError::InitrdTooBig {
            path: p.clone(),
            size,
        })?;
    let mut slice = mem.get_slice(GuestAddress(addr), size as usize)?;
    f.read_exact_volatile(&mut slice)
        .map_err(|e| BootError::InitrdOpen {
            path: p.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok(InitrdInfo { addr, size })
}

impl LoadedKernel {
    pub fn entry(&self) -> EntryPoint {
        self.entry
    }

    pub fn end(&self) -> u64 {
        self.kernel_end
    }
}

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const PVH_MAGIC: u32 = 0x336e_c578;

/// The e820 map: low RAM up to the EBDA, a reserved BIOS area holding the MP
/// and ACPI tables, and RAM from 1 MiB on.
pub fn e820_map(mem: &GuestMemory) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
    ];
    for r in mem.iter() {
        let start = r.start_addr().raw_value().max(HIMEM_START);
        let end = r.start_addr().raw_value() + r.len();
        if end > start {
            map.push((start, end - start, E820_RAM));
        }
    }
    map
}

/// Writes the command line and the zero page or PVH start info.
pub fn write_boot_info(
    mem: &GuestMemory,
    kernel: &LoadedKernel,
    cmdline: &Cmdline,
    initrd: Option<InitrdInfo>,
    rsdp: u64,
) -> Result<(), BootError> {
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(BootError::Cmdline)?;
    let cmdline_len = cmdline
        .as_cstring()
        .map(|c| c.as_bytes().len())
        .unwrap_or(0);
    let map = e820_map(mem);
    match kernel.entry.mode {
        EntryMode::Linux64 => {
            let mut params = boot_params::default();
            if let Some(hdr) = kernel.setup_header {
                params.hdr = hdr;
            } else {
                params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
                params.hdr.header = KERNEL_HDR_MAGIC;
                params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
            }
            params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
            params.hdr.cmd_line_ptr = CMDLINE_START as u32;
            params.hdr.cmdline_size = cmdline_len as u32;
            if let Some(i) = initrd {
                params.hdr.ramdisk_image = i.addr as u32;
                params.hdr.ramdisk_size = i.size as u32;
            }
            params.acpi_rsdp_addr = rsdp;
            for (i, (addr, size, type_)) in map.iter().enumerate() {
                params.e820_table[i] = boot_e820_entry {
                    addr: *addr,
                    size: *size,
                    r#type: *type_,
                };
            }
            params.e820_entries = map.len() as u8;
            LinuxBootConfigurator::write_bootparams::<GuestMemory>(
                &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_START)),
                mem,
            )
            .map_err(BootError::BootParams)
        }
        EntryMode::Pvh => {
            let memmap: Vec<hvm_memmap_table_entry> = map
                .iter()
                .map(|(addr, size, type_)| hvm_memmap_table_entry {
                    addr: *addr,
                    size: *size,
                    type_: *type_,
                    reserved: 0,
                })
                .collect();
            let mut start = hvm_start_info {
                magic: PVH_MAGIC,
                version: 1,
                cmdline_paddr: CMDLINE_START,
                rsdp_paddr: rsdp,
                memmap_paddr: PVH_MEMMAP_START,
                memmap_entries: memmap.len() as u32,
                ..Default::default()
            };
            let mut modules = Vec::new();
            if let Some(i) = initrd {
                start.nr_modules = 1;
                start.modlist_paddr = PVH_MODLIST_START;
                modules.push(hvm_modlist_entry {
                    paddr: i.addr,
                    size: i.size,
                    ..Default::default()
                });
            }
            let mut bp = BootParams::new::<hvm_start_info>(&start, GuestAddress(PVH_INFO_START));
            bp.set_sections::<hvm_memmap_table_entry>(&memmap, GuestAddress(PVH_MEMMAP_START));
            if !modules.is_empty() {
                bp.set_modules::<hvm_modlist_entry>(&modules, GuestAddress(PVH_MODLIST_START));
            }
            PvhBootConfigurator::write_bootparams::<GuestMemory>(&bp, mem)
                .map_err(BootError::BootParams)
        }
    }
}
