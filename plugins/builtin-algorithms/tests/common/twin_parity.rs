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

use crate::common::parity::{
    get, is_buffer, load, max_abs, rel_diff, run_reference, within, Check, TempDir, GRAD_TOL,
    LOSS_TOL,
};
use ssl_plugin_api::host::builtin_plugins;
use ssl_plugin_api::tch;
use ssl_plugin_api::{EncoderSpec, Params, SslAlgorithm};
use std::collections::BTreeSet;

/// The projector sizes of the references (small, all different, so that a transposed or
/// swapped tensor shows in the shapes).
pub const PROJECTOR_DIMS: &str = "[96, 80, 64]";

/// The registered `resnet18` encoder with `cifar_stem = false` (the references' torchvision
/// ResNet-18), as the host builds it.
pub fn resnet18_spec() -> EncoderSpec {
    ssl_builtin_algorithms::link();
    ssl_builtin_encoders::link();
    let plugins = builtin_plugins().expect("builtin plugins");
    let factory = plugins
        .iter()
        .flat_map(|p| p.encoders.iter())
        .find(|e| e.name() == "resnet18")
        .expect("encoder resnet18 not registered")
        .clone();
    EncoderSpec {
        factory,
        params: Params::from_json(r#"{"cifar_stem": false}"#).unwrap(),
    }
}

fn compare_loss(check: &mut Check, what: &str, ours: f64, reference: f64, tol: f64) {
    let rel = (ours - reference).abs() / reference.abs().max(1e-12);
    println!(
        "{:<4} {what}: ours {ours:.9}, reference {reference:.9}, relative difference {rel:.3e}",
        if within(rel, tol) { "OK" } else { "FAIL" }
    );
    if !within(rel, tol) {
        check
            .failures
            .push(format!("{what} differs by {rel:.3e} (relative)"));
    }
}

/// Runs `script` (optionally with `mutation`) and one training step of `algorithm` on its
/// tensors; returns every difference over tolerance. `zero_gradients` are the parameters whose
/// gradient vanishes in exact arithmetic (a Linear bias before a training-mode BatchNorm).
pub fn compare_with_reference(
    algorithm: &mut dyn SslAlgorithm,
    script: &str,
    mutation: Option<&str>,
    zero_gradients: &[&str],
) -> Vec<String> {
    let dir = TempDir::new(&format!(
        "{}_{}",
        script.trim_end_matches(".py"),
        mutation.unwrap_or("plain")
    ));
    let extra_args: Vec<&str> = mutation.into_iter().collect();
    run_reference(script, dir.path(), &extra_args);
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
    let state = algorithm.state();
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
    let loss = algorithm.training_loss(&views).expect("training loss");
    compare_loss(
        &mut check,
        "loss",
        loss.double_value(&[]),
        get(&expected, "loss").double_value(&[0]),
        LOSS_TOL,
    );
    loss.backward();

    let params = algorithm.parameters();
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
    for part in ["encoder.", "projector."] {
        let group = grads
            .iter()
            .filter(|(n, _, _)| n.starts_with(part) && !zero_gradients.contains(&n.as_str()))
            .map(|(n, a, b)| (n.clone(), a.shallow_clone(), b.shallow_clone()))
            .collect();
        check.group(&format!("gradients {part}*"), group, rel_diff, GRAD_TOL);
    }
    // A Linear bias feeding a training-mode BatchNorm: zero in exact arithmetic, rounding noise
    // in both. Both must be negligible next to the layer's weight gradient.
    for &name in zero_gradients {
        let weight = name.replace(".bias", ".weight");
        let scale = max_abs(get(&expected, &format!("grad.{weight}")));
        let (_, ours, reference) = grads
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("no gradient `{name}`"));
        let d = max_abs(ours).max(max_abs(reference)) / scale;
        let ok = within(d, GRAD_TOL);
        println!(
            "{:<4} gradient `{name}` (zero in exact arithmetic): {d:.3e} of max |grad `{weight}`|",
            if ok { "OK" } else { "FAIL" }
        );
        if !ok {
            check.failures.push(format!(
                "gradient `{name}` should vanish: {d:.3e} of the weight gradient's scale"
            ));
        }
    }

    // 3. BatchNorm running statistics after the forward (each updated twice, v1 then v2).
    for part in ["encoder.", "projector."] {
        let group = algorithm
            .state()
            .into_iter()
            .filter(|(n, _)| n.starts_with(part) && is_buffer(n))
            .map(|(n, t)| {
                let r = get(&expected, &format!("after_forward.{n}")).shallow_clone();
                (n, t, r)
            })
            .collect();
        check.group(
            &format!("running statistics {part}* after the forward"),
            group,
            rel_diff,
            GRAD_TOL,
        );
    }

    // 4. The validation loss right after (evaluation mode, the running statistics above).
    let val = algorithm.validation_loss(&views).expect("validation loss");
    assert!(!val.requires_grad(), "the validation loss tracks gradients");
    compare_loss(
        &mut check,
        "validation loss (evaluation mode)",
        val.double_value(&[]),
        get(&expected, "val_loss").double_value(&[0]),
        GRAD_TOL,
    );

    // 5. Weight decay and LARS adaptation: every tensor of two or more dimensions.
    check.decay_group(&params, &decay_names);
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
