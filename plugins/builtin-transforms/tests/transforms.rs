//! Behaviour of each transform: shapes, value range, determinism, probabilities, and
//! reference values.
//!
//! Reference values marked "torch" were computed with torch 2.11 / torchvision 0.26 (the
//! project venv `.deps/torch-venv`), those marked "numpy" with numpy (`np.pad(mode="reflect")`
//! is cv2's BORDER_REFLECT_101), and hard-coded here.

// The references are printed with 7 decimals, more than an f32 holds.
#![allow(clippy::excessive_precision)]

use ssl_builtin_transforms::rng::Rng;
use ssl_builtin_transforms::{
    CenterCrop, ColorJitter, GaussianBlur, RandomGrayscale, RandomHorizontalFlip,
    RandomResizedCrop, Resize, ToFloat,
};
use ssl_plugin_api::{Image, Params, Pixels, Transform};

fn params(json: &str) -> Params {
    Params::from_json(json).unwrap()
}

/// Deterministic pseudo-random u8 image.
fn image_u8(w: u32, h: u32, c: u32, seed: u64) -> Image {
    let mut rng = Rng::new(seed);
    let data = (0..w * h * c)
        .map(|_| (rng.next_u64() >> 56) as u8)
        .collect();
    Image::from_u8(w, h, c, data).unwrap()
}

fn image_f32(w: u32, h: u32, c: u32, seed: u64) -> Image {
    let mut rng = Rng::new(seed);
    let data = (0..w * h * c).map(|_| rng.next_f64() as f32).collect();
    Image::from_f32(w, h, c, data).unwrap()
}

fn image_u16(w: u32, h: u32, c: u32) -> Image {
    let data = (0..w * h * c).map(|i| (i * 997 % 65536) as u16).collect();
    Image::from_u16(w, h, c, data).unwrap()
}

/// The F32 values of `image`; fails for other pixel types.
fn values(image: &Image) -> Vec<f32> {
    match image.pixels() {
        Pixels::F32(v) => v.to_vec(),
        _ => panic!("expected an F32 image"),
    }
}

fn shape(image: &Image) -> (u32, u32, u32) {
    (image.height(), image.width(), image.channels())
}

fn assert_close(actual: &[f32], expected: &[f32], tol: f32) {
    assert_eq!(actual.len(), expected.len(), "lengths differ");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= tol,
            "value {i}: got {a}, expected {e} (tol {tol})\nactual:   {actual:?}\nexpected: {expected:?}"
        );
    }
}

fn all_transforms() -> Vec<(&'static str, Box<dyn Transform>)> {
    vec![
        (
            "RandomResizedCrop",
            Box::new(RandomResizedCrop::from_params(&params(r#"{"size": 8}"#)).unwrap()),
        ),
        (
            "RandomHorizontalFlip",
            Box::new(RandomHorizontalFlip::from_params(&params("{}")).unwrap()),
        ),
        (
            "ColorJitter",
            Box::new(
                ColorJitter::from_params(&params(
                    r#"{"brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.2, "p": 0.8}"#,
                ))
                .unwrap(),
            ),
        ),
        (
            "RandomGrayscale",
            Box::new(RandomGrayscale::from_params(&params(r#"{"p": 0.5}"#)).unwrap()),
        ),
        (
            "GaussianBlur",
            Box::new(GaussianBlur::from_params(&params("{}")).unwrap()),
        ),
        (
            "Resize",
            Box::new(Resize::from_params(&params(r#"{"size": 6}"#)).unwrap()),
        ),
        (
            "CenterCrop",
            Box::new(CenterCrop::from_params(&params(r#"{"size": [5, 7]}"#)).unwrap()),
        ),
        ("ToFloat", Box::new(ToFloat::from_params(&params("{}")).unwrap())),
    ]
}

fn expected_shape(name: &str, (h, w, c): (u32, u32, u32)) -> (u32, u32, u32) {
    match name {
        "RandomResizedCrop" => (8, 8, c),
        "Resize" if w <= h => (((6 * h) as f64 / w as f64) as u32, 6, c),
        "Resize" => (6, ((6 * w) as f64 / h as f64) as u32, c),
        "CenterCrop" => (5, 7, c),
        _ => (h, w, c),
    }
}

#[test]
fn shapes_and_range_for_every_transform_and_pixel_type() {
    let inputs = [
        image_u8(12, 9, 3, 1),
        image_u8(9, 12, 1, 2),
        image_u16(10, 10, 3),
        image_f32(11, 7, 3, 3),
    ];
    for (name, t) in all_transforms() {
        for input in &inputs {
            for seed in 0..20 {
                let out = t
                    .apply(input.clone(), seed)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(
                    shape(&out),
                    expected_shape(name, shape(input)),
                    "{name} on {:?}",
                    shape(input)
                );
                let v = values(&out);
                assert!(
                    v.iter().all(|x| (0.0..=1.0).contains(x)),
                    "{name}: values outside [0, 1]"
                );
            }
        }
    }
}

#[test]
fn same_seed_same_output_and_seeds_matter() {
    let input = image_u8(16, 12, 3, 7);
    for (name, t) in all_transforms() {
        let mut distinct = std::collections::HashSet::new();
        for seed in 0..30u64 {
            let a = values(&t.apply(input.clone(), seed).unwrap());
            let b = values(&t.apply(input.clone(), seed).unwrap());
            assert_eq!(a, b, "{name}: seed {seed} is not reproducible");
            distinct.insert(a.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
        }
        let random = !matches!(name, "Resize" | "CenterCrop" | "ToFloat");
        if random {
            assert!(
                distinct.len() > 1,
                "{name}: every seed gave the same output"
            );
        } else {
            assert_eq!(distinct.len(), 1, "{name}: deterministic transform varies");
        }
    }
    // Big seeds and neighbouring seeds are fine too.
    let t = RandomResizedCrop::from_params(&params(r#"{"size": 8}"#)).unwrap();
    let a = values(&t.apply(input.clone(), u64::MAX).unwrap());
    let b = values(&t.apply(input.clone(), u64::MAX - 1).unwrap());
    assert_ne!(a, b);
}

#[test]
fn to_float_scales_each_pixel_type() {
    let t = ToFloat::from_params(&params("{}")).unwrap();
    let out = t
        .apply(Image::from_u8(2, 1, 1, vec![0, 255]).unwrap(), 0)
        .unwrap();
    assert_eq!(values(&out), vec![0.0, 1.0]);
    let out = t
        .apply(Image::from_u16(3, 1, 1, vec![0, 65535, 32768]).unwrap(), 0)
        .unwrap();
    assert_close(&values(&out), &[0.0, 1.0, 32768.0 / 65535.0], 1e-7);
    let out = t
        .apply(Image::from_u8(1, 1, 3, vec![51, 102, 204]).unwrap(), 0)
        .unwrap();
    assert_close(&values(&out), &[0.2, 0.4, 0.8], 1e-7);
    let f = Image::from_f32(2, 1, 1, vec![0.25, 0.5]).unwrap();
    assert_eq!(t.apply(f.clone(), 9).unwrap(), f);
}

// ---------- bilinear resize / Resize / RandomResizedCrop ----------

#[test]
fn bilinear_upsample_2x2_to_4x4_matches_torch() {
    // torch: F.interpolate([[0,1],[2,3]]/3, size=(4,4), mode="bilinear", align_corners=False)
    let expected = [
        0.0000000, 0.0833333, 0.2500000, 0.3333333, 0.1666667, 0.2500000, 0.4166667, 0.5000000,
        0.5000000, 0.5833334, 0.7500000, 0.8333333, 0.6666667, 0.7500000, 0.9166667, 1.0000000,
    ];
    let input = Image::from_f32(2, 2, 1, vec![0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0]).unwrap();
    let t = Resize::from_params(&params(r#"{"size": [4, 4]}"#)).unwrap();
    let out = t.apply(input, 0).unwrap();
    assert_eq!(shape(&out), (4, 4, 1));
    assert_close(&values(&out), &expected, 1e-6);
}

#[test]
fn bilinear_3x5_to_2x4_two_channels_matches_torch() {
    // torch: HWC arange(30).reshape(3,5,2)/29, interpolated to (2,4), bilinear,
    // align_corners=False, back to HWC.
    let expected = [
        0.0948276, 0.1293103, 0.1810345, 0.2155172, 0.2672414, 0.3017241, 0.3534483, 0.3879310,
        0.6120690, 0.6465517, 0.6982759, 0.7327586, 0.7844828, 0.8189655, 0.8706896, 0.9051724,
    ];
    let data = (0..30).map(|i| i as f32 / 29.0).collect();
    let input = Image::from_f32(5, 3, 2, data).unwrap();
    let t = Resize::from_params(&params(r#"{"size": [2, 4]}"#)).unwrap();
    let out = t.apply(input, 0).unwrap();
    assert_eq!(shape(&out), (2, 4, 2));
    assert_close(&values(&out), &expected, 1e-6);
}

#[test]
fn resize_shorter_side_matches_torchvision() {
    // torchvision: TF.resize(arange(24).reshape(1,4,6)/23, 3, antialias=False) -> [1, 3, 4]
    let expected = [
        0.0543478, 0.1195652, 0.1847826, 0.2500000, 0.4021739, 0.4673913, 0.5326087, 0.5978261,
        0.7500001, 0.8152174, 0.8804348, 0.9456522,
    ];
    let data = (0..24).map(|i| i as f32 / 23.0).collect();
    let input = Image::from_f32(6, 4, 1, data).unwrap();
    let t = Resize::from_params(&params(r#"{"size": 3}"#)).unwrap();
    let out = t.apply(input, 0).unwrap();
    assert_eq!(shape(&out), (3, 4, 1));
    assert_close(&values(&out), &expected, 1e-6);
}

#[test]
fn resize_sizes_follow_torchvision_int_rule() {
    let t = Resize::from_params(&params(r#"{"size": 5}"#)).unwrap();
    // (h, w) -> (h', w'): long side = int(5 * long / short).
    for ((h, w), want) in [
        ((10, 7), (7, 5)),
        ((7, 10), (5, 7)),
        ((5, 5), (5, 5)),
        ((3, 9), (5, 15)),
        ((100, 33), (15, 5)),
        ((1, 1), (5, 5)),
    ] {
        let out = t.apply(image_u8(w, h, 3, 0), 0).unwrap();
        assert_eq!(shape(&out), (want.0, want.1, 3), "input {h}×{w}");
    }
    // Same size is a no-op (just converted).
    let input = image_f32(7, 5, 3, 4);
    assert_eq!(t.apply(input.clone(), 0).unwrap(), input);
}

#[test]
fn full_random_resized_crop_equals_plain_resize() {
    let rrc =
        RandomResizedCrop::from_params(&params(r#"{"size": 5, "scale": [1, 1], "ratio": [1, 1]}"#))
            .unwrap();
    let resize = Resize::from_params(&params(r#"{"size": 5}"#)).unwrap();
    let input = image_u8(9, 9, 3, 11);
    let expected = resize.apply(input.clone(), 0).unwrap();
    for seed in 0..10 {
        assert_eq!(rrc.apply(input.clone(), seed).unwrap(), expected);
    }
    // Also when upsampling.
    let rrc = RandomResizedCrop::from_params(&params(
        r#"{"size": 32, "scale": [1, 1], "ratio": [1, 1]}"#,
    ))
    .unwrap();
    let resize = Resize::from_params(&params(r#"{"size": 32}"#)).unwrap();
    let input = image_u8(7, 7, 1, 12);
    assert_eq!(
        rrc.apply(input.clone(), 3).unwrap(),
        resize.apply(input, 0).unwrap()
    );
}

#[test]
fn random_resized_crop_boxes_respect_scale_and_ratio() {
    let t = RandomResizedCrop::from_params(&params(
        r#"{"size": [16, 8], "scale": [0.2, 0.5], "ratio": [0.5, 2.0]}"#,
    ))
    .unwrap();
    let (h, w) = (60usize, 80usize);
    let mut tops = std::collections::HashSet::new();
    for seed in 0..500 {
        let b = t.crop_box(&mut Rng::new(seed), h, w);
        assert!(b.top + b.height <= h && b.left + b.width <= w, "{b:?}");
        assert!(b.height > 0 && b.width > 0);
        let frac = (b.height * b.width) as f64 / (h * w) as f64;
        assert!(
            (0.17..=0.53).contains(&frac),
            "area fraction {frac} ({b:?})"
        );
        let r = b.width as f64 / b.height as f64;
        assert!((0.45..=2.2).contains(&r), "ratio {r} ({b:?})");
        tops.insert(b.top);
    }
    assert!(tops.len() > 10, "top-left corners hardly vary");
    let out = t.apply(image_u8(80, 60, 3, 1), 0).unwrap();
    assert_eq!(shape(&out), (16, 8, 3));
}

#[test]
fn random_resized_crop_falls_back_to_a_central_crop() {
    // No square crop of >= 90% of a 4×100 image fits: torchvision's fallback clamps the
    // ratio to 1 -> a central 4×4 crop.
    let t = RandomResizedCrop::from_params(&params(
        r#"{"size": 4, "scale": [0.9, 1], "ratio": [1, 1]}"#,
    ))
    .unwrap();
    for seed in 0..5 {
        let b = t.crop_box(&mut Rng::new(seed), 4, 100);
        assert_eq!((b.top, b.left, b.height, b.width), (0, 48, 4, 4));
    }
    // The output is then that crop, unscaled.
    let data: Vec<f32> = (0..400).map(|i| i as f32 / 400.0).collect();
    let out = t
        .apply(Image::from_f32(100, 4, 1, data.clone()).unwrap(), 0)
        .unwrap();
    let expected: Vec<f32> = (0..4)
        .flat_map(|y| data[y * 100 + 48..y * 100 + 52].to_vec())
        .collect();
    assert_eq!(values(&out), expected);
    // Tall image with a wide ratio range: whole height, width round(h * ...)... clamps.
    let t = RandomResizedCrop::from_params(&params(
        r#"{"size": 4, "scale": [0.99, 1], "ratio": [2, 3]}"#,
    ))
    .unwrap();
    let b = t.crop_box(&mut Rng::new(0), 50, 10);
    // in_ratio 0.2 < 2: w = 10, h = round(10 / 2) = 5, centred.
    assert_eq!((b.top, b.left, b.height, b.width), (22, 0, 5, 10));
}

// ---------- CenterCrop ----------

#[test]
fn center_crop_matches_torchvision_including_padding() {
    let data: Vec<f32> = (1..=20).map(|i| i as f32 / 20.0).collect();
    let input = Image::from_f32(4, 5, 1, data).unwrap();
    // torchvision: TF.center_crop((arange(1,21)/20).reshape(1,5,4), [2,3]); top =
    // round(1.5) = 2 (Python rounds half to even), left = round(0.5) = 0.
    let t = CenterCrop::from_params(&params(r#"{"size": [2, 3]}"#)).unwrap();
    let out = t.apply(input.clone(), 0).unwrap();
    assert_eq!(shape(&out), (2, 3, 1));
    assert_close(&values(&out), &[0.45, 0.5, 0.55, 0.65, 0.7, 0.75], 1e-7);
    // torchvision: [7, 6] pads 1 row/col on each side.
    let t = CenterCrop::from_params(&params(r#"{"size": [7, 6]}"#)).unwrap();
    let out = t.apply(input.clone(), 0).unwrap();
    assert_eq!(shape(&out), (7, 6, 1));
    #[rustfmt::skip]
    let expected = [
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        0.0, 0.05, 0.1, 0.15, 0.2, 0.0,
        0.0, 0.25, 0.3, 0.35, 0.4, 0.0,
        0.0, 0.45, 0.5, 0.55, 0.6, 0.0,
        0.0, 0.65, 0.7, 0.75, 0.8, 0.0,
        0.0, 0.85, 0.9, 0.95, 1.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
    ];
    assert_close(&values(&out), &expected, 1e-7);
    // torchvision: [3, 5] pads 0 left, 1 right; top = round(1.0) = 1.
    let t = CenterCrop::from_params(&params(r#"{"size": [3, 5]}"#)).unwrap();
    let out = t.apply(input, 0).unwrap();
    #[rustfmt::skip]
    let expected = [
        0.25, 0.3, 0.35, 0.4, 0.0,
        0.45, 0.5, 0.55, 0.6, 0.0,
        0.65, 0.7, 0.75, 0.8, 0.0,
    ];
    assert_close(&values(&out), &expected, 1e-7);
}

#[test]
fn center_crop_sizes_on_non_square_inputs() {
    let t = CenterCrop::from_params(&params(r#"{"size": 224}"#)).unwrap();
    for (w, h) in [(256, 341), (341, 256), (224, 224), (100, 300)] {
        let out = t.apply(image_u8(w, h, 3, 0), 0).unwrap();
        assert_eq!(shape(&out), (224, 224, 3));
    }
    // Resize(256) then CenterCrop(224) of a 300×400 (w×h) image: the CXR preprocessing.
    let r = Resize::from_params(&params(r#"{"size": 256}"#)).unwrap();
    let resized = r.apply(image_u8(300, 400, 1, 0), 0).unwrap();
    assert_eq!(shape(&resized), (341, 256, 1));
    assert_eq!(shape(&t.apply(resized, 0).unwrap()), (224, 224, 1));
    // A central crop of an RGB image picks the right pixels in every channel.
    let data: Vec<f32> = (0..4 * 4 * 3).map(|i| i as f32 / 48.0).collect();
    let out = CenterCrop::new(2, 2)
        .apply(Image::from_f32(4, 4, 3, data.clone()).unwrap(), 0)
        .unwrap();
    let px = |y: usize, x: usize| data[(y * 4 + x) * 3..(y * 4 + x) * 3 + 3].to_vec();
    let expected: Vec<f32> = [px(1, 1), px(1, 2), px(2, 1), px(2, 2)].concat();
    assert_eq!(values(&out), expected);
}

// ---------- flip ----------

#[test]
fn flip_mirrors_and_twice_is_identity() {
    let always = RandomHorizontalFlip::from_params(&params(r#"{"p": 1.0}"#)).unwrap();
    let never = RandomHorizontalFlip::from_params(&params(r#"{"p": 0}"#)).unwrap();
    let input = image_f32(5, 3, 3, 9);
    let once = always.apply(input.clone(), 1).unwrap();
    assert_ne!(once, input);
    let v = values(&input);
    let o = values(&once);
    for y in 0..3 {
        for x in 0..5 {
            for k in 0..3 {
                assert_eq!(o[(y * 5 + x) * 3 + k], v[(y * 5 + 4 - x) * 3 + k]);
            }
        }
    }
    assert_eq!(always.apply(once, 2).unwrap(), input);
    assert_eq!(never.apply(input.clone(), 1).unwrap(), input);
    // Random p = 0.5, same seed twice: flipped twice or not at all.
    let half = RandomHorizontalFlip::from_params(&params("{}")).unwrap();
    for seed in 0..20 {
        let twice = half
            .apply(half.apply(input.clone(), seed).unwrap(), seed)
            .unwrap();
        assert_eq!(twice, input);
    }
}

// ---------- grayscale ----------

#[test]
fn grayscale_uses_luma_weights_in_all_channels() {
    let t = RandomGrayscale::from_params(&params(r#"{"p": 1}"#)).unwrap();
    let input = Image::from_f32(2, 1, 3, vec![1.0, 0.0, 0.0, 0.2, 0.4, 0.8]).unwrap();
    let out = values(&t.apply(input, 0).unwrap());
    let g2 = 0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.8;
    assert_close(&out, &[0.299, 0.299, 0.299, g2, g2, g2], 1e-6);
    let input = image_u8(6, 4, 3, 5);
    let out = values(&t.apply(input.clone(), 3).unwrap());
    let v = values(&ToFloat.apply(input.clone(), 0).unwrap());
    for (px, src) in out.chunks_exact(3).zip(v.chunks_exact(3)) {
        assert!(px[0] == px[1] && px[1] == px[2]);
        let g = 0.299 * src[0] + 0.587 * src[1] + 0.114 * src[2];
        assert!((px[0] - g).abs() < 1e-6);
    }
    let never = RandomGrayscale::from_params(&params(r#"{"p": 0}"#)).unwrap();
    assert_eq!(
        never.apply(input.clone(), 3).unwrap(),
        ToFloat.apply(input, 0).unwrap()
    );
    // One channel passes; four channels are refused.
    let grey = image_f32(3, 3, 1, 1);
    assert_eq!(t.apply(grey.clone(), 0).unwrap(), grey);
    let e = t.apply(image_u8(2, 2, 4, 0), 0).unwrap_err();
    assert!(e.message().contains("4 channels"), "{e}");
}

// ---------- colour jitter ----------

/// torchvision reference input: `torch.rand(3, 2, 3, generator=manual_seed(0))`, as HWC.
const RGB: [f32; 18] = [
    0.4962566, 0.4900934, 0.0223258, 0.7682218, 0.8964447, 0.1688589, 0.0884774, 0.4556280,
    0.2938884, 0.1320305, 0.6323063, 0.5185218, 0.3074228, 0.3488935, 0.6976676, 0.6340787,
    0.4017173, 0.8000114,
];

fn jitter(json: &str, input: &[f32], seed: u64) -> Vec<f32> {
    let t = ColorJitter::from_params(&params(json)).unwrap();
    let img = Image::from_f32(3, 2, 3, input.to_vec()).unwrap();
    values(&t.apply(img, seed).unwrap())
}

#[test]
fn jitter_with_zero_strengths_is_identity() {
    for json in [
        "{}",
        r#"{"brightness": 0, "contrast": 0, "saturation": 0, "hue": 0}"#,
        r#"{"brightness": [1, 1], "contrast": 0, "saturation": [1, 1], "hue": [0, 0], "p": 1}"#,
    ] {
        for seed in 0..10 {
            assert_eq!(jitter(json, &RGB, seed), RGB.to_vec(), "{json}");
        }
    }
}

#[test]
fn each_jitter_op_matches_torchvision() {
    // torchvision F.adjust_* on the tensor RGB (CHW), transposed to HWC. Contrast and
    // saturation use grey = 0.299 R + 0.587 G + 0.114 B (PIL's weights) where torchvision
    // tensors use 0.2989 R: hence the 1e-3 tolerance for those two.
    let brightness_1_3 = [
        0.6451336, 0.6371214, 0.0290235, 0.9986883, 1.0000000, 0.2195166, 0.1150207, 0.5923163,
        0.3820550, 0.1716396, 0.8219981, 0.6740783, 0.3996496, 0.4535615, 0.9069678, 0.8243023,
        0.5222325, 1.0000000,
    ];
    let contrast_0_6 = [
        0.4913237, 0.4876258, 0.2069652, 0.6545029, 0.7314367, 0.2948851, 0.2466562, 0.4669465,
        0.3699028, 0.2727880, 0.5729535, 0.5046828, 0.3780234, 0.4029059, 0.6121703, 0.5740170,
        0.4346002, 0.6735766,
    ];
    let saturation_0_4 = [
        0.4616393, 0.4591740, 0.2720670, 0.7723395, 0.8236287, 0.5325943, 0.2318327, 0.3786929,
        0.3139971, 0.3346557, 0.5347660, 0.4892522, 0.3487031, 0.3652914, 0.5048010, 0.5635527,
        0.4706082, 0.6299258,
    ];
    let hue_0_2 = [
        0.0223258, 0.4962566, 0.1109487, 0.1688590, 0.8964447, 0.4425991, 0.0884774, 0.1767869,
        0.4556280, 0.1320305, 0.1457598, 0.6323063, 0.6976676, 0.3074228, 0.6610892, 0.8000114,
        0.4017173, 0.4879912,
    ];
    assert_close(
        &jitter(r#"{"brightness": [1.3, 1.3]}"#, &RGB, 0),
        &brightness_1_3,
        1e-6,
    );
    assert_close(
        &jitter(r#"{"contrast": [0.6, 0.6]}"#, &RGB, 0),
        &contrast_0_6,
        1e-3,
    );
    assert_close(
        &jitter(r#"{"saturation": [0.4, 0.4]}"#, &RGB, 0),
        &saturation_0_4,
        1e-3,
    );
    assert_close(&jitter(r#"{"hue": [0.2, 0.2]}"#, &RGB, 0), &hue_0_2, 2e-6);
}

#[test]
fn hue_half_turn_twice_is_identity() {
    let json = r#"{"hue": [0.5, 0.5]}"#;
    let once = jitter(json, &RGB, 0);
    assert!(
        once.iter().zip(&RGB).any(|(a, b)| (a - b).abs() > 0.05),
        "a half turn changed nothing"
    );
    let twice = jitter(json, &once, 1);
    assert_close(&twice, &RGB, 1e-5);
    // Also on a bigger random image, including greys and saturated colours.
    let mut data = values(&ToFloat.apply(image_u8(3, 2, 3, 4), 0).unwrap());
    data[0..3].copy_from_slice(&[0.5, 0.5, 0.5]);
    data[3..6].copy_from_slice(&[1.0, 0.0, 0.0]);
    let twice = jitter(json, &jitter(json, &data, 0), 0);
    assert_close(&twice, &data, 1e-5);
}

#[test]
fn jitter_factors_stay_in_their_ranges() {
    // Brightness only, factor in [0.5, 1.5]: each output/input ratio (unclamped) is one
    // factor per image, inside the range.
    let input: Vec<f32> = RGB.iter().map(|v| v * 0.6).collect();
    let mut factors = Vec::new();
    for seed in 0..200 {
        let out = jitter(r#"{"brightness": 0.5}"#, &input, seed);
        let f = out[0] / input[0];
        for (o, i) in out.iter().zip(&input) {
            assert!((o - (i * f).min(1.0)).abs() < 1e-5);
        }
        assert!((0.5..=1.5).contains(&f), "{f}");
        factors.push(f);
    }
    let lo = factors.iter().cloned().fold(f32::MAX, f32::min);
    let hi = factors.iter().cloned().fold(f32::MIN, f32::max);
    assert!(lo < 0.6 && hi > 1.4, "factors span only [{lo}, {hi}]");
}

#[test]
fn jitter_on_one_channel_uses_brightness_and_contrast_only() {
    let t = ColorJitter::from_params(&params(r#"{"saturation": 0.9, "hue": 0.5}"#)).unwrap();
    let grey = image_f32(4, 4, 1, 2);
    assert_eq!(t.apply(grey.clone(), 0).unwrap(), grey);
    // Contrast 0 on one channel: every pixel becomes the mean.
    let t = ColorJitter::from_params(&params(r#"{"contrast": [0, 0]}"#)).unwrap();
    let img = Image::from_f32(2, 2, 1, vec![0.0, 0.2, 0.4, 1.0]).unwrap();
    assert_close(&values(&t.apply(img, 0).unwrap()), &[0.4; 4], 1e-6);
    let e = t.apply(image_u8(2, 2, 2, 0), 0).unwrap_err();
    assert!(e.message().contains("2 channels"), "{e}");
}

// ---------- blur ----------

#[test]
fn blur_of_constant_is_constant_and_p0_is_identity() {
    let t = GaussianBlur::from_params(&params(r#"{"p": 1, "kernel_size": 5}"#)).unwrap();
    let constant = Image::from_f32(7, 5, 3, vec![0.37; 105]).unwrap();
    for seed in 0..5 {
        let out = values(&t.apply(constant.clone(), seed).unwrap());
        assert_close(&out, &[0.37; 105], 1e-6);
    }
    let never = GaussianBlur::from_params(&params(r#"{"p": 0}"#)).unwrap();
    let input = image_f32(6, 4, 3, 8);
    for seed in 0..5 {
        assert_eq!(never.apply(input.clone(), seed).unwrap(), input);
    }
    // p = 1 really blurs: a single bright pixel away from the borders spreads, keeping its
    // mass, over exactly the 5×5 kernel footprint.
    let mut data = vec![0.0; 81];
    data[40] = 1.0;
    let out = values(&t.apply(Image::from_f32(9, 9, 1, data).unwrap(), 0).unwrap());
    assert!(out[40] < 1.0 && out[39] > 0.0 && out[31] > 0.0 && out[20] > 0.0);
    assert_eq!(out[19], 0.0, "outside the 5×5 footprint");
    assert!((out.iter().sum::<f32>() - 1.0).abs() < 1e-5, "mass is kept");
}

#[test]
fn blur_matches_reflect101_reference() {
    let input: Vec<f32> = vec![
        0.0000000, 0.0120745, 0.0341519, 0.0627410, 0.0965961, 0.1349972, 0.1774584, 0.2236231,
        0.2732150, 0.3260118, 0.3818296, 0.4405129, 0.5019281, 0.5659586, 0.6325016, 0.7014658,
        0.7727688, 0.8463363, 0.9221007, 1.0000000,
    ];
    // numpy: separable exp(-x²/2σ²) kernel, np.pad(mode="reflect") on a 4×5 image.
    let k3_s08 = [
        0.0772411, 0.0927971, 0.1259209, 0.1643683, 0.1857442, 0.1804030, 0.2019905, 0.2458027,
        0.2937211, 0.3197893, 0.4268677, 0.4577333, 0.5183739, 0.5817289, 0.6155485, 0.5798821,
        0.6145489, 0.6822860, 0.7524222, 0.7896996,
    ];
    let k5_s15 = [
        0.1916561, 0.2043421, 0.2381529, 0.2721222, 0.2855437, 0.2707201, 0.2847410, 0.3219620,
        0.3593295, 0.3740240, 0.4034329, 0.4199444, 0.4635210, 0.5072208, 0.5242836, 0.4720275,
        0.4900909, 0.5376089, 0.5852326, 0.6037497,
    ];
    let img = Image::from_f32(5, 4, 1, input).unwrap();
    let t = GaussianBlur::from_params(&params(r#"{"p": 1, "sigma": 0.8}"#)).unwrap();
    assert_close(&values(&t.apply(img.clone(), 3).unwrap()), &k3_s08, 1e-6);
    let t = GaussianBlur::from_params(&params(
        r#"{"p": 1, "sigma": [1.5, 1.5], "kernel_size": 5}"#,
    ))
    .unwrap();
    assert_close(&values(&t.apply(img, 3).unwrap()), &k5_s15, 1e-6);
}

#[test]
fn blur_handles_images_smaller_than_the_kernel() {
    let t = GaussianBlur::from_params(&params(r#"{"p": 1, "kernel_size": 9}"#)).unwrap();
    for (w, h) in [(1, 1), (1, 5), (2, 3), (3, 2)] {
        let out = t.apply(image_u8(w, h, 3, 1), 0).unwrap();
        assert_eq!(shape(&out), (h, w, 3));
        assert!(values(&out).iter().all(|v| (0.0..=1.0).contains(v)));
    }
}

// ---------- probabilities ----------

fn count_changed(t: &dyn Transform, input: &Image) -> usize {
    let base = ToFloat.apply(input.clone(), 0).unwrap();
    (0..1000u64)
        .filter(|&seed| t.apply(input.clone(), seed).unwrap() != base)
        .count()
}

#[test]
fn probabilities_are_roughly_honoured_over_1000_seeds() {
    let input = image_u8(8, 6, 3, 21);
    let flip = RandomHorizontalFlip::from_params(&params("{}")).unwrap();
    let n = count_changed(&flip, &input);
    assert!((400..=600).contains(&n), "flip p=0.5: {n}/1000");
    let flip = RandomHorizontalFlip::from_params(&params(r#"{"p": 0.1}"#)).unwrap();
    let n = count_changed(&flip, &input);
    assert!((60..=140).contains(&n), "flip p=0.1: {n}/1000");
    let grey = RandomGrayscale::from_params(&params(r#"{"p": 0.2}"#)).unwrap();
    let n = count_changed(&grey, &input);
    assert!((150..=250).contains(&n), "grayscale p=0.2: {n}/1000");
    let grey = RandomGrayscale::from_params(&params("{}")).unwrap();
    let n = count_changed(&grey, &input);
    assert!((60..=140).contains(&n), "grayscale default p=0.1: {n}/1000");
    let blur = GaussianBlur::from_params(&params("{}")).unwrap();
    let n = count_changed(&blur, &input);
    assert!((400..=600).contains(&n), "blur p=0.5: {n}/1000");
    let jitter = ColorJitter::from_params(&params(
        r#"{"brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.2, "p": 0.8}"#,
    ))
    .unwrap();
    let n = count_changed(&jitter, &input);
    assert!((750..=850).contains(&n), "jitter p=0.8: {n}/1000");
}

#[test]
fn jitter_order_is_random() {
    // Brightness 2 then contrast 0 gives the mean of the brightened (clamped) image;
    // contrast 0 then brightness 2 gives twice the mean. Both orders must occur.
    let t =
        ColorJitter::from_params(&params(r#"{"brightness": [2, 2], "contrast": [0, 0]}"#)).unwrap();
    let img = Image::from_f32(2, 1, 1, vec![0.1, 0.8]).unwrap();
    let mut seen = std::collections::HashSet::new();
    for seed in 0..50 {
        let v = values(&t.apply(img.clone(), seed).unwrap());
        seen.insert((v[0] * 1000.0).round() as i32);
    }
    // brightness first: mean(0.2, 1.0) = 0.6; contrast first: 2 * 0.45 = 0.9.
    assert_eq!(
        seen,
        [600, 900].into_iter().collect(),
        "orders seen: {seen:?}"
    );
}

// ---------- parameters ----------

#[test]
fn bad_parameters_are_rejected_with_clear_errors() {
    fn err<T, F: Fn(&Params) -> ssl_plugin_api::Result<T>>(make: F, json: &str) -> String {
        match make(&params(json)) {
            Ok(_) => panic!("{json} was accepted"),
            Err(e) => e.message().to_string(),
        }
    }
    let e = err(
        RandomResizedCrop::from_params,
        r#"{"size": 8, "sclae": [0.1, 1], "x": 1}"#,
    );
    assert!(
        e.contains("`sclae`") && e.contains("`x`") && e.contains("`scale`"),
        "{e}"
    );
    let e = err(RandomResizedCrop::from_params, "{}");
    assert!(e.contains("missing parameter `size`"), "{e}");
    let e = err(RandomResizedCrop::from_params, r#"{"size": 0}"#);
    assert!(e.contains("`size`"), "{e}");
    let e = err(
        RandomResizedCrop::from_params,
        r#"{"size": 8, "scale": [1, 0.5]}"#,
    );
    assert!(e.contains("`scale`") && e.contains("greater"), "{e}");
    let e = err(
        RandomResizedCrop::from_params,
        r#"{"size": 8, "ratio": [0, 1]}"#,
    );
    assert!(e.contains("`ratio`"), "{e}");
    let e = err(RandomHorizontalFlip::from_params, r#"{"p": 1.5}"#);
    assert!(e.contains("`p`") && e.contains("[0, 1]"), "{e}");
    let e = err(RandomHorizontalFlip::from_params, r#"{"prob": 0.5}"#);
    assert!(e.contains("`prob`"), "{e}");
    let e = err(GaussianBlur::from_params, r#"{"kernel_size": 4}"#);
    assert!(e.contains("`kernel_size`") && e.contains("odd"), "{e}");
    let e = err(GaussianBlur::from_params, r#"{"sigma": [0, 1]}"#);
    assert!(e.contains("`sigma`"), "{e}");
    let e = err(ColorJitter::from_params, r#"{"hue": 0.7}"#);
    assert!(e.contains("`hue`"), "{e}");
    let e = err(ColorJitter::from_params, r#"{"brightness": -0.1}"#);
    assert!(e.contains("`brightness`"), "{e}");
    let e = err(ColorJitter::from_params, r#"{"contrast": "lots"}"#);
    assert!(e.contains("`contrast`"), "{e}");
    let e = err(ColorJitter::from_params, r#"{"saturation": [0.5]}"#);
    assert!(e.contains("`saturation`"), "{e}");
    let e = err(Resize::from_params, r#"{"size": 2.5}"#);
    assert!(e.contains("`size`"), "{e}");
    let e = err(CenterCrop::from_params, r#"{"size": [1, 2, 3]}"#);
    assert!(e.contains("`size`"), "{e}");
    let e = err(ToFloat::from_params, r#"{"scale": 1}"#);
    assert!(e.contains("`scale`") && e.contains("no parameters"), "{e}");
}
