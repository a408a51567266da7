//! `ssl-host [train] --model=NAME [--name=value]... [--resume] [--stop_after_epochs=N]` and
//! `ssl-host show-config --model=NAME [--name=value]...`: resolves the config, picks the task
//! it names and hands it to the engine.

use crate::checkpoint;
use crate::cli::Cli;
use crate::config::{parameter_help, RunConfig, Task};
use crate::engine::{self, Fitted, RunOptions};
use crate::registry::Registry;
use crate::tasks::classifier::ClassifierTask;
use crate::tasks::ssl::SslTask;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

fn flag(cli: &mut Cli, name: &str) -> Result<bool> {
    match cli.take(name).as_deref() {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => bail!("--{name}={other}: expected true or false (or just --{name})"),
    }
}

/// Resolves the config of a new run, or of the run being resumed.
fn resolve(registry: &Registry, cli: &mut Cli, resume: bool) -> Result<RunConfig> {
    let model = cli.take("model");
    let overrides = std::mem::take(&mut cli.options);
    if resume {
        let dir = overrides
            .iter()
            .rev()
            .find(|(n, _)| n == "output_dir")
            .map(|(_, v)| PathBuf::from(v))
            .context("--resume needs --output_dir=DIR of the run to continue")?;
        let path = dir.join("checkpoints").join("last.safetensors");
        let info = checkpoint::read_info(&path)
            .with_context(|| format!("--resume: reading {}", path.display()))?;
        if let Some(m) = &model {
            if m != &info.model {
                bail!(
                    "--resume: {} is a run of model `{}`, not `{m}`",
                    dir.display(),
                    info.model
                );
            }
        }
        return RunConfig::resume(&info.config, &info.model, &overrides);
    }
    let model = model
        .context("no --model given: name a model config (see `ssl-host list`) or a .toml file")?;
    RunConfig::resolve(&model, &overrides, registry)
}

/// Trains the task the config names.
pub fn train(registry: &Registry, config: RunConfig, options: &RunOptions) -> Result<Fitted> {
    let device = super::join::process_device(crate::device::choose(config.device.as_deref())?);
    if config.task == Task::Classifier {
        engine::fit(config, options, |config, stored| {
            ClassifierTask::build(registry, config, device, stored)
        })
    } else {
        engine::fit(config, options, |config, stored| {
            SslTask::build(registry, config, device, stored)
        })
    }
}

/// `--resume`: `true` (continue the run in `--output_dir`), `false`, or `auto`: continue when
/// `--output_dir` holds a checkpoint, start there otherwise (what a job restarted by its
/// scheduler or by `torchrun --max-restarts` wants).
fn resume_flag(cli: &mut Cli) -> Result<bool> {
    match cli.take("resume").as_deref() {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some("auto") => {
            let dir = cli
                .options
                .iter()
                .rev()
                .find(|(n, _)| n == "output_dir")
                .map(|(_, v)| PathBuf::from(v))
                .context("--resume=auto needs --output_dir=DIR, the folder of the run to continue or start")?;
            let exists = dir.join("checkpoints").join("last.safetensors").exists();
            if exists {
                eprintln!("--resume=auto: continuing the run in {}", dir.display());
            }
            Ok(exists)
        }
        Some(other) => bail!("--resume={other}: expected true, false or auto (or just --resume)"),
    }
}

/// `train`.
pub fn run(registry: &Registry, cli: &mut Cli) -> Result<()> {
    let resume = resume_flag(cli)?;
    let stop_after_epochs = match cli.take("stop_after_epochs") {
        Some(v) => Some(
            v.parse::<usize>()
                .with_context(|| format!("--stop_after_epochs={v}: expected a whole number"))?,
        ),
        None => None,
    };
    let config = resolve(registry, cli, resume)?;
    // Under torchrun: join the other processes (nothing happens otherwise).
    super::join::join_if_distributed(&config)?;
    let fitted = train(
        registry,
        config,
        &RunOptions {
            resume,
            stop_after_epochs,
        },
    )?;
    println!("run finished: outputs in {}", fitted.dir.display());
    Ok(())
}

/// `show-config`.
pub fn show(registry: &Registry, cli: &mut Cli) -> Result<()> {
    if flag(cli, "parameters")? {
        print!("{}", parameter_help());
        return Ok(());
    }
    let config = resolve(registry, cli, false)?;
    print!("{}", config.to_toml());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{TransformSpec, ViewGroup};

    /// A small Shapes config: 48 training samples in batches of 8 (6 steps per epoch).
    fn small(model: &str, dir: &std::path::Path, extra: &[(&str, &str)]) -> RunConfig {
        let mut overrides: Vec<(String, String)> = [
            ("output_dir", dir.to_str().unwrap()),
            ("device", "cpu"),
            ("num_epochs", "2"),
            ("val_split", "0.2"),
            ("ssl_dataset_params.num_samples", "60"),
            ("linear_head_dataset_params.num_samples", "60"),
            ("ssl_training_batch_size", "8"),
            ("linear_head_batch_size", "8"),
            ("num_workers", "1"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        overrides.extend(extra.iter().map(|(a, b)| (a.to_string(), b.to_string())));
        RunConfig::resolve(model, &overrides, &Registry::load(&[]).unwrap()).unwrap()
    }

    #[test]
    fn every_optimizer_step_of_every_task_goes_through_the_step_path() {
        let registry = Registry::load(&[]).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let ssl_dir = tmp.path().join("ssl");
        let config = small("ShapesSimCLR", &ssl_dir, &[]);
        let fitted = train(&registry, config, &RunOptions::default()).unwrap();
        // 2 epochs × 6 steps: one SSL and one linear-head step each.
        assert_eq!(fitted.step_counts.get("ssl"), Some(&12));
        assert_eq!(fitted.step_counts.get("linear_head"), Some(&12));
        assert_eq!(fitted.step_counts.len(), 2, "{:?}", fitted.step_counts);
        // A classifier on its encoder, fine-tuned: 48 samples in batches of 8, 2 epochs.
        let config = small(
            "SSLClassifierCIFAR",
            &tmp.path().join("classifier"),
            &[
                ("linear_head_dataset_name", "Shapes"),
                ("local_ssl_weights_path", ssl_dir.to_str().unwrap()),
                ("freeze_encoder", "false"),
            ],
        );
        let fitted = train(&registry, config, &RunOptions::default()).unwrap();
        assert_eq!(
            fitted.step_counts.iter().collect::<Vec<_>>(),
            [(&"classifier", &12)]
        );
    }

    #[test]
    fn simclr_trains_on_two_view_groups_of_different_sizes() {
        let registry = Registry::load(&[]).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let mut config = small("ShapesSimCLR", tmp.path(), &[("num_epochs", "1")]);
        let crop = |size: i64| ViewGroup {
            count: 1,
            pipeline: vec![TransformSpec {
                name: "RandomResizedCrop".into(),
                params: toml::Table::from_iter([("size".to_string(), toml::Value::Integer(size))]),
            }],
        };
        config.ssl_augmentations.clear();
        config.ssl_view_groups = vec![crop(32), crop(24)];
        let fitted = train(&registry, config, &RunOptions::default()).unwrap();
        assert_eq!(fitted.step_counts.get("ssl"), Some(&6));
        let metrics = std::fs::read_to_string(tmp.path().join("metrics.csv")).unwrap();
        let loss = metrics
            .lines()
            .find_map(|l| l.strip_prefix("0,simclr/train/loss,"))
            .expect("a training loss");
        assert!(loss.parse::<f64>().unwrap().is_finite(), "{metrics}");
        // The resolved config keeps the groups, so a resumed run sees the same views.
        let stored = std::fs::read_to_string(tmp.path().join("config.toml")).unwrap();
        assert!(stored.contains("[[ssl_view_groups]]"), "{stored}");
        let back = RunConfig::from_resolved_toml(&stored, "ShapesSimCLR").unwrap();
        assert_eq!(back.view_groups().len(), 2);
    }
}
