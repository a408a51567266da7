//! Barlow Twins: the loss against hand-computed values, parameters and their errors, names and
//! optimizer hints, evaluation mode, and one debug epoch of `ShapesBarlowTwins` through the
//! real binary.

mod common;
#[path = "common/debug_run.rs"]
mod debug_run;

use common::parity::TempDir;
use common::{find, names, sgd_step, snapshot, views, TinyEncoder, BATCH};
use ssl_builtin_algorithms::barlow_twins::{barlow_twins_loss, BarlowTwins, DEFAULT_LAMBD};
use ssl_plugin_api::tch::{Device, Tensor};
use ssl_plugin_api::{Params, SslAlgorithm};

const DIM: i64 = 8;

fn barlow(json: &str) -> BarlowTwins {
    BarlowTwins::from_encoder(
        &Params::from_json(json).unwrap(),
        TinyEncoder::boxed(DIM),
        Device::Cpu,
    )
    .unwrap()
}

/// A `[4, 2]` batch whose columns have mean 0 and biased variance 1, and are uncorrelated.
fn whitened() -> Tensor {
    Tensor::from_slice(&[1.0f32, 1.0, -1.0, 1.0, 1.0, -1.0, -1.0, -1.0]).view([4, 2])
}

fn loss(z1: &Tensor, z2: &Tensor, lambd: f64, scale: f64) -> f64 {
    barlow_twins_loss(z1, z2, lambd, scale)
        .unwrap()
        .double_value(&[])
}

#[test]
fn identical_whitened_views_cost_nothing() {
    // C = I / (1 + 1e-5): (1 - C_ii)² ≈ 1e-10.
    let z = whitened();
    assert!(loss(&z, &z, DEFAULT_LAMBD, 1.0) < 1e-8);
    // Scale and shift of a column change nothing (normalised along the batch).
    let scaled = &z * Tensor::from_slice(&[3.0f32, 0.5]) + 7.0;
    assert!(loss(&z, &scaled, DEFAULT_LAMBD, 1.0) < 1e-8);
}

#[test]
fn opposite_and_swapped_views_by_hand() {
    let z = whitened();
    // C = -I: each diagonal term (1 - (-1))² = 4.
    assert!((loss(&z, &(-&z), 0.5, 1.0) - 8.0).abs() < 1e-3);
    // Columns swapped: C = [[0, 1], [1, 0]]: on-diagonal 1 + 1, off-diagonal λ (1 + 1).
    let swapped = z.flip([1i64].as_slice());
    for lambd in [0.0, 0.5, DEFAULT_LAMBD] {
        let want = 2.0 + 2.0 * lambd;
        let got = loss(&z, &swapped, lambd, 1.0);
        assert!((got - want).abs() < 1e-3, "λ = {lambd}: {got} vs {want}");
    }
    // scale_loss multiplies everything.
    assert!((loss(&z, &swapped, 0.5, 0.25) - 0.75).abs() < 1e-3);
}

#[test]
fn normalisation_uses_the_biased_variance_of_batch_norm() {
    // Columns [0, 2] and [2, 0]: mean 1, biased variance 1 (unbiased 2), correlation -1 between
    // views: C_ii = -(1 / (1 + 1e-5)), so the loss is 2 * (1 + 1/(1 + 1e-5))² ≈ 8. With the
    // unbiased variance C_ii would be -1/2 and the loss 4.5.
    let a = Tensor::from_slice(&[0.0f32, 2.0, 2.0, 0.0]).view([2, 2]);
    let b = Tensor::from_slice(&[2.0f32, 0.0, 0.0, 2.0]).view([2, 2]);
    let got = loss(&a, &b, 0.0, 1.0);
    assert!((got - 8.0).abs() < 1e-3, "{got}");
}

#[test]
fn loss_rejects_bad_shapes_and_single_samples() {
    let z = whitened();
    assert!(barlow_twins_loss(&z, &z.narrow(1, 0, 1), 0.1, 1.0).is_err());
    let e = barlow_twins_loss(&z.narrow(0, 0, 1), &z.narrow(0, 0, 1), 0.1, 1.0).unwrap_err();
    assert!(e.message().contains("at least 2"), "{e}");
}

#[test]
fn parameters_and_their_errors() {
    let b = barlow("{}");
    assert_eq!(b.lambd(), 0.0051);
    assert_eq!(b.scale_loss(), 1.0);
    assert_eq!(
        find(&b.state(), "projector.6.weight").size(),
        [8192, 8192],
        "the paper's projector by default"
    );
    let b = barlow(r#"{"projector_dims": [16, 12], "lambd": 0.1, "scale_loss": 0.5}"#);
    assert_eq!((b.lambd(), b.scale_loss()), (0.1, 0.5));
    for (bad, name) in [
        (r#"{"lambd": -1}"#, "lambd"),
        (r#"{"lambd": "x"}"#, "lambd"),
        (r#"{"scale_loss": 0}"#, "scale_loss"),
        (r#"{"projector_dims": []}"#, "projector_dims"),
        (r#"{"projector_dims": [16, 0]}"#, "projector_dims"),
        (r#"{"projector_dims": 16}"#, "projector_dims"),
        (r#"{"lamda": 0.1}"#, "`lamda`"),
    ] {
        let e = BarlowTwins::from_encoder(
            &Params::from_json(bad).unwrap(),
            TinyEncoder::boxed(DIM),
            Device::Cpu,
        )
        .err()
        .unwrap_or_else(|| panic!("{bad} accepted"));
        assert!(e.message().contains(name), "{bad}: {e}");
    }
}

#[test]
fn names_shapes_and_optimizer_hints() {
    let b = barlow(r#"{"projector_dims": [16, 12, 10]}"#);
    let params = b.parameters();
    let list: Vec<(&str, bool)> = params
        .iter()
        .map(|p| (p.name.as_str(), p.weight_decay))
        .collect();
    assert_eq!(
        list,
        [
            ("encoder.fc.weight", true),
            ("encoder.fc.bias", false),
            ("encoder.bn1.weight", false),
            ("encoder.bn1.bias", false),
            ("projector.0.weight", true),
            ("projector.1.weight", false),
            ("projector.1.bias", false),
            ("projector.3.weight", true),
            ("projector.4.weight", false),
            ("projector.4.bias", false),
            ("projector.6.weight", true),
        ]
    );
    assert!(params.iter().all(|p| p.lars_adaptation == p.weight_decay));
    let state = b.state();
    assert_eq!(find(&state, "projector.0.weight").size(), [16, DIM]);
    assert_eq!(find(&state, "projector.3.weight").size(), [12, 16]);
    assert_eq!(find(&state, "projector.6.weight").size(), [10, 12]);
    assert_eq!(
        names(&state)[11..],
        [
            "encoder.bn1.running_mean",
            "encoder.bn1.running_var",
            "projector.1.running_mean",
            "projector.1.running_var",
            "projector.4.running_mean",
            "projector.4.running_var",
        ]
    );
}

#[test]
fn a_step_trains_encoder_and_projector() {
    let mut b = barlow(r#"{"projector_dims": [16, 12, 10]}"#);
    let before = snapshot(&b.state());
    let loss = b.training_loss(&views()).unwrap();
    assert!(loss.requires_grad() && loss.double_value(&[]).is_finite());
    let params: Vec<Tensor> = b.parameters().into_iter().map(|p| p.tensor).collect();
    sgd_step(&loss, &params, 0.1);
    let after = b.state();
    for name in [
        "encoder.fc.weight",
        "projector.0.weight",
        "projector.4.weight",
        "projector.6.weight",
        "projector.1.running_mean",
    ] {
        assert!(!find(&after, name).equal(find(&before, name)), "{name}");
    }
}

#[test]
fn validation_is_in_eval_mode_without_gradients() {
    let mut b = barlow(r#"{"projector_dims": [16, 12, 10]}"#);
    let before = snapshot(&b.state());
    let v = views();
    let loss = b.validation_loss(&v).unwrap();
    assert!(!loss.requires_grad());
    for (name, old) in &before {
        assert!(find(&b.state(), name).equal(old), "{name} changed");
    }
    // Evaluation mode: the projections are those of `project(_, false)`.
    let z1 = b.project(&v[0], false).unwrap();
    let z2 = b.project(&v[1], false).unwrap();
    let want = barlow_twins_loss(&z1, &z2, b.lambd(), b.scale_loss()).unwrap();
    assert!((loss.double_value(&[]) - want.double_value(&[])).abs() < 1e-6);
    let train = b.training_loss(&v).unwrap().double_value(&[]);
    assert!((loss.double_value(&[]) - train).abs() > 1e-6);
}

#[test]
fn embeddings_come_from_the_encoder_and_views_are_checked() {
    let mut b = barlow(r#"{"projector_dims": [16, 12, 10]}"#);
    assert_eq!(b.embedding_dim(), DIM);
    assert_eq!(b.embedding_encoder_prefix(), "encoder.");
    let e = b.embed(&views()[0], false).unwrap();
    assert_eq!(e.size(), [BATCH, DIM]);
    assert!(!e.requires_grad());
    let v = views();
    for n in [1, 3] {
        let list: Vec<Tensor> = (0..n).map(|i| v[i % 2].copy()).collect();
        let e = b.training_loss(&list).unwrap_err();
        assert!(e.message().contains("exactly 2"), "{e}");
    }
    let single = [v[0].narrow(0, 0, 1), v[1].narrow(0, 0, 1)];
    assert!(b.validation_loss(&single).is_err());
}

#[test]
fn shapes_debug_epoch_through_the_binary() {
    let out = TempDir::new("barlow_twins_debug_run");
    let run = debug_run::debug_epoch(
        "ShapesBarlowTwins",
        out.path(),
        &["--algorithm_params.projector_dims=[64,64,64]"],
    );
    for name in [
        "barlowtwins/train/loss",
        "barlowtwins/val/loss",
        "barlowtwins/learning_rate",
        "ssl_online_evaluator/val/AccuracyAtThreshold05",
    ] {
        let value = run.metrics[&(0, name.to_string())];
        assert!(value.is_finite(), "{name} = {value}");
    }
    assert!(run.metrics[&(0, "barlowtwins/train/loss".to_string())] > 0.0);
    for line in [
        "ssl_training_type = \"BarlowTwins\"",
        "optimizer = \"lars\"",
        "projector_dims = [64, 64, 64]",
    ] {
        assert!(run.config.contains(line), "{line} missing:\n{}", run.config);
    }
    assert_eq!(
        run.checkpoint["algorithm.projector.6.weight"].size(),
        [64, 64]
    );
    assert!(
        run.checkpoint
            .contains_key("optimizer.optimizer.projector.0.weight.momentum_buffer"),
        "LARS (momentum) state missing from the checkpoint"
    );
}
