//! What every batch transform does first: check the batch and the seeds, and move per-sample
//! parameters (drawn on the host) to the batch's device in one upload.

use ssl_plugin_api::tch::{Device, Kind, Tensor};
use ssl_plugin_api::{bail, Result};

/// The shape of a checked batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Number of samples.
    pub n: i64,
    /// Channels.
    pub c: i64,
    /// Height.
    pub h: i64,
    /// Width.
    pub w: i64,
}

impl Dims {
    /// Height and width as `usize` (what the per-image draws take).
    pub fn hw(&self) -> (usize, usize) {
        (self.h as usize, self.w as usize)
    }
}

/// Checks that `batch` is a floating-point `[N, C, H, W]` tensor with one seed per sample,
/// and returns it as `f32` (unchanged when it already is) with its shape. Errors name the
/// transform.
pub fn check(name: &str, batch: &Tensor, seeds: &[u64]) -> Result<(Tensor, Dims)> {
    let size = batch.size();
    let [n, c, h, w] = size[..] else {
        bail!("{name}: expected a batch [N, C, H, W], got a tensor of shape {size:?}");
    };
    if seeds.len() as i64 != n {
        bail!(
            "{name}: {} seeds for a batch of {n} samples (one seed per sample is expected)",
            seeds.len()
        );
    }
    let kind = batch.kind();
    if !matches!(
        kind,
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
    ) {
        bail!("{name}: expected a floating-point batch with values in [0, 1], got {kind:?}");
    }
    let batch = if kind == Kind::Float {
        batch.shallow_clone()
    } else {
        batch.to_kind(Kind::Float)
    };
    Ok((batch, Dims { n, c, h, w }))
}

/// Fails unless the batch has 1 or 3 channels.
pub fn check_grey_or_rgb(name: &str, dims: Dims) -> Result<()> {
    if dims.c != 1 && dims.c != 3 {
        bail!(
            "{name}: expected 1- or 3-channel images, got {} channels",
            dims.c
        );
    }
    Ok(())
}

/// `t` (a host tensor) moved to `device` without waiting for the device: a non-blocking copy,
/// which the CUDA driver stages from host memory at once, so `t` may be dropped right after
/// and no stream synchronisation happens (a blocking copy would wait for every queued kernel).
pub fn to_device_async(t: Tensor, device: Device) -> Tensor {
    if device == Device::Cpu {
        return t;
    }
    t.to_device_(device, t.kind(), true, false)
}

/// A `[rows, cols]` `f32` tensor on `device` from row-major host values: one upload for all
/// the per-sample parameters of a transform.
pub fn upload(values: &[f32], rows: i64, cols: i64, device: Device) -> Tensor {
    debug_assert_eq!(values.len() as i64, rows * cols);
    to_device_async(Tensor::from_slice(values).view([rows, cols]), device)
}

/// A `[len]` `i64` tensor on `device` from host values.
pub fn upload_i64(values: &[i64], device: Device) -> Tensor {
    to_device_async(Tensor::from_slice(values), device)
}

/// Column `k` of a `[N, K]` parameter table, shaped `[N, 1, 1, 1]` to scale whole images.
pub fn per_image(table: &Tensor, k: i64) -> Tensor {
    table.select(1, k).view([-1, 1, 1, 1])
}

/// A per-sample flag (`[N, 1, 1, 1]` booleans on `device`).
pub fn flags(values: &[bool], device: Device) -> Tensor {
    let v: Vec<f32> = values.iter().map(|&b| b as i32 as f32).collect();
    upload(&v, values.len() as i64, 1, device)
        .gt(0.5)
        .view([-1, 1, 1, 1])
}

/// A copy of `batch` that this transform may change in place (never the caller's storage).
pub fn owned_copy(batch: &Tensor) -> Tensor {
    let mut out = Tensor::empty(batch.size(), (Kind::Float, batch.device()));
    out.copy_(batch);
    out
}
