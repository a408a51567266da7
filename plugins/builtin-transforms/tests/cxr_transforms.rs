//! The chest X-ray augmentations (InnerEye's pipeline): shapes, ranges, determinism,
//! probabilities, identical channels, and reference values (RandomAffine against the
//! project venv's torchvision, run through python).

use ssl_builtin_transforms::convert::FloatImage;
use ssl_builtin_transforms::elastic_transform::{gaussian_filter, gaussian_kernel1d, warp};
use ssl_builtin_transforms::random_affine::{affine, AffineParams};
use ssl_builtin_transforms::rng::Rng;
use ssl_builtin_transforms::{
    AddGaussianNoise, CenterCrop, ColorJitter, ElasticTransform, ExpandChannels, RandomAffine,
    RandomErasing, RandomGamma, RandomHorizontalFlip, RandomResizedCrop, Resize,
};
use ssl_plugin_api::{Image, Params, Pixels, Transform};
use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;

fn params(json: &str) -> Params {
    Params::from_json(json).unwrap()
}

fn image_u8(w: u32, h: u32, c: u32, seed: u64) -> Image {
    let mut rng = Rng::new(seed);
    let data = (0..w * h * c)
        .map(|_| (rng.next_u64() >> 56) as u8)
        .collect();
    Image::from_u8(w, h, c, data).unwrap()
}

fn values(image: &Image) -> Vec<f32> {
    match image.pixels() {
        Pixels::F32(v) => v.to_vec(),
        _ => panic!("expected an F32 image"),
    }
}

fn shape(image: &Image) -> (u32, u32, u32) {
    (image.height(), image.width(), image.channels())
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Whether every pixel of an interleaved 3-channel buffer has three equal values.
fn channels_identical(v: &[f32]) -> bool {
    v.chunks_exact(3)
        .all(|p| p[0].to_bits() == p[1].to_bits() && p[1].to_bits() == p[2].to_bits())
}

fn new_transforms() -> Vec<(&'static str, Box<dyn Transform>)> {
    vec![
        (
            "ExpandChannels",
            Box::new(ExpandChannels::from_params(&params("{}")).unwrap()),
        ),
        (
            "RandomAffine",
            Box::new(
                RandomAffine::from_params(&params(
                    r#"{"degrees": 180, "translate": [0.1, 0.2], "shear": 40}"#,
                ))
                .unwrap(),
            ),
        ),
        (
            "RandomGamma",
            Box::new(RandomGamma::from_params(&params("{}")).unwrap()),
        ),
        (
            "ElasticTransform",
            Box::new(
                ElasticTransform::from_params(&params(
                    r#"{"alpha": 34, "sigma": 4, "p_apply": 0.7}"#,
                ))
                .unwrap(),
            ),
        ),
        (
            "RandomErasing",
            Box::new(
                RandomErasing::from_params(&params(
                    r#"{"scale": [0.15, 0.4], "ratio": [0.33, 3]}"#,
                ))
                .unwrap(),
            ),
        ),
        (
            "AddGaussianNoise",
            Box::new(
                AddGaussianNoise::from_params(&params(r#"{"p_apply": 0.5, "std": 0.05}"#)).unwrap(),
            ),
        ),
    ]
}

#[test]
fn shapes_ranges_and_determinism() {
    let inputs = [image_u8(13, 9, 1, 1), image_u8(10, 12, 3, 2)];
    for (name, t) in new_transforms() {
        for input in &inputs {
            let (h, w, c) = shape(input);
            let expected = if name == "ExpandChannels" {
                (h, w, 3)
            } else {
                (h, w, c)
            };
            let mut distinct = HashSet::new();
            for seed in 0..30 {
                let out = t.apply(input.clone(), seed).unwrap();
                assert_eq!(shape(&out), expected, "{name} on {:?}", shape(input));
                let v = values(&out);
                assert!(
                    v.iter().all(|x| (0.0..=1.0).contains(x)),
                    "{name}: values outside [0, 1]"
                );
                let again = values(&t.apply(input.clone(), seed).unwrap());
                assert_eq!(
                    bits(&v),
                    bits(&again),
                    "{name}: seed {seed} not reproducible"
                );
                distinct.insert(bits(&v));
            }
            if name == "ExpandChannels" {
                assert_eq!(distinct.len(), 1, "{name} is deterministic");
            } else {
                assert!(
                    distinct.len() > 5,
                    "{name}: seeds barely matter ({})",
                    distinct.len()
                );
            }
        }
    }
}

#[test]
fn every_transform_keeps_identical_channels() {
    let grey = ExpandChannels.apply(image_u8(20, 16, 1, 3), 0).unwrap();
    for (name, t) in new_transforms() {
        for seed in 0..20 {
            let out = values(&t.apply(grey.clone(), seed).unwrap());
            assert!(
                channels_identical(&out),
                "{name}, seed {seed}: channels differ"
            );
        }
    }
}

/// A transform factory with its result dropped.
type Make = fn(&Params) -> ssl_plugin_api::Result<()>;

#[test]
fn unknown_and_invalid_parameters_are_refused() {
    let cases: [(&str, Make, &str, &str); 8] = [
        (
            "ExpandChannels",
            |p| ExpandChannels::from_params(p).map(drop),
            r#"{"n": 3}"#,
            "`n`",
        ),
        (
            "RandomAffine",
            |p| RandomAffine::from_params(p).map(drop),
            r#"{"angle": 3}"#,
            "`angle`",
        ),
        (
            "RandomAffine",
            |p| RandomAffine::from_params(p).map(drop),
            r#"{"translate": 0.1}"#,
            "`translate`",
        ),
        (
            "RandomGamma",
            |p| RandomGamma::from_params(p).map(drop),
            r#"{"scale": [1.5, 0.5]}"#,
            "`scale`",
        ),
        (
            "ElasticTransform",
            |p| ElasticTransform::from_params(p).map(drop),
            r#"{"p": 0.5}"#,
            "`p`",
        ),
        (
            "ElasticTransform",
            |p| ElasticTransform::from_params(p).map(drop),
            r#"{"p_apply": 1.5}"#,
            "`p_apply`",
        ),
        (
            "RandomErasing",
            |p| RandomErasing::from_params(p).map(drop),
            r#"{"scale": [0.1, 2.0]}"#,
            "`scale`",
        ),
        (
            "AddGaussianNoise",
            |p| AddGaussianNoise::from_params(p).map(drop),
            r#"{"std": -1}"#,
            "`std`",
        ),
    ];
    for (name, make, json, needle) in cases {
        let err = make(&params(json)).expect_err(json);
        let msg = err.message().to_string();
        assert!(msg.contains(name) && msg.contains(needle), "{json}: {msg}");
    }
}

// ---------- ExpandChannels ----------

#[test]
fn expand_channels_repeats_one_channel_and_keeps_three() {
    let t = ExpandChannels;
    let one = Image::from_u8(2, 1, 1, vec![0, 255]).unwrap();
    let out = t.apply(one, 0).unwrap();
    assert_eq!(shape(&out), (1, 2, 3));
    assert_eq!(values(&out), vec![0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
    let rgb = Image::from_f32(1, 1, 3, vec![0.1, 0.2, 0.3]).unwrap();
    assert_eq!(t.apply(rgb.clone(), 0).unwrap(), rgb);
    let two = Image::from_f32(1, 1, 2, vec![0.1, 0.2]).unwrap();
    let err = t.apply(two, 0).unwrap_err();
    assert!(err.message().contains("2 channels"), "{err}");
}

// ---------- RandomAffine ----------

fn venv_python() -> PathBuf {
    let python =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.deps/torch-venv/bin/python");
    assert!(
        python.exists(),
        "this test compares with torchvision and needs the project venv's python at {} \
         (see the README: .deps/torch-venv)",
        python.display()
    );
    python
}

/// The test image: value `((i * 37) % 101) / 100` at interleaved index `i`.
fn pattern(w: usize, h: usize, c: usize) -> FloatImage {
    FloatImage {
        width: w,
        height: h,
        channels: c,
        data: (0..w * h * c)
            .map(|i| (((i * 37) % 101) as f64 / 100.0) as f32)
            .collect(),
    }
}

/// torchvision's `F.affine` (nearest, fill 0) on `pattern(w, h, 3)`, interleaved HWC.
fn torchvision_affine(
    w: usize,
    h: usize,
    angle: f64,
    translate: (i64, i64),
    shear: f64,
) -> Vec<f32> {
    let script = format!(
        r#"
import torch
import torchvision.transforms.functional as F
from torchvision.transforms import InterpolationMode
w, h, c = {w}, {h}, 3
hwc = torch.tensor([((i * 37) % 101) / 100 for i in range(w * h * c)], dtype=torch.float32)
img = hwc.reshape(h, w, c).permute(2, 0, 1).contiguous()
out = F.affine(img, angle={angle:?}, translate=[{tx}, {ty}], scale=1.0, shear=[{shear:?}, 0.0],
               interpolation=InterpolationMode.NEAREST, fill=[0.0, 0.0, 0.0])
print(" ".join(repr(float(v)) for v in out.permute(1, 2, 0).flatten().tolist()))
"#,
        tx = translate.0,
        ty = translate.1,
    );
    let out = Command::new(venv_python())
        .arg("-c")
        .arg(script)
        .output()
        .expect("running the venv python");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(|s| s.parse::<f64>().unwrap() as f32)
        .collect()
}

#[test]
fn affine_rotation_by_90_matches_torchvision() {
    for (w, h) in [(5, 7), (4, 6), (6, 4)] {
        let p = AffineParams {
            angle: 90.0,
            translate: (0.0, 0.0),
            shear_x: 0.0,
        };
        let ours = affine(&pattern(w, h, 3), &p, 0.0).data;
        let theirs = torchvision_affine(w, h, 90.0, (0, 0), 0.0);
        assert_eq!(ours, theirs, "{w}×{h}");
    }
    // On a square image a 90° turn is exact: clockwise (F.affine's convention), nothing lost.
    let img = pattern(4, 4, 1);
    let p = AffineParams {
        angle: 90.0,
        translate: (0.0, 0.0),
        shear_x: 0.0,
    };
    let out = affine(&img, &p, 0.0);
    for r in 0..4 {
        for c in 0..4 {
            // Clockwise: output (r, c) comes from input (3 - c, r).
            assert_eq!(out.data[r * 4 + c], img.data[(3 - c) * 4 + r], "({r}, {c})");
        }
    }
}

#[test]
fn affine_with_shift_and_shear_matches_torchvision() {
    for (w, h, angle, t, shear) in [(9, 7, -30.0, (1, -2), 20.0), (8, 10, 135.0, (0, 1), -35.0)] {
        let p = AffineParams {
            angle,
            translate: (t.0 as f64, t.1 as f64),
            shear_x: shear,
        };
        let ours = affine(&pattern(w, h, 3), &p, 0.0).data;
        let theirs = torchvision_affine(w, h, angle, t, shear);
        assert_eq!(ours.len(), theirs.len());
        let differ = ours.iter().zip(&theirs).filter(|(a, b)| a != b).count();
        // Nearest sampling can only disagree on exact half-pixel ties (float rounding).
        assert!(
            differ <= 3,
            "{w}×{h} angle {angle}: {differ} of {} values differ\nours:   {ours:?}\ntorch: {theirs:?}",
            ours.len()
        );
    }
}

#[test]
fn random_affine_with_zero_ranges_is_the_identity() {
    let t = RandomAffine::from_params(&params("{}")).unwrap();
    let input = image_u8(7, 5, 3, 9);
    let expected = FloatImage::from_image(input.clone()).data;
    for seed in 0..5 {
        assert_eq!(values(&t.apply(input.clone(), seed).unwrap()), expected);
    }
}

#[test]
fn random_affine_draws_within_its_ranges() {
    let t = RandomAffine::from_params(&params(
        r#"{"degrees": 30, "translate": [0.1, 0.25], "shear": 15}"#,
    ))
    .unwrap();
    let mut rng = Rng::new(4);
    let (mut min_angle, mut max_angle) = (f64::MAX, f64::MIN);
    for _ in 0..2000 {
        let p = t.draw(&mut rng, 40, 20);
        assert!((-30.0..30.0).contains(&p.angle));
        assert!((-15.0..15.0).contains(&p.shear_x));
        assert!(p.translate.0.abs() <= 4.0 && p.translate.0.fract() == 0.0);
        assert!(p.translate.1.abs() <= 5.0 && p.translate.1.fract() == 0.0);
        min_angle = min_angle.min(p.angle);
        max_angle = max_angle.max(p.angle);
    }
    assert!(min_angle < -29.0 && max_angle > 29.0);
}

// ---------- RandomGamma ----------

#[test]
fn random_gamma_is_exact() {
    let input = Image::from_f32(4, 1, 1, vec![0.0, 0.25, 0.5, 1.0]).unwrap();
    let square = RandomGamma::from_params(&params(r#"{"scale": [2.0, 2.0]}"#)).unwrap();
    assert_eq!(
        values(&square.apply(input.clone(), 3).unwrap()),
        vec![0.0, 0.0625, 0.25, 1.0]
    );
    let root = RandomGamma::from_params(&params(r#"{"scale": [0.5, 0.5]}"#)).unwrap();
    assert_eq!(
        values(&root.apply(input.clone(), 3).unwrap()),
        vec![0.0, 0.5, 0.70710677, 1.0]
    );
    // A random gamma: one value for every pixel and channel.
    let t = RandomGamma::from_params(&params("{}")).unwrap();
    let rgb = image_u8(6, 5, 3, 11);
    let x = FloatImage::from_image(rgb.clone()).data;
    for seed in 0..10 {
        let g = t.gamma_for_seed(seed);
        assert!((0.5..1.5).contains(&g));
        let expected: Vec<f32> = x.iter().map(|v| v.powf(g as f32).clamp(0.0, 1.0)).collect();
        assert_eq!(values(&t.apply(rgb.clone(), seed).unwrap()), expected);
    }
}

// ---------- ElasticTransform ----------

#[test]
fn elastic_with_alpha_zero_is_the_identity_and_p_zero_skips() {
    let input = image_u8(11, 8, 3, 5);
    let x = FloatImage::from_image(input.clone()).data;
    let zero = ElasticTransform::from_params(&params(r#"{"alpha": 0, "p_apply": 1}"#)).unwrap();
    let never = ElasticTransform::from_params(&params(r#"{"alpha": 34, "p_apply": 0}"#)).unwrap();
    let always = ElasticTransform::from_params(&params(r#"{"alpha": 34, "p_apply": 1}"#)).unwrap();
    for seed in 0..10 {
        assert_eq!(values(&zero.apply(input.clone(), seed).unwrap()), x);
        assert_eq!(values(&never.apply(input.clone(), seed).unwrap()), x);
        assert_ne!(
            values(&always.apply(input.clone(), seed).unwrap()),
            x,
            "seed {seed}"
        );
    }
}

#[test]
fn gaussian_filter_equals_a_direct_zero_padded_convolution() {
    let k = gaussian_kernel1d(4.0);
    assert_eq!(k.len(), 33, "radius int(4 * 4 + 0.5) = 16");
    assert!((k.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    assert_eq!(gaussian_kernel1d(1.5).len(), 13, "radius int(6.5) = 6");
    let (h, w, sigma) = (9, 12, 1.5);
    let mut rng = Rng::new(2);
    let field: Vec<f64> = (0..h * w).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let fast = gaussian_filter(&field, h, w, sigma);
    let r = 6isize;
    let g = |d: isize| (-(d * d) as f64 / (2.0 * sigma * sigma)).exp();
    let norm: f64 = (-r..=r).map(g).sum();
    for y in 0..h as isize {
        for x in 0..w as isize {
            let mut acc = 0.0;
            for dy in -r..=r {
                for dx in -r..=r {
                    let (yy, xx) = (y + dy, x + dx);
                    if yy >= 0 && yy < h as isize && xx >= 0 && xx < w as isize {
                        acc +=
                            g(dy) * g(dx) / (norm * norm) * field[(yy * w as isize + xx) as usize];
                    }
                }
            }
            let got = fast[(y * w as isize + x) as usize];
            assert!((got - acc).abs() < 1e-12, "({y}, {x}): {got} vs {acc}");
        }
    }
    assert_eq!(
        gaussian_filter(&field, h, w, 0.0),
        field,
        "sigma 0 filters nothing"
    );
}

#[test]
fn warp_interpolates_bilinearly_with_zeros_outside() {
    // 3 rows × 2 columns, 1 channel: values 1..6.
    let img = FloatImage {
        width: 2,
        height: 3,
        channels: 1,
        data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
    };
    // dx moves along rows: half a row down; the last row samples row 2.5 → outside → 0.
    let out = warp(&img, &[0.5; 6], &[0.0; 6]);
    assert_eq!(out.data, vec![2.0, 3.0, 4.0, 5.0, 0.0, 0.0]);
    // dy moves along columns: a quarter column right; the last column is outside.
    let out = warp(&img, &[0.0; 6], &[0.25; 6]);
    assert_eq!(out.data, vec![1.25, 0.0, 3.25, 0.0, 5.25, 0.0]);
    // Negative shifts leave the image at the top row.
    let out = warp(&img, &[-0.5; 6], &[0.0; 6]);
    assert_eq!(out.data, vec![0.0, 0.0, 2.0, 3.0, 4.0, 5.0]);
    // A point exactly on the last row is inside.
    let out = warp(
        &img,
        &[0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        &[0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    );
    assert_eq!(out.data, img.data);
}

// ---------- RandomErasing ----------

#[test]
fn random_erasing_probability_and_rectangle() {
    let input = Image::from_f32(40, 30, 3, vec![0.5; 40 * 30 * 3]).unwrap();
    let never = RandomErasing::from_params(&params(r#"{"p": 0}"#)).unwrap();
    let always = RandomErasing::from_params(&params(
        r#"{"p": 1, "scale": [0.15, 0.4], "ratio": [0.33, 3]}"#,
    ))
    .unwrap();
    for seed in 0..30 {
        assert_eq!(never.apply(input.clone(), seed).unwrap(), input);
        let out = values(&always.apply(input.clone(), seed).unwrap());
        assert!(channels_identical(&out));
        // The zeros form one rectangle of area within the scale range (rounding aside).
        let zeros: Vec<(usize, usize)> = (0..30 * 40)
            .filter(|&k| out[k * 3] == 0.0)
            .map(|k| (k / 40, k % 40))
            .collect();
        assert!(!zeros.is_empty(), "seed {seed}: nothing erased");
        let rows: HashSet<usize> = zeros.iter().map(|z| z.0).collect();
        let cols: HashSet<usize> = zeros.iter().map(|z| z.1).collect();
        assert_eq!(
            rows.len() * cols.len(),
            zeros.len(),
            "seed {seed}: not a rectangle"
        );
        let frac = zeros.len() as f64 / 1200.0;
        assert!(
            (0.10..0.47).contains(&frac),
            "seed {seed}: area fraction {frac}"
        );
        assert!(out.iter().all(|&v| v == 0.0 || v == 0.5));
    }
}

#[test]
fn random_erasing_leaves_images_too_small_for_the_box() {
    // Any box of area ≥ 0.9 · H · W has a side ≥ H or ≥ W: no try fits.
    let t =
        RandomErasing::from_params(&params(r#"{"p": 1, "scale": [0.9, 1.0], "ratio": [1, 1]}"#))
            .unwrap();
    let input = image_u8(10, 10, 1, 4);
    let x = FloatImage::from_image(input.clone()).data;
    for seed in 0..10 {
        assert_eq!(values(&t.apply(input.clone(), seed).unwrap()), x);
    }
}

// ---------- AddGaussianNoise ----------

#[test]
fn gaussian_noise_probability_range_and_strength() {
    // Left half 0.5, a black and a white pixel so that the clamp range is [0, 1].
    let (w, h) = (100, 100);
    let mut data = vec![0.5f32; w * h];
    data[0] = 0.0;
    data[1] = 1.0;
    let grey = Image::from_f32(w as u32, h as u32, 1, data.clone()).unwrap();
    let rgb = ExpandChannels.apply(grey.clone(), 0).unwrap();
    let never = AddGaussianNoise::from_params(&params(r#"{"p_apply": 0, "std": 0.05}"#)).unwrap();
    let always = AddGaussianNoise::from_params(&params(r#"{"p_apply": 1, "std": 0.05}"#)).unwrap();
    assert_eq!(never.apply(rgb.clone(), 1).unwrap(), rgb);
    let out = values(&always.apply(rgb.clone(), 1).unwrap());
    assert!(channels_identical(&out));
    let diffs: Vec<f64> = out
        .chunks_exact(3)
        .skip(2)
        .map(|p| p[0] as f64 - 0.5)
        .collect();
    let n = diffs.len() as f64;
    let mean = diffs.iter().sum::<f64>() / n;
    let std = (diffs.iter().map(|d| (d - mean) * (d - mean)).sum::<f64>() / n).sqrt();
    assert!(mean.abs() < 0.003, "mean {mean}");
    assert!((std - 0.05).abs() < 0.003, "std {std}");
    // Clamped to the image's own range: a constant image cannot change.
    let flat = Image::from_f32(8, 8, 3, vec![0.3; 192]).unwrap();
    assert_eq!(always.apply(flat.clone(), 5).unwrap(), flat);
    let narrow = Image::from_f32(2, 1, 1, vec![0.4, 0.6]).unwrap();
    for seed in 0..20 {
        let v = values(&always.apply(narrow.clone(), seed).unwrap());
        assert!(v.iter().all(|x| (0.4..=0.6).contains(x)), "{v:?}");
    }
}

// ---------- whole CXR pipelines ----------

/// The original's encoder pipeline (cxr_ssl_encoder_augmentations.yaml), built directly.
fn encoder_pipeline() -> Vec<Box<dyn Transform>> {
    vec![
        Box::new(ExpandChannels),
        Box::new(
            RandomAffine::from_params(&params(
                r#"{"degrees": 180, "translate": [0.0, 0.0], "shear": 40}"#,
            ))
            .unwrap(),
        ),
        Box::new(
            RandomResizedCrop::from_params(&params(r#"{"size": 256, "scale": [0.4, 1.0]}"#))
                .unwrap(),
        ),
        Box::new(RandomHorizontalFlip::from_params(&params(r#"{"p": 0.5}"#)).unwrap()),
        Box::new(RandomGamma::from_params(&params(r#"{"scale": [0.5, 1.5]}"#)).unwrap()),
        Box::new(
            ColorJitter::from_params(&params(
                r#"{"brightness": 0.2, "contrast": 0.2, "saturation": 0.0}"#,
            ))
            .unwrap(),
        ),
        Box::new(
            ElasticTransform::from_params(&params(r#"{"alpha": 34, "sigma": 4, "p_apply": 0.4}"#))
                .unwrap(),
        ),
        Box::new(CenterCrop::from_params(&params(r#"{"size": 224}"#)).unwrap()),
        Box::new(
            RandomErasing::from_params(&params(r#"{"scale": [0.15, 0.4], "ratio": [0.33, 3]}"#))
                .unwrap(),
        ),
        Box::new(
            AddGaussianNoise::from_params(&params(r#"{"p_apply": 0.5, "std": 0.05}"#)).unwrap(),
        ),
    ]
}

fn run(pipeline: &[Box<dyn Transform>], mut image: Image, seed: u64) -> Image {
    for (i, t) in pipeline.iter().enumerate() {
        image = t
            .apply(image, seed.wrapping_mul(31).wrapping_add(i as u64))
            .unwrap();
    }
    image
}

#[test]
fn cxr_pipelines_give_identical_channels_of_224() {
    let xray = image_u8(300, 280, 1, 21);
    let encoder = encoder_pipeline();
    let val: Vec<Box<dyn Transform>> = vec![
        Box::new(ExpandChannels),
        Box::new(Resize::from_params(&params(r#"{"size": 256}"#)).unwrap()),
        Box::new(CenterCrop::from_params(&params(r#"{"size": 224}"#)).unwrap()),
    ];
    let mut views = HashSet::new();
    for seed in 0..4 {
        let out = run(&encoder, xray.clone(), seed);
        assert_eq!(shape(&out), (224, 224, 3));
        let v = values(&out);
        assert!(v.iter().all(|x| (0.0..=1.0).contains(x)));
        assert!(channels_identical(&v), "encoder pipeline, seed {seed}");
        views.insert(bits(&v));
    }
    assert_eq!(views.len(), 4, "views differ between seeds");
    let out = run(&val, xray.clone(), 0);
    assert_eq!(shape(&out), (224, 224, 3));
    assert!(channels_identical(&values(&out)));
    assert_eq!(
        out,
        run(&val, xray, 1),
        "validation pipeline is deterministic"
    );
}
