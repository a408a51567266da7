//! `ssl-host bench-data --model=NAME [--batches=N] [--loader_only] [--name=value]...`: runs only
//! the data path of the config's SSL training (read, decode, every view, collate, transfer to
//! the training device, device augmentation with `augment_on = "device"`; with `--loader_only`,
//! one untransformed view: read, decode and collate) with `num_workers` threads, and
//! prints images (samples, each with all its views) per second in total and per worker
//! thread, with where the workers' time goes. The last line is one JSON record for scripts
//! (`scripts/bench/augment`, `scripts/bench/gpu`).

use crate::cli::Cli;
use crate::config::AugmentOn;
use crate::config::RunConfig;
use crate::loader::{BatchStream, Seeds, Source, ViewGroup};
use crate::registry::Registry;
use crate::split::split_dataset;
use crate::tasks::ssl::{ssl_dataset, training_sampler, training_views};
use anyhow::{anyhow, bail, Context, Result};
use ssl_plugin_api::tch::{self, Device};
use std::sync::Arc;
use std::time::Instant;

/// Batches run before timing starts (thread start-up, first allocations, CUDA kernels).
const WARM_UP: usize = 2;

pub fn run(registry: &Registry, cli: &mut Cli) -> Result<()> {
    let batches = match cli.take("batches") {
        Some(b) => b
            .parse::<usize>()
            .ok()
            .filter(|&b| b > 0)
            .ok_or_else(|| anyhow!("--batches={b}: expected a whole number of at least 1"))?,
        None => 20,
    };
    let loader_only = match cli.take("loader_only").as_deref() {
        None | Some("false") => false,
        Some("true") | Some("") => true,
        Some(other) => bail!("--loader_only={other}: expected true or false"),
    };
    let model = cli.take("model").context(
        "bench-data needs --model=NAME (a config in configs/, a plugin's, or a .toml path)",
    )?;
    let overrides = std::mem::take(&mut cli.options);
    let config = RunConfig::resolve(&model, &overrides, registry)?;
    let device = crate::device::choose(config.device.as_deref())?;
    let (name, dataset) = ssl_dataset(registry, &config)?;
    let (train, _) = split_dataset(&dataset, config.val_split, config.random_seed)?;
    let source = Arc::new(if loader_only {
        // Read, decode and collate one view per sample, untransformed, as the workers do when
        // the augmentations run on the device (8-bit pixels stay 8-bit in the batch; the
        // empty device pipeline converts them where the model runs).
        let device_side = RunConfig {
            augment_on: AugmentOn::Device,
            ..config.clone()
        };
        let group = ViewGroup::build(registry, &device_side, &[], 1, "loader only")?;
        let mut source = Source::new(
            Arc::clone(&dataset),
            vec![group],
            Seeds::PerEpoch(config.random_seed),
            &name,
        );
        source.skip_unreadable = config.skip_unreadable_images;
        source
    } else {
        training_views(registry, &config, Arc::clone(&dataset), &name, device)?
    });
    let sampler = training_sampler(&config, &dataset, train)?;
    // Enough batches, cycling over epochs of the sampler when the dataset is small.
    let total = WARM_UP + batches;
    let Some(plan) = sampler.cycled(0, total) else {
        bail!(
            "the SSL training split of `{name}` gives no full batch of {} (lower \
             --ssl_training_batch_size)",
            config.ssl_training_batch_size
        );
    };
    let workers = config.num_workers;
    let sync = || {
        if let Device::Cuda(_) = device {
            tch::Cuda::synchronize(device_index(device));
        }
    };
    let mut stream = BatchStream::new(Arc::clone(&source), 0, plan, workers);
    let mut warm = 0;
    for batch in stream.by_ref().take(WARM_UP) {
        batch?.to_device(device)?;
        warm += 1;
    }
    sync();
    let before = source.stats.snapshot();
    let started = Instant::now();
    let mut samples = 0usize;
    let mut device_seconds = 0.0;
    let mut shape = Vec::new();
    let mut pixels = 0i64;
    for batch in stream {
        let batch = batch?;
        let device_started = Instant::now();
        let views = batch.to_device(device)?;
        pixels += views.iter().map(|v| v.numel() as i64).sum::<i64>();
        sync();
        device_seconds += device_started.elapsed().as_secs_f64();
        samples += batch.len();
        if shape.is_empty() {
            shape = views.iter().map(|v| format!("{:?}", v.size())).collect();
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = source.stats.snapshot();
    let (decode, augment, collate) = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
    let threads = workers.max(1);
    let images_per_s = samples as f64 / seconds;
    let share = |x: f64| if collate > 0.0 { x / collate } else { 0.0 };
    let views_per_sample = source.views();
    let paths: Vec<String> = source
        .groups
        .iter()
        .map(|g| match (&g.on_device, g.pipeline.compiled()) {
            (Some(device), _) => {
                format!("device ({})", device.compiled().unwrap_or("step by step"))
            }
            (None, Some(compiled)) => format!("workers, compiled ({compiled})"),
            (None, None) if g.pipeline.is_empty() => "workers, no transforms".into(),
            (None, None) => "workers, step by step".into(),
        })
        .collect();
    println!(
        "bench-data {model}: {name}, {samples} samples ({views_per_sample} views each, batches \
         of {}) after {warm} warm-up batches, {} worker thread(s), device {device:?}",
        config.ssl_training_batch_size, workers,
    );
    println!("  views: {}", shape.join(", "));
    println!("  augmentation: {}", paths.join("; "));
    // One byte per pixel and channel: the 8-bit images' decoded size (views included).
    let megabytes_per_s = pixels as f64 / seconds / 1e6;
    println!(
        "  {images_per_s:.1} images/s in total, {:.1} per worker thread; {megabytes_per_s:.1} MB/s of 8-bit pixels{}",
        images_per_s / threads as f64,
        if loader_only { " (loader only: read, decode, collate)" } else { "" }
    );
    // The workers' own rate: what one core does when the workers are the limit (the total can
    // be lower when the main thread's transfer or device work is, as on the CPU here).
    println!(
        "  {:.1} images per second of worker time (one core's rate)",
        samples as f64 / collate.max(1e-9)
    );
    let fetched: Vec<String> = crate::shards::of(&dataset)
        .filter(|s| s.is_remote())
        .map(|s| {
            let (count, bytes, secs) = s.fetched();
            vec![format!(
                "  object storage: {count} shard(s), {:.1} MB made ready in {secs:.2} s (fetched, or found in the cache and checked)",
                bytes as f64 / 1e6
            )]
        })
        .unwrap_or_default();
    for line in fetched {
        println!("{line}");
    }
    println!(
        "  worker time: {:.0}% reading and decoding, {:.0}% augmenting, {:.0}% collating ({:.2} \
         ms per image in the workers); main thread waited {:.2} s for transfer{}",
        100.0 * share(decode),
        100.0 * share(augment),
        100.0 * share(collate - decode - augment),
        1e3 * collate / samples.max(1) as f64,
        device_seconds,
        if source.groups.iter().any(|g| g.on_device.is_some()) {
            " and device augmentation"
        } else {
            ""
        }
    );
    let record = serde_json::json!({
        "model": model,
        "dataset": name,
        "augment_on": config.augment_on.as_str(),
        "device": format!("{device:?}"),
        "workers": workers,
        "samples": samples,
        "views_per_sample": views_per_sample,
        "batch_size": config.ssl_training_batch_size,
        "seconds": seconds,
        "images_per_s": images_per_s,
        "images_per_s_per_worker": images_per_s / threads as f64,
        "loader_only": loader_only,
        "images_per_worker_second": samples as f64 / collate.max(1e-9),
        "megabytes_per_s": megabytes_per_s,
        "decode_share": share(decode),
        "augment_share": share(augment),
        "worker_ms_per_image": 1e3 * collate / samples.max(1) as f64,
        "device_seconds": device_seconds,
    });
    println!("bench-data {record}");
    Ok(())
}

fn device_index(device: Device) -> i64 {
    match device {
        Device::Cuda(i) => i as i64,
        _ => 0,
    }
}
