//! The training engine: one [`fit`] loop for every task, like Lightning's `Trainer`. It owns
//! the run folder, resume, epochs and steps, the learning-rate schedule's evaluation, progress,
//! the end of every epoch (metrics to `metrics.csv` and TensorBoard, then an atomic
//! checkpoint), `--stop_after_epochs`, warnings about skipped images, and a task's final
//! evaluation. A [`Task`] (SSL pretraining, classifier training) says only what differs: how a
//! batch becomes a loss, its optimizers, its metrics, its checkpoint contents, its validation.
//!
//! Tasks never import each other or the engine's internals beyond this trait and the step path
//! ([`step::StepPath`]), through which every optimizer step goes.

pub mod host_reads;
pub mod memory;
pub mod precision;
pub mod progress;
pub mod rng;
pub mod run_folder;
pub mod signals;
pub mod step;

use crate::checkpoint::{self, Checkpoint, CheckpointInfo};
use crate::config::RunConfig;
use crate::loader::Source;
use crate::outputs::RunOutputs;
use crate::remote_run::Uploader;
use crate::schedule::LrSchedule;
use crate::seeds::seed_of;
use anyhow::{bail, Context, Result};
use progress::Progress;
use run_folder::{run_folder, write_config_file, RemoveIfEmpty};
use ssl_plugin_api::tch::{self, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
pub use step::{OptimizerSlot, StepPath};

/// Options of a training run that are not part of the config.
#[derive(Default)]
pub struct RunOptions {
    /// The checkpoint to continue from (`--resume`): the same on every process (rank 0 read
    /// it and sent it to the others, see [`crate::commands::train`]).
    pub resume_from: Option<Checkpoint>,
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
    /// The run's output folder (for a run URL, its staging folder).
    pub dir: PathBuf,
    /// Where the run's outputs are: the run URL, or the folder.
    pub location: String,
    /// The optimizer steps taken through the step path in this process, by optimizer slot.
    pub step_counts: BTreeMap<&'static str, u64>,
}

/// Trains the task that `build` makes from the run's config (its `output_dir` set) and, when
/// resuming, the checkpoint of [`RunOptions::resume_from`]. Running out of device memory
/// anywhere in it is an error that says what to try ([`memory::explain_out_of_memory`]).
pub fn fit<T: Task>(
    config: RunConfig,
    options: RunOptions,
    build: impl FnOnce(RunConfig, Option<&Checkpoint>) -> Result<T>,
) -> Result<Fitted> {
    let processes = crate::world::current().size();
    let explain = config.clone();
    fit_run(config, options, build)
        .map_err(|e| memory::explain_out_of_memory(e, &explain, processes))
}

/// [`fit`]. Read top to bottom: the run folder, the task and where it starts, rank 0's state
/// shared, then the epochs and the final evaluation.
fn fit_run<T: Task>(
    config: RunConfig,
    options: RunOptions,
    build: impl FnOnce(RunConfig, Option<&Checkpoint>) -> Result<T>,
) -> Result<Fitted> {
    let RunOptions {
        resume_from: stored,
        stop_after_epochs,
    } = options;
    let mut folder = RunFolder::open(&config, stored.is_some())?;
    let mut config = config;
    config.output_dir = Some(folder.location.clone());
    let mut task = build(config, stored.as_ref())?;
    let start = Start::restore(&mut task, stored, &folder.checkpoint)?;
    share_main_state(&mut task)?;
    let last = last_epoch(task.config(), start.epoch, stop_after_epochs, &folder.dir)?;
    folder.start_uploads()?;
    let mut run = Run::begin(task, folder, start.epoch, start.global_step)?;
    let trained = run.train_epochs(start.epoch, last, start.mid_epoch);
    // Every upload is waited for, also after an error (a signal's checkpoint goes up too).
    let uploaded = run.folder.finish_uploads();
    if let (Err(error), Err(upload)) = (&trained, &uploaded) {
        let upload = format!("{upload:#}");
        if !format!("{error:#}").contains(&upload) {
            eprintln!("warning: {upload}");
        }
    }
    trained?;
    uploaded?;
    Ok(Fitted {
        dir: run.folder.dir.clone(),
        location: run.folder.location.clone(),
        step_counts: run.path.counts().clone(),
    })
}

/// The run folder as every process knows it: rank 0 chooses it and holds its lock (one run per
/// folder) until the run ends; the others learn its name and write nothing there. For a run
/// URL it is the staging folder, and rank 0 uploads what is written there.
struct RunFolder {
    dir: PathBuf,
    /// Where the outputs are, as the user names them: the run URL, or `dir`.
    location: String,
    checkpoint: PathBuf,
    /// The run in object storage (rank 0, a run URL), until its uploads start.
    remote: Option<crate::remote_run::RemoteRun>,
    // Dropped in this order: uploads end before the lock goes, and run.lock is gone when an
    // empty folder is removed.
    upload: Option<Uploader>,
    _lock: Option<run_folder::RunLock>,
    _cleanup: Option<RemoveIfEmpty>,
}

impl RunFolder {
    fn open(config: &RunConfig, resume: bool) -> Result<RunFolder> {
        let world = crate::world::current();
        let (dir, lock, remote) = if world.is_main() {
            let (dir, lock, remote) = run_folder(config, resume)?;
            (dir, Some(lock), remote)
        } else {
            (PathBuf::new(), None, None)
        };
        let location = remote
            .as_ref()
            .map_or_else(|| dir.display().to_string(), |r| r.url().to_string());
        let location = world.broadcast_text(&location)?;
        let dir = PathBuf::from(world.broadcast_text(&dir.display().to_string())?);
        Ok(RunFolder {
            checkpoint: checkpoint::last_in(&dir),
            location,
            remote,
            upload: None,
            _cleanup: world.is_main().then(|| RemoveIfEmpty::new(config, &dir)),
            _lock: lock,
            dir,
        })
    }

    /// Rank 0 of a run URL: starts the uploader (which first uploads a checkpoint that a
    /// resumed run's staging folder holds and the bucket lacks).
    fn start_uploads(&mut self) -> Result<()> {
        if let Some(remote) = self.remote.take() {
            self.upload = Some(Uploader::start(remote)?);
        }
        Ok(())
    }

    /// Queues the upload of `files` (relative to the folder) and of TensorBoard's event files.
    fn upload_outputs(&self, files: &[&str], outputs: &RunOutputs) -> Result<()> {
        let Some(upload) = &self.upload else {
            return Ok(());
        };
        for file in files {
            upload.file(file)?;
        }
        let events = outputs.events_file();
        match events.file_name().and_then(|n| n.to_str()) {
            Some(name) => upload.file(&format!("logs/{name}")),
            None => upload.logs(),
        }
    }

    /// Queues the upload of the checkpoint just written.
    fn upload_checkpoint(&self, epochs_done: usize, global_step: u64) -> Result<()> {
        match &self.upload {
            Some(upload) => upload.checkpoint(epochs_done, global_step),
            None => Ok(()),
        }
    }

    /// Waits for every upload; the error of one that failed.
    fn finish_uploads(&mut self) -> Result<()> {
        match self.upload.take() {
            Some(upload) => upload.finish(),
            None => Ok(()),
        }
    }

    /// The error of a run stopped by `signal` after `what`, saying how to continue.
    fn stopped(&self, signal: i32, what: &str) -> anyhow::Error {
        signals::Stopped {
            signal,
            message: format!(
                "{what}: the checkpoint is in {}; continue with `ssl-host --output_dir={} --resume`",
                self.checkpoint.display(),
                self.location
            ),
        }
        .into()
    }
}

/// Where a run starts: the epoch, the global step and, for a checkpoint written mid-epoch, the
/// place in that epoch.
struct Start {
    epoch: usize,
    global_step: u64,
    mid_epoch: Option<MidEpoch>,
}

impl Start {
    /// Restores `stored` into `task` (nothing for a new run).
    fn restore<T: Task>(task: &mut T, stored: Option<Checkpoint>, path: &Path) -> Result<Start> {
        let Some(stored) = stored else {
            return Ok(Start {
                epoch: 0,
                global_step: 0,
                mid_epoch: None,
            });
        };
        task.restore(&stored.tensors)
            .with_context(|| format!("resuming from {}", path.display()))?;
        let start = Start {
            epoch: stored.info.epochs_done,
            global_step: stored.info.global_step,
            mid_epoch: MidEpoch::from_checkpoint(&stored),
        };
        if let (Some(mid), true) = (&start.mid_epoch, crate::world::current().is_main()) {
            eprintln!(
                "resuming epoch {} after its step {} (a checkpoint written mid-epoch)",
                start.epoch + 1,
                mid.steps_done
            );
        }
        Ok(start)
    }
}

/// Every process starts from rank 0's parameters, buffers and optimizer state. Rank 0's
/// checkpoint record is sent to every process and restored there: some entries of
/// [`Task::checkpoint_tensors`] are fresh copies (step counters, the loss scale, optimizer
/// buffers not created yet), so sending into them alone would not reach the live state. A
/// probe then compares every tensor with rank 0's; a difference is an error naming them.
pub fn share_main_state<T: Task>(task: &mut T) -> Result<()> {
    let world = crate::world::current();
    if !world.is_distributed() {
        return Ok(());
    }
    let record: HashMap<String, Tensor> = task
        .checkpoint_tensors()
        .into_iter()
        .map(|(name, t)| (name, tch::no_grad(|| t.detach().copy())))
        .collect();
    let mut names: Vec<&String> = record.keys().collect();
    names.sort();
    let tensors: Vec<Tensor> = names.iter().map(|n| record[*n].shallow_clone()).collect();
    world
        .broadcast_from_main(&tensors)
        .context("sending rank 0's model to the other processes")?;
    task.restore(&record)
        .context("restoring rank 0's model on this process")?;
    let diverged = world.diverged(&task.checkpoint_tensors())?;
    if !diverged.is_empty() {
        bail!(
            "distributed training: {}",
            divergence(&diverged, "the start")
        );
    }
    Ok(())
}

/// The epoch after which the run stops: `num_epochs`, or `--stop_after_epochs` when smaller.
/// A `--stop_after_epochs` that a resumed run has already passed is an error (nothing to do).
fn last_epoch(
    config: &RunConfig,
    start: usize,
    stop_after_epochs: Option<usize>,
    dir: &Path,
) -> Result<usize> {
    let epochs = config.num_epochs;
    let last = stop_after_epochs.map_or(epochs, |n| n.min(epochs));
    if start >= epochs {
        if crate::world::current().is_main() {
            eprintln!("{}: all {epochs} epochs are done already", dir.display());
        }
    } else if start >= last {
        bail!(
            "--stop_after_epochs={}: the run in {} has completed {start} of its {epochs} epochs \
             already, so it would stop at once; give a larger number (or leave it out to train \
             to the end)",
            last,
            dir.display()
        );
    }
    Ok(last)
}

/// A run in progress: the task, its step path and outputs, and where it is.
struct Run<T: Task> {
    task: T,
    path: StepPath,
    folder: RunFolder,
    /// `metrics.csv`, TensorBoard and the checkpoint: rank 0 only.
    outputs: Option<RunOutputs>,
    progress: Progress,
    global_step: u64,
    /// The factor of `l_rate` (the number of processes with `scale_lr_by_world_size`).
    lr_scale: f64,
    /// Skipped unreadable images already reported, by data source.
    warned_skipped: HashMap<&'static str, usize>,
}

impl<T: Task> Run<T> {
    /// Opens the outputs (rank 0), writes `config.toml` and says how the processes share the
    /// work.
    fn begin(mut task: T, folder: RunFolder, start_epoch: usize, global_step: u64) -> Result<Self> {
        let world = crate::world::current();
        let outputs = if world.is_main() {
            let outputs = RunOutputs::open(&folder.dir, start_epoch)?;
            let plugins = task.info_mut().plugins.clone();
            write_config_file(&folder.dir, task.config(), &plugins)?;
            if let Some(upload) = &folder.upload {
                upload.file("config.toml")?;
                upload.file("metrics.csv")?;
                upload.logs()?;
            }
            Some(outputs)
        } else {
            None
        };
        let config = task.config();
        let lr_scale = crate::schedule::world_lr_scale(config);
        if world.is_distributed() && world.is_main() {
            eprintln!(
                "distributed: {} processes, global batch = {} × the per-process batch; l_rate {} × {lr_scale} = {}{}",
                world.size(),
                world.size(),
                config.l_rate,
                config.l_rate * lr_scale,
                if lr_scale == 1.0 { " (scale_lr_by_world_size = false)" } else { "" }
            );
        }
        let mut path = StepPath::new(config.gradient_clip_val);
        path.nan_policy = config.nan_policy;
        signals::install();
        host_reads::check_cuda_sync_check(task.device())?;
        Ok(Run {
            task,
            path,
            folder,
            outputs,
            progress: if world.is_main() {
                Progress::new()
            } else {
                Progress::hidden()
            },
            global_step,
            lr_scale,
            warned_skipped: HashMap::new(),
        })
    }

    /// A checkpoint at step `steps_done` of `epoch`: the model, the optimizers, the epoch's
    /// running sums and the random generators. Every process takes part (the sums of all of
    /// them are collected); rank 0 writes it.
    fn save_mid_epoch(&mut self, epoch: usize, steps_done: usize) -> Result<()> {
        let mut tensors = self.task.checkpoint_tensors();
        tensors.extend(checkpoint::prefixed(EPOCH_STATE, self.task.epoch_state()?));
        tensors.push((STEPS_DONE.into(), Tensor::from(steps_done as i64)));
        tensors.push((RNG_CPU.into(), rng::state(Device::Cpu)?));
        if let device @ Device::Cuda(_) = self.task.device() {
            tensors.push((RNG_DEVICE.into(), rng::state(device)?));
        }
        if self.outputs.is_none() {
            return Ok(());
        }
        self.write_checkpoint(epoch, &tensors)
            .context("writing a mid-epoch checkpoint")?;
        self.folder.upload_checkpoint(epoch, self.global_step)
    }

    /// With `save_checkpoint_every_n_epochs = K`, after every K-th epoch: the embedding
    /// encoder's tensors of `tensors` (the checkpoint just written) as
    /// `checkpoints/encoder-epoch-NNNN.safetensors`, with the checkpoint's record, so that
    /// `embed`, `export-encoder` and a classifier read it as they read a checkpoint, and quality
    /// can be followed over training. Returns the file's path relative to the run folder.
    fn keep_encoder(
        &mut self,
        epochs_done: usize,
        tensors: &[(String, Tensor)],
    ) -> Result<Option<String>> {
        let every = self.task.config().save_checkpoint_every_n_epochs;
        if every == 0 || !epochs_done.is_multiple_of(every) {
            return Ok(None);
        }
        let info = self.task.info_mut().clone();
        let prefix = crate::pretrained::encoder_tensor_prefix(&info);
        let encoder: Vec<(String, Tensor)> = tensors
            .iter()
            .filter(|(name, _)| name.starts_with(&prefix))
            .map(|(name, t)| (name.clone(), t.shallow_clone()))
            .collect();
        let name = format!("checkpoints/encoder-epoch-{epochs_done:04}.safetensors");
        let path = self
            .folder
            .checkpoint
            .parent()
            .map(|d| d.join(format!("encoder-epoch-{epochs_done:04}.safetensors")))
            .context("the checkpoint has no folder")?;
        checkpoint::save(&path, &encoder, &info)
            .with_context(|| format!("keeping the encoder of epoch {epochs_done}"))?;
        Ok(Some(name))
    }

    /// Writes `tensors` as the checkpoint, recording `epochs_done` (rank 0).
    fn write_checkpoint(&mut self, epochs_done: usize, tensors: &[(String, Tensor)]) -> Result<()> {
        let config_text = self.task.config().to_toml();
        let info = self.task.info_mut();
        info.epochs_done = epochs_done;
        info.global_step = self.global_step;
        info.config = config_text;
        info.world_size = crate::world::current().size();
        checkpoint::save(&self.folder.checkpoint, tensors, info)
    }

    /// One epoch: the training pass, then the task's end of epoch; returns the epoch's
    /// metrics. `resume`: the epoch was interrupted by a mid-epoch checkpoint.
    fn train_epoch(
        &mut self,
        epoch: usize,
        resume: Option<MidEpoch>,
    ) -> Result<Vec<(String, f64)>> {
        let started = Instant::now();
        // Memory statistics are a report: when libtorch cannot give them, the run goes on.
        if let Err(e) = memory::reset_peak(self.task.device()) {
            eprintln!("warning: {e:#}");
        }
        let pass = self.train_pass(epoch, resume);
        self.progress.finish_epoch();
        let pass = pass?;
        let mut metrics = self.task.end_epoch(epoch, &pass.summary)?;
        // The epoch's training pass and validation (a CUDA run only).
        match memory::peak_allocated_mib(self.task.device()) {
            Ok(Some(mib)) => metrics.push((memory::PEAK_ALLOCATED_MIB.into(), mib)),
            Ok(None) => {}
            Err(e) => eprintln!("warning: {e:#}"),
        }
        self.warn_about_skipped_images()?;
        let skipped = self.path.take_skipped_nonfinite();
        if self.task.config().nan_policy == crate::config::NanPolicy::SkipStep {
            metrics.push(("steps/skipped_nonfinite".into(), skipped as f64));
        }
        metrics.push((
            "throughput/train_images_per_second".into(),
            pass.images as f64 / pass.seconds.max(1e-9),
        ));
        metrics.push(("time/epoch_seconds".into(), started.elapsed().as_secs_f64()));
        Ok(metrics)
    }

    /// The training pass of `epoch`: every step through the step path, a checkpoint every
    /// `checkpoint_every_n_steps` global steps, and on a signal a checkpoint at the current step
    /// and a [`signals::Stopped`] error (a signal on the epoch's last step stops the run once
    /// the epoch is written instead).
    fn train_pass(&mut self, epoch: usize, resume: Option<MidEpoch>) -> Result<Pass> {
        let config = self.task.config();
        let (seed, l_rate, num_epochs, every) = (
            config.random_seed,
            config.l_rate * self.lr_scale,
            config.num_epochs,
            config.checkpoint_every_n_steps,
        );
        // libtorch's global generator (dropout, random init in plugins) is reseeded from (seed,
        // epoch) at every epoch, so a run resumed at an epoch's start needs no generator state.
        tch::manual_seed(seed_of(&[seed, epoch as u64, 17]) as i64 & i64::MAX);
        let skip = resume.as_ref().map_or(0, |r| r.steps_done);
        let EpochSteps { steps, full_steps } = self.task.begin_epoch(epoch, skip)?;
        if let Some(resume) = &resume {
            self.task
                .restore_epoch_state(&resume.state)
                .context("restoring the interrupted epoch's running sums")?;
            rng::set_state(Device::Cpu, &resume.rng_cpu)?;
            if let (Some(state), device @ Device::Cuda(_)) =
                (&resume.rng_device, self.task.device())
            {
                rng::set_state(device, state)?;
            }
        }
        let schedule = self.task.schedule();
        let max_steps = (full_steps * num_epochs) as u64;
        self.progress.start_epoch(epoch, num_epochs, steps);
        let started = Instant::now();
        // The steps taken before an interruption count in the epoch's mean learning rate (a
        // pure function of the schedule).
        let first_step = self.global_step as usize - skip.min(self.global_step as usize);
        let mut lr_sum: f64 = (0..skip)
            .map(|s| schedule.lr(l_rate, epoch, first_step + s, full_steps, num_epochs))
            .sum();
        let mut images = 0usize;
        let distributed = crate::world::current().is_distributed();
        let mut last_check = Instant::now();
        let mut reads = HostReads::default();
        for step in skip..steps {
            let lr = schedule.lr(
                l_rate,
                epoch,
                self.global_step as usize,
                full_steps,
                num_epochs,
            );
            lr_sum += lr;
            self.path.position = (epoch, step);
            let before = host_reads::count();
            let device = self.task.device();
            let report = host_reads::strict_on_cuda(device, || {
                let report = self.task.train_step(&mut self.path, lr)?;
                self.task.after_step(self.global_step + 1, max_steps)?;
                Ok(report)
            })?;
            images += report.images;
            self.global_step += 1;
            reads.steps += 1;
            reads.in_steps += host_reads::count() - before;
            let last = step + 1 == steps;
            let checkpoint_due =
                every > 0 && self.global_step.is_multiple_of(every as u64) && !last;
            // The step path's flags are read every few steps (at the same steps on every
            // process), before every checkpoint and at the end of the pass; a non-finite loss
            // stops the run there with `nan_policy = stop`.
            let check_due = last
                || checkpoint_due
                || self.global_step.is_multiple_of(CHECK_EVERY_STEPS)
                || self.path.unchecked() >= MAX_UNCHECKED
                || (!distributed
                    && (signals::requested().is_some() || last_check.elapsed() >= CHECK_AFTER));
            let loss = if check_due {
                let before = host_reads::count();
                let loss = self.path.check(Some(&report.loss))?;
                reads.checks += host_reads::count() - before;
                last_check = Instant::now();
                loss
            } else {
                None
            };
            let elapsed = started.elapsed().as_secs_f64();
            self.progress
                .step(step + 1, loss, images as f64 / elapsed.max(1e-9));
            // Every process stops at the same step on the same signal (the step path's
            // all-reduce carried it, the check read it).
            match self.path.stop_signal().filter(|_| check_due) {
                // The epoch's own checkpoint follows at once; stop after it.
                Some(signal) if last => signals::stop_after_epoch(signal),
                Some(signal) => {
                    self.progress.finish_epoch();
                    self.save_mid_epoch(epoch, step + 1)?;
                    return Err(self.folder.stopped(
                        signal,
                        &format!(
                            "stopped by {} after step {} of {steps} of epoch {}",
                            signals::name(signal),
                            step + 1,
                            epoch + 1
                        ),
                    ));
                }
                None if checkpoint_due => self.save_mid_epoch(epoch, step + 1)?,
                None => {}
            }
        }
        if host_reads::reported() {
            eprintln!(
                "host reads of device values in epoch {}: {} in {} training steps, {} at checks",
                epoch + 1,
                reads.in_steps,
                reads.steps,
                reads.checks
            );
        }
        Ok(Pass {
            images,
            seconds: started.elapsed().as_secs_f64(),
            summary: TrainSummary {
                steps,
                mean_lr: lr_sum / steps as f64,
            },
        })
    }

    /// After an epoch's metrics: the divergence probe, `metrics.csv`, TensorBoard and the
    /// checkpoint (rank 0), the epoch line, and a stop requested during its last step.
    fn end_epoch(&mut self, epoch: usize, mut metrics: Vec<(String, f64)>) -> Result<()> {
        let world = crate::world::current();
        if world.is_distributed() {
            let diverged = world.diverged(&self.task.checkpoint_tensors())?;
            if !diverged.is_empty() {
                eprintln!("{}", divergence(&diverged, &format!("epoch {}", epoch + 1)));
            }
        }
        let all_reduce = self.path.take_all_reduce();
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
        if let Some(outputs) = self.outputs.as_mut() {
            outputs.write_epoch(epoch, &metrics)?;
            let tensors = self.task.checkpoint_tensors();
            self.write_checkpoint(epoch + 1, &tensors)?;
            let kept = self.keep_encoder(epoch + 1, &tensors)?;
            if let Some(outputs) = &self.outputs {
                let mut files = vec!["metrics.csv"];
                files.extend(kept.as_deref());
                self.folder.upload_outputs(&files, outputs)?;
            }
            self.folder.upload_checkpoint(epoch + 1, self.global_step)?;
            eprintln!(
                "{}{all_reduce_line}{}",
                self.task.epoch_line(epoch, &metrics),
                memory::epoch_line_part(&metrics)
            );
        }
        if let Some(signal) = signals::stop_requested_after_epoch() {
            return Err(self.folder.stopped(
                signal,
                &format!(
                    "stopped by {} after epoch {}",
                    signals::name(signal),
                    epoch + 1
                ),
            ));
        }
        Ok(())
    }

    /// The epochs `first..last` (the first resumed after `mid_epoch` steps when given), then,
    /// when `last` is the run's last epoch, the final evaluation.
    fn train_epochs(
        &mut self,
        first: usize,
        last: usize,
        mid_epoch: Option<MidEpoch>,
    ) -> Result<()> {
        let mut mid_epoch = mid_epoch;
        for epoch in first..last {
            let metrics = self.train_epoch(epoch, mid_epoch.take())?;
            self.end_epoch(epoch, metrics)?;
        }
        if last == self.task.config().num_epochs {
            self.final_evaluation()?;
        }
        Ok(())
    }

    /// After the last epoch: the task's final evaluation (e.g. a test split), written under
    /// epoch `num_epochs`.
    fn final_evaluation(&mut self) -> Result<()> {
        let dir = &self.folder.location;
        let evaluation = self.task.final_evaluation().with_context(|| {
            format!(
                "training finished and its checkpoint and metrics are saved in {dir}, but the \
                 final evaluation failed; `--output_dir={dir} --resume` retries only the final \
                 evaluation"
            )
        })?;
        let epochs = self.task.config().num_epochs;
        if let (Some(FinalEvaluation { metrics, line }), Some(outputs)) =
            (evaluation, self.outputs.as_mut())
        {
            if !metrics.is_empty() {
                outputs.write_epoch(epochs, &metrics)?;
                self.folder.upload_outputs(&["metrics.csv"], outputs)?;
                eprintln!("{line}");
            }
        }
        Ok(())
    }

    /// One warning per data source when images were skipped as unreadable since the last
    /// warning (`skip_unreadable_images`): how many distinct ones over all processes, and the
    /// first error rank 0 saw. Every process takes part (the indices are gathered); rank 0
    /// prints.
    fn warn_about_skipped_images(&mut self) -> Result<()> {
        let world = crate::world::current();
        for (source, what) in self.task.sources() {
            let mine: Vec<i64> = source
                .skipped_indices()
                .into_iter()
                .map(|i| i as i64)
                .collect();
            // Agreed by all: whether there is anything to gather.
            if world.all_reduce_f64(&[mine.len() as f64], crate::world::Reduce::Sum)?[0] == 0.0 {
                continue;
            }
            let all = world.gather_rows(&Tensor::from_slice(&mine))?;
            let mut all = Vec::<i64>::try_from(&all)?;
            all.sort_unstable();
            all.dedup();
            let total = all.len();
            let seen = self.warned_skipped.entry(what).or_default();
            if total > *seen {
                if world.is_main() {
                    eprintln!(
                        "warning: skipped {total} unreadable image(s) of {} ({what} data){}",
                        source.name,
                        match source.skipped_report().1 {
                            Some(first) => format!("; first: {first}"),
                            None => " on other processes (see their output)".to_string(),
                        }
                    );
                }
                *seen = total;
            }
        }
        Ok(())
    }
}

/// The report of tensors that differ from rank 0's after `when` (the first five named).
fn divergence(diverged: &[String], when: &str) -> String {
    let world = crate::world::current();
    format!(
        "rank {}: {} tensor(s) differ from rank 0's after {when}: {}",
        world.rank(),
        diverged.len(),
        diverged
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// What an epoch's training pass did.
struct Pass {
    images: usize,
    seconds: f64,
    summary: TrainSummary,
}

/// The step path's flags are read at least every this many global steps.
const CHECK_EVERY_STEPS: u64 = 10;
/// ... and, in a run of one process, at least this often.
const CHECK_AFTER: std::time::Duration = std::time::Duration::from_secs(1);
/// ... and before this many optimizer steps are waiting to be checked.
const MAX_UNCHECKED: usize = 256;

/// The host's reads of device values in an epoch's training pass.
#[derive(Default)]
struct HostReads {
    /// Training steps taken.
    steps: u64,
    /// Reads inside them (the task's step, the step path, the after-step hook).
    in_steps: u64,
    /// Reads by the step path's checks.
    checks: u64,
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
