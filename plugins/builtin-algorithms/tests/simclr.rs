//! SimCLR: the NT-Xent loss against hand-computed values and the cross-entropy form, the
//! projection, names and optimizer hints, parameters and errors.

mod common;

use common::{find, names, sgd_step, snapshot, views, TinyEncoder, BATCH};
use ssl_builtin_algorithms::simclr::{nt_xent_loss, SimClr, DEFAULT_TEMPERATURE};
use ssl_plugin_api::tch::{Device, Kind, Tensor};
use ssl_plugin_api::{Params, SslAlgorithm};

const DIM: i64 = 8;

fn simclr(json: &str) -> SimClr {
    SimClr::from_encoder(
        &Params::from_json(json).unwrap(),
        TinyEncoder::boxed(DIM),
        Device::Cpu,
    )
    .unwrap()
}

fn tensor(rows: &[[f64; 2]]) -> Tensor {
    let flat: Vec<f32> = rows.iter().flatten().map(|&x| x as f32).collect();
    Tensor::from_slice(&flat).view([rows.len() as i64, 2])
}

fn loss(z1: &[[f64; 2]], z2: &[[f64; 2]], t: f64) -> f64 {
    nt_xent_loss(&tensor(z1), &tensor(z2), t)
        .unwrap()
        .double_value(&[])
}

/// Bolts' formula written out row by row in f64.
fn reference(z1: &[[f64; 2]], z2: &[[f64; 2]], t: f64) -> f64 {
    let dot = |a: &[f64; 2], b: &[f64; 2]| a[0] * b[0] + a[1] * b[1];
    let out: Vec<[f64; 2]> = z1.iter().chain(z2).copied().collect();
    let b = z1.len();
    let mut total = 0.0;
    for (i, row) in out.iter().enumerate() {
        let sum: f64 = out.iter().map(|other| (dot(row, other) / t).exp()).sum();
        let neg = (sum - (1.0 / t).exp()).max(1e-6);
        let pos = (dot(&z1[i % b], &z2[i % b]) / t).exp();
        total += -(pos / (neg + 1e-6)).ln();
    }
    total / out.len() as f64
}

#[test]
fn nt_xent_of_identical_views_by_hand() {
    // out = e1, e2, e1, e2; for every row: sum exp = 2e + 2, minus e^(1/T) = e gives e + 2;
    // pos = e; loss = ln((e + 2) / e).
    let e = std::f64::consts::E;
    let z = [[1.0, 0.0], [0.0, 1.0]];
    let expected = ((e + 2.0) / e).ln();
    assert!((loss(&z, &z, 1.0) - expected).abs() < 1e-6);
}

#[test]
fn nt_xent_of_swapped_views_by_hand() {
    // out = e1, e2, e2, e1; every row: neg = e + 2 (as above), pos = exp(0) = 1.
    let e = std::f64::consts::E;
    let z1 = [[1.0, 0.0], [0.0, 1.0]];
    let z2 = [[0.0, 1.0], [1.0, 0.0]];
    assert!((loss(&z1, &z2, 1.0) - (e + 2.0).ln()).abs() < 1e-6);
}

#[test]
fn nt_xent_matches_the_formula_at_several_temperatures() {
    let c = 0.5f64.sqrt();
    let z1 = [[1.0, 0.0], [0.0, 1.0]];
    let z2 = [[c, c], [-c, c]];
    for t in [1.0, 0.5, DEFAULT_TEMPERATURE] {
        let (got, want) = (loss(&z1, &z2, t), reference(&z1, &z2, t));
        assert!(
            (got - want).abs() < 1e-5 * want.abs().max(1.0),
            "T={t}: {got} vs {want}"
        );
    }
    // The temperature matters.
    assert!((loss(&z1, &z2, 0.5) - loss(&z1, &z2, 0.1)).abs() > 1e-3);
}

#[test]
fn nt_xent_equals_cross_entropy_over_the_other_samples_for_unit_vectors() {
    // For unit rows, bolts' form is the usual one: softmax over the 2B - 1 other samples with
    // the positive as the target (its denominator keeps the positive pair).
    let b = 5;
    let t = 0.1;
    let unit = |x: Tensor| &x / x.norm_scalaropt_dim(2, [1i64].as_slice(), true);
    let z1 = unit(Tensor::randn([b, 8], (Kind::Double, Device::Cpu)));
    let z2 = unit(Tensor::randn([b, 8], (Kind::Double, Device::Cpu)));
    let out = Tensor::cat(&[&z1, &z2], 0);
    let self_mask = Tensor::eye(2 * b, (Kind::Bool, Device::Cpu));
    let logits = (out.mm(&out.tr()) / t).masked_fill(&self_mask, f64::NEG_INFINITY);
    let targets = Tensor::cat(
        &[
            Tensor::arange_start(b, 2 * b, (Kind::Int64, Device::Cpu)),
            Tensor::arange(b, (Kind::Int64, Device::Cpu)),
        ],
        0,
    );
    let expected = logits.cross_entropy_for_logits(&targets).double_value(&[]);
    let got = nt_xent_loss(&z1, &z2, t).unwrap().double_value(&[]);
    assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
}

#[test]
fn nt_xent_rejects_mismatched_shapes() {
    let a = Tensor::randn([4, 3], (Kind::Float, Device::Cpu));
    assert!(nt_xent_loss(&a, &a.narrow(0, 0, 3), 0.1).is_err());
}

#[test]
fn temperature_parameter() {
    assert_eq!(simclr("{}").temperature(), 0.1);
    let mut warm = simclr(r#"{"temperature": 0.5}"#);
    assert_eq!(warm.temperature(), 0.5);
    // The loss uses it: recompute from the projections (batch statistics, so train mode
    // gives the same projections again).
    let v = views();
    let got = warm.training_loss(&v).unwrap().double_value(&[]);
    let z1 = warm.project(&v[0], true).unwrap();
    let z2 = warm.project(&v[1], true).unwrap();
    let at = |t: f64| nt_xent_loss(&z1, &z2, t).unwrap().double_value(&[]);
    assert!((got - at(0.5)).abs() < 1e-6, "{got} vs {}", at(0.5));
    assert!((got - at(0.1)).abs() > 1e-4);
    for bad in [
        r#"{"temperature": 0}"#,
        r#"{"temperature": -1}"#,
        r#"{"temperature": "x"}"#,
    ] {
        let e = SimClr::from_encoder(
            &Params::from_json(bad).unwrap(),
            TinyEncoder::boxed(DIM),
            Device::Cpu,
        )
        .err()
        .unwrap_or_else(|| panic!("{bad} accepted"));
        assert!(e.message().contains("temperature"), "{e}");
    }
}

#[test]
fn projections_have_unit_norm_and_128_dims() {
    let mut simclr = simclr("{}");
    let v = views();
    for train in [true, false] {
        let z = simclr.project(&v[0], train).unwrap();
        assert_eq!(z.size(), [BATCH, 128]);
        let norms = z.norm_scalaropt_dim(2, [1i64].as_slice(), false);
        let worst = (norms - 1.0).abs().max().double_value(&[]);
        assert!(worst < 1e-5, "train={train}: {worst}");
    }
}

#[test]
fn parameters_names_and_hints() {
    let simclr = simclr("{}");
    let params = simclr.parameters();
    let list: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        list,
        [
            "encoder.fc.weight",
            "encoder.fc.bias",
            "encoder.bn1.weight",
            "encoder.bn1.bias",
            "projection.model.0.weight",
            "projection.model.0.bias",
            "projection.model.1.weight",
            "projection.model.1.bias",
            "projection.model.3.weight",
        ]
    );
    // One group with weight decay, as the original (exclude_bn_bias=False).
    assert!(params.iter().all(|p| p.weight_decay));
    let lars = |name: &str| {
        params
            .iter()
            .find(|p| p.name == name)
            .unwrap()
            .lars_adaptation
    };
    assert!(lars("encoder.fc.weight"));
    assert!(lars("projection.model.1.weight"));
    assert!(!lars("encoder.bn1.weight"));
    assert!(!lars("projection.model.0.bias"));
    let state = simclr.state();
    let shape = |n: &str| find(&state, n).size();
    assert_eq!(shape("projection.model.0.weight"), [2048, DIM]);
    assert_eq!(shape("projection.model.0.bias"), [2048]);
    assert_eq!(shape("projection.model.3.weight"), [128, 2048]);
    assert_eq!(
        names(&state)[9..],
        [
            "encoder.bn1.running_mean",
            "encoder.bn1.running_var",
            "projection.model.1.running_mean",
            "projection.model.1.running_var",
        ]
    );
}

#[test]
fn gradient_step_changes_the_encoder() {
    let mut simclr = simclr("{}");
    let before = snapshot(&simclr.state());
    let loss = simclr.training_loss(&views()).unwrap();
    assert!(loss.requires_grad());
    assert!(loss.double_value(&[]).is_finite());
    let params: Vec<Tensor> = simclr.parameters().into_iter().map(|p| p.tensor).collect();
    sgd_step(&loss, &params, 0.1);
    let after = simclr.state();
    for name in [
        "encoder.fc.weight",
        "encoder.bn1.weight",
        "projection.model.0.weight",
        "projection.model.3.weight",
        "encoder.bn1.running_mean",
    ] {
        assert!(!find(&after, name).equal(find(&before, name)), "{name}");
    }
}

#[test]
fn validation_is_in_eval_mode_without_gradients() {
    let mut simclr = simclr("{}");
    let before = snapshot(&simclr.state());
    let loss = simclr.validation_loss(&views()).unwrap();
    assert!(!loss.requires_grad());
    assert!(loss.double_value(&[]).is_finite());
    for (name, old) in &before {
        assert!(find(&simclr.state(), name).equal(old), "{name} changed");
    }
}

#[test]
fn embeddings_come_from_the_encoder() {
    let mut simclr = simclr("{}");
    assert_eq!(simclr.embedding_dim(), DIM);
    assert_eq!(simclr.embedding_encoder_prefix(), "encoder.");
    let e = simclr.embed(&views()[0], false).unwrap();
    assert_eq!(e.size(), [BATCH, DIM]);
    assert!(!e.requires_grad());
    assert!(simclr.scalars().unwrap().is_empty());
}

#[test]
fn wrong_number_of_views_is_an_error() {
    let mut simclr = simclr("{}");
    let v = views();
    for n in [0, 1, 3] {
        let list: Vec<Tensor> = (0..n).map(|i| v[i % 2].copy()).collect();
        let e = simclr.training_loss(&list).unwrap_err();
        assert!(e.message().contains("exactly 2"), "{e}");
    }
}

#[test]
fn unknown_parameters_are_rejected_by_name() {
    let e = SimClr::from_encoder(
        &Params::from_json(r#"{"temprature": 0.5}"#).unwrap(),
        TinyEncoder::boxed(DIM),
        Device::Cpu,
    )
    .err()
    .expect("unknown parameter accepted");
    assert!(e.message().contains("`temprature`"), "{e}");
    assert!(e.message().contains("`temperature`"), "{e}");
}
