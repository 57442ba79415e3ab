//! The three backends as the fuzz targets build them: the same device
//! structs `start_backend` builds, over stand-in resources. blk serves a
//! 1 MiB memfd image with the synchronous engine; net owns a two-pair tap
//! in a network namespace of its own (so the host's network is never
//! touched; needs CAP_NET_ADMIN, which the tests have); input serves a
//! keyboard fed from its event hub. What connections share is built once
//! per process, a fresh per-connection backend per input.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use splitvm_blk::blk::{ConfigSpace, DiskInfo};
use splitvm_blk::io::EngineKind;
use splitvm_blk::vhu_blk::{Disk, VhostUserBlkBackend};
use splitvm_input::hub::EventHub;
use splitvm_input::input::InputEvent;
use splitvm_input::profiles::Profile;
use splitvm_input::vhu_input::VhostUserInputBackend;
use splitvm_net::device::NetDevice;
use splitvm_net::net::Counters;
use splitvm_net::tap::Tap;
use splitvm_net::vhu_net::VhostUserNetBackend;

/// Image size of the blk device.
const IMAGE: u64 = 1 << 20;

/// A memfd of `len` bytes (sparse: pages appear when touched).
pub fn memfd(name: &str, len: u64) -> File {
    let name = CString::new(name).unwrap_or_default();
    // SAFETY: memfd_create with a valid NUL-terminated name; the result is
    // checked before use.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(len).expect("size the memfd");
    f
}

/// A fresh blk backend over the shared image.
pub fn blk() -> VhostUserBlkBackend {
    static DISK: OnceLock<Arc<Disk>> = OnceLock::new();
    let disk = DISK.get_or_init(|| {
        let space = ConfigSpace {
            capacity_sectors: IMAGE / 512,
            seg_max: 128,
            blk_size: 512,
            num_queues: 2,
            max_range_sectors: 1 << 21,
            max_range_segs: 16,
        };
        Arc::new(Disk {
            file: Arc::new(memfd("fuzz-image", IMAGE)),
            info: DiskInfo {
                capacity: IMAGE,
                readonly: false,
                max_range_sectors: 1 << 21,
                max_range_segs: 16,
                serial: *b"fuzz-serial-0123456\0",
            },
            engine: EngineKind::Sync,
            queues: 2,
            queue_size: 256,
            config: space.to_bytes(),
        })
    });
    VhostUserBlkBackend::new(disk.clone()).expect("blk backend")
}

/// A fresh net backend over the shared tap.
pub fn net() -> VhostUserNetBackend {
    static DEV: OnceLock<Arc<NetDevice>> = OnceLock::new();
    let dev = DEV.get_or_init(|| {
        // Only this thread (and the threads it starts later) moves to the
        // new namespace; the fuzzer calls every input from this thread.
        // SAFETY: unshare takes no pointers.
        let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            r,
            0,
            "unshare(CLONE_NEWNET) (the net target needs CAP_NET_ADMIN): {}",
            std::io::Error::last_os_error()
        );
        let taps = Tap::open_named("fuzz0", 2).expect("create a tap in the new namespace");
        let tap_offloads = taps.first().map_or(0, Tap::probe_offloads);
        Arc::new(NetDevice {
            taps,
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            mtu: Some(1500),
            queue_size: 256,
            tap_offloads,
            link_up: AtomicBool::new(true),
            counters: Counters::default(),
            backend_req: Mutex::new(None),
        })
    });
    // As `start_backend` does for every new connection.
    *dev.backend_req
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = None;
    VhostUserNetBackend::new(dev.clone())
}

/// A fresh input backend over the shared hub, with a few key events queued
/// for the event queue.
pub fn input() -> VhostUserInputBackend {
    static HUB: OnceLock<Arc<EventHub>> = OnceLock::new();
    let hub = HUB.get_or_init(|| {
        let caps = Profile::Keyboard.capabilities(None);
        Arc::new(EventHub::new(caps, 64).expect("event hub"))
    });
    hub.push(&[
        InputEvent::new(1, 30, 1),
        InputEvent::syn(),
        InputEvent::new(1, 30, 0),
        InputEvent::syn(),
    ]);
    VhostUserInputBackend::new(hub.clone())
}
