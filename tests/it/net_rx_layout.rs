//! Where splitvm-net puts a received frame in the guest's buffer for each
//! header the guest can negotiate: 12 bytes (`VERSION_1` or `MRG_RXBUF`)
//! or the legacy 10 (neither), the frame right after it, over one or two
//! descriptors. The backend builds the guest's header in place in front of
//! the frame it read from the tap, so the byte offsets are what is tested.

use std::time::Duration;

use splitvm_tests::hostile::net::{
    spawn_net_up, test_frame, NetDev, NetNs, PacketSocket, F_MRG_RXBUF,
};
use splitvm_tests::hostile::{Desc, Setup, F_NEXT, F_WRITE, VERSION_1};
use splitvm_tests::wait::wait_for;

const T: Duration = Duration::from_secs(5);

fn rx_layout(features: u64, hdr_len: usize) {
    let dir = tempfile::tempdir().unwrap();
    let ns = NetNs::new("l");
    let (_child, sock) = spawn_net_up(dir.path(), &ns, "tap0", &["--queue-size", "256"]);
    let wire = PacketSocket::open(&ns, "tap0");
    let setup = Setup {
        features,
        ..NetDev::setup()
    };
    let mut dev = NetDev::connect(&sock, setup);
    assert_eq!(
        dev.fe.acked & (VERSION_1 | F_MRG_RXBUF) != 0,
        hdr_len == 12,
        "negotiated {:#x}",
        dev.fe.acked
    );
    let frame = test_frame(b"layout", 600);
    // Two descriptors, the first shorter than header + frame, poisoned so
    // bytes the backend did not write show.
    let (a, b) = (dev.alloc(100), dev.alloc(2048));
    dev.fe.mem.write(a, &[0xee; 100]);
    dev.fe.mem.write(b, &[0xee; 2048]);
    let head = dev.post_rx_raw(&[
        Desc {
            addr: a,
            len: 100,
            flags: F_WRITE | F_NEXT,
            next: 1,
        },
        Desc {
            addr: b,
            len: 2048,
            flags: F_WRITE,
            next: 0,
        },
    ]);
    let used = wait_for("the frame in the RX buffer", T, || {
        wire.send(&frame).unwrap();
        dev.rx_used(Duration::from_millis(20))
    });
    assert_eq!(used, (u32::from(head), (hdr_len + frame.len()) as u32));
    let mut got = dev.fe.mem.read(a, 100);
    got.extend(dev.fe.mem.read(b, hdr_len + frame.len() - 100));
    // No offloads, no gso; with 12 bytes, num_buffers 1.
    let mut want = vec![0u8; hdr_len];
    if hdr_len == 12 {
        want[10] = 1;
    }
    assert_eq!(got[..hdr_len], want[..], "header");
    assert_eq!(
        got[hdr_len..],
        frame[..],
        "frame right after the {hdr_len}-byte header"
    );
    assert_eq!(
        dev.fe.mem.read(b + (hdr_len + frame.len() - 100) as u64, 1),
        [0xee]
    );
}

#[test]
fn net_rx_frame_follows_the_legacy_10_byte_header() {
    rx_layout(!(VERSION_1 | F_MRG_RXBUF), 10);
}

#[test]
fn net_rx_frame_follows_the_12_byte_header_without_merged_buffers() {
    rx_layout(!F_MRG_RXBUF, 12);
}
