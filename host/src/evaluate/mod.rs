//! `ssl-host evaluate`: the offline evaluation of encoders on one labelled dataset.
//!
//! Every encoder's features of the training and test splits are extracted once (evaluation
//! transform, eval mode; cached) and reused by every protocol:
//! - **linear**: the linear probe ([`probe`]) at each label fraction and seed, the L2 penalty
//!   chosen on a validation part of the labelled training images (patient-level where the
//!   dataset has patients), scored once on the test split;
//! - **knn**: weighted cosine kNN (the kNN monitor's code, [`crate::tasks::knn`]) with k = 200,
//!   T = 0.1 (solo-learn, lightly) and k = 20, T = 0.07 (DINO), on all training labels.
//!
//! Test metrics get 95% bootstrap intervals; encoders from runs are checked for leakage
//! ([`leakage`]); the results go to `results.{csv,json,md}` and plots ([`plots`]).

pub mod features;
pub mod leakage;
pub mod plots;
pub mod probe;
pub mod projection;
pub mod report;
pub mod stats;

use crate::cli::Cli;
use crate::commands::embed::{embed_transform, EvalSource};
use crate::pipeline::Pipeline;
use crate::registry::Registry;
use crate::tasks::knn;
use anyhow::{anyhow, bail, Context, Result};
use features::{EvalEncoder, Extraction};
use report::Row;
use serde_json::Value;
use sha2::{Digest, Sha256};
use ssl_plugin_api::host::DatasetHandle;
use ssl_plugin_api::tch::{Kind, Tensor};
use ssl_plugin_api::Params;
use stats::Targets;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The kNN settings every evaluation runs: (k, temperature).
pub const KNN_SETTINGS: [(i64, f64); 2] = [(200, 0.1), (20, 0.07)];
/// The label fractions of the linear probe when none are given.
pub const DEFAULT_FRACTIONS: [f64; 3] = [0.01, 0.1, 1.0];
/// The share of the labelled training images that chooses the probe's penalty.
const PROBE_VALIDATION: f64 = 0.2;
/// The most test points drawn on the feature map.
const MAP_POINTS: usize = 3000;

/// What `evaluate` was asked to do.
pub struct Settings {
    pub encoders: Vec<String>,
    pub dataset: String,
    /// Dataset parameters (`root` from `--local_dataset`), without `split`.
    pub dataset_params: serde_json::Map<String, Value>,
    pub output_dir: Option<PathBuf>,
    pub linear: bool,
    pub knn: bool,
    pub fractions: Vec<f64>,
    pub seeds: u64,
    pub image_size: Option<u32>,
    pub strict: bool,
    /// The share of the training split held out as the test split when the dataset has none.
    pub test_fraction: f64,
    /// A separate folder whose images (its `train` split) are the test set
    /// (`--test_local_dataset`, e.g. an image folder's test folder).
    pub test_root: Option<String>,
    pub bootstrap: usize,
    pub extraction: Extraction,
}

fn number<T: std::str::FromStr>(name: &str, text: &str, what: &str) -> Result<T> {
    text.trim()
        .parse()
        .map_err(|_| anyhow!("--{name}={text}: expected {what}"))
}

impl Settings {
    /// Takes `evaluate`'s options out of `cli`; every option left is a dataset parameter.
    pub fn take(cli: &mut Cli) -> Result<Settings> {
        let encoders = cli.take_all("encoder");
        if encoders.is_empty() {
            bail!("evaluate needs at least one --encoder=RUN_FOLDER|CHECKPOINT|NAME:WEIGHTS.safetensors|random:NAME");
        }
        let dataset = cli
            .take("dataset")
            .context("evaluate needs --dataset=NAME (see `ssl-host list`)")?;
        let mut linear = false;
        let mut knn = false;
        let protocols = cli.take("protocols").unwrap_or_else(|| "linear,knn".into());
        for p in protocols
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            match p {
                "linear" => linear = true,
                "knn" => knn = true,
                "finetune" => bail!(
                    "--protocols=finetune: fine-tuning is not part of evaluate yet; train a classifier (`ssl-host train --model=...` with local_ssl_weights_path) at each label fraction instead"
                ),
                other => bail!("--protocols: unknown protocol `{other}`; expected linear, knn"),
            }
        }
        if !linear && !knn {
            bail!("--protocols={protocols}: name at least one of linear, knn");
        }
        let fractions = match cli.take("label_fractions") {
            None => DEFAULT_FRACTIONS.to_vec(),
            Some(text) => text
                .split(',')
                .map(|f| {
                    let v: f64 =
                        number("label_fractions", f, "fractions in (0, 1], e.g. 0.01,0.1,1")?;
                    if !(v > 0.0 && v <= 1.0) {
                        bail!("--label_fractions: {v} is not in (0, 1]");
                    }
                    Ok(v)
                })
                .collect::<Result<_>>()?,
        };
        let seeds = match cli.take("seeds") {
            Some(t) => number::<u64>("seeds", &t, "a whole number of at least 1")?.max(1),
            None => 3,
        };
        let bootstrap = match cli.take("bootstrap") {
            Some(t) => number("bootstrap", &t, "a whole number (0: no intervals)")?,
            None => 1000,
        };
        let test_fraction = match cli.take("test_fraction") {
            Some(t) => {
                let v: f64 = number("test_fraction", &t, "a fraction in (0, 1)")?;
                if !(v > 0.0 && v < 1.0) {
                    bail!("--test_fraction={t}: expected a fraction in (0, 1)");
                }
                v
            }
            None => 0.2,
        };
        let image_size = match cli.take("image_size") {
            Some(t) => Some(number::<u32>("image_size", &t, "a whole number of pixels")?),
            None => None,
        };
        let strict = cli.take("strict").is_some_and(|v| v != "false");
        let no_cache = cli.take("no_feature_cache").is_some_and(|v| v != "false");
        let (batch_size, workers, device) = crate::commands::embed::loader_options(cli)?;
        let output_dir = cli.take("output_dir").map(PathBuf::from);
        if let Some(split) = cli.take("split") {
            bail!("--split={split}: evaluate reads the dataset's train and test splits itself");
        }
        let test_root = cli.take("test_local_dataset");
        let root = cli.take("local_dataset");
        // `--dataset_params.NAME=VALUE` passes a parameter whose name an option of evaluate
        // takes (e.g. Shapes' `image_size`).
        for (name, _) in cli.options.iter_mut() {
            if let Some(plain) = name.strip_prefix("dataset_params.") {
                *name = plain.to_string();
            }
        }
        let mut dataset_params = crate::commands::params_from_options(&cli.options);
        cli.options.clear();
        if let Some(root) = root {
            dataset_params.insert("root".into(), Value::String(root));
        }
        let cache = (!no_cache).then(|| crate::remote_run::cache_root().join("features"));
        Ok(Settings {
            encoders,
            dataset,
            dataset_params,
            output_dir,
            linear,
            knn,
            fractions,
            seeds,
            image_size,
            strict,
            test_fraction,
            test_root,
            bootstrap,
            extraction: Extraction {
                batch_size,
                workers,
                device,
                cache,
            },
        })
    }

    fn root(&self) -> Option<&str> {
        self.dataset_params.get("root").and_then(Value::as_str)
    }

    /// Opens split `split` of the dataset at `root` (resolving a URL or catalogue name as
    /// `embed` does).
    fn open_at(
        &self,
        registry: &Registry,
        root: Option<&str>,
        split: &str,
    ) -> Result<Arc<DatasetHandle>> {
        let extra: toml::Table = serde_json::from_value(Value::Object(
            self.dataset_params
                .iter()
                .filter(|(k, _)| k.as_str() != "root")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ))
        .context("the dataset parameters")?;
        crate::datasets::open_split(
            registry,
            &self.dataset,
            root,
            split,
            &extra,
            &crate::shards::StoreSettings::from_env(),
        )
    }
}

/// The labels of `dataset`: its findings, else its classes; an error when it has neither or a
/// sample has no label.
pub fn targets_of(dataset: &DatasetHandle, name: &str) -> Result<Targets> {
    if let Some(findings) = dataset.findings()? {
        return Ok(Targets::Findings(findings));
    }
    let Some(num_classes) = dataset.num_classes() else {
        bail!("dataset `{name}` has no labels: evaluate needs classes or findings");
    };
    let labels = dataset
        .targets()?
        .into_iter()
        .enumerate()
        .map(|(i, l)| l.ok_or_else(|| anyhow!("dataset `{name}`: sample {i} has no label")))
        .collect::<Result<Vec<i64>>>()?;
    Ok(Targets::Classes {
        labels,
        num_classes,
    })
}

/// The short hash of a split's sorted sample ids (`train_split`, `test_split` in the results).
fn split_hash(ids: &[String]) -> String {
    let mut sorted: Vec<&String> = ids.iter().collect();
    sorted.sort();
    let mut h = Sha256::new();
    for id in sorted {
        h.update(id.as_bytes());
        h.update(b"\n");
    }
    format!("{:x}", h.finalize())[..12].to_string()
}

/// One part of the evaluation data: the samples `indices` of `dataset`.
struct Part {
    dataset: Arc<DatasetHandle>,
    /// Which extraction the features come from (0: training split, 1: test split).
    source: usize,
    indices: Vec<usize>,
    targets: Targets,
    groups: Option<Vec<String>>,
    ids: Vec<String>,
}

/// The training and test parts; the test part is carved from the training split
/// (patient-level where the dataset has patients) when the dataset has no test split.
fn parts(settings: &Settings, registry: &Registry) -> Result<(Part, Part, Option<String>)> {
    let train = settings.open_at(registry, settings.root(), "train")?;
    if train.is_empty() {
        bail!(
            "dataset `{}`{} has no training samples",
            settings.dataset,
            settings
                .root()
                .map(|r| format!(" at {r}"))
                .unwrap_or_default()
        );
    }
    let test = match &settings.test_root {
        Some(root) => {
            let test = settings.open_at(registry, Some(root), "train")?;
            if test.is_empty() {
                bail!(
                    "--test_local_dataset={root}: dataset `{}` has no samples there",
                    settings.dataset
                );
            }
            Some(test)
        }
        None => settings
            .open_at(registry, settings.root(), "test")
            .ok()
            .filter(|t| !t.is_empty()),
    };
    let make = |dataset: &Arc<DatasetHandle>, source: usize, indices: Vec<usize>| -> Result<Part> {
        let targets = targets_of(dataset, &settings.dataset)?.select(&indices);
        let groups = dataset
            .groups()?
            .map(|g| indices.iter().map(|&i| g[i].clone()).collect());
        let all_ids = dataset.ids()?;
        let ids = indices.iter().map(|&i| all_ids[i].clone()).collect();
        Ok(Part {
            dataset: Arc::clone(dataset),
            source,
            indices,
            targets,
            groups,
            ids,
        })
    };
    match test {
        Some(test) => Ok((
            make(&train, 0, (0..train.len()).collect())?,
            make(&test, 1, (0..test.len()).collect())?,
            None,
        )),
        None => {
            let (kept, held) = match train.groups()? {
                Some(groups) => crate::split::group_split(&groups, settings.test_fraction, 0),
                None => crate::split::train_val_split(train.len(), settings.test_fraction, 0),
            };
            if kept.is_empty() || held.is_empty() {
                bail!(
                    "dataset `{}` has no test split and too few samples ({}) to hold out --test_fraction={}",
                    settings.dataset,
                    train.len(),
                    settings.test_fraction
                );
            }
            let note = format!(
                "dataset `{}` has no test split: {} of its {} training samples ({}%{}) are held out as the test set",
                settings.dataset,
                held.len(),
                train.len(),
                settings.test_fraction * 100.0,
                if train.groups()?.is_some() { ", by patient" } else { "" }
            );
            Ok((make(&train, 0, kept)?, make(&train, 0, held)?, Some(note)))
        }
    }
}

/// `ssl-host evaluate`.
pub fn run(registry: &Registry, cli: &mut Cli) -> Result<()> {
    let settings = Settings::take(cli)?;
    let (train, test, note) = parts(&settings, registry)?;
    if let Some(note) = &note {
        println!("{note}");
    }
    let out = match &settings.output_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.clone()
        }
        None => crate::engine::run_folder::new_folder(
            Path::new("outputs"),
            &format!("{}_evaluate", crate::outputs::utc_timestamp()),
        )?,
    };
    // A folder made here and left empty by an error goes again.
    let _made = settings
        .output_dir
        .is_none()
        .then(|| crate::engine::run_folder::RemoveIfEmpty::made(&out));
    let info = registry
        .dataset(&settings.dataset)?
        .info_for(&Params::from_value(Value::Object(
            settings.dataset_params.clone(),
        ))?)?;
    let specs = embed_transform(&settings.dataset, &info, settings.image_size)?;
    let pipeline = Arc::new(Pipeline::build(
        registry,
        &specs,
        "the evaluation transform",
    )?);
    let data_key = |split: &str| {
        format!(
            "{}|{}|{split}|{}",
            settings.dataset,
            Value::Object(settings.dataset_params.clone()),
            serde_json::to_string(
                &specs
                    .iter()
                    .map(|s| (&s.name, s.params.to_string()))
                    .collect::<Vec<_>>()
            )
            .unwrap_or_default()
        )
    };
    let hashes = (split_hash(&train.ids), split_hash(&test.ids));
    println!(
        "evaluating {} encoder(s) on `{}`: {} training and {} test images{}",
        settings.encoders.len(),
        settings.dataset,
        train.indices.len(),
        test.indices.len(),
        match &train.targets {
            Targets::Findings(f) => format!(", {} findings", f.names().len()),
            Targets::Classes { num_classes, .. } => format!(", {num_classes} classes"),
        }
    );

    let mut encoders = settings
        .encoders
        .iter()
        .map(|spec| EvalEncoder::load(spec, registry, settings.extraction.device, &info, 0))
        .collect::<Result<Vec<_>>>()?;
    features::unique_labels(&mut encoders);

    // The leakage check, before any time is spent.
    let test_set = leakage::TestSet {
        dataset: &settings.dataset,
        root: settings.test_root.as_deref().or(settings.root()),
        ids: &test.ids,
        groups: test.groups.as_deref(),
    };
    for e in &encoders {
        let found = leakage::check(registry, e.record.as_ref(), &test_set)
            .with_context(|| format!("checking encoder {} for leakage", e.label))?;
        let line = found.describe(&e.label);
        if found.leaked() {
            if settings.strict {
                bail!("{line} (--strict)");
            }
            eprintln!("warning: {line}");
        } else {
            println!("{line}");
        }
    }

    let ctx = Context_ {
        settings: &settings,
        train: &train,
        test: &test,
        pipeline: &pipeline,
        hashes: &hashes,
        data_key: &data_key,
    };
    let mut rows = Vec::new();
    let mut curves = Vec::new();
    let mut maps = Vec::new();
    let mut rocs = Vec::new();
    let mut over_training = Vec::new();
    for e in &mut encoders {
        let (train_x, test_x) = ctx.features(&mut e.encoder, &e.cache_key, &e.label)?;
        if settings.linear {
            let (r, roc) = ctx.linear(&e.label, &train_x, &test_x)?;
            curves.push(plots::Series {
                name: e.label.clone(),
                points: efficiency_points(&r, headline(&train.targets)),
            });
            rocs.push((e.label.clone(), roc));
            rows.extend(r);
        }
        if settings.knn {
            rows.extend(ctx.knn(&e.label, &train_x, &test_x, None)?);
        }
        maps.push((e.label.clone(), test_x));
        let kept = e.kept_encoders();
        if !kept.is_empty() {
            let mut points = Vec::new();
            for (epoch, path) in kept {
                let spec = path.display().to_string();
                let mut k =
                    EvalEncoder::load(&spec, registry, settings.extraction.device, &info, 0)?;
                let what = format!("{} epoch {epoch}", e.label);
                let (tx, qx) = ctx.features(&mut k.encoder, &k.cache_key, &what)?;
                let r = ctx.knn(&e.label, &tx, &qx, Some(epoch))?;
                let metric = knn_headline(&train.targets);
                if let Some(row) = r
                    .iter()
                    .find(|r| r.metric == metric && r.protocol.starts_with("knn-k200"))
                {
                    points.push(plots::Point {
                        x: epoch as f64,
                        y: row.value,
                        sd: None,
                    });
                }
                rows.extend(r);
            }
            over_training.push(plots::Series {
                name: e.label.clone(),
                points,
            });
        }
    }

    let metrics = summary_metrics(&train.targets);
    let md = report::markdown(
        &rows,
        &metrics.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    report::write(&out, &rows, &md)?;
    let written = draw_plots(
        &out,
        &settings,
        &train.targets,
        &test,
        &curves,
        &rocs,
        &maps,
        &over_training,
    )?;
    println!("\n{md}");
    println!(
        "wrote results.csv, results.json, results.md{} to {}",
        written.iter().map(|w| format!(", {w}")).collect::<String>(),
        out.display()
    );
    Ok(())
}

/// The data every protocol of one evaluation shares.
struct Context_<'a> {
    settings: &'a Settings,
    train: &'a Part,
    test: &'a Part,
    pipeline: &'a Arc<Pipeline>,
    hashes: &'a (String, String),
    data_key: &'a dyn Fn(&str) -> String,
}

impl Context_<'_> {
    /// The training and test features of `encoder`.
    fn features(
        &self,
        encoder: &mut ssl_plugin_api::torch::ForeignEncoder,
        key: &str,
        label: &str,
    ) -> Result<(Tensor, Tensor)> {
        let mut extracted: Vec<Option<Tensor>> = vec![None, None];
        for part in [self.train, self.test] {
            if extracted[part.source].is_some() {
                continue;
            }
            let source = EvalSource {
                dataset: Arc::clone(&part.dataset),
                dataset_name: &self.settings.dataset,
                pipeline: Arc::clone(self.pipeline),
                expand_to: features::expand_to(encoder),
                size_hint: "images of different sizes cannot share a batch: pass --image_size=N to resize and centre-crop every image to N×N",
            };
            let split = if part.source == 0 { "train" } else { "test" };
            let what = format!("features of {label} ({split})");
            let t = self.settings.extraction.extract(
                encoder,
                key,
                source,
                &(self.data_key)(split),
                &what,
            )?;
            extracted[part.source] = Some(t);
        }
        let pick = |part: &Part| {
            let all = extracted[part.source].as_ref().expect("extracted above");
            let index =
                Tensor::from_slice(&part.indices.iter().map(|&i| i as i64).collect::<Vec<_>>());
            all.index_select(0, &index)
        };
        Ok((pick(self.train), pick(self.test)))
    }

    fn row(&self, encoder: &str, protocol: &str, fraction: f64, seed: u64, labelled: usize) -> Row {
        Row {
            encoder: encoder.to_string(),
            protocol: protocol.to_string(),
            dataset: self.settings.dataset.clone(),
            fraction,
            seed,
            metric: String::new(),
            value: f64::NAN,
            ci_low: None,
            ci_high: None,
            penalty: None,
            labelled_samples: labelled,
            test_samples: self.test.indices.len(),
            epoch: None,
            train_split: self.hashes.0.clone(),
            test_split: self.hashes.1.clone(),
            ssl_host_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// The linear probe at every label fraction and seed; also the ROC panels of the probe on
    /// all labels (first seed).
    fn linear(
        &self,
        label: &str,
        train_x: &Tensor,
        test_x: &Tensor,
    ) -> Result<(Vec<Row>, RocPanels)> {
        let s = self.settings;
        let mut rows = Vec::new();
        let mut roc = Vec::new();
        let bar = fit_bar(label, s.fractions.len() as u64 * s.seeds);
        for &fraction in &s.fractions {
            for seed in 0..s.seeds {
                let chosen = stats::label_fraction(
                    &self.train.targets,
                    self.train.groups.as_deref(),
                    fraction,
                    seed,
                )?;
                let (mut fit, mut val) = probe_split(&chosen, self.train.groups.as_deref(), seed);
                if !every_class_in(&self.train.targets, &fit)
                    || !scorable(&self.train.targets, &val)
                {
                    // A class only in the validation part (a handful of labels): choose the
                    // penalty on the labelled images themselves.
                    fit = chosen.clone();
                    val = chosen.clone();
                }
                // Findings with positives and negatives among the fitting images; the others
                // cannot be fitted at this fraction and score NaN.
                let kept = fittable_findings(&self.train.targets, &fit);
                let narrow = |t: &Targets| match (&kept, t) {
                    (Some(cols), Targets::Findings(f)) => Targets::Findings(keep_columns(f, cols)),
                    _ => t.clone(),
                };
                let take = |idx: &[usize]| {
                    let index =
                        Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>());
                    (
                        train_x.index_select(0, &index),
                        narrow(&self.train.targets.select(idx)),
                    )
                };
                let (fx, fy) = take(&fit);
                let (vx, vy) = take(&val);
                let test_y = narrow(&self.test.targets);
                if let (Some(cols), Targets::Findings(f)) = (&kept, &self.train.targets) {
                    let left: Vec<&str> = (0..f.names().len())
                        .filter(|j| !cols.contains(j))
                        .map(|j| f.names()[j].as_str())
                        .collect();
                    if cols.is_empty() {
                        bail!(
                            "no finding has both positive and negative images among the {} labelled images of {}% of the labels (seed {seed}): use larger --label_fractions",
                            fit.len(),
                            fraction * 100.0
                        );
                    }
                    if let Some(b) = &bar {
                        b.suspend(|| note_left_out(&left, fraction, seed));
                    } else {
                        note_left_out(&left, fraction, seed);
                    }
                }
                let fitted =
                    probe::fit_with_validation(&fx, &fy, &vx, &vy, &probe::ProbeConfig::default())
                        .with_context(|| {
                            format!(
                        "fitting the linear probe of {label} on {}% of the labels (seed {seed})",
                        fraction * 100.0
                    )
                        })?;
                let scores = fitted.probe.scores(test_x)?;
                let mut scored = score(&scores, &test_y, s.bootstrap, seed);
                if let (Some(cols), Targets::Findings(f)) = (&kept, &self.train.targets) {
                    for (j, name) in f
                        .names()
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| !cols.contains(j))
                    {
                        let _ = j;
                        scored.push((format!("auroc/{name}"), f64::NAN, None));
                        scored.push((format!("auprc/{name}"), f64::NAN, None));
                    }
                }
                for (metric, value, ci) in scored {
                    let mut r = self.row(label, "linear", fraction, seed, chosen.len());
                    r.metric = metric;
                    r.value = value;
                    r.ci_low = ci.map(|c| c.0);
                    r.ci_high = ci.map(|c| c.1);
                    r.penalty = Some(fitted.chosen_penalty);
                    rows.push(r);
                }
                if fraction == 1.0 && seed == 0 {
                    roc = roc_panels(label, &scores, &test_y)?;
                }
                if let Some(b) = &bar {
                    b.inc(1);
                }
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        Ok((rows, roc))
    }

    /// kNN with each of [`KNN_SETTINGS`] on all training labels.
    fn knn(
        &self,
        label: &str,
        train_x: &Tensor,
        test_x: &Tensor,
        epoch: Option<usize>,
    ) -> Result<Vec<Row>> {
        let mut rows = Vec::new();
        for (k, t) in KNN_SETTINGS {
            let scores = match &self.train.targets {
                Targets::Classes {
                    labels,
                    num_classes,
                } => {
                    let votes = knn::class_scores(
                        train_x,
                        &Tensor::from_slice(labels),
                        test_x,
                        *num_classes as i64,
                        k,
                        t,
                    );
                    // Vote shares: comparable across queries (the binary AUROC ranks them).
                    &votes
                        / votes
                            .sum_dim_intlist([1i64].as_slice(), true, Kind::Float)
                            .clamp_min(f64::MIN_POSITIVE)
                }
                Targets::Findings(f) => {
                    let values = Tensor::from_slice(f.values())
                        .view([f.len() as i64, f.names().len() as i64]);
                    knn::finding_scores(train_x, &values, test_x, k, t)
                }
            };
            let protocol = format!("knn-k{k}-t{t}");
            for (metric, value, ci) in
                score(&scores, &self.test.targets, self.settings.bootstrap, 0)
            {
                let mut r = self.row(label, &protocol, 1.0, 0, self.train.indices.len());
                r.metric = metric;
                r.value = value;
                r.ci_low = ci.map(|c| c.0);
                r.ci_high = ci.map(|c| c.1);
                r.epoch = epoch;
                rows.push(r);
            }
        }
        Ok(rows)
    }
}

fn fit_bar(label: &str, fits: u64) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(fits);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} fits ETA {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(format!("linear probe of {label}"));
    Some(bar)
}

/// Splits the labelled images `chosen` into the probe's fitting and penalty-choosing parts
/// (by patient when there are patients), as positions into `chosen`'s source indices.
fn probe_split(chosen: &[usize], groups: Option<&[String]>, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let (fit, val) = match groups {
        Some(g) => {
            let sub: Vec<String> = chosen.iter().map(|&i| g[i].clone()).collect();
            crate::split::group_split(&sub, PROBE_VALIDATION, seed as u32)
        }
        None => crate::split::train_val_split(chosen.len(), PROBE_VALIDATION, seed),
    };
    let map = |v: Vec<usize>| v.into_iter().map(|p| chosen[p]).collect::<Vec<_>>();
    let (fit, val) = (map(fit), map(val));
    if val.is_empty() || fit.is_empty() {
        // Too few images (or patients) to hold any out: choose the penalty on the fitting images.
        return (chosen.to_vec(), chosen.to_vec());
    }
    (fit, val)
}

/// Whether every class of single-label `targets` has a sample among `rows` (always true for
/// findings).
fn every_class_in(targets: &Targets, rows: &[usize]) -> bool {
    match targets {
        Targets::Classes {
            labels,
            num_classes,
        } => {
            let mut seen = vec![false; *num_classes];
            for &i in rows {
                seen[labels[i] as usize] = true;
            }
            // Classes absent from the whole training split cannot be required.
            let mut present = vec![false; *num_classes];
            for &l in labels {
                present[l as usize] = true;
            }
            seen.iter().zip(&present).all(|(s, p)| *s || !*p)
        }
        Targets::Findings(_) => true,
    }
}

/// Whether a validation part `rows` can rank penalties: two classes for a binary dataset, a
/// finding with a positive and a negative for findings, any image otherwise.
fn scorable(targets: &Targets, rows: &[usize]) -> bool {
    match targets {
        Targets::Classes {
            labels,
            num_classes: 2,
        } => rows.iter().any(|&i| labels[i] == 0) && rows.iter().any(|&i| labels[i] == 1),
        Targets::Classes { .. } => !rows.is_empty(),
        Targets::Findings(_) => fittable_findings(targets, rows).is_some_and(|c| !c.is_empty()),
    }
}

/// For findings: the columns with both a positive and a negative among `rows`; `None` for
/// classes.
fn fittable_findings(targets: &Targets, rows: &[usize]) -> Option<Vec<usize>> {
    let Targets::Findings(f) = targets else {
        return None;
    };
    Some(
        (0..f.names().len())
            .filter(|&j| {
                let values = || rows.iter().map(|&i| f.of(i)[j]);
                values().any(|v| v == 1) && values().any(|v| v == 0)
            })
            .collect(),
    )
}

/// The findings `f` restricted to the columns `cols`.
fn keep_columns(f: &ssl_plugin_api::Findings, cols: &[usize]) -> ssl_plugin_api::Findings {
    let names = cols.iter().map(|&j| f.names()[j].clone()).collect();
    let values = (0..f.len())
        .flat_map(|i| cols.iter().map(move |&j| f.of(i)[j]))
        .collect();
    ssl_plugin_api::Findings::new(names, values).expect("a subset of valid findings is valid")
}

fn note_left_out(left: &[&str], fraction: f64, seed: u64) {
    if !left.is_empty() {
        eprintln!(
            "note: linear probe at {}% of the labels (seed {seed}): {} left out (no positive or no negative among the labelled images): {}",
            fraction * 100.0,
            left.len(),
            left.join(", ")
        );
    }
}

/// The metric the label-efficiency curve and the summary lead with.
fn headline(targets: &Targets) -> &'static str {
    match targets {
        Targets::Findings(_) => "auroc_macro",
        Targets::Classes { .. } => "top1",
    }
}

fn knn_headline(targets: &Targets) -> &'static str {
    headline(targets)
}

/// The metrics of the summary table.
fn summary_metrics(targets: &Targets) -> Vec<String> {
    match targets {
        Targets::Findings(_) => vec!["auroc_macro".into(), "auprc_macro".into()],
        Targets::Classes { num_classes: 2, .. } => vec!["top1".into(), "auroc".into()],
        Targets::Classes { num_classes, .. } if *num_classes >= 5 => {
            vec!["top1".into(), "top5".into()]
        }
        Targets::Classes { .. } => vec!["top1".into()],
    }
}

/// Mean ± sd of the headline metric per label fraction (the label-efficiency curve).
fn efficiency_points(rows: &[Row], metric: &str) -> Vec<plots::Point> {
    let mut fractions: Vec<f64> = rows.iter().map(|r| r.fraction).collect();
    fractions.sort_by(f64::total_cmp);
    fractions.dedup();
    fractions
        .into_iter()
        .map(|f| {
            let values: Vec<f64> = rows
                .iter()
                .filter(|r| r.fraction == f && r.metric == metric)
                .map(|r| r.value)
                .collect();
            let (mean, sd) = report::mean_sd(&values);
            plots::Point {
                x: f,
                y: mean,
                sd: Some(sd),
            }
        })
        .collect()
}

/// One encoder's ROC curves, by finding or class.
type RocPanels = Vec<(String, plots::Roc)>;

/// A test metric: (name, value, 95% interval).
type Scored = (String, f64, Option<(f64, f64)>);

/// The test metrics of `scores` (`[m, classes]` or `[m, findings]`), with 95% bootstrap
/// intervals for the headline ones: top-1 (single-label), AUROC (binary), the macro AUROC and
/// each finding's AUROC (multi-label). Macro means are over the findings defined on the test
/// set (with positives and negatives).
fn score(scores: &Tensor, targets: &Targets, bootstrap: usize, seed: u64) -> Vec<Scored> {
    let flat: Vec<f64> = Vec::<f32>::try_from(scores.to_kind(Kind::Float).contiguous().view([-1]))
        .unwrap_or_default()
        .into_iter()
        .map(f64::from)
        .collect();
    let width = targets.outputs();
    let m = targets.len();
    // The scores and targets of the resampled rows `idx`.
    let rows = |idx: &[usize]| -> (Vec<f64>, Targets) {
        let s = idx
            .iter()
            .flat_map(|&i| flat[i * width..(i + 1) * width].iter().copied())
            .collect();
        (s, targets.select(idx))
    };
    let ci = |metric: &dyn Fn(&[usize]) -> f64| -> Option<(f64, f64)> {
        (bootstrap > 0).then(|| {
            let i = stats::bootstrap_ci(m, bootstrap, seed, metric);
            (i.low, i.high)
        })
    };
    let mut out = Vec::new();
    match targets {
        Targets::Classes {
            labels,
            num_classes,
        } => {
            let k = *num_classes;
            let top1 = |idx: &[usize]| {
                let (s, t) = rows(idx);
                let Targets::Classes { labels, .. } = &t else {
                    unreachable!()
                };
                stats::top_k_accuracy(&s, labels, k, 1)
            };
            out.push((
                "top1".to_string(),
                stats::top_k_accuracy(&flat, labels, k, 1),
                ci(&top1),
            ));
            if k >= 5 {
                out.push((
                    "top5".to_string(),
                    stats::top_k_accuracy(&flat, labels, k, 5),
                    None,
                ));
            }
            if k == 2 {
                let auroc = |idx: &[usize]| {
                    let (s, t) = rows(idx);
                    stats::aurocs(&s, &t)[1]
                };
                out.push((
                    "auroc".to_string(),
                    stats::aurocs(&flat, targets)[1],
                    ci(&auroc),
                ));
            }
        }
        Targets::Findings(f) => {
            let aurocs = stats::aurocs(&flat, targets);
            // One bootstrap pass: each resample's AUROCs of every finding, kept for the
            // per-finding intervals; its macro mean gives the macro interval.
            let resampled = std::cell::RefCell::new(Vec::new());
            let macro_auroc = |idx: &[usize]| {
                let (s, t) = rows(idx);
                let v = stats::aurocs(&s, &t);
                let mean = stats::defined_mean(&v);
                resampled.borrow_mut().push(v);
                mean
            };
            out.push((
                "auroc_macro".to_string(),
                stats::defined_mean(&aurocs),
                ci(&macro_auroc),
            ));
            let resampled = resampled.into_inner();
            let aps = stats::average_precisions(&flat, targets);
            out.push(("auprc_macro".to_string(), stats::defined_mean(&aps), None));
            for (j, name) in f.names().iter().enumerate() {
                let interval = (bootstrap > 0).then(|| {
                    let mut v: Vec<f64> = resampled
                        .iter()
                        .map(|r| r[j])
                        .filter(|x| x.is_finite())
                        .collect();
                    v.sort_by(f64::total_cmp);
                    (stats::percentile(&v, 0.025), stats::percentile(&v, 0.975))
                });
                out.push((format!("auroc/{name}"), aurocs[j], interval));
                out.push((format!("auprc/{name}"), aps[j], None));
            }
        }
    }
    out
}

/// ROC panels of one encoder: per finding, or per class (the positive class of a binary set;
/// one-vs-rest for at most 10 classes); a finding or class with one kind of test label only
/// has no curve.
fn roc_panels(
    label: &str,
    scores: &Tensor,
    targets: &Targets,
) -> Result<Vec<(String, plots::Roc)>> {
    let m = targets.len();
    let width = targets.outputs();
    let flat: Vec<f64> = Vec::<f32>::try_from(scores.to_kind(Kind::Float).contiguous().view([-1]))
        .unwrap_or_default()
        .into_iter()
        .map(f64::from)
        .collect();
    let columns: Vec<(String, Vec<f64>, Vec<bool>)> = match targets {
        Targets::Findings(f) => f
            .names()
            .iter()
            .enumerate()
            .map(|(j, name)| {
                let (s, y) = (0..m)
                    .filter(|&i| f.of(i)[j] >= 0)
                    .map(|i| (flat[i * width + j], f.of(i)[j] == 1))
                    .unzip();
                (name.clone(), s, y)
            })
            .collect(),
        Targets::Classes {
            labels,
            num_classes,
        } => {
            let classes: Vec<usize> = if *num_classes == 2 {
                vec![1]
            } else {
                (0..(*num_classes).min(10)).collect()
            };
            classes
                .into_iter()
                .map(|c| {
                    let s = (0..m).map(|i| flat[i * width + c]).collect();
                    let y = labels.iter().map(|&l| l as usize == c).collect();
                    (format!("class {c}"), s, y)
                })
                .collect()
        }
    };
    columns
        .into_iter()
        .filter(|(_, _, y)| y.iter().any(|&v| v) && y.iter().any(|&v| !v))
        .map(|(name, s, y)| Ok((name, plots::Roc::from_scores(label, &s, &y)?)))
        .collect()
}

/// The colour group of each test image on the feature map, and the groups' names: its class;
/// for findings, "No finding", the one finding it has, or "Several findings".
fn map_labels(targets: &Targets) -> (Vec<usize>, Vec<String>) {
    match targets {
        Targets::Classes {
            labels,
            num_classes,
        } => (
            labels.iter().map(|&l| l as usize).collect(),
            (0..*num_classes).map(|c| format!("class {c}")).collect(),
        ),
        Targets::Findings(f) => {
            let n = f.names().len();
            let mut names: Vec<String> = vec!["No finding".into()];
            names.extend(f.names().iter().cloned());
            names.push("Several findings".into());
            let labels = (0..f.len())
                .map(|i| {
                    let present: Vec<usize> = (0..n).filter(|&j| f.of(i)[j] == 1).collect();
                    match present.as_slice() {
                        [] => 0,
                        [j] => j + 1,
                        _ => n + 1,
                    }
                })
                .collect();
            (labels, names)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn draw_plots(
    out: &Path,
    settings: &Settings,
    targets: &Targets,
    test: &Part,
    curves: &[plots::Series],
    rocs: &[(String, Vec<(String, plots::Roc)>)],
    maps: &[(String, Tensor)],
    over_training: &[plots::Series],
) -> Result<Vec<String>> {
    let mut written = Vec::new();
    let metric = headline(targets);
    if !curves.is_empty() {
        plots::line_chart(
            &out.join("label_efficiency.png"),
            &format!(
                "Linear probe on {}: test {metric} vs labels",
                settings.dataset
            ),
            "labelled share of the training images",
            &format!("test {metric}"),
            curves,
            plots::XScale::LogPercent,
        )?;
        written.push("label_efficiency.png".to_string());
    }
    if !rocs.is_empty() {
        // Panels by class or finding, one curve per encoder.
        let mut panels: Vec<(String, Vec<plots::Roc>)> = Vec::new();
        for (_, panel) in rocs {
            for (name, roc) in panel {
                match panels.iter_mut().find(|(n, _)| n == name) {
                    Some((_, v)) => v.push(roc.clone()),
                    None => panels.push((name.clone(), vec![roc.clone()])),
                }
            }
        }
        plots::roc_curves(
            &out.join("roc.png"),
            &format!(
                "Linear probe on all labels of {}: test ROC",
                settings.dataset
            ),
            &panels,
        )?;
        written.push("roc.png".to_string());
    }
    if !maps.is_empty() {
        let (labels, names) = map_labels(&test.targets);
        let mut panels = Vec::new();
        let mut shown = Vec::new();
        let mut method = "";
        for (label, x) in maps {
            let p = projection::project_2d(x, MAP_POINTS, 0)?;
            method = p.method;
            shown = p.indices;
            panels.push((label.clone(), p.points));
        }
        let labels: Vec<usize> = shown.iter().map(|&i| labels[i]).collect();
        plots::feature_map(
            &out.join("feature_map.png"),
            &format!("Test features of {}", settings.dataset),
            method,
            &panels,
            &labels,
            &names,
        )?;
        written.push("feature_map.png".to_string());
    }
    if over_training.iter().any(|s| !s.points.is_empty()) {
        plots::line_chart(
            &out.join("knn_over_training.png"),
            &format!(
                "kNN (k 200, T 0.1) on {}: test {metric} of the kept encoders",
                settings.dataset
            ),
            "epoch",
            &format!("test {metric}"),
            over_training,
            plots::XScale::Linear,
        )?;
        written.push("knn_over_training.png".to_string());
    }
    Ok(written)
}
