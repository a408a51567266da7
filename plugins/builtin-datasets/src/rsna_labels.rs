//! Conversion of Kaggle's RSNA Pneumonia Detection labels (`stage_2_train_labels.csv`) into
//! the `dataset.csv` that `RSNAKaggleCXR` reads (the original expects users to make it).

use crate::csv_table::start_line;
use ssl_plugin_api::{bail, PluginError, Result};
use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// Reads Kaggle's `stage_2_train_labels.csv` (header `patientId,x,y,width,height,Target`; a
/// patient with several boxes has a row per box) and writes `out_csv` with header
/// `subject,label`: one row per `patientId` in order of first appearance, `label` = `Target`.
/// Returns the number of subjects.
///
/// Errors name the file and row: the line of the file where the record starts (the header is
/// row 1), also with blank lines (which are skipped) or quoted multi-line cells before it;
/// missing `patientId` or `Target`
/// columns, an empty `patientId`, a `Target` other than 0 or 1, a patient whose rows disagree
/// on `Target`, or no data rows. `out_csv` is written to a temporary file beside it and renamed
/// into place, so it is either complete or untouched.
pub fn build_rsna_dataset_csv(labels_csv: &Path, out_csv: &Path) -> Result<usize> {
    let shown = labels_csv.display();
    // Read whole (Kaggle's file is ~1.5 MB), so that rows can be found in its bytes.
    let bytes = std::fs::read(labels_csv)
        .map_err(|e| PluginError::msg(format!("{shown}: cannot read the RSNA labels: {e}")))?;
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(bytes.as_slice());
    let headers = reader
        .headers()
        .map_err(|e| PluginError::msg(format!("{shown}: cannot read the header row: {e}")))?
        .clone();
    let column = |name: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| {
            PluginError::msg(format!(
                "{shown}: no column `{name}` in the header (found: {}); expected Kaggle's \
                 stage_2_train_labels.csv with header patientId,x,y,width,height,Target",
                headers.iter().collect::<Vec<_>>().join(",")
            ))
        })
    };
    let (id_column, target_column) = (column("patientId")?, column("Target")?);

    // subject -> (label, row it was first seen on), and the subjects in first-seen order.
    let mut seen: HashMap<String, (u8, u64)> = HashMap::new();
    let mut subjects: Vec<(String, u8)> = Vec::new();
    for (index, record) in reader.records().enumerate() {
        // Without a position (not expected), the row counting records from the header.
        let fallback = index as u64 + 2;
        let record = record.map_err(|e| {
            let row = e.position().map_or(fallback, |p| start_line(&bytes, p));
            PluginError::msg(format!("{shown}: row {row}: {e}"))
        })?;
        // The file's line where the record starts: the csv crate skips blank lines and a
        // quoted cell may span lines, so the record count is not the row.
        let row = record
            .position()
            .map_or(fallback, |p| start_line(&bytes, p));
        let id = record.get(id_column).unwrap_or("");
        if id.is_empty() {
            bail!("{shown}: row {row}: empty patientId");
        }
        let target = match record.get(target_column).unwrap_or("") {
            "0" => 0u8,
            "1" => 1u8,
            other => bail!("{shown}: row {row}: Target is {other:?}, expected 0 or 1"),
        };
        match seen.get(id) {
            Some(&(label, first_row)) if label != target => bail!(
                "{shown}: patient {id} has Target {label} on row {first_row} but Target {target} \
                 on row {row}; a patient's rows must agree"
            ),
            Some(_) => {}
            None => {
                seen.insert(id.to_string(), (target, row));
                subjects.push((id.to_string(), target));
            }
        }
    }
    if subjects.is_empty() {
        bail!("{shown}: no data rows after the header");
    }
    write_atomically(out_csv, &subjects)?;
    Ok(subjects.len())
}

/// Writes `subject,label` rows to a temporary file beside `out_csv`, then renames it.
fn write_atomically(out_csv: &Path, subjects: &[(String, u8)]) -> Result<()> {
    let shown = out_csv.display();
    let name = out_csv
        .file_name()
        .ok_or_else(|| PluginError::msg(format!("{shown}: not a file path")))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".tmp-{}", std::process::id()));
    let temp: PathBuf = out_csv.with_file_name(temp_name);

    let write = || -> std::io::Result<()> {
        let mut writer = csv::Writer::from_writer(BufWriter::new(File::create(&temp)?));
        writer.write_record(["subject", "label"])?;
        for (subject, label) in subjects {
            writer.write_record([subject.as_str(), &label.to_string()])?;
        }
        let file = writer
            .into_inner()
            .map_err(|e| std::io::Error::other(e.to_string()))?
            .into_inner()
            .map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temp, out_csv)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        PluginError::msg(format!("{shown}: cannot write dataset.csv: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "patientId,x,y,width,height,Target\n";

    fn run(labels: &str) -> (tempfile::TempDir, Result<usize>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stage_2_train_labels.csv"), labels).unwrap();
        let result = build_rsna_dataset_csv(
            &dir.path().join("stage_2_train_labels.csv"),
            &dir.path().join("dataset.csv"),
        );
        (dir, result)
    }

    fn error(labels: &str) -> String {
        let (dir, result) = run(labels);
        let message = result.expect_err("expected an error").to_string();
        assert!(message.contains("stage_2_train_labels.csv"), "{message}");
        assert!(
            !dir.path().join("dataset.csv").exists(),
            "written despite the error"
        );
        message
    }

    #[test]
    fn one_row_per_patient_in_first_appearance_order() {
        let labels = format!(
            "{HEADER}0004cfab-14fd-4e49-80ba-63a80b6bddd6,,,,,0\n\
             00436515-870c-4b36-a041-de91049b9ab4,264.0,152.0,213.0,379.0,1\n\
             00322d4d-1c29-4943-afc9-b6754be640eb,,,,,0\n\
             00436515-870c-4b36-a041-de91049b9ab4,562.0,152.0,256.0,453.0,1\n\
             003d8fa0-6bf1-40ed-b54c-ac657f8495c5,,,,,0\n"
        );
        let (dir, result) = run(&labels);
        assert_eq!(result.unwrap(), 4);
        let written = std::fs::read_to_string(dir.path().join("dataset.csv")).unwrap();
        assert_eq!(
            written,
            "subject,label\n\
             0004cfab-14fd-4e49-80ba-63a80b6bddd6,0\n\
             00436515-870c-4b36-a041-de91049b9ab4,1\n\
             00322d4d-1c29-4943-afc9-b6754be640eb,0\n\
             003d8fa0-6bf1-40ed-b54c-ac657f8495c5,0\n"
        );
        // No temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn columns_may_come_in_any_order_and_overwrite_an_old_output() {
        let dir = tempfile::tempdir().unwrap();
        let labels = dir.path().join("labels.csv");
        let out = dir.path().join("dataset.csv");
        std::fs::write(&out, "old").unwrap();
        std::fs::write(&labels, "Target,patientId\n1,b\n0,a\n1,b\n").unwrap();
        assert_eq!(build_rsna_dataset_csv(&labels, &out).unwrap(), 2);
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "subject,label\nb,1\na,0\n"
        );
    }

    #[test]
    fn disagreeing_rows_name_the_patient_and_rows() {
        let message = error(&format!("{HEADER}a,,,,,0\nb,1,2,3,4,1\nb,,,,,0\n"));
        assert!(message.contains("patient b"), "{message}");
        assert!(
            message.contains("row 3") && message.contains("row 4"),
            "{message}"
        );
    }

    #[test]
    fn bad_targets_missing_columns_and_empty_files_are_errors() {
        let message = error(&format!("{HEADER}a,,,,,0\nb,,,,,2\n"));
        assert!(
            message.contains("row 3") && message.contains("\"2\""),
            "{message}"
        );
        let message = error(&format!("{HEADER}a,,,,,\n"));
        assert!(
            message.contains("row 2") && message.contains("expected 0 or 1"),
            "{message}"
        );
        let message = error(&format!("{HEADER},,,,,1\n"));
        assert!(message.contains("row 2: empty patientId"), "{message}");
        let message = error("patientId,x,y,width,height\na,,,,\n");
        assert!(message.contains("no column `Target`"), "{message}");
        let message = error("subject,Target\na,1\n");
        assert!(message.contains("no column `patientId`"), "{message}");
        let message = error(HEADER);
        assert!(message.contains("no data rows"), "{message}");
        let message = error(&format!("{HEADER}a,1,2\n"));
        assert!(message.contains("row 2"), "{message}");
    }

    /// The row reported is the file's line (header = row 1), not the record count: blank
    /// lines (skipped by the csv crate) and quoted multi-line cells come before it.
    #[test]
    fn rows_are_file_lines_despite_blank_lines_and_multiline_cells() {
        let message = error(&format!("{HEADER}a,,,,,0\n\nb,,,,,2\n"));
        assert!(message.contains("row 4: Target is \"2\""), "{message}");
        let message = error(&format!("{HEADER}\n\na,,,,,0\n\n,,,,,1\n"));
        assert!(message.contains("row 6: empty patientId"), "{message}");
        // A cell over two lines (rows 2-3): the next record starts on row 4.
        let message = error(&format!("{HEADER}a,\"x\ny\",,,,0\nb,,,,,7\n"));
        assert!(message.contains("row 4: Target"), "{message}");
        let message = error(&format!("{HEADER}a,,,,,0\n\nb,,,,,1\nb,,,,,0\n"));
        assert!(
            message.contains("on row 4 but Target 0 on row 5"),
            "{message}"
        );
        // A short record after a blank line: the csv crate's error, at the file's row.
        let message = error(&format!("{HEADER}a,,,,,0\n\nb,1,2\n"));
        assert!(message.contains("row 4"), "{message}");
        // CRLF line ends, blank lines among them.
        let crlf = "patientId,x,y,width,height,Target\r\na,,,,,0\r\n\r\n\r\nb,,,,,5\r\n";
        let message = error(crlf);
        assert!(message.contains("row 5: Target"), "{message}");
    }

    #[test]
    fn a_missing_labels_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("stage_2_train_labels.csv");
        let message = build_rsna_dataset_csv(&missing, &dir.path().join("dataset.csv"))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("stage_2_train_labels.csv") && message.contains("cannot read"),
            "{message}"
        );
    }
}
