//! The serial console's output when stdout is a pipe or a file that log
//! lines share (`splitvm run 2>&1 | tee`, `splitvm up`, which hands its
//! stdout to the VMM and to every backend).
//!
//! The UART produces one byte per guest port write and vm-superio flushes
//! after each, so written straight through, a log line from another thread
//! or process lands in the middle of a guest line. `LineOut` writes whole
//! lines instead; a partial line (a prompt) goes out once it has waited
//! `STALE` with nothing more coming, when `ConsoleFlusher::flush_stale`
//! runs, and at the end.

use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a partial line waits for the rest before it is written anyway.
pub const STALE: Duration = Duration::from_millis(50);
/// A partial line this long is written without waiting for its end.
const MAX_PENDING: usize = 4096;

struct Pending {
    out: Box<dyn Write + Send>,
    buf: Vec<u8>,
    /// When the oldest byte in `buf` arrived.
    since: Option<Instant>,
}

impl Pending {
    fn write_out(&mut self, upto: usize) -> io::Result<()> {
        let r = self
            .out
            .write_all(&self.buf[..upto])
            .and_then(|()| self.out.flush());
        // Dropped even on error: a closed stdout must not grow the buffer.
        self.buf.drain(..upto);
        self.since = if self.buf.is_empty() {
            None
        } else {
            Some(Instant::now())
        };
        r
    }
}

fn lock(p: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    match p.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// The writer the UART gets.
pub struct LineOut(Arc<Mutex<Pending>>);

/// Writes out partial lines that have waited long enough.
#[derive(Clone)]
pub struct ConsoleFlusher(Arc<Mutex<Pending>>);

/// A line-assembling writer over `out`, and its flusher.
pub fn line_out(out: Box<dyn Write + Send>) -> (LineOut, ConsoleFlusher) {
    let p = Arc::new(Mutex::new(Pending {
        out,
        buf: Vec::new(),
        since: None,
    }));
    (LineOut(p.clone()), ConsoleFlusher(p))
}

impl Write for LineOut {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut p = lock(&self.0);
        if p.buf.is_empty() {
            p.since = Some(Instant::now());
        }
        p.buf.extend_from_slice(data);
        let upto = if p.buf.len() >= MAX_PENDING {
            p.buf.len()
        } else {
            match data.iter().rposition(|&b| b == b'\n') {
                Some(i) => p.buf.len() - data.len() + i + 1,
                None => return Ok(data.len()),
            }
        };
        p.write_out(upto)?;
        Ok(data.len())
    }

    /// Deliberately nothing: the UART flushes after every byte.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ConsoleFlusher {
    /// Writes the partial line if it has waited at least `age`.
    pub fn flush_stale(&self, age: Duration) {
        let mut p = lock(&self.0);
        if p.since.is_some_and(|t| t.elapsed() >= age) {
            let n = p.buf.len();
            if let Err(e) = p.write_out(n) {
                log::debug!("console: {e}");
            }
        }
    }

    /// Writes whatever is pending.
    pub fn flush_all(&self) {
        self.flush_stale(Duration::ZERO);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test reads back, recording each write(2)-sized chunk.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Sink {
        fn write(&mut self, d: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(d.to_vec());
            Ok(d.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn chunks(&self) -> Vec<String> {
            let c = self.0.lock().unwrap();
            c.iter()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect()
        }
    }

    fn uart_writes(w: &mut LineOut, s: &str) {
        for b in s.bytes() {
            w.write_all(&[b]).unwrap();
            w.flush().unwrap();
        }
    }

    #[test]
    fn bytes_leave_as_whole_lines() {
        let sink = Sink::default();
        let (mut w, _f) = line_out(Box::new(sink.clone()));
        uart_writes(&mut w, "RESULT a=1\nRESU");
        assert_eq!(sink.chunks(), ["RESULT a=1\n"]);
        uart_writes(&mut w, "LT b=2\n");
        assert_eq!(sink.chunks(), ["RESULT a=1\n", "RESULT b=2\n"]);
    }

    #[test]
    fn a_prompt_goes_out_once_stale_and_everything_at_the_end() {
        let sink = Sink::default();
        let (mut w, f) = line_out(Box::new(sink.clone()));
        uart_writes(&mut w, "login: ");
        f.flush_stale(Duration::from_secs(3600));
        assert!(sink.chunks().is_empty(), "a fresh partial line waits");
        f.flush_stale(Duration::ZERO);
        assert_eq!(sink.chunks(), ["login: "]);
        uart_writes(&mut w, "no newline at exit");
        f.flush_all();
        assert_eq!(sink.chunks(), ["login: ", "no newline at exit"]);
        f.flush_all();
        assert_eq!(sink.chunks().len(), 2, "nothing left to write");
    }

    #[test]
    fn a_line_without_end_is_cut_at_the_limit() {
        let sink = Sink::default();
        let (mut w, _f) = line_out(Box::new(sink.clone()));
        uart_writes(&mut w, &"x".repeat(MAX_PENDING + 1));
        let c = sink.chunks();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].len(), MAX_PENDING);
    }

    #[test]
    fn a_failing_output_does_not_grow_the_buffer() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (mut w, _f) = line_out(Box::new(Closed));
        assert!(w.write(b"line\n").is_err());
        assert!(lock(&w.0).buf.is_empty());
    }
}
