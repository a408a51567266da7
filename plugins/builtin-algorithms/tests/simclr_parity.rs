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

use common::parity::{
    get, is_buffer, load, max_abs, rel_diff, run_reference, within, Check, TempDir, GRAD_TOL,
};
use ssl_builtin_algorithms::simclr::{SimClr, DEFAULT_TEMPERATURE};
use ssl_plugin_api::host::builtin_plugins;
use ssl_plugin_api::tch::{self, Device};
use ssl_plugin_api::{EncoderSpec, Params, SslAlgorithm};
use std::collections::BTreeSet;

/// Gradients that vanish in exact arithmetic: the projection's first bias is followed by a
/// training-mode BatchNorm, which subtracts the batch mean.
const ZERO_GRADIENTS: [&str; 1] = ["projection.model.0.bias"];

/// Our SimCLR around the registered `resnet18` encoder, built as the host builds it (default
/// parameters, so the temperature is ours, not the test's).
fn our_simclr() -> SimClr {
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
    SimClr::new(&Params::default(), &spec, Device::Cpu).expect("SimCLR")
}

/// Runs the reference (optionally mutated) and one step of ours on its tensors; returns every
/// difference over tolerance.
fn compare_with_reference(mutation: Option<&str>) -> Vec<String> {
    let dir = TempDir::new(&format!("simclr_parity_{}", mutation.unwrap_or("plain")));
    let extra_args: Vec<&str> = mutation.into_iter().collect();
    run_reference("simclr_reference.py", dir.path(), &extra_args);
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
    let mut simclr = our_simclr();
    assert_eq!(simclr.temperature(), DEFAULT_TEMPERATURE);
    let state = simclr.state();
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
    let loss = simclr.training_loss(&views).expect("training loss");
    let ours_loss = loss.double_value(&[]);
    let ref_loss = get(&expected, "loss").double_value(&[0]);
    check.loss(ours_loss, ref_loss);
    loss.backward();

    let params = simclr.parameters();
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
    for part in ["encoder.", "projection."] {
        let group = grads
            .iter()
            .filter(|(n, _, _)| n.starts_with(part) && !ZERO_GRADIENTS.contains(&n.as_str()))
            .map(|(n, a, b)| (n.clone(), a.shallow_clone(), b.shallow_clone()))
            .collect();
        check.group(&format!("gradients {part}*"), group, rel_diff, GRAD_TOL);
    }
    // A Linear bias feeding a training-mode BatchNorm: zero in exact arithmetic, rounding noise
    // in both (its own max is no scale). Both must be negligible next to the layer's weight
    // gradient; a bias placed after the BatchNorm would be of that gradient's order.
    for name in ZERO_GRADIENTS {
        let weight = name.replace(".bias", ".weight");
        let scale = max_abs(get(&expected, &format!("grad.{weight}")));
        let (_, ours, reference) = grads
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("no gradient `{name}`"));
        let d = max_abs(ours).max(max_abs(reference)) / scale;
        let ok = within(d, GRAD_TOL);
        println!(
            "{:<4} gradient `{name}` (zero in exact arithmetic): max |ours|, |reference| = \
             {d:.3e} of max |grad `{weight}`| (tolerance {GRAD_TOL:.0e})",
            if ok { "OK" } else { "FAIL" }
        );
        if !ok {
            check.failures.push(format!(
                "gradient `{name}` should vanish: {d:.3e} of the weight gradient's scale"
            ));
        }
    }

    // 3. BatchNorm running statistics after the forward (each updated twice, v1 then v2).
    for part in ["encoder.", "projection."] {
        let group = simclr
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

    // 4. Weight decay: one group with every parameter (bolts' exclude_bn_bias=False). This
    // comparison of the names is the only reliable check of the grouping (step 5 hardly sees it).
    // The LARS hints are not checked: the original trains SimCLR with Adam, which ignores them.
    check.decay_group(&params, &decay_names);

    // 5. One Adam step from the reference gradients, applied with our decay hints. The host's
    // Adam (`host::optim::adam`) is not reachable from a plugin crate, so this is torch's
    // formula. It checks the update of every trainable parameter, not the decay grouping: at
    // decay 1e-6 the first step is about -lr * sign(g + 1e-6 * p), so the group matters only on
    // entries with |g| below about 1e-6 * |p| (see `adam_first_step`).
    check.adam_step(
        "parameters after Adam (reference gradients)",
        &params,
        &expected,
    );

    check.failures
}

#[test]
fn simclr_step_matches_pytorch() {
    let failures = compare_with_reference(None);
    assert!(
        failures.is_empty(),
        "SimCLR differs from the PyTorch reference:\n{}",
        failures.join("\n")
    );
}

/// The comparison is sharp enough to notice a wrong temperature, swapped views or a missing
/// self-similarity subtraction in the reference.
#[test]
#[ignore = "runs the reference three more times; a check of the parity test itself"]
fn simclr_parity_detects_mutations() {
    for mutation in ["temperature", "swap_views", "no_self_sub"] {
        println!("--- reference mutated: {mutation}");
        let failures = compare_with_reference(Some(mutation));
        assert!(
            !failures.is_empty(),
            "the parity test did not notice the mutation `{mutation}`"
        );
        println!("noticed: {} differences over tolerance", failures.len());
    }
}
