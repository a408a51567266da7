//! The compiled batch pipelines (through the plugin ABI, as the host gets them) against the
//! per-image pipelines run step by step: the chest X-ray SSL list (InnerEye's
//! `cxr_ssl_encoder_augmentations.yaml`, scaled down) and the CIFAR SSL list.

mod common;

use common::*;
use ssl_builtin_transforms as image_t;
use ssl_plugin_api::host::builtin_plugins;
use ssl_plugin_api::tch::Tensor;
use ssl_plugin_api::torch::{BatchPipelineCompiler, BatchTransformHandle};
use ssl_plugin_api::{Transform, TransformStep};

fn compiler() -> BatchPipelineCompiler {
    ssl_builtin_batch_transforms::link();
    let plugins = builtin_plugins().expect("built-in plugins load");
    let plugin = plugins
        .iter()
        .find(|p| p.name == "builtin-batch-transforms")
        .expect("builtin-batch-transforms is registered");
    plugin.batch_pipeline_compilers[0].clone()
}

fn steps(list: &[(&str, &str)]) -> Vec<TransformStep> {
    list.iter()
        .map(|(name, json)| TransformStep {
            name: name.to_string(),
            params: params(json),
        })
        .collect()
}

/// The per-image transforms of `list`.
fn per_image_list(list: &[(&str, &str)]) -> Vec<Box<dyn Transform>> {
    list.iter()
        .map(|(name, json)| {
            let p = params(json);
            let t: Box<dyn Transform> = match *name {
                "ExpandChannels" => Box::new(image_t::ExpandChannels::from_params(&p).unwrap()),
                "RandomAffine" => Box::new(image_t::RandomAffine::from_params(&p).unwrap()),
                "RandomResizedCrop" => {
                    Box::new(image_t::RandomResizedCrop::from_params(&p).unwrap())
                }
                "RandomHorizontalFlip" => {
                    Box::new(image_t::RandomHorizontalFlip::from_params(&p).unwrap())
                }
                "RandomGamma" => Box::new(image_t::RandomGamma::from_params(&p).unwrap()),
                "ColorJitter" => Box::new(image_t::ColorJitter::from_params(&p).unwrap()),
                "ElasticTransform" => Box::new(image_t::ElasticTransform::from_params(&p).unwrap()),
                "CenterCrop" => Box::new(image_t::CenterCrop::from_params(&p).unwrap()),
                "RandomErasing" => Box::new(image_t::RandomErasing::from_params(&p).unwrap()),
                "AddGaussianNoise" => Box::new(image_t::AddGaussianNoise::from_params(&p).unwrap()),
                "RandomGrayscale" => Box::new(image_t::RandomGrayscale::from_params(&p).unwrap()),
                "GaussianBlur" => Box::new(image_t::GaussianBlur::from_params(&p).unwrap()),
                "Resize" => Box::new(image_t::Resize::from_params(&p).unwrap()),
                other => panic!("no per-image transform {other} in this test"),
            };
            t
        })
        .collect()
}

fn compiled(list: &[(&str, &str)]) -> BatchTransformHandle {
    compiler()
        .compile(&steps(list))
        .expect("compiles")
        .expect("every step is a built-in")
}

/// The chest X-ray SSL encoder list, at 128 px in, 64 px crops, 56 px out (the original: 1024,
/// 256, 224). `elastic` and `noise` are the apply probabilities of the per-pixel steps.
fn cxr_ssl(elastic: f64, noise: f64) -> Vec<(&'static str, String)> {
    vec![
        ("ExpandChannels", "{}".into()),
        (
            "RandomAffine",
            r#"{"degrees": 180, "translate": [0, 0], "shear": 40}"#.into(),
        ),
        (
            "RandomResizedCrop",
            r#"{"size": 64, "scale": [0.4, 1.0]}"#.into(),
        ),
        ("RandomHorizontalFlip", r#"{"p": 0.5}"#.into()),
        ("RandomGamma", r#"{"scale": [0.5, 1.5]}"#.into()),
        (
            "ColorJitter",
            r#"{"brightness": 0.2, "contrast": 0.2, "saturation": 0}"#.into(),
        ),
        (
            "ElasticTransform",
            format!(r#"{{"alpha": 8.5, "sigma": 4, "p_apply": {elastic}}}"#),
        ),
        ("CenterCrop", r#"{"size": 56}"#.into()),
        (
            "RandomErasing",
            r#"{"scale": [0.15, 0.4], "ratio": [0.33, 3]}"#.into(),
        ),
        (
            "AddGaussianNoise",
            format!(r#"{{"p_apply": {noise}, "std": 0.05}}"#),
        ),
    ]
}

fn as_refs<'a>(list: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    list.iter().map(|(n, j)| (*n, j.as_str())).collect()
}

const CIFAR_SSL: [(&str, &str); 5] = [
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
];

#[test]
fn cifar_pipeline_matches_the_steps() {
    // The chain (crop + flip) samples the same points as the steps, so even with every
    // random step on, the outputs agree up to float rounding of the sampling grid.
    let list = CIFAR_SSL;
    let input = batch(100, 16, 3, 32, 32, true);
    let s = seeds(16, 5);
    let got = compiled(&list).apply(&input, &s).expect("apply");
    let want = per_image_steps(&per_image_list(&list), &input, &s);
    assert_eq!(got.size(), [16, 3, 32, 32]);
    let (max, mean) = (max_diff(&got, &want), mean_diff(&got, &want));
    eprintln!("CIFAR compiled vs steps: max abs diff {max:.2e}, mean {mean:.2e}");
    assert!(max < 2e-3 && mean < 1e-5, "max {max}, mean {mean}");
}

#[test]
fn cxr_pipeline_without_per_pixel_noise_is_close_to_the_steps() {
    // Same drawn parameters (angles, crops, flips, gammas, jitter, rectangles); the chain is
    // sampled bilinearly once instead of nearest (affine) then bilinear (crop), so pixels
    // differ a little on these smooth images.
    let list = cxr_ssl(0.0, 0.0);
    let list = as_refs(&list);
    let input = batch(200, 8, 1, 128, 128, false);
    let s = seeds(8, 6);
    let got = compiled(&list).apply(&input, &s).expect("apply");
    let want = per_image_steps(&per_image_list(&list), &input, &s);
    assert_eq!(got.size(), [8, 3, 56, 56]);
    let mean = mean_diff(&got, &want);
    eprintln!("CXR (no elastic/noise) compiled vs steps: mean abs diff {mean:.2e}");
    assert!(mean < 0.01, "mean abs diff {mean}");
    // Other seeds give very different views: the agreement above is not by chance.
    let other = per_image_steps(&per_image_list(&list), &input, &seeds(8, 7));
    assert!(mean_diff(&got, &other) > 10.0 * mean);
    // The three channels are identical (expanded at the end).
    assert_eq!(max_diff(&got.narrow(1, 0, 1), &got.narrow(1, 2, 1)), 0.0);
}

#[test]
fn cxr_pipeline_with_randomness_off_equals_the_steps() {
    let list = [
        ("ExpandChannels", "{}"),
        ("RandomAffine", r#"{"degrees": 0, "shear": 0}"#),
        (
            "RandomResizedCrop",
            r#"{"size": 64, "scale": [1, 1], "ratio": [1, 1]}"#,
        ),
        ("RandomHorizontalFlip", r#"{"p": 1.0}"#),
        ("RandomGamma", r#"{"scale": [1, 1]}"#),
        ("ColorJitter", r#"{"brightness": 0, "contrast": 0}"#),
        ("ElasticTransform", r#"{"p_apply": 0}"#),
        ("CenterCrop", r#"{"size": 56}"#),
        ("RandomErasing", r#"{"p": 0}"#),
        ("AddGaussianNoise", r#"{"p_apply": 0}"#),
    ];
    let input = batch(300, 4, 1, 128, 128, true);
    let s = seeds(4, 8);
    let got = compiled(&list).apply(&input, &s).expect("apply");
    let want = per_image_steps(&per_image_list(&list), &input, &s);
    let max = max_diff(&got, &want);
    eprintln!("CXR randomness off: max abs diff {max:.2e}");
    assert!(max < 1e-4, "max abs diff {max}");
    // The linear head's evaluation list (resize + centre crop, composed) likewise.
    let eval = [
        ("ExpandChannels", "{}"),
        ("Resize", r#"{"size": 64}"#),
        ("CenterCrop", r#"{"size": 56}"#),
    ];
    let got = compiled(&eval).apply(&input, &s).expect("apply");
    let want = per_image_steps(&per_image_list(&eval), &input, &s);
    let max = max_diff(&got, &want);
    assert!(max < 1e-4, "eval list: max abs diff {max}");
}

#[test]
fn cxr_pipeline_with_every_step_is_statistically_close_to_the_steps() {
    let list = cxr_ssl(0.4, 0.5);
    let list = as_refs(&list);
    let input = batch(400, 16, 1, 128, 128, false);
    let s = seeds(16, 9);
    let got = compiled(&list).apply(&input, &s).expect("apply");
    let want = per_image_steps(&per_image_list(&list), &input, &s);
    let mean = mean_diff(&got, &want);
    let other = per_image_steps(&per_image_list(&list), &input, &seeds(16, 10));
    let baseline = mean_diff(&want, &other);
    eprintln!("CXR full: mean abs diff {mean:.3e} (other seeds: {baseline:.3e})");
    assert!(
        mean < 0.25 * baseline,
        "mean abs diff {mean} vs {baseline} across seeds"
    );
    let stats = |t: &Tensor| {
        (
            t.mean(ssl_plugin_api::tch::Kind::Float).double_value(&[]),
            t.std(true).double_value(&[]),
        )
    };
    let (gm, gs) = stats(&got);
    let (wm, ws) = stats(&want);
    eprintln!("CXR full: mean/std {gm:.4}/{gs:.4} vs steps {wm:.4}/{ws:.4}");
    assert!(
        (gm - wm).abs() < 0.02 && (gs - ws).abs() < 0.02,
        "mean/std {gm}/{gs} vs {wm}/{ws}"
    );
}

#[test]
fn a_list_with_a_foreign_step_is_not_compiled_and_bad_parameters_name_the_step() {
    let c = compiler();
    assert!(c.description().contains("one sampling grid per sample"));
    let foreign = steps(&[("RandomResizedCrop", r#"{"size": 8}"#), ("MyBlur", "{}")]);
    assert!(c.compile(&foreign).expect("no error").is_none());
    let bad = steps(&[
        ("RandomHorizontalFlip", "{}"),
        ("RandomResizedCrop", r#"{"sise": 8}"#),
    ]);
    let err = c.compile(&bad).err().expect("unknown parameter");
    assert!(
        err.message().contains("step 1 (`RandomResizedCrop`)") && err.message().contains("`sise`"),
        "{err}"
    );
}

#[test]
fn every_per_image_transform_has_a_batch_twin_under_its_name() {
    ssl_builtin_batch_transforms::link();
    ssl_builtin_transforms::link();
    let plugins = builtin_plugins().expect("built-in plugins load");
    let per_image: Vec<String> = plugins
        .iter()
        .find(|p| p.name == "builtin-transforms")
        .expect("builtin-transforms")
        .transforms
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    let batch: Vec<String> = plugins
        .iter()
        .find(|p| p.name == "builtin-batch-transforms")
        .expect("builtin-batch-transforms")
        .batch_transforms
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    let (mut a, mut b) = (per_image.clone(), batch.clone());
    a.sort();
    b.sort();
    assert_eq!(a, b);
    assert_eq!(b.len(), 14);
}

#[test]
fn batch_transforms_work_through_the_abi() {
    ssl_builtin_batch_transforms::link();
    let plugins = builtin_plugins().expect("built-in plugins load");
    let plugin = plugins
        .iter()
        .find(|p| p.name == "builtin-batch-transforms")
        .unwrap();
    let flip = plugin
        .batch_transforms
        .iter()
        .find(|f| f.name() == "RandomHorizontalFlip")
        .unwrap()
        .create(&params(r#"{"p": 1.0}"#))
        .unwrap();
    let input = batch(1, 2, 3, 8, 8, true);
    let out = flip.apply(&input, &[1, 2]).unwrap();
    assert_eq!(max_diff(&out, &input.flip([3])), 0.0);
    let err = plugin
        .batch_transforms
        .iter()
        .find(|f| f.name() == "RandomGamma")
        .unwrap()
        .create(&params(r#"{"scale": [2, 1]}"#))
        .err()
        .expect("bad range");
    assert!(err.message().contains("`scale`"), "{err}");
}
