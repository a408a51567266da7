//! BYOL: loss, initial equality of the networks, moving average, tau schedule, names and
//! optimizer hints (after InnerEye's `test_byol_module.py` and `test_byol_moving_average.py`).

mod common;

use common::{find, max_abs_diff, names, sgd_step, snapshot, views, TinyEncoder, BATCH};
use ssl_builtin_algorithms::byol::{cosine_loss, tau, Byol, INITIAL_TAU, TAU_STATE_NAME};
use ssl_plugin_api::tch::{Device, Kind, Tensor};
use ssl_plugin_api::{Params, SslAlgorithm};
use std::f64::consts::PI;

const DIM: i64 = 8;

fn byol() -> Byol {
    Byol::from_encoders(
        &Params::default(),
        TinyEncoder::boxed(DIM),
        TinyEncoder::boxed(DIM),
        Device::Cpu,
    )
    .unwrap()
}

fn value(t: &Tensor) -> f64 {
    t.double_value(&[])
}

#[test]
fn cosine_loss_of_identical_vectors_is_minus_one() {
    let a = Tensor::randn([4, 5], (Kind::Float, Device::Cpu));
    assert!((value(&cosine_loss(&a, &a).unwrap()) + 1.0).abs() < 1e-6);
    // Opposite directions: +1.
    assert!((value(&cosine_loss(&a, &(-&a)).unwrap()) - 1.0).abs() < 1e-6);
}

#[test]
fn cosine_loss_of_orthogonal_vectors_is_zero() {
    let a = Tensor::from_slice(&[0f32, 1., 0., 1., 0.]).view([1, 5]);
    let b = Tensor::from_slice(&[1f32, 0., 1., 0., 1.]).view([1, 5]);
    assert_eq!(value(&cosine_loss(&a, &b).unwrap()), 0.0);
}

#[test]
fn cosine_loss_averages_rows_and_ignores_lengths() {
    // Row cosines 1 and 1/sqrt(2); lengths must not matter.
    let a = Tensor::from_slice(&[3f32, 0., 1., 1.]).view([2, 2]);
    let b = Tensor::from_slice(&[0.5f32, 0., 0., 7.]).view([2, 2]);
    let expected = -(1.0 + 0.5f64.sqrt()) / 2.0;
    assert!((value(&cosine_loss(&a, &b).unwrap()) - expected).abs() < 1e-6);
    assert!(cosine_loss(&a, &b.view([1, 4])).is_err());
}

#[test]
fn online_and_target_are_equal_at_init() {
    let byol = byol();
    let state = byol.state();
    let mut compared = 0;
    for (name, tensor) in &state {
        if let Some(rest) = name.strip_prefix("online.") {
            if rest.starts_with("predictor.") {
                continue;
            }
            let target = find(&state, &format!("target.{rest}"));
            assert!(tensor.equal(target), "{name} differs from its target");
            compared += 1;
        }
    }
    // fc.{weight,bias}, bn1.{weight,bias,running_mean,running_var}, projector: 5 + 2.
    assert_eq!(compared, 13);
    // Copies, not shared storage: moving the online network leaves the target alone.
    let mut w = find(&state, "online.encoder.fc.weight").shallow_clone();
    let _ = ssl_plugin_api::tch::no_grad(|| w.f_add_scalar_(1.0).unwrap());
    assert!(!w.equal(find(&state, "target.encoder.fc.weight")));
}

#[test]
fn the_target_has_no_predictor() {
    let byol = byol();
    let state = names(&byol.state());
    assert!(state.iter().any(|n| n.starts_with("online.predictor.")));
    assert!(!state.iter().any(|n| n.starts_with("target.predictor.")));
}

#[test]
fn tau_follows_the_cosine_schedule() {
    // InnerEye's test: 300 images, batch 20, 5 epochs = 75 steps, global step 15.
    let expected = 1.0 - 0.01 * ((PI * 15.0 / 75.0).cos() + 1.0) / 2.0;
    assert_eq!(tau(0.99, 15, 75), expected);
    assert!((tau(0.99, 0, 75) - 0.99).abs() < 1e-15);
    assert!((tau(0.99, 75, 75) - 1.0).abs() < 1e-15);
}

#[test]
fn moving_average_with_tau_point_nine() {
    let mut byol = byol();
    // Make the online network differ from the target first, parameters and buffers (a second
    // forward after the step moves the two BatchNorms' statistics differently).
    let loss = byol.training_loss(&views()).unwrap();
    let params: Vec<Tensor> = byol.parameters().into_iter().map(|p| p.tensor).collect();
    sgd_step(&loss, &params, 0.5);
    let _ = byol.training_loss(&views()).unwrap();

    let state = byol.state();
    assert!(!find(&state, "online.encoder.bn1.running_mean")
        .equal(find(&state, "target.encoder.bn1.running_mean")));
    let mut tau_tensor = find(&state, TAU_STATE_NAME).shallow_clone();
    let _ = tau_tensor.fill_(0.9);
    let before = snapshot(&state);
    byol.after_optimizer_step(1, 10).unwrap();
    let after = byol.state();

    let mut checked = 0;
    for (name, old) in &before {
        let Some(rest) = name.strip_prefix("target.") else {
            continue;
        };
        let new = find(&after, name);
        if rest.contains("running_") {
            // Buffers are not averaged.
            assert!(new.equal(old), "{name} changed");
            continue;
        }
        let online = find(&before, &format!("online.{rest}"));
        let expected = old * 0.9 + online * 0.1;
        assert!(max_abs_diff(new, &expected) < 1e-6, "{name}");
        // A tensor whose online copy barely moved may round back to its old value (the
        // encoder's last bias gets ~0 gradient: the projector's BatchNorm removes a constant
        // shift), so "moved" is asserted only where the online copy moved measurably.
        assert!(
            !new.equal(old) || max_abs_diff(old, online) < 1e-5,
            "{name} did not move"
        );
        checked += 1;
    }
    assert_eq!(checked, 9);
    // The online network is untouched.
    for (name, old) in before.iter().filter(|(n, _)| n.starts_with("online.")) {
        assert!(find(&after, name).equal(old), "{name} changed");
    }
    // `byol/tau` reports the tau of the next update.
    assert_eq!(
        byol.scalars().unwrap(),
        [("byol/tau".to_string(), tau(0.99, 1, 10))]
    );
    assert_eq!(byol.current_tau().unwrap(), tau(0.99, 1, 10));
}

#[test]
fn first_update_uses_initial_tau_then_the_schedule() {
    let mut byol = byol();
    assert_eq!(
        byol.scalars().unwrap(),
        [("byol/tau".to_string(), INITIAL_TAU)]
    );
    let max_steps = 7;
    let mut used = Vec::new();
    for step in 1..=4 {
        // The host logs `byol/tau` before each update: the tau that update uses.
        used.push(byol.scalars().unwrap()[0].1);
        byol.after_optimizer_step(step, max_steps).unwrap();
    }
    assert_eq!(
        used,
        [0.99, tau(0.99, 1, 7), tau(0.99, 2, 7), tau(0.99, 3, 7)]
    );
    assert_eq!(byol.current_tau().unwrap(), tau(0.99, 4, 7));
    assert!(byol.after_optimizer_step(5, 0).is_err());
}

#[test]
fn tau_lives_in_the_state_as_a_double_scalar() {
    let byol = byol();
    let state = byol.state();
    let t = find(&state, TAU_STATE_NAME);
    assert_eq!(t.kind(), Kind::Double);
    assert_eq!(t.size(), Vec::<i64>::new());
    assert_eq!(t.double_value(&[]), 0.99);
    // A checkpoint restore writes into it in place; the next update uses the restored value.
    let mut t = t.shallow_clone();
    t.copy_(&Tensor::from(0.995f64));
    assert_eq!(byol.current_tau().unwrap(), 0.995);
    assert_eq!(byol.scalars().unwrap()[0].1, 0.995);
}

#[test]
fn gradient_step_moves_the_online_encoder_only() {
    let mut byol = byol();
    let before = snapshot(&byol.state());
    let loss = byol.training_loss(&views()).unwrap();
    assert!(loss.requires_grad());
    let params: Vec<Tensor> = byol.parameters().into_iter().map(|p| p.tensor).collect();
    sgd_step(&loss, &params, 0.1);
    let after = byol.state();
    for name in [
        "online.encoder.fc.weight",
        "online.projector.model.0.weight",
        "online.predictor.model.3.weight",
    ] {
        assert!(!find(&after, name).equal(find(&before, name)), "{name}");
    }
    for name in [
        "target.encoder.fc.weight",
        "target.projector.model.0.weight",
    ] {
        assert!(find(&after, name).equal(find(&before, name)), "{name}");
    }
}

#[test]
fn loss_is_in_range_and_training_updates_both_batchnorms() {
    let mut byol = byol();
    let before = snapshot(&byol.state());
    let loss = value(&byol.training_loss(&views()).unwrap());
    assert!((-1.0..=1.0).contains(&loss), "{loss}");
    let after = byol.state();
    // The target runs in training mode too: its BatchNorm statistics move.
    for name in [
        "online.encoder.bn1.running_mean",
        "target.encoder.bn1.running_mean",
        "target.projector.model.1.running_var",
        "online.predictor.model.1.running_mean",
    ] {
        assert!(!find(&after, name).equal(find(&before, name)), "{name}");
    }
}

#[test]
fn the_target_sees_both_views_in_training_mode_like_the_online_network() {
    // Identical networks, same views, both in training mode: the BatchNorm statistics of the
    // target move exactly as the online ones.
    let mut byol = byol();
    let _ = byol.training_loss(&views()).unwrap();
    let state = byol.state();
    for rest in [
        "encoder.bn1.running_mean",
        "encoder.bn1.running_var",
        "projector.model.1.running_mean",
        "projector.model.1.running_var",
    ] {
        let online = find(&state, &format!("online.{rest}"));
        let target = find(&state, &format!("target.{rest}"));
        assert!(max_abs_diff(online, target) < 1e-6, "{rest}");
    }
}

#[test]
fn validation_is_in_eval_mode_without_gradients() {
    let mut byol = byol();
    let before = snapshot(&byol.state());
    let loss = byol.validation_loss(&views()).unwrap();
    assert!(!loss.requires_grad());
    assert!((-1.0..=1.0).contains(&value(&loss)));
    for (name, old) in &before {
        assert!(find(&byol.state(), name).equal(old), "{name} changed");
    }
}

#[test]
fn parameters_are_the_online_network_with_the_original_hints() {
    let byol = byol();
    let params = byol.parameters();
    let list: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        list,
        [
            "online.encoder.fc.weight",
            "online.encoder.fc.bias",
            "online.encoder.bn1.weight",
            "online.encoder.bn1.bias",
            "online.projector.model.0.weight",
            "online.projector.model.1.weight",
            "online.projector.model.1.bias",
            "online.projector.model.3.weight",
            "online.projector.model.3.bias",
            "online.predictor.model.0.weight",
            "online.predictor.model.1.weight",
            "online.predictor.model.1.bias",
            "online.predictor.model.3.weight",
            "online.predictor.model.3.bias",
        ]
    );
    let hint = |name: &str| {
        let p = params.iter().find(|p| p.name == name).unwrap();
        assert_eq!(p.weight_decay, p.lars_adaptation, "{name}");
        p.weight_decay
    };
    // The original's substring rule: "bias" or "bn" excluded, nothing else.
    assert!(hint("online.projector.model.1.weight"));
    assert!(hint("online.encoder.fc.weight"));
    assert!(hint("online.predictor.model.0.weight"));
    assert!(!hint("online.encoder.bn1.weight"));
    assert!(!hint("online.encoder.bn1.bias"));
    assert!(!hint("online.encoder.fc.bias"));
    assert!(!hint("online.projector.model.1.bias"));
    assert!(params.iter().all(|p| p.tensor.requires_grad()));
}

#[test]
fn hints_use_the_plain_substring_rule_for_any_encoder() {
    // Unlike TrainableParam::with_default_hints, the original excludes only "bias" and "bn":
    // DenseNet's `norm*` and ResNet's `downsample.1` BatchNorm weights get weight decay.
    for bn_name in ["norm0", "layer1.0.downsample.1"] {
        let byol = Byol::from_encoders(
            &Params::default(),
            Box::new(TinyEncoder::with_bn_name(DIM, bn_name, Device::Cpu)),
            Box::new(TinyEncoder::with_bn_name(DIM, bn_name, Device::Cpu)),
            Device::Cpu,
        )
        .unwrap();
        let params = byol.parameters();
        let hint = |name: String| {
            let p = params.iter().find(|p| p.name == name).unwrap();
            (p.weight_decay, p.lars_adaptation)
        };
        assert_eq!(
            hint(format!("online.encoder.{bn_name}.weight")),
            (true, true)
        );
        assert_eq!(
            hint(format!("online.encoder.{bn_name}.bias")),
            (false, false)
        );
    }
}

#[test]
fn shapes_of_the_heads() {
    let byol = byol();
    let state = byol.state();
    let shape = |n: &str| find(&state, n).size();
    assert_eq!(shape("online.projector.model.0.weight"), [2048, DIM]);
    assert_eq!(shape("online.projector.model.1.running_mean"), [2048]);
    assert_eq!(shape("online.projector.model.3.weight"), [128, 2048]);
    assert_eq!(shape("online.projector.model.3.bias"), [128]);
    assert_eq!(shape("online.predictor.model.0.weight"), [128, 128]);
    assert_eq!(shape("online.predictor.model.3.weight"), [128, 128]);
    assert_eq!(shape("target.projector.model.3.weight"), [128, 2048]);
}

#[test]
fn state_names_are_unique_and_complete() {
    let byol = byol();
    let list = names(&byol.state());
    let mut unique = list.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), list.len());
    // 14 online params + 2 encoder + 2 projector + 2 predictor buffers, 9 target params +
    // 4 target buffers, tau.
    assert_eq!(list.len(), 14 + 6 + 9 + 4 + 1);
    for name in [
        "online.encoder.bn1.running_var",
        "online.projector.model.1.running_mean",
        "online.predictor.model.1.running_var",
        "target.encoder.fc.weight",
        "target.encoder.bn1.running_mean",
        "target.projector.model.1.weight",
        "target.projector.model.1.running_var",
        TAU_STATE_NAME,
    ] {
        assert!(
            list.iter().any(|n| n == name),
            "{name} missing from {list:?}"
        );
    }
}

#[test]
fn embeddings_come_from_the_target_encoder() {
    let mut byol = byol();
    assert_eq!(byol.embedding_dim(), DIM);
    assert_eq!(byol.embedding_encoder_prefix(), "target.encoder.");
    let v = Tensor::rand([BATCH, 3, 4, 4], (Kind::Float, Device::Cpu));
    let before = byol.embed(&v, false).unwrap();
    assert!(!before.requires_grad());
    // Changing the online encoder does not change the embeddings; changing the target does.
    let state = byol.state();
    let _ = ssl_plugin_api::tch::no_grad(|| {
        find(&state, "online.encoder.fc.weight")
            .shallow_clone()
            .f_mul_scalar_(2.0)
            .unwrap()
    });
    assert!(byol.embed(&v, false).unwrap().equal(&before));
    let _ = ssl_plugin_api::tch::no_grad(|| {
        find(&state, "target.encoder.fc.weight")
            .shallow_clone()
            .f_mul_scalar_(2.0)
            .unwrap()
    });
    assert!(!byol.embed(&v, false).unwrap().equal(&before));
}

#[test]
fn wrong_number_of_views_is_an_error() {
    let mut byol = byol();
    let v = views();
    for n in [0, 1, 3] {
        let list: Vec<Tensor> = (0..n).map(|i| v[i % 2].copy()).collect();
        let e = byol.training_loss(&list).unwrap_err();
        assert!(e.message().contains("exactly 2"), "{e}");
        assert!(byol.validation_loss(&list).is_err());
    }
    let uneven = [v[0].copy(), v[1].narrow(0, 0, BATCH - 1)];
    assert!(byol.training_loss(&uneven).is_err());
}

#[test]
fn unknown_parameters_are_rejected_by_name() {
    let params = Params::from_json(r#"{"tau": 0.9, "ema": 1}"#).unwrap();
    let e = Byol::from_encoders(
        &params,
        TinyEncoder::boxed(DIM),
        TinyEncoder::boxed(DIM),
        Device::Cpu,
    )
    .err()
    .expect("unknown parameters accepted");
    assert!(e.message().contains("`tau`"), "{e}");
    assert!(e.message().contains("`ema`"), "{e}");
}

#[test]
fn encoders_of_different_shapes_are_rejected() {
    assert!(Byol::from_encoders(
        &Params::default(),
        TinyEncoder::boxed(DIM),
        TinyEncoder::boxed(DIM + 1),
        Device::Cpu,
    )
    .is_err());
}
