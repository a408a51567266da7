//! Each batch transform against its per-image twin of `builtin-transforms`, on the same images
//! with the same per-sample seeds. Settings without per-pixel randomness must give the same
//! outputs (tolerance stated per transform: 0 where the arithmetic is identical, 1e-5 where
//! float rounding may differ).

mod common;

use common::*;
use ssl_builtin_batch_transforms as batch_t;
use ssl_builtin_transforms as image_t;
use ssl_plugin_api::tch::Tensor;
use ssl_plugin_api::{BatchTransform, Transform};

/// Runs both forms on a batch and returns the largest difference.
fn compare(b: &dyn BatchTransform, t: &dyn Transform, input: &Tensor, salt: u64) -> f64 {
    let s = seeds(input.size()[0] as usize, salt);
    let got = b.apply(input, &s).expect("batch apply");
    let want = per_image(t, input, &s);
    max_diff(&got, &want)
}

macro_rules! check {
    ($name:ident, $json:expr, $input:expr, $tol:expr) => {{
        let p = params($json);
        let b = batch_t::$name::from_params(&p).expect("batch transform");
        let t = image_t::$name::from_params(&p).expect("per-image transform");
        for salt in [1u64, 2, 3] {
            let d = compare(&b, &t, &$input, salt);
            eprintln!("{} {}: max diff {d:.2e}", stringify!($name), $json);
            assert!(
                d <= $tol,
                "{} {}: max diff {d} > {}",
                stringify!($name),
                $json,
                $tol
            );
        }
    }};
}

fn rgb() -> Tensor {
    batch(10, 6, 3, 40, 48, true)
}

fn grey() -> Tensor {
    batch(20, 5, 1, 37, 30, true)
}

#[test]
fn random_resized_crop_matches() {
    check!(RandomResizedCrop, r#"{"size": [20, 24]}"#, rgb(), 1e-5);
    // Upsampling small crops (the CIFAR case): the clamped taps at the crop's edges.
    check!(
        RandomResizedCrop,
        r#"{"size": 64, "scale": [0.05, 0.2]}"#,
        rgb(),
        1e-5
    );
    check!(
        RandomResizedCrop,
        r#"{"size": 16, "scale": [0.4, 1.0]}"#,
        grey(),
        1e-5
    );
}

#[test]
fn flip_grayscale_erasing_crop_expand_and_to_float_are_exact() {
    check!(RandomHorizontalFlip, r#"{"p": 0.5}"#, rgb(), 0.0);
    check!(RandomGrayscale, r#"{"p": 0.5}"#, rgb(), 0.0);
    check!(RandomGrayscale, r#"{"p": 0.5}"#, grey(), 0.0);
    check!(
        RandomErasing,
        r#"{"p": 0.8, "scale": [0.15, 0.4], "ratio": [0.33, 3.0], "value": 0.25}"#,
        rgb(),
        0.0
    );
    check!(CenterCrop, r#"{"size": [24, 31]}"#, rgb(), 0.0);
    check!(CenterCrop, r#"{"size": [45, 60]}"#, grey(), 0.0);
    check!(ExpandChannels, "{}", grey(), 0.0);
    check!(ExpandChannels, "{}", rgb(), 0.0);
    check!(ToFloat, "{}", rgb(), 0.0);
}

#[test]
fn resize_matches() {
    check!(Resize, r#"{"size": 20}"#, rgb(), 1e-5);
    check!(Resize, r#"{"size": [50, 33]}"#, grey(), 1e-5);
}

#[test]
fn random_affine_is_the_same_nearest_sampling() {
    check!(
        RandomAffine,
        r#"{"degrees": 180, "shear": 40, "translate": [0.1, 0.2]}"#,
        rgb(),
        0.0
    );
    check!(
        RandomAffine,
        r#"{"degrees": [-30, 10], "shear": [-15, 15], "fill": 0.5}"#,
        grey(),
        0.0
    );
}

#[test]
fn colour_jitter_matches_with_all_four_adjustments() {
    check!(
        ColorJitter,
        r#"{"brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.2, "p": 0.8}"#,
        batch(30, 12, 3, 24, 20, true),
        1e-5
    );
    check!(
        ColorJitter,
        r#"{"brightness": 0.2, "contrast": 0.2}"#,
        grey(),
        1e-5
    );
}

#[test]
fn gamma_and_blur_match() {
    check!(RandomGamma, r#"{"scale": [0.5, 1.5]}"#, rgb(), 1e-5);
    check!(
        GaussianBlur,
        r#"{"kernel_size": 3, "sigma": [0.1, 2.0], "p": 0.5}"#,
        rgb(),
        1e-5
    );
    check!(
        GaussianBlur,
        r#"{"kernel_size": 9, "sigma": [1.0, 3.0], "p": 0.7}"#,
        grey(),
        1e-5
    );
}

#[test]
fn noise_and_elastic_off_are_the_identity() {
    check!(AddGaussianNoise, r#"{"p_apply": 0.0}"#, rgb(), 0.0);
    check!(ElasticTransform, r#"{"p_apply": 0.0}"#, rgb(), 0.0);
}

#[test]
fn elastic_smoothing_and_warp_match_scipy_forms_of_the_per_image_transform() {
    use image_t::elastic_transform::{gaussian_filter, warp};
    let p = params(r#"{"alpha": 34, "sigma": 4, "p_apply": 1.0}"#);
    let b = batch_t::ElasticTransform::from_params(&p).unwrap();
    let (h, w) = (37i64, 30i64);
    let input = grey();
    let s = seeds(5, 9);
    let fields = b.fields(&s, h, w, CPU);
    let warped = batch_t::elastic_transform::warp(&input, &fields);
    // The same fields through the per-image warp.
    for i in 0..5 {
        let f = fields.get(i).to_kind(ssl_plugin_api::tch::Kind::Double);
        let dx: Vec<f64> = Vec::try_from(f.get(0).flatten(0, -1)).unwrap();
        let dy: Vec<f64> = Vec::try_from(f.get(1).flatten(0, -1)).unwrap();
        let img = image_t::convert::FloatImage::from_image(to_image(&input.get(i)));
        let want = to_tensor(warp(&img, &dx, &dy).into_image().unwrap());
        let d = max_diff(&warped.get(i), &want);
        assert!(d <= 1e-5, "sample {i}: warp differs by {d}");
    }
    // The smoothing is scipy's gaussian_filter(mode="constant").
    let noise = ssl_builtin_batch_transforms::hash_noise::uniform(&[7, 8], h, w, CPU) * 2.0 - 1.0;
    let smoothed = batch_t::elastic_transform::smooth(&noise.view([1, 2, h, w]), 4.0);
    for k in 0..2 {
        let field: Vec<f64> = Vec::try_from(
            noise
                .get(k)
                .to_kind(ssl_plugin_api::tch::Kind::Double)
                .flatten(0, -1),
        )
        .unwrap();
        let want = gaussian_filter(&field, h as usize, w as usize, 4.0);
        let want = Tensor::from_slice(&want)
            .view([h, w])
            .to_kind(ssl_plugin_api::tch::Kind::Float);
        let d = max_diff(&smoothed.get(0).get(k), &want);
        assert!(d <= 1e-5, "field {k}: smoothing differs by {d}");
    }
}

#[test]
fn bad_parameters_and_batches_are_errors_naming_them() {
    let err = batch_t::RandomResizedCrop::from_params(&params(r#"{"size": 0}"#))
        .err()
        .expect("size 0");
    assert!(err.message().contains("`size`"), "{err}");
    let b = batch_t::RandomGamma::from_params(&params("{}")).unwrap();
    let err = b
        .apply(
            &Tensor::zeros([2, 1, 4, 4], (ssl_plugin_api::tch::Kind::Float, CPU)),
            &[1],
        )
        .expect_err("seed count");
    assert!(err.message().contains("1 seeds for a batch of 2"), "{err}");
    let err = b
        .apply(
            &Tensor::zeros([1, 4, 4], (ssl_plugin_api::tch::Kind::Float, CPU)),
            &[1],
        )
        .expect_err("3-D tensor");
    assert!(err.message().contains("[N, C, H, W]"), "{err}");
    let j = batch_t::ColorJitter::from_params(&params(r#"{"brightness": 0.5}"#)).unwrap();
    let err = j
        .apply(
            &Tensor::zeros([1, 2, 4, 4], (ssl_plugin_api::tch::Kind::Float, CPU)),
            &[1],
        )
        .expect_err("2 channels");
    assert!(err.message().contains("2 channels"), "{err}");
}
