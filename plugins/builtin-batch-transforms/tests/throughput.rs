//! Images per second of the compiled chest X-ray and CIFAR SSL batch pipelines (two views per
//! image) on one CPU core, for a batch of 64. Run with
//! `cargo test -p builtin-batch-transforms --release --test throughput -- --ignored --nocapture`.

mod common;

use common::*;
use ssl_builtin_batch_transforms::pipeline::compile;
use ssl_plugin_api::tch::{Kind, Tensor};
use ssl_plugin_api::{BatchTransform, TransformStep};
use std::time::Instant;

fn list(l: &[(&str, &str)]) -> Vec<TransformStep> {
    l.iter()
        .map(|(n, j)| TransformStep {
            name: n.to_string(),
            params: params(j),
        })
        .collect()
}

/// Images per second of `t` making two views of `input`, best of `rounds`.
fn images_per_second(t: &dyn BatchTransform, input: &Tensor, rounds: usize) -> f64 {
    let n = input.size()[0] as usize;
    let _ = t.apply(input, &seeds(n, 0)).unwrap();
    let mut best = f64::INFINITY;
    for r in 0..rounds {
        let start = Instant::now();
        for view in 0..2 {
            let out = t
                .apply(input, &seeds(n, (r * 2 + view + 1) as u64))
                .unwrap();
            assert_eq!(out.size()[0], n as i64);
        }
        best = best.min(start.elapsed().as_secs_f64());
    }
    n as f64 / best
}

#[test]
#[ignore = "timing; run in release mode with --ignored --nocapture"]
fn compiled_pipelines_images_per_second_on_the_cpu() {
    let cxr = compile(&list(&[
        ("ExpandChannels", "{}"),
        (
            "RandomAffine",
            r#"{"degrees": 180, "translate": [0, 0], "shear": 40}"#,
        ),
        ("RandomResizedCrop", r#"{"size": 256, "scale": [0.4, 1.0]}"#),
        ("RandomHorizontalFlip", r#"{"p": 0.5}"#),
        ("RandomGamma", r#"{"scale": [0.5, 1.5]}"#),
        (
            "ColorJitter",
            r#"{"brightness": 0.2, "contrast": 0.2, "saturation": 0}"#,
        ),
        (
            "ElasticTransform",
            r#"{"alpha": 34, "sigma": 4, "p_apply": 0.4}"#,
        ),
        ("CenterCrop", r#"{"size": 224}"#),
        (
            "RandomErasing",
            r#"{"scale": [0.15, 0.4], "ratio": [0.33, 3]}"#,
        ),
        ("AddGaussianNoise", r#"{"p_apply": 0.5, "std": 0.05}"#),
    ]))
    .unwrap()
    .unwrap();
    let cifar = compile(&list(&[
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
    ]))
    .unwrap()
    .unwrap();
    // One libtorch thread: a figure per core, and stable on a shared machine (with several
    // threads, small CIFAR ops spend most of their time synchronising threads).
    ssl_plugin_api::tch::set_num_threads(1);
    let threads = ssl_plugin_api::tch::get_num_threads();
    let x = Tensor::rand([64, 1, 1024, 1024], (Kind::Float, CPU));
    let cxr_rate = images_per_second(&cxr, &x, 3);
    let x = Tensor::rand([64, 3, 32, 32], (Kind::Float, CPU));
    let cifar_rate = images_per_second(&cifar, &x, 5);
    eprintln!(
        "CPU ({threads} libtorch threads), batch of 64, two views per image: \
         CXR 1024 px -> 2 x 224 px: {cxr_rate:.1} images/s; CIFAR 32 px: {cifar_rate:.0} images/s"
    );
    assert!(cxr_rate > 0.0 && cifar_rate > 0.0);
}
