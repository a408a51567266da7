//! The floating-point precision of training (`precision`, with PyTorch Lightning's names):
//!
//! - `32-true`: 32-bit floats throughout;
//! - `16-mixed`: the SSL loss is computed under fp16 autocast, and its optimizer scales the
//!   loss (fp16's narrow range would flush small gradients to zero);
//! - `bf16-mixed`: the SSL loss under bfloat16 autocast, without loss scaling (bf16 has fp32's
//!   range).
//!
//! Both mixed precisions work on CUDA and on the CPU (libtorch has CPU autocast for both). Under
//! autocast the parameters, gradients, optimizer state and so checkpoints stay fp32: autocast
//! only computes eligible operations (convolutions, matrix products) in the lower precision.
//!
//! tch's own `autocast` drives CUDA autocast with its default dtype only, so [`autocast`] goes
//! through the host's shim (`host/csrc/c10d_shim.cpp`), as `torch.autocast(device_type, dtype)`.
//! It deliberately does not cover the online linear head and the kNN monitor, which stay fp32.

pub use crate::config::Precision;
use crate::config::RunConfig;
use crate::dist::ffi;
use anyhow::{anyhow, bail, Result};
use ssl_plugin_api::tch::{Device, Kind, Tensor};
use std::os::raw::{c_char, c_int};
use std::ptr;

/// libtorch's `at::ScalarType` codes of the autocast dtypes (stable across versions).
const SCALAR_HALF: c_int = 5;
const SCALAR_BFLOAT16: c_int = 15;

impl Precision {
    /// The dtype autocast computes in; `None` for 32-true.
    pub fn autocast_kind(self) -> Option<Kind> {
        match self {
            Precision::True32 => None,
            Precision::Mixed16 => Some(Kind::Half),
            Precision::MixedBf16 => Some(Kind::BFloat16),
        }
    }

    /// Whether the loss is scaled (16-mixed only; the `mixed_precision` argument of
    /// [`crate::engine::OptimizerSlot::new`]).
    pub fn scales_loss(self) -> bool {
        self == Precision::Mixed16
    }

    /// Whether the loss is computed under autocast.
    pub fn is_mixed(self) -> bool {
        self != Precision::True32
    }
}

/// The precision a run of `config` on `device` trains with, and a note to print about it:
/// `precision` when given (on any device); else `use_mixed_precision` (the original's name) means
/// 16-mixed on CUDA and is ignored on the CPU with a note, as the original; else 32-true.
/// (`use_mixed_precision` with another `precision` is refused when the config is read.)
pub fn resolve(config: &RunConfig, device: Device) -> (Precision, Option<&'static str>) {
    match config.precision {
        Some(precision) => (precision, None),
        None if config.use_mixed_precision && device == Device::Cpu => (
            Precision::True32,
            Some(
                "note: use_mixed_precision applies on CUDA only; this CPU run uses 32-bit floats \
                 (as the original; precision=16-mixed or bf16-mixed trains mixed on the CPU too)",
            ),
        ),
        None if config.use_mixed_precision => (Precision::Mixed16, None),
        None => (Precision::True32, None),
    }
}

/// The shim's code of `device`'s type.
fn device_type(device: Device) -> Result<c_int> {
    match device {
        Device::Cpu => Ok(0),
        Device::Cuda(_) => Ok(1),
        other => bail!("mixed precision is available on the CPU and CUDA, not on {other:?}"),
    }
}

fn failed(what: &str, err: *mut c_char) -> anyhow::Error {
    // SAFETY: the shim failed and stored its message in err (or none: a generic message).
    anyhow!("{what}: {}", unsafe { ffi::take_error(err) })
}

/// Autocast of a device type entered, with the state to restore when it is dropped.
struct Entered {
    device_type: c_int,
    was_enabled: c_int,
    was_dtype: c_int,
}

impl Entered {
    fn enter(device: Device, kind: Kind) -> Result<Entered> {
        let device_type = device_type(device)?;
        let dtype = match kind {
            Kind::Half => SCALAR_HALF,
            Kind::BFloat16 => SCALAR_BFLOAT16,
            other => bail!("autocast computes in Half or BFloat16, not {other:?}"),
        };
        let (mut was_enabled, mut was_dtype) = (0, 0);
        let mut err: *mut c_char = ptr::null_mut();
        // SAFETY: plain call with pointers to live locals; on failure the shim stored a message.
        let rc = unsafe {
            ffi::shim_autocast_enter(
                device_type,
                dtype,
                &mut was_enabled,
                &mut was_dtype,
                &mut err,
            )
        };
        if rc != 0 {
            return Err(failed(&format!("entering {kind:?} autocast"), err));
        }
        Ok(Entered {
            device_type,
            was_enabled,
            was_dtype,
        })
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        let mut err: *mut c_char = ptr::null_mut();
        // SAFETY: plain call; on failure the shim stored a message in err.
        let rc = unsafe {
            ffi::shim_autocast_leave(self.device_type, self.was_enabled, self.was_dtype, &mut err)
        };
        if rc != 0 {
            // Only an unknown device type fails, which `enter` already refused.
            eprintln!("warning: {}", failed("leaving autocast", err));
        }
    }
}

/// Runs `f` with `device`'s autocast computing in `precision`'s dtype (just `f` for 32-true),
/// as `with torch.autocast(device_type, dtype):`. The previous autocast state of the thread
/// comes back when `f` returns, fails or panics.
pub fn autocast<T>(precision: Precision, device: Device, f: impl FnOnce() -> T) -> Result<T> {
    let Some(kind) = precision.autocast_kind() else {
        return Ok(f());
    };
    let _entered = Entered::enter(device, kind)?;
    Ok(f())
}

/// `loss` in fp32: a loss computed under autocast may come out in the lower precision (CPU
/// autocast keeps more operations in it than CUDA's), where the loss scaler's product (a loss
/// of 5 times 65536) overflows fp16; the backward converts its gradient back.
pub fn fp32_loss(loss: Tensor) -> Tensor {
    match loss.kind() {
        Kind::Half | Kind::BFloat16 => loss.to_kind(Kind::Float),
        _ => loss,
    }
}

/// Whether autocast of `device`'s type is on in this thread, and its dtype's `at::ScalarType`
/// code.
pub fn autocast_state(device: Device) -> Result<(bool, i32)> {
    let device_type = device_type(device)?;
    let (mut enabled, mut dtype) = (0, 0);
    let mut err: *mut c_char = ptr::null_mut();
    // SAFETY: plain call with pointers to live locals; on failure the shim stored a message.
    let rc = unsafe { ffi::shim_autocast_state(device_type, &mut enabled, &mut dtype, &mut err) };
    if rc != 0 {
        return Err(failed("reading the autocast state", err));
    }
    Ok((enabled != 0, dtype))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matmul() -> Kind {
        let a = Tensor::ones([4, 8], (Kind::Float, Device::Cpu));
        let b = Tensor::ones([8, 2], (Kind::Float, Device::Cpu));
        a.matmul(&b).kind()
    }

    #[test]
    fn bf16_autocast_is_on_inside_and_restored_after_an_error_and_a_panic() {
        let cpu = Device::Cpu;
        let before = autocast_state(cpu).unwrap();
        assert!(!before.0, "autocast is off outside");
        assert_eq!(matmul(), Kind::Float);
        let inside = autocast(Precision::MixedBf16, cpu, || {
            (matmul(), autocast_state(cpu).unwrap())
        })
        .unwrap();
        assert_eq!(inside, (Kind::BFloat16, (true, SCALAR_BFLOAT16)));
        assert_eq!(matmul(), Kind::Float);
        // fp16 on the CPU too; nested autocast restores the outer one.
        let nested = autocast(Precision::Mixed16, cpu, || {
            let inner = autocast(Precision::MixedBf16, cpu, matmul).unwrap();
            (inner, matmul())
        })
        .unwrap();
        assert_eq!(nested, (Kind::BFloat16, Kind::Half));
        // 32-true leaves autocast alone.
        assert_eq!(
            autocast(Precision::True32, cpu, matmul).unwrap(),
            Kind::Float
        );
        // An error inside (the loss of a failing plugin) and a panic leave the state restored.
        let failed: Result<Result<Kind>> =
            autocast(Precision::MixedBf16, cpu, || Err(anyhow!("plugin failed")));
        assert!(failed.unwrap().is_err());
        assert_eq!(autocast_state(cpu).unwrap(), before);
        assert_eq!(matmul(), Kind::Float);
        let half = Tensor::ones([2], (Kind::Half, Device::Cpu));
        assert_eq!(fp32_loss(half).kind(), Kind::Float);
        let panicked = std::panic::catch_unwind(|| {
            autocast(Precision::MixedBf16, cpu, || panic!("inside autocast")).unwrap()
        });
        assert!(panicked.is_err());
        assert_eq!(autocast_state(cpu).unwrap(), before);
        assert_eq!(matmul(), Kind::Float);
    }

    #[test]
    fn the_original_flag_is_16_mixed_on_cuda_and_ignored_on_the_cpu() {
        let mut config = RunConfig::default();
        let cuda = Device::Cuda(0);
        assert_eq!(resolve(&config, Device::Cpu), (Precision::True32, None));
        config.use_mixed_precision = true;
        assert_eq!(resolve(&config, cuda).0, Precision::Mixed16);
        let (cpu, note) = resolve(&config, Device::Cpu);
        assert_eq!(cpu, Precision::True32);
        assert!(note
            .unwrap()
            .contains("use_mixed_precision applies on CUDA only"));
        // An explicit precision trains mixed on the CPU too.
        config.use_mixed_precision = false;
        for precision in [Precision::Mixed16, Precision::MixedBf16] {
            config.precision = Some(precision);
            assert_eq!(resolve(&config, Device::Cpu), (precision, None));
        }
        config.use_mixed_precision = true;
        config.precision = Some(Precision::Mixed16);
        assert_eq!(resolve(&config, Device::Cpu), (Precision::Mixed16, None));
        assert!(Precision::Mixed16.scales_loss() && !Precision::MixedBf16.scales_loss());
        assert!(!Precision::True32.is_mixed() && Precision::MixedBf16.is_mixed());
    }
}
