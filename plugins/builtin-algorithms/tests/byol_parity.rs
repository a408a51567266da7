//! Parity of one BYOL training step with the original, gradient for gradient.
//!
//! `byol_reference.py` (run with `<workspace>/.deps/torch-venv/bin/python`) builds InnerEye's
//! BYOL in PyTorch (torchvision ResNet-18 without `fc`, `_MLP` projector and predictor, a
//! target network, the symmetric cosine loss, Adam with the original's two parameter groups and
//! the tau-0.99 moving average) and writes its initial tensors, two view batches and the results
//! of one step. This test loads the same tensors into our [`Byol`] (built through the registered
//! `resnet18` encoder with `cifar_stem = false`, as the host builds it) and compares:
//! the loss, every online gradient, the BatchNorm running statistics after the forward, the
//! weight-decay groups, the online parameters after one Adam step fed the reference gradients
//! (a plain torch-Adam written here, since the host's optimizer is not reachable from a plugin),
//! and the target parameters and buffers after `after_optimizer_step`.

mod common;

use common::parity::{
    get, is_buffer, load, max_abs_diff, rel_diff, run_reference, Check, TempDir, GRAD_TOL,
    PARAM_TOL,
};
use ssl_builtin_algorithms::byol::{tau, Byol, TAU_STATE_NAME};
use ssl_plugin_api::host::builtin_plugins;
use ssl_plugin_api::tch::{self, Device, Tensor};
use ssl_plugin_api::{EncoderSpec, Params, SslAlgorithm};
use std::collections::BTreeSet;

/// Our BYOL around two registered `resnet18` encoders, built as the host builds it.
fn our_byol() -> Byol {
    ssl_builtin_algorithms::link();
    ssl_builtin_encoders::link();
    let plugins = builtin_plugins().expect("builtin plugins");
    let factory = plugins
        .iter()
        .flat_map(|p| p.encoders.iter())
        .find(|e| e.name() == "resnet18")
        .expect("encoder resnet18 not registered")
        .clone();
    let spec = EncoderSpec {
        factory,
        params: Params::from_json(r#"{"cifar_stem": false}"#).unwrap(),
    };
    Byol::new(&Params::default(), &spec, Device::Cpu).expect("BYOL")
}

#[test]
fn byol_step_matches_pytorch() {
    let dir = TempDir::new("byol_parity");
    run_reference("byol_reference.py", dir.path(), &[]);
    let initial = load(&dir.path().join("initial.safetensors"));
    let views_file = load(&dir.path().join("views.safetensors"));
    let expected = load(&dir.path().join("expected.safetensors"));
    let decay_names: BTreeSet<String> = std::fs::read_to_string(dir.path().join("decay_names.txt"))
        .expect("decay_names.txt")
        .lines()
        .map(str::to_string)
        .collect();
    let mut check = Check::default();

    // 1. Same tensors, same names.
    let mut byol = our_byol();
    let state: Vec<(String, Tensor)> = byol
        .state()
        .into_iter()
        .filter(|(n, _)| n != TAU_STATE_NAME)
        .collect();
    let ours: BTreeSet<&str> = state.iter().map(|(n, _)| n.as_str()).collect();
    let theirs: BTreeSet<&str> = initial.keys().map(String::as_str).collect();
    assert_eq!(
        ours.difference(&theirs).collect::<Vec<_>>(),
        Vec::<&&str>::new(),
        "tensors of ours missing from the reference"
    );
    assert_eq!(
        theirs.difference(&ours).collect::<Vec<_>>(),
        Vec::<&&str>::new(),
        "tensors of the reference missing from ours"
    );
    tch::no_grad(|| {
        for (name, t) in &state {
            let src = get(&initial, name);
            assert_eq!(t.size(), src.size(), "`{name}`: shapes differ");
            t.shallow_clone().copy_(src);
        }
    });
    println!("loaded {} tensors by name", state.len());

    // 2. Loss and gradients.
    let views = [
        get(&views_file, "v1").shallow_clone(),
        get(&views_file, "v2").shallow_clone(),
    ];
    let loss = byol.training_loss(&views).expect("training loss");
    let ours_loss = loss.double_value(&[]);
    let ref_loss = get(&expected, "loss").double_value(&[0]);
    check.loss(ours_loss, ref_loss);
    loss.backward();

    let params = byol.parameters();
    let param_names: BTreeSet<String> = params.iter().map(|p| p.name.clone()).collect();
    let ref_grads: BTreeSet<String> = expected
        .keys()
        .filter_map(|k| k.strip_prefix("grad.").map(str::to_string))
        .collect();
    assert_eq!(param_names, ref_grads, "trainable parameters differ");
    let mut grads = Vec::new();
    for p in &params {
        let g = p.tensor.grad();
        assert!(g.defined(), "`{}` has no gradient", p.name);
        grads.push((
            p.name.clone(),
            g,
            get(&expected, &format!("grad.{}", p.name)).shallow_clone(),
        ));
    }
    for part in ["online.encoder.", "online.projector.", "online.predictor."] {
        let group = grads
            .iter()
            .filter(|(n, _, _)| n.starts_with(part))
            .map(|(n, a, b)| (n.clone(), a.shallow_clone(), b.shallow_clone()))
            .collect();
        check.group(&format!("gradients {part}*"), group, rel_diff, GRAD_TOL);
    }

    // 3. BatchNorm running statistics after the forward (both networks updated twice).
    for net in ["online.", "target."] {
        let group = byol
            .state()
            .into_iter()
            .filter(|(n, _)| n.starts_with(net) && is_buffer(n))
            .map(|(n, t)| {
                let r = get(&expected, &format!("after_forward.{n}")).shallow_clone();
                (n, t, r)
            })
            .collect();
        check.group(
            &format!("running statistics {net}* after the forward"),
            group,
            rel_diff,
            GRAD_TOL,
        );
    }

    // 4. Weight-decay groups: the original's substring rule on the online parameter names.
    check.decay_group(&params, &decay_names);

    // 5. One Adam step from the reference gradients, then the moving average.
    check.adam_step(
        "online parameters after Adam (reference gradients)",
        &params,
        &expected,
    );

    let max_steps = 10;
    byol.after_optimizer_step(1, max_steps).expect("EMA");
    let after = byol.state();
    let target_params = after
        .iter()
        .filter(|(n, _)| n.starts_with("target.") && !is_buffer(n))
        .map(|(n, t)| {
            let r = get(&expected, &format!("after_ema.{n}")).shallow_clone();
            (n.clone(), t.shallow_clone(), r)
        })
        .collect();
    check.group(
        "target parameters after the moving average (tau 0.99)",
        target_params,
        max_abs_diff,
        PARAM_TOL,
    );
    let target_buffers = after
        .iter()
        .filter(|(n, _)| n.starts_with("target.") && is_buffer(n))
        .map(|(n, t)| {
            let r = get(&expected, &format!("after_forward.{n}")).shallow_clone();
            (n.clone(), t.shallow_clone(), r)
        })
        .collect();
    check.group(
        "target running statistics untouched by the moving average",
        target_buffers,
        rel_diff,
        GRAD_TOL,
    );
    let next_tau = byol.current_tau().expect("tau");
    let want_tau = tau(0.99, 1, max_steps);
    println!(
        "{:<4} next tau {next_tau} (expected {want_tau})",
        if next_tau == want_tau { "OK" } else { "FAIL" }
    );
    if next_tau != want_tau {
        check
            .failures
            .push(format!("next tau {next_tau}, expected {want_tau}"));
    }

    assert!(
        check.failures.is_empty(),
        "BYOL differs from the PyTorch reference:\n{}",
        check.failures.join("\n")
    );
}
