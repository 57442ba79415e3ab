//! Every guest memory region the frontend hands over must lie within its
//! fd. `vhost-user-backend` maps a region as large as the memory table
//! says, even past the end of the file (a 64 TiB region on a 1 MiB memfd
//! is accepted), and the first guest access beyond the file then kills the
//! backend with SIGBUS. Found by the hostile vhost-user message tests
//! (`tests/it/*_hostile.rs`, `*_vhost_user_messages`: such a table was
//! acked); `fuzz/regressions/vhost_user_blk/region-past-its-fd` is the
//! crash it led to.

use std::io;
use std::sync::{PoisonError, RwLock};

use vm_memory::{
    GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use crate::avail::Mem;

/// A backend's guest memory: installed (checked) by `update_memory` on the
/// frontend thread, read by the vring workers.
#[derive(Default)]
pub struct GuestMem(RwLock<Option<GuestMemoryAtomic<GuestMemoryMmap>>>);

impl GuestMem {
    /// [`check`]s `mem` and makes it the current table.
    pub fn set(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        check(&mem)?;
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Some(mem);
        Ok(())
    }

    /// The current table; `None` before the frontend sent one.
    pub fn get(&self) -> Option<Mem> {
        let m = self.0.read().unwrap_or_else(PoisonError::into_inner);
        m.as_ref().map(GuestAddressSpace::memory)
    }
}

/// Checks the regions in `mem` (what `VhostUserBackend::update_memory`
/// receives). On a region past the end of its fd, `mem` is emptied
/// (the daemon has already installed it for the vrings: nothing may touch
/// it) and an error is returned, which fails the request.
pub fn check(mem: &GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
    let bad = first_unbacked(&mem.memory());
    match bad {
        None => Ok(()),
        Some(why) => {
            mem.lock()
                .map_err(|_| io::Error::other("guest memory lock poisoned"))?
                .replace(GuestMemoryMmap::new());
            Err(io::Error::new(io::ErrorKind::InvalidInput, why))
        }
    }
}

fn first_unbacked(mem: &GuestMemoryMmap) -> Option<String> {
    for r in mem.iter() {
        let Some(fo) = r.file_offset() else {
            continue;
        };
        let size = match fo.file().metadata() {
            Ok(m) => m.len(),
            Err(e) => return Some(format!("cannot stat a guest memory fd: {e}")),
        };
        let end = fo.start().checked_add(r.len());
        if end.is_none_or(|e| e > size) {
            return Some(format!(
                "guest memory region at {:#x} ({} bytes at fd offset {}) ends past its fd ({size} bytes)",
                r.start_addr().0,
                r.len(),
                fo.start()
            ));
        }
    }
    None
}
