//! `NIHCXR`: the NIH ChestX-ray14 dataset (Wang et al., "ChestX-ray8: Hospital-scale Chest
//! X-ray Database and Benchmarks on Weakly-Supervised Classification and Localization of
//! Common Thorax Diseases", CVPR 2017), multi-label over its 14 findings.
//!
//! Layout: `root/Data_Entry_2017.csv` (columns `Image Index`, the file name of each image;
//! `Finding Labels`; `Patient ID`). An image is found flat in `root`, or in the folders of the
//! Kaggle download as it unpacks (`root/images_001/images/` … `root/images_012/images/`), or in
//! `root/images/` (NIH's own tarballs); the folders are listed once at open, so an image of the
//! split found nowhere is an error at open naming it and where it was looked for. The id of a
//! sample is its file name; images are decoded in `get` (8-bit grey).
//!
//! Findings ([`Dataset::findings`]): `Finding Labels` is `No Finding` (all 14 absent) or
//! finding names joined by `|` (spaces around a name are allowed), each one of [`FINDINGS`];
//! any other name is an error naming the file, the row and the value. NIH's labels are mined
//! from reports and carry no "uncertain": every value is 1 or 0. No single label: `num_classes`
//! is `None`. Groups ([`Dataset::groups`]) are the `Patient ID`s, so the host's train/validation
//! split is by patient.
//!
//! Splits (parameter `official_split`): NIH's official, patient-disjoint split is two lists of
//! file names, `root/train_val_list.txt` and `root/test_list.txt`. When they are used, split
//! `train` is the images of the first and `test` those of the second, in table order; an image
//! in neither list is in neither split. A list naming an image that is not in the table, an
//! image in both lists, or a patient with images in both, is an error naming the list file and
//! line. Without the lists, split `train` is every row and `test` is empty (the original's
//! default `use_full_dataset_for_train_and_val=True`). `official_split` = `auto` (the default:
//! the lists when both are there), `yes` (they must be: an error naming the missing one) or `no`
//! (ignored); `true` and `false` stand for `yes` and `no`.

use crate::csv_table::{check_params, root_param, split_param, CsvTable};
use crate::image_file::{decode_gray8, list_file_names, ImageLimits, MAX_IMAGE_PIXELS};
use crate::split::Split;
use ssl_plugin_api::{bail, Dataset, Findings, Params, Plugin, PluginError, Result, Sample};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

const NAME: &str = "NIHCXR";

/// The table of the dataset, in its folder.
const TABLE: &str = "Data_Entry_2017.csv";

/// NIH's 14 findings, in the order of the paper and of the [`Findings`] columns.
pub const FINDINGS: [&str; 14] = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
];

/// The `Finding Labels` cell of an image without any finding.
const NO_FINDING: &str = "No Finding";

/// The official training/validation list's file name, in the dataset folder.
pub const TRAIN_VAL_LIST: &str = "train_val_list.txt";
/// The official test list's file name, in the dataset folder.
pub const TEST_LIST: &str = "test_list.txt";

/// The parameter choosing the split ([`OfficialSplit`]).
const OFFICIAL_SPLIT: &str = "official_split";

/// Values of a finding (as [`Findings`] holds them).
const PRESENT: i8 = 1;
const ABSENT: i8 = 0;

/// Whether NIH's official split lists are used (parameter `official_split`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OfficialSplit {
    /// When both lists are in the folder (the default).
    Auto,
    /// Always: the lists must be there.
    Yes,
    /// Never: `train` is every row, `test` empty.
    No,
}

impl OfficialSplit {
    /// From the parameter: `"auto"`, `"yes"`, `"no"`, or `true` / `false`.
    fn from_params(params: &Params) -> Result<Self> {
        let value: Option<serde_json::Value> = params.get(OFFICIAL_SPLIT)?;
        Ok(match value {
            None => OfficialSplit::Auto,
            Some(serde_json::Value::Bool(true)) => OfficialSplit::Yes,
            Some(serde_json::Value::Bool(false)) => OfficialSplit::No,
            Some(serde_json::Value::String(s)) if s == "auto" => OfficialSplit::Auto,
            Some(serde_json::Value::String(s)) if s == "yes" => OfficialSplit::Yes,
            Some(serde_json::Value::String(s)) if s == "no" => OfficialSplit::No,
            Some(other) => bail!(
                "{NAME}: parameter `{OFFICIAL_SPLIT}` = {other}: expected \"auto\" (use \
                 {TRAIN_VAL_LIST} and {TEST_LIST} when present), \"yes\" or \"no\""
            ),
        })
    }

    /// The two list files to read (training/validation, test), or none.
    fn lists(self, root: &Path) -> Result<Option<[PathBuf; 2]>> {
        let lists = [root.join(TRAIN_VAL_LIST), root.join(TEST_LIST)];
        let present = lists.each_ref().map(|p| p.is_file());
        match (self, present) {
            (OfficialSplit::No, _) | (OfficialSplit::Auto, [false, false]) => Ok(None),
            (_, [true, true]) => Ok(Some(lists)),
            (_, present) => {
                let missing: Vec<String> = lists
                    .iter()
                    .zip(present)
                    .filter(|(_, here)| !here)
                    .map(|(p, _)| p.display().to_string())
                    .collect();
                bail!(
                    "{NAME}: NIH's official split needs {TRAIN_VAL_LIST} and {TEST_LIST} in the \
                     dataset folder; not found: {} (set `{OFFICIAL_SPLIT}` = \"no\" to train on \
                     every row instead)",
                    missing.join(", ")
                )
            }
        }
    }
}

/// One row of the table.
struct Entry {
    name: String,
    /// Its row in the table, for errors.
    row: u64,
    patient: String,
    findings: [i8; FINDINGS.len()],
}

/// The NIH chest X-ray dataset, indexed from `Data_Entry_2017.csv`.
#[derive(Debug)]
pub struct NihCxr {
    /// (file name, full path) of each image of the split, in table order.
    images: Vec<(String, PathBuf)>,
    /// The patient of each image.
    patients: Vec<String>,
    /// The findings of each image, row-major `[images × FINDINGS]`.
    findings: Vec<i8>,
    /// What one image file may claim (`max_image_pixels`).
    limits: ImageLimits,
}

impl NihCxr {
    /// Opens the dataset from its parameters (`root`, `split`, `official_split`,
    /// `max_image_pixels`).
    pub fn from_params(params: &Params) -> Result<Self> {
        check_params(params, NAME, &[OFFICIAL_SPLIT, MAX_IMAGE_PIXELS])?;
        let limits = ImageLimits::from_params(params, NAME)?;
        let root = root_param(params, NAME)?;
        let split = split_param(params)?;
        let official = OfficialSplit::from_params(params)?;
        let csv_path = root.join(TABLE);
        let entries = read_table(&csv_path)?;
        let entries = match official.lists(&root)? {
            Some(lists) => official_split(entries, &csv_path, &lists, split)?,
            None if split == Split::Test => Vec::new(),
            None => entries,
        };
        let images = locate(&root, &csv_path, &entries)?;
        Ok(NihCxr {
            images,
            patients: entries.iter().map(|e| e.patient.clone()).collect(),
            findings: entries.iter().flat_map(|e| e.findings).collect(),
            limits,
        })
    }
}

/// Reads every row of the table at `csv_path`: file name, patient, findings.
fn read_table(csv_path: &Path) -> Result<Vec<Entry>> {
    let table = CsvTable::open(
        csv_path,
        "NIHCXR expects NIH's `Data_Entry_2017.csv` (columns `Image Index`, `Finding Labels`, \
         `Patient ID`) in the dataset folder, with the images beside it or in the Kaggle \
         folders images_0XX/images/",
    )?;
    let index_col = table.column("Image Index")?;
    let findings_col = table.column("Finding Labels")?;
    let patient_col = table.column("Patient ID")?;
    let mut entries = Vec::new();
    table.for_each_row(|row| {
        let name = row.get(&index_col)?;
        if name.is_empty() {
            return Err(row.error(&index_col, "empty file name"));
        }
        let patient = row.get(&patient_col)?;
        if patient.is_empty() {
            return Err(row.error(&patient_col, "empty patient id"));
        }
        let findings = parse_findings(row.get(&findings_col)?)
            .map_err(|message| row.error(&findings_col, message))?;
        entries.push(Entry {
            name: name.to_string(),
            row: row.number(),
            patient: patient.to_string(),
            findings,
        });
        Ok(())
    })?;
    Ok(entries)
}

/// A `Finding Labels` cell as one value per finding of [`FINDINGS`]; the message of an error.
fn parse_findings(cell: &str) -> std::result::Result<[i8; FINDINGS.len()], String> {
    let mut values = [ABSENT; FINDINGS.len()];
    if cell == NO_FINDING {
        return Ok(values);
    }
    let expected = || {
        format!(
            "expected `{NO_FINDING}` or finding names joined by `|`, each one of {}",
            FINDINGS.join(", ")
        )
    };
    if cell.is_empty() {
        return Err(format!("empty cell; {}", expected()));
    }
    for part in cell.split('|') {
        let name = part.trim();
        match FINDINGS.iter().position(|f| *f == name) {
            Some(i) => values[i] = PRESENT,
            None if name == NO_FINDING => {
                return Err(format!("`{cell}`: `{NO_FINDING}` together with findings"))
            }
            None if name.is_empty() => {
                return Err(format!("`{cell}`: an empty finding name; {}", expected()))
            }
            None => {
                return Err(format!(
                    "`{cell}`: unknown finding `{name}`; {}",
                    expected()
                ))
            }
        }
    }
    Ok(values)
}

/// The file names of a list file, each with its line (blank lines skipped); every one must be
/// in `known` (the table's file names), else an error naming the list file and line.
fn read_list(path: &Path, known: &HashSet<&str>, csv_path: &Path) -> Result<Vec<(String, u64)>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| PluginError::msg(format!("{}: cannot read: {e}", path.display())))?;
    let mut names = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let name = line.trim();
        if name.is_empty() {
            continue;
        }
        if !known.contains(name) {
            bail!(
                "{}: line {}: image `{name}` is not in {}",
                path.display(),
                i + 1,
                csv_path.display()
            );
        }
        names.push((name.to_string(), i as u64 + 1));
    }
    Ok(names)
}

/// The entries of `split` under NIH's official split: those named in the training/validation
/// list (`lists[0]`) for `train`, in the test list (`lists[1]`) for `test`, in table order.
/// Checks that every listed image is in the table and that no image, nor any patient, is in
/// both lists.
fn official_split(
    entries: Vec<Entry>,
    csv_path: &Path,
    lists: &[PathBuf; 2],
    split: Split,
) -> Result<Vec<Entry>> {
    let known: HashSet<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let train_val = read_list(&lists[0], &known, csv_path)?;
    let test = read_list(&lists[1], &known, csv_path)?;
    let patient_of: HashMap<&str, &str> = entries
        .iter()
        .rev()
        .map(|e| (e.name.as_str(), e.patient.as_str()))
        .collect();
    let place = |list: &Path, line: u64| format!("{} line {line}", list.display());
    // Where each training/validation image and patient is first listed.
    let mut train_images: HashMap<&str, u64> = HashMap::new();
    let mut train_patients: HashMap<&str, (&str, u64)> = HashMap::new();
    for (name, line) in &train_val {
        train_images.entry(name).or_insert(*line);
        train_patients
            .entry(patient_of[name.as_str()])
            .or_insert((name, *line));
    }
    for (name, line) in &test {
        if let Some(&other) = train_images.get(name.as_str()) {
            bail!(
                "{NAME}: image `{name}` is in both lists ({} and {}); an image belongs to one",
                place(&lists[0], other),
                place(&lists[1], *line)
            );
        }
        let patient = patient_of[name.as_str()];
        if let Some(&(other, other_line)) = train_patients.get(patient) {
            bail!(
                "{NAME}: patient {patient} has images in both lists: `{other}` ({}) and \
                 `{name}` ({}); NIH's split is by patient, so all of a patient's images belong \
                 to one list",
                place(&lists[0], other_line),
                place(&lists[1], *line)
            );
        }
    }
    let chosen = match split {
        Split::Train => train_val,
        Split::Test => test,
    };
    let chosen: HashSet<String> = chosen.into_iter().map(|(name, _)| name).collect();
    Ok(entries
        .into_iter()
        .filter(|e| chosen.contains(&e.name))
        .collect())
}

/// The path of each entry's image; an image found nowhere is an error naming it, its row and
/// the folders looked in.
fn locate(root: &Path, csv_path: &Path, entries: &[Entry]) -> Result<Vec<(String, PathBuf)>> {
    let (locations, folders) = locate_images(root)?;
    entries
        .iter()
        .map(|entry| match locations.get(&entry.name) {
            Some(path) => Ok((entry.name.clone(), path.clone())),
            None => bail!(
                "{NAME}: image `{}` (listed in {} row {}) not found; looked in {}",
                entry.name,
                csv_path.display(),
                entry.row,
                folders
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
        .collect()
}

/// Maps every file name found flat in `root`, in `root/images/` and in
/// `root/images_*/images/` to its path (the first folder, in that order, wins); also returns
/// the folders looked in.
fn locate_images(root: &Path) -> Result<(HashMap<String, PathBuf>, Vec<PathBuf>)> {
    let mut folders = vec![root.to_path_buf()];
    let mut kaggle = Vec::new();
    let entries = std::fs::read_dir(root).map_err(|e| {
        PluginError::msg(format!("{}: cannot list the folder: {e}", root.display()))
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("images_") && entry.path().join("images").is_dir() {
            kaggle.push(entry.path().join("images"));
        }
    }
    kaggle.sort();
    if root.join("images").is_dir() {
        folders.push(root.join("images"));
    }
    folders.extend(kaggle);
    let mut map = HashMap::new();
    for folder in &folders {
        for name in list_file_names(folder)? {
            let path = folder.join(&name);
            map.entry(name).or_insert(path);
        }
    }
    Ok((map, folders))
}

impl Dataset for NihCxr {
    fn len(&self) -> usize {
        self.images.len()
    }

    fn num_classes(&self) -> Option<usize> {
        None
    }

    fn ids(&self) -> Result<Option<Vec<String>>> {
        Ok(Some(
            self.images.iter().map(|(name, _)| name.clone()).collect(),
        ))
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let Some((name, path)) = self.images.get(index) else {
            bail!("{NAME}: index {index} out of range ({} images)", self.len());
        };
        Ok(Sample::new(
            decode_gray8(path, self.limits)?,
            None,
            name.clone(),
        ))
    }

    fn targets(&self) -> Result<Vec<Option<i64>>> {
        Ok(vec![None; self.images.len()])
    }

    /// The patients: the host splits train/validation by patient.
    fn groups(&self) -> Result<Option<Vec<String>>> {
        Ok(Some(self.patients.clone()))
    }

    fn findings(&self) -> Result<Option<Findings>> {
        let names = FINDINGS.iter().map(|f| f.to_string()).collect();
        Findings::new(names, self.findings.clone()).map(Some)
    }
}

/// Adds this file's datasets to the plugin.
pub(crate) fn register(plugin: Plugin) -> Plugin {
    plugin
        .dataset(
            NAME,
            "NIH ChestX-ray14, multi-label over its 14 findings (Finding Labels, |-separated; No \
             Finding = all absent), grouped by Patient ID: root/Data_Entry_2017.csv, PNG images \
             flat in root, in images/ or in Kaggle's images_0XX/images/ folders, 8-bit grey; \
             official_split = auto (default: NIH's patient-disjoint split when \
             root/train_val_list.txt and root/test_list.txt are both there: train = the first \
             list, test = the second) | yes (the lists must be there) | no (train = all rows, \
             test = empty, as without the lists); max_image_pixels (67108864): larger images \
             are refused",
            NihCxr::from_params,
        )
        .dataset_info(crate::chest_xray_info())
}

#[cfg(all(test, feature = "testdata"))]
mod tests {
    use super::*;
    use crate::testdata::cxr::{gray_pattern, write_nih, write_nih_rows, NihRow, NIH_HEADER};
    use ssl_plugin_api::Pixels;

    fn open(root: &Path, extra: &str) -> Result<NihCxr> {
        open_split(root, "train", extra)
    }

    fn open_split(root: &Path, split: &str, extra: &str) -> Result<NihCxr> {
        let json = format!(
            r#"{{"root": {:?}, "split": "{split}"{extra}}}"#,
            root.display().to_string()
        );
        NihCxr::from_params(&Params::from_json(&json).unwrap())
    }

    /// The findings of `ds` as rows, and its ids.
    fn matrix(ds: &NihCxr) -> Vec<Vec<i8>> {
        let findings = ds.findings().unwrap().unwrap();
        assert_eq!(findings.names(), FINDINGS.map(String::from));
        (0..findings.len())
            .map(|i| findings.of(i).to_vec())
            .collect()
    }

    /// A row of 14 values with 1 at the positions of `present` (names of [`FINDINGS`]).
    fn row_of(present: &[&str]) -> Vec<i8> {
        FINDINGS
            .iter()
            .map(|f| i8::from(present.contains(f)))
            .collect()
    }

    fn ids(ds: &NihCxr) -> Vec<String> {
        ds.images.iter().map(|(name, _)| name.clone()).collect()
    }

    #[test]
    fn reads_kaggle_folders_and_flat_files() {
        let dir = tempfile::tempdir().unwrap();
        let names = write_nih(dir.path(), 5, 12).unwrap();
        // Move one image out of its Kaggle folder, flat into root.
        std::fs::rename(
            dir.path().join("images_002/images").join(&names[4]),
            dir.path().join(&names[4]),
        )
        .unwrap();
        let ds = open(dir.path(), "").unwrap();
        assert_eq!(ds.len(), 5);
        assert_eq!(ds.num_classes(), None);
        assert_eq!(ds.targets().unwrap(), vec![None; 5]);
        // write_nih's findings cycle No Finding, Cardiomegaly|Effusion, Pneumonia; patients
        // are i / 2 + 1.
        let cardio_effusion = row_of(&["Cardiomegaly", "Effusion"]);
        let expected = [
            row_of(&[]),
            cardio_effusion.clone(),
            row_of(&["Pneumonia"]),
            row_of(&[]),
            cardio_effusion,
        ];
        assert_eq!(matrix(&ds), expected);
        let groups = ds.groups().unwrap().unwrap();
        assert_eq!(groups, ["1", "1", "2", "2", "3"]);
        assert!(ds.images[0]
            .1
            .ends_with("images_001/images/00000001_000.png"));
        assert!(ds.images[3]
            .1
            .ends_with("images_002/images/00000002_001.png"));
        assert_eq!(ds.ids().unwrap().unwrap(), names);
        for (i, name) in names.iter().enumerate() {
            let sample = ds.get(i).unwrap();
            assert_eq!(sample.id(), name);
            assert_eq!(sample.label(), None);
            let image = sample.image();
            assert_eq!(
                (image.width(), image.height(), image.channels()),
                (12, 12, 1)
            );
            let Pixels::U8(px) = image.pixels() else {
                panic!("8-bit expected")
            };
            assert_eq!(px, gray_pattern(i as u64, 12, 12).as_slice());
        }
        assert!(ds.get(5).is_err());
        let test = NihCxr::from_params(
            &Params::from_json(&format!(r#"{{"root": {:?}, "split": "test"}}"#, dir.path()))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(test.len(), 0);
        assert_eq!(test.findings().unwrap().unwrap().len(), 0);
        assert_eq!(test.groups().unwrap(), Some(vec![]));
    }

    /// Hand-written `Finding Labels` cells and the exact 0/1 matrix they give.
    #[test]
    fn finding_labels_give_the_14_findings() {
        let dir = tempfile::tempdir().unwrap();
        let rows = [
            NihRow::new("No Finding", 7),
            NihRow::new("Cardiomegaly|Effusion", 7),
            // Spaces around names (as a spreadsheet edit leaves them), and a repeat.
            NihRow::new("Hernia | Pleural_Thickening |Hernia", 8),
            NihRow::new(
                "Atelectasis|Infiltration|Mass|Nodule|Pneumonia|Pneumothorax",
                9,
            ),
            NihRow::new("Consolidation|Edema|Emphysema|Fibrosis", 10),
        ];
        let names = write_nih_rows(dir.path(), &rows, 8, None).unwrap();
        assert_eq!(names[1], "00000007_001.png");
        let ds = open(dir.path(), "").unwrap();
        #[rustfmt::skip]
        let expected: Vec<Vec<i8>> = vec![
            //   Ate Car Eff Inf Mas Nod Pna Ptx Con Ede Emp Fib PlT Her
            vec![0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0],
            vec![0,  1,  1,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0],
            vec![0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  1,  1],
            vec![1,  0,  0,  1,  1,  1,  1,  1,  0,  0,  0,  0,  0,  0],
            vec![0,  0,  0,  0,  0,  0,  0,  0,  1,  1,  1,  1,  0,  0],
        ];
        assert_eq!(matrix(&ds), expected);
        assert_eq!(ds.groups().unwrap().unwrap(), ["7", "7", "8", "9", "10"]);
        assert_eq!((ds.num_classes(), ds.get(3).unwrap().label()), (None, None));
    }

    #[test]
    fn a_bad_finding_label_names_file_row_and_value() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("Data_Entry_2017.csv");
        for (cell, expected) in [
            ("Effusion|Pneumonitis", "unknown finding `Pneumonitis`"),
            ("effusion", "unknown finding `effusion`"),
            ("Pleural Thickening", "unknown finding `Pleural Thickening`"),
            ("No Finding|Mass", "`No Finding` together with findings"),
            ("Mass||Edema", "`Mass||Edema`: an empty finding name"),
            ("", "empty cell"),
        ] {
            let rows = [NihRow::new("Mass", 1), NihRow::new(cell, 2)];
            write_nih_rows(dir.path(), &rows, 4, None).unwrap();
            let e = open(dir.path(), "").unwrap_err().to_string();
            assert!(
                e.contains(&format!("{}: row 3, column Finding Labels", csv.display())),
                "{e}"
            );
            assert!(e.contains(expected), "{cell:?}: {e}");
            assert!(
                e.contains("`No Finding` or finding names joined by `|`")
                    || e.contains("together with"),
                "{e}"
            );
        }
        // An empty patient id.
        std::fs::write(
            &csv,
            format!("{NIH_HEADER}\n00000001_000.png,Mass,0,,50,M,PA,8,8,0.1,0.1\n"),
        )
        .unwrap();
        let e = open(dir.path(), "").unwrap_err().to_string();
        assert!(
            e.contains("row 2, column Patient ID: empty patient id"),
            "{e}"
        );
    }

    /// Ten images of five patients; patients 2 and 5 are NIH's test set.
    fn official_rows() -> Vec<NihRow> {
        [
            ("No Finding", 1),
            ("Mass", 2),
            ("Edema", 1),
            ("Hernia", 3),
            ("Effusion", 2),
            ("No Finding", 4),
            ("Nodule", 5),
            ("Fibrosis", 3),
            ("Emphysema", 5),
            ("Atelectasis", 4),
        ]
        .iter()
        .map(|&(f, p)| NihRow::new(f, p))
        .collect()
    }

    #[test]
    fn the_official_lists_split_train_and_test_by_patient() {
        let dir = tempfile::tempdir().unwrap();
        let names = write_nih_rows(dir.path(), &official_rows(), 8, Some(&[2, 5])).unwrap();
        let listed = |file: &str| std::fs::read_to_string(dir.path().join(file)).unwrap();
        assert_eq!(
            listed(TEST_LIST),
            "00000002_000.png\n00000002_001.png\n00000005_000.png\n00000005_001.png\n"
        );
        let pick = |indices: &[usize]| {
            indices
                .iter()
                .map(|&i| names[i].clone())
                .collect::<Vec<_>>()
        };
        for extra in [
            "",
            r#", "official_split": "auto""#,
            r#", "official_split": "yes""#,
            r#", "official_split": true"#,
        ] {
            let train = open_split(dir.path(), "train", extra).unwrap();
            let test = open_split(dir.path(), "test", extra).unwrap();
            assert_eq!(ids(&train), pick(&[0, 2, 3, 5, 7, 9]), "{extra}");
            assert_eq!(ids(&test), pick(&[1, 4, 6, 8]), "{extra}");
            let train_groups = train.groups().unwrap().unwrap();
            let test_groups = test.groups().unwrap().unwrap();
            assert_eq!(train_groups, ["1", "1", "3", "4", "3", "4"]);
            assert_eq!(test_groups, ["2", "2", "5", "5"]);
            assert!(train_groups.iter().all(|g| !test_groups.contains(g)));
            // Findings follow their images into each split.
            assert_eq!(
                matrix(&test),
                [
                    row_of(&["Mass"]),
                    row_of(&["Effusion"]),
                    row_of(&["Nodule"]),
                    row_of(&["Emphysema"])
                ]
            );
            assert_eq!(matrix(&train)[5], row_of(&["Atelectasis"]));
            assert_eq!(test.get(3).unwrap().id(), "00000005_001.png");
        }
        // Not used: train is every row, test empty.
        for extra in [
            r#", "official_split": "no""#,
            r#", "official_split": false"#,
        ] {
            assert_eq!(open_split(dir.path(), "train", extra).unwrap().len(), 10);
            assert_eq!(open_split(dir.path(), "test", extra).unwrap().len(), 0);
        }
        // An image of the other split may be missing.
        std::fs::remove_file(dir.path().join("images_001/images/00000002_000.png")).unwrap();
        assert_eq!(open_split(dir.path(), "train", "").unwrap().len(), 6);
        let e = open_split(dir.path(), "test", "").unwrap_err().to_string();
        assert!(
            e.contains("image `00000002_000.png`") && e.contains("row 3"),
            "{e}"
        );
    }

    #[test]
    fn without_the_lists_auto_trains_on_every_row_and_yes_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write_nih_rows(dir.path(), &official_rows(), 8, None).unwrap();
        assert_eq!(open_split(dir.path(), "train", "").unwrap().len(), 10);
        assert_eq!(open_split(dir.path(), "test", "").unwrap().len(), 0);
        let yes = r#", "official_split": "yes""#;
        let e = open_split(dir.path(), "train", yes)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&dir.path().join(TRAIN_VAL_LIST).display().to_string())
                && e.contains(&dir.path().join(TEST_LIST).display().to_string())
                && e.contains("not found"),
            "{e}"
        );
        // One list without the other is an error even for auto, naming the missing one.
        write_nih_rows(dir.path(), &official_rows(), 8, Some(&[2])).unwrap();
        std::fs::remove_file(dir.path().join(TEST_LIST)).unwrap();
        let e = open_split(dir.path(), "train", "").unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "not found: {}",
                dir.path().join(TEST_LIST).display()
            )),
            "{e}"
        );
        assert!(open_split(dir.path(), "train", r#", "official_split": "no""#).is_ok());
        let e = open_split(dir.path(), "train", r#", "official_split": "maybe""#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`official_split` = \"maybe\": expected \"auto\""),
            "{e}"
        );
    }

    #[test]
    fn a_list_naming_an_unknown_image_or_crossing_patients_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write_nih_rows(dir.path(), &official_rows(), 8, Some(&[2, 5])).unwrap();
        let test_list = dir.path().join(TEST_LIST);
        let train_list = dir.path().join(TRAIN_VAL_LIST);
        // Line 3 names an image that is not in the table (blank line 2 still counts).
        std::fs::write(&test_list, "00000002_000.png\n\n00000099_000.png\n").unwrap();
        for split in ["train", "test"] {
            let e = open_split(dir.path(), split, "").unwrap_err().to_string();
            assert!(
                e.contains(&format!(
                    "{}: line 3: image `00000099_000.png` is not in",
                    test_list.display()
                )) && e.contains("Data_Entry_2017.csv"),
                "{e}"
            );
        }
        // An image in both lists.
        std::fs::write(&test_list, "00000002_000.png\n00000001_001.png\n").unwrap();
        let e = open_split(dir.path(), "train", "").unwrap_err().to_string();
        assert!(
            e.contains("image `00000001_001.png` is in both lists")
                && e.contains(&format!("{} line 2", train_list.display()))
                && e.contains(&format!("{} line 2", test_list.display())),
            "{e}"
        );
        // Patient 1 in both lists (different images): the split would not be by patient.
        std::fs::write(&train_list, "00000001_000.png\n00000003_000.png\n").unwrap();
        std::fs::write(&test_list, "00000002_000.png\n00000001_001.png\n").unwrap();
        let e = open_split(dir.path(), "test", "").unwrap_err().to_string();
        assert!(
            e.contains("patient 1 has images in both lists: `00000001_000.png`")
                && e.contains(&format!("{} line 1", train_list.display()))
                && e.contains(&format!(
                    "`00000001_001.png` ({} line 2)",
                    test_list.display()
                )),
            "{e}"
        );
    }

    /// The original's test fixture: one DICOM `1.dcm`, listed 3 times, flat in root.
    #[test]
    fn reads_the_original_dicom_fixture() {
        use crate::testdata::dicom::{write_dicom, DicomSpec};
        let dir = tempfile::tempdir().unwrap();
        let pixels: Vec<i32> = (0..64).map(|i| i * 16).collect();
        write_dicom(
            &dir.path().join("1.dcm"),
            &DicomSpec::gray16(8, 8, 16, pixels),
        )
        .unwrap();
        let row = "1.dcm,No Finding,0,1,50,M,PA,8,8,0.1,0.1";
        let text = [NIH_HEADER, row, row, row].join("\n");
        std::fs::write(dir.path().join("Data_Entry_2017.csv"), text).unwrap();
        let ds = open(dir.path(), "").unwrap();
        assert_eq!(ds.len(), 3);
        let sample = ds.get(2).unwrap();
        assert_eq!((sample.id(), sample.image().channels()), ("1.dcm", 1));
        let Pixels::U8(px) = sample.image().pixels() else {
            panic!("8-bit expected")
        };
        assert_eq!((px[0], px[63]), (0, 255));
    }

    #[test]
    fn bad_data_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let e = open(dir.path(), "").unwrap_err().to_string();
        assert!(
            e.contains("Data_Entry_2017.csv: file not found; NIHCXR expects"),
            "{e}"
        );
        let names = write_nih(dir.path(), 4, 8).unwrap();
        let e = open(dir.path(), r#", "labels": 1"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("NIHCXR: unknown parameter `labels`"), "{e}");
        // A listed image that is absent: reported at open, with the folders searched.
        std::fs::remove_file(dir.path().join("images_001/images").join(&names[1])).unwrap();
        let e = open(dir.path(), "").unwrap_err().to_string();
        assert!(e.contains(&format!("image `{}`", names[1])), "{e}");
        assert!(e.contains("row 3"), "{e}");
        assert!(
            e.contains("images_001/images") && e.contains("images_002/images"),
            "{e}"
        );
        // A truncated PNG: reported at get, naming the file.
        write_nih(dir.path(), 4, 8).unwrap();
        let victim = dir.path().join("images_002/images").join(&names[2]);
        let bytes = std::fs::read(&victim).unwrap();
        std::fs::write(&victim, &bytes[..bytes.len() - 20]).unwrap();
        let ds = open(dir.path(), "").unwrap();
        let e = ds.get(2).unwrap_err().to_string();
        assert!(e.contains(&victim.display().to_string()), "{e}");
        assert!(ds.get(1).is_ok());
        // A CSV without the column.
        std::fs::write(
            dir.path().join("Data_Entry_2017.csv"),
            NIH_HEADER.replace("Image Index", "Image")
                + "\nx.png,No Finding,0,1,50,M,PA,1,1,0.1,0.1\n",
        )
        .unwrap();
        let e = open(dir.path(), "").unwrap_err().to_string();
        assert!(
            e.contains("no column `Image Index`") && e.contains("`Finding Labels`"),
            "{e}"
        );
    }
}
