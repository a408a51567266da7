//! The pointwise colour steps on the working image, in place, including the form where a
//! grey image stands for three identical channels (after `ExpandChannels`) and is kept in one.
//!
//! On three identical channels `v`, the steps compute per pixel what they compute on one
//! channel, except where they mix channels through the luma `0.299 R + 0.587 G + 0.114 B`:
//! contrast (its mean), saturation and grayscale use [`luma_grey`], the same `f32`
//! arithmetic on `(v, v, v)`, so the results are the steps' bits; the hue shift of a grey
//! pixel only clamps it to [0, 1].

use crate::color_jitter::{adjust_brightness, apply_draw, JitterDraw};
use crate::convert::clamp01;
use crate::random_grayscale::{to_grey, LUMA};

/// The luma of the pixel `(v, v, v)`, with the arithmetic of
/// [`luma`](crate::random_grayscale::luma).
#[inline(always)]
pub(crate) fn luma_grey(v: f32) -> f32 {
    LUMA[0] * v + LUMA[1] * v + LUMA[2] * v
}

/// `ColorJitter`'s drawn adjustments on `data` (`channels` interleaved; `grey3`: one channel
/// standing for three identical ones).
pub(crate) fn jitter(data: &mut [f32], channels: usize, grey3: bool, draw: &JitterDraw) {
    if !grey3 {
        apply_draw(data, channels, draw);
        return;
    }
    for &op in &draw.order {
        let Some(f) = draw.factors[op] else { continue };
        match op {
            0 => adjust_brightness(data, f),
            1 => contrast_grey3(data, f),
            2 => saturation_grey3(data, f),
            _ => clamp01(data),
        }
    }
}

/// `adjust_contrast` of three identical channels: the mean of their luma.
fn contrast_grey3(data: &mut [f32], factor: f32) {
    let mean = if data.is_empty() {
        0.0
    } else {
        let sum: f64 = data.iter().map(|&v| luma_grey(v) as f64).sum();
        (sum / data.len() as f64) as f32
    };
    let offset = (1.0 - factor) * mean;
    for v in data {
        *v = (factor * *v + offset).clamp(0.0, 1.0);
    }
}

/// `adjust_saturation` of three identical channels.
fn saturation_grey3(data: &mut [f32], factor: f32) {
    let keep = 1.0 - factor;
    for v in data {
        let g = keep * luma_grey(*v);
        *v = (factor * *v + g).clamp(0.0, 1.0);
    }
}

/// `RandomGrayscale` when it fires: RGB to luma; three identical channels to their luma;
/// a plain one-channel image is left as it is (as the step does).
pub(crate) fn grayscale(data: &mut [f32], channels: usize, grey3: bool) {
    if grey3 {
        for v in data {
            *v = luma_grey(*v);
        }
    } else if channels == 3 {
        to_grey(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::color_jitter::adjust_hue;

    #[test]
    fn grey_forms_give_the_bits_of_three_channels() {
        let grey: Vec<f32> = (0..300).map(|i| (i as f32 * 0.37).sin().abs()).collect();
        let rgb: Vec<f32> = grey.iter().flat_map(|&v| [v, v, v]).collect();
        let draw = JitterDraw {
            order: [3, 1, 2, 0],
            factors: [Some(1.1), Some(0.7), Some(1.6), Some(0.2)],
        };
        let (mut g, mut c) = (grey.clone(), rgb.clone());
        jitter(&mut g, 1, true, &draw);
        apply_draw(&mut c, 3, &draw);
        let expanded: Vec<f32> = g.iter().flat_map(|&v| [v, v, v]).collect();
        assert_eq!(expanded, c);
        let (mut g, mut c) = (grey.clone(), rgb.clone());
        grayscale(&mut g, 1, true);
        grayscale(&mut c, 3, false);
        let expanded: Vec<f32> = g.iter().flat_map(|&v| [v, v, v]).collect();
        assert_eq!(expanded, c);
        let mut c = rgb.clone();
        adjust_hue(&mut c, 0.3);
        assert_eq!(c, rgb, "a hue shift leaves grey pixels as they are");
    }
}
