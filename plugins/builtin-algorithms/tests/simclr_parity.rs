//! Parity of one SimCLR training step with the original, gradient for gradient.
//!
//! `simclr_reference.py` (run with `<workspace>/.deps/torch-venv/bin/python`) builds InnerEye's
//! SimCLR in PyTorch (torchvision ResNet-18 without `fc`, `_Projection` with `F.normalize`,
//! pl_bolts 0.4.0's `nt_xent_loss` at temperature 0.1, Adam over every parameter with weight
//! decay 1e-6) and writes its initial tensors, two view batches and the results of one step.
//! This test loads the same tensors into our [`SimClr`] (built through the registered
//! `resnet18` encoder with `cifar_stem = false`, as the host builds it) and compares: the loss,
//! every gradient, the BatchNorm running statistics after the forward, the weight-decay group
//! by name (our decay hints against the original's single group of every parameter, bolts'
//! `exclude_bn_bias=False`; the only check of the grouping), and the parameters after one Adam
//! step fed the reference gradients (a plain torch-Adam written here, since the host's optimizer
//! is not reachable from a plugin). That step checks the update (learning rate, betas, eps) of
//! every trainable parameter, not the grouping: at decay 1e-6 Adam's first step is about
//! `-lr * sign(g + 1e-6 * p)`, which differs from the undecayed `-lr * sign(g)` only on entries
//! with `|g|` below about `1e-6 * |p|`, so a parameter in the wrong group shows there only by
//! chance.
//!
//! `simclr_parity_detects_mutations` (ignored by default; run with `--ignored`) checks that the
//! comparison fails when the reference uses another temperature, swapped views, or keeps the
//! self-similarity in the denominator.

mod common;

use common::parity::{assert_matches, assert_mutations_noticed, resnet18_spec, Check, Reference};
use ssl_builtin_algorithms::simclr::{SimClr, DEFAULT_TEMPERATURE};
use ssl_plugin_api::tch::Device;
use ssl_plugin_api::{Params, SslAlgorithm};

/// Gradients that vanish in exact arithmetic: the projection's first bias is followed by a
/// training-mode BatchNorm, which subtracts the batch mean.
const ZERO_GRADIENTS: [&str; 1] = ["projection.model.0.bias"];

/// Our SimCLR around the registered `resnet18` encoder, built as the host builds it (default
/// parameters, so the temperature is ours, not the test's).
fn our_simclr() -> SimClr {
    SimClr::new(&Params::default(), &resnet18_spec(), Device::Cpu).expect("SimCLR")
}

/// Runs the reference (optionally mutated) and one step of ours on its tensors; returns every
/// difference over tolerance.
fn compare_with_reference(mutation: Option<&str>) -> Vec<String> {
    let label = format!("simclr_parity_{}", mutation.unwrap_or("plain"));
    let reference = Reference::run("simclr_reference.py", &label, mutation.as_slice());
    let expected = &reference.expected;
    let mut check = Check::default();

    // 1. Same tensors, same names.
    let mut simclr = our_simclr();
    assert_eq!(simclr.temperature(), DEFAULT_TEMPERATURE);
    reference.load_into(&simclr.state());

    // 2. Loss and gradients.
    check.training_loss(&mut simclr, &reference.views(&["v1", "v2"]), expected);
    let params = simclr.parameters();
    let parts = ["encoder.", "projection."];
    check.gradients(&params, expected, &parts, &ZERO_GRADIENTS);

    // 3. BatchNorm running statistics after the forward (each updated twice, v1 then v2).
    check.running_statistics(&simclr.state(), expected, &parts);

    // 4. Weight decay: one group with every parameter (bolts' exclude_bn_bias=False). This
    // comparison of the names is the only reliable check of the grouping (step 5 hardly sees it).
    // The LARS hints are not checked: the original trains SimCLR with Adam, which ignores them.
    check.decay_group(&params, &reference.decay_names());

    // 5. One Adam step from the reference gradients, applied with our decay hints. The host's
    // Adam (`host::optim::adam`) is not reachable from a plugin crate, so this is torch's
    // formula. It checks the update of every trainable parameter, not the decay grouping: at
    // decay 1e-6 the first step is about -lr * sign(g + 1e-6 * p), so the group matters only on
    // entries with |g| below about 1e-6 * |p| (see `adam_first_step`).
    check.adam_step(
        "parameters after Adam (reference gradients)",
        &params,
        expected,
    );

    check.failures
}

#[test]
fn simclr_step_matches_pytorch() {
    assert_matches("SimCLR", compare_with_reference(None));
}

/// The comparison is sharp enough to notice a wrong temperature, swapped views or a missing
/// self-similarity subtraction in the reference.
#[test]
#[ignore = "runs the reference three more times; a check of the parity test itself"]
fn simclr_parity_detects_mutations() {
    assert_mutations_noticed(&["temperature", "swap_views", "no_self_sub"], |mutation| {
        compare_with_reference(Some(mutation))
    });
}
