//! Geometric steps as coordinate maps, so that the batch pipeline compiler can compose a
//! chain of them (affine, random resized crop, flip, resize, centre crop) into one sampling
//! per sample.
//!
//! Coordinates are in pixels with pixel centres at integers (grid_sample's convention with
//! `align_corners=False`). A chain is walked from its last step to its first: each step maps
//! the coordinates of its output to those of its input; a step that can look outside its
//! input (an affine transform, a centre crop larger than the image) marks those points with
//! its fill value, and the latest such step wins, as when the steps run one by one.

use ssl_plugin_api::tch::{Device, Kind, Tensor};
use ssl_plugin_api::Result;

/// Where each output pixel of a chain samples its input, for every sample.
pub struct Coords {
    /// Column coordinate, broadcastable to `[N, H', W']`.
    pub x: Tensor,
    /// Row coordinate, broadcastable to `[N, H', W']`.
    pub y: Tensor,
    /// Output pixels already known to take a fill value (`[N, H', W']` booleans).
    pub(crate) decided: Tensor,
    /// Their fill values (`[N, H', W']`).
    pub(crate) fill: Tensor,
}

impl Coords {
    /// The identity map of an `height × width` output, for `n` samples.
    pub fn identity(n: i64, height: i64, width: i64, device: Device) -> Coords {
        let opts = (Kind::Float, device);
        Coords {
            x: Tensor::arange(width, opts).view([1, 1, width]),
            y: Tensor::arange(height, opts).view([1, height, 1]),
            decided: Tensor::zeros([n, height, width], (Kind::Bool, device)),
            fill: Tensor::zeros([n, height, width], opts),
        }
    }

    /// Marks the points where `outside` holds (and no later step decided) as `fill`.
    pub fn mark_outside(&mut self, outside: &Tensor, fill: f64) {
        let newly = outside.logical_and(&self.decided.logical_not());
        self.fill = self.fill.masked_fill(&newly, fill);
        self.decided = self.decided.logical_or(outside);
    }

    /// `outside` for points whose nearest pixel lies outside an `height × width` image.
    pub fn outside(&self, height: i64, width: i64) -> Tensor {
        self.x
            .lt(-0.5)
            .logical_or(&self.x.ge(width as f64 - 0.5))
            .logical_or(&self.y.lt(-0.5))
            .logical_or(&self.y.ge(height as f64 - 0.5))
    }

    /// The decided mask and fill values, shaped `[N, 1, H', W']`.
    pub fn fill_mask(&self) -> (Tensor, Tensor) {
        (self.decided.unsqueeze(1), self.fill.unsqueeze(1))
    }
}

/// A geometric batch transform that the compiler can compose.
pub trait Geometric: Send + Sync {
    /// Output `(height, width)` for an input of `height × width`.
    fn output_size(&self, height: i64, width: i64) -> Result<(i64, i64)>;
    /// Maps the output coordinates `c` back to input coordinates, with the same per-sample
    /// draws as the step's own `apply` for `seeds`.
    fn map_back(&self, seeds: &[u64], height: i64, width: i64, c: Coords) -> Result<Coords>;
}
