//! Decoded images and dataset samples, as plain pixel buffers that need no libtorch.

use crate::error::{PluginError, Result};
use abi_stable::std_types::{ROption, RString, RVec};
use abi_stable::StableAbi;

/// The pixel values of an [`Image`], interleaved (`height × width × channels`, row-major).
#[repr(u8)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub enum PixelData {
    /// 8-bit values, 0..=255.
    U8(RVec<u8>),
    /// 16-bit values (e.g. 12/16-bit X-rays before scaling).
    U16(RVec<u16>),
    /// Floating-point values (augmentations usually work in [0, 1]).
    F32(RVec<f32>),
}

/// A borrowed view of an image's pixels.
#[derive(Clone, Copy, Debug)]
pub enum Pixels<'a> {
    /// 8-bit values.
    U8(&'a [u8]),
    /// 16-bit values.
    U16(&'a [u16]),
    /// Floating-point values.
    F32(&'a [f32]),
}

/// A decoded image: width, height, channels and interleaved pixel values.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct Image {
    width: u32,
    height: u32,
    channels: u32,
    data: PixelData,
}

impl Image {
    fn checked(
        width: u32,
        height: u32,
        channels: u32,
        data: PixelData,
        len: usize,
    ) -> Result<Self> {
        let expected = width as usize * height as usize * channels as usize;
        if len != expected {
            return Err(PluginError::msg(format!(
                "image buffer holds {len} values, expected {width}×{height}×{channels} = {expected}"
            )));
        }
        if channels == 0 {
            return Err(PluginError::msg("an image needs at least one channel"));
        }
        Ok(Image {
            width,
            height,
            channels,
            data,
        })
    }

    /// An 8-bit image; `data.len()` must be `width * height * channels`.
    pub fn from_u8(width: u32, height: u32, channels: u32, data: Vec<u8>) -> Result<Self> {
        let len = data.len();
        Self::checked(width, height, channels, PixelData::U8(data.into()), len)
    }

    /// A 16-bit image; `data.len()` must be `width * height * channels`.
    pub fn from_u16(width: u32, height: u32, channels: u32, data: Vec<u16>) -> Result<Self> {
        let len = data.len();
        Self::checked(width, height, channels, PixelData::U16(data.into()), len)
    }

    /// A floating-point image; `data.len()` must be `width * height * channels`.
    pub fn from_f32(width: u32, height: u32, channels: u32, data: Vec<f32>) -> Result<Self> {
        let len = data.len();
        Self::checked(width, height, channels, PixelData::F32(data.into()), len)
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Number of channels (1 grey, 3 RGB, ...).
    pub fn channels(&self) -> u32 {
        self.channels
    }

    /// The pixel values.
    pub fn pixels(&self) -> Pixels<'_> {
        match &self.data {
            PixelData::U8(v) => Pixels::U8(v.as_slice()),
            PixelData::U16(v) => Pixels::U16(v.as_slice()),
            PixelData::F32(v) => Pixels::F32(v.as_slice()),
        }
    }

    /// The pixel values as `f32`, unscaled (an 8-bit 255 stays 255.0).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match self.pixels() {
            Pixels::U8(v) => v.iter().map(|&x| x as f32).collect(),
            Pixels::U16(v) => v.iter().map(|&x| x as f32).collect(),
            Pixels::F32(v) => v.to_vec(),
        }
    }

    /// Takes the pixel buffer out, as the ABI enum.
    pub fn into_data(self) -> PixelData {
        self.data
    }
}

/// One item of a dataset: the decoded image, its label if it has one, and an id (subject,
/// file name or row) that names it in errors and exports.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct Sample {
    image: Image,
    label: ROption<i64>,
    id: RString,
}

impl Sample {
    /// A sample.
    pub fn new(image: Image, label: Option<i64>, id: impl Into<String>) -> Self {
        Sample {
            image,
            label: label.into(),
            id: RString::from(id.into()),
        }
    }

    /// The image.
    pub fn image(&self) -> &Image {
        &self.image
    }

    /// The label, if the dataset is labelled.
    pub fn label(&self) -> Option<i64> {
        self.label.into_option()
    }

    /// The id.
    pub fn id(&self) -> &str {
        self.id.as_str()
    }

    /// Splits the sample into its parts.
    pub fn into_parts(self) -> (Image, Option<i64>, String) {
        (self.image, self.label.into_option(), self.id.into_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_size_is_checked() {
        assert!(Image::from_u8(2, 2, 3, vec![0; 12]).is_ok());
        let err = Image::from_u8(2, 2, 3, vec![0; 11]).unwrap_err();
        assert!(err.message().contains("expected 2×2×3 = 12"), "{err}");
        assert!(Image::from_f32(1, 1, 0, vec![]).is_err());
    }
}
