//! `precision` end to end on the CPU: a bf16-mixed run follows the fp32 run of the same seed
//! within a tolerance and checkpoints fp32 tensors; a 16-mixed run trains with its loss
//! scaler; a CPU run has no device-memory metric.

use e2e::*;
use ssl_host::checkpoint::{self, Checkpoint};
use ssl_plugin_api::tch::Kind;
use std::path::Path;

/// The largest difference allowed between a bf16-mixed loss and the fp32 one of the same
/// step. Measured (2 CPU cores, libtorch 2.11): at most 0.041 over these 5 epochs' training and
/// validation losses (BYOL's loss lies in [-1, 1] here); 0.1 leaves a margin of ~2.5×.
const BF16_TOLERANCE: f64 = 0.1;

/// A 5-step BYOL run (one step per epoch, a TinyCNN encoder, 80 Shapes images) at `precision`.
fn byol(dir: &Path, precision: &str) -> Run {
    let tiny = artifact("libexample_tiny_cnn.so").display().to_string();
    let args = [
        format!("--plugin={tiny}"),
        "--model=ShapesBYOL".into(),
        format!("--output_dir={}", dir.display()),
        "--ssl_encoder=TinyCNN".into(),
        "--is_debug_model=true".into(),
        "--num_epochs=5".into(),
        // Every step trains (the warm-up's first epoch has learning rate 0).
        "--warmup_epochs=0".into(),
        "--ssl_training_batch_size=8".into(),
        "--linear_head_batch_size=8".into(),
        "--ssl_dataset_params.num_samples=80".into(),
        "--linear_head_dataset_params.num_samples=80".into(),
        "--num_workers=2".into(),
        "--device=cpu".into(),
        format!("--precision={precision}"),
    ];
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = ssl_host(&refs);
    run.assert_ok();
    run
}

/// The training and validation losses of every epoch, in order.
fn losses(dir: &Path) -> Vec<f64> {
    let map = metric_map(&std::fs::read_to_string(dir.join("metrics.csv")).unwrap());
    let values: Vec<f64> = map
        .iter()
        .filter(|((_, name), _)| name == "byol/train/loss" || name == "byol/val/loss")
        .map(|(_, v)| v.parse().unwrap())
        .collect();
    assert_eq!(values.len(), 10, "{map:?}");
    values
}

fn last_checkpoint(dir: &Path) -> Checkpoint {
    checkpoint::load(&dir.join("checkpoints/last.safetensors")).unwrap()
}

/// No tensor of `c` is half or bfloat16: each has the kind it has in `fp32` (the 32-true run's
/// checkpoint; BYOL's tau and the loss scaler's scale are doubles there too), and the
/// parameters are fp32.
fn assert_fp32(c: &Checkpoint, fp32: &Checkpoint) {
    for (name, tensor) in &c.tensors {
        let kind = tensor.kind();
        assert!(
            !matches!(kind, Kind::Half | Kind::BFloat16),
            "{name} is stored as {kind:?}"
        );
        if let Some(reference) = fp32.tensors.get(name) {
            assert_eq!(kind, reference.kind(), "{name}");
        }
    }
    let parameters = c
        .tensors
        .iter()
        .filter(|(n, _)| n.starts_with("algorithm.") || n.starts_with("linear_head."))
        .filter(|(_, t)| t.is_floating_point() && t.dim() > 0);
    assert!(parameters.clone().count() > 10);
    for (name, tensor) in parameters {
        assert_eq!(tensor.kind(), Kind::Float, "{name}");
    }
}

#[test]
fn bf16_mixed_follows_fp32_and_checkpoints_fp32_and_16_mixed_scales_its_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let (fp32, bf16, fp16) = (
        tmp.path().join("fp32"),
        tmp.path().join("bf16"),
        tmp.path().join("fp16"),
    );
    byol(&fp32, "32-true");
    byol(&bf16, "bf16");
    let (fp32_losses, bf16_losses) = (losses(&fp32), losses(&bf16));
    for (step, (a, b)) in fp32_losses.iter().zip(&bf16_losses).enumerate() {
        assert!(
            a.is_finite() && b.is_finite(),
            "{fp32_losses:?} {bf16_losses:?}"
        );
        assert!(
            (a - b).abs() <= BF16_TOLERANCE,
            "loss {step}: fp32 {a}, bf16 {b} ({fp32_losses:?} {bf16_losses:?})"
        );
    }
    // Autocast really ran: bf16 rounding shows in the losses.
    assert_ne!(fp32_losses, bf16_losses, "the bf16 run computed in fp32");

    let reference = last_checkpoint(&fp32);
    assert_eq!(reference.info.precision, "32-true");
    let stored = last_checkpoint(&bf16);
    assert_eq!(stored.info.precision, "bf16-mixed");
    assert_fp32(&stored, &reference);
    let mut names: Vec<&String> = stored.tensors.keys().collect();
    let mut reference_names: Vec<&String> = reference.tensors.keys().collect();
    names.sort();
    reference_names.sort();
    assert_eq!(names, reference_names, "no loss scaler, nothing else added");

    // 16-mixed on the CPU: finite losses (the scaler skips the steps that overflow), and the
    // checkpoint keeps the scaler's state.
    byol(&fp16, "16-mixed");
    assert!(losses(&fp16).iter().all(|l| l.is_finite()));
    let stored = last_checkpoint(&fp16);
    assert_eq!(stored.info.precision, "16-mixed");
    assert_fp32(&stored, &reference);
    let scale = stored.tensors["loss_scaler.scale"].double_value(&[]);
    assert!(scale > 0.0 && scale <= 65536.0, "{scale}");
    assert!(stored.tensors.contains_key("loss_scaler.good_steps"));

    // A CPU run has no device-memory metric, and metrics.csv is as ever.
    let text = std::fs::read_to_string(bf16.join("metrics.csv")).unwrap();
    assert!(text.starts_with("epoch,name,value\n"));
    assert!(!text.contains("memory/"), "{text}");
}

#[test]
fn the_original_flag_conflicts_with_another_precision_and_is_ignored_on_the_cpu() {
    ssl_host(&[
        "--model=ShapesBYOL",
        "--use_mixed_precision=true",
        "--precision=bf16-mixed",
    ])
    .assert_clear_error(&["use_mixed_precision = true", "precision = bf16-mixed"]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("legacy");
    let tiny = artifact("libexample_tiny_cnn.so").display().to_string();
    let run = ssl_host(&[
        &format!("--plugin={tiny}"),
        "--model=ShapesBYOL",
        &format!("--output_dir={}", dir.display()),
        "--ssl_encoder=TinyCNN",
        "--is_debug_model=true",
        "--num_epochs=1",
        "--ssl_training_batch_size=8",
        "--linear_head_batch_size=8",
        "--ssl_dataset_params.num_samples=80",
        "--linear_head_dataset_params.num_samples=80",
        "--device=cpu",
        "--use_mixed_precision=true",
    ]);
    run.assert_ok();
    assert!(
        run.stderr
            .contains("use_mixed_precision applies on CUDA only"),
        "{}",
        run.stderr
    );
    let stored = last_checkpoint(&dir);
    assert_eq!(stored.info.precision, "32-true");
    let listing = ssl_host(&[
        "inspect-checkpoint",
        &format!("--checkpoint={}", dir.display()),
    ]);
    listing.assert_ok();
    assert!(
        listing.stdout.contains(", precision 32-true"),
        "{}",
        listing.stdout
    );
    assert!(!stored.tensors.keys().any(|n| n.starts_with("loss_scaler.")));
}

/// A fine-tuning classifier run over the encoder of `ssl` at `precision`: Shapes, 2 epochs.
fn classifier(dir: &Path, ssl: &Path, precision: &str) -> Vec<f64> {
    let tiny = artifact("libexample_tiny_cnn.so").display().to_string();
    let args = [
        format!("--plugin={tiny}"),
        "--model=SSLClassifierCIFAR".into(),
        format!("--output_dir={}", dir.display()),
        format!("--local_ssl_weights_path={}", ssl.display()),
        "--linear_head_dataset_name=Shapes".into(),
        "--linear_head_dataset_params.num_samples=120".into(),
        "--linear_head_dataset_params.image_size=32".into(),
        "--linear_head_batch_size=8".into(),
        "--num_epochs=2".into(),
        "--freeze_encoder=false".into(),
        "--num_workers=2".into(),
        "--device=cpu".into(),
        format!("--precision={precision}"),
    ];
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ssl_host(&refs).assert_ok();
    let map = metric_map(&std::fs::read_to_string(dir.join("metrics.csv")).unwrap());
    let values: Vec<f64> = map
        .iter()
        .filter(|((_, name), _)| name == "train/loss" || name == "val/loss")
        .map(|(_, v)| v.parse().unwrap())
        .collect();
    assert_eq!(values.len(), 4, "{map:?}");
    values
}

/// Classifier runs honour `precision` too: the encoder under autocast, the head in fp32, the
/// losses near the fp32 run's, the checkpoint fp32 with the loss scaler's state in 16-mixed.
#[test]
fn classifiers_train_in_bf16_and_16_mixed_with_fp32_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let ssl = tmp.path().join("ssl");
    byol(&ssl, "32-true");
    let fp32 = tmp.path().join("fp32");
    let reference_losses = classifier(&fp32, &ssl, "32-true");
    let reference = last_checkpoint(&fp32);
    assert_eq!(reference.info.precision, "32-true");
    for precision in ["bf16-mixed", "16-mixed"] {
        let dir = tmp.path().join(precision);
        let got = classifier(&dir, &ssl, precision);
        eprintln!("{precision}: losses {got:?}, fp32 {reference_losses:?}");
        for (a, b) in reference_losses.iter().zip(&got) {
            assert!(b.is_finite(), "{precision}: {got:?}");
            // Cross-entropy of 4 classes (≈ 1.4): the same margin as the BYOL comparison.
            assert!(
                (a - b).abs() <= BF16_TOLERANCE,
                "{precision}: {reference_losses:?} against {got:?}"
            );
        }
        assert_ne!(reference_losses, got, "{precision}: computed in fp32");
        let stored = last_checkpoint(&dir);
        assert_eq!(stored.info.precision, precision);
        for (name, tensor) in &stored.tensors {
            assert!(
                !matches!(tensor.kind(), Kind::Half | Kind::BFloat16),
                "{precision}: {name} is {:?}",
                tensor.kind()
            );
        }
        assert_eq!(
            stored.tensors.contains_key("loss_scaler.scale"),
            precision == "16-mixed",
            "{precision}"
        );
    }
}
