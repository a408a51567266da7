//! The leakage check: did an encoder see the evaluation's test images while it was trained?
//!
//! An encoder from a run carries its run's config in its checkpoint record. When that run
//! trained on the same dataset (same registered name and the same folder) as the evaluation,
//! the run's training split is opened as the run opened it and its sample ids and patients
//! (the dataset's groups) are compared with the evaluation's test split. The original's NIH
//! default, for one, pretrains on every image of the dataset, the official test images
//! included.

use crate::checkpoint::CheckpointInfo;
use crate::config::{RunConfig, Task};
use crate::datasets::open_split;
use crate::registry::Registry;
use crate::shards::StoreSettings;
use anyhow::{Context, Result};
use std::collections::HashSet;
use std::path::Path;

/// The test split's ids and (when the dataset has them) patients.
pub struct TestSet<'a> {
    pub dataset: &'a str,
    pub root: Option<&'a str>,
    pub ids: &'a [String],
    pub groups: Option<&'a [String]>,
}

/// What the check found for one encoder.
#[derive(Clone, Debug, PartialEq)]
pub enum Leakage {
    /// The encoder has no training record (an untrained encoder or foreign weights).
    NoRecord,
    /// It was trained on another dataset or folder: nothing to compare.
    OtherData {
        dataset: String,
        root: Option<String>,
    },
    /// It was trained on the same data: how many test images and patients it saw.
    Compared {
        seen_images: usize,
        test_images: usize,
        /// (seen, total) test patients, when the dataset has patients.
        patients: Option<(usize, usize)>,
    },
}

impl Leakage {
    /// Whether the encoder saw any test image or patient.
    pub fn leaked(&self) -> bool {
        matches!(self, Leakage::Compared { seen_images, patients, .. }
            if *seen_images > 0 || patients.is_some_and(|(seen, _)| seen > 0))
    }

    /// One line for the report.
    pub fn describe(&self, label: &str) -> String {
        match self {
            Leakage::NoRecord => format!("{label}: no training record; not checked"),
            Leakage::OtherData { dataset, root } => format!(
                "{label}: pretrained on `{dataset}`{}, not the evaluation's data; no overlap possible by id",
                root.as_deref().map(|r| format!(" at {r}")).unwrap_or_default()
            ),
            Leakage::Compared {
                seen_images,
                test_images,
                patients,
            } => {
                let patients = patients
                    .map(|(seen, total)| format!(" and {seen} of the {total} test patients"))
                    .unwrap_or_default();
                if self.leaked() {
                    format!(
                        "{label}: LEAKAGE: the encoder saw {seen_images} of the {test_images} test images{patients} in its training"
                    )
                } else {
                    format!(
                        "{label}: no overlap: none of the {test_images} test images{patients} was in its training data"
                    )
                }
            }
        }
    }
}

/// The dataset a run trained its encoder on: (name, folder, parameters).
fn training_data(config: &RunConfig) -> Option<(String, Option<String>, toml::Table)> {
    match config.task {
        Task::Ssl => Some((
            config.ssl_training_dataset_name.clone()?,
            config.local_dataset.clone(),
            config.ssl_dataset_params.clone(),
        )),
        Task::Classifier => Some((
            config.linear_head_dataset_name.clone(),
            config.linear_head_dataset_path(),
            config.linear_head_dataset_params.clone(),
        )),
    }
}

fn same_folder(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            let canon = |p: &str| std::fs::canonicalize(Path::new(p)).ok();
            a == b || (canon(a).is_some() && canon(a) == canon(b))
        }
        _ => false,
    }
}

/// Compares the training data of the run that made `record` with `test`.
pub fn check(
    registry: &Registry,
    record: Option<&CheckpointInfo>,
    test: &TestSet,
) -> Result<Leakage> {
    let Some(record) = record else {
        return Ok(Leakage::NoRecord);
    };
    let config = RunConfig::from_resolved_toml(&record.config, &record.model)
        .context("reading the encoder's run config from its checkpoint")?;
    let Some((name, root, params)) = training_data(&config) else {
        return Ok(Leakage::NoRecord);
    };
    if name != test.dataset || !same_folder(root.as_deref(), test.root) {
        return Ok(Leakage::OtherData {
            dataset: name,
            root,
        });
    }
    let trained = open_split(
        registry,
        &name,
        root.as_deref(),
        "train",
        &params,
        &StoreSettings::from_config(&config),
    )
    .context("opening the encoder's training data for the leakage check")?;
    let ids: HashSet<String> = trained.ids()?.into_iter().collect();
    let seen_images = test.ids.iter().filter(|id| ids.contains(*id)).count();
    let patients = match (test.groups, trained.groups()?) {
        (Some(test_groups), Some(train_groups)) => {
            let trained: HashSet<&String> = train_groups.iter().collect();
            let test_patients: HashSet<&String> = test_groups.iter().collect();
            let seen = test_patients
                .iter()
                .filter(|p| trained.contains(*p))
                .count();
            Some((seen, test_patients.len()))
        }
        _ => None,
    };
    Ok(Leakage::Compared {
        seen_images,
        test_images: test.ids.len(),
        patients,
    })
}
