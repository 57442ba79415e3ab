//! `restartgen`: backend restart → first completed request, the
//! measurement of the `blk_inflight_restart_timing` test as a benchmark.
//!
//! The tests' hostile frontend connects to `splitvm-blk` with
//! `INFLIGHT_SHMFD`; each restart SIGKILLs the backend, puts a 4 KiB write
//! in the ring and marks it in flight in the region (as a frontend whose
//! backend died mid-request would have it), starts a new backend on the
//! same socket, reconnects as QEMU does and waits for the write's used
//! entry (the new process resubmits it from the region). Two times per
//! restart: from the new process's exec, and from the accepted connection.
//! Prints medians and p99 of both; with `--kv` one `RESTARTGEN` line.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use clap::Parser;
use splitvm_tests::hostile::blk::{BlkDev, S_OK, T_OUT};
use splitvm_tests::hostile::inflight;
use splitvm_tests::hostile::{Desc, Setup, F_WRITE};
use splitvm_tests::proc::ChildGuard;

/// Restart benchmark for splitvm-blk.
#[derive(Parser, Debug)]
#[command(name = "restartgen")]
struct Args {
    /// The splitvm-blk binary.
    #[arg(long)]
    splitvm_blk: PathBuf,
    /// Restarts to time.
    #[arg(long, default_value_t = 20)]
    restarts: usize,
    /// Run number, copied into the `--kv` line.
    #[arg(long, default_value_t = 1)]
    run: u32,
    /// Also print a `RESTARTGEN key=value ...` line.
    #[arg(long)]
    kv: bool,
}

fn spawn(bin: &Path, sock: &Path, img: &Path) -> ChildGuard {
    let mut cmd = Command::new(bin);
    cmd.arg("--socket-path")
        .arg(sock)
        .arg("--image")
        .arg(img)
        .args(["--log-level", "warn"]);
    ChildGuard::spawn("splitvm-blk", cmd)
}

fn kill(mut child: ChildGuard) {
    child.signal(libc::SIGKILL);
    child.wait_exit(Duration::from_secs(10));
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> Result<()> {
    let a = Args::parse();
    ensure!(a.restarts > 0, "--restarts must be > 0");
    let dir = tempfile::tempdir()?;
    let img = dir.path().join("disk.img");
    fs::File::create(&img)?.set_len(64 << 20)?;
    let sock = dir.path().join("blk.sock");
    let setup = Setup {
        mem_size: 16 << 20,
        queue_size: 128,
        timeout: Duration::from_secs(20),
        ..Setup::default()
    };
    let mut child = spawn(&a.splitvm_blk, &sock, &img);
    let (fe, region) = inflight::connect(&sock, setup);
    let mut dev = BlkDev::from_frontend(fe);
    ensure!(dev.write(0, &[1u8; 512]) == S_OK, "first write failed");
    let data = vec![0x5au8; 4096];
    let (mut from_exec, mut from_conn) = (Vec::new(), Vec::new());
    for k in 0..a.restarts {
        kill(child);
        let hdr = dev.header(T_OUT, 64 + 8 * k as u64);
        let buf = dev.buf(&data);
        let status = dev.status_byte();
        let head = dev.write_raw(
            0,
            &[
                Desc {
                    addr: hdr,
                    len: 16,
                    ..Desc::default()
                },
                Desc {
                    addr: buf,
                    len: 4096,
                    ..Desc::default()
                },
                Desc {
                    addr: status,
                    len: 1,
                    flags: F_WRITE,
                    next: 0,
                },
            ],
        );
        let q = &mut dev.fe.queues[0];
        q.ring.push_avail(&dev.fe.mem, head);
        region.set_desc(0, head, true, 1000 + k as u64);
        let exec = Instant::now();
        child = spawn(&a.splitvm_blk, &sock, &img);
        let connected = inflight::reconnect(&mut dev.fe, &sock, &region);
        let (id, _) = dev.fe.wait_used(0);
        let done = Instant::now();
        ensure!(id == u32::from(head), "used id {id}, want {head}");
        ensure!(
            dev.fe.mem.read(status, 1)[0] == S_OK,
            "resubmitted write failed"
        );
        from_exec.push(done - exec);
        from_conn.push(done - connected);
    }
    kill(child);
    from_exec.sort();
    from_conn.sort();
    let us = |d: Duration| d.as_micros();
    #[allow(clippy::print_stdout)] // the results are this program's output
    {
        println!(
            "splitvm-blk restart -> first completed request over {} restarts: from exec median {:?} p99 {:?}; \
             from reconnect median {:?} p99 {:?}",
            a.restarts,
            pct(&from_exec, 0.5),
            pct(&from_exec, 0.99),
            pct(&from_conn, 0.5),
            pct(&from_conn, 0.99)
        );
        if a.kv {
            println!(
                "RESTARTGEN contender=splitvm-blk run={} restarts={} median_us={} p99_us={} \
                 conn_median_us={} conn_p99_us={}",
                a.run,
                a.restarts,
                us(pct(&from_exec, 0.5)),
                us(pct(&from_exec, 0.99)),
                us(pct(&from_conn, 0.5)),
                us(pct(&from_conn, 0.99))
            );
        }
    }
    Ok(())
}
