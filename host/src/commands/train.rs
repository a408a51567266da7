//! `ssl-host [train] --model=NAME [--name=value]... [--resume] [--stop_after_epochs=N]` and
//! `ssl-host show-config --model=NAME [--name=value]...`: resolves the config, picks the task
//! it names and hands it to the engine.

use crate::checkpoint::{self, Checkpoint};
use crate::cli::Cli;
use crate::config::{parameter_help, RunConfig, Task};
use crate::engine::{self, Fitted, RunOptions};
use crate::registry::Registry;
use crate::remote_run::{self, Location, RemoteRun};
use crate::tasks::classifier::ClassifierTask;
use crate::tasks::ssl::SslTask;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use std::path::{Path, PathBuf};

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
        let dir = named_output_dir(&overrides)
            .context("--resume needs --output_dir=DIR of the run to continue")?;
        let path = checkpoint::last_in(&dir);
        let info = checkpoint::read_info(&path)
            .with_context(|| format!("--resume: reading {}", path.display()))?;
        return resumed_config(&info, &dir, model.as_deref(), &overrides);
    }
    fresh_config(registry, model.as_deref(), &overrides)
}

/// The config of a new run of `model`.
fn fresh_config(
    registry: &Registry,
    model: Option<&str>,
    overrides: &[(String, String)],
) -> Result<RunConfig> {
    let model = model
        .context("no --model given: name a model config (see `ssl-host list`) or a .toml file")?;
    RunConfig::resolve(model, overrides, registry)
}

/// The config of the run in `dir`, whose checkpoint says `info`, continued with `overrides`.
fn resumed_config(
    info: &checkpoint::CheckpointInfo,
    dir: &Path,
    model: Option<&str>,
    overrides: &[(String, String)],
) -> Result<RunConfig> {
    if let Some(m) = model {
        if m != info.model {
            bail!(
                "--resume: {} is a run of model `{}`, not `{m}`",
                dir.display(),
                info.model
            );
        }
    }
    RunConfig::resume(&info.config, &info.model, overrides)
}

/// The `--output_dir` given on the command line.
fn named_output_dir(overrides: &[(String, String)]) -> Option<PathBuf> {
    overrides
        .iter()
        .rev()
        .find(|(n, _)| n == "output_dir")
        .map(|(_, v)| PathBuf::from(v))
}

/// Trains the task the config names.
pub fn train(registry: &Registry, config: RunConfig, options: RunOptions) -> Result<Fitted> {
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resume {
    No,
    Yes,
    Auto,
}

fn resume_mode(cli: &mut Cli) -> Result<Resume> {
    match cli.take("resume").as_deref() {
        None | Some("false") => Ok(Resume::No),
        Some("true") => Ok(Resume::Yes),
        Some("auto") => {
            if named_output_dir(&cli.options).is_none() {
                bail!("--resume=auto needs --output_dir=DIR, the folder of the run to continue or start");
            }
            Ok(Resume::Auto)
        }
        Some(other) => bail!("--resume={other}: expected true, false or auto (or just --resume)"),
    }
}

/// What a run is started with: the command line less the run options.
struct Request {
    resume: Resume,
    model: Option<String>,
    overrides: Vec<(String, String)>,
    /// `--allow_data_plan_change`: a resumed run may change its batches (batch sizes, seed,
    /// splits, datasets, views).
    allow_data_plan_change: bool,
}

impl Request {
    /// The config this process can resolve from its own disk: what it joins the other
    /// processes with (`device` and the `dist_*` parameters). A process other than rank 0
    /// whose disk lacks the checkpoint of a resumed run (node-local output folders) joins
    /// with the command line over the defaults; rank 0's config decides afterwards
    /// ([`Request::agree`]).
    fn local_config(
        &self,
        registry: &Registry,
        env: Option<&crate::dist::DistEnv>,
    ) -> Result<RunConfig> {
        let main = env.is_none_or(|env| env.rank == 0);
        let resolved = match self.checkpoint_here(main) {
            Ok(Some(path)) => {
                let dir = named_output_dir(&self.overrides).unwrap_or_default();
                checkpoint::read_info(&path)
                    .with_context(|| format!("--resume: reading {}", path.display()))
                    .and_then(|info| {
                        resumed_config(&info, &dir, self.model.as_deref(), &self.overrides)
                    })
            }
            Ok(None) => fresh_config(registry, self.model.as_deref(), &self.overrides),
            Err(e) => Err(e),
        };
        match (resolved, env) {
            (Err(_), Some(env)) if env.rank != 0 => match &self.model {
                Some(model) => RunConfig::resolve(model, &self.overrides, registry),
                None => RunConfig::from_overrides(&self.overrides),
            },
            (resolved, _) => resolved,
        }
    }

    /// The run every process starts, decided by rank 0: whether it resumes (rank 0's disk
    /// answers `--resume=auto`), and the checkpoint, which rank 0 reads and sends to the
    /// others, so processes with node-local output folders start alike. Then every process
    /// resolves the same config from it and checks the overrides against its data plan.
    fn agree(&self, registry: &Registry) -> Result<(RunConfig, Option<Checkpoint>)> {
        let world = crate::world::current();
        let read = if world.is_main() {
            self.read_checkpoint()
        } else {
            Ok(None)
        };
        let header = match &read {
            Ok(None) => "new".to_string(),
            Ok(Some((path, _))) => format!("resume:{}", path.display()),
            Err(e) => format!("error:{e:#}"),
        };
        let header = world.broadcast_text(&header)?;
        if let Some(message) = header.strip_prefix("error:") {
            return Err(match read {
                Err(e) => e,
                _ => anyhow!("rank 0 could not start the run: {message}"),
            });
        }
        let Some(path) = header.strip_prefix("resume:").map(PathBuf::from) else {
            return Ok((
                fresh_config(registry, self.model.as_deref(), &self.overrides)?,
                None,
            ));
        };
        let bytes = match &read {
            Ok(Some((_, bytes))) => world.broadcast_bytes(bytes)?,
            _ => world.broadcast_bytes(&[])?,
        };
        drop(read);
        let stored = checkpoint::from_bytes(&path, &bytes)?;
        drop(bytes);
        let dir = named_output_dir(&self.overrides).unwrap_or_default();
        let config = resumed_config(&stored.info, &dir, self.model.as_deref(), &self.overrides)?;
        if !self.allow_data_plan_change {
            check_data_plan(&stored.info, &config, world.size(), &dir)?;
        }
        Ok((config, Some(stored)))
    }

    /// The checkpoint this process would continue from, looking at its own disk: `None` for a
    /// new run, an error for `--resume` without one. For a run URL (`--output_dir=s3://...`)
    /// only rank 0 (`main`) looks, at the bucket, and downloads the run's latest checkpoint
    /// into its staging folder unless that holds it (or a newer one) already.
    fn checkpoint_here(&self, main: bool) -> Result<Option<PathBuf>> {
        if self.resume == Resume::No {
            return Ok(None);
        }
        let given = self
            .overrides
            .iter()
            .rev()
            .find(|(n, _)| n == "output_dir")
            .map(|(_, v)| v.as_str())
            .context("--resume needs --output_dir=DIR (or a run URL) of the run to continue")?;
        let url = match Location::parse(given).context("--output_dir")? {
            // `--resume` reads the folder's checkpoint, whose absence is the reading's error.
            Location::Local(dir) => {
                let path = checkpoint::last_in(&dir);
                let auto = self.resume == Resume::Auto;
                return Ok(Some(path).filter(|p| !auto || p.exists()));
            }
            Location::Remote(_) if !main => return Ok(None),
            Location::Remote(url) => url,
        };
        let run = RemoteRun::new(url, self.storage_retry_seconds()?);
        let found = run
            .checkout()
            .with_context(|| format!("--resume: reading the run at {}", run.url()))?;
        if found.is_none() && self.resume == Resume::Yes {
            bail!(
                "--resume: {} holds no run (no `latest` marker), and its staging folder {} no \
                 checkpoint",
                run.url(),
                run.staging().display()
            );
        }
        Ok(found)
    }

    /// `--storage_retry_seconds` as given, else its default.
    fn storage_retry_seconds(&self) -> Result<f64> {
        match self
            .overrides
            .iter()
            .rev()
            .find(|(n, _)| n == "storage_retry_seconds")
        {
            Some((_, v)) => v.parse().with_context(|| {
                format!("--storage_retry_seconds={v}: expected a number of seconds")
            }),
            None => Ok(RunConfig::default().storage_retry_seconds),
        }
    }

    /// Rank 0: the checkpoint to continue from, as bytes, or `None` for a new run.
    fn read_checkpoint(&self) -> Result<Option<(PathBuf, Vec<u8>)>> {
        let Some(path) = self.checkpoint_here(true)? else {
            return Ok(None);
        };
        if self.resume == Resume::Auto {
            let dir = named_output_dir(&self.overrides).unwrap_or_default();
            eprintln!("--resume=auto: continuing the run in {}", dir.display());
        }
        let bytes = std::fs::read(&path)
            .with_context(|| format!("--resume: reading {}", path.display()))?;
        Ok(Some((path, bytes)))
    }
}

/// An error unless the resumed `config` (on `world` processes) keeps the data plan of the run
/// in `dir` that `stored` describes: the global batch sizes (per-process batch × processes),
/// seed, validation split, `drop_last`, datasets and their parameters, and the views. Changing
/// them mid-run changes which samples the rest of the run sees and how, so it does not
/// continue as it started; `--allow_data_plan_change=true` says the user means it.
fn check_data_plan(
    stored: &checkpoint::CheckpointInfo,
    config: &RunConfig,
    world: usize,
    dir: &Path,
) -> Result<()> {
    let before = RunConfig::from_resolved_toml(&stored.config, &stored.model)?;
    let mut changed = Vec::new();
    let batch = |name: &str, b: usize, a: usize| {
        let (gb, ga) = (b * stored.world_size, a * world);
        (gb != ga).then(|| {
            format!(
                "{name}: a global batch of {gb} ({b} × {} process(es)) becomes {ga} ({a} × {world})",
                stored.world_size
            )
        })
    };
    changed.extend(batch(
        "ssl_training_batch_size",
        before.ssl_training_batch_size,
        config.ssl_training_batch_size,
    ));
    changed.extend(batch(
        "linear_head_batch_size",
        before.linear_head_batch_size,
        config.linear_head_batch_size,
    ));
    // The shard-grouped order deals the shards to its partitions (by default one per process).
    let parts = |p: usize, w: usize| if p == 0 { w } else { p };
    let (pb, pa) = (
        parts(before.shard_partitions, stored.world_size),
        parts(config.shard_partitions, world),
    );
    if config.sample_order == crate::config::SampleOrder::Shards && pb != pa {
        changed.push(format!(
            "shard_partitions: the shards were dealt to {pb} partition(s), now to {pa} (set --shard_partitions={pb} to keep the order)"
        ));
    }
    // The other settings that choose the samples and their views, as JSON to compare.
    type Read = fn(&RunConfig) -> serde_json::Value;
    let settings: [(&str, Read); 12] = [
        ("sample_order", |c| json!(c.sample_order)),
        ("random_seed", |c| json!(c.random_seed)),
        ("val_split", |c| json!(c.val_split)),
        ("drop_last", |c| json!(c.drop_last)),
        ("ssl_training_dataset_name", |c| {
            json!(c.ssl_training_dataset_name)
        }),
        ("linear_head_dataset_name", |c| {
            json!(c.linear_head_dataset_name)
        }),
        ("local_dataset", |c| json!(c.local_dataset)),
        ("extra_local_dataset_paths", |c| {
            json!(c.extra_local_dataset_paths)
        }),
        ("ssl_dataset_params", |c| json!(c.ssl_dataset_params)),
        ("linear_head_dataset_params", |c| {
            json!(c.linear_head_dataset_params)
        }),
        ("the SSL views (ssl_augmentations, ssl_view_groups)", |c| {
            json!(c.view_groups())
        }),
        ("linear_head_augmentations", |c| {
            json!(c.linear_head_augmentations)
        }),
    ];
    for (name, read) in settings {
        let (b, a) = (read(&before), read(config));
        if b != a {
            changed.push(format!("{name}: {b} becomes {a}"));
        }
    }
    if !changed.is_empty() {
        bail!(
            "--resume: the run in {} would not continue as it started; these settings change \
             which samples its remaining steps see, or how:\n  {}\nResume with the run's own \
             values, or add --allow_data_plan_change=true to continue with the new ones",
            dir.display(),
            changed.join("\n  ")
        );
    }
    Ok(())
}

/// `train`.
pub fn run(registry: &Registry, cli: &mut Cli) -> Result<()> {
    let resume = resume_mode(cli)?;
    let stop_after_epochs = match cli.take("stop_after_epochs") {
        Some(v) => Some(
            v.parse::<usize>()
                .with_context(|| format!("--stop_after_epochs={v}: expected a whole number"))?,
        ),
        None => None,
    };
    let allow_data_plan_change = flag(cli, "allow_data_plan_change")?;
    let request = Request {
        resume,
        model: cli.take("model"),
        overrides: std::mem::take(&mut cli.options),
        allow_data_plan_change,
    };
    // Under torchrun: join the other processes (nothing happens otherwise), then start the
    // run rank 0 decides on.
    let env = crate::dist::DistEnv::from_env()?;
    let local = request.local_config(registry, env.as_ref())?;
    super::join::join_if_distributed(&local)?;
    let (mut config, stored) = request.agree(registry)?;
    apply_recovery_id(&mut config)?;
    // Different arguments on one process would hang or silently diverge: refuse at start.
    // The output folder may differ (rank 0 alone chooses and writes it).
    let mut fingerprint = RunConfig {
        output_dir: None,
        ..config.clone()
    }
    .to_toml();
    fingerprint.push_str(&format!("\nmodel = {:?}\n", config.model));
    crate::world::current().check_same(&fingerprint, "resolved config (model and parameters)")?;
    let fitted = train(
        registry,
        config,
        RunOptions {
            resume_from: stored,
            stop_after_epochs,
        },
    )?;
    if fitted.location == fitted.dir.display().to_string() {
        println!("run finished: outputs in {}", fitted.dir.display());
    } else {
        println!(
            "run finished: outputs in {} (staged in {})",
            fitted.location,
            fitted.dir.display()
        );
    }
    Ok(())
}

/// `pretraining_run_recovery_id` (the original's name of a classifier's SSL run) resolved into
/// `local_ssl_weights_path`: a run URL or folder as given, or a run name under `runs_location`
/// (else `$SSL_HOST_RUNS`). Both parameters naming different runs is an error.
fn apply_recovery_id(config: &mut RunConfig) -> Result<()> {
    let Some(id) = config.pretraining_run_recovery_id.clone() else {
        return Ok(());
    };
    let from_env = std::env::var("SSL_HOST_RUNS").ok();
    let runs = config.runs_location.as_deref().or(from_env.as_deref());
    let location = remote_run::recovery_location(&id, runs)?;
    match &config.local_ssl_weights_path {
        Some(given) if *given != location => bail!(
            "pretraining_run_recovery_id={id} names {location}, but local_ssl_weights_path is \
             {given}: give one of them"
        ),
        _ => config.local_ssl_weights_path = Some(location),
    }
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
    fn a_rank_whose_disk_lacks_the_checkpoint_joins_with_its_command_line() {
        let registry = Registry::load(&[]).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("node-local").display().to_string();
        let request = Request {
            resume: Resume::Yes,
            model: None,
            overrides: vec![
                ("output_dir".into(), missing),
                ("dist_timeout".into(), "42".into()),
            ],
            allow_data_plan_change: false,
        };
        let env = |rank| crate::dist::DistEnv {
            rank,
            world_size: 2,
            local_rank: rank,
            local_world_size: 2,
            master_addr: "127.0.0.1".into(),
            master_port: 29500,
            agent_store: false,
            restart_count: 0,
        };
        let config = request.local_config(&registry, Some(&env(1))).unwrap();
        assert_eq!(config.dist_timeout, 42);
        // Rank 0 decides for the others: its missing checkpoint is the run's error.
        let e = request.local_config(&registry, Some(&env(0))).unwrap_err();
        assert!(format!("{e:#}").contains("last.safetensors"), "{e:#}");
        let e = request.local_config(&registry, None).unwrap_err();
        assert!(format!("{e:#}").contains("last.safetensors"), "{e:#}");
    }

    #[test]
    fn every_optimizer_step_of_every_task_goes_through_the_step_path() {
        let registry = Registry::load(&[]).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let ssl_dir = tmp.path().join("ssl");
        let config = small("ShapesSimCLR", &ssl_dir, &[]);
        let fitted = train(&registry, config, RunOptions::default()).unwrap();
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
        let fitted = train(&registry, config, RunOptions::default()).unwrap();
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
        let fitted = train(&registry, config, RunOptions::default()).unwrap();
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

    #[test]
    fn the_shard_order_resumes_only_with_the_same_partitions() {
        let tmp = tempfile::tempdir().unwrap();
        let before = small(
            "ShapesBYOL",
            tmp.path(),
            &[("sample_order", "shards"), ("ssl_training_batch_size", "4")],
        );
        let stored = checkpoint::CheckpointInfo {
            format: checkpoint::FORMAT.into(),
            epochs_done: 1,
            global_step: 6,
            model: "ShapesBYOL".into(),
            config: before.to_toml(),
            algorithm: "BYOL".into(),
            encoder: "resnet50".into(),
            encoder_params: "{}".into(),
            embedding_encoder_prefix: String::new(),
            plugins: Default::default(),
            world_size: 2,
            precision: "32-true".into(),
        };
        // Two processes dealt the shards to 2 partitions: one process with the doubled
        // batch and shard_partitions = 2 continues the same order; without it, it is refused.
        let one = |extra: &[(&str, &str)]| {
            let mut all = vec![
                ("sample_order", "shards"),
                ("ssl_training_batch_size", "8"),
                ("linear_head_batch_size", "16"),
            ];
            all.extend_from_slice(extra);
            small("ShapesBYOL", tmp.path(), &all)
        };
        check_data_plan(&stored, &one(&[("shard_partitions", "2")]), 1, tmp.path()).unwrap();
        let err = check_data_plan(&stored, &one(&[]), 1, tmp.path()).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("shard_partitions: the shards were dealt to 2 partition(s), now to 1"),
            "{text}"
        );
        // And a changed order is named.
        let uniform = small(
            "ShapesBYOL",
            tmp.path(),
            &[("ssl_training_batch_size", "4")],
        );
        let err = check_data_plan(&stored, &uniform, 2, tmp.path()).unwrap_err();
        assert!(format!("{err:#}").contains("sample_order"), "{err:#}");
    }
}
