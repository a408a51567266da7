//! The output folder of a run: `config.toml`, `metrics.csv` (`epoch,name,value`), TensorBoard
//! event files under `logs/`, and `checkpoints/last.safetensors`.

use crate::atomic_file::write_atomic;
use crate::tensorboard::EventWriter;
use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes the per-epoch metrics of a run to `metrics.csv` and TensorBoard.
pub struct RunOutputs {
    dir: PathBuf,
    events: EventWriter,
}

/// The UTC time as `%Y-%m-%dT%H%M%SZ` (the original's folder-name format).
pub fn utc_timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_date(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The (year, month 1-12, day 1-31) of `days` since 1970-01-01 (Howard Hinnant's civil-date
/// algorithm).
pub fn civil_date(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

impl RunOutputs {
    /// Opens `dir` for a run; a resumed run first drops any metric rows of epochs at or after
    /// `first_epoch` (written before a crash, never checkpointed), from `metrics.csv` and, by
    /// a restart event, from what TensorBoard shows.
    pub fn open(dir: &Path, first_epoch: usize) -> Result<RunOutputs> {
        std::fs::create_dir_all(dir.join("checkpoints"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let csv = dir.join("metrics.csv");
        let kept = match std::fs::read_to_string(&csv) {
            Ok(text) => text
                .lines()
                .skip(1)
                .filter(|l| {
                    l.split(',')
                        .next()
                        .and_then(|e| e.parse::<usize>().ok())
                        .is_some_and(|e| e < first_epoch)
                })
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
            Err(_) => String::new(),
        };
        write_atomic(&csv, format!("epoch,name,value\n{kept}").as_bytes())?;
        let mut events = EventWriter::create(&dir.join("logs"))
            .with_context(|| format!("creating TensorBoard logs in {}", dir.display()))?;
        // TensorBoard then drops what earlier files logged from this epoch on, as the CSV
        // (also from epoch 0: a run that failed before its first checkpoint, run again).
        events
            .restart_at(first_epoch as i64)
            .with_context(|| format!("writing {}", events.path().display()))?;
        Ok(RunOutputs {
            dir: dir.to_path_buf(),
            events,
        })
    }

    /// The run folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The TensorBoard event file this run writes (in `logs/`).
    pub fn events_file(&self) -> &Path {
        self.events.path()
    }

    /// Appends one epoch's metrics to `metrics.csv` (synced) and TensorBoard.
    pub fn write_epoch(&mut self, epoch: usize, metrics: &[(String, f64)]) -> Result<()> {
        let path = self.dir.join("metrics.csv");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut text = String::new();
        for (name, value) in metrics {
            text.push_str(&format!("{epoch},{name},{value}\n"));
        }
        // A failed write (a full disk, an I/O error) must not leave half a row: the file is
        // cut back to its previous length, so every row already there stays readable.
        let before = file
            .metadata()
            .with_context(|| format!("reading the size of {}", path.display()))?
            .len();
        if let Err(e) = file
            .write_all(text.as_bytes())
            .and_then(|()| file.sync_data())
        {
            let _ = file.set_len(before);
            let _ = file.sync_data();
            return Err(e).with_context(|| {
                format!(
                    "writing epoch {epoch}'s metrics to {} (its earlier rows are intact)",
                    path.display()
                )
            });
        }
        for (name, value) in metrics {
            self.events.add_scalar(name, *value, epoch as i64)?;
        }
        self.events.flush().with_context(|| {
            format!(
                "writing epoch {epoch}'s TensorBoard events in {}",
                self.dir.display()
            )
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_shape() {
        let t = utc_timestamp();
        assert_eq!(t.len(), 18, "{t}");
        assert!(
            t.starts_with("20") && t.ends_with('Z') && t.as_bytes()[10] == b'T',
            "{t}"
        );
    }

    #[test]
    fn resume_drops_rows_of_uncheckpointed_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = RunOutputs::open(dir.path(), 0).unwrap();
        for e in 0..3 {
            out.write_epoch(e, &[("a/loss".into(), e as f64)]).unwrap();
        }
        drop(out);
        RunOutputs::open(dir.path(), 2).unwrap();
        let text = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
        assert_eq!(text, "epoch,name,value\n0,a/loss,0\n1,a/loss,1\n");
    }
}
