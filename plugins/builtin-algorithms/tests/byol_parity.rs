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

use ssl_builtin_algorithms::byol::{tau, Byol, TAU_STATE_NAME};
use ssl_plugin_api::host::builtin_plugins;
use ssl_plugin_api::tch::{self, Device, Kind, Tensor};
use ssl_plugin_api::{EncoderSpec, Params, SslAlgorithm};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const LR: f64 = 1e-3;
const WEIGHT_DECAY: f64 = 1e-6;
const BETAS: (f64, f64) = (0.9, 0.999);
const ADAM_EPS: f64 = 1e-8;
/// Loss: relative difference.
const LOSS_TOL: f64 = 1e-5;
/// Gradients and running statistics: max |ours - reference| / max |reference|, per tensor.
const GRAD_TOL: f64 = 1e-4;
/// Parameters after Adam (fed identical gradients) and after the moving average: max abs diff.
const PARAM_TOL: f64 = 1e-6;

/// A temporary folder, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!("byol_parity_{}_{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).expect("cannot create a temporary folder");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the reference script into `out`, failing with a clear message without the venv.
fn run_reference(out: &Path) {
    let python = manifest_dir().join("../../.deps/torch-venv/bin/python");
    assert!(
        python.exists(),
        "the PyTorch reference needs the venv python at {} (torch 2.11, torchvision 0.26, \
         safetensors); it is missing",
        python.display()
    );
    let script = manifest_dir().join("tests/byol_reference.py");
    let output = Command::new(&python)
        .arg(&script)
        .arg(out)
        .arg("1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        output.status.success(),
        "{} failed ({}):\n{}\n{}",
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    print!("{}", String::from_utf8_lossy(&output.stdout));
}

fn load(path: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .into_iter()
        .collect()
}

fn get<'a>(map: &'a BTreeMap<String, Tensor>, name: &str) -> &'a Tensor {
    map.get(name)
        .unwrap_or_else(|| panic!("the reference wrote no tensor `{name}`"))
}

fn max_abs(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).abs().max().double_value(&[])
}

fn max_abs_diff(ours: &Tensor, reference: &Tensor) -> f64 {
    assert_eq!(ours.size(), reference.size(), "shapes differ");
    max_abs(&(ours.to_kind(Kind::Double) - reference.to_kind(Kind::Double)))
}

/// max |ours - reference| / max |reference| (plain difference when the reference is zero).
fn rel_diff(ours: &Tensor, reference: &Tensor) -> f64 {
    let diff = max_abs_diff(ours, reference);
    let scale = max_abs(reference);
    if scale > 0.0 {
        diff / scale
    } else {
        diff
    }
}

/// Compares a group of tensors, prints its worst entry and records every failure.
struct Check<'a> {
    failures: &'a mut Vec<String>,
}

impl Check<'_> {
    fn group(
        &mut self,
        what: &str,
        pairs: Vec<(String, Tensor, Tensor)>,
        measure: fn(&Tensor, &Tensor) -> f64,
        tol: f64,
    ) {
        assert!(!pairs.is_empty(), "{what}: nothing to compare");
        let mut worst = (0.0f64, String::new());
        let mut bad = 0;
        for (name, ours, reference) in &pairs {
            let d = measure(ours, reference);
            if d > worst.0 || worst.1.is_empty() {
                worst = (d, name.clone());
            }
            if !within(d, tol) {
                bad += 1;
                self.failures.push(format!(
                    "{what}: `{name}` differs by {d:.3e} (tolerance {tol:.0e})"
                ));
            }
        }
        println!(
            "{:<4} {what}: {} tensors, worst {:.3e} at `{}` (tolerance {tol:.0e}){}",
            if bad == 0 { "OK" } else { "FAIL" },
            pairs.len(),
            worst.0,
            worst.1,
            if bad > 0 {
                format!(", {bad} over")
            } else {
                String::new()
            }
        );
    }
}

/// `d <= tol`, false for NaN.
fn within(d: f64, tol: f64) -> bool {
    d <= tol
}

fn is_buffer(name: &str) -> bool {
    name.ends_with(".running_mean") || name.ends_with(".running_var")
}

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

/// One step of `torch.optim.Adam` from a fresh state (coupled L2 weight decay).
fn adam_first_step(p: &mut Tensor, grad: &Tensor, weight_decay: f64) {
    let (beta1, beta2) = BETAS;
    let g = grad + &*p * weight_decay;
    let m = &g * (1.0 - beta1);
    let v = &g * &g * (1.0 - beta2);
    let denom = v.sqrt() / (1.0 - beta2).sqrt() + ADAM_EPS;
    let update = m / denom * (-LR / (1.0 - beta1));
    let _ = p.f_add_(&update).unwrap();
}

#[test]
fn byol_step_matches_pytorch() {
    let dir = TempDir::new();
    run_reference(&dir.0);
    let initial = load(&dir.0.join("initial.safetensors"));
    let views_file = load(&dir.0.join("views.safetensors"));
    let expected = load(&dir.0.join("expected.safetensors"));
    let decay_names: BTreeSet<String> = std::fs::read_to_string(dir.0.join("decay_names.txt"))
        .expect("decay_names.txt")
        .lines()
        .map(str::to_string)
        .collect();
    let mut failures = Vec::new();

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
    let loss_rel = (ours_loss - ref_loss).abs() / ref_loss.abs().max(1e-12);
    println!(
        "{:<4} loss: ours {ours_loss:.9}, reference {ref_loss:.9}, relative difference {loss_rel:.3e}",
        if within(loss_rel, LOSS_TOL) { "OK" } else { "FAIL" }
    );
    if !within(loss_rel, LOSS_TOL) {
        failures.push(format!("loss differs by {loss_rel:.3e} (relative)"));
    }
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
    let mut check = Check {
        failures: &mut failures,
    };
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
    let ours_decay: BTreeSet<String> = params
        .iter()
        .filter(|p| p.weight_decay)
        .map(|p| p.name.clone())
        .collect();
    if ours_decay == decay_names {
        println!(
            "OK   weight decay on the same {} of {} parameters",
            ours_decay.len(),
            params.len()
        );
    } else {
        let only_ours: Vec<_> = ours_decay.difference(&decay_names).collect();
        let only_ref: Vec<_> = decay_names.difference(&ours_decay).collect();
        println!("FAIL weight decay: only ours {only_ours:?}, only the reference {only_ref:?}");
        check.failures.push(format!(
            "weight-decay groups differ: ours only {only_ours:?}, reference only {only_ref:?}"
        ));
    }

    // 5. One Adam step from the reference gradients, then the moving average.
    tch::no_grad(|| {
        for p in &params {
            let mut t = p.tensor.shallow_clone();
            let g = get(&expected, &format!("grad.{}", p.name));
            let wd = if p.weight_decay { WEIGHT_DECAY } else { 0.0 };
            adam_first_step(&mut t, g, wd);
        }
    });
    let after_step = params
        .iter()
        .map(|p| {
            let r = get(&expected, &format!("after_step.{}", p.name)).shallow_clone();
            (p.name.clone(), p.tensor.shallow_clone(), r)
        })
        .collect();
    check.group(
        "online parameters after Adam (reference gradients)",
        after_step,
        max_abs_diff,
        PARAM_TOL,
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
        failures.push(format!("next tau {next_tau}, expected {want_tau}"));
    }

    assert!(
        failures.is_empty(),
        "BYOL differs from the PyTorch reference:\n{}",
        failures.join("\n")
    );
}
