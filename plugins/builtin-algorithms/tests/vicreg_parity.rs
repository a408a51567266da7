//! Parity of one VICReg training step with a PyTorch implementation of the paper, gradient for
//! gradient.
//!
//! `vicreg_reference.py` (run with `<workspace>/.deps/torch-venv/bin/python`) builds VICReg in
//! PyTorch from the paper's formulas with the official code's weighting (torchvision ResNet-18
//! without `fc`, an expander 96-80-64 whose hidden Linear layers have biases, coefficients
//! 25 / 25 / 1, the variance term averaged over the two views and the covariance term summed)
//! and writes its initial tensors, two view batches and the results of one step. This test
//! loads the same tensors into our [`VicReg`] (built through the registered `resnet18` encoder
//! with `cifar_stem = false`, as the host builds it, with default coefficients) and compares the
//! loss, every gradient, the running statistics, the validation loss in evaluation mode and the
//! weight-decay / LARS groups (see `common/twin_parity.rs`).
//!
//! `vicreg_parity_detects_mutations` (ignored by default; run with `--ignored`) checks that the
//! comparison fails when the reference uses the biased variance in the variance term, sums the
//! two views' variance terms (the paper's equation) instead of averaging them (the official
//! code), or keeps the diagonal in the covariance term.

mod common;
#[path = "common/twin_parity.rs"]
mod twin_parity;

use common::parity::{assert_matches, assert_mutations_noticed, resnet18_spec};
use ssl_builtin_algorithms::vicreg::{VicReg, VicRegCoeffs};
use ssl_plugin_api::tch::Device;
use ssl_plugin_api::Params;
use twin_parity::{compare_with_reference, PROJECTOR_DIMS};

const SCRIPT: &str = "vicreg_reference.py";

/// Gradients that vanish in exact arithmetic: the expander's hidden Linear biases are followed
/// by training-mode BatchNorms, which subtract the batch mean.
const ZERO_GRADIENTS: [&str; 2] = ["projector.0.bias", "projector.3.bias"];

/// Our VICReg as the host builds it, with the reference's expander and our defaults.
fn ours() -> VicReg {
    let params = Params::from_json(&format!(r#"{{"projector_dims": {PROJECTOR_DIMS}}}"#)).unwrap();
    let algorithm = VicReg::new(&params, &resnet18_spec(), Device::Cpu).expect("VICReg");
    assert_eq!(algorithm.coeffs(), VicRegCoeffs::default());
    algorithm
}

#[test]
fn vicreg_step_matches_pytorch() {
    assert_matches(
        "VICReg",
        compare_with_reference(&mut ours(), SCRIPT, None, &ZERO_GRADIENTS),
    );
}

/// The comparison is sharp enough to notice the biased variance, the variance terms summed
/// over the views, or the covariance term with its diagonal.
#[test]
#[ignore = "runs the reference three more times; a check of the parity test itself"]
fn vicreg_parity_detects_mutations() {
    assert_mutations_noticed(
        &["biased_variance", "std_summed", "cov_with_diagonal"],
        |mutation| compare_with_reference(&mut ours(), SCRIPT, Some(mutation), &ZERO_GRADIENTS),
    );
}
