//! Reading the CSV tables of the chest X-ray datasets, plus the parameter checks they share.
//!
//! [`CsvTable::open`] reads the header; [`CsvTable::column`] looks a column up by name (an
//! error names the file, the column and the columns found); [`CsvTable::for_each_row`] streams
//! the rows, each a [`Row`] that knows its 1-based row number (the header is row 1), so every
//! per-row error names the file, the row and the column. The row number is the file's line
//! where the record starts ([`start_line`]), also after blank lines or multi-line cells.

use crate::split::Split;
use ssl_plugin_api::{bail, Params, PluginError, Result};
use std::io::Cursor;
use std::path::{Path, PathBuf};

/// A CSV file with a header row, opened for reading. The file is read whole (CheXpert's
/// train.csv, the largest, is some tens of MB), so that [`start_line`] can find rows in its bytes.
pub(crate) struct CsvTable {
    path: PathBuf,
    headers: Vec<String>,
    reader: csv::Reader<Cursor<Vec<u8>>>,
}

/// A column of a [`CsvTable`], found by name.
#[derive(Clone, Debug)]
pub(crate) struct Column {
    index: usize,
    name: String,
}

/// One data row of a [`CsvTable`].
pub(crate) struct Row<'a> {
    path: &'a Path,
    record: &'a csv::StringRecord,
    number: u64,
}

impl CsvTable {
    /// Opens `path` and reads its header. A missing file is an error naming the path and
    /// `expected`, what the dataset needs there (e.g. "NIHCXR expects the NIH table ...").
    pub(crate) fn open(path: &Path, expected: &str) -> Result<Self> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("{}: file not found; {expected}", path.display())
            }
            Err(e) => bail!("{}: cannot open: {e}", path.display()),
        };
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .buffer_capacity(1 << 20)
            .from_reader(Cursor::new(bytes));
        let headers = reader
            .headers()
            .map_err(|e| {
                PluginError::msg(format!("{}: cannot read the header: {e}", path.display()))
            })?
            .iter()
            .map(|h| h.trim().to_string())
            .collect::<Vec<_>>();
        if headers.iter().all(|h| h.is_empty()) {
            bail!(
                "{}: the file is empty or has no header row; {expected}",
                path.display()
            );
        }
        Ok(CsvTable {
            path: path.to_path_buf(),
            headers,
            reader,
        })
    }

    /// The column names, trimmed, in file order.
    pub(crate) fn headers(&self) -> &[String] {
        &self.headers
    }

    /// The column called `name` (exact match after trimming spaces); an error naming the file,
    /// the column and the columns found when absent.
    pub(crate) fn column(&self, name: &str) -> Result<Column> {
        match self.headers.iter().position(|h| h == name) {
            Some(index) => Ok(Column {
                index,
                name: name.to_string(),
            }),
            None => bail!(
                "{}: no column `{name}`; the columns found are: {}",
                self.path.display(),
                self.headers
                    .iter()
                    .map(|h| format!("`{h}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Calls `f` on every data row, in order; stops at the first error (a malformed row is an
    /// error naming the file and the row).
    pub(crate) fn for_each_row(mut self, mut f: impl FnMut(&Row) -> Result<()>) -> Result<()> {
        let mut record = csv::StringRecord::new();
        let mut count: u64 = 0;
        loop {
            let read = self.reader.read_record(&mut record);
            let bytes = self.reader.get_ref().get_ref();
            // Without a position (not expected), the row counting records from the header.
            let fallback = count + 2;
            let more = read.map_err(|e| {
                PluginError::msg(format!(
                    "{}: row {}: cannot read the CSV: {e}",
                    self.path.display(),
                    e.position().map_or(fallback, |p| start_line(bytes, p))
                ))
            })?;
            if !more {
                return Ok(());
            }
            count += 1;
            // The line where the record starts: the row a user sees in an editor, and also
            // the spreadsheet row unless the file has blank lines or multi-line cells.
            let number = record.position().map_or(fallback, |p| start_line(bytes, p));
            f(&Row {
                path: &self.path,
                record: &record,
                number,
            })?;
        }
    }
}

impl Row<'_> {
    /// The 1-based row number (the header is row 1).
    pub(crate) fn number(&self) -> u64 {
        self.number
    }

    /// The cell of `column`, trimmed; an error when the row is too short to have it.
    pub(crate) fn get(&self, column: &Column) -> Result<&str> {
        match self.record.get(column.index) {
            Some(value) => Ok(value.trim()),
            None => Err(self.error(
                column,
                format!(
                    "the row has {} cells, the column is cell {}",
                    self.record.len(),
                    column.index + 1
                ),
            )),
        }
    }

    /// The cell of `column` as an integer (`3`, `-1`, or a whole float such as `3.0`, as
    /// pandas writes integer columns that hold a missing value).
    pub(crate) fn int(&self, column: &Column) -> Result<i64> {
        let value = self.get(column)?;
        parse_int(value).ok_or_else(|| self.error(column, format!("`{value}` is not an integer")))
    }

    /// An error about `column` in this row: "FILE: row N, column X: message".
    pub(crate) fn error(&self, column: &Column, message: impl std::fmt::Display) -> PluginError {
        PluginError::msg(format!(
            "{}: row {}, column {}: {message}",
            self.path.display(),
            self.number,
            column.name
        ))
    }
}

/// The line of `bytes` (1-based) where the record read from `position` starts. The csv
/// crate's position is where reading began, just after the previous record, so it is on the
/// first of the blank lines (skipped by the reader) before the record: these are counted here.
/// Lines are counted by `\n`, as the csv crate does, so CRLF files count the same.
pub(crate) fn start_line(bytes: &[u8], position: &csv::Position) -> u64 {
    let rest = usize::try_from(position.byte())
        .ok()
        .and_then(|at| bytes.get(at..))
        .unwrap_or_default();
    let blank_lines = rest
        .iter()
        .take_while(|&&b| b == b'\n' || b == b'\r')
        .filter(|&&b| b == b'\n')
        .count();
    position.line() + blank_lines as u64
}

/// `v` as an integer: an optionally signed whole number, or a float with a zero fraction.
fn parse_int(value: &str) -> Option<i64> {
    if let Ok(v) = value.parse::<i64>() {
        return Some(v);
    }
    let (whole, fraction) = value.split_once('.')?;
    if whole.is_empty() || !fraction.bytes().all(|b| b == b'0') {
        return None;
    }
    whole.parse::<i64>().ok()
}

/// Rejects any parameter not in `known` (besides `root` and `split`, which the host always
/// sends), naming it and the dataset.
pub(crate) fn check_params(params: &Params, dataset: &str, known: &[&str]) -> Result<()> {
    params
        .check_known(known)
        .map_err(|e| PluginError::msg(format!("{dataset}: {}", e.message())))
}

/// The dataset folder (parameter `root`, from `--local_dataset`); an error naming the
/// dataset when it is missing.
pub(crate) fn root_param(params: &Params, dataset: &str) -> Result<PathBuf> {
    match params.get::<PathBuf>("root")? {
        Some(root) => Ok(root),
        None => bail!("{dataset} needs its dataset folder: parameter `root` (--local_dataset)"),
    }
}

/// The split (parameter `split`, `train` when absent).
pub(crate) fn split_param(params: &Params) -> Result<Split> {
    Split::parse(&params.get_or("split", "train".to_string())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn rows(path: &Path, column: &str) -> Result<Vec<(u64, i64)>> {
        let table = CsvTable::open(path, "test table")?;
        let col = table.column(column)?;
        let mut out = Vec::new();
        table.for_each_row(|row| {
            out.push((row.number(), row.int(&col)?));
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn reads_columns_by_name_with_row_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "t.csv", "a, label\nx,3\n\"y,z\",-1\nw,2.0\n");
        assert_eq!(rows(&path, "label").unwrap(), vec![(2, 3), (3, -1), (4, 2)]);
        let table = CsvTable::open(&path, "").unwrap();
        let a = table.column("a").unwrap();
        let mut seen = Vec::new();
        table
            .for_each_row(|row| {
                seen.push(row.get(&a)?.to_string());
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, ["x", "y,z", "w"]);
        // A UTF-8 byte-order mark (spreadsheet exports) is not part of the first column name.
        let bom = write(dir.path(), "b.csv", "\u{feff}label,a\n7,x\n");
        assert_eq!(rows(&bom, "label").unwrap(), vec![(2, 7)]);
    }

    #[test]
    fn errors_name_file_row_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "t.csv", "a,label\nx,1\ny,one\n");
        let e = rows(&path, "label").unwrap_err().to_string();
        assert!(
            e.contains("t.csv: row 3, column label: `one` is not an integer"),
            "{e}"
        );
        let e = rows(&path, "subject").unwrap_err().to_string();
        assert!(e.contains("t.csv: no column `subject`"), "{e}");
        assert!(e.contains("`a`, `label`"), "{e}");
        let short = write(dir.path(), "s.csv", "a,label\nx,1\ny\n");
        let e = rows(&short, "label").unwrap_err().to_string();
        assert!(e.contains("row 3, column label"), "{e}");
        let e = rows(&dir.path().join("none.csv"), "a")
            .unwrap_err()
            .to_string();
        assert!(e.contains("none.csv: file not found; test table"), "{e}");
        let empty = write(dir.path(), "e.csv", "");
        assert!(rows(&empty, "a").is_err());
        for bad in ["1.5", "", "1e3", ".0", "x.0"] {
            assert_eq!(parse_int(bad), None, "{bad}");
        }
    }

    /// Blank lines (skipped by the csv crate, whose position is then on the first of them),
    /// CRLF line ends and multi-line cells: the row reported is the file's line, as in an editor.
    #[test]
    fn rows_are_editor_lines_despite_blank_lines_and_crlf() {
        let dir = tempfile::tempdir().unwrap();
        // Lines: 1 header, 2 x, 3-4 blank, 5 y, 6 blank, 7 z.
        let good = "a,label\r\nx,1\r\n\r\n\r\ny,2\r\n\r\nz,3\r\n";
        let path = write(dir.path(), "good.csv", good);
        assert_eq!(rows(&path, "label").unwrap(), vec![(2, 1), (5, 2), (7, 3)]);
        let path = write(dir.path(), "bad.csv", &good.replace("z,3", "z,three"));
        let e = rows(&path, "label").unwrap_err().to_string();
        assert!(
            e.contains("bad.csv: row 7, column label: `three` is not an integer"),
            "{e}"
        );
        // A cell over lines 2-3, then a blank line 4: the bad row is line 5.
        let path = write(dir.path(), "m.csv", "a,label\n\"p\nq\",1\n\nr,x\n");
        let e = rows(&path, "label").unwrap_err().to_string();
        assert!(e.contains("m.csv: row 5, column label"), "{e}");
        // A record the csv crate cannot read (not UTF-8) after a blank line: line 4.
        let path = dir.path().join("u.csv");
        std::fs::write(&path, b"a,label\nx,1\n\n\xff,2\n").unwrap();
        let e = rows(&path, "label").unwrap_err().to_string();
        assert!(e.contains("u.csv: row 4: cannot read the CSV"), "{e}");
    }

    #[test]
    fn params_are_checked() {
        let p =
            Params::from_json(r#"{"root": "/d", "split": "test", "chexpert_label": "x"}"#).unwrap();
        assert!(check_params(&p, "CheXpert", &["chexpert_label"]).is_ok());
        let e = check_params(&p, "NIHCXR", &[]).unwrap_err().to_string();
        assert!(
            e.contains("NIHCXR: unknown parameter `chexpert_label`"),
            "{e}"
        );
        assert_eq!(split_param(&p).unwrap(), Split::Test);
        assert_eq!(root_param(&p, "X").unwrap(), PathBuf::from("/d"));
        let e = root_param(&Params::default(), "NIHCXR")
            .unwrap_err()
            .to_string();
        assert!(e.contains("NIHCXR needs its dataset folder"), "{e}");
    }
}
