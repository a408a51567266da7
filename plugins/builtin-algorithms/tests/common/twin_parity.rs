//! The parity check shared by `barlow_twins_parity.rs` and `vicreg_parity.rs`: algorithms made
//! of an encoder and a projector, trained on two views with a loss of batch statistics.
//!
//! The reference script writes the initial tensors, the views and the results of one training
//! step (see `barlow_twins_reference.py`); [`compare_with_reference`] loads the same tensors
//! into ours by name and compares the loss, every gradient, the BatchNorm running statistics
//! after the forward, the validation loss in evaluation mode right after (same running
//! statistics, no step), and the weight-decay and LARS groups by name (every tensor of two or
//! more dimensions, the papers' `exclude_bias_and_norm`). The optimizer step itself is the
//! host's (`host::optim::lars`, tested there) and not reachable from a plugin crate.

use crate::common::parity::{get, Check, Reference, GRAD_TOL};
use ssl_plugin_api::SslAlgorithm;

/// The projector sizes of the references (small, all different, so that a transposed or
/// swapped tensor shows in the shapes).
pub const PROJECTOR_DIMS: &str = "[96, 80, 64]";

/// Runs `script` (optionally with `mutation`) and one training step of `algorithm` on its
/// tensors; returns every difference over tolerance. `zero_gradients` are the parameters whose
/// gradient vanishes in exact arithmetic (a Linear bias before a training-mode BatchNorm).
pub fn compare_with_reference(
    algorithm: &mut dyn SslAlgorithm,
    script: &str,
    mutation: Option<&str>,
    zero_gradients: &[&str],
) -> Vec<String> {
    let label = format!(
        "{}_{}",
        script.trim_end_matches(".py"),
        mutation.unwrap_or("plain")
    );
    let reference = Reference::run(script, &label, mutation.as_slice());
    let expected = &reference.expected;
    let mut check = Check::default();

    // 1. Same tensors, same names.
    reference.load_into(&algorithm.state());

    // 2. Loss and gradients.
    let views = reference.views(&["v1", "v2"]);
    check.training_loss(algorithm, &views, expected);
    let params = algorithm.parameters();
    let parts = ["encoder.", "projector."];
    check.gradients(&params, expected, &parts, zero_gradients);

    // 3. BatchNorm running statistics after the forward (each updated twice, v1 then v2).
    check.running_statistics(&algorithm.state(), expected, &parts);

    // 4. The validation loss right after (evaluation mode, the running statistics above).
    let val = algorithm.validation_loss(&views).expect("validation loss");
    assert!(!val.requires_grad(), "the validation loss tracks gradients");
    check.value(
        "validation loss (evaluation mode)",
        val.double_value(&[]),
        get(expected, "val_loss").double_value(&[0]),
        GRAD_TOL,
    );

    // 5. Weight decay and LARS adaptation: every tensor of two or more dimensions.
    check.decay_group(&params, &reference.decay_names());
    let lars: Vec<&str> = params
        .iter()
        .filter(|p| p.lars_adaptation != p.weight_decay)
        .map(|p| p.name.as_str())
        .collect();
    if !lars.is_empty() {
        check.failures.push(format!(
            "LARS adaptation differs from weight decay on {lars:?}"
        ));
    }

    check.failures
}
