//! Guest memory: one `memfd` (sealed against shrinking and growing), mapped
//! shared, split around the 32-bit MMIO hole. The same fd is what vhost-user
//! backends map through `SET_MEM_TABLE`.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::layout::{FOUR_GIB, MMIO32_START};

/// Guest memory backed by a memfd.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Errors setting up guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("memfd_create failed: {0}")]
    Memfd(#[source] std::io::Error),
    #[error("sizing the guest memfd to {size} bytes failed: {source}")]
    Truncate {
        size: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("sealing the guest memfd failed: {0}")]
    Seal(#[source] std::io::Error),
    #[error("mapping guest memory failed: {0}")]
    Map(#[from] vm_memory::mmap::FromRangesError),
}

/// The RAM ranges (guest address, size) for `size` bytes of memory.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO32_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO32_START),
            (GuestAddress(FOUR_GIB), size - MMIO32_START),
        ]
    }
}

/// Creates the memfd, seals it, and maps every RAM range from it.
pub fn create_guest_memory(size: u64) -> Result<(GuestMemory, File), MemoryError> {
    let name: &CStr = c"splitvm-guest-ram";
    // SAFETY: `name` is a valid NUL-terminated string; the flags are constants.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)
        .map_err(|source| MemoryError::Truncate { size, source })?;
    // SAFETY: fcntl on a valid fd with an integer argument.
    let rc = unsafe {
        libc::fcntl(
            file.as_raw_fd(),
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
        )
    };
    if rc < 0 {
        return Err(MemoryError::Seal(std::io::Error::last_os_error()));
    }
    let mut offset = 0u64;
    let mut regions = Vec::new();
    for (addr, len) in ram_ranges(size) {
        regions.push((
            addr,
            len as usize,
            Some(FileOffset::new(
                file.try_clone().map_err(MemoryError::Memfd)?,
                offset,
            )),
        ));
        offset += len;
    }
    let mem = GuestMemoryMmap::from_ranges_with_files(regions)?;
    Ok((mem, file))
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    use super::*;

    #[test]
    fn memory_splits_around_the_hole() {
        let (mem, _f) = create_guest_memory(MMIO32_START + 0x10_0000).unwrap();
        let regions: Vec<_> = mem.iter().map(|r| (r.start_addr().0, r.len())).collect();
        assert_eq!(regions, vec![(0, MMIO32_START), (FOUR_GIB, 0x10_0000)]);
        mem.write_obj(0xabcd_u32, GuestAddress(FOUR_GIB)).unwrap();
        assert_eq!(mem.read_obj::<u32>(GuestAddress(FOUR_GIB)).unwrap(), 0xabcd);
    }

    #[test]
    fn memfd_is_sealed() {
        let (_mem, f) = create_guest_memory(0x10_0000).unwrap();
        assert!(
            f.set_len(0x1000).is_err(),
            "shrinking a sealed memfd must fail"
        );
    }
}
