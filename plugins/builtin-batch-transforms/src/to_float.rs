//! `ToFloat` on a batch: the identity on a floating-point batch.

use crate::batch::check;
use ssl_builtin_transforms::to_float as per_image;
use ssl_plugin_api::tch::Tensor;
use ssl_plugin_api::{BatchTransform, Params, Result};

const NAME: &str = "ToFloat";

/// Returns the batch as `f32` (batches on the device are already floats in [0, 1]).
pub struct ToFloat;

impl ToFloat {
    /// From the per-image transform's parameters (none).
    pub fn from_params(params: &Params) -> Result<Self> {
        per_image::ToFloat::from_params(params)?;
        Ok(ToFloat)
    }
}

impl BatchTransform for ToFloat {
    fn apply(&self, batch: &Tensor, seeds: &[u64]) -> Result<Tensor> {
        Ok(check(NAME, batch, seeds)?.0)
    }
}
