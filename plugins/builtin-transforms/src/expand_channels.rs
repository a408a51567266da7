//! `ExpandChannels`: a one-channel image repeated into three identical channels.

use crate::args;
use crate::convert::FloatImage;
use ssl_plugin_api::{bail, Image, Params, Result, Transform};

/// Repeats the single channel of a grey image three times (InnerEye's `ExpandChannels`,
/// `repeat_interleave(3, dim=1)`), so that RGB encoders can take chest X-rays. A 3-channel
/// image passes through unchanged (converted to `F32`); other channel counts are an error.
/// Deterministic; no parameters.
#[derive(Clone, Debug, Default)]
pub struct ExpandChannels;

const NAME: &str = "ExpandChannels";

impl ExpandChannels {
    /// From parameters (none are accepted).
    pub fn from_params(params: &Params) -> Result<Self> {
        args::check_known(params, NAME, &[])?;
        Ok(ExpandChannels)
    }
}

/// `img` with its one channel written to three.
pub fn expand_to_rgb(img: &FloatImage) -> FloatImage {
    let data = img.data.iter().flat_map(|&v| [v, v, v]).collect();
    FloatImage {
        width: img.width,
        height: img.height,
        channels: 3,
        data,
    }
}

impl Transform for ExpandChannels {
    fn apply(&self, image: Image, _seed: u64) -> Result<Image> {
        let img = FloatImage::from_image(image);
        match img.channels {
            1 => expand_to_rgb(&img).into_image(),
            3 => img.into_image(),
            c => bail!("{NAME}: expected a 1- or 3-channel image, got {c} channels"),
        }
    }
}
