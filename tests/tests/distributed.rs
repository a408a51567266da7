//! Distributed data-parallel training on c10d (Gloo, loopback), end to end: processes started
//! as torchrun starts them (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`, ...).
//!
//! - 2 processes with per-process batches B equal 1 process with batches 2B, for SimCLR and BYOL:
//!   after one step every checkpoint tensor (parameters, BatchNorm statistics, the optimizers'
//!   momentum, i.e. the averaged gradients) within 1e-3 relative; after 2 epochs every metric
//!   within 1e-3. (After several steps, single tensors of these tiny runs drift apart by more
//!   than 1e-3 from float-order noise alone: one process with 1 or 2 threads differs as much.)
//! - SimCLR's negatives really come from both processes;
//! - a killed process ends the other with an error naming it, and the checkpoint loads;
//! - a 2-process run resumed with 1 process (and the reverse) continues its schedule;
//! - with `skip_unreadable_images`, a corrupt image keeps every process's batches whole: 2
//!   processes still equal 1 with the doubled batch.

use e2e::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A small Shapes run on `processes` processes: 64 training and 16 validation samples, a
/// global batch of 16 (SSL and linear head) split between the processes, 2 epochs, SGD with a
/// small learning rate and the CIFAR stem (32×32 feature maps): a setting where float-order
/// differences stay small (with the 7×7 stem on 32 px images, or Adam, one process with 1 or
/// 2 threads already differs by more than 1e-3 after a few steps).
fn args(model: &str, out: &Path, processes: usize, extra: &[&str]) -> Vec<String> {
    let mut args = run_args(model, out, processes);
    args.extend(
        [
            "--ssl_dataset_params.num_samples=80",
            "--linear_head_dataset_params.num_samples=80",
            "--ssl_dataset_params.image_size=32",
            "--linear_head_dataset_params.image_size=32",
        ]
        .map(String::from),
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The settings of [`args`] other than the Shapes dataset's: for any model of 32 px images.
fn run_args(model: &str, out: &Path, processes: usize) -> Vec<String> {
    let per = 16 / processes;
    vec![
        format!("--model={model}"),
        format!("--output_dir={}", out.display()),
        "--device=cpu".into(),
        "--val_split=0.2".into(),
        format!("--ssl_training_batch_size={per}"),
        format!("--linear_head_batch_size={per}"),
        "--ssl_encoder=resnet18".into(),
        "--num_workers=1".into(),
        "--num_epochs=2".into(),
        "--warmup_epochs=1".into(),
        "--scale_lr_by_world_size=false".into(),
        "--sync_batchnorm=true".into(),
        "--encoder_params.cifar_stem=true".into(),
        "--optimizer=sgd".into(),
        "--l_rate=1e-4".into(),
        "--learning_rate_linear_head_during_ssl_training=1e-4".into(),
    ]
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `n` processes of `ssl-host args` as one distributed run.
fn spawn_world(n: usize, args: &[String]) -> Vec<Child> {
    spawn_ranks(n, |_| args.to_vec())
}

/// Starts `n` processes as one distributed run, rank `r` with the arguments `args(r)`.
fn spawn_ranks(n: usize, args: impl Fn(usize) -> Vec<String>) -> Vec<Child> {
    spawn_ranks_with(n, args, &[])
}

/// As [`spawn_ranks`], with the environment variables `env` added.
fn spawn_ranks_with(
    n: usize,
    args: impl Fn(usize) -> Vec<String>,
    env: &[(&str, String)],
) -> Vec<Child> {
    let port = free_port().to_string();
    (0..n)
        .map(|rank| {
            Command::new(artifact("ssl-host"))
                .args(args(rank))
                .envs(env.iter().map(|(k, v)| (k, v)))
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("WORLD_SIZE", n.to_string())
                .env("LOCAL_WORLD_SIZE", n.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env("OMP_NUM_THREADS", "1")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("starting ssl-host")
        })
        .collect()
}

/// Waits for every process (at most `limit`), returning (exit code, stderr) per rank.
fn wait_all(children: Vec<Child>, limit: Duration) -> Vec<(Option<i32>, String)> {
    let started = Instant::now();
    let mut children: Vec<Option<Child>> = children.into_iter().map(Some).collect();
    let mut done: Vec<Option<(Option<i32>, String)>> = vec![None; children.len()];
    while done.iter().any(Option::is_none) {
        for (i, slot) in children.iter_mut().enumerate() {
            if let Some(child) = slot {
                if child.try_wait().unwrap().is_some() {
                    let out = slot.take().unwrap().wait_with_output().unwrap();
                    done[i] = Some((
                        out.status.code(),
                        String::from_utf8_lossy(&out.stderr).into_owned(),
                    ));
                }
            }
        }
        if started.elapsed() > limit {
            for child in children.iter_mut().flatten() {
                let _ = child.kill();
            }
            panic!("the distributed run did not end within {limit:?}: {done:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done.into_iter().map(Option::unwrap).collect()
}

fn run_world(n: usize, args: &[String]) {
    for (rank, (code, stderr)) in wait_all(spawn_world(n, args), Duration::from_secs(600))
        .into_iter()
        .enumerate()
    {
        assert_eq!(code, Some(0), "rank {rank} of {n} failed:\n{stderr}");
    }
}

/// One process, with one thread as each process of [`run_world`] has; its stderr.
fn run_one(args: &[String]) -> String {
    let output = Command::new(artifact("ssl-host"))
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .expect("starting ssl-host");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "ssl-host failed:\n{stderr}");
    stderr
}

/// metrics.csv as (epoch, name) -> value, leaving out wall-clock metrics.
fn metrics(dir: &Path) -> BTreeMap<(usize, String), f64> {
    let text = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    text.lines()
        .skip(1)
        .filter(|l| !l.contains("throughput/") && !l.contains("time/"))
        .map(|l| {
            let mut f = l.splitn(3, ',');
            let epoch = f.next().unwrap().parse().unwrap();
            let name = f.next().unwrap().to_string();
            ((epoch, name), f.next().unwrap().parse().unwrap())
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-3 * a.abs().max(b.abs()) + 1e-6
}

fn assert_same_metrics(a: &Path, b: &Path) {
    let (ma, mb) = (metrics(a), metrics(b));
    assert_eq!(
        ma.keys().collect::<Vec<_>>(),
        mb.keys().collect::<Vec<_>>(),
        "{} and {} log different metrics",
        a.display(),
        b.display()
    );
    for (key, va) in &ma {
        let vb = mb[key];
        assert!(
            close(*va, vb),
            "{key:?}: {va} ({}) vs {vb} ({})",
            a.display(),
            b.display()
        );
    }
}

fn checkpoint(dir: &Path) -> PathBuf {
    dir.join("checkpoints").join("last.safetensors")
}

/// Every tensor of the two checkpoints within 1e-3 relative (as a whole: ‖a − b‖ ≤ 1e-3 ‖a‖,
/// plus 1e-6 for tensors that are zero up to float noise, such as the gradient of a bias
/// followed by BatchNorm).
fn assert_same_checkpoints(a: &Path, b: &Path) {
    let (ba, bb) = (
        std::fs::read(checkpoint(a)).unwrap(),
        std::fs::read(checkpoint(b)).unwrap(),
    );
    let ta = safetensors::SafeTensors::deserialize(&ba).unwrap();
    let tb = safetensors::SafeTensors::deserialize(&bb).unwrap();
    let mut names = ta.names();
    names.sort();
    let mut names_b = tb.names();
    names_b.sort();
    assert_eq!(names, names_b, "the checkpoints hold different tensors");
    let values = |v: &safetensors::tensor::TensorView| -> Vec<f64> {
        let d = v.data();
        match v.dtype() {
            safetensors::Dtype::F32 => d
                .chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            safetensors::Dtype::F64 => d
                .chunks(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            safetensors::Dtype::I64 => d
                .chunks(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            other => panic!("unexpected dtype {other:?}"),
        }
    };
    let mut compared = 0;
    for name in names {
        let (va, vb) = (ta.tensor(name).unwrap(), tb.tensor(name).unwrap());
        assert_eq!(va.shape(), vb.shape(), "{name}");
        let (xa, xb) = (values(&va), values(&vb));
        let diff: f64 = xa
            .iter()
            .zip(&xb)
            .map(|(p, q)| (p - q).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm: f64 = xa.iter().map(|p| p * p).sum::<f64>().sqrt();
        assert!(
            diff <= 1e-3 * norm + 1e-6,
            "{name}: ‖a − b‖ = {diff} against ‖a‖ = {norm}"
        );
        compared += 1;
    }
    assert!(compared > 50, "only {compared} tensors");
}

fn two_processes_equal_one(model: &str) {
    let tmp = tempfile::tempdir().unwrap();
    // One step (a debug epoch) with a learning rate that moves the model: every tensor.
    let (one, two) = (tmp.path().join("one_step"), tmp.path().join("two_step"));
    let step = [
        "--is_debug_model=true",
        "--num_epochs=1",
        "--lr_schedule=constant",
        "--l_rate=0.05",
        "--learning_rate_linear_head_during_ssl_training=0.01",
    ];
    run_one(&args(model, &one, 1, &step));
    run_world(2, &args(model, &two, 2, &step));
    assert_same_metrics(&one, &two);
    assert_same_checkpoints(&one, &two);
    // Two epochs: every metric.
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    run_one(&args(model, &one, 1, &[]));
    run_world(2, &args(model, &two, 2, &[]));
    assert_same_metrics(&one, &two);
    // Only rank 0 wrote: one metrics file, one config, one checkpoint.
    let config = std::fs::read_to_string(two.join("config.toml")).unwrap();
    assert!(config.contains("ssl_training_batch_size = 8"), "{config}");
}

/// Under torchrun a world of one process is distributed: its collectives run (so
/// `--dist_backend=nccl` on one GPU exercises NCCL), and it trains exactly as a plain run.
#[test]
fn a_world_of_one_process_runs_its_collectives_and_equals_a_plain_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (plain, world) = (tmp.path().join("plain"), tmp.path().join("world"));
    let step = [
        "--is_debug_model=true",
        "--num_epochs=1",
        "--lr_schedule=constant",
        "--l_rate=0.05",
    ];
    let stderr = run_one(&args("ShapesSimCLR", &plain, 1, &step));
    assert!(!stderr.contains("gradient all-reduce"), "{stderr}");
    let (code, stderr) = wait_all(
        spawn_world(1, &args("ShapesSimCLR", &world, 1, &step)),
        Duration::from_secs(600),
    )
    .remove(0);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("distributed: 1 processes joined"),
        "{stderr}"
    );
    assert!(stderr.contains("gradient all-reduce"), "{stderr}");
    assert_same_metrics(&plain, &world);
    assert_same_checkpoints(&plain, &world);
}

#[test]
fn two_simclr_processes_with_batch_b_equal_one_with_batch_2b() {
    two_processes_equal_one("ShapesSimCLR");
}

#[test]
fn two_byol_processes_with_batch_b_equal_one_with_batch_2b() {
    two_processes_equal_one("ShapesBYOL");
}

/// SimCLR on an image folder of 80 PNG and JPEG images (4 classes, 32 px).
const FOLDER_SIMCLR: &str = r#"
description = "SimCLR on an image folder with a corrupt image"
ssl_training_dataset_name = "ImageFolder"
linear_head_dataset_name = "ImageFolder"
ssl_encoder = "resnet18"
ssl_training_type = "SimCLR"
skip_unreadable_images = true

[[ssl_augmentations]]
name = "RandomResizedCrop"
size = 32
scale = [0.3, 1.0]

[[ssl_augmentations]]
name = "RandomHorizontalFlip"
p = 0.5

[[linear_head_augmentations]]
name = "RandomHorizontalFlip"
p = 0.5
"#;

/// With `skip_unreadable_images`, a corrupt image is replaced by a stand-in that every process
/// (and one process with the doubled batch) chooses alike: the processes' batches keep one
/// shape, so their collectives match (a batch one row short made Gloo abort the run: "Received
/// data size doesn't match expected size"), and 2 processes with batch B still equal 1 with 2B.
#[test]
fn a_corrupt_image_skipped_on_two_processes_equals_one_process_with_the_doubled_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("images");
    ssl_builtin_datasets::testdata::cxr::write_image_folder(&folder, &["a", "b", "c", "d"], 20, 32)
        .unwrap();
    let victim = folder.join("b").join("img4.png");
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 2]).unwrap();
    let config = tmp.path().join("FolderSimCLR.toml");
    std::fs::write(&config, FOLDER_SIMCLR).unwrap();
    // One epoch reads every sample once, the corrupt one and its stand-in included (the
    // float-order drift of a second epoch can flip a near-tie prediction of the barely trained
    // linear head, an accuracy step of 1/64). A different stand-in on one side moves the linear
    // head's training loss by about 1e-2 (measured), far beyond the tolerance.
    let run = |out: &Path, processes: usize| {
        let mut args = run_args(config.to_str().unwrap(), out, processes);
        args.retain(|a| !a.starts_with("--num_epochs="));
        args.push("--num_epochs=1".into());
        args.push(format!("--local_dataset={}", folder.display()));
        args
    };
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    let stderr = run_one(&run(&one, 1));
    assert!(
        stderr.contains("skipped 1 unreadable image") && stderr.contains("img4.png"),
        "{stderr}"
    );
    run_world(2, &run(&two, 2));
    assert_same_metrics(&one, &two);
}

#[test]
fn simclr_takes_its_negatives_from_every_process() {
    let tmp = tempfile::tempdir().unwrap();
    let (gathered, local) = (tmp.path().join("gathered"), tmp.path().join("local"));
    let one_epoch = ["--num_epochs=1"];
    run_world(2, &args("ShapesSimCLR", &gathered, 2, &one_epoch));
    let mut no_gather = args("ShapesSimCLR", &local, 2, &one_epoch);
    no_gather.push("--algorithm_params.gather_negatives=false".into());
    run_world(2, &no_gather);
    let key = (0, "simclr/train/loss".to_string());
    let (a, b) = (metrics(&gathered)[&key], metrics(&local)[&key]);
    // 31 negatives per row instead of 15: the loss grows by about ln 2.
    assert!(a - b > 0.2, "gathered {a}, local {b}");
}

#[test]
fn a_killed_process_ends_the_other_with_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let run = args(
        "ShapesSimCLR",
        &out,
        2,
        &[
            "--num_epochs=1000",
            "--dist_timeout=30",
            "--knn_monitor=false",
        ],
    );
    let mut children = spawn_world(2, &run);
    let started = Instant::now();
    while !checkpoint(&out).exists() {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no checkpoint after 300 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut rank1 = children.pop().unwrap();
    rank1.kill().unwrap();
    let _ = rank1.wait();
    let killed = Instant::now();
    let results = wait_all(children, Duration::from_secs(120));
    let (code, stderr) = &results[0];
    assert!(
        killed.elapsed() < Duration::from_secs(60),
        "rank 0 took {:?} to stop",
        killed.elapsed()
    );
    assert_ne!(*code, Some(0), "{stderr}");
    assert!(stderr.contains("rank 1"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The last checkpoint is whole: the run continues from it in one process, for one epoch.
    let done = metrics(&out).keys().map(|k| k.0 + 1).max().unwrap_or(0);
    let mut resume = vec![
        format!("--output_dir={}", out.display()),
        "--resume=auto".to_string(),
        "--ssl_training_batch_size=16".into(),
        "--linear_head_batch_size=16".into(),
        format!("--stop_after_epochs={}", done + 1),
    ];
    resume.push("--num_workers=1".into());
    let refs: Vec<&str> = resume.iter().map(String::as_str).collect();
    let resumed = ssl_host(&refs);
    resumed.assert_ok();
    assert!(
        resumed.stderr.contains("continuing the run"),
        "{}",
        resumed.stderr
    );
}

#[test]
fn a_run_resumed_with_another_number_of_processes_continues_its_schedule() {
    let tmp = tempfile::tempdir().unwrap();
    let model = "ShapesSimCLR";
    // Straight runs.
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    run_one(&args(model, &one, 1, &[]));
    run_world(2, &args(model, &two, 2, &[]));
    // 2 processes for an epoch, then 1 with the same global batch.
    let two_then_one = tmp.path().join("two_then_one");
    run_world(
        2,
        &args(model, &two_then_one, 2, &["--stop_after_epochs=1"]),
    );
    run_one(&[
        format!("--output_dir={}", two_then_one.display()),
        "--resume".into(),
        "--ssl_training_batch_size=16".into(),
        "--linear_head_batch_size=16".into(),
    ]);
    assert_same_metrics(&two, &two_then_one);
    // And the reverse.
    let one_then_two = tmp.path().join("one_then_two");
    run_one(&args(model, &one_then_two, 1, &["--stop_after_epochs=1"]));
    run_world(
        2,
        &[
            format!("--output_dir={}", one_then_two.display()),
            "--resume".into(),
            "--ssl_training_batch_size=8".into(),
            "--linear_head_batch_size=8".into(),
        ],
    );
    assert_same_metrics(&one, &one_then_two);
}

#[test]
fn processes_started_with_different_arguments_stop_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let port = free_port().to_string();
    let children: Vec<Child> = [("0", "ShapesSimCLR"), ("1", "ShapesBYOL")]
        .iter()
        .map(|(rank, model)| {
            Command::new(artifact("ssl-host"))
                .args(args(model, &out, 2, &[]))
                .env("RANK", rank)
                .env("LOCAL_RANK", rank)
                .env("WORLD_SIZE", "2")
                .env("LOCAL_WORLD_SIZE", "2")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env("OMP_NUM_THREADS", "1")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let results = wait_all(children, Duration::from_secs(120));
    for (rank, (code, stderr)) in results.iter().enumerate() {
        assert_eq!(*code, Some(1), "rank {rank}: {stderr}");
        assert!(
            stderr.contains("differs from rank 0's") || stderr.contains("is gone"),
            "rank {rank}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert!(results[1].1.contains("rank(s) 1"), "{}", results[1].1);
    assert!(!checkpoint(&out).exists());
}

/// The arguments of a run of the fault-injection algorithm (`Faulty`) on the settings of
/// [`args`], with its `algorithm_params` `faults`.
fn faulty(out: &Path, processes: usize, faults: &[&str], extra: &[&str]) -> Vec<String> {
    let mut all = args("ShapesSimCLR", out, processes, extra);
    all.splice(
        0..0,
        ["--plugin".to_string(), fault_plugin().display().to_string()],
    );
    all.push("--ssl_training_type=Faulty".into());
    all.extend(faults.iter().map(|f| format!("--algorithm_params.{f}")));
    all
}

/// A parameter that one process's step does not use (its gradient undefined there) still gets
/// the gradient averaged over the processes: the all-reduce is laid out from the parameter list,
/// not from the gradients a process happens to hold (before, rank 1's buckets were 4 bytes
/// short and Gloo aborted the run). Compared with one process whose batch stands for both
/// processes' rows, `aux` used for rank 0's only: every tensor after one step, every metric
/// after 2 epochs.
#[test]
fn a_parameter_unused_on_one_process_gets_the_gradient_averaged_over_all() {
    let tmp = tempfile::tempdir().unwrap();
    let step = [
        "--is_debug_model=true",
        "--num_epochs=1",
        "--lr_schedule=constant",
        "--l_rate=0.05",
        "--learning_rate_linear_head_during_ssl_training=0.01",
        "--knn_monitor=false",
    ];
    let one_process = ["unused_on_rank=1", "one_process_as_world=2"];
    let (one, two) = (tmp.path().join("one_step"), tmp.path().join("two_step"));
    run_one(&faulty(&one, 1, &one_process, &step));
    run_world(2, &faulty(&two, 2, &["unused_on_rank=1"], &step));
    assert_same_checkpoints(&one, &two);
    assert_same_metrics(&one, &two);
    // `aux` moved: it had a gradient on the process that used it.
    let ckpt = std::fs::read(checkpoint(&two)).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&ckpt).unwrap();
    let aux = tensors
        .names()
        .into_iter()
        .find(|n| n.starts_with("algorithm.") && n.ends_with("aux"))
        .expect("the aux parameter in the checkpoint")
        .to_string();
    let value = f32::from_le_bytes(
        tensors.tensor(&aux).unwrap().data()[..4]
            .try_into()
            .unwrap(),
    );
    assert!(value != 0.0, "{aux} = {value}");
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    run_one(&faulty(&one, 1, &one_process, &["--knn_monitor=false"]));
    run_world(
        2,
        &faulty(&two, 2, &["unused_on_rank=1"], &["--knn_monitor=false"]),
    );
    assert_same_metrics(&one, &two);
}

/// `nan_policy = skip_step` on 2 processes: a step whose loss is not finite is skipped by both,
/// left out of the epoch's loss (which stays finite) and counted once.
#[test]
fn a_nonfinite_step_is_skipped_by_every_process_and_left_out_of_the_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    run_world(
        2,
        &faulty(
            &out,
            2,
            &["nonfinite_at_step=2"],
            &[
                "--num_epochs=1",
                "--nan_policy=skip_step",
                "--knn_monitor=false",
            ],
        ),
    );
    let m = metrics(&out);
    assert_eq!(m[&(0, "steps/skipped_nonfinite".to_string())], 1.0, "{m:?}");
    let loss = m[&(0, "faulty/train/loss".to_string())];
    assert!(loss.is_finite(), "{m:?}");
}

/// SIGTERM to every process of a run whose epochs are one step long (so the signal lands on an
/// epoch's last step): every process writes its part of the epoch and exits 143 (the agreed
/// signal, not the sum of the processes' signals: 158 before).
#[test]
fn sigterm_to_every_process_on_an_epochs_last_step_exits_143_everywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let run = args(
        "ShapesSimCLR",
        &out,
        2,
        &[
            "--is_debug_model=true",
            "--num_epochs=1000",
            "--knn_monitor=false",
        ],
    );
    let children = spawn_world(2, &run);
    let started = Instant::now();
    while !checkpoint(&out).exists() {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no checkpoint"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for child in &children {
        // SAFETY: kill(2) on a child process this test started and has not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }
    for (rank, (code, stderr)) in wait_all(children, Duration::from_secs(120))
        .into_iter()
        .enumerate()
    {
        assert_eq!(code, Some(143), "rank {rank}: {stderr}");
        assert!(
            stderr.contains("stopped by SIGTERM"),
            "rank {rank}: {stderr}"
        );
    }
    // The run continues from the checkpoint.
    let done = metrics(&out).keys().map(|k| k.0 + 1).max().unwrap();
    run_world(
        2,
        &[
            format!("--output_dir={}", out.display()),
            "--resume".into(),
            format!("--stop_after_epochs={}", done + 1),
        ],
    );
}

/// Processes whose `--output_dir` is on node-local disks: rank 1's folder holds another run
/// (another seed, another epoch). Rank 0 decides and sends its checkpoint, so both continue rank
/// 0's run at its epoch, equal to the same run resumed from one shared folder (before, rank 1
/// loaded its own checkpoint).
#[test]
fn processes_with_node_local_folders_continue_rank_0s_run() {
    let tmp = tempfile::tempdir().unwrap();
    let model = "ShapesSimCLR";
    let (shared, local0, local1) = (
        tmp.path().join("shared"),
        tmp.path().join("local0"),
        tmp.path().join("local1"),
    );
    run_world(2, &args(model, &shared, 2, &["--stop_after_epochs=1"]));
    e2e::copy_dir(&shared, &local0);
    run_world(
        2,
        &args(
            model,
            &local1,
            2,
            &["--random_seed=7", "--num_epochs=3", "--stop_after_epochs=2"],
        ),
    );
    let resume = |dir: &Path| vec![format!("--output_dir={}", dir.display()), "--resume".into()];
    run_world(2, &resume(&shared));
    let ended = wait_all(
        spawn_ranks(2, |rank| resume(if rank == 0 { &local0 } else { &local1 })),
        Duration::from_secs(600),
    );
    for (rank, (code, stderr)) in ended.iter().enumerate() {
        assert_eq!(*code, Some(0), "rank {rank}: {stderr}");
        assert!(
            !stderr.contains("differ from rank 0"),
            "rank {rank}: {stderr}"
        );
    }
    assert_same_metrics(&shared, &local0);
    // Rank 1 wrote nothing into its own folder's run.
    assert_eq!(metrics(&local1).keys().map(|k| k.0).max(), Some(1));
}

/// A plugin whose rank 1 all-gathers one row fewer: with `--dist_debug` every process stops at
/// that collective with an error naming it and each rank's shape; without, the processes still
/// end with an error (exit 1), never an abort.
#[test]
fn a_collective_of_another_shape_on_one_process_is_named_with_dist_debug() {
    let tmp = tempfile::tempdir().unwrap();
    let step = [
        "--is_debug_model=true",
        "--num_epochs=1",
        "--dist_timeout=30",
    ];
    let mut debug: Vec<&str> = step.to_vec();
    debug.push("--dist_debug=true");
    let run = faulty(
        &tmp.path().join("debug"),
        2,
        &["mismatch_on_rank=1"],
        &debug,
    );
    for (rank, (code, stderr)) in wait_all(spawn_world(2, &run), Duration::from_secs(180))
        .into_iter()
        .enumerate()
    {
        assert_eq!(code, Some(1), "rank {rank}: {stderr}");
        assert!(
            stderr.contains("differs between ranks: rank 0 all-gather with gradient float [8, 32], rank 1 all-gather with gradient float [7, 32] (--dist_debug)"),
            "rank {rank}: {stderr}"
        );
        assert!(
            !stderr.contains("panicked") && !stderr.contains("terminate called"),
            "{stderr}"
        );
    }
    let run = faulty(&tmp.path().join("plain"), 2, &["mismatch_on_rank=1"], &step);
    for (rank, (code, stderr)) in wait_all(spawn_world(2, &run), Duration::from_secs(180))
        .into_iter()
        .enumerate()
    {
        assert_eq!(code, Some(1), "rank {rank}: {stderr}");
        assert!(
            stderr.contains("error: ") && stderr.contains("distributed training: "),
            "rank {rank}: {stderr}"
        );
        assert!(
            !stderr.contains("terminate called"),
            "rank {rank}: {stderr}"
        );
    }
}

/// A packed dataset in object storage read by 2 processes with `sample_order = shards`: in an
/// epoch each process reads its own half of the shards (8 of 16), and the run equals the one-process run
/// with 2 partitions and the doubled batch.
#[test]
fn two_processes_reading_shards_from_s3_each_read_half_and_equal_one_process() {
    use e2e::servers::{Kind, Server};
    let server = Server::start(Kind::Moto);
    let tmp = tempfile::tempdir().unwrap();
    let env = server.env_with_cache(&tmp.path().join("staging"));
    let url = format!("{}/shapes", server.bucket("data"));
    ssl_host_with_env(
        &[
            "pack",
            "--dataset=Shapes",
            "--num_samples=80",
            "--image_size=32",
            "--shard_samples=5",
            &format!("--output={url}"),
        ],
        &env,
    )
    .assert_ok();
    let packed_args = |out: &Path, processes: usize| {
        let mut args = run_args("ShapesBYOL", out, processes);
        args.extend([
            "--ssl_training_dataset_name=Packed".to_string(),
            "--linear_head_dataset_name=Packed".into(),
            format!("--local_dataset={url}"),
            "--sample_order=shards".into(),
            "--shard_partitions=2".into(),
            "--val_split=0".into(),
            "--knn_monitor=false".into(),
            // One epoch: the next one deals the shards anew (another half per process).
            "--num_epochs=1".into(),
            format!("--cache_dir={}", tmp.path().join("cache").display()),
        ]);
        args
    };
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    let output = Command::new(artifact("ssl-host"))
        .args(packed_args(&one, 1))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let results = wait_all(
        spawn_ranks_with(2, |_| packed_args(&two, 2), &env),
        Duration::from_secs(600),
    );
    let prefix = format!("of the 16 shards of {url}");
    for (rank, (code, stderr)) in results.iter().enumerate() {
        assert_eq!(*code, Some(0), "rank {rank}: {stderr}");
        let line = stderr
            .lines()
            .find(|l| l.starts_with(&format!("process {rank}: read ")) && l.contains(&prefix))
            .unwrap_or_else(|| panic!("rank {rank} reports no shards:\n{stderr}"));
        let read: usize = line.split_whitespace().nth(3).unwrap().parse().unwrap();
        assert!(
            read <= 9,
            "rank {rank} read more than its half: {line}\n{stderr}"
        );
    }
    assert_same_metrics(&one, &two);
}

/// NCCL is compiled in, but it needs CUDA: asked for on the CPU, the run stops at start with an
/// error saying so (exit 1, no panic), before any collective.
#[test]
fn nccl_asked_for_on_the_cpu_stops_at_start_saying_it_needs_cuda() {
    let tmp = tempfile::tempdir().unwrap();
    let mut run = args("ShapesBYOL", &tmp.path().join("run"), 1, &[]);
    run.push("--dist_backend=nccl".into());
    let results = wait_all(spawn_ranks(1, |_| run.clone()), Duration::from_secs(120));
    let (code, stderr) = &results[0];
    assert_eq!(*code, Some(1), "{stderr}");
    assert!(
        stderr.contains("--dist_backend=nccl needs CUDA") && !stderr.contains("panicked"),
        "{stderr}"
    );
}
