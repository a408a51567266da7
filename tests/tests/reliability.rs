//! A week of training is not lost to a signal, a NaN or a full disk:
//! - SIGTERM mid-epoch writes a checkpoint at that step and exits with 143; `--resume`
//!   continues inside the epoch and ends with the metrics of an uninterrupted run;
//! - `--checkpoint_every_n_steps` checkpoints mid-epoch, so a SIGKILL loses at most N steps;
//! - a NaN loss stops with an error naming the epoch and step, the checkpoint untouched;
//!   `--nan_policy=skip_step` skips such steps and counts them;
//! - a full disk while writing a checkpoint ends the run with a clear error, the previous
//!   checkpoint and every metrics row intact.

use e2e::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// ShapesSimCLR, ResNet-18 with the CIFAR stem, 160 training images in batches of 8: 20 steps
/// per epoch, 2 epochs, one loader thread.
fn args(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--model=ShapesSimCLR".into(),
        format!("--output_dir={}", out.display()),
        "--device=cpu".into(),
        "--ssl_dataset_params.num_samples=200".into(),
        "--linear_head_dataset_params.num_samples=200".into(),
        "--ssl_dataset_params.image_size=32".into(),
        "--linear_head_dataset_params.image_size=32".into(),
        "--val_split=0.2".into(),
        "--ssl_training_batch_size=8".into(),
        "--linear_head_batch_size=8".into(),
        "--ssl_encoder=resnet18".into(),
        "--num_workers=1".into(),
        "--num_epochs=2".into(),
        "--warmup_epochs=1".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn command(args: &[String]) -> Command {
    let mut c = Command::new(artifact("ssl-host"));
    c.args(args)
        .env("OMP_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn run_ok(args: &[String]) -> String {
    let out = command(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "ssl-host failed:\n{stderr}");
    stderr
}

/// metrics.csv without wall-clock rows, as (epoch, name) -> value text.
fn metrics(dir: &Path) -> BTreeMap<(String, String), String> {
    std::fs::read_to_string(dir.join("metrics.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| !l.contains(",time/") && !l.contains(",throughput/"))
        .map(|l| {
            let f: Vec<&str> = l.splitn(3, ',').collect();
            ((f[0].to_string(), f[1].to_string()), f[2].to_string())
        })
        .collect()
}

fn checkpoint(dir: &Path) -> std::path::PathBuf {
    dir.join("checkpoints/last.safetensors")
}

/// Waits until `path` exists (at most 5 minutes).
fn wait_for(path: &Path) {
    let started = Instant::now();
    while !path.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_mid_epoch_checkpoints_that_step_and_resume_ends_as_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (straight, stopped) = (tmp.path().join("straight"), tmp.path().join("stopped"));
    run_ok(&args(&straight, &[]));

    // Stop it early in the second epoch (the first epoch's metrics rows are its sign).
    let child = command(&args(&stopped, &[])).spawn().unwrap();
    let started = Instant::now();
    while std::fs::read_to_string(stopped.join("metrics.csv"))
        .map_or(true, |t| t.lines().count() < 2)
    {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "epoch 1 never ended"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("stopped by SIGTERM after step"), "{stderr}");
    assert!(stderr.contains("of epoch 2"), "{stderr}");
    assert!(stderr.contains("--resume"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Only epoch 1's rows so far; the checkpoint is at a step inside epoch 2.
    assert!(metrics(&stopped).keys().all(|(e, _)| e == "0"));

    let resumed = run_ok(&[
        format!("--output_dir={}", stopped.display()),
        "--resume".into(),
    ]);
    assert!(
        resumed.contains("resuming epoch 2 after its step"),
        "{resumed}"
    );
    assert_eq!(metrics(&straight), metrics(&stopped));
}

#[test]
fn checkpoints_every_n_steps_let_a_killed_run_continue_as_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (straight, killed) = (tmp.path().join("straight"), tmp.path().join("killed"));
    run_ok(&args(&straight, &["--num_epochs=1"]));
    // The first checkpoint of this run is the one after step 7, mid-epoch.
    let mut child = command(&args(
        &killed,
        &["--num_epochs=1", "--checkpoint_every_n_steps=7"],
    ))
    .spawn()
    .unwrap();
    wait_for(&checkpoint(&killed));
    child.kill().unwrap();
    let _ = child.wait();
    assert!(!killed.join("metrics.csv").exists() || metrics(&killed).is_empty());
    let resumed = run_ok(&[
        format!("--output_dir={}", killed.display()),
        "--resume".into(),
    ]);
    assert!(
        resumed.contains("resuming epoch 1 after its step"),
        "{resumed}"
    );
    assert_eq!(metrics(&straight), metrics(&killed));
}

#[test]
fn a_nan_loss_stops_with_the_step_named_and_the_checkpoint_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    run_ok(&args(&out, &["--stop_after_epochs=1"]));
    let before = std::fs::read(checkpoint(&out)).unwrap();
    let rows = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    // A learning rate that overflows the weights: the loss turns NaN within a few steps.
    let exploding = [
        format!("--output_dir={}", out.display()),
        "--resume".into(),
        "--l_rate=1e30".into(),
    ];
    let failed = command(&exploding).output().unwrap();
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    // The SSL step overflows the encoder; the first non-finite loss is then the linear head's.
    assert!(
        stderr.contains(" loss is NaN at epoch 2, step 1"),
        "{stderr}"
    );
    assert!(stderr.contains("the last checkpoint is kept"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(std::fs::read(checkpoint(&out)).unwrap(), before);
    assert_eq!(
        std::fs::read_to_string(out.join("metrics.csv")).unwrap(),
        rows
    );

    // skip_step: the run ends, the skipped steps counted.
    let skip = tmp.path().join("skip");
    run_ok(&args(
        &skip,
        &["--num_epochs=1", "--l_rate=1e30", "--nan_policy=skip_step"],
    ));
    let skipped: f64 = metrics(&skip)[&("0".to_string(), "steps/skipped_nonfinite".to_string())]
        .parse()
        .unwrap();
    assert!(skipped >= 1.0, "{skipped}");
}

/// Runs `script` in a private mount namespace (root only); `None` when this machine cannot.
fn in_mount_namespace(script: &str) -> Option<std::process::Output> {
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", script])
        .output()
        .ok()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("unshare failed") || stderr.contains("Operation not permitted") {
        return None;
    }
    Some(out)
}

#[test]
fn a_full_disk_ends_the_run_clearly_and_keeps_the_last_checkpoint_and_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    // The size of one checkpoint of this run.
    let probe = tmp.path().join("probe");
    run_ok(&args(&probe, &["--num_epochs=1", "--is_debug_model=true"]));
    let size = std::fs::metadata(checkpoint(&probe)).unwrap().len();
    // A file system with room for one checkpoint and the run's small files, not for the
    // temporary copy of a second one.
    let disk = tmp.path().join("disk");
    let copy = tmp.path().join("copy");
    std::fs::create_dir_all(&disk).unwrap();
    let run = args(
        &disk.join("run"),
        &["--num_epochs=3", "--is_debug_model=true"],
    )
    .iter()
    .map(|a| format!("'{a}'"))
    .collect::<Vec<_>>()
    .join(" ");
    let script = format!(
        "mount -t tmpfs -o size={} tmpfs '{disk}' || exit 99; \
         OMP_NUM_THREADS=1 '{bin}' {run}; echo \"exit=$?\" >&2; cp -r '{disk}/run' '{copy}'",
        size + size / 2,
        disk = disk.display(),
        bin = artifact("ssl-host").display(),
        copy = copy.display()
    );
    let Some(out) = in_mount_namespace(&script) else {
        eprintln!("skipped: no private mount namespace here (needs root for unshare -m)");
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(99) {
        eprintln!("skipped: cannot mount a tmpfs here:\n{stderr}");
        return;
    }
    assert!(stderr.contains("exit=1"), "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(
        stderr.contains("was not replaced and is as it was"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The epoch-1 checkpoint is whole and loads; metrics.csv has whole rows only.
    let text = std::fs::read_to_string(copy.join("metrics.csv")).unwrap();
    assert!(
        text.lines().skip(1).all(|l| l.split(',').count() == 3),
        "{text}"
    );
    assert!(text.lines().any(|l| l.starts_with("0,")), "{text}");
    let leftovers: Vec<_> = std::fs::read_dir(copy.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers, ["last.safetensors"]);
    let info = ssl_host(&[
        "inspect-checkpoint",
        &format!("--checkpoint={}", copy.display()),
    ]);
    info.assert_ok();
}
