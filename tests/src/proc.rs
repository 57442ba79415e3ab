//! Child processes under a guard: on drop the child is killed and reaped;
//! during a panic its captured output is printed so a failing test shows what
//! the child said.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A spawned child whose stdout and stderr lines are collected (with a prefix
/// for display) and can be waited on.
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    lines: Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
}

impl ChildGuard {
    /// Spawns `cmd` with piped stdout/stderr; `name` prefixes its log lines.
    pub fn spawn(name: &str, mut cmd: Command) -> ChildGuard {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name} ({cmd:?}): {e}"));
        let (tx, rx) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        for (stream, tag) in [
            (Box::new(out) as Box<dyn Read + Send>, "out"),
            (Box::new(err) as Box<dyn Read + Send>, "err"),
        ] {
            let tx = tx.clone();
            let log = log.clone();
            let prefix = format!("[{name}:{tag}] ");
            thread::spawn(move || {
                for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
                    let line = String::from_utf8_lossy(&line)
                        .trim_end_matches('\r')
                        .to_string();
                    if std::env::var_os("SPLITVM_TEST_VERBOSE").is_some() {
                        eprintln!("{prefix}{line}");
                    }
                    log.lock()
                        .expect("log lock")
                        .push(format!("{prefix}{line}"));
                    let _ = tx.send(line);
                }
            });
        }
        ChildGuard {
            name: name.to_string(),
            child: Some(child),
            lines: rx,
            log,
        }
    }

    /// Process id of the child.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Waits for a line (stdout or stderr) containing `needle`; panics with
    /// the child's log at the deadline or if the child's output ends first.
    pub fn wait_for_line(&mut self, needle: &str, limit: Duration) -> String {
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{}: timed out after {limit:?} waiting for line {needle:?}\n{}",
                    self.name,
                    self.dump()
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "{}: output ended before line {needle:?}\n{}",
                    self.name,
                    self.dump()
                ),
            }
        }
    }

    /// Waits for the child to exit within `limit`; kills it and panics otherwise.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let end = Instant::now() + limit;
        let child = self.child.as_mut().expect("child present");
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                return st;
            }
            if Instant::now() >= end {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{}: did not exit within {limit:?}\n{}",
                    self.name,
                    self.dump()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for exit and for the output readers to drain; returns status and
    /// all collected lines (without prefixes).
    pub fn finish(mut self, limit: Duration) -> (ExitStatus, Vec<String>) {
        let st = self.wait_exit(limit);
        let mut all = Vec::new();
        // The readers end when the pipes close after exit.
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            all.push(l);
        }
        (st, all)
    }

    /// The child's collected output, one prefixed line each.
    pub fn dump(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Sends `sig` to the child.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with a pid we own; no memory is involved.
        unsafe {
            libc::kill(self.pid() as i32, sig);
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if c.try_wait().ok().flatten().is_none() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        if thread::panicking() {
            eprintln!("--- output of {} ---\n{}", self.name, self.dump());
        }
    }
}
