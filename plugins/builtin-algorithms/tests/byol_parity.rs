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
    assert_matches, get, is_buffer, rel_diff, resnet18_spec, Check, Reference, GRAD_TOL,
};
use ssl_builtin_algorithms::byol::{tau, Byol, TAU_STATE_NAME};
use ssl_plugin_api::tch::{Device, Tensor};
use ssl_plugin_api::{Params, SslAlgorithm};

/// Our BYOL around two registered `resnet18` encoders, built as the host builds it.
fn our_byol() -> Byol {
    Byol::new(&Params::default(), &resnet18_spec(), Device::Cpu).expect("BYOL")
}

#[test]
fn byol_step_matches_pytorch() {
    let reference = Reference::run("byol_reference.py", "byol_parity", &[]);
    let expected = &reference.expected;
    let mut check = Check::default();

    // 1. Same tensors, same names.
    let mut byol = our_byol();
    let state: Vec<(String, Tensor)> = byol
        .state()
        .into_iter()
        .filter(|(n, _)| n != TAU_STATE_NAME)
        .collect();
    reference.load_into(&state);

    // 2. Loss and gradients.
    check.training_loss(&mut byol, &reference.views(&["v1", "v2"]), expected);
    let params = byol.parameters();
    let parts = ["online.encoder.", "online.projector.", "online.predictor."];
    check.gradients(&params, expected, &parts, &[]);

    // 3. BatchNorm running statistics after the forward (both networks updated twice).
    check.running_statistics(&byol.state(), expected, &["online.", "target."]);

    // 4. Weight-decay groups: the original's substring rule on the online parameter names.
    check.decay_group(&params, &reference.decay_names());

    // 5. One Adam step from the reference gradients, then the moving average.
    check.adam_step(
        "online parameters after Adam (reference gradients)",
        &params,
        expected,
    );

    let max_steps = 10;
    byol.after_optimizer_step(1, max_steps).expect("EMA");
    let after = byol.state();
    check.parameters_after(
        "target parameters after the moving average (tau 0.99)",
        &after,
        "target.",
        "after_ema",
        expected,
    );
    let target_buffers = after
        .iter()
        .filter(|(n, _)| n.starts_with("target.") && is_buffer(n))
        .map(|(n, t)| {
            let r = get(expected, &format!("after_forward.{n}")).shallow_clone();
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

    assert_matches("BYOL", check.failures);
}
