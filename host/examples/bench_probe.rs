//! The linear probe's benchmark (issue 21, item 6; run by `scripts/bench/probe`): fits the probe
//! of `ssl-host evaluate` on synthetic chest-X-ray-like features (NIH ChestX-ray14's size and
//! finding prevalences by default) and prints the seconds of each step.
//!
//! The features are correlated as an encoder's are: `softplus(Z·A + ½E)` with a 128-d latent
//! `Z`, loadings `A` whose scale falls as `1/√(j+1)` over the latent dimensions (a power-law
//! spectrum) and noise `E`; finding `f` is drawn from `sigmoid(Z·B_f + b_f)` with `b_f` set to
//! its prevalence. 20% of the samples are the test part, 10% of the rest validation.
//!
//! Usage: bench_probe [--samples N] [--dim D] [--findings F] [--write DIR]
//! `--write DIR` also writes the parts as .npy files and the probe's results as probe.json, for
//! `scripts/bench/probe_reference.py` (scikit-learn on the same data).

use anyhow::{bail, Context, Result};
use ssl_host::evaluate::probe::{fit_with_validation, ProbeConfig};
use ssl_host::evaluate::stats::{aurocs, macro_mean, validation_split, Targets};
use ssl_plugin_api::tch::{self, Device, Kind, Tensor};
use ssl_plugin_api::Findings;
use std::time::Instant;

/// NIH ChestX-ray14's findings and their share of the 112,120 images.
const NIH: [(&str, f64); 14] = [
    ("Atelectasis", 0.103),
    ("Cardiomegaly", 0.025),
    ("Effusion", 0.119),
    ("Infiltration", 0.177),
    ("Mass", 0.052),
    ("Nodule", 0.056),
    ("Pneumonia", 0.013),
    ("Pneumothorax", 0.047),
    ("Consolidation", 0.042),
    ("Edema", 0.021),
    ("Emphysema", 0.022),
    ("Fibrosis", 0.015),
    ("Pleural_Thickening", 0.030),
    ("Hernia", 0.002),
];
const LATENT: i64 = 128;

struct Args {
    samples: i64,
    dim: i64,
    findings: usize,
    write: Option<std::path::PathBuf>,
}

fn args() -> Result<Args> {
    let mut a = Args {
        samples: 112_000,
        dim: 2048,
        findings: 14,
        write: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(name) = it.next() {
        let (name, inline) = match name.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (name, None),
        };
        let value = match inline {
            Some(v) => v,
            None => it.next().with_context(|| format!("{name} needs a value"))?,
        };
        match name.as_str() {
            "--samples" => a.samples = value.parse()?,
            "--dim" => a.dim = value.parse()?,
            "--findings" => a.findings = value.parse()?,
            "--write" => a.write = Some(value.into()),
            _ => bail!("unknown argument {name} (--samples, --dim, --findings, --write)"),
        }
    }
    if a.findings == 0 || a.findings > NIH.len() {
        bail!("--findings must be 1 to {}", NIH.len());
    }
    Ok(a)
}

/// Features `[n, d]` and findings `[n, F]` (as 0/1 values), built in chunks of rows.
fn synthetic(n: i64, d: i64, findings: usize) -> (Tensor, Vec<i8>) {
    tch::manual_seed(21);
    let opts = (Kind::Float, Device::Cpu);
    let spectrum = (Tensor::arange(LATENT, opts) + 1.0).pow_tensor_scalar(-0.5);
    let loadings = Tensor::randn([LATENT, d], opts) * spectrum.view([LATENT, 1]);
    let effects = Tensor::randn([LATENT, findings as i64], opts) * spectrum.view([LATENT, 1]);
    let effects = &effects
        / effects
            .square()
            .sum_dim_intlist(0, true, Kind::Float)
            .sqrt()
        * 1.5;
    let bias: Vec<f64> = NIH[..findings]
        .iter()
        .map(|(_, p)| (p / (1.0 - p)).ln() - 0.8)
        .collect();
    let bias = Tensor::from_slice(&bias).to_kind(Kind::Float);
    let x = Tensor::empty([n, d], opts);
    let mut values = Vec::with_capacity((n as usize) * findings);
    let chunk = 8192;
    for start in (0..n).step_by(chunk as usize) {
        let m = chunk.min(n - start);
        let z = Tensor::randn([m, LATENT], opts);
        let features = (z.mm(&loadings) + Tensor::randn([m, d], opts) * 0.5).softplus();
        x.narrow(0, start, m).copy_(&features);
        let p = (z.mm(&effects) + &bias).sigmoid();
        let y = Tensor::rand([m, findings as i64], opts).lt_tensor(&p);
        values.extend(Vec::<i8>::try_from(y.to_kind(Kind::Int8).reshape([-1])).unwrap());
    }
    (x, values)
}

fn rows(x: &Tensor, rows: &[usize]) -> Tensor {
    let index: Vec<i64> = rows.iter().map(|&i| i as i64).collect();
    x.index_select(0, &Tensor::from_slice(&index))
}

fn main() -> Result<()> {
    let a = args()?;
    let (n, d, f) = (a.samples, a.dim, a.findings);
    let names: Vec<String> = NIH[..f].iter().map(|(s, _)| s.to_string()).collect();
    println!(
        "probe benchmark: {n} × {d} features, {f} findings, {} penalties, {} threads",
        ProbeConfig::default().penalties.len(),
        tch::get_num_threads()
    );
    let clock = Instant::now();
    let (x, values) = synthetic(n, d, f);
    let targets = Targets::Findings(Findings::new(names, values)?);
    let test_len = (n as usize) / 5;
    let test: Vec<usize> = (0..test_len).collect();
    let rest: Vec<usize> = (test_len..n as usize).collect();
    let (train, val) = validation_split(rest.len(), None, 0.1, 1)?;
    let train: Vec<usize> = train.iter().map(|&i| rest[i]).collect();
    let val: Vec<usize> = val.iter().map(|&i| rest[i]).collect();
    let (train_x, val_x, test_x) = (rows(&x, &train), rows(&x, &val), rows(&x, &test));
    let (train_y, val_y, test_y) = (
        targets.select(&train),
        targets.select(&val),
        targets.select(&test),
    );
    drop(x);
    println!(
        "  synthetic data     {:7.1} s  (train {}, validation {}, test {}; not counted)",
        clock.elapsed().as_secs_f64(),
        train.len(),
        val.len(),
        test.len()
    );

    let clock = Instant::now();
    let fit = fit_with_validation(&train_x, &train_y, &val_x, &val_y, &ProbeConfig::default())?;
    let s = fit.seconds;
    let iterations: Vec<String> = fit
        .validation
        .iter()
        .map(|p| {
            let mark = if p.convergence.converged { "" } else { "*" };
            format!("{}{mark}", p.convergence.iterations)
        })
        .collect();
    println!("  standardise        {:7.1} s", s.standardise);
    println!(
        "  grid fit           {:7.1} s  (L-BFGS iterations per C: {}; * = not converged)",
        s.grid,
        iterations.join(" ")
    );
    println!("  validation scores  {:7.1} s", s.validation);
    println!(
        "  refit              {:7.1} s  (C = {}, {} iterations)",
        s.refit, fit.chosen_penalty, fit.refit.iterations
    );
    let scoring = Instant::now();
    let scores = fit.probe.predict(&test_x)?;
    let test_aurocs = aurocs(&scores, &test_y);
    println!(
        "  score (test)       {:7.1} s  (macro AUROC {:.4})",
        scoring.elapsed().as_secs_f64(),
        macro_mean(&test_aurocs)
    );
    let total = clock.elapsed().as_secs_f64();
    println!(
        "  total              {:7.1} s  (target: under 180 s) {}",
        total,
        if total < 180.0 { "met" } else { "NOT met" }
    );
    let validation: Vec<String> = fit
        .validation
        .iter()
        .map(|p| format!("C={}: {:.4}", p.penalty, p.score))
        .collect();
    println!(
        "  validation {}: {}",
        fit.selection_metric,
        validation.join(", ")
    );

    if let Some(dir) = a.write {
        std::fs::create_dir_all(&dir)?;
        for (name, t) in [
            ("train_x", &train_x),
            ("val_x", &val_x),
            ("test_x", &test_x),
        ] {
            t.write_npy(dir.join(format!("{name}.npy")))?;
        }
        for (name, y) in [
            ("train_y", &train_y),
            ("val_y", &val_y),
            ("test_y", &test_y),
        ] {
            let Targets::Findings(f) = y else {
                unreachable!()
            };
            Tensor::from_slice(f.values())
                .view([-1, f.names().len() as i64])
                .write_npy(dir.join(format!("{name}.npy")))?;
        }
        let json = serde_json::json!({
            "seconds": {
                "standardise": s.standardise, "grid": s.grid, "validation": s.validation,
                "refit": s.refit, "total": total,
            },
            "penalties": fit.validation.iter().map(|p| p.penalty).collect::<Vec<_>>(),
            "validation": fit.validation.iter().map(|p| p.score).collect::<Vec<_>>(),
            "chosen": fit.chosen_penalty,
            "test_aurocs": test_aurocs,
        });
        std::fs::write(dir.join("probe.json"), json.to_string())?;
    }
    Ok(())
}
