//! The training engine: one [`fit`] loop for every task, like Lightning's `Trainer`. It owns
//! the run folder, resume, epochs and steps, the learning-rate schedule's evaluation, progress,
//! the end of every epoch (metrics to `metrics.csv` and TensorBoard, then an atomic
//! checkpoint), `--stop_after_epochs`, warnings about skipped images, and a task's final
//! evaluation. A [`Task`] (SSL pretraining, classifier training) says only what differs: how a
//! batch becomes a loss, its optimizers, its metrics, its checkpoint contents, its validation.
//!
//! Tasks never import each other or the engine's internals beyond this trait and the step path
//! ([`step::StepPath`]), through which every optimizer step goes.

pub mod progress;
pub mod rng;
pub mod run_folder;
pub mod signals;
pub mod step;

use crate::checkpoint::{self, Checkpoint, CheckpointInfo};
use crate::config::RunConfig;
use crate::loader::Source;
use crate::outputs::RunOutputs;
use crate::schedule::LrSchedule;
use crate::seeds::seed_of;
use anyhow::{Context, Result};
use progress::Progress;
use run_folder::{run_folder, write_config_file, RemoveIfEmpty};
use ssl_plugin_api::tch::{self, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
pub use step::{OptimizerSlot, StepPath};

/// Options of a training run that are not part of the config.
#[derive(Default)]
pub struct RunOptions {
    /// Continue from the output folder's last checkpoint.
    pub resume: bool,
    /// Stop cleanly after this many epochs have been completed (e.g. a time-limited job);
    /// `--resume` continues.
    pub stop_after_epochs: Option<usize>,
}

/// The length of an epoch's training pass.
pub struct EpochSteps {
    /// Steps this epoch takes (1 in a debug run).
    pub steps: usize,
    /// Steps of a full epoch: what per-step schedules and the after-step hook count with.
    pub full_steps: usize,
}

/// What the engine tells a task at the end of an epoch's training pass.
pub struct TrainSummary {
    /// Steps taken.
    pub steps: usize,
    /// The mean learning rate of the epoch's steps.
    pub mean_lr: f64,
}

/// A task's final evaluation: metrics (written under epoch `num_epochs`) and a line to print.
pub struct FinalEvaluation {
    pub metrics: Vec<(String, f64)>,
    pub line: String,
}

/// What one training step reports.
pub struct StepReport {
    /// The main loss (shown in the progress bar).
    pub loss: Tensor,
    /// Samples trained on.
    pub images: usize,
}

/// What differs between kinds of training runs.
pub trait Task {
    /// The resolved config of the run.
    fn config(&self) -> &RunConfig;
    /// The checkpoint record (the engine updates its epoch and step counts).
    fn info_mut(&mut self) -> &mut CheckpointInfo;
    /// The learning-rate schedule of the main optimizer (base rate `l_rate`).
    fn schedule(&self) -> LrSchedule;
    /// The device the task trains on.
    fn device(&self) -> Device;
    /// Prepares the training pass of `epoch` (seeds, sampler, loaders), whose first `skip`
    /// steps were taken before a mid-epoch checkpoint (a resumed run): the loaders start after
    /// them.
    fn begin_epoch(&mut self, epoch: usize, skip: usize) -> Result<EpochSteps>;
    /// The running sums of the current epoch's training pass (losses, predictions), for a
    /// checkpoint written mid-epoch; every process calls it (the sums of all processes are
    /// collected), and rank 0 writes them.
    fn epoch_state(&mut self) -> Result<Vec<(String, Tensor)>> {
        Ok(Vec::new())
    }
    /// Restores [`Task::epoch_state`] (names without prefix) after [`Task::begin_epoch`] of a
    /// resumed epoch.
    fn restore_epoch_state(&mut self, _stored: &HashMap<String, Tensor>) -> Result<()> {
        Ok(())
    }
    /// One training step at learning rate `lr`; every optimizer step goes through `path`.
    fn train_step(&mut self, path: &mut StepPath, lr: f64) -> Result<StepReport>;
    /// After all optimizer steps of a training step (BYOL's moving average); `step` is the
    /// global step just taken (1-based), `max_steps` those of the whole run.
    fn after_step(&mut self, _step: u64, _max_steps: u64) -> Result<()> {
        Ok(())
    }
    /// The epoch's training metrics, then its validation metrics.
    fn end_epoch(&mut self, epoch: usize, summary: &TrainSummary) -> Result<Vec<(String, f64)>>;
    /// Everything to checkpoint, by name.
    fn checkpoint_tensors(&self) -> Vec<(String, Tensor)>;
    /// Restores [`Task::checkpoint_tensors`].
    fn restore(&mut self, stored: &HashMap<String, Tensor>) -> Result<()>;
    /// The line printed after each epoch.
    fn epoch_line(&self, epoch: usize, metrics: &[(String, f64)]) -> String;
    /// The data sources whose skipped images are reported, with what they are.
    fn sources(&self) -> Vec<(Arc<Source>, &'static str)>;
    /// After the last epoch: extra metrics (e.g. a test split); `None` when the task has none.
    fn final_evaluation(&mut self) -> Result<Option<FinalEvaluation>> {
        Ok(None)
    }
}

/// The value of metric `name`, NaN when absent.
pub fn metric(metrics: &[(String, f64)], name: &str) -> f64 {
    metrics
        .iter()
        .find(|(k, _)| k == name)
        .map_or(f64::NAN, |(_, v)| *v)
}

/// What [`fit`] returns.
pub struct Fitted {
    /// The run's output folder.
    pub dir: PathBuf,
    /// The optimizer steps taken through the step path in this process, by optimizer slot.
    pub step_counts: BTreeMap<&'static str, u64>,
}

/// Trains the task that `build` makes from the run's config (its `output_dir` set) and, when
/// resuming, the last checkpoint.
pub fn fit<T: Task>(
    mut config: RunConfig,
    options: &RunOptions,
    build: impl FnOnce(RunConfig, Option<&Checkpoint>) -> Result<T>,
) -> Result<Fitted> {
    // Rank 0 decides the run folder (and alone writes to it); the others learn its name.
    let world = crate::world::current();
    let main = world.is_main();
    // Rank 0 also holds the folder's run.lock until `fit` returns (one run per folder).
    let (dir, stored, lock) = if main {
        let (dir, stored, lock) = run_folder(&config, options.resume)?;
        (dir, stored, Some(lock))
    } else {
        (PathBuf::new(), None, None)
    };
    let dir = PathBuf::from(world.broadcast_text(&dir.display().to_string())?);
    let checkpoint_path = dir.join("checkpoints").join("last.safetensors");
    let stored = match stored {
        None if options.resume && !main => Some(checkpoint::load(&checkpoint_path)?),
        other => other,
    };
    let _cleanup = main.then(|| RemoveIfEmpty::new(&config, &dir));
    // Declared after `_cleanup`, so dropped before it: run.lock is gone when an empty folder
    // is removed.
    let _lock = lock;
    config.output_dir = Some(dir.display().to_string());
    let mut task = build(config, stored.as_ref())?;
    let (start_epoch, mut global_step) = match &stored {
        Some(c) => {
            task.restore(&c.tensors)
                .with_context(|| format!("resuming from {}", checkpoint_path.display()))?;
            (c.info.epochs_done, c.info.global_step)
        }
        None => (0, 0),
    };
    // A checkpoint written mid-epoch (a signal, `checkpoint_every_n_steps`): where in the epoch,
    // the epoch's running sums and the random generators.
    let mut mid_epoch = stored.as_ref().and_then(MidEpoch::from_checkpoint);
    if let (Some(mid), true) = (&mid_epoch, main) {
        eprintln!(
            "resuming epoch {} after its step {} (a checkpoint written mid-epoch)",
            start_epoch + 1,
            mid.steps_done
        );
    }
    drop(stored);
    // Every process starts from rank 0's parameters, buffers and optimizer state.
    world
        .broadcast_from_main(
            &task
                .checkpoint_tensors()
                .into_iter()
                .map(|(_, t)| t)
                .collect::<Vec<_>>(),
        )
        .context("sending rank 0's model to the other processes")?;
    let mut outputs = if main {
        let outputs = RunOutputs::open(&dir, start_epoch)?;
        let plugins = task.info_mut().plugins.clone();
        write_config_file(&dir, task.config(), &plugins)?;
        Some(outputs)
    } else {
        None
    };
    let epochs = task.config().num_epochs;
    let last = options.stop_after_epochs.map_or(epochs, |n| n.min(epochs));
    if start_epoch >= epochs && main {
        eprintln!("{}: all {epochs} epochs are done already", dir.display());
    }
    let lr_scale = if task.config().scale_lr_by_world_size {
        world.size() as f64
    } else {
        1.0
    };
    if world.is_distributed() && main {
        eprintln!(
            "distributed: {} processes, global batch = {} × the per-process batch; l_rate {} × {lr_scale} = {}{}",
            world.size(),
            world.size(),
            task.config().l_rate,
            task.config().l_rate * lr_scale,
            if lr_scale == 1.0 { " (scale_lr_by_world_size = false)" } else { "" }
        );
    }
    let mut path = StepPath::new(task.config().gradient_clip_val);
    path.nan_policy = task.config().nan_policy;
    signals::install();
    let every = task.config().checkpoint_every_n_steps;
    let checkpoint_file = dir.join("checkpoints").join("last.safetensors");
    // A checkpoint at the current step of `epoch`: the model, the optimizers, the epoch's
    // running sums and the random generators; every process takes part (the sums of all of
    // them are collected), rank 0 writes it.
    let mut save_mid_epoch = |task: &mut T, epoch: usize, steps_done: usize, global_step: u64| {
        let mut tensors = task.checkpoint_tensors();
        tensors.extend(checkpoint::prefixed(EPOCH_STATE, task.epoch_state()?));
        tensors.push((STEPS_DONE.into(), Tensor::from(steps_done as i64)));
        tensors.push((RNG_CPU.into(), rng::state(Device::Cpu)?));
        if let device @ Device::Cuda(_) = task.device() {
            tensors.push((RNG_DEVICE.into(), rng::state(device)?));
        }
        if !main {
            return Ok(());
        }
        let config_text = task.config().to_toml();
        let info = task.info_mut();
        info.epochs_done = epoch;
        info.global_step = global_step;
        info.config = config_text;
        checkpoint::save(&checkpoint_file, &tensors, info).context("writing a mid-epoch checkpoint")
    };
    let progress = if main {
        Progress::new()
    } else {
        Progress::hidden()
    };
    let mut warned_skipped: HashMap<&'static str, usize> = HashMap::new();
    for epoch in start_epoch..last {
        let metrics = run_epoch(
            &mut task,
            &mut path,
            epoch,
            &mut global_step,
            &progress,
            lr_scale,
            mid_epoch.take(),
            every,
            &mut save_mid_epoch,
        );
        if let Err(e) = &metrics {
            if let Some(stopped) = e.downcast_ref::<signals::Stopped>() {
                progress.finish_epoch();
                return Err(signals::Stopped {
                    signal: stopped.signal,
                    message: format!(
                        "{}: the checkpoint is in {}; continue with `ssl-host \
                         --output_dir={} --resume`",
                        stopped.message,
                        checkpoint_file.display(),
                        dir.display()
                    ),
                }
                .into());
            }
        }
        progress.finish_epoch();
        warn_about_skipped_images(&task, &mut warned_skipped);
        let mut metrics = metrics?;
        if world.is_distributed() {
            let diverged = world.diverged(&task.checkpoint_tensors())?;
            if !diverged.is_empty() {
                eprintln!(
                    "rank {}: {} tensor(s) differ from rank 0's after epoch {}: {}",
                    world.rank(),
                    diverged.len(),
                    epoch + 1,
                    diverged
                        .iter()
                        .take(5)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        let all_reduce = path.take_all_reduce();
        let all_reduce_line = if world.is_distributed() {
            metrics.push(("time/allreduce_seconds".into(), all_reduce.seconds));
            let steps = (all_reduce.steps as f64).max(1.0);
            format!(
                "; gradient all-reduce {:.1} MB per optimizer step in {:.1} ms",
                all_reduce.bytes as f64 / steps / 1e6,
                all_reduce.seconds / steps * 1e3
            )
        } else {
            String::new()
        };
        let Some(outputs) = outputs.as_mut() else {
            // Not rank 0: nothing to write.
            if let Some(signal) = signals::stop_requested_after_epoch() {
                return Err(signals::Stopped {
                    signal,
                    message: format!(
                        "rank {}: stopped by {} after epoch {}",
                        world.rank(),
                        signals::name(signal),
                        epoch + 1
                    ),
                }
                .into());
            }
            continue;
        };
        outputs.write_epoch(epoch, &metrics)?;
        let tensors = task.checkpoint_tensors();
        let config_text = task.config().to_toml();
        let info = task.info_mut();
        info.epochs_done = epoch + 1;
        info.global_step = global_step;
        info.config = config_text;
        checkpoint::save(&outputs.checkpoint_path(), &tensors, info)?;
        eprintln!("{}{all_reduce_line}", task.epoch_line(epoch, &metrics));
        if let Some(signal) = signals::stop_requested_after_epoch() {
            return Err(signals::Stopped {
                signal,
                message: format!(
                    "stopped by {} after epoch {}: the checkpoint is in {}; continue with \
                     `ssl-host --output_dir={} --resume`",
                    signals::name(signal),
                    epoch + 1,
                    checkpoint_file.display(),
                    dir.display()
                ),
            }
            .into());
        }
    }
    if last == epochs {
        let evaluation = task.final_evaluation().with_context(|| {
            format!(
                "training finished and its checkpoint and metrics are saved in {}, but the \
                 final evaluation failed; `--output_dir={} --resume` retries only the final \
                 evaluation",
                dir.display(),
                dir.display()
            )
        })?;
        if let (Some(FinalEvaluation { metrics, line }), Some(outputs)) =
            (evaluation, outputs.as_mut())
        {
            if !metrics.is_empty() {
                outputs.write_epoch(epochs, &metrics)?;
                eprintln!("{line}");
            }
        }
    }
    Ok(Fitted {
        dir,
        step_counts: path.counts().clone(),
    })
}

/// Checkpoint entries of a mid-epoch checkpoint.
const STEPS_DONE: &str = "engine.epoch_steps_done";
const RNG_CPU: &str = "engine.rng.cpu";
const RNG_DEVICE: &str = "engine.rng.device";
const EPOCH_STATE: &str = "epoch_state.";

/// Where a mid-epoch checkpoint left its epoch.
struct MidEpoch {
    /// Steps of the epoch already taken.
    steps_done: usize,
    /// The task's running sums ([`Task::epoch_state`]).
    state: HashMap<String, Tensor>,
    /// The CPU generator's state, and the training device's.
    rng_cpu: Tensor,
    rng_device: Option<Tensor>,
}

impl MidEpoch {
    fn from_checkpoint(c: &Checkpoint) -> Option<MidEpoch> {
        let steps_done = c.tensors.get(STEPS_DONE)?.int64_value(&[]) as usize;
        if steps_done == 0 {
            return None;
        }
        Some(MidEpoch {
            steps_done,
            state: checkpoint::under(&c.tensors, EPOCH_STATE),
            rng_cpu: c.tensors.get(RNG_CPU)?.shallow_clone(),
            rng_device: c.tensors.get(RNG_DEVICE).map(Tensor::shallow_clone),
        })
    }
}

/// One epoch: the training pass (every step through `path`), then the task's end of epoch.
/// `resume`: the epoch was interrupted by a mid-epoch checkpoint; `every`: write one every
/// that many global steps (0: never) through `save`. A signal ends the pass after the current
/// step with a checkpoint and a [`signals::Stopped`] error.
#[allow(clippy::too_many_arguments)]
fn run_epoch<T: Task>(
    task: &mut T,
    path: &mut StepPath,
    epoch: usize,
    global_step: &mut u64,
    progress: &Progress,
    lr_scale: f64,
    resume: Option<MidEpoch>,
    every: usize,
    save: &mut dyn FnMut(&mut T, usize, usize, u64) -> Result<()>,
) -> Result<Vec<(String, f64)>> {
    let started = Instant::now();
    // libtorch's global generator (dropout, random init in plugins) is reseeded from (seed,
    // epoch) at every epoch, so a run resumed at an epoch's start needs no generator state.
    tch::manual_seed(seed_of(&[task.config().random_seed, epoch as u64, 17]) as i64 & i64::MAX);
    let skip = resume.as_ref().map_or(0, |r| r.steps_done);
    let EpochSteps { steps, full_steps } = task.begin_epoch(epoch, skip)?;
    if let Some(resume) = &resume {
        task.restore_epoch_state(&resume.state)
            .context("restoring the interrupted epoch's running sums")?;
        rng::set_state(Device::Cpu, &resume.rng_cpu)?;
        if let (Some(state), device @ Device::Cuda(_)) = (&resume.rng_device, task.device()) {
            rng::set_state(device, state)?;
        }
    }
    let (schedule, l_rate, num_epochs) = (
        task.schedule(),
        task.config().l_rate * lr_scale,
        task.config().num_epochs,
    );
    let max_steps = (full_steps * num_epochs) as u64;
    progress.start_epoch(epoch, num_epochs, steps);
    let train_started = Instant::now();
    // The steps taken before an interruption count in the epoch's mean learning rate (a pure
    // function of the schedule).
    let first_step = *global_step as usize - skip.min(*global_step as usize);
    let mut lr_sum: f64 = (0..skip)
        .map(|s| schedule.lr(l_rate, epoch, first_step + s, full_steps, num_epochs))
        .sum();
    let mut images = 0usize;
    let world = crate::world::current();
    for step in skip..steps {
        let lr = schedule.lr(l_rate, epoch, *global_step as usize, full_steps, num_epochs);
        lr_sum += lr;
        path.position = (epoch, step);
        let report = task.train_step(path, lr)?;
        images += report.images;
        *global_step += 1;
        task.after_step(*global_step, max_steps)?;
        let elapsed = train_started.elapsed().as_secs_f64();
        progress.step(step + 1, &report.loss, images as f64 / elapsed.max(1e-9));
        // Every process stops at the same step: the signal of any of them counts.
        let mut signal = signals::requested().unwrap_or(0);
        if world.is_distributed() {
            signal = world.all_reduce_f64(&[signal as f64], crate::world::Reduce::Sum)?[0]
                .min(255.0) as i32;
        }
        let last = step + 1 == steps;
        if signal != 0 {
            if last {
                // The epoch's own checkpoint follows at once; stop after it.
                signals::stop_after_epoch(signal);
            } else {
                progress.finish_epoch();
                save(task, epoch, step + 1, *global_step)?;
                let signal = signals::requested().unwrap_or(libc::SIGTERM);
                return Err(signals::Stopped {
                    signal,
                    message: format!(
                        "stopped by {} after step {} of {steps} of epoch {}",
                        signals::name(signal),
                        step + 1,
                        epoch + 1
                    ),
                }
                .into());
            }
        } else if every > 0 && (*global_step).is_multiple_of(every as u64) && !last {
            save(task, epoch, step + 1, *global_step)?;
        }
    }
    let train_seconds = train_started.elapsed().as_secs_f64();
    let summary = TrainSummary {
        steps,
        mean_lr: lr_sum / steps as f64,
    };
    let mut metrics = task.end_epoch(epoch, &summary)?;
    let skipped = path.take_skipped_nonfinite();
    if task.config().nan_policy == crate::config::NanPolicy::SkipStep {
        metrics.push(("steps/skipped_nonfinite".into(), skipped as f64));
    }
    metrics.push((
        "throughput/train_images_per_second".into(),
        images as f64 / train_seconds.max(1e-9),
    ));
    metrics.push(("time/epoch_seconds".into(), started.elapsed().as_secs_f64()));
    Ok(metrics)
}

/// One warning per data source when images were skipped as unreadable since the last
/// warning (`skip_unreadable_images`): how many, and the first error.
fn warn_about_skipped_images<T: Task>(task: &T, warned: &mut HashMap<&'static str, usize>) {
    for (source, what) in task.sources() {
        let (count, first) = source.skipped_report();
        let seen = warned.entry(what).or_default();
        if count > *seen {
            eprintln!(
                "warning: skipped {count} unreadable image(s) of {} ({what} data); first: {}",
                source.name,
                first.unwrap_or_default()
            );
            *seen = count;
        }
    }
}
