//! The fault-injection plugin (`tests/fault-plugin`) loads and trains like any algorithm
//! plugin, and its faults fire when asked: what the robustness tests build on.

use e2e::*;
use std::path::Path;

/// `epochs` debug epochs (one step each) of Shapes with `Faulty`, batches of 8.
fn faulty_args(out: &Path, epochs: usize, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--plugin".to_string(),
        fault_plugin().display().to_string(),
        "--model=ShapesSimCLR".into(),
        "--ssl_training_type=Faulty".into(),
        format!("--output_dir={}", out.display()),
        "--device=cpu".into(),
        "--is_debug_model=true".into(),
        format!("--num_epochs={epochs}"),
        "--ssl_training_batch_size=8".into(),
        "--linear_head_batch_size=8".into(),
        "--num_workers=1".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn run(args: &[String]) -> Run {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ssl_host(&refs)
}

#[test]
fn the_fault_plugin_trains_and_its_nonfinite_fault_fires() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("clean");
    run(&faulty_args(&out, 1, &[])).assert_ok();
    let loss = metric(&out, "faulty/train/loss");
    // The negative cosine of two views (aux starts at 0): in [-1, 1].
    assert!((-1.0..=1.0).contains(&loss), "faulty/train/loss = {loss}");
    let config = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(config.contains("fault-plugin"), "{config}");

    // The second training step's loss (epoch 2, step 1) is NaN: the default policy stops there.
    let out = tmp.path().join("nan");
    let stopped = run(&faulty_args(
        &out,
        2,
        &["--algorithm_params.nonfinite_at_step=2"],
    ));
    assert_eq!(stopped.code, Some(1), "{}", stopped.stderr);
    assert!(
        stopped
            .error_report()
            .contains("loss is NaN at epoch 2, step 1"),
        "{}",
        stopped.stderr
    );

    // A misspelt fault is an error naming it.
    let out = tmp.path().join("typo");
    run(&faulty_args(
        &out,
        1,
        &["--algorithm_params.unused_on_rnak=1"],
    ))
    .assert_clear_error(&["unused_on_rnak"]);
}
