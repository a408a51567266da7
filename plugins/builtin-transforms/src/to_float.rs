//! `ToFloat`: any pixel type to `f32` in [0, 1].

use crate::args;
use crate::convert::to_float_image;
use ssl_plugin_api::{Image, Params, Result, Transform};

/// Converts an image to `F32`: 8-bit values / 255, 16-bit values / 65535, floats unchanged.
/// Shape and channels are kept; the seed is ignored.
#[derive(Clone, Debug, Default)]
pub struct ToFloat;

impl ToFloat {
    /// From parameters (none are accepted).
    pub fn from_params(params: &Params) -> Result<Self> {
        args::check_known(params, "ToFloat", &[])?;
        Ok(ToFloat)
    }
}

impl Transform for ToFloat {
    fn apply(&self, image: Image, _seed: u64) -> Result<Image> {
        to_float_image(image)
    }
}
