//! A count of the host's reads of device values during training. Each such read waits until the
//! device has finished everything queued before it, so a GPU idles while the host catches up
//! and queues the next work; a training step should make none. The few places of the training
//! path that read a device value count themselves here ([`note`]), and tests assert how many
//! reads a training step makes. With `SSL_HOST_DEBUG_SYNC=1` the engine prints the count of
//! every epoch, and on a GPU also turns on CUDA's own synchronisation check during training
//! steps ([`strict_on_cuda`]), which catches what the count cannot: a blocking copy, a read
//! inside a plugin.
//!
//! The count is per thread: training runs on one thread, and tests running side by side do
//! not see each other's reads.

use crate::dist::ffi;
use anyhow::{bail, Context, Result};
use ssl_plugin_api::tch::{Device, Kind, Tensor};
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

/// Sets CUDA's synchronisation check (`torch.cuda.set_sync_debug_mode`: 0 off, 1 warn, 2
/// error); returns the previous mode.
fn set_cuda_sync_mode(mode: i32) -> Result<i32> {
    let mut previous = 0;
    let mut err: *mut std::os::raw::c_char = std::ptr::null_mut();
    // SAFETY: plain call with pointers to live locals; on failure the shim stored a message.
    let rc = unsafe { ffi::shim_cuda_sync_debug_mode(mode, &mut previous, &mut err) };
    if rc != 0 {
        // SAFETY: the shim failed and stored its message in err.
        bail!("{}", unsafe { ffi::take_error(err) });
    }
    Ok(previous)
}

/// Runs `f` (a training step) with CUDA's synchronisation check set to "error" when the counts
/// are [`reported`] and `device` is a GPU: any libtorch call in the step that makes the host
/// wait for the device (a read, a blocking copy, a stream synchronisation), wherever it is
/// (the host, a plugin), then fails the run naming itself. Elsewhere just `f`.
pub fn strict_on_cuda<T>(device: Device, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if !(reported() && matches!(device, Device::Cuda(_))) {
        return f();
    }
    let previous = set_cuda_sync_mode(2)?;
    let out = f();
    set_cuda_sync_mode(previous)?;
    out.context("SSL_HOST_DEBUG_SYNC=1: a training step synchronised with the GPU")
}

/// With the counts [`reported`] on a GPU: checks that CUDA's synchronisation check works here
/// (a deliberate read under it must fail) and says so; an error when it does not catch it.
pub fn check_cuda_sync_check(device: Device) -> Result<()> {
    if !(reported() && matches!(device, Device::Cuda(_))) {
        return Ok(());
    }
    let probe = Tensor::ones([1], (Kind::Float, device));
    let caught = strict_on_cuda(device, || Ok(probe.f_double_value(&[0])?)).is_err();
    if !caught {
        bail!("SSL_HOST_DEBUG_SYNC=1: CUDA's synchronisation check did not catch a deliberate read of the GPU, so it cannot vouch for the training steps");
    }
    eprintln!("SSL_HOST_DEBUG_SYNC=1: CUDA's synchronisation check is on during training steps (a deliberate read was caught)");
    Ok(())
}
