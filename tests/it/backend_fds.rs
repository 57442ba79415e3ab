//! A backend closes the descriptors it inherits but was not told about: a
//! file left open across exec (no close-on-exec) is not open in the running
//! backend, while the one its command line names (`--image /dev/fd/N`) is
//! the image it serves.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use splitvm_tests::hostile::blk::{BlkDev, S_OK};
use splitvm_tests::hostile::Setup;
use splitvm_tests::proc::ChildGuard;

/// Where the inherited descriptors land in the backend.
const LEAKED: i32 = 8;
const IMAGE: i32 = 9;

#[test]
fn backend_closes_inherited_descriptors_its_command_line_does_not_name() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..512].copy_from_slice(&[0x3c; 512]);
    fs::write(&img, &bytes).unwrap();
    let secret = dir.path().join("secret");
    fs::write(&secret, b"not for the backend").unwrap();
    let leaked = fs::File::open(&secret).unwrap();
    let image = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let (leaked_fd, image_fd) = (leaked.as_raw_fd(), image.as_raw_fd());

    let sock = dir.path().join("blk.sock");
    let mut cmd = Command::new(splitvm_tests::bin_path("splitvm-blk"));
    cmd.arg("--socket-path")
        .arg(&sock)
        .args(["--image", &format!("/dev/fd/{IMAGE}")]);
    // SAFETY: between fork and exec the closure only calls dup2, which is
    // async-signal-safe, on descriptors this test owns; the copies have
    // close-on-exec clear, as a careless parent's would.
    unsafe {
        cmd.pre_exec(move || {
            for (from, to) in [(leaked_fd, LEAKED), (image_fd, IMAGE)] {
                if libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = ChildGuard::spawn("splitvm-blk", cmd);
    let line = child.wait_for_line("inherited descriptor", Duration::from_secs(20));
    let closed: Vec<i32> = line
        .rsplit_once('[')
        .and_then(|(_, l)| l.split_once(']'))
        .map(|(l, _)| l.split(", ").filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default();
    assert!(
        closed.contains(&LEAKED) && !closed.contains(&IMAGE),
        "{line}"
    );

    // The named one is the image being served.
    let mut dev = BlkDev::connect(&sock, Setup::default());
    let r = dev.read(0, 512);
    assert_eq!(r.status, S_OK);
    assert_eq!(r.data, vec![0x3c; 512]);

    // The other is open nowhere in the backend.
    let open: Vec<_> = fs::read_dir(format!("/proc/{}/fd", child.pid()))
        .unwrap()
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .collect();
    assert!(
        !open.iter().any(|p| p == &secret),
        "the backend still holds {}: {open:?}",
        secret.display()
    );
    assert!(open.iter().any(|p| p == &img), "image not open: {open:?}");
}
