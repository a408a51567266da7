//! Conversions between [`Image`]s of any pixel type and interleaved `f32` buffers in [0, 1].

use ssl_plugin_api::{Image, PixelData, Result};

/// An image as interleaved (`height × width × channels`, row-major) `f32` values, the working
/// form of every transform here.
#[derive(Clone, Debug, PartialEq)]
pub struct FloatImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Number of channels.
    pub channels: usize,
    /// `height * width * channels` values.
    pub data: Vec<f32>,
}

impl FloatImage {
    /// Takes `image` apart: 8-bit values are divided by 255, 16-bit values by 65535, and
    /// floating-point values are kept as they are (their buffer is reused, not copied).
    pub fn from_image(image: Image) -> Self {
        let width = image.width() as usize;
        let height = image.height() as usize;
        let channels = image.channels() as usize;
        let data = match image.into_data() {
            PixelData::U8(v) => v.iter().map(|&x| x as f32 / 255.0).collect(),
            PixelData::U16(v) => v.iter().map(|&x| x as f32 / 65535.0).collect(),
            PixelData::F32(v) => v.into_vec(),
        };
        FloatImage {
            width,
            height,
            channels,
            data,
        }
    }

    /// A black (all-zero) image.
    pub fn zeros(width: usize, height: usize, channels: usize) -> Self {
        FloatImage {
            width,
            height,
            channels,
            data: vec![0.0; width * height * channels],
        }
    }

    /// Number of values in one row (`width * channels`).
    pub fn row_len(&self) -> usize {
        self.width * self.channels
    }

    /// Builds the output [`Image`] (pixel type `F32`).
    pub fn into_image(self) -> Result<Image> {
        Image::from_f32(
            dim(self.width, "width")?,
            dim(self.height, "height")?,
            dim(self.channels, "channels")?,
            self.data,
        )
    }
}

fn dim(value: usize, what: &str) -> Result<u32> {
    u32::try_from(value).map_err(|_| {
        ssl_plugin_api::PluginError::msg(format!("output {what} {value} does not fit in u32"))
    })
}

/// Converts `image` to an `F32` image in [0, 1] (see [`FloatImage::from_image`]).
pub fn to_float_image(image: Image) -> Result<Image> {
    FloatImage::from_image(image).into_image()
}

/// Clamps every value to [0, 1].
pub fn clamp01(data: &mut [f32]) {
    for v in data {
        *v = v.clamp(0.0, 1.0);
    }
}
