//! Fixed-seed runs on CPU write exactly the metric values recorded in `tests/data/golden/`
//! (wall-clock rows `time/*` and `throughput/*` left out, and the kNN monitor's `knn/*` rows,
//! added after the recording: the monitor only reads the model, so every recorded row must
//! still match). The files were recorded with the
//! build before the training engine was rewritten (issue 9), so this test shows that the
//! engine, sampler, loader and step path changed no result, bit for bit.
//!
//! Re-record (only when a change of results is intended, in its own commit, saying why):
//! `SSL_HOST_RECORD_GOLDEN=1 cargo test -p e2e --test golden_metrics`.

use e2e::*;
use std::path::{Path, PathBuf};

fn golden_dir() -> PathBuf {
    repo_root().join("tests/data/golden")
}

/// metrics.csv without the wall-clock rows and the kNN monitor's.
fn metric_rows(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    text.lines()
        .filter(|l| !l.contains(",throughput/") && !l.contains(",time/") && !l.contains(",knn/"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Runs `ssl-host args` into `dir`, then compares (or records) its metrics as `name`.
fn check(name: &str, dir: &Path, args: &[String]) {
    let mut all: Vec<String> = args.to_vec();
    all.push(format!("--output_dir={}", dir.display()));
    all.push("--device=cpu".into());
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    ssl_host(&refs).assert_ok();
    let got = metric_rows(dir);
    let file = golden_dir().join(format!("{name}.csv"));
    if std::env::var_os("SSL_HOST_RECORD_GOLDEN").is_some() {
        std::fs::create_dir_all(golden_dir()).unwrap();
        std::fs::write(&file, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e} (record it, see the module doc)", file.display()));
    assert!(
        got.lines().count() > 10 && !got.contains("val/loss,NaN"),
        "{name}: too few metric rows or no validation batch:\n{got}"
    );
    let (got_lines, want_lines): (Vec<&str>, Vec<&str>) =
        (got.lines().collect(), want.lines().collect());
    for (g, w) in got_lines.iter().zip(&want_lines) {
        assert_eq!(g, w, "{name}: first differing row");
    }
    assert_eq!(
        got_lines.len(),
        want_lines.len(),
        "{name}: number of rows\ngot:\n{got}\nwant:\n{want}"
    );
}

/// Small Shapes runs: several steps per epoch, two workers, an epoch-level and a step-level
/// schedule.
fn ssl_args(model: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        format!("--model={model}"),
        "--num_epochs=2".into(),
        "--warmup_epochs=1".into(),
        "--ssl_dataset_params.num_samples=160".into(),
        "--linear_head_dataset_params.num_samples=80".into(),
        "--val_split=0.25".into(),
        "--ssl_training_batch_size=16".into(),
        "--linear_head_batch_size=8".into(),
        "--num_workers=2".into(),
    ]
    .into();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[test]
fn fixed_seed_runs_write_the_recorded_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let byol = tmp.path().join("byol");
    check("ShapesBYOL", &byol, &ssl_args("ShapesBYOL", &[]));
    let simclr = tmp.path().join("simclr");
    check("ShapesSimCLR", &simclr, &ssl_args("ShapesSimCLR", &[]));
    // Debug runs: one training and one validation batch per epoch.
    check(
        "ShapesSimCLR_debug",
        &tmp.path().join("simclr_debug"),
        &ssl_args(
            "ShapesSimCLR",
            &["--is_debug_model=true", "--num_workers=0"],
        ),
    );
    // Classifiers on the SimCLR encoder: frozen (head only) and fine-tuned.
    let classifier = |extra: &str| -> Vec<String> {
        vec![
            "--model=SSLClassifierCIFAR".into(),
            format!("--local_ssl_weights_path={}", simclr.display()),
            "--linear_head_dataset_name=Shapes".into(),
            "--linear_head_dataset_params.num_samples=120".into(),
            "--val_split=0.25".into(),
            "--linear_head_batch_size=16".into(),
            "--num_epochs=2".into(),
            "--num_workers=2".into(),
            extra.into(),
        ]
    };
    check(
        "classifier_frozen",
        &tmp.path().join("frozen"),
        &classifier("--freeze_encoder=true"),
    );
    check(
        "classifier_finetuned",
        &tmp.path().join("finetuned"),
        &classifier("--freeze_encoder=false"),
    );
}
