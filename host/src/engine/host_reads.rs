//! A count of the host's reads of device values during training. Each such read waits until the
//! device has finished everything queued before it, so a GPU idles while the host catches up
//! and queues the next work; a training step should make none. The few places of the training
//! path that read a device value count themselves here ([`note`]), and tests assert how many
//! reads a training step makes. With `SSL_HOST_DEBUG_SYNC=1` the engine prints the count of
//! every epoch.
//!
//! The count is per thread: training runs on one thread, and tests running side by side do
//! not see each other's reads.

use std::cell::Cell;

thread_local! {
    static READS: Cell<u64> = const { Cell::new(0) };
}

/// Counts one read of device values by this thread.
pub fn note() {
    READS.with(|r| r.set(r.get() + 1));
}

/// Reads this thread has counted so far.
pub fn count() -> u64 {
    READS.with(Cell::get)
}

/// Whether the engine reports the counts (`SSL_HOST_DEBUG_SYNC=1`).
pub fn reported() -> bool {
    std::env::var_os("SSL_HOST_DEBUG_SYNC").is_some_and(|v| v == "1")
}
