//! DINO: the last layer frozen in the first epoch and trained after it, driven directly through
//! `begin_epoch`; view checks; state names; and one debug epoch of `ShapesDINO` (2 global 32 px
//! + 2 local 16 px views) through the real binary.

mod common;
#[path = "common/debug_run.rs"]
mod debug_run;

use common::parity::TempDir;
use common::{find, snapshot, TinyEncoder, BATCH};
use ssl_builtin_algorithms::dino::{Dino, CENTER_STATE_NAME};
use ssl_plugin_api::tch::{self, Device, Kind, Tensor};
use ssl_plugin_api::{Params, SslAlgorithm};

const DIM: i64 = 8;
const LAST_V: &str = "student.head.last_layer.weight_v";

fn dino() -> Dino {
    Dino::from_encoders(
        &Params::from_json(r#"{"out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8}"#).unwrap(),
        TinyEncoder::boxed(DIM),
        TinyEncoder::boxed(DIM),
        Device::Cpu,
    )
    .unwrap()
}

/// 2 global + 2 local views (the tiny encoder takes one size, 4 px, for both).
fn four_views() -> Vec<Tensor> {
    (0..4)
        .map(|_| Tensor::rand([BATCH, 3, 4, 4], (Kind::Float, Device::Cpu)))
        .collect()
}

/// One training step as the host takes it: gradients reset to undefined, loss, backward, SGD
/// on the parameters whose gradient is defined, the after-step hook. Returns the names of the
/// parameters that had no gradient.
fn step(dino: &mut Dino, step: u64) -> Vec<String> {
    let params = dino.parameters();
    for p in &params {
        // As the host's zero_grad(set_to_none): an undefined gradient.
        let mut g = p.tensor.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
    let loss = dino.training_loss(&four_views()).unwrap();
    assert!(loss.double_value(&[]).is_finite());
    loss.backward();
    let mut without = Vec::new();
    tch::no_grad(|| {
        for p in &params {
            let g = p.tensor.grad();
            if g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0 {
                let _ = p.tensor.shallow_clone().f_sub_(&(g * 0.5)).unwrap();
            } else {
                without.push(p.name.clone());
            }
        }
    });
    dino.after_optimizer_step(step, 4).unwrap();
    without
}

#[test]
fn last_layer_is_frozen_in_epoch_0_and_trained_in_epoch_1() {
    let mut dino = dino();
    dino.begin_epoch(0, 2).unwrap();
    assert!(dino.last_layer_frozen());
    let before = snapshot(&dino.state());
    let without = step(&mut dino, 1);
    let after = dino.state();
    let change = |name: &str, a: &[(String, Tensor)], b: &[(String, Tensor)]| {
        (find(a, name) - find(b, name))
            .abs()
            .max()
            .double_value(&[])
    };
    assert_eq!(
        change(LAST_V, &after, &before),
        0.0,
        "last layer moved in epoch 0"
    );
    assert!(
        without.contains(&LAST_V.to_string()),
        "the frozen last layer got a gradient"
    );
    // The rest of the student did learn.
    assert!(change("student.head.mlp.0.weight", &after, &before) > 0.0);
    // The centre moved with the teacher's outputs.
    assert!(change(CENTER_STATE_NAME, &after, &before) > 0.0);

    dino.begin_epoch(1, 2).unwrap();
    assert!(!dino.last_layer_frozen());
    let before = snapshot(&dino.state());
    let without = step(&mut dino, 2);
    let after = dino.state();
    assert!(
        change(LAST_V, &after, &before) > 0.0,
        "last layer did not move in epoch 1"
    );
    assert!(!without.contains(&LAST_V.to_string()), "{without:?}");
    // g stays 1 (norm_last_layer): not a trainable parameter.
    assert!(dino
        .parameters()
        .iter()
        .all(|p| p.name != "student.head.last_layer.weight_g"));
    let g = find(&after, "student.head.last_layer.weight_g");
    assert_eq!((g - 1.0).abs().max().double_value(&[]), 0.0);
}

#[test]
fn teacher_temperature_follows_the_epoch() {
    let mut d = Dino::from_encoders(
        &Params::from_json(r#"{"out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8, "warmup_teacher_temp_epochs": 3}"#)
            .unwrap(),
        TinyEncoder::boxed(DIM),
        TinyEncoder::boxed(DIM),
        Device::Cpu,
    )
    .unwrap();
    for (epoch, want) in [(0, 0.04), (1, 0.055), (2, 0.07), (9, 0.07)] {
        d.begin_epoch(epoch, 10).unwrap();
        assert!((d.teacher_temp() - want).abs() < 1e-12, "epoch {epoch}");
    }
    let scalars = d.scalars().unwrap();
    assert!(scalars
        .iter()
        .any(|(n, v)| n == "dino/teacher_temp" && (*v - 0.07).abs() < 1e-12));
}

#[test]
fn views_are_checked() {
    let mut d = dino();
    let v = four_views();
    let e = d.training_loss(&v[..1]).unwrap_err().to_string();
    assert!(e.contains("at least 2 views"), "{e}");
    let odd = vec![
        v[0].shallow_clone(),
        Tensor::rand([BATCH - 1, 3, 4, 4], (Kind::Float, Device::Cpu)),
    ];
    let e = d.training_loss(&odd).unwrap_err().to_string();
    assert!(e.contains("global"), "{e}");
    // Validation moves neither the centre nor the teacher.
    let before = snapshot(&d.state());
    let l = d.validation_loss(&v).unwrap().double_value(&[]);
    assert!(l.is_finite());
    d.after_optimizer_step(1, 4).unwrap();
    assert_eq!(
        (find(&d.state(), CENTER_STATE_NAME) - find(&before, CENTER_STATE_NAME))
            .abs()
            .max()
            .double_value(&[]),
        0.0
    );
}

#[test]
fn shapes_debug_epoch_through_the_binary() {
    let out = TempDir::new("dino_debug_run");
    let run = debug_run::debug_epoch(
        "ShapesDINO",
        out.path(),
        &["--algorithm_params.out_dim=256"],
    );
    for name in [
        "dino/train/loss",
        "dino/val/loss",
        "dino/learning_rate",
        "ssl_online_evaluator/val/AccuracyAtThreshold05",
    ] {
        let value = run.metrics[&(0, name.to_string())];
        assert!(value.is_finite(), "{name} = {value}");
    }
    let loss = run.metrics[&(0, "dino/train/loss".to_string())];
    println!("ShapesDINO debug epoch: dino/train/loss = {loss}");
    assert!(loss > 0.0);
    for line in [
        "ssl_training_type = \"DINO\"",
        "gradient_clip_val = 3.0",
        "out_dim = 256",
        "size = 16",
    ] {
        assert!(run.config.contains(line), "{line} missing:\n{}", run.config);
    }
    assert_eq!(run.checkpoint["algorithm.dino.center"].size(), [1, 256]);
    assert_eq!(
        run.checkpoint["algorithm.student.head.last_layer.weight_v"].size(),
        [256, 128]
    );
}
