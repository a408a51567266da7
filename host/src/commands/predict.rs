//! `ssl-host predict`: class probabilities of a classifier checkpoint for every image of a
//! dataset, as CSV `id,label,p0,...,pC-1` in dataset order. A multi-label classifier (trained
//! on a dataset with findings) writes `id,<finding 1>,...,<finding F>` instead: each
//! finding's probability (a sigmoid, not a softmax over them).
//!
//! The encoder runs in eval mode, then the linear head without dropout, then softmax. Images
//! go through the run's evaluation transform (`linear_head_val_augmentations`, else
//! `linear_head_augmentations`, as the original evaluates) with a fixed seed, so the output is
//! the same on every run.

use super::embed::{
    csv_field, embed_batch, encoder_in_channels, output_kind, to_vec_f32, EvalArgs, EvalSource,
    OutputFile,
};
use crate::checkpoint::Checkpoint;
use crate::cli::Cli;
use crate::config::{RunConfig, TransformSpec};
use crate::pipeline::Pipeline;
use crate::pretrained::{encoder_from_checkpoint, CLASSIFIER_ALGORITHM};
use crate::registry::Registry;
use crate::tasks::classifier::{findings_of_tensor, FINDINGS_TENSOR};
use anyhow::{anyhow, bail, Result};
use ssl_plugin_api::tch::{Device, Kind, Tensor};
use ssl_plugin_api::Encoder;
use std::path::Path;
use std::sync::Arc;

/// The names of the classifier head's tensors in a checkpoint.
pub const HEAD_WEIGHT: &str = "linear_head.linear.weight";
pub const HEAD_BIAS: &str = "linear_head.linear.bias";

/// The linear head of a classifier checkpoint on `device`: weight `[C, dim]` and bias `[C]`.
pub fn classifier_head(
    stored: &Checkpoint,
    dim: i64,
    path: &Path,
    device: Device,
) -> Result<(Tensor, Tensor)> {
    let get = |name: &str| {
        stored.tensors.get(name).ok_or_else(|| {
            anyhow!(
                "{} is a classifier checkpoint without `{name}` (the classifier head)",
                path.display()
            )
        })
    };
    let (weight, bias) = (get(HEAD_WEIGHT)?, get(HEAD_BIAS)?);
    let (ws, bs) = (weight.size(), bias.size());
    if ws.len() != 2 || ws[1] != dim || bs != [ws[0]] {
        bail!(
            "{}: classifier head of shapes {ws:?} and {bs:?} does not fit the encoder's {dim} features (expected [classes, {dim}] and [classes])",
            path.display()
        );
    }
    let on = |t: &Tensor| t.to_device(device).to_kind(Kind::Float);
    Ok((on(weight), on(bias)))
}

/// The evaluation transform of a run: `linear_head_val_augmentations` if set, else
/// `linear_head_augmentations`.
pub fn evaluation_transform(config: &RunConfig) -> (&[TransformSpec], &'static str) {
    match &config.linear_head_val_augmentations {
        Some(specs) => (specs, "linear_head_val_augmentations"),
        None => (
            &config.linear_head_augmentations,
            "linear_head_augmentations",
        ),
    }
}

/// `ssl-host predict`.
pub fn run(registry: &Registry, cli: &mut Cli) -> Result<()> {
    let args = EvalArgs::take(cli, "predict", "predictions.csv")?;
    output_kind(&args.out, &["csv"])?;
    let dataset = args.open_dataset(registry)?;
    let (loaded, stored) = encoder_from_checkpoint(registry, &args.checkpoint, args.device)?;
    if loaded.info.algorithm != CLASSIFIER_ALGORITHM {
        bail!(
            "{} is an SSL checkpoint ({}), not a classifier: use `ssl-host embed` for its features, or train a classifier on it (e.g. --model=SSLClassifierCIFAR or another config with task = \"classifier\", and --local_ssl_weights_path={})",
            loaded.path.display(),
            loaded.info.algorithm,
            args.checkpoint.display()
        );
    }
    let mut encoder = loaded.encoder;
    let dim = encoder.output_dim();
    let (weight, bias) = classifier_head(&stored, dim, &loaded.path, args.device)?;
    let classes = weight.size()[0] as usize;
    let findings = stored
        .tensors
        .get(FINDINGS_TENSOR)
        .map(findings_of_tensor)
        .transpose()?;
    if let Some(names) = findings.as_ref().filter(|n| n.len() != classes) {
        bail!(
            "{}: the classifier head has {classes} outputs but the checkpoint names {} findings",
            loaded.path.display(),
            names.len()
        );
    }
    drop(stored);
    let config = RunConfig::from_resolved_toml(&loaded.info.config, &loaded.info.model)
        .map_err(|e| anyhow!("{}: {e}", loaded.path.display()))?;
    let (specs, what) = evaluation_transform(&config);
    let pipeline = Pipeline::build(registry, specs, what)?;
    let source = EvalSource {
        dataset: Arc::clone(&dataset),
        dataset_name: &args.dataset,
        pipeline: Arc::new(pipeline),
        expand_to: encoder_in_channels(&encoder).filter(|&c| c > 1),
        size_hint: "the run's evaluation transform does not give every image one size; use --batch_size=1 or a run whose transform resizes or crops",
    };
    let mut out = OutputFile::create(&args.out)?;
    let header = match &findings {
        Some(names) => {
            let columns: Vec<String> = names.iter().map(|n| csv_field(n)).collect();
            format!("id,{}\n", columns.join(","))
        }
        None => {
            let columns: Vec<String> = (0..classes).map(|k| format!("p{k}")).collect();
            format!("id,label,{}\n", columns.join(","))
        }
    };
    out.write(header.as_bytes())?;
    let mut rows = 0usize;
    // Loading starts only now that the output files exist.
    let stream = source.stream(args.batch_size, args.workers, "predict");
    for batch in stream {
        let batch = batch?;
        let images = batch.images(args.device)?;
        let embeddings = embed_batch(&mut encoder, &images)?;
        if embeddings.size()[1] != dim {
            bail!(
                "the `{}` encoder gave {} features per image but says its output has {dim}",
                loaded.name,
                embeddings.size()[1]
            );
        }
        let logits = embeddings.matmul(&weight.tr()).g_add(&bias);
        let probabilities = match findings {
            Some(_) => logits.sigmoid(),
            None => logits.softmax(-1, Kind::Float),
        };
        let values = to_vec_f32(&probabilities)?;
        let mut text = String::new();
        for (k, (id, label)) in batch.ids.iter().zip(&batch.labels).enumerate() {
            text.push_str(&csv_field(id));
            if findings.is_none() {
                text.push(',');
                if let Some(l) = label {
                    text.push_str(&l.to_string());
                }
            }
            for p in &values[k * classes..(k + 1) * classes] {
                text.push(',');
                text.push_str(&p.to_string());
            }
            text.push('\n');
        }
        rows += batch.ids.len();
        out.write(text.as_bytes())?;
    }
    out.commit()?;
    if let Some(n) = dataset
        .num_classes()
        .filter(|&n| n != classes && findings.is_none())
    {
        eprintln!(
            "note: dataset `{}` has {n} classes, the classifier {classes}; the label column is the dataset's",
            args.dataset
        );
    }
    let what = match findings {
        Some(_) => format!("{classes}-finding"),
        None => format!("{classes}-class"),
    };
    println!(
        "wrote {what} probabilities of {rows} images ({} of {}) to {}",
        args.dataset,
        loaded.path.display(),
        args.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{self, CheckpointInfo};
    use crate::pretrained::encoder_tensors;
    use ssl_plugin_api::Params;
    use std::collections::BTreeMap;

    /// A classifier checkpoint as the classifier runs write it: a registry-built resnet18 at
    /// `encoder.*`, the head at `linear_head.linear.*`, the run's resolved config.
    fn write_classifier(
        registry: &Registry,
        path: &Path,
        config: &RunConfig,
        weight: &Tensor,
        bias: &Tensor,
    ) {
        write_classifier_with(registry, path, config, weight, bias, Vec::new());
    }

    /// [`write_classifier`] with `extra` tensors (a multi-label head's findings).
    fn write_classifier_with(
        registry: &Registry,
        path: &Path,
        config: &RunConfig,
        weight: &Tensor,
        bias: &Tensor,
        extra: Vec<(String, Tensor)>,
    ) {
        ssl_plugin_api::tch::manual_seed(3);
        let encoder = registry
            .encoder("resnet18")
            .unwrap()
            .create(
                &Params::from_json(r#"{"cifar_stem": false}"#).unwrap(),
                Device::Cpu,
            )
            .unwrap();
        let mut tensors: Vec<(String, Tensor)> = encoder_tensors(&encoder)
            .into_iter()
            .map(|(n, t)| (format!("encoder.{n}"), t))
            .collect();
        tensors.push((HEAD_WEIGHT.into(), weight.shallow_clone()));
        tensors.push((HEAD_BIAS.into(), bias.shallow_clone()));
        tensors.extend(extra);
        let info = CheckpointInfo {
            format: checkpoint::FORMAT.into(),
            epochs_done: 1,
            global_step: 5,
            model: config.model.clone(),
            config: config.to_toml(),
            algorithm: CLASSIFIER_ALGORITHM.into(),
            encoder: "resnet18".into(),
            encoder_params: r#"{"cifar_stem":false}"#.into(),
            embedding_encoder_prefix: String::new(),
            plugins: BTreeMap::new(),
            world_size: 1,
            precision: "32-true".into(),
        };
        checkpoint::save(path, &tensors, &info).unwrap();
    }

    fn command(registry: &Registry, name: &str, args: &[String]) -> Result<()> {
        let mut all = vec![name.to_string()];
        all.extend_from_slice(args);
        let mut cli = Cli::parse(all).unwrap();
        cli.command = None;
        match name {
            "predict" => run(registry, &mut cli),
            _ => super::super::embed::run(registry, &mut cli),
        }
    }

    fn rows(path: &Path) -> Vec<Vec<String>> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| l.split(',').map(str::to_string).collect())
            .collect()
    }

    #[test]
    fn predictions_of_a_classifier_checkpoint() {
        let registry = Registry::load(&[]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut config = RunConfig::resolve("ShapesBYOL", &[], &registry).unwrap();
        let shapes = |out: &Path, ckpt: &Path| -> Vec<String> {
            vec![
                format!("--checkpoint={}", ckpt.display()),
                "--dataset=Shapes".into(),
                "--num_samples=10".into(),
                "--batch_size=4".into(),
                "--device=cpu".into(),
                format!("--out={}", out.display()),
            ]
        };

        // Zero weights: the probabilities are the softmax of the bias, whatever the image.
        let ckpt = dir.path().join("bias.safetensors");
        let priors = [0.1f32, 0.2, 0.3, 0.4];
        let bias = Tensor::from_slice(&priors).log();
        write_classifier(
            &registry,
            &ckpt,
            &config,
            &Tensor::zeros([4, 512], (Kind::Float, Device::Cpu)),
            &bias,
        );
        let out = dir.path().join("p.csv");
        command(&registry, "predict", &shapes(&out, &ckpt)).unwrap();
        let table = rows(&out);
        assert_eq!(table[0], ["id", "label", "p0", "p1", "p2", "p3"]);
        assert_eq!(table.len(), 11);
        for row in &table[1..] {
            assert!(row[1].parse::<i64>().unwrap() < 4, "{row:?}");
            for (p, q) in row[2..].iter().zip(priors) {
                assert!((p.parse::<f32>().unwrap() - q).abs() < 1e-6, "{row:?}");
            }
        }

        // The random linear-head transform (a crop and a flip) is applied with a fixed seed:
        // two runs agree.
        let eye = Tensor::eye_m(4, 512, (Kind::Float, Device::Cpu)) * 3.0;
        let zero = Tensor::zeros([4], (Kind::Float, Device::Cpu));
        let ckpt = dir.path().join("c.safetensors");
        write_classifier(&registry, &ckpt, &config, &eye, &zero);
        let (a, b) = (dir.path().join("a.csv"), dir.path().join("b.csv"));
        command(&registry, "predict", &shapes(&a, &ckpt)).unwrap();
        command(&registry, "predict", &shapes(&b, &ckpt)).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

        // Without transforms, predict and embed see the same images: p = softmax(3·e[0..4]).
        config.linear_head_augmentations.clear();
        config.linear_head_val_augmentations = None;
        write_classifier(&registry, &ckpt, &config, &eye, &zero);
        command(&registry, "predict", &shapes(&a, &ckpt)).unwrap();
        let e = dir.path().join("e.csv");
        command(&registry, "embed", &shapes(&e, &ckpt)).unwrap();
        let (p, e) = (rows(&a), rows(&e));
        assert_eq!(e[0].len(), 2 + 512);
        let mut spread = 0f32;
        for (p, e) in p[1..].iter().zip(&e[1..]) {
            assert_eq!(p[..2], e[..2]);
            let logits: Vec<f32> = e[2..6]
                .iter()
                .map(|v| 3.0 * v.parse::<f32>().unwrap())
                .collect();
            let max = logits.iter().cloned().fold(f32::MIN, f32::max);
            let sum: f32 = logits.iter().map(|l| (l - max).exp()).sum();
            for (k, l) in logits.iter().enumerate() {
                let expected = (l - max).exp() / sum;
                let got: f32 = p[2 + k].parse().unwrap();
                assert!((got - expected).abs() < 1e-5, "{p:?} vs {logits:?}");
                spread = spread.max((got - 0.25).abs());
            }
        }
        assert!(
            spread > 1e-3,
            "the probabilities do not depend on the image"
        );
    }

    #[test]
    fn a_multi_label_classifier_writes_one_probability_per_finding() {
        let registry = Registry::load(&[]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = RunConfig::resolve("ShapesBYOL", &[], &registry).unwrap();
        let names = vec!["circle".to_string(), "a, b".to_string()];
        let findings = (
            FINDINGS_TENSOR.to_string(),
            crate::tasks::classifier::findings_tensor(&names),
        );
        // Zero weights: each finding's probability is the sigmoid of its bias, independently
        // (a softmax would make them sum to 1).
        let ckpt = dir.path().join("multi.safetensors");
        let bias = Tensor::from_slice(&[0.2f32 / 0.8, 0.7 / 0.3]).log();
        let zeros = Tensor::zeros([2, 512], (Kind::Float, Device::Cpu));
        write_classifier_with(&registry, &ckpt, &config, &zeros, &bias, vec![findings]);
        let out = dir.path().join("p.csv");
        let args = |ckpt: &Path| {
            vec![
                format!("--checkpoint={}", ckpt.display()),
                "--dataset=Shapes".into(),
                "--num_samples=5".into(),
                "--device=cpu".into(),
                format!("--out={}", out.display()),
            ]
        };
        command(&registry, "predict", &args(&ckpt)).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "id,circle,\"a, b\"");
        assert_eq!(lines.len(), 6);
        for line in &lines[1..] {
            let row: Vec<&str> = line.split(',').collect();
            assert_eq!(row.len(), 3, "{line}");
            for (p, q) in row[1..].iter().zip([0.2f32, 0.7]) {
                assert!((p.parse::<f32>().unwrap() - q).abs() < 1e-6, "{line}");
            }
        }

        // Names that do not match the head's outputs are refused.
        let wrong = (
            FINDINGS_TENSOR.to_string(),
            crate::tasks::classifier::findings_tensor(&names[..1]),
        );
        write_classifier_with(&registry, &ckpt, &config, &zeros, &bias, vec![wrong]);
        let err = command(&registry, "predict", &args(&ckpt)).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("2 outputs") && text.contains("1 findings"),
            "{text}"
        );
    }

    #[test]
    fn head_shapes_are_checked() {
        let registry = Registry::load(&[]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = RunConfig::resolve("ShapesBYOL", &[], &registry).unwrap();
        let ckpt = dir.path().join("c.safetensors");
        let w = Tensor::zeros([4, 100], (Kind::Float, Device::Cpu));
        let b = Tensor::zeros([4], (Kind::Float, Device::Cpu));
        write_classifier(&registry, &ckpt, &config, &w, &b);
        let err = command(
            &registry,
            "predict",
            &[
                format!("--checkpoint={}", ckpt.display()),
                "--dataset=Shapes".into(),
                format!("--out={}", dir.path().join("p.csv").display()),
            ],
        )
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("[4, 100]") && text.contains("512"), "{text}");
    }
}
