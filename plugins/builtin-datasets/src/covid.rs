//! `CovidDataset`: a private COVID chest X-ray table, binary (CVX03 vs CVX12).
//!
//! Layout, as the original: `root/dataset.csv` with columns `subject`, `filepath` and
//! `final_label` (0..=3), images at `root/{filepath}` (PNG, JPEG or DICOM). Labels are mapped
//! {0 → 0, 3 → 0, 1 → 1, 2 → 1}; any other value is an error naming the row. Split `train` is
//! every row, `test` is empty (as RSNAKaggleCXR and NIHCXR: the original has no held-out
//! test set, and reading the whole table as `test` would score the classifier on images it
//! trained on); the table is read and checked for either split. The id of a sample is its
//! `filepath`; its subject is its split group (`Dataset::groups`), so the host splits
//! train/validation by subject with the original's NumPy permutation. Images are decoded in
//! `get` (8-bit grey); an absent image is reported there, naming the CSV row.

use crate::csv_table::{check_params, root_param, split_param, CsvTable};
use crate::image_file::{decode_gray8, ImageLimits, MAX_IMAGE_PIXELS};
use crate::split::Split;
use ssl_plugin_api::{bail, Dataset, Params, Plugin, PluginError, Result, Sample};
use std::path::PathBuf;

const NAME: &str = "CovidDataset";

/// One row of `dataset.csv`.
#[derive(Debug)]
struct Entry {
    subject: String,
    filepath: String,
    label: i64,
    row: u64,
}

/// The Covid dataset, indexed from `dataset.csv`.
#[derive(Debug)]
pub struct CovidDataset {
    root: PathBuf,
    csv_path: PathBuf,
    entries: Vec<Entry>,
    /// What one image file may claim (`max_image_pixels`).
    limits: ImageLimits,
}

impl CovidDataset {
    /// Opens the dataset from its parameters (`root`, `split`: `train` is every row, `test`
    /// is empty; the table is checked for either).
    pub fn from_params(params: &Params) -> Result<Self> {
        check_params(params, NAME, &[MAX_IMAGE_PIXELS])?;
        let limits = ImageLimits::from_params(params, NAME)?;
        let root = root_param(params, NAME)?;
        let split = split_param(params)?;
        let csv_path = root.join("dataset.csv");
        let table = CsvTable::open(
            &csv_path,
            "CovidDataset expects `dataset.csv` (columns subject,filepath,final_label) in the \
             dataset folder, with each image at root/{filepath}",
        )?;
        let subject_col = table.column("subject")?;
        let file_col = table.column("filepath")?;
        let label_col = table.column("final_label")?;
        let mut entries = Vec::new();
        table.for_each_row(|row| {
            let subject = row.get(&subject_col)?;
            if subject.is_empty() {
                return Err(row.error(&subject_col, "empty subject"));
            }
            let filepath = row.get(&file_col)?;
            if filepath.is_empty() {
                return Err(row.error(&file_col, "empty file path"));
            }
            let label = match row.int(&label_col)? {
                0 | 3 => 0,
                1 | 2 => 1,
                other => {
                    return Err(row.error(&label_col, format!("{other}: expected 0, 1, 2 or 3")))
                }
            };
            entries.push(Entry {
                subject: subject.to_string(),
                filepath: filepath.to_string(),
                label,
                row: row.number(),
            });
            Ok(())
        })?;
        if split == Split::Test {
            entries.clear();
        }
        Ok(CovidDataset {
            root,
            csv_path,
            entries,
            limits,
        })
    }

    /// The subject of every sample, in order (for a train/validation split by subject).
    pub fn subjects(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.subject.clone()).collect()
    }
}

impl Dataset for CovidDataset {
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// The subjects: the host splits train/validation by subject, as the original.
    fn groups(&self) -> Result<Option<Vec<String>>> {
        Ok(Some(self.subjects()))
    }

    fn num_classes(&self) -> Option<usize> {
        Some(2)
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let Some(entry) = self.entries.get(index) else {
            bail!("{NAME}: index {index} out of range ({} images)", self.len());
        };
        let path = self.root.join(&entry.filepath);
        let image = decode_gray8(&path, self.limits).map_err(|e| {
            if path.exists() {
                e
            } else {
                PluginError::msg(format!(
                    "{NAME}: image {} (listed in {} row {}) not found",
                    path.display(),
                    self.csv_path.display(),
                    entry.row
                ))
            }
        })?;
        Ok(Sample::new(
            image,
            Some(entry.label),
            entry.filepath.clone(),
        ))
    }

    fn targets(&self) -> Result<Vec<Option<i64>>> {
        Ok(self.entries.iter().map(|e| Some(e.label)).collect())
    }
}

/// Adds this file's datasets to the plugin.
pub(crate) fn register(plugin: Plugin) -> Plugin {
    plugin
        .dataset(
            NAME,
            "COVID chest X-rays: root/dataset.csv (subject,filepath,final_label 0..3 → {0,3}: 0, \
         {1,2}: 1), images root/{filepath}, 8-bit grey; 2 classes; split train = all rows, test = \
         empty; train/validation split by subject; max_image_pixels (67108864): larger images are refused",
            CovidDataset::from_params,
        )
        .dataset_info(crate::chest_xray_info())
}

#[cfg(all(test, feature = "testdata"))]
mod tests {
    use super::*;
    use crate::testdata::cxr::{gray_pattern, write_covid};
    use ssl_plugin_api::Pixels;
    use std::path::Path;

    fn open(root: &Path, split: &str) -> Result<CovidDataset> {
        let json = format!(
            r#"{{"root": {:?}, "split": "{split}"}}"#,
            root.display().to_string()
        );
        CovidDataset::from_params(&Params::from_json(&json).unwrap())
    }

    #[test]
    fn maps_labels_and_keeps_subjects() {
        let dir = tempfile::tempdir().unwrap();
        let rows = write_covid(dir.path(), 3, 2, 10).unwrap();
        let ds = open(dir.path(), "train").unwrap();
        assert_eq!(ds.len(), 6);
        assert_eq!(ds.num_classes(), Some(2));
        // final_label 0,1,2,3,0,1 → 0,1,1,0,0,1.
        let expected = [0, 1, 1, 0, 0, 1].map(Some).to_vec();
        assert_eq!(ds.targets().unwrap(), expected);
        let subjects: Vec<String> = rows.iter().map(|r| r.subject.clone()).collect();
        assert_eq!(ds.subjects(), subjects);
        assert_eq!(ds.subjects()[2], "subject001");
        let sample = ds.get(3).unwrap();
        assert_eq!(sample.id(), "images/subject001/1.png");
        assert_eq!(sample.label(), Some(0));
        let Pixels::U8(px) = sample.image().pixels() else {
            panic!("8-bit expected")
        };
        assert_eq!(px, gray_pattern(3, 10, 10).as_slice());
    }

    /// `split=test` is empty (no held-out set: the host would otherwise score the classifier
    /// on its own training images); `train` is the whole table; the table is checked for
    /// either split.
    #[test]
    fn test_split_is_empty_train_is_whole_table() {
        let dir = tempfile::tempdir().unwrap();
        write_covid(dir.path(), 3, 2, 10).unwrap();
        assert_eq!(open(dir.path(), "train").unwrap().len(), 6);
        let test = open(dir.path(), "test").unwrap();
        assert_eq!((test.len(), test.targets().unwrap()), (0, vec![]));
        assert_eq!(test.groups().unwrap(), Some(vec![]));
        assert!(test.get(0).is_err());
        std::fs::write(
            dir.path().join("dataset.csv"),
            "subject,filepath,final_label\na,images/subject000/0.png,7\n",
        )
        .unwrap();
        let e = open(dir.path(), "test").unwrap_err().to_string();
        assert!(e.contains("row 2, column final_label: 7"), "{e}");
    }

    #[test]
    fn bad_data_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let e = open(dir.path(), "train").unwrap_err().to_string();
        assert!(
            e.contains("dataset.csv: file not found; CovidDataset expects"),
            "{e}"
        );
        write_covid(dir.path(), 1, 1, 4).unwrap();
        let csv = dir.path().join("dataset.csv");
        std::fs::write(
            &csv,
            "subject,filepath,final_label\na,images/subject000/0.png,4\n",
        )
        .unwrap();
        let e = open(dir.path(), "train").unwrap_err().to_string();
        assert!(
            e.contains("row 2, column final_label: 4: expected 0, 1, 2 or 3"),
            "{e}"
        );
        std::fs::write(
            &csv,
            "subject,filepath,final_label\na,images/subject000/0.png,0\nb,x.png,CVX1\n",
        )
        .unwrap();
        let e = open(dir.path(), "train").unwrap_err().to_string();
        assert!(
            e.contains("row 3, column final_label: `CVX1` is not an integer"),
            "{e}"
        );
        std::fs::write(&csv, "subject,path,final_label\n").unwrap();
        let e = open(dir.path(), "train").unwrap_err().to_string();
        assert!(e.contains("no column `filepath`"), "{e}");
        std::fs::write(
            &csv,
            "subject,filepath,final_label\na,images/subject000/0.png,2\nb,gone.png,1\n",
        )
        .unwrap();
        let ds = open(dir.path(), "train").unwrap();
        assert!(ds.get(0).is_ok());
        let e = ds.get(1).unwrap_err().to_string();
        assert!(
            e.contains("gone.png") && e.contains("row 3") && e.contains("not found"),
            "{e}"
        );
        std::fs::write(&csv, "subject,filepath,final_label\n").unwrap();
        let empty = open(dir.path(), "train").unwrap();
        assert_eq!((empty.len(), empty.targets().unwrap()), (0, vec![]));
    }
}
