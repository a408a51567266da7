//! `ExpandChannels` on a batch: one channel repeated into three, as a view.

use crate::batch::check;
use ssl_builtin_transforms::expand_channels as per_image;
use ssl_plugin_api::tch::Tensor;
use ssl_plugin_api::{bail, BatchTransform, Params, Result};

const NAME: &str = "ExpandChannels";

/// A one-channel batch expanded to three identical channels (a view, no copy); three-channel
/// batches pass unchanged.
pub struct ExpandChannels;

impl ExpandChannels {
    /// From the per-image transform's parameters (none).
    pub fn from_params(params: &Params) -> Result<Self> {
        per_image::ExpandChannels::from_params(params)?;
        Ok(ExpandChannels)
    }
}

/// `batch` with three channels: a one-channel batch expanded (a view), three passed on.
pub fn to_rgb(name: &str, batch: Tensor) -> Result<Tensor> {
    let size = batch.size();
    match size[1] {
        1 => Ok(batch.expand([size[0], 3, size[2], size[3]], false)),
        3 => Ok(batch),
        c => bail!("{name}: expected 1- or 3-channel images, got {c} channels"),
    }
}

impl BatchTransform for ExpandChannels {
    fn apply(&self, batch: &Tensor, seeds: &[u64]) -> Result<Tensor> {
        let (batch, _) = check(NAME, batch, seeds)?;
        to_rgb(NAME, batch)
    }
}
