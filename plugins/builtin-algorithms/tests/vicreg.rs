//! VICReg: each term of the loss against hand-computed values, parameters and their errors,
//! names and optimizer hints, evaluation mode, and one debug epoch of `ShapesVICReg` through
//! the real binary.

mod common;
#[path = "common/debug_run.rs"]
mod debug_run;

use common::parity::TempDir;
use common::{find, names, sgd_step, snapshot, views, TinyEncoder, BATCH};
use ssl_builtin_algorithms::vicreg::{vicreg_loss, vicreg_terms, VicReg, VicRegCoeffs};
use ssl_plugin_api::tch::{Device, Tensor};
use ssl_plugin_api::{Params, SslAlgorithm};

const DIM: i64 = 8;
const SMALL: &str = r#"{"projector_dims": [16, 12, 10]}"#;

fn vicreg(json: &str) -> VicReg {
    VicReg::from_encoder(
        &Params::from_json(json).unwrap(),
        TinyEncoder::boxed(DIM),
        Device::Cpu,
    )
    .unwrap()
}

/// A `[4, 2]` batch with uncorrelated columns of mean 0 and unbiased variance `4 a² / 3`.
fn columns(a: f64) -> Tensor {
    Tensor::from_slice(&[1.0f32, 1.0, -1.0, 1.0, 1.0, -1.0, -1.0, -1.0]).view([4, 2]) * a
}

fn terms(x: &Tensor, y: &Tensor) -> (f64, f64, f64) {
    let (s, v, c) = vicreg_terms(x, y).unwrap();
    (
        s.double_value(&[]),
        v.double_value(&[]),
        c.double_value(&[]),
    )
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-5
}

#[test]
fn invariance_is_the_mean_squared_difference() {
    let x = columns(1.0);
    let (s, v, c) = terms(&x, &(&x + 0.1));
    assert!(close(s, 0.01), "{s}");
    // std = sqrt(4/3 + 1e-4) > 1: no variance cost; uncorrelated columns: no covariance cost.
    assert!(close(v, 0.0) && close(c, 0.0), "{v} {c}");
    assert!(close(terms(&x, &x).0, 0.0));
}

#[test]
fn variance_hinges_on_the_unbiased_std_and_averages_the_views() {
    // a = 0.5: unbiased variance 1/3 (biased 1/4); the hinge is 1 - sqrt(1/3 + 1e-4).
    let hinge = 1.0 - (1.0f64 / 3.0 + 1e-4).sqrt();
    let (_, v, c) = terms(&columns(0.5), &columns(0.5));
    assert!(close(v, hinge), "{v} vs {hinge}");
    assert!(close(c, 0.0));
    // One view collapsed to a constant: its hinge is 1 - sqrt(1e-4) = 0.99; the mean of the two.
    let constant = Tensor::ones([4, 2], (ssl_plugin_api::tch::Kind::Float, Device::Cpu));
    let (_, v, _) = terms(&columns(0.5), &constant);
    assert!(close(v, (hinge + 0.99) / 2.0), "{v}");
}

#[test]
fn covariance_sums_squared_off_diagonals_over_d_for_each_view() {
    // Two identical columns of unbiased variance 4/3: Cov = 4/3 everywhere, off-diagonal
    // squares 2 * 16/9 over d = 2 gives 16/9 per view, 32/9 for both.
    let x = Tensor::from_slice(&[1.0f32, 1.0, -1.0, -1.0, 1.0, 1.0, -1.0, -1.0]).view([4, 2]);
    let (_, v, c) = terms(&x, &x);
    assert!(close(c, 32.0 / 9.0), "{c}");
    assert!(close(v, 0.0));
}

#[test]
fn loss_weighs_the_terms() {
    let x = columns(0.5);
    let y = &x.flip([0i64].as_slice()) + 0.2;
    let (s, v, c) = terms(&x, &y);
    assert!(s > 0.0 && v > 0.0);
    let coeffs = VicRegCoeffs {
        sim: 2.0,
        std: 3.0,
        cov: 5.0,
    };
    let got = vicreg_loss(&x, &y, coeffs).unwrap().double_value(&[]);
    assert!(close(got, 2.0 * s + 3.0 * v + 5.0 * c), "{got}");
    let default = vicreg_loss(&x, &y, VicRegCoeffs::default())
        .unwrap()
        .double_value(&[]);
    assert!(close(default, 25.0 * s + 25.0 * v + c), "{default}");
}

#[test]
fn loss_rejects_bad_shapes_and_single_samples() {
    let x = columns(1.0);
    assert!(vicreg_terms(&x, &x.narrow(1, 0, 1)).is_err());
    let e = vicreg_terms(&x.narrow(0, 0, 1), &x.narrow(0, 0, 1)).unwrap_err();
    assert!(e.message().contains("at least 2"), "{e}");
}

#[test]
fn parameters_and_their_errors() {
    let v = vicreg("{}");
    assert_eq!(
        v.coeffs(),
        VicRegCoeffs {
            sim: 25.0,
            std: 25.0,
            cov: 1.0
        }
    );
    assert_eq!(
        find(&v.state(), "projector.6.weight").size(),
        [8192, 8192],
        "the paper's expander by default"
    );
    let v = vicreg(r#"{"projector_dims": [16], "sim_coeff": 1, "std_coeff": 2, "cov_coeff": 3}"#);
    assert_eq!(
        v.coeffs(),
        VicRegCoeffs {
            sim: 1.0,
            std: 2.0,
            cov: 3.0
        }
    );
    for (bad, name) in [
        (r#"{"sim_coeff": -1}"#, "sim_coeff"),
        (r#"{"std_coeff": "x"}"#, "std_coeff"),
        (r#"{"cov_coeff": -0.5}"#, "cov_coeff"),
        (r#"{"projector_dims": [0]}"#, "projector_dims"),
        (r#"{"sim_coef": 1}"#, "`sim_coef`"),
    ] {
        let e = VicReg::from_encoder(
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
    let v = vicreg(SMALL);
    let params = v.parameters();
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
            ("projector.0.bias", false),
            ("projector.1.weight", false),
            ("projector.1.bias", false),
            ("projector.3.weight", true),
            ("projector.3.bias", false),
            ("projector.4.weight", false),
            ("projector.4.bias", false),
            ("projector.6.weight", true),
        ]
    );
    assert!(params.iter().all(|p| p.lars_adaptation == p.weight_decay));
    let state = v.state();
    assert_eq!(find(&state, "projector.6.weight").size(), [10, 12]);
    assert_eq!(
        names(&state)[13..],
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
fn a_step_trains_encoder_and_expander() {
    let mut v = vicreg(SMALL);
    let before = snapshot(&v.state());
    let loss = v.training_loss(&views()).unwrap();
    assert!(loss.requires_grad() && loss.double_value(&[]).is_finite());
    let params: Vec<Tensor> = v.parameters().into_iter().map(|p| p.tensor).collect();
    sgd_step(&loss, &params, 0.1);
    let after = v.state();
    for name in [
        "encoder.fc.weight",
        "projector.0.weight",
        "projector.6.weight",
        "projector.4.running_var",
    ] {
        assert!(!find(&after, name).equal(find(&before, name)), "{name}");
    }
}

#[test]
fn validation_is_in_eval_mode_without_gradients() {
    let mut v = vicreg(SMALL);
    let before = snapshot(&v.state());
    let batch = views();
    let loss = v.validation_loss(&batch).unwrap();
    assert!(!loss.requires_grad());
    for (name, old) in &before {
        assert!(find(&v.state(), name).equal(old), "{name} changed");
    }
    let x = v.project(&batch[0], false).unwrap();
    let y = v.project(&batch[1], false).unwrap();
    let want = vicreg_loss(&x, &y, v.coeffs()).unwrap().double_value(&[]);
    assert!((loss.double_value(&[]) - want).abs() < 1e-5);
}

#[test]
fn embeddings_come_from_the_encoder_and_views_are_checked() {
    let mut v = vicreg(SMALL);
    assert_eq!(v.embedding_dim(), DIM);
    assert_eq!(v.embedding_encoder_prefix(), "encoder.");
    let e = v.embed(&views()[0], false).unwrap();
    assert_eq!(e.size(), [BATCH, DIM]);
    assert!(!e.requires_grad());
    let batch = views();
    let e = v.training_loss(&batch[..1]).unwrap_err();
    assert!(e.message().contains("exactly 2"), "{e}");
}

#[test]
fn shapes_debug_epoch_through_the_binary() {
    let out = TempDir::new("vicreg_debug_run");
    let run = debug_run::debug_epoch(
        "ShapesVICReg",
        out.path(),
        &["--algorithm_params.projector_dims=[64,64,64]"],
    );
    for name in [
        "vicreg/train/loss",
        "vicreg/val/loss",
        "vicreg/learning_rate",
        "ssl_online_evaluator/val/AccuracyAtThreshold05",
    ] {
        let value = run.metrics[&(0, name.to_string())];
        assert!(value.is_finite(), "{name} = {value}");
    }
    assert!(run.metrics[&(0, "vicreg/train/loss".to_string())] > 0.0);
    for line in [
        "ssl_training_type = \"VICReg\"",
        "optimizer = \"lars\"",
        "projector_dims = [64, 64, 64]",
    ] {
        assert!(run.config.contains(line), "{line} missing:\n{}", run.config);
    }
    assert_eq!(
        run.checkpoint["algorithm.projector.6.weight"].size(),
        [64, 64]
    );
    assert!(run.checkpoint.contains_key("algorithm.projector.3.bias"));
    assert!(
        run.checkpoint
            .contains_key("optimizer.optimizer.projector.0.weight.momentum_buffer"),
        "LARS (momentum) state missing from the checkpoint"
    );
}
