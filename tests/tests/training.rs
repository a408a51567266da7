//! Training end to end on the built-in demo data: every output file and metric name, the
//! checkpoint's contents, and exact resume (after a clean stop and after a kill).

use e2e::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A small, fast variant of the Shapes configs.
fn small(model: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        format!("--model={model}"),
        format!("--output_dir={}", out.display()),
        "--ssl_dataset_params.num_samples=120".into(),
        "--linear_head_dataset_params.num_samples=80".into(),
        "--ssl_dataset_params.image_size=32".into(),
        "--ssl_training_batch_size=16".into(),
        "--linear_head_batch_size=8".into(),
        "--ssl_encoder=resnet18".into(),
        "--num_workers=2".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn run(args: &[String]) -> Run {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ssl_host(&refs)
}

/// metrics.csv of the run in `dir` (see [`metric_map`]).
fn metrics(dir: &Path) -> BTreeMap<(usize, String), String> {
    metric_map(&std::fs::read_to_string(dir.join("metrics.csv")).unwrap())
}

fn names(dir: &Path) -> Vec<String> {
    let mut n: Vec<String> = std::fs::read_to_string(dir.join("metrics.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().to_string())
        .collect();
    n.sort();
    n.dedup();
    n
}

fn python() -> std::path::PathBuf {
    repo_root().join(".deps/torch-venv/bin/python")
}

#[test]
fn byol_debug_run_writes_every_output() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("run");
    run(&small(
        "ShapesBYOL",
        &dir,
        &["--is_debug_model=true", "--num_epochs=2"],
    ))
    .assert_ok();
    let expected = [
        "byol/learning_rate",
        "byol/tau",
        "byol/train/loss",
        "byol/val/loss",
        "knn/val/top1",
        "ssl_online_evaluator/train/loss",
        "ssl_online_evaluator/train/online_AccuracyAtThreshold05",
        "ssl_online_evaluator/val/AccuracyAtThreshold05",
        "ssl_online_evaluator/val/loss",
        "throughput/train_images_per_second",
        "time/epoch_seconds",
        "time/knn_seconds",
    ];
    let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(names(&dir), expected);
    let m = metrics(&dir);
    assert_eq!(
        m[&(0, "byol/learning_rate".into())],
        "0",
        "the first BYOL epoch trains at LR 0, as the original"
    );
    assert_eq!(m[&(0, "byol/tau".into())], "0.99");
    let config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    assert!(
        config.contains("ssl_training_type = \"BYOL\"") && config.contains("num_epochs = 2"),
        "{config}"
    );

    // TensorBoard reads the event files back.
    let script = format!(
        "from tensorboard.backend.event_processing.event_accumulator import EventAccumulator\n\
         ea = EventAccumulator({:?}); ea.Reload()\n\
         s = ea.Scalars('byol/tau'); print(len(s), s[0].step, round(s[0].value, 4))",
        dir.join("logs").display().to_string()
    );
    let output = Command::new(python())
        .args(["-W", "ignore", "-c", &script])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "2 0 0.99");

    // The checkpoint lists what a resume needs, and loads back.
    let listing = ssl_host(&[
        "inspect-checkpoint",
        &format!("--checkpoint={}", dir.display()),
    ]);
    listing.assert_ok();
    for needle in [
        "epochs done 2",
        "algorithm.online.encoder.conv1.weight [64, 3, 7, 7]",
        "algorithm.target.encoder.layer4.1.bn2.running_var [512]",
        "algorithm.online.predictor.model.3.weight",
        "algorithm.byol.current_tau []",
        "linear_head.linear.weight [4, 512]",
        "optimizer.",
        "linear_head_optimizer.",
    ] {
        assert!(
            listing.stdout.contains(needle),
            "checkpoint listing lacks `{needle}`:\n{}",
            listing.stdout
        );
    }
}

#[test]
fn simclr_debug_run_writes_its_metric_names() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("run");
    run(&small(
        "ShapesSimCLR",
        &dir,
        &["--is_debug_model=true", "--num_epochs=1", "--num_workers=0"],
    ))
    .assert_ok();
    let n = names(&dir);
    for name in [
        "simclr/train/loss",
        "simclr/val/loss",
        "simclr/learning_rate",
        "ssl_online_evaluator/val/AccuracyAtThreshold05",
    ] {
        assert!(n.contains(&name.to_string()), "{name} missing from {n:?}");
    }
    assert!(!n.iter().any(|x| x.starts_with("byol/")), "{n:?}");
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let out = tempfile::tempdir().unwrap();
    let full = out.path().join("full");
    let parts = out.path().join("parts");
    let epochs = ["--num_epochs=4", "--warmup_epochs=1"];
    run(&small("ShapesBYOL", &full, &epochs)).assert_ok();
    let mut first = small("ShapesBYOL", &parts, &epochs);
    first.push("--stop_after_epochs=2".into());
    run(&first).assert_ok();
    assert_eq!(
        metrics(&parts).keys().map(|k| k.0).max(),
        Some(1),
        "stopped after 2 epochs"
    );
    run(&[
        format!("--output_dir={}", parts.display()),
        "--resume".into(),
    ])
    .assert_ok();
    let (a, b) = (metrics(&full), metrics(&parts));
    assert_eq!(a.len(), b.len());
    for (key, value) in &a {
        assert_eq!(Some(value), b.get(key), "{key:?} differs after resume");
    }

    // Killed at some moment after the first checkpoint: resume still gives the same values and
    // no duplicated rows.
    let killed = out.path().join("killed");
    let refs = small("ShapesBYOL", &killed, &epochs);
    let mut child = Command::new(artifact("ssl-host"))
        .args(&refs)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let checkpoint = killed.join("checkpoints/last.safetensors");
    let start = Instant::now();
    while !checkpoint.exists() && start.elapsed() < Duration::from_secs(300) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap();
    child.wait().unwrap();
    run(&[
        format!("--output_dir={}", killed.display()),
        "--resume".into(),
    ])
    .assert_ok();
    assert_eq!(metrics(&killed), a);
}

#[test]
fn clear_errors_for_bad_runs() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("run");
    ssl_host(&["--model=ShapesBYOL", "--num_epoch=3"])
        .assert_clear_error(&["unknown parameter `num_epoch`", "did you mean `num_epochs`"]);
    ssl_host(&["--model=ShapesBYOl"]).assert_clear_error(&[
        "unknown model config `ShapesBYOl`",
        "did you mean `ShapesBYOL`",
    ]);
    ssl_host(&["--model=ShapesBYOL", "--ssl_encoder=resnet19"])
        .assert_clear_error(&["unknown encoder `resnet19`", "did you mean `resnet18`"]);
    ssl_host(&["--model=ShapesBYOL", "--ssl_training_batch_size=0"])
        .assert_clear_error(&["ssl_training_batch_size"]);
    ssl_host(&["--resume", &format!("--output_dir={}", dir.display())])
        .assert_clear_error(&["last.safetensors"]);
    let mut args = small(
        "ShapesBYOL",
        &dir,
        &["--is_debug_model=true", "--num_epochs=1"],
    );
    run(&args).assert_ok();
    // Starting again over an existing run is refused (nothing is overwritten).
    run(&args).assert_clear_error(&["already holds a run", "--resume"]);
    // A corrupt checkpoint is a clear error on resume.
    let checkpoint = dir.join("checkpoints/last.safetensors");
    let bytes = std::fs::read(&checkpoint).unwrap();
    std::fs::write(&checkpoint, &bytes[..bytes.len() / 2]).unwrap();
    args.push("--resume".into());
    run(&args).assert_clear_error(&["truncated or corrupt"]);
}

#[test]
fn resume_refuses_a_changed_data_plan_unless_told_and_a_passed_stop_after_epochs() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("run");
    let epochs = [
        "--num_epochs=3",
        "--is_debug_model=true",
        "--stop_after_epochs=2",
    ];
    run(&small("ShapesSimCLR", &dir, &epochs)).assert_ok();
    let resume = |extra: &[&str]| {
        let mut args = vec![format!("--output_dir={}", dir.display()), "--resume".into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        run(&args)
    };
    // Batches, seed and views of another run: refused, each named, nothing written.
    let before = std::fs::read(dir.join("checkpoints/last.safetensors")).unwrap();
    resume(&[
        "--ssl_training_batch_size=8",
        "--random_seed=7",
        "--ssl_dataset_params.num_samples=100",
    ])
    .assert_clear_error(&[
        "would not continue as it started",
        "ssl_training_batch_size: a global batch of 16 (16 × 1 process(es)) becomes 8 (8 × 1)",
        "random_seed",
        "ssl_dataset_params",
        "--allow_data_plan_change=true",
    ]);
    assert_eq!(
        std::fs::read(dir.join("checkpoints/last.safetensors")).unwrap(),
        before
    );
    // A stop that the run has passed already: said, not a silent success.
    resume(&["--stop_after_epochs=1"]).assert_clear_error(&[
        "--stop_after_epochs=1",
        "has completed 2 of its 3 epochs already",
    ]);
    // What does not change the data plan is accepted, and so is a change the user asks for.
    resume(&[
        "--ssl_training_batch_size=8",
        "--allow_data_plan_change=true",
    ])
    .assert_ok();
    let config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    assert!(config.contains("ssl_training_batch_size = 8"), "{config}");
}

/// The count the engine prints with `SSL_HOST_DEBUG_SYNC=1`: (reads inside training steps,
/// training steps, reads at checks), summed over the epochs.
fn host_reads(stderr: &str) -> (u64, u64, u64) {
    let mut total = (0, 0, 0);
    for line in stderr.lines() {
        let Some(rest) = line.strip_prefix("host reads of device values in epoch ") else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        // "<epoch>: <reads> in <steps> training steps, <checks> at checks"
        total.0 += words[1].parse::<u64>().unwrap();
        total.1 += words[3].parse::<u64>().unwrap();
        total.2 += words[6].parse::<u64>().unwrap();
    }
    total
}

/// No training step reads a device value (on a GPU each read makes the device wait for the
/// host): not the SSL step with its online head, not with gradient clipping, skip_step or
/// LARS, not in bf16-mixed or 16-mixed (the loss scaler), not a classifier's step. The flags are read at checks, every few steps and at the
/// end of each epoch.
#[test]
fn training_steps_read_nothing_from_the_device() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = artifact("libexample_tiny_cnn.so").display().to_string();
    let ssl = tmp.path().join("ssl");
    let variants: [&[&str]; 4] = [
        &[],
        &[
            "--gradient_clip_val=0.5",
            "--nan_policy=skip_step",
            "--optimizer=lars",
        ],
        &["--precision=bf16-mixed"],
        &["--precision=16-mixed", "--gradient_clip_val=1"],
    ];
    for (i, extra) in variants.iter().enumerate() {
        let out = if i == 0 {
            ssl.clone()
        } else {
            tmp.path().join(format!("ssl{i}"))
        };
        let mut args = small("ShapesBYOL", &out, extra);
        args.retain(|a| a != "--ssl_encoder=resnet18");
        args.extend([
            format!("--plugin={tiny}"),
            "--ssl_encoder=TinyCNN".into(),
            "--num_epochs=2".into(),
            "--device=cpu".into(),
        ]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = ssl_host_with_env(&refs, &[("SSL_HOST_DEBUG_SYNC", "1")]);
        r.assert_ok();
        let (in_steps, steps, checks) = host_reads(&r.stderr);
        assert!(steps >= 10, "{extra:?}: {steps} steps\n{}", r.stderr);
        assert_eq!(in_steps, 0, "{extra:?}\n{}", r.stderr);
        assert!(checks >= 2, "{extra:?}: {checks} checks\n{}", r.stderr);
    }
    let out = tmp.path().join("classifier");
    let args = [
        format!("--plugin={tiny}"),
        "--model=SSLClassifierCIFAR".into(),
        format!("--output_dir={}", out.display()),
        format!("--local_ssl_weights_path={}", ssl.display()),
        "--linear_head_dataset_name=Shapes".into(),
        "--linear_head_dataset_params.num_samples=120".into(),
        "--linear_head_dataset_params.image_size=32".into(),
        "--linear_head_batch_size=8".into(),
        "--num_epochs=1".into(),
        "--freeze_encoder=false".into(),
        "--device=cpu".into(),
    ];
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = ssl_host_with_env(&refs, &[("SSL_HOST_DEBUG_SYNC", "1")]);
    r.assert_ok();
    let (in_steps, steps, _) = host_reads(&r.stderr);
    assert!(steps >= 5, "{steps} steps\n{}", r.stderr);
    assert_eq!(in_steps, 0, "{}", r.stderr);
}
