//! The null engine (`--io-engine null`): every read and write completes at
//! once without touching the image (reads leave the guest buffer as it
//! was). Only for benchmarks: it measures the virtqueue path and the
//! frontend's ceiling with no storage cost (`scripts/bench`).

use std::io;

use super::inline::RunNow;
use super::IoOp;

/// See the module docs.
#[derive(Default)]
pub struct Null;

impl RunNow for Null {
    fn name(&self) -> &'static str {
        "null"
    }

    fn run(&self, _op: IoOp) -> io::Result<()> {
        Ok(())
    }
}
