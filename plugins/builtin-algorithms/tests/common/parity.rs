//! Shared parts of the parity tests against the PyTorch references (`*_parity.rs`): building our
//! algorithm around the registered `resnet18`, running a reference script and reading its
//! tensors ([`Reference`]), loading them into ours by name, and comparing the loss, the
//! gradients, the running statistics, tensor groups and torch's Adam step ([`Check`]).

use ssl_plugin_api::host::builtin_plugins;
use ssl_plugin_api::tch::{self, Kind, Tensor};
use ssl_plugin_api::torch::TrainableParam;
use ssl_plugin_api::{EncoderSpec, Params, SslAlgorithm};
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

/// What one run of a reference script wrote: `initial.safetensors` (every tensor of the model
/// before the step), `views.safetensors` and `expected.safetensors` (the results of the step),
/// and for some `decay_names.txt`. The temporary folder lives as long as this.
pub struct Reference {
    dir: TempDir,
    pub initial: BTreeMap<String, Tensor>,
    views: BTreeMap<String, Tensor>,
    pub expected: BTreeMap<String, Tensor>,
}

impl Reference {
    /// Runs `script` with `extra_args` ([`run_reference`]) into a new temporary folder named
    /// after `label` and reads its tensors.
    pub fn run(script: &str, label: &str, extra_args: &[&str]) -> Self {
        let dir = TempDir::new(label);
        run_reference(script, dir.path(), extra_args);
        Reference {
            initial: load(&dir.path().join("initial.safetensors")),
            views: load(&dir.path().join("views.safetensors")),
            expected: load(&dir.path().join("expected.safetensors")),
            dir,
        }
    }

    /// `decay_names.txt`: the parameters in the reference's weight-decay group.
    pub fn decay_names(&self) -> BTreeSet<String> {
        std::fs::read_to_string(self.dir.path().join("decay_names.txt"))
            .expect("decay_names.txt")
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The view batches called `names`, in that order.
    pub fn views(&self, names: &[&str]) -> Vec<Tensor> {
        names
            .iter()
            .map(|n| get(&self.views, n).shallow_clone())
            .collect()
    }

    /// Copies the initial tensors into `state` by name; the names must be the same on both
    /// sides and the shapes equal.
    pub fn load_into(&self, state: &[(String, Tensor)]) {
        self.load(state, false);
    }

    /// [`Reference::load_into`], and the kinds must be equal too (a state with integer tensors).
    pub fn load_into_same_kinds(&self, state: &[(String, Tensor)]) {
        self.load(state, true);
    }

    fn load(&self, state: &[(String, Tensor)], same_kinds: bool) {
        let ours: BTreeSet<&str> = state.iter().map(|(n, _)| n.as_str()).collect();
        let theirs: BTreeSet<&str> = self.initial.keys().map(String::as_str).collect();
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
            for (name, t) in state {
                let src = get(&self.initial, name);
                assert_eq!(t.size(), src.size(), "`{name}`: shapes differ");
                if same_kinds {
                    assert_eq!(t.kind(), src.kind(), "`{name}`: kinds differ");
                }
                t.shallow_clone().copy_(src);
            }
        });
        println!("loaded {} tensors by name", state.len());
    }
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
        self.value("loss", ours_loss, ref_loss, LOSS_TOL);
    }

    /// Compares a number with the reference's (relative difference within `tol`), prints the
    /// result and records a failure.
    pub fn value(&mut self, what: &str, ours: f64, reference: f64, tol: f64) {
        let rel = (ours - reference).abs() / reference.abs().max(1e-12);
        println!(
            "{:<4} {what}: ours {ours:.9}, reference {reference:.9}, relative difference {rel:.3e}",
            if within(rel, tol) { "OK" } else { "FAIL" }
        );
        if !within(rel, tol) {
            self.failures
                .push(format!("{what} differs by {rel:.3e} (relative)"));
        }
    }

    /// The training loss of `algorithm` on `views` against the reference's `loss`
    /// ([`Check::loss`]), then its backward pass.
    pub fn training_loss(
        &mut self,
        algorithm: &mut dyn SslAlgorithm,
        views: &[Tensor],
        expected: &BTreeMap<String, Tensor>,
    ) {
        let loss = algorithm.training_loss(views).expect("training loss");
        self.loss(
            loss.double_value(&[]),
            get(expected, "loss").double_value(&[0]),
        );
        loss.backward();
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

    /// One tensor as a group of one ([`Check::group`]).
    pub fn single(
        &mut self,
        what: &str,
        name: &str,
        ours: Tensor,
        reference: Tensor,
        measure: fn(&Tensor, &Tensor) -> f64,
        tol: f64,
    ) {
        self.group(what, vec![(name.into(), ours, reference)], measure, tol);
    }
}

impl Check {
    /// The gradients of `params` after the backward pass against the reference's `grad.<name>`:
    /// the same trainable parameters on both sides, a gradient on each, compared per group of
    /// names starting with one of `parts` (relative, [`GRAD_TOL`]). `zero_gradients` vanish in
    /// exact arithmetic (a Linear bias before a training-mode BatchNorm): they are left out of
    /// the groups and must be negligible next to their layer's weight gradient instead.
    pub fn gradients(
        &mut self,
        params: &[TrainableParam],
        expected: &BTreeMap<String, Tensor>,
        parts: &[&str],
        zero_gradients: &[&str],
    ) {
        let param_names: BTreeSet<String> = params.iter().map(|p| p.name.clone()).collect();
        let ref_grads: BTreeSet<String> = expected
            .keys()
            .filter_map(|k| k.strip_prefix("grad.").map(str::to_string))
            .collect();
        assert_eq!(param_names, ref_grads, "trainable parameters differ");
        let mut grads = Vec::new();
        for p in params {
            let g = p.tensor.grad();
            assert!(g.defined(), "`{}` has no gradient", p.name);
            grads.push((
                p.name.clone(),
                g,
                get(expected, &format!("grad.{}", p.name)).shallow_clone(),
            ));
        }
        for part in parts {
            let group = grads
                .iter()
                .filter(|(n, _, _)| n.starts_with(part) && !zero_gradients.contains(&n.as_str()))
                .map(|(n, a, b)| (n.clone(), a.shallow_clone(), b.shallow_clone()))
                .collect();
            self.group(&format!("gradients {part}*"), group, rel_diff, GRAD_TOL);
        }
        // Zero in exact arithmetic, rounding noise in both (its own max is no scale). Both must
        // be negligible next to the layer's weight gradient; a bias placed after the BatchNorm
        // would be of that gradient's order.
        for &name in zero_gradients {
            let weight = name.replace(".bias", ".weight");
            let scale = max_abs(get(expected, &format!("grad.{weight}")));
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
                self.failures.push(format!(
                    "gradient `{name}` should vanish: {d:.3e} of the weight gradient's scale"
                ));
            }
        }
    }

    /// The BatchNorm running statistics in `state` against the reference's
    /// `after_forward.<name>`, per group of names starting with one of `parts` (relative,
    /// [`GRAD_TOL`]).
    pub fn running_statistics(
        &mut self,
        state: &[(String, Tensor)],
        expected: &BTreeMap<String, Tensor>,
        parts: &[&str],
    ) {
        for part in parts {
            let group = state
                .iter()
                .filter(|(n, _)| n.starts_with(part) && is_buffer(n))
                .map(|(n, t)| {
                    let r = get(expected, &format!("after_forward.{n}")).shallow_clone();
                    (n.clone(), t.shallow_clone(), r)
                })
                .collect();
            self.group(
                &format!("running statistics {part}* after the forward"),
                group,
                rel_diff,
                GRAD_TOL,
            );
        }
    }

    /// The parameters (not the buffers) in `state` whose names start with `prefix` against the
    /// reference's `<key>.<name>` (max abs diff, [`PARAM_TOL`]): a network after a moving
    /// average.
    pub fn parameters_after(
        &mut self,
        what: &str,
        state: &[(String, Tensor)],
        prefix: &str,
        key: &str,
        expected: &BTreeMap<String, Tensor>,
    ) {
        let group = state
            .iter()
            .filter(|(n, _)| n.starts_with(prefix) && !is_buffer(n))
            .map(|(n, t)| {
                let r = get(expected, &format!("{key}.{n}")).shallow_clone();
                (n.clone(), t.shallow_clone(), r)
            })
            .collect();
        self.group(what, group, max_abs_diff, PARAM_TOL);
    }

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

/// Fails the test with every difference in `failures`, if any.
pub fn assert_matches(algorithm: &str, failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{algorithm} differs from the PyTorch reference:\n{}",
        failures.join("\n")
    );
}

/// Checks the parity test itself: `compare` (the comparison against the reference run with one
/// mutation) must find differences for each of `mutations`.
pub fn assert_mutations_noticed(mutations: &[&str], mut compare: impl FnMut(&str) -> Vec<String>) {
    for &mutation in mutations {
        println!("--- reference mutated: {mutation}");
        let failures = compare(mutation);
        assert!(
            !failures.is_empty(),
            "the parity test did not notice the mutation `{mutation}`"
        );
        println!("noticed: {} differences over tolerance", failures.len());
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
