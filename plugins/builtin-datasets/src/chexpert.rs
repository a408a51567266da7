//! `CheXpert`: the Stanford CheXpert chest X-rays (v1.0, "small" or full; Irvin et al.,
//! "CheXpert: A Large Chest Radiograph Dataset with Uncertainty Labels and Expert
//! Comparison", AAAI 2019).
//!
//! Layout, as the original: `root/train.csv` (split `train`) and `root/valid.csv` (split
//! `test`), the CSVs of the download (root is the `CheXpert-v1.0-small/` folder); columns
//! `Path` and `Frontal/Lateral`, then the observations. Only `Frontal` rows are kept. A leading
//! `CheXpert-v1.0-small/` or `CheXpert-v1.0/` is stripped from `Path` (the original cuts 20
//! characters whatever they are) and the JPEG is read at `root/<stripped path>`; the id of a
//! sample is the stripped path, its group ([`Dataset::groups`]) the patient folder of the path
//! (`patient00001`), so the host's train/validation split is by patient. Images are decoded in
//! `get` (8-bit grey); an absent image is reported there, naming the CSV row (228k files are
//! not checked at open).
//!
//! An observation cell is `1.0` (positive), `0.0` (negative), empty (not mentioned in the
//! report: negative) or `-1.0` (uncertain), which an uncertainty policy resolves: `ones` (U-Ones:
//! positive), `zeros` (U-Zeros: negative) or `ignore` (U-Ignore).
//!
//! Multi-label (the default): the findings (parameter `chexpert_findings`, a list or a
//! comma-separated text of observation columns; default the five of the CheXpert competition,
//! [`COMPETITION_FINDINGS`]) are [`Dataset::findings`]; `ignore` makes an uncertain value
//! unknown (-1), the row is kept. The policy of each finding is, by default, the one the
//! CheXpert paper found best for it and that MGCA and later work evaluate with: U-Ones for
//! Atelectasis, Edema and Pleural Effusion, U-Zeros for Cardiomegaly, Consolidation and any
//! other finding. `uncertainty_policy` sets one policy for all findings; `uncertainty_policies`
//! overrides single findings (a table `{"Edema": "ignore"}` or the text `Edema=ignore,...`).
//!
//! Single-label: the parameter `chexpert_label` names one observation column (e.g.
//! `Pneumonia`); the dataset has 2 classes, and `uncertainty_policy` is `ones` (the default),
//! `zeros` or `ignore` (the row is dropped).

use crate::csv_table::{check_params, root_param, split_param, Column, CsvTable, Row};
use crate::image_file::{decode_gray8, ImageLimits, MAX_IMAGE_PIXELS};
use crate::split::Split;
use ssl_plugin_api::{bail, Dataset, Findings, Params, Plugin, PluginError, Result, Sample};
use std::path::PathBuf;

const NAME: &str = "CheXpert";

/// The prefixes stripped from `Path`, first match wins.
const PREFIXES: [&str; 2] = ["CheXpert-v1.0-small/", "CheXpert-v1.0/"];

/// The columns of the CSVs that are not observations.
const METADATA_COLUMNS: [&str; 5] = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"];

/// The five findings of the CheXpert competition: the default findings.
pub const COMPETITION_FINDINGS: [&str; 5] = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Pleural Effusion",
];

/// The findings whose uncertain labels are positive by default (U-Ones); any other finding's are
/// negative (U-Zeros).
const U_ONES_BY_DEFAULT: [&str; 3] = ["Atelectasis", "Edema", "Pleural Effusion"];

/// Parameter: the observation column of the single-label mode.
const LABEL: &str = "chexpert_label";
/// Parameter: the findings of the multi-label mode.
const FINDINGS: &str = "chexpert_findings";
/// Parameter: the uncertainty policy (single-label, or every finding of the multi-label mode).
const POLICY: &str = "uncertainty_policy";
/// Parameter: per-finding policies of the multi-label mode.
const POLICIES: &str = "uncertainty_policies";

/// What an uncertain (`-1.0`) label becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UncertaintyPolicy {
    /// Positive (U-Ones).
    Ones,
    /// Negative (U-Zeros).
    Zeros,
    /// Unknown in the multi-label mode; the row is dropped in the single-label mode (U-Ignore).
    Ignore,
}

impl UncertaintyPolicy {
    /// Parses `ones`, `zeros` or `ignore`; `what` names the parameter in the error.
    fn parse(value: &str, what: &str) -> Result<Self> {
        match value.trim() {
            "ones" => Ok(Self::Ones),
            "zeros" => Ok(Self::Zeros),
            "ignore" => Ok(Self::Ignore),
            other => {
                bail!("{NAME}: {what} = {other:?}: expected \"ones\", \"zeros\" or \"ignore\"")
            }
        }
    }

    /// The default policy of a finding in the multi-label mode.
    fn default_for(finding: &str) -> Self {
        if U_ONES_BY_DEFAULT.contains(&finding) {
            Self::Ones
        } else {
            Self::Zeros
        }
    }

    /// The value of an uncertain finding in the multi-label mode.
    fn finding_value(self) -> i8 {
        match self {
            Self::Ones => 1,
            Self::Zeros => 0,
            Self::Ignore => -1,
        }
    }
}

/// What the labels of the dataset are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Labels {
    /// One observation column as a 2-class label (`chexpert_label`).
    Single {
        /// The column.
        column: String,
        /// What its uncertain cells become.
        policy: UncertaintyPolicy,
    },
    /// Findings (`chexpert_findings`), each observation column with its policy, in order.
    Multi(Vec<(String, UncertaintyPolicy)>),
}

impl Labels {
    /// From the parameters `chexpert_label`, `chexpert_findings`, `uncertainty_policy` and
    /// `uncertainty_policies`.
    pub fn from_params(params: &Params) -> Result<Self> {
        let policy = params
            .get::<String>(POLICY)?
            .map(|p| UncertaintyPolicy::parse(&p, &format!("parameter `{POLICY}`")))
            .transpose()?;
        if let Some(column) = params.get::<String>(LABEL)? {
            for multi in [FINDINGS, POLICIES] {
                if params.get::<serde_json::Value>(multi)?.is_some() {
                    bail!(
                        "{NAME}: parameter `{multi}` is for the multi-label mode, and \
                         `{LABEL}` = {column:?} chooses the single-label mode: give one or the \
                         other"
                    );
                }
            }
            return Ok(Labels::Single {
                column,
                policy: policy.unwrap_or(UncertaintyPolicy::Ones),
            });
        }
        let names = match params.get::<serde_json::Value>(FINDINGS)? {
            None => COMPETITION_FINDINGS.map(String::from).to_vec(),
            Some(value) => finding_names(&value)?,
        };
        let mut findings: Vec<(String, UncertaintyPolicy)> = names
            .into_iter()
            .map(|name| {
                let p = policy.unwrap_or_else(|| UncertaintyPolicy::default_for(&name));
                (name, p)
            })
            .collect();
        if let Some(value) = params.get::<serde_json::Value>(POLICIES)? {
            for (name, p) in finding_policies(&value)? {
                match findings.iter_mut().find(|(f, _)| *f == name) {
                    Some(slot) => slot.1 = p,
                    None => bail!(
                        "{NAME}: parameter `{POLICIES}` names `{name}`, which is not one of the \
                         findings ({}; parameter `{FINDINGS}`)",
                        findings
                            .iter()
                            .map(|(f, _)| f.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }
            }
        }
        Ok(Labels::Multi(findings))
    }
}

/// The finding names of `chexpert_findings`: a list of names, or one text of comma-separated
/// names; none empty or repeated.
fn finding_names(value: &serde_json::Value) -> Result<Vec<String>> {
    let bad = || {
        PluginError::msg(format!(
            "{NAME}: parameter `{FINDINGS}` = {value}: expected a list of observation columns \
             ([\"Edema\", \"Atelectasis\"]) or a comma-separated text (\"Edema,Atelectasis\")"
        ))
    };
    let names: Vec<String> = match value {
        serde_json::Value::String(text) => text.split(',').map(|n| n.trim().to_string()).collect(),
        serde_json::Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().map(|n| n.trim().to_string()).ok_or_else(bad))
            .collect::<Result<_>>()?,
        _ => return Err(bad()),
    };
    for (i, name) in names.iter().enumerate() {
        if name.is_empty() {
            bail!(
                "{NAME}: parameter `{FINDINGS}` = {value}: finding {} is empty",
                i + 1
            );
        }
        if names[..i].contains(name) {
            bail!("{NAME}: parameter `{FINDINGS}` names `{name}` twice");
        }
    }
    Ok(names)
}

/// The per-finding policies of `uncertainty_policies`: a table `{"Edema": "ignore"}` or a text
/// `Edema=ignore,Atelectasis=zeros`.
fn finding_policies(value: &serde_json::Value) -> Result<Vec<(String, UncertaintyPolicy)>> {
    let policy = |name: &str, text: &str| {
        UncertaintyPolicy::parse(text, &format!("parameter `{POLICIES}`: `{name}`"))
            .map(|p| (name.to_string(), p))
    };
    match value {
        serde_json::Value::Object(table) => table
            .iter()
            .map(|(name, p)| match p.as_str() {
                Some(text) => policy(name.trim(), text),
                None => bail!(
                    "{NAME}: parameter `{POLICIES}`: `{name}` = {p}: expected \"ones\", \
                     \"zeros\" or \"ignore\""
                ),
            })
            .collect(),
        serde_json::Value::String(text) => text
            .split(',')
            .filter(|pair| !pair.trim().is_empty())
            .map(|pair| match pair.split_once('=') {
                Some((name, p)) => policy(name.trim(), p),
                None => bail!(
                    "{NAME}: parameter `{POLICIES}`: `{}` is not FINDING=POLICY (e.g. \
                     \"Edema=ignore,Atelectasis=zeros\")",
                    pair.trim()
                ),
            })
            .collect(),
        other => bail!(
            "{NAME}: parameter `{POLICIES}` = {other}: expected a table {{\"Edema\": \"ignore\"}} \
             or a text \"Edema=ignore,Atelectasis=zeros\""
        ),
    }
}

/// A label cell, before the uncertainty policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cell {
    Positive,
    Negative,
    Uncertain,
}

/// Reads the cell of `column` in `row`: `1.0`, `0.0`, empty (negative) or `-1.0`.
fn read_cell(row: &Row, column: &Column) -> Result<Cell> {
    let cell = row.get(column)?;
    if cell.is_empty() {
        return Ok(Cell::Negative);
    }
    match cell.parse::<f64>() {
        Ok(1.0) => Ok(Cell::Positive),
        Ok(0.0) => Ok(Cell::Negative),
        Ok(-1.0) => Ok(Cell::Uncertain),
        _ => Err(row.error(
            column,
            format!("`{cell}`: expected 1.0, 0.0, -1.0 or an empty cell"),
        )),
    }
}

/// The labels read from the CSV.
#[derive(Debug)]
enum Read {
    /// One label per image (single-label mode).
    Single(Vec<i64>),
    /// The findings of every image (multi-label mode).
    Multi(Findings),
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
    /// The patient folder of each image (`patient00001`).
    patients: Vec<String>,
    labels: Read,
    /// What one image file may claim (`max_image_pixels`).
    limits: ImageLimits,
}

impl CheXpert {
    /// Opens the dataset from its parameters (`root`, `split`, `chexpert_label`,
    /// `chexpert_findings`, `uncertainty_policy`, `uncertainty_policies`, `max_image_pixels`).
    pub fn from_params(params: &Params) -> Result<Self> {
        check_params(
            params,
            NAME,
            &[LABEL, FINDINGS, POLICY, POLICIES, MAX_IMAGE_PIXELS],
        )?;
        let limits = ImageLimits::from_params(params, NAME)?;
        let root = root_param(params, NAME)?;
        let split = split_param(params)?;
        let labels = Labels::from_params(params)?;
        let mut dataset = Self::open(root, split, &labels)?;
        dataset.limits = limits;
        Ok(dataset)
    }

    /// Indexes `root/train.csv` (or `valid.csv` for [`Split::Test`]) with `labels`.
    pub fn open(root: PathBuf, split: Split, labels: &Labels) -> Result<Self> {
        let file = match split {
            Split::Train => "train.csv",
            Split::Test => "valid.csv",
        };
        let csv_path = root.join(file);
        let table = CsvTable::open(
            &csv_path,
            "CheXpert expects the CSVs of the CheXpert-v1.0(-small) download (train.csv for \
             split train, valid.csv for split test; columns Path, Frontal/Lateral and the \
             observations) in the dataset folder",
        )?;
        let path_col = table.column("Path")?;
        let view_col = table.column("Frontal/Lateral")?;
        let (single, multi) = match labels {
            Labels::Single { column, policy } => (Some((table.column(column)?, *policy)), vec![]),
            Labels::Multi(findings) => (None, finding_columns(&table, &csv_path, findings)?),
        };
        let mut paths = Vec::new();
        let mut rows = Vec::new();
        let mut patients = Vec::new();
        let mut single_labels = Vec::new();
        let mut values = Vec::new();
        table.for_each_row(|row| {
            if row.get(&view_col)? != "Frontal" {
                return Ok(());
            }
            if let Some((col, policy)) = &single {
                let label = match (read_cell(row, col)?, policy) {
                    (Cell::Positive, _) | (Cell::Uncertain, UncertaintyPolicy::Ones) => 1,
                    (Cell::Negative, _) | (Cell::Uncertain, UncertaintyPolicy::Zeros) => 0,
                    (Cell::Uncertain, UncertaintyPolicy::Ignore) => return Ok(()),
                };
                single_labels.push(label);
            }
            for (col, policy) in &multi {
                values.push(match read_cell(row, col)? {
                    Cell::Positive => 1,
                    Cell::Negative => 0,
                    Cell::Uncertain => policy.finding_value(),
                });
            }
            let path = row.get(&path_col)?;
            let stripped = PREFIXES
                .iter()
                .find_map(|p| path.strip_prefix(p))
                .unwrap_or(path);
            if stripped.is_empty() {
                return Err(row.error(&path_col, "empty image path"));
            }
            let Some(patient) = stripped.split('/').find(|c| c.starts_with("patient")) else {
                return Err(row.error(
                    &path_col,
                    format!(
                        "`{path}` has no patient folder; expected a path like \
                         CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"
                    ),
                ));
            };
            patients.push(patient.to_string());
            paths.push(stripped.to_string());
            rows.push(row.number());
            Ok(())
        })?;
        let labels = match labels {
            Labels::Single { .. } => Read::Single(single_labels),
            Labels::Multi(findings) => Read::Multi(Findings::new(
                findings.iter().map(|(name, _)| name.clone()).collect(),
                values,
            )?),
        };
        Ok(CheXpert {
            root,
            csv_path,
            paths,
            rows,
            patients,
            labels,
            limits: ImageLimits::default(),
        })
    }
}

/// The column of each finding, with its policy; a finding that is not an observation column of
/// `table` is an error listing them.
fn finding_columns(
    table: &CsvTable,
    csv_path: &std::path::Path,
    findings: &[(String, UncertaintyPolicy)],
) -> Result<Vec<(Column, UncertaintyPolicy)>> {
    let observations: Vec<&str> = table
        .headers()
        .iter()
        .map(String::as_str)
        .filter(|h| !h.is_empty() && !METADATA_COLUMNS.contains(h))
        .collect();
    findings
        .iter()
        .map(|(name, policy)| {
            if !observations.contains(&name.as_str()) {
                bail!(
                    "{}: no observation column `{name}` (parameter `{FINDINGS}`); the \
                     observation columns are: {}",
                    csv_path.display(),
                    observations
                        .iter()
                        .map(|o| format!("`{o}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            Ok((table.column(name)?, *policy))
        })
        .collect()
}

impl Dataset for CheXpert {
    fn len(&self) -> usize {
        self.paths.len()
    }

    fn num_classes(&self) -> Option<usize> {
        match self.labels {
            Read::Single(_) => Some(2),
            Read::Multi(_) => None,
        }
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
        let label = match &self.labels {
            Read::Single(labels) => Some(labels[index]),
            Read::Multi(_) => None,
        };
        Ok(Sample::new(image, label, relative.clone()))
    }

    fn ids(&self) -> Result<Option<Vec<String>>> {
        Ok(Some(self.paths.clone()))
    }

    fn targets(&self) -> Result<Vec<Option<i64>>> {
        Ok(match &self.labels {
            Read::Single(labels) => labels.iter().map(|&l| Some(l)).collect(),
            Read::Multi(_) => vec![None; self.paths.len()],
        })
    }

    /// The patients: the host splits train/validation by patient.
    fn groups(&self) -> Result<Option<Vec<String>>> {
        Ok(Some(self.patients.clone()))
    }

    fn findings(&self) -> Result<Option<Findings>> {
        Ok(match &self.labels {
            Read::Single(_) => None,
            Read::Multi(findings) => Some(findings.clone()),
        })
    }
}

/// Adds this file's datasets to the plugin.
pub(crate) fn register(plugin: Plugin) -> Plugin {
    plugin
        .dataset(
            NAME,
            "CheXpert v1.0 (small or full), frontal views only, grouped by patient: \
             root/train.csv (split train) or root/valid.csv (split test), JPEGs at \
             root/<Path without CheXpert-v1.0(-small)/>, 8-bit grey; cells 1.0 → 1, 0.0 or \
             empty → 0, -1.0 (uncertain) → a policy: ones | zeros | ignore. Multi-label by \
             default: chexpert_findings (list or \"A,B\"; default Atelectasis, Cardiomegaly, \
             Consolidation, Edema, Pleural Effusion), uncertain → ones for Atelectasis, Edema, \
             Pleural Effusion and zeros for the others, or uncertainty_policy for all, \
             overridden per finding by uncertainty_policies ({\"Edema\": \"ignore\"} or \
             \"Edema=ignore,...\"); ignore → -1 (unknown). Single-label when chexpert_label = \
             a column (e.g. \"Pneumonia\"): 2 classes, uncertainty_policy = ones (default) | \
             zeros | ignore (row dropped); max_image_pixels (67108864): larger images are refused",
            CheXpert::from_params,
        )
        .dataset_info(crate::chest_xray_info())
}

#[cfg(all(test, feature = "testdata"))]
mod tests {
    use super::*;
    use crate::testdata::cxr::{
        write_chexpert, write_chexpert_rows, CheXpertImage, CHEXPERT_HEADER,
    };
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
        // Multi-label by default: the competition findings. write_chexpert's cells are
        // Atelectasis -1.0 (U-Ones: 1), Cardiomegaly 1.0, Consolidation empty, Edema 0.0,
        // Pleural Effusion empty.
        let findings = ds.findings().unwrap().unwrap();
        assert_eq!(findings.names(), COMPETITION_FINDINGS.map(String::from));
        assert_eq!(findings.values(), [1, 1, 0, 0, 0].repeat(6));
        let groups = ds.groups().unwrap().unwrap();
        assert_eq!(
            (groups[0].as_str(), groups[5].as_str()),
            ("patient00001", "patient00006")
        );
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
        assert_eq!(ds.findings().unwrap(), None);
        assert_eq!(ds.groups().unwrap().unwrap()[2], "patient00004");
        // The multi-label parameters do not mix with chexpert_label.
        for extra in [
            r#", "chexpert_label": "Edema", "chexpert_findings": "Edema""#,
            r#", "chexpert_label": "Edema", "uncertainty_policies": "Edema=ones""#,
        ] {
            let e = open(dir.path(), "train", extra).unwrap_err().to_string();
            assert!(
                e.contains("is for the multi-label mode") && e.contains("give one or the other"),
                "{e}"
            );
        }
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
        let start = std::time::Instant::now();
        let ds = open(dir.path(), "train", "").unwrap();
        let elapsed = start.elapsed();
        eprintln!("CheXpert: indexed {rows} rows with 5 findings in {elapsed:?}");
        assert_eq!(ds.findings().unwrap().unwrap().len(), rows - rows / 6);
        assert!(elapsed.as_secs_f64() < 10.0, "indexing took {elapsed:?}");
    }

    /// Five frontal images of three patients, with every kind of cell in the competition
    /// findings and in Pneumonia.
    fn write_policy_rows(root: &Path) {
        let all = |v: &'static str| -> Vec<(&'static str, &'static str)> {
            COMPETITION_FINDINGS.iter().map(|&f| (f, v)).collect()
        };
        let mut uncertain = all("-1.0");
        uncertain.push(("Pneumonia", "-1.0"));
        let mut positive = all("1.0");
        positive.push(("Pneumonia", "1.0"));
        let mixed = [
            ("Atelectasis", "1.0"),
            ("Cardiomegaly", "-1.0"),
            ("Consolidation", ""),
            ("Edema", "0.0"),
            ("Pleural Effusion", "-1.0"),
            ("Pneumonia", "0"),
        ];
        let train = [
            CheXpertImage::new(1, &uncertain),
            CheXpertImage::new(1, &positive),
            CheXpertImage::new(2, &all("0.0")),
            CheXpertImage::new(3, &[]),
            CheXpertImage::new(3, &mixed),
        ];
        write_chexpert_rows(root, &train, &[CheXpertImage::new(9, &mixed)], 8).unwrap();
    }

    /// The findings of the train split opened with `extra`, as rows.
    fn finding_rows(root: &Path, extra: &str) -> (Vec<String>, Vec<Vec<i8>>) {
        let ds = open(root, "train", extra).unwrap();
        assert_eq!(ds.len(), 5, "{extra}: uncertain rows are kept");
        assert_eq!(
            (ds.num_classes(), ds.targets().unwrap()),
            (None, vec![None; 5])
        );
        let findings = ds.findings().unwrap().unwrap();
        let rows = (0..findings.len())
            .map(|i| findings.of(i).to_vec())
            .collect();
        (findings.names().to_vec(), rows)
    }

    /// Hand-written rows and the exact 1/0/-1 matrix of every policy.
    #[test]
    fn multi_label_findings_follow_each_policy() {
        let dir = tempfile::tempdir().unwrap();
        write_policy_rows(dir.path());
        let rows = |extra: &str| finding_rows(dir.path(), extra).1;
        // Columns: Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion.
        // Rows: all uncertain, all 1.0, all 0.0, all empty, mixed (1.0, -1.0, "", 0.0, -1.0).
        let (names, default) = finding_rows(dir.path(), "");
        assert_eq!(names, COMPETITION_FINDINGS.map(String::from));
        #[rustfmt::skip]
        assert_eq!(default, [
            [1, 0, 0, 1, 1],
            [1, 1, 1, 1, 1],
            [0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],
            [1, 0, 0, 0, 1],
        ]);
        #[rustfmt::skip]
        assert_eq!(rows(r#", "uncertainty_policy": "ones""#), [
            [1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1],
            [0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],
            [1, 1, 0, 0, 1],
        ]);
        #[rustfmt::skip]
        assert_eq!(rows(r#", "uncertainty_policy": "zeros""#), [
            [0, 0, 0, 0, 0],
            [1, 1, 1, 1, 1],
            [0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],
            [1, 0, 0, 0, 0],
        ]);
        #[rustfmt::skip]
        assert_eq!(rows(r#", "uncertainty_policy": "ignore""#), [
            [-1, -1, -1, -1, -1],
            [ 1,  1,  1,  1,  1],
            [ 0,  0,  0,  0,  0],
            [ 0,  0,  0,  0,  0],
            [ 1, -1,  0,  0, -1],
        ]);
        // Per-finding overrides over the defaults, as a table or as text.
        #[rustfmt::skip]
        let overridden = [
            [1, 1, 0, -1, 1],
            [1, 1, 1,  1, 1],
            [0, 0, 0,  0, 0],
            [0, 0, 0,  0, 0],
            [1, 1, 0,  0, 1],
        ];
        assert_eq!(
            rows(r#", "uncertainty_policies": {"Edema": "ignore", "Cardiomegaly": "ones"}"#),
            overridden
        );
        assert_eq!(
            rows(r#", "uncertainty_policies": " Edema = ignore,Cardiomegaly=ones,""#),
            overridden
        );
        // ... and over a global policy.
        #[rustfmt::skip]
        assert_eq!(
            rows(r#", "uncertainty_policy": "zeros", "uncertainty_policies": "Pleural Effusion=ignore""#),
            [
                [0, 0, 0, 0, -1],
                [1, 1, 1, 1,  1],
                [0, 0, 0, 0,  0],
                [0, 0, 0, 0,  0],
                [1, 0, 0, 0, -1],
            ]
        );
        // Other findings, in the order given (Pneumonia: U-Zeros by default).
        for extra in [
            r#", "chexpert_findings": "Pneumonia, Edema""#,
            r#", "chexpert_findings": ["Pneumonia", "Edema"]"#,
        ] {
            let (names, values) = finding_rows(dir.path(), extra);
            assert_eq!(names, ["Pneumonia", "Edema"]);
            assert_eq!(values, [[0, 1], [1, 1], [0, 0], [0, 0], [0, 0]], "{extra}");
        }
        let (_, values) = finding_rows(
            dir.path(),
            r#", "chexpert_findings": "Pneumonia", "uncertainty_policies": "Pneumonia=ignore""#,
        );
        assert_eq!(values, [[-1], [1], [0], [0], [0]]);
        // Patients are the groups; valid.csv has its own.
        let ds = open(dir.path(), "train", "").unwrap();
        let groups = ds.groups().unwrap().unwrap();
        assert_eq!(
            groups,
            [
                "patient00001",
                "patient00001",
                "patient00002",
                "patient00003",
                "patient00003"
            ]
        );
        assert_eq!(
            ds.get(1).unwrap().id(),
            "train/patient00001/study2/view1_frontal.jpg"
        );
        assert_eq!(ds.get(1).unwrap().label(), None);
        let valid = open(dir.path(), "test", "").unwrap();
        assert_eq!(valid.findings().unwrap().unwrap().values(), [1, 0, 0, 0, 1]);
        assert_eq!(valid.groups().unwrap().unwrap(), ["patient00009"]);
    }

    #[test]
    fn bad_multi_label_parameters_and_cells_are_named() {
        let dir = tempfile::tempdir().unwrap();
        write_policy_rows(dir.path());
        let error = |extra: &str| open(dir.path(), "train", extra).unwrap_err().to_string();
        // A finding that is not an observation column: the observation columns are listed.
        for finding in ["Covid", "Path", "Frontal/Lateral"] {
            let e = error(&format!(r#", "chexpert_findings": "Edema,{finding}""#));
            assert!(
                e.contains(&format!("train.csv: no observation column `{finding}`"))
                    && e.contains("`No Finding`, `Enlarged Cardiomediastinum`")
                    && e.contains("`Support Devices`")
                    && !e.contains("`Sex`")
                    && !e.contains("`AP/PA`")
                    && !e.contains("`Frontal/Lateral`,"),
                "{e}"
            );
        }
        let e = error(r#", "chexpert_findings": "Edema,,Atelectasis""#);
        assert!(e.contains("finding 2 is empty"), "{e}");
        let e = error(r#", "chexpert_findings": ["Edema", "Edema"]"#);
        assert!(e.contains("names `Edema` twice"), "{e}");
        let e = error(r#", "chexpert_findings": 3"#);
        assert!(
            e.contains("`chexpert_findings` = 3: expected a list"),
            "{e}"
        );
        let e = error(r#", "uncertainty_policies": "Pneumonia=ignore""#);
        assert!(
            e.contains("`uncertainty_policies` names `Pneumonia`, which is not one of the findings (Atelectasis, Cardiomegaly"),
            "{e}"
        );
        let e = error(r#", "uncertainty_policies": {"Edema": "maybe"}"#);
        assert!(
            e.contains("`uncertainty_policies`: `Edema` = \"maybe\": expected \"ones\""),
            "{e}"
        );
        let e = error(r#", "uncertainty_policies": {"Edema": 1}"#);
        assert!(e.contains("`Edema` = 1: expected"), "{e}");
        let e = error(r#", "uncertainty_policies": "Edema:ignore""#);
        assert!(e.contains("`Edema:ignore` is not FINDING=POLICY"), "{e}");
        let e = error(r#", "uncertainty_policies": ["Edema"]"#);
        assert!(e.contains("expected a table"), "{e}");
        let e = error(r#", "uncertainty_policy": "maybe""#);
        assert!(e.contains("`uncertainty_policy` = \"maybe\""), "{e}");
        // A bad cell in a finding column: file, row and column.
        let bad = [
            CheXpertImage::new(1, &[]),
            CheXpertImage::new(2, &[("Edema", "yes")]),
        ];
        write_chexpert_rows(dir.path(), &bad, &[], 8).unwrap();
        let e = error("");
        assert!(
            e.contains("train.csv: row 3, column Edema: `yes`: expected 1.0"),
            "{e}"
        );
        // A path without a patient folder.
        let text = format!(
            "{CHEXPERT_HEADER}\nCheXpert-v1.0-small/train/x/study1/view1_frontal.jpg,Male,60,Frontal,AP{}\n",
            ",".repeat(14)
        );
        std::fs::write(dir.path().join("train.csv"), text).unwrap();
        let e = error("");
        assert!(
            e.contains("row 2, column Path") && e.contains("has no patient folder"),
            "{e}"
        );
    }
}
