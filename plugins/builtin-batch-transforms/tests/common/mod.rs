//! Helpers of the tests: images, conversions between per-image `Image`s and batches, and the
//! per-image reference transforms.

#![allow(dead_code)]

use ssl_builtin_transforms::rng::Rng;
use ssl_plugin_api::tch::{Device, Kind, Tensor};
use ssl_plugin_api::{step_seed, Image, Params, PixelData, Transform};

/// Parameters from JSON text.
pub fn params(json: &str) -> Params {
    Params::from_json(json).expect("valid JSON parameters")
}

/// A smooth random `c × h × w` image in [0, 1] (a sum of a few random waves, plus a little
/// pixel noise when `rough`), deterministic per `seed`.
pub fn image(seed: u64, c: i64, h: i64, w: i64, rough: bool) -> Tensor {
    let mut rng = Rng::new(seed);
    let mut data = vec![0f32; (c * h * w) as usize];
    let waves: Vec<[f64; 4]> = (0..4)
        .map(|_| {
            [
                rng.uniform(0.5, 3.0),
                rng.uniform(0.5, 3.0),
                rng.uniform(0.0, 6.3),
                rng.uniform(0.05, 0.2),
            ]
        })
        .collect();
    for ch in 0..c {
        for y in 0..h {
            for x in 0..w {
                let (u, v) = (x as f64 / w as f64, y as f64 / h as f64);
                let mut s = 0.5 + 0.05 * ch as f64;
                for [fx, fy, ph, a] in &waves {
                    s += a * (std::f64::consts::TAU * (fx * u + fy * v) + ph + ch as f64).sin();
                }
                if rough {
                    s += rng.uniform(-0.1, 0.1);
                }
                data[((ch * h + y) * w + x) as usize] = s.clamp(0.0, 1.0) as f32;
            }
        }
    }
    Tensor::from_slice(&data).view([c, h, w])
}

/// A batch of `n` images (`image(first + i, ...)`).
pub fn batch(first: u64, n: i64, c: i64, h: i64, w: i64, rough: bool) -> Tensor {
    let images: Vec<Tensor> = (0..n)
        .map(|i| image(first + i as u64, c, h, w, rough))
        .collect();
    Tensor::stack(&images, 0)
}

/// Seeds of a batch.
pub fn seeds(n: usize, salt: u64) -> Vec<u64> {
    (0..n as u64)
        .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt)
        .collect()
}

/// `[C, H, W]` tensor → interleaved `F32` image.
pub fn to_image(t: &Tensor) -> Image {
    let size = t.size();
    let (c, h, w) = (size[0], size[1], size[2]);
    let hwc = t.permute([1, 2, 0]).contiguous();
    let data: Vec<f32> = Vec::<f32>::try_from(hwc.flatten(0, -1)).expect("f32 data");
    Image::from_f32(w as u32, h as u32, c as u32, data).expect("image")
}

/// Interleaved image → `[C, H, W]` tensor.
pub fn to_tensor(image: Image) -> Tensor {
    let (w, h, c) = (
        image.width() as i64,
        image.height() as i64,
        image.channels() as i64,
    );
    let data = match image.into_data() {
        PixelData::F32(v) => v.into_vec(),
        _ => panic!("expected an F32 image"),
    };
    Tensor::from_slice(&data)
        .view([h, w, c])
        .permute([2, 0, 1])
        .contiguous()
}

/// The per-image transform `t` applied to every sample of `batch` with its seed, stacked.
pub fn per_image(t: &dyn Transform, batch: &Tensor, seeds: &[u64]) -> Tensor {
    let out: Vec<Tensor> = seeds
        .iter()
        .enumerate()
        .map(|(i, &s)| to_tensor(t.apply(to_image(&batch.get(i as i64)), s).expect("apply")))
        .collect();
    Tensor::stack(&out, 0)
}

/// A per-image pipeline applied step by step (step `i` gets `step_seed(seed, i)`), as the
/// host's reference path does.
pub fn per_image_steps(steps: &[Box<dyn Transform>], batch: &Tensor, seeds: &[u64]) -> Tensor {
    let out: Vec<Tensor> = seeds
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let mut img = to_image(&batch.get(i as i64));
            for (pos, step) in steps.iter().enumerate() {
                img = step.apply(img, step_seed(s, pos)).expect("apply");
            }
            to_tensor(img)
        })
        .collect();
    Tensor::stack(&out, 0)
}

/// Largest absolute difference (after checking the shapes agree).
pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a - b).abs().max().double_value(&[])
}

/// Mean absolute difference.
pub fn mean_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a - b).abs().mean(Kind::Float).double_value(&[])
}

/// The CPU device (what the tests run on).
pub const CPU: Device = Device::Cpu;
