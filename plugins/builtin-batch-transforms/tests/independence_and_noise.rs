//! A sample's output depends only on that sample and its seed (not on the batch around it),
//! and the device-side noise fields have the expected statistics, are deterministic per seed
//! and differ across seeds.

mod common;

use common::*;
use ssl_builtin_batch_transforms as batch_t;
use ssl_builtin_batch_transforms::hash_noise;
use ssl_plugin_api::tch::{Kind, Tensor};
use ssl_plugin_api::{BatchTransform, TransformStep};

/// Sample 0 of `input` with seed `seed`, alone and at position `at` of a batch of 5.
fn alone_and_in_batch(
    t: &dyn BatchTransform,
    input: &Tensor,
    seed: u64,
    at: i64,
) -> (Tensor, Tensor) {
    let one = input.narrow(0, 0, 1);
    let alone = t.apply(&one, &[seed]).expect("alone");
    let others = input.narrow(0, 1, 4);
    let batch = Tensor::cat(
        &[others.narrow(0, 0, at), one, others.narrow(0, at, 4 - at)],
        0,
    );
    let mut s = seeds(5, 77);
    s[at as usize] = seed;
    let out = t.apply(&batch, &s).expect("in a batch");
    (alone.get(0), out.get(at))
}

fn all_transforms() -> Vec<(&'static str, Box<dyn BatchTransform>)> {
    let p = params;
    vec![
        (
            "RandomResizedCrop",
            Box::new(batch_t::RandomResizedCrop::from_params(&p(r#"{"size": 24}"#)).unwrap()),
        ),
        (
            "RandomHorizontalFlip",
            Box::new(batch_t::RandomHorizontalFlip::from_params(&p("{}")).unwrap()),
        ),
        (
            "ColorJitter",
            Box::new(
                batch_t::ColorJitter::from_params(&p(
                    r#"{"brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.2}"#,
                ))
                .unwrap(),
            ),
        ),
        (
            "RandomGrayscale",
            Box::new(batch_t::RandomGrayscale::from_params(&p(r#"{"p": 0.5}"#)).unwrap()),
        ),
        (
            "GaussianBlur",
            Box::new(batch_t::GaussianBlur::from_params(&p(r#"{"p": 1.0}"#)).unwrap()),
        ),
        (
            "RandomAffine",
            Box::new(
                batch_t::RandomAffine::from_params(&p(r#"{"degrees": 90, "shear": 20}"#)).unwrap(),
            ),
        ),
        (
            "RandomGamma",
            Box::new(batch_t::RandomGamma::from_params(&p("{}")).unwrap()),
        ),
        (
            "ElasticTransform",
            Box::new(batch_t::ElasticTransform::from_params(&p(r#"{"p_apply": 1.0}"#)).unwrap()),
        ),
        (
            "RandomErasing",
            Box::new(batch_t::RandomErasing::from_params(&p(r#"{"p": 1.0}"#)).unwrap()),
        ),
        (
            "AddGaussianNoise",
            Box::new(
                batch_t::AddGaussianNoise::from_params(&p(r#"{"p_apply": 1.0, "std": 0.1}"#))
                    .unwrap(),
            ),
        ),
    ]
}

#[test]
fn every_transform_gives_a_sample_the_same_output_in_any_batch() {
    let input = batch(50, 5, 3, 36, 40, true);
    for (name, t) in all_transforms() {
        for (seed, at) in [(11u64, 0i64), (12, 3), (13, 4)] {
            let (alone, inside) = alone_and_in_batch(t.as_ref(), &input, seed, at);
            let d = max_diff(&alone, &inside);
            assert!(d <= 1e-6, "{name}: seed {seed} at {at}: differs by {d}");
        }
    }
}

#[test]
fn compiled_pipelines_give_a_sample_the_same_output_in_any_batch() {
    let list = |l: &[(&str, &str)]| -> Vec<TransformStep> {
        l.iter()
            .map(|(n, j)| TransformStep {
                name: n.to_string(),
                params: params(j),
            })
            .collect()
    };
    let cxr = list(&[
        ("ExpandChannels", "{}"),
        ("RandomAffine", r#"{"degrees": 180, "shear": 40}"#),
        ("RandomResizedCrop", r#"{"size": 32, "scale": [0.4, 1.0]}"#),
        ("RandomHorizontalFlip", r#"{"p": 0.5}"#),
        ("RandomGamma", "{}"),
        ("ColorJitter", r#"{"brightness": 0.2, "contrast": 0.2}"#),
        (
            "ElasticTransform",
            r#"{"alpha": 34, "sigma": 4, "p_apply": 1.0}"#,
        ),
        ("CenterCrop", r#"{"size": 28}"#),
        ("RandomErasing", r#"{"p": 1.0}"#),
        ("AddGaussianNoise", r#"{"p_apply": 1.0, "std": 0.05}"#),
    ]);
    let compiled = batch_t::pipeline::compile(&cxr).unwrap().unwrap();
    let input = batch(60, 5, 1, 64, 64, true);
    for (seed, at) in [(21u64, 1i64), (22, 4)] {
        let (alone, inside) = alone_and_in_batch(&compiled, &input, seed, at);
        assert_eq!(alone.size(), [3, 28, 28]);
        let d = max_diff(&alone, &inside);
        assert!(d <= 1e-6, "CXR: seed {seed} at {at}: differs by {d}");
    }
}

#[test]
fn uniform_and_normal_fields_have_the_expected_statistics() {
    let u = hash_noise::uniform(&[1, 2], 256, 256, CPU);
    assert_eq!(u.size(), [2, 256, 256]);
    let mean = u.mean(Kind::Float).double_value(&[]);
    let var = u.var(true).double_value(&[]);
    assert!((mean - 0.5).abs() < 0.005, "uniform mean {mean}");
    assert!((var - 1.0 / 12.0).abs() < 0.002, "uniform variance {var}");
    assert!(u.min().double_value(&[]) >= 0.0 && u.max().double_value(&[]) < 1.0);
    let g = hash_noise::normal(&[3, 4], 256, 256, CPU);
    let (m, s) = (
        g.mean(Kind::Float).double_value(&[]),
        g.std(true).double_value(&[]),
    );
    assert!(
        m.abs() < 0.01 && (s - 1.0).abs() < 0.01,
        "normal mean {m}, std {s}"
    );
    // Fraction beyond 2 sigma: 4.55 % for a normal distribution.
    let tail = g
        .abs()
        .gt(2.0)
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[]);
    assert!((tail - 0.0455).abs() < 0.003, "tail {tail}");
    // Neighbouring pixels and neighbouring keys are uncorrelated.
    let a = g.get(0).flatten(0, -1);
    let b = g.get(1).flatten(0, -1);
    let corr = (&a * &b).mean(Kind::Float).double_value(&[]);
    assert!(corr.abs() < 0.01, "correlation across keys {corr}");
    let shifted = (a.narrow(0, 0, 65535) * a.narrow(0, 1, 65535))
        .mean(Kind::Float)
        .double_value(&[]);
    assert!(shifted.abs() < 0.01, "correlation of neighbours {shifted}");
}

#[test]
fn fields_are_deterministic_per_seed_and_differ_across_seeds() {
    let a = hash_noise::normal(&[5, 6], 64, 64, CPU);
    let b = hash_noise::normal(&[6, 5], 64, 64, CPU);
    assert_eq!(max_diff(&a.get(0), &b.get(1)), 0.0);
    assert_eq!(max_diff(&a.get(1), &b.get(0)), 0.0);
    assert!(mean_diff(&a.get(0), &a.get(1)) > 0.5);
    let e = batch_t::ElasticTransform::from_params(&params(
        r#"{"alpha": 34, "sigma": 4, "p_apply": 1.0}"#,
    ))
    .unwrap();
    let f1 = e.fields(&[7, 8], 64, 64, CPU);
    let f2 = e.fields(&[7, 9], 64, 64, CPU);
    assert_eq!(max_diff(&f1.get(0), &f2.get(0)), 0.0);
    assert!(mean_diff(&f1.get(1), &f2.get(1)) > 0.1);
}

#[test]
fn elastic_fields_have_the_spread_of_the_per_image_fields() {
    // Same distribution as the per-image transform's fields: compare their standard deviation
    // over many pixels (256 × 256, two fields, several seeds).
    let p = params(r#"{"alpha": 34, "sigma": 4, "p_apply": 1.0}"#);
    let e = batch_t::ElasticTransform::from_params(&p).unwrap();
    let per_image = ssl_builtin_transforms::ElasticTransform::from_params(&p).unwrap();
    let (h, w) = (256usize, 256usize);
    let ours = e.fields(&[1, 2, 3], h as i64, w as i64, CPU);
    let inner = ours.narrow(2, 32, 192).narrow(3, 32, 192);
    let ours_std = inner.std(true).double_value(&[]);
    let ours_mean = inner.mean(Kind::Float).double_value(&[]);
    let mut sq = 0.0;
    let mut count = 0.0;
    for seed in 0..3 {
        let mut rng = ssl_builtin_transforms::rng::Rng::new(seed);
        let (dx, dy) = per_image.fields(&mut rng, h, w);
        for f in [dx, dy] {
            for y in 32..224 {
                for x in 32..224 {
                    sq += f[y * w + x] * f[y * w + x];
                    count += 1.0;
                }
            }
        }
    }
    let theirs_std = (sq / count).sqrt();
    assert!(ours_mean.abs() < 0.1 * theirs_std, "mean {ours_mean}");
    assert!(
        (ours_std / theirs_std - 1.0).abs() < 0.1,
        "std {ours_std} vs per-image {theirs_std}"
    );
}

#[test]
fn noise_has_the_requested_std_and_stays_within_the_image_range() {
    // Mid-grey images with one black and one white pixel: the noise is clamped to [0, 1] only.
    let input = Tensor::full([4, 1, 128, 128], 0.5, (Kind::Float, CPU));
    let _ = input.narrow(2, 0, 1).narrow(3, 0, 1).fill_(0.0);
    let _ = input.narrow(2, 0, 1).narrow(3, 1, 1).fill_(1.0);
    let t = batch_t::AddGaussianNoise::from_params(&params(r#"{"p_apply": 1.0, "std": 0.05}"#))
        .unwrap();
    let out = t.apply(&input, &[1, 2, 3, 4]).unwrap();
    let noise = (&out - &input).narrow(2, 1, 127);
    let s = noise.std(true).double_value(&[]);
    let m = noise.mean(Kind::Float).double_value(&[]);
    assert!(
        (s - 0.05).abs() < 0.001 && m.abs() < 0.001,
        "noise mean {m}, std {s}"
    );
    assert!(out.min().double_value(&[]) >= 0.0 && out.max().double_value(&[]) <= 1.0);
    assert_eq!(
        max_diff(&out, &t.apply(&input, &[1, 2, 3, 4]).unwrap()),
        0.0
    );
    assert!(mean_diff(&out, &t.apply(&input, &[5, 6, 7, 8]).unwrap()) > 0.02);
}
