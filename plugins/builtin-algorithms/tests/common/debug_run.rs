//! One debug epoch of a named config through the real `ssl-host` binary, for the algorithm test
//! files. The binary must have been built (`cargo build -p ssl-host`, or `scripts/test`, which
//! builds the workspace before testing).

use ssl_plugin_api::tch::Tensor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace's `target/debug/ssl-host` (or under `CARGO_TARGET_DIR`).
fn ssl_host() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let path = target.join("debug/ssl-host");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p ssl-host` first (scripts/test builds the workspace)",
        path.display()
    );
    path
}

/// What a debug run left: its metrics (`(epoch, name) -> value`), config and checkpoint.
pub struct DebugRun {
    pub metrics: BTreeMap<(usize, String), f64>,
    pub config: String,
    pub checkpoint: BTreeMap<String, Tensor>,
}

/// Runs `--model=model` for one debug epoch (one training and one validation batch of 16,
/// ResNet-18, 2 workers, Shapes datasets of 200 images so that the validation split of 20 holds
/// a batch) in `out`, plus `extra` arguments; panics with the output unless it succeeds.
pub fn debug_epoch(model: &str, out: &Path, extra: &[&str]) -> DebugRun {
    let output = Command::new(ssl_host())
        .arg(format!("--model={model}"))
        .arg(format!("--output_dir={}", out.display()))
        .args([
            "--is_debug_model=true",
            "--num_epochs=1",
            "--ssl_encoder=resnet18",
            "--ssl_training_batch_size=16",
            "--linear_head_batch_size=8",
            "--ssl_dataset_params.num_samples=200",
            "--linear_head_dataset_params.num_samples=200",
            "--num_workers=2",
        ])
        .args(extra)
        .output()
        .expect("cannot run ssl-host");
    assert!(
        output.status.success(),
        "ssl-host --model={model} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(out.join("metrics.csv")).expect("metrics.csv");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("epoch,name,value"));
    let metrics = lines
        .map(|l| {
            let f: Vec<&str> = l.splitn(3, ',').collect();
            let value = f[2].parse().unwrap_or(f64::NAN);
            ((f[0].parse().unwrap(), f[1].to_string()), value)
        })
        .collect();
    let config = std::fs::read_to_string(out.join("config.toml")).expect("config.toml");
    let checkpoint = Tensor::read_safetensors(out.join("checkpoints/last.safetensors"))
        .expect("checkpoints/last.safetensors")
        .into_iter()
        .collect();
    DebugRun {
        metrics,
        config,
        checkpoint,
    }
}
