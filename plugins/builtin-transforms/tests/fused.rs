//! The fused pipeline (the plugin's pipeline compiler) against the step-by-step reference:
//! which lists compile, identical random draws, equal outputs where nothing is random or the
//! composition is exact, statistical agreement where an affine step is composed, and timing.
//!
//! Tolerances: without `RandomAffine` (CIFAR lists, the chest X-ray evaluation list, every
//! setting below with the affine drawn as the identity) the fused output is bit-identical to
//! the steps; `RandomGamma` other than 0 or 1 adds at most 2e-6 (its fast `pow`); with an
//! affine step (nearest-then-bilinear in the steps, one bilinear sample fused) the mean
//! absolute difference on a smooth image is below 0.5/255 and at most 2% of pixels (borders)
//! differ by more than 4/255.

use ssl_builtin_transforms::fused::{compile, FusedPipeline, GeometryDraw};
use ssl_builtin_transforms::rng::Rng;
use ssl_builtin_transforms::{RandomAffine, RandomHorizontalFlip, RandomResizedCrop};
use ssl_plugin_api::{step_seed, Image, Params, Pixels, Transform, TransformStep};
use std::time::Instant;

fn steps(list: &[(&str, &str)]) -> Vec<TransformStep> {
    list.iter()
        .map(|(name, json)| TransformStep {
            name: name.to_string(),
            params: Params::from_json(json).unwrap(),
        })
        .collect()
}

fn cxr_ssl() -> Vec<TransformStep> {
    steps(&[
        ("ExpandChannels", "{}"),
        (
            "RandomAffine",
            r#"{"degrees": 180.0, "translate": [0.0, 0.0], "shear": 40.0}"#,
        ),
        ("RandomResizedCrop", r#"{"size": 256, "scale": [0.4, 1.0]}"#),
        ("RandomHorizontalFlip", r#"{"p": 0.5}"#),
        ("RandomGamma", r#"{"scale": [0.5, 1.5]}"#),
        (
            "ColorJitter",
            r#"{"brightness": 0.2, "contrast": 0.2, "saturation": 0.0}"#,
        ),
        (
            "ElasticTransform",
            r#"{"alpha": 34.0, "sigma": 4.0, "p_apply": 0.4}"#,
        ),
        ("CenterCrop", r#"{"size": 224}"#),
        (
            "RandomErasing",
            r#"{"scale": [0.15, 0.4], "ratio": [0.33, 3.0]}"#,
        ),
        ("AddGaussianNoise", r#"{"p_apply": 0.5, "std": 0.05}"#),
    ])
}

fn cxr_linear_head() -> Vec<TransformStep> {
    steps(&[
        ("ExpandChannels", "{}"),
        (
            "RandomAffine",
            r#"{"degrees": 30.0, "translate": [0.0, 0.0], "shear": 15.0}"#,
        ),
        ("RandomResizedCrop", r#"{"size": 256, "scale": [0.8, 1.0]}"#),
        ("RandomHorizontalFlip", r#"{"p": 0.5}"#),
        ("RandomGamma", r#"{"scale": [0.5, 1.5]}"#),
        (
            "ColorJitter",
            r#"{"brightness": 0.2, "contrast": 0.2, "saturation": 0.0}"#,
        ),
        ("CenterCrop", r#"{"size": 224}"#),
    ])
}

fn cxr_eval() -> Vec<TransformStep> {
    steps(&[
        ("ExpandChannels", "{}"),
        ("Resize", r#"{"size": 256}"#),
        ("CenterCrop", r#"{"size": 224}"#),
    ])
}

fn cifar_ssl() -> Vec<TransformStep> {
    steps(&[
        ("RandomResizedCrop", r#"{"size": 32, "scale": [0.08, 1.0]}"#),
        ("RandomHorizontalFlip", r#"{"p": 0.5}"#),
        (
            "ColorJitter",
            r#"{"brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.2, "p": 0.8}"#,
        ),
        ("RandomGrayscale", r#"{"p": 0.2}"#),
        (
            "GaussianBlur",
            r#"{"kernel_size": 3, "sigma": [0.1, 2.0], "p": 0.5}"#,
        ),
    ])
}

fn cifar_linear_head() -> Vec<TransformStep> {
    steps(&[
        ("RandomResizedCrop", r#"{"size": 32, "scale": [0.08, 1.0]}"#),
        ("RandomHorizontalFlip", r#"{"p": 0.5}"#),
    ])
}

fn fused(list: &[TransformStep]) -> FusedPipeline {
    compile(list).unwrap().expect("the list compiles")
}

/// A smooth, asymmetric grey or RGB image (so a wrong flip, crop or rotation shows).
fn smooth_image(size: usize, channels: usize) -> Image {
    let s = size as f64;
    let mut data = Vec::with_capacity(size * size * channels);
    for y in 0..size {
        for x in 0..size {
            let (u, v) = (x as f64 / s, y as f64 / s);
            for c in 0..channels {
                let val = 0.45
                    + 0.2 * (7.0 * u + 2.0 * c as f64).sin()
                    + 0.15 * (5.0 * v + 3.0 * u * u).cos()
                    + 0.15 * (u - 0.3 * v);
                data.push((val.clamp(0.0, 1.0) * 255.0).round() as u8);
            }
        }
    }
    Image::from_u8(size as u32, size as u32, channels as u32, data).unwrap()
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

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn mean_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() as f64)
        .sum::<f64>()
        / a.len() as f64
}

#[test]
fn the_known_lists_compile_and_others_do_not() {
    for list in [
        cxr_ssl(),
        cxr_linear_head(),
        cxr_eval(),
        cifar_ssl(),
        cifar_linear_head(),
    ] {
        assert!(compile(&list).unwrap().is_some());
    }
    let unknown = steps(&[("RandomResizedCrop", r#"{"size": 32}"#), ("Solarize", "{}")]);
    assert!(compile(&unknown).unwrap().is_none());
    let bad = steps(&[("RandomResizedCrop", r#"{"size": 32, "colour": 1}"#)]);
    assert!(compile(&bad).unwrap().is_none());
    let affine_after_crop = steps(&[
        ("RandomResizedCrop", r#"{"size": 32}"#),
        ("RandomAffine", r#"{"degrees": 10.0}"#),
    ]);
    assert!(compile(&affine_after_crop).unwrap().is_none());
    assert!(compile(&[]).unwrap().is_none());
}

#[test]
fn the_plugin_offers_the_compiler() {
    ssl_builtin_transforms::link();
    let plugins = ssl_plugin_api::host::builtin_plugins().unwrap();
    let plugin = plugins
        .iter()
        .find(|p| p.name == "builtin-transforms")
        .unwrap();
    assert_eq!(plugin.pipeline_compilers.len(), 1);
    let compiler = &plugin.pipeline_compilers[0];
    assert!(compiler.compile(&cxr_ssl()).unwrap().is_some());
    assert!(compiler
        .compile(&steps(&[("Solarize", "{}")]))
        .unwrap()
        .is_none());
}

/// The steps' own draws for the CXR SSL list on a 1024 px image.
fn step_draws(
    seed: u64,
) -> (
    ssl_builtin_transforms::random_affine::AffineParams,
    ssl_builtin_transforms::random_resized_crop::CropBox,
    bool,
) {
    let p = |json: &str| Params::from_json(json).unwrap();
    let affine = RandomAffine::from_params(&p(
        r#"{"degrees": 180.0, "translate": [0.0, 0.0], "shear": 40.0}"#,
    ))
    .unwrap();
    let crop = RandomResizedCrop::from_params(&p(r#"{"size": 256, "scale": [0.4, 1.0]}"#)).unwrap();
    let flip = RandomHorizontalFlip::from_params(&p(r#"{"p": 0.5}"#)).unwrap();
    (
        affine.draw(&mut Rng::new(step_seed(seed, 1)), 1024, 1024),
        crop.crop_box(&mut Rng::new(step_seed(seed, 2)), 1024, 1024),
        flip.draw(&mut Rng::new(step_seed(seed, 3))),
    )
}

/// `P(|k − n p| > 6 σ)` is negligible, so each bin of a histogram must hold about `n p`.
fn assert_histogram(values: &[f64], lo: f64, hi: f64, bins: usize, what: &str) {
    let mut counts = vec![0usize; bins];
    for &v in values {
        assert!((lo..=hi).contains(&v), "{what}: {v} outside [{lo}, {hi}]");
        let b = (((v - lo) / (hi - lo)) * bins as f64) as usize;
        counts[b.min(bins - 1)] += 1;
    }
    let n = values.len() as f64;
    let p = 1.0 / bins as f64;
    let sigma = (n * p * (1.0 - p)).sqrt();
    for (b, &k) in counts.iter().enumerate() {
        assert!(
            (k as f64 - n * p).abs() < 6.0 * sigma,
            "{what}: bin {b} holds {k}, expected {:.0} ± {:.0}",
            n * p,
            sigma
        );
    }
}

#[test]
fn the_fused_path_draws_what_the_steps_draw() {
    let pipeline = fused(&cxr_ssl());
    let n = 10_000;
    let (mut angles, mut shears, mut areas, mut log_ratios) = (vec![], vec![], vec![], vec![]);
    let mut flips = 0;
    for seed in 0..n {
        let draws = pipeline.geometry_draws(seed, (1024, 1024));
        let (affine, crop, flip) = step_draws(seed);
        assert_eq!(
            draws,
            vec![
                (1, GeometryDraw::Affine(affine)),
                (2, GeometryDraw::Crop(crop)),
                (3, GeometryDraw::Flip(flip)),
            ],
            "seed {seed}"
        );
        angles.push(affine.angle);
        shears.push(affine.shear_x);
        areas.push((crop.width * crop.height) as f64 / (1024.0 * 1024.0));
        log_ratios.push((crop.width as f64 / crop.height as f64).ln());
        flips += flip as usize;
    }
    // Against the theoretical distributions, so that a change to both paths still fails.
    assert_histogram(&angles, -180.0, 180.0, 12, "angle ~ U(-180, 180)");
    assert_histogram(&shears, -40.0, 40.0, 8, "shear ~ U(-40, 40)");
    let flip_rate = flips as f64 / n as f64;
    assert!((flip_rate - 0.5).abs() < 0.03, "flip rate {flip_rate}");
    // Area fraction A ~ U(0.4, 1) and log-ratio L ~ U(ln 3/4, ln 4/3), kept when the box fits
    // (A·e^|L| ≤ 1): the expected kept values by quadrature.
    let (l_lo, l_hi) = ((0.75f64).ln(), (4.0f64 / 3.0).ln());
    let (mut mass, mut area_sum, mut abs_l_sum) = (0.0, 0.0, 0.0);
    let grid = 800;
    for i in 0..grid {
        let a = 0.4 + 0.6 * (i as f64 + 0.5) / grid as f64;
        for j in 0..grid {
            let l = l_lo + (l_hi - l_lo) * (j as f64 + 0.5) / grid as f64;
            if a * l.abs().exp() <= 1.0 {
                mass += 1.0;
                area_sum += a;
                abs_l_sum += l.abs();
            }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let expected_area = area_sum / mass;
    assert!(
        (mean(&areas) - expected_area).abs() < 0.01,
        "mean crop area {} vs {expected_area}",
        mean(&areas)
    );
    assert!(areas.iter().all(|&a| (0.39..=1.0).contains(&a)));
    assert!(
        mean(&log_ratios).abs() < 0.01,
        "mean log ratio {}",
        mean(&log_ratios)
    );
    let abs_l: Vec<f64> = log_ratios.iter().map(|l| l.abs()).collect();
    let expected_abs_l = abs_l_sum / mass;
    assert!(
        (mean(&abs_l) - expected_abs_l).abs() < 0.01,
        "mean |log ratio| {} vs {expected_abs_l}",
        mean(&abs_l)
    );
}

/// The CXR SSL list with every random choice fixed.
fn cxr_fixed(gamma: f64, degrees: f64, shear: f64) -> Vec<TransformStep> {
    let affine = format!(r#"{{"degrees": [{degrees}, {degrees}], "shear": [{shear}, {shear}]}}"#);
    let gamma = format!(r#"{{"scale": [{gamma}, {gamma}]}}"#);
    steps(&[
        ("ExpandChannels", "{}"),
        ("RandomAffine", &affine),
        (
            "RandomResizedCrop",
            r#"{"size": 256, "scale": [1.0, 1.0], "ratio": [1.0, 1.0]}"#,
        ),
        ("RandomHorizontalFlip", r#"{"p": 1.0}"#),
        ("RandomGamma", &gamma),
        (
            "ColorJitter",
            r#"{"brightness": [1.1, 1.1], "contrast": [0.8, 0.8]}"#,
        ),
        ("ElasticTransform", r#"{"p_apply": 0.0}"#),
        ("CenterCrop", r#"{"size": 224}"#),
        ("RandomErasing", r#"{"p": 0.0}"#),
        ("AddGaussianNoise", r#"{"p_apply": 0.0}"#),
    ])
}

#[test]
fn without_randomness_the_outputs_agree_within_the_stated_tolerance() {
    let grey = smooth_image(1024, 1);
    // Identity affine, gamma 1: bit-identical.
    let p = fused(&cxr_fixed(1.0, 0.0, 0.0));
    let a = p.apply(grey.clone(), 5).unwrap();
    let b = p.apply_steps(grey.clone(), 5).unwrap();
    assert_eq!(shape(&a), (224, 224, 3));
    assert_eq!(values(&a), values(&b));
    // Gamma 0.7: the fast pow, within 2e-6 (gamma feeds contrast: the bound is scaled by it).
    let p = fused(&cxr_fixed(0.7, 0.0, 0.0));
    let d = max_abs_diff(
        &values(&p.apply(grey.clone(), 5).unwrap()),
        &values(&p.apply_steps(grey.clone(), 5).unwrap()),
    );
    assert!(d <= 4e-6, "gamma 0.7: max abs diff {d}");
    // A fixed rotation and shear: one bilinear sample vs nearest then bilinear.
    let p = fused(&cxr_fixed(1.0, 30.0, 10.0));
    let (a, b) = (
        values(&p.apply(grey.clone(), 5).unwrap()),
        values(&p.apply_steps(grey.clone(), 5).unwrap()),
    );
    let mad = mean_abs_diff(&a, &b);
    let far = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| (*x - *y).abs() > 4.0 / 255.0)
        .count();
    assert!(mad < 0.5 / 255.0, "affine: mean abs diff {mad}");
    assert!(
        far as f64 <= 0.02 * a.len() as f64,
        "affine: {far} pixels differ by > 4/255"
    );

    // CIFAR with every choice fixed (crop of the whole image, flip, jitter, blur): the bits.
    let rgb = smooth_image(32, 3);
    let cifar = steps(&[
        (
            "RandomResizedCrop",
            r#"{"size": 32, "scale": [1.0, 1.0], "ratio": [1.0, 1.0]}"#,
        ),
        ("RandomHorizontalFlip", r#"{"p": 1.0}"#),
        (
            "ColorJitter",
            r#"{"brightness": [1.2, 1.2], "contrast": [0.7, 0.7], "saturation": [1.5, 1.5], "hue": [0.1, 0.1]}"#,
        ),
        ("RandomGrayscale", r#"{"p": 0.0}"#),
        ("GaussianBlur", r#"{"sigma": 1.0, "p": 1.0}"#),
    ]);
    let p = fused(&cifar);
    let a = p.apply(rgb.clone(), 9).unwrap();
    assert_eq!(shape(&a), (32, 32, 3));
    assert_eq!(values(&a), values(&p.apply_steps(rgb, 9).unwrap()));
}

#[test]
fn without_an_affine_step_the_random_outputs_are_the_steps_bits() {
    let rgb = smooth_image(32, 3);
    for list in [cifar_ssl(), cifar_linear_head()] {
        let p = fused(&list);
        for seed in 0..300 {
            let a = p.apply(rgb.clone(), seed).unwrap();
            let b = p.apply_steps(rgb.clone(), seed).unwrap();
            assert_eq!(values(&a), values(&b), "seed {seed}");
        }
    }
    let grey = smooth_image(300, 1);
    let p = fused(&cxr_eval());
    let a = p.apply(grey.clone(), 1).unwrap();
    assert_eq!(shape(&a), (224, 224, 3));
    assert_eq!(values(&a), values(&p.apply_steps(grey, 1).unwrap()));
}

#[test]
fn with_an_affine_step_the_outputs_agree_statistically() {
    let grey = smooth_image(1024, 1);
    for (name, list) in [("ssl", cxr_ssl()), ("linear head", cxr_linear_head())] {
        let p = fused(&list);
        let (mut same_seed, mut other_seed) = (0.0, 0.0);
        let n = 8;
        for seed in 0..n {
            let a = values(&p.apply(grey.clone(), seed).unwrap());
            let b = values(&p.apply_steps(grey.clone(), seed).unwrap());
            let c = values(&p.apply_steps(grey.clone(), seed + 1000).unwrap());
            same_seed += mean_abs_diff(&a, &b) / n as f64;
            other_seed += mean_abs_diff(&b, &c) / n as f64;
        }
        // A wrong crop, flip or angle would make the fused output as far from the steps'
        // as another seed's output is.
        assert!(
            same_seed < 0.1 * other_seed,
            "{name}: fused vs steps {same_seed:.4}, other seeds {other_seed:.4}"
        );
    }
}

#[test]
fn grey_input_gives_three_identical_channels_and_seeds_matter() {
    let grey = smooth_image(512, 1);
    let p = fused(&cxr_ssl());
    let a = p.apply(grey.clone(), 42).unwrap();
    assert_eq!(shape(&a), (224, 224, 3));
    let v = values(&a);
    assert!(v
        .chunks_exact(3)
        .all(|px| px[0].to_bits() == px[1].to_bits() && px[1].to_bits() == px[2].to_bits()));
    assert_eq!(v, values(&p.apply(grey.clone(), 42).unwrap()));
    assert_ne!(v, values(&p.apply(grey.clone(), 43).unwrap()));
    // 16-bit and float inputs take the same path.
    let u16_img =
        Image::from_u16(64, 64, 1, (0..64 * 64).map(|i| (i * 13) as u16).collect()).unwrap();
    assert_eq!(shape(&p.apply(u16_img, 1).unwrap()), (224, 224, 3));
    // Channel counts the fused path does not handle go through the steps (and their errors).
    let two = Image::from_u8(8, 8, 2, vec![0; 128]).unwrap();
    let err = p.apply(two, 1).unwrap_err().to_string();
    assert!(err.contains("ExpandChannels"), "{err}");
}

/// CPU time of this thread in seconds (Linux: `/proc/thread-self/schedstat`, nanoseconds on
/// the CPU), so that other processes on a busy machine do not inflate the figures; wall-clock
/// time elsewhere.
fn thread_cpu_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some(ns * 1e-9)
}

fn ms_per_view(f: impl Fn(Image, u64) -> Image, image: &Image, views: u64) -> f64 {
    let inputs: Vec<Image> = (0..views).map(|_| image.clone()).collect();
    let (wall, cpu) = (Instant::now(), thread_cpu_seconds());
    for (seed, img) in inputs.into_iter().enumerate() {
        std::hint::black_box(f(img, seed as u64));
    }
    let seconds = match (cpu, thread_cpu_seconds()) {
        (Some(a), Some(b)) => b - a,
        _ => wall.elapsed().as_secs_f64(),
    };
    seconds * 1e3 / views as f64
}

/// `cargo test -p builtin-transforms --release --test fused -- --ignored --nocapture`
#[test]
#[ignore = "timing; run in release mode with --ignored --nocapture"]
fn timing() {
    let cases = [
        (
            "CXR SSL, 1024 px grey",
            cxr_ssl(),
            smooth_image(1024, 1),
            20,
            400,
        ),
        (
            "CXR linear head, 1024 px",
            cxr_linear_head(),
            smooth_image(1024, 1),
            20,
            400,
        ),
        (
            "CXR eval, 1024 px",
            cxr_eval(),
            smooth_image(1024, 1),
            20,
            400,
        ),
        (
            "CIFAR SSL, 32 px RGB",
            cifar_ssl(),
            smooth_image(32, 3),
            4000,
            40000,
        ),
        (
            "CIFAR linear head, 32 px",
            cifar_linear_head(),
            smooth_image(32, 3),
            4000,
            40000,
        ),
    ];
    println!("| pipeline (CPU time of one thread) | steps ms/view | fused ms/view | speed-up | fused two-view samples/s per core |");
    println!("| --- | --- | --- | --- | --- |");
    // TIMING_CASE=substring picks cases; TIMING_FUSED_ONLY=1 skips the steps (for profiling).
    let only = std::env::var("TIMING_CASE").unwrap_or_default();
    let fused_only = std::env::var_os("TIMING_FUSED_ONLY").is_some();
    for (name, list, image, step_views, fused_views) in cases {
        if !name.contains(only.as_str()) {
            continue;
        }
        let p = fused(&list);
        let steps = if fused_only {
            f64::NAN
        } else {
            ms_per_view(|i, s| p.apply_steps(i, s).unwrap(), &image, step_views)
        };
        let fast = ms_per_view(|i, s| p.apply(i, s).unwrap(), &image, fused_views);
        println!(
            "| {name} | {steps:.4} | {fast:.4} | {:.1}× | {:.0} |",
            steps / fast,
            1e3 / (2.0 * fast)
        );
    }
}
