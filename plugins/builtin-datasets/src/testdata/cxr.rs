//! Writers of chest X-ray (NIH, CheXpert, Covid, RSNA's table) and ImageFolder test data in
//! the real on-disk layouts, with real PNG and JPEG files. Pixel contents are deterministic
//! ([`gray_pattern`], [`rgb_pattern`]) so tests can compare decoded PNGs exactly.

use jpeg_encoder::{ColorType, Encoder};
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::Path;

/// The header of NIH's `Data_Entry_2017.csv`.
pub const NIH_HEADER: &str = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,\
Patient Gender,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]";

/// The header of CheXpert's `train.csv` / `valid.csv`.
pub const CHEXPERT_HEADER: &str = "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,\
Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,\
Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,Support Devices";

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn create_parent(path: &Path) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    Ok(())
}

/// A deterministic grey texture of `width × height` (gradients plus a hashed grain).
pub fn gray_pattern(seed: u64, width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity((width * height) as usize);
    for y in 0..height as u64 {
        for x in 0..width as u64 {
            let mut h = seed
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add(x * 0x1000_0001 + y * 0x3b9a_ca07);
            h ^= h >> 29;
            h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
            h ^= h >> 32;
            let base = (x * 255 / width.max(1) as u64 + y * 128 / height.max(1) as u64) as u32;
            out.push(((base + (h % 48) as u32 + seed as u32 * 17) % 256) as u8);
        }
    }
    out
}

/// A deterministic RGB texture of `width × height` (interleaved; three grey patterns).
pub fn rgb_pattern(seed: u64, width: u32, height: u32) -> Vec<u8> {
    let planes: Vec<Vec<u8>> = (0..3)
        .map(|c| gray_pattern(seed * 3 + c, width, height))
        .collect();
    (0..(width * height) as usize)
        .flat_map(|i| [planes[0][i], planes[1][i], planes[2][i]])
        .collect()
}

fn write_png(
    path: &Path,
    width: u32,
    height: u32,
    color: png::ColorType,
    data: &[u8],
) -> io::Result<()> {
    create_parent(path)?;
    let file = BufWriter::new(fs::File::create(path)?);
    let mut encoder = png::Encoder::new(file, width, height);
    encoder.set_color(color);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(other)?;
    writer.write_image_data(data).map_err(other)?;
    writer.finish().map_err(other)
}

/// Writes an 8-bit grey PNG (`pixels`: `width × height` values), creating parent folders.
pub fn write_png_gray8(path: &Path, width: u32, height: u32, pixels: &[u8]) -> io::Result<()> {
    write_png(path, width, height, png::ColorType::Grayscale, pixels)
}

/// Writes an 8-bit RGB PNG (`pixels`: interleaved RGB), creating parent folders.
pub fn write_png_rgb8(path: &Path, width: u32, height: u32, pixels: &[u8]) -> io::Result<()> {
    write_png(path, width, height, png::ColorType::Rgb, pixels)
}

fn write_jpeg(
    path: &Path,
    width: u32,
    height: u32,
    color: ColorType,
    data: &[u8],
) -> io::Result<()> {
    create_parent(path)?;
    let (w, h) = (
        u16::try_from(width).map_err(other)?,
        u16::try_from(height).map_err(other)?,
    );
    let encoder = Encoder::new_file(path, 90).map_err(other)?;
    encoder.encode(data, w, h, color).map_err(other)
}

/// Writes a grey JPEG (quality 90), creating parent folders.
pub fn write_jpeg_gray8(path: &Path, width: u32, height: u32, pixels: &[u8]) -> io::Result<()> {
    write_jpeg(path, width, height, ColorType::Luma, pixels)
}

/// Writes an RGB JPEG (quality 90, 4:2:0 chroma), creating parent folders.
pub fn write_jpeg_rgb8(path: &Path, width: u32, height: u32, pixels: &[u8]) -> io::Result<()> {
    write_jpeg(path, width, height, ColorType::Rgb, pixels)
}

fn write_text(path: &Path, lines: &[String]) -> io::Result<()> {
    create_parent(path)?;
    let mut file = BufWriter::new(fs::File::create(path)?);
    for line in lines {
        writeln!(file, "{line}")?;
    }
    file.flush()
}

/// The NIH file name of image `i` written by [`write_nih`]: `{patient:08}_{follow-up:03}.png`.
pub fn nih_image_name(i: usize) -> String {
    format!("{:08}_{:03}.png", i / 2 + 1, i % 2)
}

/// One image of an NIH folder written by [`write_nih_rows`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NihRow {
    /// The `Finding Labels` cell as NIH writes it: `No Finding`, or finding names joined by
    /// `|` (`Cardiomegaly|Effusion`). Written as given, so tests can also write bad cells.
    pub findings: String,
    /// The `Patient ID` (a number, as NIH's are).
    pub patient: u32,
}

impl NihRow {
    /// A row of `patient` with the `Finding Labels` cell `findings`.
    pub fn new(findings: &str, patient: u32) -> Self {
        NihRow {
            findings: findings.to_string(),
            patient,
        }
    }
}

/// The rows [`write_nih`] writes: row `i` of patient `i / 2 + 1`, findings cycling over
/// `No Finding`, `Cardiomegaly|Effusion`, `Pneumonia`.
pub fn nih_rows(count: usize) -> Vec<NihRow> {
    (0..count)
        .map(|i| {
            let findings = ["No Finding", "Cardiomegaly|Effusion", "Pneumonia"][i % 3];
            NihRow::new(findings, (i / 2 + 1) as u32)
        })
        .collect()
}

/// Writes an NIH ChestX-ray14 folder as Kaggle unpacks it, with `count` images of
/// [`nih_rows`]`(count)` and no official split: see [`write_nih_rows`]. The file name of
/// image `i` is [`nih_image_name`]`(i)`. Returns the file names in table order.
pub fn write_nih(root: &Path, count: usize, size: u32) -> io::Result<Vec<String>> {
    write_nih_rows(root, &nih_rows(count), size, None)
}

/// Writes an NIH ChestX-ray14 folder as Kaggle unpacks it: `root/Data_Entry_2017.csv` (real
/// header, one row per entry of `rows`, with its findings and patient) and grey PNGs
/// (`size × size`, image `i` with pixels `gray_pattern(i, size, size)`), the first half in
/// `root/images_001/images/`, the rest in `root/images_002/images/`. Image `i` is named
/// `{patient:08}_{k:03}.png`, `k` counting the patient's earlier rows (NIH's follow-up number).
///
/// With `test_patients`, NIH's official split is written too: `root/test_list.txt` lists the
/// images of those patients, `root/train_val_list.txt` all others (one file name a line, in
/// table order), so the split is patient-disjoint as NIH's. Without, list files left by an
/// earlier call are removed. Returns the file names in table order.
///
/// ```no_run
/// use ssl_builtin_datasets::testdata::cxr::{write_nih_rows, NihRow};
/// // Four images of two patients, patient 2 held out as the official test set.
/// let root = tempfile::tempdir()?;
/// let rows = [
///     NihRow::new("No Finding", 1),
///     NihRow::new("Effusion|Mass", 1),
///     NihRow::new("Hernia", 2),
///     NihRow::new("No Finding", 2),
/// ];
/// let names = write_nih_rows(root.path(), &rows, 32, Some(&[2]))?;
/// assert_eq!(names[3], "00000002_001.png");
/// let test = std::fs::read_to_string(root.path().join("test_list.txt"))?;
/// assert_eq!(test, "00000002_000.png\n00000002_001.png\n");
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn write_nih_rows(
    root: &Path,
    rows: &[NihRow],
    size: u32,
    test_patients: Option<&[u32]>,
) -> io::Result<Vec<String>> {
    let mut lines = vec![NIH_HEADER.to_string()];
    let mut names = Vec::with_capacity(rows.len());
    let mut follow_ups = std::collections::HashMap::<u32, usize>::new();
    let (mut train_val, mut test) = (Vec::new(), Vec::new());
    for (i, row) in rows.iter().enumerate() {
        let follow_up = follow_ups.entry(row.patient).or_insert(0);
        let name = format!("{:08}_{:03}.png", row.patient, follow_up);
        let folder = if i < rows.len().div_ceil(2) {
            "images_001"
        } else {
            "images_002"
        };
        let path = root.join(folder).join("images").join(&name);
        write_png_gray8(&path, size, size, &gray_pattern(i as u64, size, size))?;
        let gender = if i % 2 == 0 { "M" } else { "F" };
        let findings = if row.findings.contains(',') {
            format!("\"{}\"", row.findings)
        } else {
            row.findings.clone()
        };
        lines.push(format!(
            "{name},{findings},{follow_up},{},{},{gender},PA,2682,2749,0.143,0.143",
            row.patient,
            40 + i % 30
        ));
        *follow_up += 1;
        match test_patients {
            Some(held_out) if held_out.contains(&row.patient) => test.push(name.clone()),
            _ => train_val.push(name.clone()),
        }
        names.push(name);
    }
    write_text(&root.join("Data_Entry_2017.csv"), &lines)?;
    let lists = [(NIH_TRAIN_VAL_LIST, train_val), (NIH_TEST_LIST, test)];
    for (file, list) in lists {
        let path = root.join(file);
        if test_patients.is_some() {
            write_text(&path, &list)?;
        } else if path.exists() {
            fs::remove_file(&path)?;
        }
    }
    Ok(names)
}

/// The file name of NIH's official training/validation list.
pub const NIH_TRAIN_VAL_LIST: &str = crate::nih::TRAIN_VAL_LIST;
/// The file name of NIH's official test list.
pub const NIH_TEST_LIST: &str = crate::nih::TEST_LIST;

/// One row written by [`write_chexpert`].
#[derive(Clone, Debug, PartialEq)]
pub struct CheXpertRow {
    /// `Path` as in the CSV (`CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg`).
    pub path: String,
    /// Whether `Frontal/Lateral` is `Frontal`.
    pub frontal: bool,
    /// The `Pneumonia` cell: `1.0`, `0.0`, `-1.0` or empty.
    pub pneumonia: String,
}

/// The rows written by [`write_chexpert`], per CSV.
#[derive(Clone, Debug, PartialEq)]
pub struct CheXpertFiles {
    /// Rows of `train.csv`.
    pub train: Vec<CheXpertRow>,
    /// Rows of `valid.csv`.
    pub valid: Vec<CheXpertRow>,
}

/// Writes a CheXpert-v1.0-small folder at `root` (root *is* that folder): `train.csv` with
/// `train_patients` patients and `valid.csv` with `valid_patients` (real header). Each
/// patient has one study with `view1_frontal.jpg`; every even patient (0-based) also has
/// `view2_lateral.jpg`. `Pneumonia` cycles `1.0`, `0.0`, `-1.0`, empty over the patients.
/// Frontal images are RGB JPEGs, laterals grey JPEGs (`size × size`, pixels from
/// [`rgb_pattern`]/[`gray_pattern`] with seed = patient number).
pub fn write_chexpert(
    root: &Path,
    train_patients: usize,
    valid_patients: usize,
    size: u32,
) -> io::Result<CheXpertFiles> {
    let mut files = CheXpertFiles {
        train: Vec::new(),
        valid: Vec::new(),
    };
    for (split, count, first) in [
        ("train", train_patients, 1),
        ("valid", valid_patients, 1 + train_patients),
    ] {
        let mut lines = vec![CHEXPERT_HEADER.to_string()];
        let mut rows = Vec::new();
        for p in 0..count {
            let patient = first + p;
            let pneumonia = ["1.0", "0.0", "-1.0", ""][p % 4].to_string();
            let sex = if p % 2 == 0 { "Female" } else { "Male" };
            let study = format!("{split}/patient{patient:05}/study1");
            let mut views = vec![("view1_frontal.jpg", true)];
            if p % 2 == 0 {
                views.push(("view2_lateral.jpg", false));
            }
            for (view, frontal) in views {
                let relative = format!("{study}/{view}");
                let path = root.join(&relative);
                if frontal {
                    write_jpeg_rgb8(&path, size, size, &rgb_pattern(patient as u64, size, size))?;
                } else {
                    write_jpeg_gray8(&path, size, size, &gray_pattern(patient as u64, size, size))?;
                }
                let csv_path = format!("CheXpert-v1.0-small/{relative}");
                let (fl, ap) = if frontal {
                    ("Frontal", "AP")
                } else {
                    ("Lateral", "")
                };
                lines.push(format!(
                    "{csv_path},{sex},{},{fl},{ap},,,1.0,,,0.0,,{pneumonia},-1.0,0.0,,,,1.0",
                    50 + p % 40
                ));
                rows.push(CheXpertRow {
                    path: csv_path,
                    frontal,
                    pneumonia: pneumonia.clone(),
                });
            }
        }
        write_text(&root.join(format!("{split}.csv")), &lines)?;
        match split {
            "train" => files.train = rows,
            _ => files.valid = rows,
        }
    }
    Ok(files)
}

/// One frontal image of a CheXpert folder written by [`write_chexpert_rows`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheXpertImage {
    /// The patient number (the folder `patient{patient:05}`).
    pub patient: u32,
    /// Observation cells by column name (`("Edema", "-1.0")`); the other observations are
    /// empty. Written as given, so tests can also write bad cells.
    pub cells: Vec<(String, String)>,
}

impl CheXpertImage {
    /// An image of `patient` with the observation `cells`.
    pub fn new(patient: u32, cells: &[(&str, &str)]) -> Self {
        CheXpertImage {
            patient,
            cells: cells
                .iter()
                .map(|(c, v)| (c.to_string(), v.to_string()))
                .collect(),
        }
    }
}

/// Writes a CheXpert-v1.0-small folder at `root` with the frontal images `train` (in
/// `train.csv`) and `valid` (in `valid.csv`), real header, each with its patient and
/// observation cells. Image `i` of a split is the RGB JPEG
/// `{split}/patient{patient:05}/study{k}/view1_frontal.jpg` (`k` = 1 + the patient's earlier
/// images in that split; `size × size`, pixels `rgb_pattern(i, size, size)`); its `Path` cell
/// has the `CheXpert-v1.0-small/` prefix. A cell naming a column that is not an observation of
/// [`CHEXPERT_HEADER`] is an `InvalidInput` error. Returns the rows written (`pneumonia`: the
/// `Pneumonia` cell).
pub fn write_chexpert_rows(
    root: &Path,
    train: &[CheXpertImage],
    valid: &[CheXpertImage],
    size: u32,
) -> io::Result<CheXpertFiles> {
    let columns: Vec<&str> = CHEXPERT_HEADER.split(',').collect();
    let first_observation = 5;
    let mut files = CheXpertFiles {
        train: Vec::new(),
        valid: Vec::new(),
    };
    for (split, images) in [("train", train), ("valid", valid)] {
        let mut lines = vec![CHEXPERT_HEADER.to_string()];
        let mut rows = Vec::new();
        let mut studies = std::collections::HashMap::<u32, usize>::new();
        for (i, image) in images.iter().enumerate() {
            let study = studies.entry(image.patient).or_insert(0);
            *study += 1;
            let relative = format!(
                "{split}/patient{:05}/study{study}/view1_frontal.jpg",
                image.patient
            );
            write_jpeg_rgb8(
                &root.join(&relative),
                size,
                size,
                &rgb_pattern(i as u64, size, size),
            )?;
            let mut cells = vec![String::new(); columns.len()];
            let csv_path = format!("CheXpert-v1.0-small/{relative}");
            cells[..first_observation].clone_from_slice(&[
                csv_path.clone(),
                "Female".into(),
                "60".into(),
                "Frontal".into(),
                "AP".into(),
            ]);
            for (column, value) in &image.cells {
                match columns[first_observation..]
                    .iter()
                    .position(|c| c == column)
                {
                    Some(at) => cells[first_observation + at] = value.clone(),
                    None => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("`{column}` is not a CheXpert observation column"),
                        ))
                    }
                }
            }
            let pneumonia = image
                .cells
                .iter()
                .find(|(c, _)| c == "Pneumonia")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            lines.push(cells.join(","));
            rows.push(CheXpertRow {
                path: csv_path,
                frontal: true,
                pneumonia,
            });
        }
        write_text(&root.join(format!("{split}.csv")), &lines)?;
        match split {
            "train" => files.train = rows,
            _ => files.valid = rows,
        }
    }
    Ok(files)
}

/// One row written by [`write_covid`].
#[derive(Clone, Debug, PartialEq)]
pub struct CovidRow {
    /// `subject` (`subject{s:03}`).
    pub subject: String,
    /// `filepath` relative to root (`images/subject{s:03}/{k}.png`).
    pub filepath: String,
    /// `final_label`, 0..=3, cycling over the rows.
    pub final_label: i64,
}

/// Writes a Covid folder: `root/dataset.csv` (`subject,filepath,final_label`) with
/// `images_per_subject` grey PNGs per subject (`size × size`, pixels
/// `gray_pattern(row, size, size)`). Returns the rows in order.
pub fn write_covid(
    root: &Path,
    subjects: usize,
    images_per_subject: usize,
    size: u32,
) -> io::Result<Vec<CovidRow>> {
    let mut lines = vec!["subject,filepath,final_label".to_string()];
    let mut rows = Vec::new();
    for s in 0..subjects {
        for k in 0..images_per_subject {
            let row = rows.len();
            let subject = format!("subject{s:03}");
            let filepath = format!("images/{subject}/{k}.png");
            write_png_gray8(
                &root.join(&filepath),
                size,
                size,
                &gray_pattern(row as u64, size, size),
            )?;
            let final_label = (row % 4) as i64;
            lines.push(format!("{subject},{filepath},{final_label}"));
            rows.push(CovidRow {
                subject,
                filepath,
                final_label,
            });
        }
    }
    write_text(&root.join("dataset.csv"), &lines)?;
    Ok(rows)
}

/// Writes an RSNA `root/dataset.csv` (`subject,label`) with `rows`; the DICOM images
/// `root/{subject}.dcm` are written separately (see `testdata::dicom`).
pub fn write_rsna_csv(root: &Path, rows: &[(&str, i64)]) -> io::Result<()> {
    let mut lines = vec!["subject,label".to_string()];
    lines.extend(rows.iter().map(|(s, l)| format!("{s},{l}")));
    write_text(&root.join("dataset.csv"), &lines)
}

/// Writes an ImageFolder tree: for each class `c` (in the order given), `per_class` RGB
/// images `root/<c>/img{k}.png` (even `k`) or `root/<c>/img{k}.jpg` (odd `k`), `size × size`,
/// pixels `rgb_pattern(class_index * 1000 + k, size, size)`; plus files the dataset must
/// ignore (`root/<c>/notes.txt`, `root/<c>/.hidden.png`, `root/readme.txt`). Returns the
/// image paths relative to root, class by class in the order given, sorted by name within.
pub fn write_image_folder(
    root: &Path,
    classes: &[&str],
    per_class: usize,
    size: u32,
) -> io::Result<Vec<String>> {
    let mut written = Vec::new();
    for (c, class) in classes.iter().enumerate() {
        let mut names = Vec::new();
        for k in 0..per_class {
            let pixels = rgb_pattern((c * 1000 + k) as u64, size, size);
            let name = if k % 2 == 0 {
                format!("img{k}.png")
            } else {
                format!("img{k}.jpg")
            };
            let path = root.join(class).join(&name);
            if k % 2 == 0 {
                write_png_rgb8(&path, size, size, &pixels)?;
            } else {
                write_jpeg_rgb8(&path, size, size, &pixels)?;
            }
            names.push(name);
        }
        fs::create_dir_all(root.join(class))?;
        fs::write(root.join(class).join("notes.txt"), "not an image")?;
        fs::write(root.join(class).join(".hidden.png"), "not an image either")?;
        names.sort();
        written.extend(names.into_iter().map(|n| format!("{class}/{n}")));
    }
    fs::write(root.join("readme.txt"), "ignored")?;
    Ok(written)
}
