//! Preemption: the first SIGTERM or SIGINT asks the run to stop after the current step (the
//! engine then writes a checkpoint at that step and exits with 128 + the signal); a second one
//! exits at once, leaving the last checkpoint as it was (checkpoints are written atomically,
//! so an interrupted write leaves only a temporary file).

use std::sync::atomic::{AtomicI32, Ordering};

/// The first signal received (0: none).
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    // Only async-signal-safe work here: an atomic swap and `_exit`.
    if RECEIVED.swap(signal, Ordering::SeqCst) != 0 {
        // SAFETY: `_exit` is async-signal-safe.
        unsafe { libc::_exit(128 + signal) };
    }
}

/// Installs the handlers of SIGTERM and SIGINT (idempotent).
pub fn install() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction with a plain handler and an empty mask is valid; the
        // handler only touches an atomic and calls `_exit`.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// The signal that asked the run to stop, if any.
pub fn requested() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// A signal that came during the last step of an epoch: the epoch ends normally (metrics,
/// checkpoint), then the run stops.
static AFTER_EPOCH: AtomicI32 = AtomicI32::new(0);

/// Stops the run once the current epoch is written (see [`stop_requested_after_epoch`]).
pub fn stop_after_epoch(signal: i32) {
    AFTER_EPOCH.store(signal, Ordering::SeqCst);
}

/// The signal to stop on after the epoch just written, if any.
pub fn stop_requested_after_epoch() -> Option<i32> {
    match AFTER_EPOCH.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// The name of a signal for messages.
pub fn name(signal: i32) -> &'static str {
    match signal {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        _ => "a signal",
    }
}

/// The run stopped on a signal after writing a checkpoint: `main` exits with
/// [`Stopped::exit_code`].
#[derive(Debug)]
pub struct Stopped {
    /// The signal.
    pub signal: i32,
    /// What happened and how to continue.
    pub message: String,
}

impl Stopped {
    /// 128 + the signal, as a shell reports a process killed by it.
    pub fn exit_code(&self) -> u8 {
        (128 + self.signal).clamp(0, 255) as u8
    }
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Stopped {}
