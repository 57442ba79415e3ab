//! Tiny hand-written guests packed as ELF "kernels". This host's nested,
//! paravirtual KVM cannot run Linux, but it runs these, so the whole
//! `splitvm run` path (CLI, loader, boot protocol, serial, i8042 reset) is
//! tested here with real KVM; Linux itself runs in the nested lab.

use std::path::Path;

/// Where the guest's code is loaded (and its ELF entry for the 64-bit protocol).
pub const LOAD_ADDR: u64 = 0x100_0000;

/// 64-bit code entered with RSI = zero page: prints the kernel command line
/// (from `boot_params.hdr.cmd_line_ptr`, offset 0x228) and a newline on COM1,
/// then resets through the i8042.
pub fn print_cmdline_64() -> Vec<u8> {
    let mut c = vec![
        0x8b, 0xbe, 0x28, 0x02, 0x00, 0x00, // mov edi, [rsi+0x228]
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        // loop:
        0x8a, 0x07, // mov al, [rdi]
        0x84, 0xc0, // test al, al
        0x74, 0x06, // jz done
        0xee, // out dx, al
        0x48, 0xff, 0xc7, // inc rdi
        0xeb, 0xf4, // jmp loop
    ];
    c.extend(reset_tail(b'\n'));
    c
}

/// Code valid in 32- and 64-bit mode: prints `msg` on COM1 and resets.
pub fn print_and_reset(msg: &[u8]) -> Vec<u8> {
    let mut c = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for b in msg {
        c.extend([0xb0, *b, 0xee]); // mov al, b; out dx, al
    }
    c.extend([0xb0, 0xfe, 0xe6, 0x64, 0xf4]); // reset; hlt
    c
}

/// Code valid in 32- and 64-bit mode: prints `msg` on COM1, then halts with
/// interrupts off for good (the VM runs until it is killed).
pub fn print_and_halt(msg: &[u8]) -> Vec<u8> {
    let mut c = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for b in msg {
        c.extend([0xb0, *b, 0xee]); // mov al, b; out dx, al
    }
    c.extend([0xfa, 0xf4, 0xeb, 0xfd]); // cli; hlt; jmp back to hlt
    c
}

/// Prints "X" then executes `ud2` with an empty IDT: a triple fault.
pub fn triple_fault() -> Vec<u8> {
    vec![0x66, 0xba, 0xf8, 0x03, 0xb0, b'X', 0xee, 0x0f, 0x0b]
}

fn reset_tail(last: u8) -> Vec<u8> {
    vec![
        0xb0, last, 0xee, // mov al, last; out dx, al
        0xb0, 0xfe, 0xe6, 0x64, // mov al, 0xfe; out 0x64, al
        0xf4, // hlt
    ]
}

/// Writes an ELF64 executable whose single PT_LOAD puts `code` at
/// [`LOAD_ADDR`]. With `pvh_code`, a second segment right after holds it and
/// an `XEN_ELFNOTE_PHYS32_ENTRY` note points at it.
pub fn write_elf(path: &Path, code: &[u8], pvh_code: Option<&[u8]>) {
    // Pad with NOPs so the note that follows is 4-byte aligned.
    let pad = |c: &[u8]| {
        let mut v = c.to_vec();
        v.resize(c.len().div_ceil(4) * 4, 0x90);
        v
    };
    let code = &pad(code)[..];
    let pvh_owned = pvh_code.map(pad);
    let pvh_code = pvh_owned.as_deref();
    const EHDR: u64 = 64;
    const PHDR: u64 = 56;
    let nph: u64 = if pvh_code.is_some() { 3 } else { 1 };
    let code_off = EHDR + PHDR * nph;
    let pvh_addr = LOAD_ADDR + 0x1000;
    let pvh_off = code_off + code.len() as u64;
    let pvh_len = pvh_code.map_or(0, |p| p.len() as u64);
    let note_off = pvh_off + pvh_len;
    let mut note = Vec::new();
    note.extend(4u32.to_le_bytes()); // namesz ("Xen\0")
    note.extend(4u32.to_le_bytes()); // descsz
    note.extend(18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
    note.extend(*b"Xen\0");
    note.extend((pvh_addr as u32).to_le_bytes());

    let mut f = Vec::new();
    f.extend(b"\x7fELF");
    f.extend([2, 1, 1, 0]); // 64-bit, little endian, version 1, SysV
    f.extend([0u8; 8]);
    f.extend(2u16.to_le_bytes()); // ET_EXEC
    f.extend(62u16.to_le_bytes()); // EM_X86_64
    f.extend(1u32.to_le_bytes());
    f.extend(LOAD_ADDR.to_le_bytes()); // e_entry
    f.extend(EHDR.to_le_bytes()); // e_phoff
    f.extend(0u64.to_le_bytes()); // e_shoff
    f.extend(0u32.to_le_bytes()); // flags
    f.extend((EHDR as u16).to_le_bytes());
    f.extend((PHDR as u16).to_le_bytes());
    f.extend((nph as u16).to_le_bytes());
    f.extend(64u16.to_le_bytes()); // e_shentsize
    f.extend(0u16.to_le_bytes()); // e_shnum
    f.extend(0u16.to_le_bytes()); // e_shstrndx
    let phdr = |f: &mut Vec<u8>, kind: u32, off: u64, addr: u64, len: u64, align: u64| {
        f.extend(kind.to_le_bytes());
        f.extend(7u32.to_le_bytes()); // RWX
        f.extend(off.to_le_bytes());
        f.extend(addr.to_le_bytes());
        f.extend(addr.to_le_bytes());
        f.extend(len.to_le_bytes());
        f.extend(len.to_le_bytes());
        f.extend(align.to_le_bytes());
    };
    phdr(&mut f, 1, code_off, LOAD_ADDR, code.len() as u64, 1);
    if pvh_code.is_some() {
        phdr(&mut f, 1, pvh_off, pvh_addr, pvh_len, 1);
        phdr(&mut f, 4, note_off, 0, note.len() as u64, 4);
    }
    f.extend(code);
    if let Some(p) = pvh_code {
        f.extend(p);
        f.extend(&note);
    }
    std::fs::write(path, f).expect("write micro-guest ELF");
}
