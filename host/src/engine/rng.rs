//! The state of libtorch's default random generators (CPU, and the training device's CUDA
//! one), saved in a mid-epoch checkpoint and restored on resume: whatever a plugin or the
//! linear head's dropout drew from them in the rest of the epoch is then drawn again.

use crate::dist::ffi;
use anyhow::{anyhow, Result};
use ssl_plugin_api::tch::{Device, Tensor};
use std::os::raw::c_char;
use std::ptr;

fn device_code(device: Device) -> Result<(i32, i32)> {
    match device {
        Device::Cpu => Ok((0, 0)),
        Device::Cuda(i) => Ok((1, i as i32)),
        other => Err(anyhow!("no generator state for device {other:?}")),
    }
}

/// The generator state of `device` (a byte tensor on the CPU).
pub fn state(device: Device) -> Result<Tensor> {
    let (kind, index) = device_code(device)?;
    let mut err: *mut c_char = ptr::null_mut();
    // SAFETY: plain call; on failure the shim stored a message in err and returned null.
    let raw = unsafe { ffi::shim_rng_get_state(kind, index, &mut err) };
    if raw.is_null() {
        // SAFETY: the shim failed and stored its message in err.
        let message = unsafe { ffi::take_error(err) };
        return Err(anyhow!(
            "reading the random generator state of {device:?}: {message}"
        ));
    }
    // SAFETY: the shim returned a new `torch::Tensor*` that we now own.
    Ok(unsafe { Tensor::from_ptr(raw) })
}

/// Restores a state read by [`state`].
pub fn set_state(device: Device, state: &Tensor) -> Result<()> {
    let (kind, index) = device_code(device)?;
    let mut state = state.to_device(Device::Cpu).contiguous();
    let mut err: *mut c_char = ptr::null_mut();
    // SAFETY: `state` is a live tensor for the duration of the call.
    let rc = unsafe { ffi::shim_rng_set_state(kind, index, state.as_mut_ptr(), &mut err) };
    if rc != 0 {
        // SAFETY: the shim failed and stored its message in err.
        let message = unsafe { ffi::take_error(err) };
        return Err(anyhow!(
            "restoring the random generator state of {device:?} from the checkpoint: {message}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssl_plugin_api::tch::Kind;

    #[test]
    fn a_restored_state_draws_the_same_numbers_again() {
        ssl_plugin_api::tch::manual_seed(7);
        let _ = Tensor::rand([3], (Kind::Float, Device::Cpu));
        let saved = state(Device::Cpu).unwrap();
        let first = Tensor::rand([5], (Kind::Float, Device::Cpu));
        let _ = Tensor::rand([11], (Kind::Float, Device::Cpu));
        set_state(Device::Cpu, &saved).unwrap();
        let again = Tensor::rand([5], (Kind::Float, Device::Cpu));
        assert!(first.equal(&again));
        assert!(set_state(Device::Cpu, &Tensor::from_slice(&[1u8, 2])).is_err());
    }
}
