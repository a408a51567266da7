//! Classifier runs on a pretrained encoder: frozen encoders stay bit-for-bit unchanged,
//! unfrozen ones train; exact resume; `--encoder_init` from torchvision-named weights; clear
//! errors for bad checkpoints; multi-label heads on a dataset with findings.

use e2e::*;
use ssl_builtin_datasets::testdata::cifar::write_cifar10_binary;
use std::collections::BTreeMap;
use std::path::Path;

/// Tensors of a safetensors file as (dtype, shape, bytes), by name.
type Stored = BTreeMap<String, (String, Vec<usize>, Vec<u8>)>;

fn read_tensors(path: &Path) -> Stored {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                name,
                (
                    format!("{:?}", view.dtype()),
                    view.shape().to_vec(),
                    view.data().to_vec(),
                ),
            )
        })
        .collect()
}

/// The tensors under `prefix`, with the prefix removed.
fn under(stored: &Stored, prefix: &str) -> Stored {
    stored
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v.clone())))
        .collect()
}

fn run(args: &[String]) -> Run {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ssl_host(&refs)
}

/// A one-epoch ShapesBYOL debug run (ResNet18) in `dir`.
fn ssl_run(dir: &Path) {
    run(&[
        "--model=ShapesBYOL".into(),
        format!("--output_dir={}", dir.display()),
        "--is_debug_model=true".into(),
        "--num_epochs=1".into(),
        "--ssl_encoder=resnet18".into(),
        "--ssl_training_batch_size=8".into(),
        "--linear_head_batch_size=8".into(),
        "--ssl_dataset_params.num_samples=80".into(),
        "--linear_head_dataset_params.num_samples=80".into(),
        "--num_workers=2".into(),
        "--device=cpu".into(),
    ])
    .assert_ok();
}

/// A small classifier run on Shapes over the encoder of `weights` (a checkpoint or run folder).
fn classifier_args(out: &Path, extra: &[String]) -> Vec<String> {
    let mut args = vec![
        "--model=SSLClassifierCIFAR".into(),
        format!("--output_dir={}", out.display()),
        "--linear_head_dataset_name=Shapes".into(),
        "--linear_head_dataset_params.num_samples=120".into(),
        "--linear_head_batch_size=16".into(),
        "--num_epochs=2".into(),
        "--num_workers=2".into(),
        "--device=cpu".into(),
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn frozen_encoders_stay_unchanged_and_unfrozen_ones_train() {
    let tmp = tempfile::tempdir().unwrap();
    let ssl = tmp.path().join("ssl");
    ssl_run(&ssl);
    let ssl_tensors = read_tensors(&ssl.join("checkpoints/last.safetensors"));
    let target = under(&ssl_tensors, "algorithm.target.encoder.");
    assert!(target.contains_key("conv1.weight") && target.contains_key("bn1.running_mean"));

    let frozen = tmp.path().join("frozen");
    run(&classifier_args(
        &frozen,
        &[format!("--local_ssl_weights_path={}", ssl.display())],
    ))
    .assert_ok();
    let stored = read_tensors(&frozen.join("checkpoints/last.safetensors"));
    let encoder = under(&stored, "encoder.");
    assert_eq!(
        encoder.keys().collect::<Vec<_>>(),
        target.keys().collect::<Vec<_>>()
    );
    for (name, value) in &encoder {
        assert!(
            value == &target[name],
            "frozen encoder tensor {name} changed"
        );
    }
    let names: Vec<String> = metric_rows(&frozen)
        .iter()
        .filter_map(|l| l.split(',').nth(1).map(str::to_string))
        .collect();
    for name in [
        "train/loss",
        "train/AccuracyAtThreshold05",
        "val/loss",
        "val/AccuracyAtThreshold05",
        "test/AccuracyAtThreshold05",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} missing: {names:?}");
    }
    let config = std::fs::read_to_string(frozen.join("config.toml")).unwrap();
    assert!(config.contains("ssl_encoder = \"resnet18\""), "{config}");

    // The run folder's checkpoint (a file path works as well) and fine-tuning.
    let tuned = tmp.path().join("tuned");
    run(&classifier_args(
        &tuned,
        &[
            format!(
                "--local_weights_path={}",
                ssl.join("checkpoints/last.safetensors").display()
            ),
            "--freeze_encoder=false".into(),
        ],
    ))
    .assert_ok();
    let encoder = under(
        &read_tensors(&tuned.join("checkpoints/last.safetensors")),
        "encoder.",
    );
    let changed: Vec<&String> = encoder
        .iter()
        .filter(|(n, v)| *v != &target[*n])
        .map(|(n, _)| n)
        .collect();
    assert!(
        changed.iter().any(|n| n.ends_with("conv1.weight")),
        "{changed:?}"
    );
    assert!(
        changed.iter().any(|n| n.ends_with("running_mean")),
        "{changed:?}"
    );

    // Resume: 1 epoch then resumed to 2 writes the same metrics as 2 in one go.
    let split = tmp.path().join("split");
    run(&classifier_args(
        &split,
        &[
            format!("--local_ssl_weights_path={}", ssl.display()),
            "--stop_after_epochs=1".into(),
        ],
    ))
    .assert_ok();
    run(&[
        "--resume".into(),
        format!("--output_dir={}", split.display()),
    ])
    .assert_ok();
    assert_eq!(metric_rows(&split), metric_rows(&frozen));
}

#[test]
fn a_test_split_that_fails_keeps_the_run_and_resume_retries_it() {
    let tmp = tempfile::tempdir().unwrap();
    let ssl = tmp.path().join("ssl");
    ssl_run(&ssl);
    // CIFAR-10 in the binary layout, 40 training images, its test batch missing.
    let cifar = tmp.path().join("cifar");
    write_cifar10_binary(&cifar, 8).unwrap();
    let test_batch = cifar.join("cifar-10-batches-bin/test_batch.bin");
    std::fs::remove_file(&test_batch).unwrap();
    let out = tmp.path().join("classifier");
    let args = [
        "--model=SSLClassifierCIFAR".to_string(),
        format!("--output_dir={}", out.display()),
        format!("--local_dataset={}", cifar.display()),
        format!("--local_ssl_weights_path={}", ssl.display()),
        "--linear_head_batch_size=4".into(),
        "--num_epochs=1".into(),
        "--num_workers=2".into(),
        "--device=cpu".into(),
    ];
    // Training prints its epochs first; the error (with its causes) comes last.
    let failed = run(&args);
    assert_eq!(failed.code, Some(1), "{}", failed.stderr);
    let last = failed.error_report();
    for needle in [
        "error: training finished",
        "test split",
        "test_batch.bin",
        "--resume",
    ] {
        assert!(last.contains(needle), "`{needle}` not in {last}");
    }
    assert!(!failed.stderr.contains("panicked"), "{}", failed.stderr);
    assert!(out.join("checkpoints/last.safetensors").exists());
    let trained = metric_rows(&out);
    assert!(
        trained.iter().any(|l| l.starts_with("0,val/loss,")),
        "{trained:?}"
    );
    assert!(!trained.iter().any(|l| l.contains("test/")), "{trained:?}");

    // The test batch back: a resume evaluates the test split only, keeping the epoch's rows.
    write_cifar10_binary(&cifar, 8).unwrap();
    run(&["--resume".into(), format!("--output_dir={}", out.display())]).assert_ok();
    let resumed = metric_rows(&out);
    assert_eq!(&resumed[..trained.len()], &trained[..]);
    assert!(
        resumed[trained.len()..]
            .iter()
            .any(|l| l.starts_with("1,test/AccuracyAtThreshold05,")),
        "{resumed:?}"
    );
}

#[test]
fn encoder_init_from_torchvision_named_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let ssl = tmp.path().join("ssl");
    ssl_run(&ssl);
    // A torchvision-named file: the target encoder's tensors plus an `fc` and counters that
    // torchvision has, as a user's converted weights would.
    let stored = read_tensors(&ssl.join("checkpoints/last.safetensors"));
    let encoder = under(&stored, "algorithm.target.encoder.");
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = encoder
        .iter()
        .map(|(n, (_, shape, bytes))| {
            (
                n.clone(),
                safetensors::Dtype::F32,
                shape.clone(),
                bytes.clone(),
            )
        })
        .collect();
    owned.push((
        "fc.weight".into(),
        safetensors::Dtype::F32,
        vec![2, 512],
        vec![0; 4096],
    ));
    owned.push((
        "bn1.num_batches_tracked".into(),
        safetensors::Dtype::I64,
        vec![],
        vec![0; 8],
    ));
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let weights = tmp.path().join("resnet18.safetensors");
    std::fs::write(&weights, safetensors::serialize(views, &None).unwrap()).unwrap();

    // A classifier from them: the frozen encoder is exactly the file.
    let out = tmp.path().join("classifier");
    run(&classifier_args(
        &out,
        &[
            format!("--encoder_init={}", weights.display()),
            "--ssl_encoder=resnet18".into(),
            "--encoder_params.cifar_stem=false".into(),
        ],
    ))
    .assert_ok();
    let loaded = under(
        &read_tensors(&out.join("checkpoints/last.safetensors")),
        "encoder.",
    );
    assert_eq!(loaded, encoder);

    // An SSL run from them: BYOL's epoch 0 trains at learning rate 0, so the online parameters
    // are still exactly the file's after it, and the target's up to the rounding of the moving
    // average (tau * x + (1 - tau) * x).
    let ssl2 = tmp.path().join("ssl2");
    run(&[
        "--model=ShapesBYOL".into(),
        format!("--output_dir={}", ssl2.display()),
        "--is_debug_model=true".into(),
        "--num_epochs=1".into(),
        "--ssl_encoder=resnet18".into(),
        "--ssl_training_batch_size=8".into(),
        "--linear_head_batch_size=8".into(),
        "--ssl_dataset_params.num_samples=80".into(),
        "--linear_head_dataset_params.num_samples=80".into(),
        format!("--encoder_init={}", weights.display()),
    ])
    .assert_ok();
    let after = read_tensors(&ssl2.join("checkpoints/last.safetensors"));
    for prefix in ["algorithm.online.encoder.", "algorithm.target.encoder."] {
        let got = under(&after, prefix);
        for (name, value) in &encoder {
            if name.contains("running_") {
                continue;
            }
            let floats = |b: &[u8]| -> Vec<f32> {
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            };
            let (a, b) = (floats(&got[name].2), floats(&value.2));
            let worst = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs() / (y.abs() + 1e-6))
                .fold(0f32, f32::max);
            let limit = if prefix.contains("online") { 0.0 } else { 1e-5 };
            assert!(
                worst <= limit,
                "{prefix}{name} differs from the file by {worst}"
            );
        }
    }

    // Weights of another architecture: every missing and mis-shaped name is listed.
    run(&classifier_args(
        &tmp.path().join("wrong"),
        &[
            format!("--encoder_init={}", weights.display()),
            "--ssl_encoder=resnet50".into(),
        ],
    ))
    .assert_clear_error(&[
        "does not fit",
        "missing",
        "wrong shape",
        "layer1.0.conv3.weight",
    ]);
}

#[test]
fn bad_checkpoints_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let ssl = tmp.path().join("ssl");
    ssl_run(&ssl);
    let with = |path: &Path, extra: &[&str]| {
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        extra.push(format!("--local_ssl_weights_path={}", path.display()));
        run(&classifier_args(&tmp.path().join("out"), &extra))
    };
    with(&tmp.path().join("nowhere.safetensors"), &[])
        .assert_clear_error(&["nowhere.safetensors", "does not exist"]);
    with(tmp.path(), &[]).assert_clear_error(&["not an ssl-host run folder"]);
    let bytes = std::fs::read(ssl.join("checkpoints/last.safetensors")).unwrap();
    let truncated = tmp.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    with(&truncated, &[]).assert_clear_error(&["truncated.safetensors", "truncated or corrupt"]);
    let foreign = tmp.path().join("foreign.safetensors");
    let data = [0u8; 8];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &data).unwrap();
    std::fs::write(
        &foreign,
        safetensors::serialize([("w", view)], &None).unwrap(),
    )
    .unwrap();
    with(&foreign, &[]).assert_clear_error(&["foreign.safetensors", "not an ssl-host checkpoint"]);
    with(&ssl, &["--ssl_encoder=resnet50"])
        .assert_clear_error(&["holds a `resnet18` encoder, not the `resnet50`"]);
    // A classifier needs an encoder.
    run(&classifier_args(&tmp.path().join("none"), &[]))
        .assert_clear_error(&["--local_ssl_weights_path"]);
}

/// The metric names of the run in `dir`.
fn names_in(dir: &Path) -> Vec<String> {
    metric_rows(dir)
        .iter()
        .filter_map(|l| l.split(',').nth(1).map(str::to_string))
        .collect()
}

/// On Shapes' multi-label option (which of four coloured shapes an image shows), the online
/// head of an SSL run and a classifier are multi-label heads with per-finding metrics, and the
/// classifier learns the findings. A TinyCNN encoder keeps it fast.
#[test]
fn a_multi_label_classifier_learns_the_findings_of_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = artifact("libexample_tiny_cnn.so").display().to_string();
    let findings = ["circle", "square", "triangle", "cross"];

    // One SSL step, its online head on the multi-label data: the kNN monitor is skipped.
    let ssl = tmp.path().join("ssl");
    let pretrained = run(&[
        format!("--plugin={tiny}"),
        "--model=ShapesSimCLR".into(),
        format!("--output_dir={}", ssl.display()),
        "--ssl_encoder=TinyCNN".into(),
        "--is_debug_model=true".into(),
        "--num_epochs=1".into(),
        "--ssl_training_batch_size=8".into(),
        "--linear_head_batch_size=8".into(),
        // 80 samples: validation splits of one batch of 8.
        "--ssl_dataset_params.num_samples=80".into(),
        "--linear_head_dataset_params.num_samples=80".into(),
        "--linear_head_dataset_params.multi_label=true".into(),
        "--num_workers=2".into(),
        "--device=cpu".into(),
    ]);
    pretrained.assert_ok();
    assert!(
        pretrained.stderr.contains("knn_monitor skipped")
            && pretrained.stderr.contains("multi-label"),
        "{}",
        pretrained.stderr
    );
    let names = names_in(&ssl);
    assert!(metric(&ssl, "ssl_online_evaluator/val/auroc_macro").is_finite());
    for name in [
        "ssl_online_evaluator/train/loss",
        "ssl_online_evaluator/train/online_auroc/square",
        "ssl_online_evaluator/train/online_auroc_macro",
        "ssl_online_evaluator/val/loss",
        "ssl_online_evaluator/val/auroc/circle",
        "ssl_online_evaluator/val/auprc/cross",
        "ssl_online_evaluator/val/auroc_macro",
        "ssl_online_evaluator/val/auprc_macro",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} missing: {names:?}");
    }
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("knn/") || n.contains("AccuracyAtThreshold05")),
        "{names:?}"
    );

    // A classifier on it, fine-tuned on 240 images for 4 epochs, without augmentations.
    let config = tmp.path().join("ShapesFindings.toml");
    std::fs::write(
        &config,
        r#"
description = "multi-label classifier on Shapes"
task = "classifier"
linear_head_dataset_name = "Shapes"
ssl_encoder = ""
linear_head_batch_size = 16
num_epochs = 4
l_rate = 1e-2
freeze_encoder = false
use_balanced_binary_loss_for_linear_head = true
random_seed = 1

[linear_head_dataset_params]
num_samples = 240
image_size = 32
multi_label = true
"#,
    )
    .unwrap();
    let out = tmp.path().join("classifier");
    run(&[
        format!("--plugin={tiny}"),
        format!("--model={}", config.display()),
        format!("--output_dir={}", out.display()),
        format!("--local_ssl_weights_path={}", ssl.display()),
        "--num_workers=2".into(),
        "--device=cpu".into(),
    ])
    .assert_ok();
    let names = names_in(&out);
    let mut expected: Vec<String> = Vec::new();
    for split in ["train", "val", "test"] {
        expected.push(format!("{split}/loss"));
        for metric in ["auroc", "auprc"] {
            expected.push(format!("{split}/{metric}_macro"));
            for finding in findings {
                expected.push(format!("{split}/{metric}/{finding}"));
            }
        }
    }
    for name in &expected {
        assert!(names.contains(name), "{name} missing: {names:?}");
    }
    assert!(
        !names.iter().any(|n| n.contains("AccuracyAtThreshold05")),
        "{names:?}"
    );
    let auroc = metric(&out, "val/auroc_macro");
    assert!(auroc > 0.8, "val/auroc_macro {auroc} after 4 epochs");
    for finding in findings {
        let v = metric(&out, &format!("val/auroc/{finding}"));
        assert!(v > 0.6, "val/auroc/{finding} = {v}");
    }
    assert!(metric(&out, "test/auroc_macro") > 0.8);

    // Stopped after 2 epochs and resumed: the same metrics as in one go.
    let split = tmp.path().join("split");
    run(&[
        format!("--plugin={tiny}"),
        format!("--model={}", config.display()),
        format!("--output_dir={}", split.display()),
        format!("--local_ssl_weights_path={}", ssl.display()),
        "--num_workers=2".into(),
        "--device=cpu".into(),
        "--stop_after_epochs=2".into(),
    ])
    .assert_ok();
    run(&[
        format!("--plugin={tiny}"),
        "--resume".into(),
        format!("--output_dir={}", split.display()),
    ])
    .assert_ok();
    assert_eq!(metric_rows(&split), metric_rows(&out));

    // Its predictions: one probability per finding.
    let csv = tmp.path().join("predictions.csv");
    run(&[
        format!("--plugin={tiny}"),
        "predict".into(),
        format!("--checkpoint={}", out.display()),
        "--dataset=Shapes".into(),
        "--multi_label=true".into(),
        "--num_samples=4".into(),
        "--device=cpu".into(),
        format!("--out={}", csv.display()),
    ])
    .assert_ok();
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "id,circle,square,triangle,cross");
    assert_eq!(lines.len(), 5, "{text}");
    for line in &lines[1..] {
        let p: Vec<f64> = line
            .split(',')
            .skip(1)
            .map(|v| v.parse().unwrap())
            .collect();
        assert!(
            p.len() == 4 && p.iter().all(|p| (0.0..=1.0).contains(p)),
            "{line}"
        );
    }
}
