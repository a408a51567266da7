//! `CheXpert`: the Stanford CheXpert chest X-rays (v1.0, "small" or full).
//!
//! Layout, as the original: `root/train.csv` (split `train`) and `root/valid.csv` (split
//! `test`), the CSVs of the download (root is the `CheXpert-v1.0-small/` folder); columns
//! `Path` and `Frontal/Lateral`. Only `Frontal` rows are kept. A leading
//! `CheXpert-v1.0-small/` or `CheXpert-v1.0/` is stripped from `Path` (the original cuts 20
//! characters whatever they are) and the JPEG is read at `root/<stripped path>`; the id of a
//! sample is the stripped path. Images are decoded in `get` (8-bit grey); an absent image is
//! reported there, naming the CSV row (228k files are not checked at open).
//!
//! Unlabelled as the original, unless the optional parameter `chexpert_label` names a
//! finding column (e.g. `Pneumonia`): then it is a 2-class dataset. A cell of `1.0` is label
//! 1, `0.0` and an empty cell (not mentioned in the report) are 0, and `-1.0` (uncertain)
//! follows `uncertainty_policy`: `ones` (the default: 1), `zeros` (0) or `ignore` (the row
//! is dropped).

use crate::csv_table::{check_params, root_param, split_param, CsvTable};
use crate::image_file::{decode_gray8, ImageLimits, MAX_IMAGE_PIXELS};
use crate::split::Split;
use ssl_plugin_api::{bail, Dataset, Params, Plugin, PluginError, Result, Sample};
use std::path::PathBuf;

const NAME: &str = "CheXpert";

/// The prefixes stripped from `Path`, first match wins.
const PREFIXES: [&str; 2] = ["CheXpert-v1.0-small/", "CheXpert-v1.0/"];

/// What an uncertain (`-1.0`) label becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UncertaintyPolicy {
    /// Label 1 (U-Ones).
    Ones,
    /// Label 0 (U-Zeros).
    Zeros,
    /// The row is dropped (U-Ignore).
    Ignore,
}

impl UncertaintyPolicy {
    fn parse(value: &str) -> Result<Self> {
        match value {
            "ones" => Ok(Self::Ones),
            "zeros" => Ok(Self::Zeros),
            "ignore" => Ok(Self::Ignore),
            other => bail!(
                "{NAME}: parameter `uncertainty_policy` = {other:?}: expected \"ones\", \"zeros\" \
                 or \"ignore\""
            ),
        }
    }
}

/// The CheXpert dataset, indexed from `train.csv` or `valid.csv`.
#[derive(Debug)]
pub struct CheXpert {
    root: PathBuf,
    csv_path: PathBuf,
    /// Image paths relative to root (the ids).
    paths: Vec<String>,
    /// CSV row of each image, for errors.
    rows: Vec<u64>,
    /// Labels when `chexpert_label` is set.
    labels: Option<Vec<i64>>,
    /// What one image file may claim (`max_image_pixels`).
    limits: ImageLimits,
}

impl CheXpert {
    /// Opens the dataset from its parameters (`root`, `split`, optional `chexpert_label`,
    /// `uncertainty_policy`).
    pub fn from_params(params: &Params) -> Result<Self> {
        check_params(
            params,
            NAME,
            &["chexpert_label", "uncertainty_policy", MAX_IMAGE_PIXELS],
        )?;
        let limits = ImageLimits::from_params(params, NAME)?;
        let root = root_param(params, NAME)?;
        let split = split_param(params)?;
        let label: Option<String> = params.get("chexpert_label")?;
        let policy: Option<String> = params.get("uncertainty_policy")?;
        let policy = match (&label, policy) {
            (None, Some(_)) => {
                bail!("{NAME}: parameter `uncertainty_policy` needs `chexpert_label` (a finding column)")
            }
            (_, Some(p)) => UncertaintyPolicy::parse(&p)?,
            (_, None) => UncertaintyPolicy::Ones,
        };
        let mut dataset = Self::open(root, split, label.as_deref(), policy)?;
        dataset.limits = limits;
        Ok(dataset)
    }

    /// Indexes `root/train.csv` (or `valid.csv` for [`Split::Test`]), with labels from the
    /// column `label` when given.
    pub fn open(
        root: PathBuf,
        split: Split,
        label: Option<&str>,
        policy: UncertaintyPolicy,
    ) -> Result<Self> {
        let file = match split {
            Split::Train => "train.csv",
            Split::Test => "valid.csv",
        };
        let csv_path = root.join(file);
        let table = CsvTable::open(
            &csv_path,
            "CheXpert expects the CSVs of the CheXpert-v1.0(-small) download (train.csv for \
             split train, valid.csv for split test; columns Path, Frontal/Lateral) in the \
             dataset folder",
        )?;
        let path_col = table.column("Path")?;
        let view_col = table.column("Frontal/Lateral")?;
        let label_col = label.map(|l| table.column(l)).transpose()?;
        let mut paths = Vec::new();
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        table.for_each_row(|row| {
            if row.get(&view_col)? != "Frontal" {
                return Ok(());
            }
            if let Some(col) = &label_col {
                let cell = row.get(col)?;
                let value = match cell {
                    "" => 0,
                    _ => match cell.parse::<f64>() {
                        Ok(1.0) => 1,
                        Ok(0.0) => 0,
                        Ok(-1.0) => match policy {
                            UncertaintyPolicy::Ones => 1,
                            UncertaintyPolicy::Zeros => 0,
                            UncertaintyPolicy::Ignore => return Ok(()),
                        },
                        _ => {
                            return Err(row.error(
                                col,
                                format!("`{cell}`: expected 1.0, 0.0, -1.0 or an empty cell"),
                            ))
                        }
                    },
                };
                labels.push(value);
            }
            let path = row.get(&path_col)?;
            let stripped = PREFIXES
                .iter()
                .find_map(|p| path.strip_prefix(p))
                .unwrap_or(path);
            if stripped.is_empty() {
                return Err(row.error(&path_col, "empty image path"));
            }
            paths.push(stripped.to_string());
            rows.push(row.number());
            Ok(())
        })?;
        Ok(CheXpert {
            root,
            csv_path,
            paths,
            rows,
            labels: label_col.map(|_| labels),
            limits: ImageLimits::default(),
        })
    }
}

impl Dataset for CheXpert {
    fn len(&self) -> usize {
        self.paths.len()
    }

    fn num_classes(&self) -> Option<usize> {
        self.labels.as_ref().map(|_| 2)
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let Some(relative) = self.paths.get(index) else {
            bail!("{NAME}: index {index} out of range ({} images)", self.len());
        };
        let path = self.root.join(relative);
        let image = decode_gray8(&path, self.limits).map_err(|e| {
            if path.exists() {
                e
            } else {
                PluginError::msg(format!(
                    "{NAME}: image {} (listed in {} row {}) not found",
                    path.display(),
                    self.csv_path.display(),
                    self.rows[index]
                ))
            }
        })?;
        let label = self.labels.as_ref().map(|l| l[index]);
        Ok(Sample::new(image, label, relative.clone()))
    }

    fn targets(&self) -> Result<Vec<Option<i64>>> {
        Ok(match &self.labels {
            Some(labels) => labels.iter().map(|&l| Some(l)).collect(),
            None => vec![None; self.paths.len()],
        })
    }
}

/// Adds this file's datasets to the plugin.
pub(crate) fn register(plugin: Plugin) -> Plugin {
    plugin
        .dataset(
            NAME,
            "CheXpert v1.0 (small or full), frontal views only: root/train.csv (split train) or \
         root/valid.csv (split test), JPEGs at root/<Path without CheXpert-v1.0(-small)/>, \
         8-bit grey; unlabelled unless chexpert_label = a finding column (e.g. \"Pneumonia\"; \
         1.0 → 1, 0.0 or empty → 0, -1.0 → uncertainty_policy = ones (default) | zeros | \
         ignore (row dropped)), then 2 classes; max_image_pixels (67108864): larger images are refused",
            CheXpert::from_params,
        )
        .dataset_info(crate::chest_xray_info())
}

#[cfg(all(test, feature = "testdata"))]
mod tests {
    use super::*;
    use crate::testdata::cxr::{write_chexpert, CHEXPERT_HEADER};
    use std::path::Path;

    fn open(root: &Path, split: &str, extra: &str) -> Result<CheXpert> {
        let json = format!(
            r#"{{"root": {:?}, "split": "{split}"{extra}}}"#,
            root.display().to_string()
        );
        CheXpert::from_params(&Params::from_json(&json).unwrap())
    }

    #[test]
    fn keeps_frontal_views_and_strips_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_chexpert(dir.path(), 6, 3, 16).unwrap();
        assert_eq!(files.train.len(), 9);
        let ds = open(dir.path(), "train", "").unwrap();
        assert_eq!(ds.len(), 6);
        assert_eq!(ds.num_classes(), None);
        assert_eq!(ds.targets().unwrap(), vec![None; 6]);
        assert_eq!(ds.paths[0], "train/patient00001/study1/view1_frontal.jpg");
        assert_eq!(ds.paths[5], "train/patient00006/study1/view1_frontal.jpg");
        let sample = ds.get(2).unwrap();
        assert_eq!(sample.id(), "train/patient00003/study1/view1_frontal.jpg");
        assert_eq!(sample.label(), None);
        let image = sample.image();
        assert_eq!(
            (image.width(), image.height(), image.channels()),
            (16, 16, 1)
        );
        let valid = open(dir.path(), "test", "").unwrap();
        assert_eq!(valid.len(), 3);
        assert_eq!(
            valid.paths[0],
            "valid/patient00007/study1/view1_frontal.jpg"
        );
        assert!(valid.get(2).is_ok());
    }

    #[test]
    fn labels_follow_the_uncertainty_policy() {
        let dir = tempfile::tempdir().unwrap();
        // Pneumonia per patient: 1.0, 0.0, -1.0, "", 1.0, 0.0.
        write_chexpert(dir.path(), 6, 1, 8).unwrap();
        let labels = |extra: &str| -> Vec<Option<i64>> {
            open(dir.path(), "train", extra).unwrap().targets().unwrap()
        };
        let some = |v: &[i64]| v.iter().map(|&l| Some(l)).collect::<Vec<_>>();
        let ones = labels(r#", "chexpert_label": "Pneumonia""#);
        assert_eq!(ones, some(&[1, 0, 1, 0, 1, 0]));
        let zeros = labels(r#", "chexpert_label": "Pneumonia", "uncertainty_policy": "zeros""#);
        assert_eq!(zeros, some(&[1, 0, 0, 0, 1, 0]));
        let ds = open(
            dir.path(),
            "train",
            r#", "chexpert_label": "Pneumonia", "uncertainty_policy": "ignore""#,
        )
        .unwrap();
        assert_eq!(ds.targets().unwrap(), some(&[1, 0, 0, 1, 0]));
        assert_eq!(ds.num_classes(), Some(2));
        let sample = ds.get(2).unwrap();
        assert_eq!(
            (sample.id(), sample.label()),
            ("train/patient00004/study1/view1_frontal.jpg", Some(0))
        );
        let e = open(dir.path(), "train", r#", "chexpert_label": "Covid""#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no column `Covid`") && e.contains("`Pneumonia`"),
            "{e}"
        );
        let e = open(dir.path(), "train", r#", "uncertainty_policy": "ones""#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs `chexpert_label`"), "{e}");
        let e = open(
            dir.path(),
            "train",
            r#", "chexpert_label": "Edema", "uncertainty_policy": "maybe""#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`uncertainty_policy` = \"maybe\""), "{e}");
    }

    #[test]
    fn bad_data_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let e = open(dir.path(), "test", "").unwrap_err().to_string();
        assert!(
            e.contains("valid.csv: file not found; CheXpert expects"),
            "{e}"
        );
        write_chexpert(dir.path(), 2, 1, 8).unwrap();
        // The full-size download's prefix, a bad label cell, and an image that is absent.
        let header = CHEXPERT_HEADER;
        let row = |path: &str, view: &str, pneumonia: &str| {
            format!("{path},Male,60,{view},AP,,,,,,,,{pneumonia},,,,,,")
        };
        let text = [
            header.to_string(),
            row(
                "CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg",
                "Frontal",
                "1.0",
            ),
            row(
                "CheXpert-v1.0/train/patient00001/study1/view2_lateral.jpg",
                "Lateral",
                "7",
            ),
            row(
                "CheXpert-v1.0/train/patient00002/study1/view1_frontal.jpg",
                "Frontal",
                "2.0",
            ),
            row(
                "CheXpert-v1.0/train/patient00009/study1/view1_frontal.jpg",
                "Frontal",
                "",
            ),
        ]
        .join("\n");
        std::fs::write(dir.path().join("train.csv"), text).unwrap();
        let ds = open(dir.path(), "train", "").unwrap();
        assert_eq!(ds.len(), 3);
        assert_eq!(ds.paths[0], "train/patient00001/study1/view1_frontal.jpg");
        assert!(ds.get(0).is_ok());
        let e = ds.get(2).unwrap_err().to_string();
        assert!(
            e.contains("patient00009") && e.contains("train.csv row 5") && e.contains("not found"),
            "{e}"
        );
        let e = open(dir.path(), "train", r#", "chexpert_label": "Pneumonia""#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 4, column Pneumonia: `2.0`"), "{e}");
        // A truncated JPEG: reported at get, naming the file.
        let victim = dir
            .path()
            .join("train/patient00002/study1/view1_frontal.jpg");
        let bytes = std::fs::read(&victim).unwrap();
        std::fs::write(&victim, &bytes[..bytes.len() / 2]).unwrap();
        let e = ds.get(1).unwrap_err().to_string();
        assert!(e.contains(&victim.display().to_string()), "{e}");
        std::fs::write(dir.path().join("train.csv"), "Path,Sex\nx.jpg,Male\n").unwrap();
        let e = open(dir.path(), "train", "").unwrap_err().to_string();
        assert!(e.contains("no column `Frontal/Lateral`"), "{e}");
    }

    /// Indexing a train.csv the size of the real one (223k rows, ~191k frontal): prints the
    /// time; the bound is loose (tests are not benchmarks), the target is < 2 s.
    #[test]
    fn indexes_228k_rows_quickly() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::with_capacity(40 << 20);
        text.push_str(CHEXPERT_HEADER);
        text.push('\n');
        let rows = 228_000;
        for i in 0..rows {
            let (view, ap) = if i % 6 == 5 {
                ("Lateral", "")
            } else {
                ("Frontal", "AP")
            };
            let pneumonia = ["1.0", "0.0", "-1.0", ""][i % 4];
            text.push_str(&format!(
                "CheXpert-v1.0-small/train/patient{:05}/study{}/view1_frontal.jpg,Female,68,{view},{ap},,,1.0,,,0.0,,{pneumonia},-1.0,0.0,,,,1.0\n",
                i / 3 + 1,
                i % 3 + 1
            ));
        }
        std::fs::write(dir.path().join("train.csv"), text).unwrap();
        let start = std::time::Instant::now();
        let ds = open(dir.path(), "train", r#", "chexpert_label": "Pneumonia""#).unwrap();
        let elapsed = start.elapsed();
        eprintln!(
            "CheXpert: indexed {rows} rows ({} frontal) in {elapsed:?}",
            ds.len()
        );
        assert_eq!(ds.len(), rows - rows / 6);
        assert!(elapsed.as_secs_f64() < 10.0, "indexing took {elapsed:?}");
    }
}
