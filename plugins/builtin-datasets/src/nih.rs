//! `NIHCXR`: the NIH ChestX-ray14 dataset, unlabelled (as the original).
//!
//! Layout: `root/Data_Entry_2017.csv` (column `Image Index`, the file name of each image).
//! An image is found flat in `root`, or in the folders of the Kaggle download as it unpacks
//! (`root/images_001/images/` … `root/images_012/images/`), or in `root/images/` (NIH's own
//! tarballs); the folders are listed once at open, so a listed image found nowhere is an
//! error at open naming it and where it was looked for. Split `train` is every row, `test` is
//! empty (the original's default `use_full_dataset_for_train_and_val=True`). The id of a
//! sample is its file name; images are decoded in `get` (8-bit grey).

use crate::csv_table::{check_params, root_param, split_param, CsvTable};
use crate::image_file::{decode_gray8, list_file_names, ImageLimits, MAX_IMAGE_PIXELS};
use crate::split::Split;
use ssl_plugin_api::{bail, Dataset, Params, Plugin, PluginError, Result, Sample};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const NAME: &str = "NIHCXR";

/// The NIH chest X-ray dataset, indexed from `Data_Entry_2017.csv`.
#[derive(Debug)]
pub struct NihCxr {
    /// (file name, full path) of each image, in table order.
    images: Vec<(String, PathBuf)>,
    /// What one image file may claim (`max_image_pixels`).
    limits: ImageLimits,
}

impl NihCxr {
    /// Opens the dataset from its parameters (`root`, `split`).
    pub fn from_params(params: &Params) -> Result<Self> {
        check_params(params, NAME, &[MAX_IMAGE_PIXELS])?;
        let limits = ImageLimits::from_params(params, NAME)?;
        let root = root_param(params, NAME)?;
        let split = split_param(params)?;
        let csv_path = root.join("Data_Entry_2017.csv");
        let table = CsvTable::open(
            &csv_path,
            "NIHCXR expects NIH's `Data_Entry_2017.csv` (column `Image Index`) in the dataset \
             folder, with the images beside it or in the Kaggle folders images_0XX/images/",
        )?;
        let index_col = table.column("Image Index")?;
        let mut names = Vec::new();
        table.for_each_row(|row| {
            let name = row.get(&index_col)?;
            if name.is_empty() {
                return Err(row.error(&index_col, "empty file name"));
            }
            names.push((name.to_string(), row.number()));
            Ok(())
        })?;
        let (locations, folders) = locate_images(&root)?;
        let mut images = Vec::with_capacity(names.len());
        for (name, row) in names {
            match locations.get(&name) {
                Some(path) => images.push((name, path.clone())),
                None => bail!(
                    "{NAME}: image `{name}` (listed in {} row {row}) not found; looked in {}",
                    csv_path.display(),
                    folders
                        .iter()
                        .map(|f| f.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
        if split == Split::Test {
            images.clear();
        }
        Ok(NihCxr { images, limits })
    }
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
}

/// Adds this file's datasets to the plugin.
pub(crate) fn register(plugin: Plugin) -> Plugin {
    plugin
        .dataset(
            NAME,
            "NIH ChestX-ray14, unlabelled: root/Data_Entry_2017.csv (column `Image Index`), PNG \
         images flat in root or in Kaggle's images_0XX/images/ folders, 8-bit grey; split \
         train = all rows, test = empty; max_image_pixels (67108864): larger images are refused",
            NihCxr::from_params,
        )
        .dataset_info(crate::chest_xray_info())
}

#[cfg(all(test, feature = "testdata"))]
mod tests {
    use super::*;
    use crate::testdata::cxr::{gray_pattern, write_nih, NIH_HEADER};
    use ssl_plugin_api::Pixels;

    fn open(root: &Path, extra: &str) -> Result<NihCxr> {
        let json = format!(
            r#"{{"root": {:?}, "split": "train"{extra}}}"#,
            root.display().to_string()
        );
        NihCxr::from_params(&Params::from_json(&json).unwrap())
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
        assert!(ds.images[0]
            .1
            .ends_with("images_001/images/00000001_000.png"));
        assert!(ds.images[3]
            .1
            .ends_with("images_002/images/00000002_001.png"));
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
