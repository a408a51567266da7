//! Shared parts of the parity tests against the PyTorch references (`byol_parity.rs`,
//! `simclr_parity.rs`): running a reference script, reading its tensors, comparing tensor groups
//! and torch's Adam step.

use ssl_plugin_api::tch::{self, Kind, Tensor};
use ssl_plugin_api::torch::TrainableParam;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const LR: f64 = 1e-3;
pub const WEIGHT_DECAY: f64 = 1e-6;
pub const BETAS: (f64, f64) = (0.9, 0.999);
pub const ADAM_EPS: f64 = 1e-8;
/// Loss: relative difference.
pub const LOSS_TOL: f64 = 1e-5;
/// Gradients and running statistics: max |ours - reference| / max |reference|, per tensor.
pub const GRAD_TOL: f64 = 1e-4;
/// Parameters after Adam (fed identical gradients) and after a moving average: max abs diff.
pub const PARAM_TOL: f64 = 1e-6;

/// A temporary folder, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new folder `<temp>/<name>_<pid>_<nanos>`.
    pub fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!("{name}_{}_{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).expect("cannot create a temporary folder");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
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

/// Runs `tests/<script>` as `<script> <out> 1 <extra_args...>` (seed 1) with the venv python,
/// failing with a clear message without the venv.
pub fn run_reference(script: &str, out: &Path, extra_args: &[&str]) {
    let python = manifest_dir().join("../../.deps/torch-venv/bin/python");
    assert!(
        python.exists(),
        "the PyTorch reference needs the venv python at {} (torch 2.11, torchvision 0.26, \
         safetensors); it is missing",
        python.display()
    );
    let script = manifest_dir().join("tests").join(script);
    let output = Command::new(&python)
        .arg(&script)
        .arg(out)
        .arg("1")
        .args(extra_args)
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

pub fn load(path: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .into_iter()
        .collect()
}

pub fn get<'a>(map: &'a BTreeMap<String, Tensor>, name: &str) -> &'a Tensor {
    map.get(name)
        .unwrap_or_else(|| panic!("the reference wrote no tensor `{name}`"))
}

pub fn max_abs(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).abs().max().double_value(&[])
}

pub fn max_abs_diff(ours: &Tensor, reference: &Tensor) -> f64 {
    assert_eq!(ours.size(), reference.size(), "shapes differ");
    max_abs(&(ours.to_kind(Kind::Double) - reference.to_kind(Kind::Double)))
}

/// max |ours - reference| / max |reference| (plain difference when the reference is zero).
pub fn rel_diff(ours: &Tensor, reference: &Tensor) -> f64 {
    let diff = max_abs_diff(ours, reference);
    let scale = max_abs(reference);
    if scale > 0.0 {
        diff / scale
    } else {
        diff
    }
}

/// Compares groups of tensors, prints the worst entry of each (a NaN counts as the worst) and
/// records every failure.
#[derive(Default)]
pub struct Check {
    pub failures: Vec<String>,
}

impl Check {
    /// Compares our loss with the reference's (relative difference within [`LOSS_TOL`]),
    /// prints the result and records a failure.
    pub fn loss(&mut self, ours_loss: f64, ref_loss: f64) {
        let loss_rel = (ours_loss - ref_loss).abs() / ref_loss.abs().max(1e-12);
        println!(
            "{:<4} loss: ours {ours_loss:.9}, reference {ref_loss:.9}, relative difference {loss_rel:.3e}",
            if within(loss_rel, LOSS_TOL) { "OK" } else { "FAIL" }
        );
        if !within(loss_rel, LOSS_TOL) {
            self.failures
                .push(format!("loss differs by {loss_rel:.3e} (relative)"));
        }
    }

    pub fn group(
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
            if d > worst.0 || worst.1.is_empty() || d.is_nan() {
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

impl Check {
    /// Our weight-decay hints against the reference's decay group (`decay_names`), by name.
    pub fn decay_group(&mut self, params: &[TrainableParam], decay_names: &BTreeSet<String>) {
        let ours: BTreeSet<String> = params
            .iter()
            .filter(|p| p.weight_decay)
            .map(|p| p.name.clone())
            .collect();
        if &ours == decay_names {
            println!(
                "OK   weight decay on the same {} of {} parameters",
                ours.len(),
                params.len()
            );
        } else {
            let only_ours: Vec<_> = ours.difference(decay_names).collect();
            let only_ref: Vec<_> = decay_names.difference(&ours).collect();
            println!("FAIL weight decay: only ours {only_ours:?}, only the reference {only_ref:?}");
            self.failures.push(format!(
                "weight-decay groups differ: ours only {only_ours:?}, reference only {only_ref:?}"
            ));
        }
    }

    /// One Adam step ([`adam_first_step`]) on `params` from the reference gradients
    /// (`grad.<name>`) with our decay hints, compared with `after_step.<name>`.
    pub fn adam_step(
        &mut self,
        what: &str,
        params: &[TrainableParam],
        expected: &BTreeMap<String, Tensor>,
    ) {
        tch::no_grad(|| {
            for p in params {
                let mut t = p.tensor.shallow_clone();
                let g = get(expected, &format!("grad.{}", p.name));
                let wd = if p.weight_decay { WEIGHT_DECAY } else { 0.0 };
                adam_first_step(&mut t, g, wd);
            }
        });
        let after_step = params
            .iter()
            .map(|p| {
                let r = get(expected, &format!("after_step.{}", p.name)).shallow_clone();
                (p.name.clone(), p.tensor.shallow_clone(), r)
            })
            .collect();
        self.group(what, after_step, max_abs_diff, PARAM_TOL);
    }
}

/// `d <= tol`, false for NaN.
pub fn within(d: f64, tol: f64) -> bool {
    d <= tol
}

pub fn is_buffer(name: &str) -> bool {
    name.ends_with(".running_mean") || name.ends_with(".running_var")
}

/// One step of `torch.optim.Adam` from a fresh state (coupled L2 weight decay).
///
/// The first step is `-LR * g' / (|g'| + ADAM_EPS)` with `g' = grad + weight_decay * p`, about
/// `-LR * sign(g')`. At `WEIGHT_DECAY` the decay changes it only on entries with `|grad|` below
/// about `WEIGHT_DECAY * |p|`, so comparing its result checks the update, not the decay
/// grouping: a parameter in the wrong group shows only where such small gradients happen to be.
pub fn adam_first_step(p: &mut Tensor, grad: &Tensor, weight_decay: f64) {
    let (beta1, beta2) = BETAS;
    let g = grad + &*p * weight_decay;
    let m = &g * (1.0 - beta1);
    let v = &g * &g * (1.0 - beta2);
    let denom = v.sqrt() / (1.0 - beta2).sqrt() + ADAM_EPS;
    let update = m / denom * (-LR / (1.0 - beta1));
    let _ = p.f_add_(&update).unwrap();
}
