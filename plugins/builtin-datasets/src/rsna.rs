//! `RSNAKaggleCXR`: the RSNA pneumonia detection challenge (Kaggle) chest X-rays.
//!
//! Layout, as the original: `root/dataset.csv` with columns `subject` and `label` (an integer,
//! 0 or 1: pneumonia), one row per image, and the images `root/{subject}.dcm`, flat. The
//! table is user-made (from Kaggle's `stage_2_train_labels.csv`: `patientId` → `subject`,
//! `Target` → `label`). Split `train` is every row, `test` is empty (as the original). The id
//! of a sample is its subject. The root folder is listed once at open, so a listed image
//! that is absent is reported then; images are decoded in `get` (8-bit grey).

use crate::csv_table::{check_params, root_param, split_param, CsvTable};
use crate::image_file::{decode_gray8, list_file_names, ImageLimits, MAX_IMAGE_PIXELS};
use crate::split::Split;
use ssl_plugin_api::{bail, Dataset, Params, Plugin, Result, Sample};
use std::path::PathBuf;

const NAME: &str = "RSNAKaggleCXR";

/// The RSNA Kaggle dataset, indexed from `dataset.csv`.
#[derive(Debug)]
pub struct RsnaKaggleCxr {
    root: PathBuf,
    subjects: Vec<String>,
    labels: Vec<i64>,
    /// What one image file may claim (`max_image_pixels`).
    limits: ImageLimits,
}

impl RsnaKaggleCxr {
    /// Opens the dataset from its parameters (`root`, `split`).
    pub fn from_params(params: &Params) -> Result<Self> {
        check_params(params, NAME, &[MAX_IMAGE_PIXELS])?;
        let limits = ImageLimits::from_params(params, NAME)?;
        let root = root_param(params, NAME)?;
        let split = split_param(params)?;
        let csv_path = root.join("dataset.csv");
        let table = CsvTable::open(
            &csv_path,
            "RSNAKaggleCXR expects `dataset.csv` (columns subject,label; one row per image \
             `{subject}.dcm`) in the dataset folder",
        )?;
        let subject_col = table.column("subject")?;
        let label_col = table.column("label")?;
        let mut subjects = Vec::new();
        let mut labels = Vec::new();
        let mut rows = Vec::new();
        table.for_each_row(|row| {
            let subject = row.get(&subject_col)?;
            if subject.is_empty() {
                return Err(row.error(&subject_col, "empty subject"));
            }
            let label = row.int(&label_col)?;
            if !(0..=1).contains(&label) {
                return Err(row.error(&label_col, format!("label {label}: expected 0 or 1")));
            }
            subjects.push(subject.to_string());
            labels.push(label);
            rows.push(row.number());
            Ok(())
        })?;
        // One listing of the folder finds absent images at open.
        let present = list_file_names(&root)?;
        for (subject, row) in subjects.iter().zip(&rows) {
            let file = format!("{subject}.dcm");
            if !present.contains(&file) {
                bail!(
                    "{}: image `{file}` (listed in {} row {row}) not found in {}",
                    NAME,
                    csv_path.display(),
                    root.display()
                );
            }
        }
        if split == Split::Test {
            subjects.clear();
            labels.clear();
        }
        Ok(RsnaKaggleCxr {
            root,
            subjects,
            labels,
            limits,
        })
    }
}

impl Dataset for RsnaKaggleCxr {
    fn len(&self) -> usize {
        self.subjects.len()
    }

    fn num_classes(&self) -> Option<usize> {
        Some(2)
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let Some(subject) = self.subjects.get(index) else {
            bail!("{NAME}: index {index} out of range ({} images)", self.len());
        };
        let image = decode_gray8(&self.root.join(format!("{subject}.dcm")), self.limits)?;
        Ok(Sample::new(
            image,
            Some(self.labels[index]),
            subject.clone(),
        ))
    }

    fn targets(&self) -> Result<Vec<Option<i64>>> {
        Ok(self.labels.iter().map(|&l| Some(l)).collect())
    }
}

/// Adds this file's datasets to the plugin.
pub(crate) fn register(plugin: Plugin) -> Plugin {
    plugin.dataset(
        NAME,
        "RSNA pneumonia (Kaggle) chest X-rays: root/dataset.csv (subject,label 0|1), DICOM images \
         root/{subject}.dcm, 8-bit grey; 2 classes; split train = all rows, test = empty; max_image_pixels (67108864): larger images are refused",
        RsnaKaggleCxr::from_params,
    )
    .dataset_info(crate::chest_xray_info())
}

#[cfg(all(test, feature = "testdata"))]
mod tests {
    use super::*;
    use crate::testdata::cxr::write_rsna_csv;
    use std::path::Path;

    fn open(root: &Path, split: &str) -> Result<RsnaKaggleCxr> {
        let json = format!(
            r#"{{"root": {:?}, "split": "{split}"}}"#,
            root.display().to_string()
        );
        RsnaKaggleCxr::from_params(&Params::from_json(&json).unwrap())
    }

    #[test]
    fn reads_the_table() {
        let dir = tempfile::tempdir().unwrap();
        write_rsna_csv(dir.path(), &[("a1", 0), ("b2", 1), ("a1", 1)]).unwrap();
        for s in ["a1", "b2"] {
            std::fs::write(dir.path().join(format!("{s}.dcm")), b"DICM").unwrap();
        }
        let ds = open(dir.path(), "train").unwrap();
        assert_eq!(ds.len(), 3);
        assert_eq!(ds.num_classes(), Some(2));
        assert_eq!(ds.targets().unwrap(), vec![Some(0), Some(1), Some(1)]);
        assert_eq!(ds.subjects, ["a1", "b2", "a1"]);
        let test = open(dir.path(), "test").unwrap();
        assert_eq!((test.len(), test.targets().unwrap()), (0, vec![]));
        // Not a DICOM file: the error names it.
        let e = ds.get(1).unwrap_err().to_string();
        assert!(e.contains("b2.dcm"), "{e}");
    }

    #[test]
    fn bad_data_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let e = open(dir.path(), "train").unwrap_err().to_string();
        assert!(
            e.contains("dataset.csv: file not found; RSNAKaggleCXR expects"),
            "{e}"
        );
        std::fs::write(
            dir.path().join("dataset.csv"),
            "subject,label\nx,0\ny,yes\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("x.dcm"), b"").unwrap();
        std::fs::write(dir.path().join("y.dcm"), b"").unwrap();
        let e = open(dir.path(), "train").unwrap_err().to_string();
        assert!(
            e.contains("row 3, column label: `yes` is not an integer"),
            "{e}"
        );
        std::fs::write(dir.path().join("dataset.csv"), "subject,label\nx,0\ny,2\n").unwrap();
        let e = open(dir.path(), "train").unwrap_err().to_string();
        assert!(
            e.contains("row 3, column label: label 2: expected 0 or 1"),
            "{e}"
        );
        std::fs::write(dir.path().join("dataset.csv"), "subject,target\nx,0\n").unwrap();
        let e = open(dir.path(), "train").unwrap_err().to_string();
        assert!(e.contains("no column `label`"), "{e}");
        write_rsna_csv(dir.path(), &[("x", 0), ("z", 1)]).unwrap();
        let e = open(dir.path(), "train").unwrap_err().to_string();
        assert!(e.contains("image `z.dcm`") && e.contains("row 3"), "{e}");
        let e = open(dir.path(), "valid").unwrap_err().to_string();
        assert!(e.contains("parameter `split`"), "{e}");
    }

    #[test]
    fn decodes_dicom_images() {
        use crate::testdata::dicom::{write_dicom, DicomSpec};
        use ssl_plugin_api::Pixels;
        let dir = tempfile::tempdir().unwrap();
        write_rsna_csv(dir.path(), &[("p1", 1), ("p2", 0)]).unwrap();
        let spec = DicomSpec::gray16(2, 2, 12, vec![0, 100, 200, 400]);
        write_dicom(&dir.path().join("p1.dcm"), &spec).unwrap();
        write_dicom(
            &dir.path().join("p2.dcm"),
            &DicomSpec::gray8(3, 1, vec![5, 6, 7]),
        )
        .unwrap();
        let ds = open(dir.path(), "train").unwrap();
        let sample = ds.get(0).unwrap();
        assert_eq!((sample.id(), sample.label()), ("p1", Some(1)));
        let image = sample.image();
        assert_eq!((image.width(), image.height(), image.channels()), (2, 2, 1));
        // Min-max scaled to 0..=255 and truncated, as the original.
        let Pixels::U8(px) = image.pixels() else {
            panic!("8-bit expected")
        };
        assert_eq!(px, [0, 63, 127, 255]);
        let sample = ds.get(1).unwrap();
        let Pixels::U8(px) = sample.image().pixels() else {
            panic!("8-bit expected")
        };
        assert_eq!((sample.id(), px), ("p2", &[0u8, 127, 255][..]));
    }
}
