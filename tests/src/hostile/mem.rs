//! The harness's guest memory: one memfd mapped `MAP_SHARED` at gpa 0.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::FromRawFd;

use vhost::VhostUserMemoryRegionInfo;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Guest memory backed by a memfd.
pub struct GuestMem {
    /// The mapping.
    pub mem: GuestMemoryMmap,
    /// Size in bytes.
    pub size: u64,
}

impl GuestMem {
    /// A zeroed memfd of `size` bytes, mapped shared at gpa 0.
    pub fn new(size: usize) -> Self {
        let name = CString::new("hostile-guest").expect("no NUL");
        // SAFETY: memfd_create with a valid NUL-terminated name; the
        // returned fd is checked and then owned by the `File`.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is a fresh, valid descriptor nobody else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size as u64).expect("memfd set_len");
        let mem = GuestMemoryMmap::from_ranges_with_files([(
            GuestAddress(0),
            size,
            Some(FileOffset::new(file, 0)),
        )])
        .expect("map guest memory");
        GuestMem {
            mem,
            size: size as u64,
        }
    }

    /// The region for `SET_MEM_TABLE`.
    pub fn region_info(&self) -> VhostUserMemoryRegionInfo {
        let r = self.mem.iter().next().expect("one region");
        VhostUserMemoryRegionInfo::from_guest_region(r).expect("file-backed region")
    }

    /// Frontend virtual address of `gpa` (vring addresses are passed as such).
    pub fn host_addr(&self, gpa: u64) -> u64 {
        self.mem
            .get_host_address(GuestAddress(gpa))
            .expect("gpa in guest memory") as u64
    }

    /// Writes `data` at `gpa`.
    pub fn write(&self, gpa: u64, data: &[u8]) {
        self.mem
            .write_slice(data, GuestAddress(gpa))
            .expect("write guest memory");
    }

    /// Reads `len` bytes at `gpa`.
    pub fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem
            .read_slice(&mut v, GuestAddress(gpa))
            .expect("read guest memory");
        v
    }

    /// Writes a little-endian u16.
    pub fn w16(&self, gpa: u64, v: u16) {
        self.write(gpa, &v.to_le_bytes());
    }

    /// Reads a little-endian u16.
    pub fn r16(&self, gpa: u64) -> u16 {
        let b = self.read(gpa, 2);
        u16::from_le_bytes([b[0], b[1]])
    }

    /// Reads a little-endian u32.
    pub fn r32(&self, gpa: u64) -> u32 {
        let b = self.read(gpa, 4);
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}
