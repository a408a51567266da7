//! A dataset plugin for ssl-host: `PngFolder`, a folder of PNG images listed in a CSV file.
//!
//! `root/labels.csv` has a header `file,label` and one row per image; `file` is relative to
//! `root`; `label` is a whole number, or empty for an unlabelled image.

use ssl_plugin_api::{bail, Dataset, Image, Params, Plugin, PluginError, Result, Sample};
use std::path::PathBuf;

struct PngFolder {
    root: PathBuf,
    rows: Vec<(String, Option<i64>)>,
    num_classes: Option<usize>,
}

impl PngFolder {
    fn open(params: &Params) -> Result<Self> {
        // `root` (from --local_dataset) and `split` come from the host; `csv` is ours. A
        // misspelt name is an error rather than silently ignored.
        params.check_known(&["csv"])?;
        let root: PathBuf = params.require("root")?;
        let csv_name: String = params.get_or("csv", "labels.csv".to_string())?;
        // `train`: everything (the host carves the validation split out of it by
        // `val_split`); `test`: a held-out test split, which this format does not have.
        let test = params.get_or("split", "train".to_string())? == "test";
        let csv_path = root.join(&csv_name);
        let text = std::fs::read_to_string(&csv_path)
            .map_err(|e| PluginError::from(e).context(csv_path.display()))?;
        let mut lines = text.lines();
        let header = lines.next().unwrap_or_default();
        let columns: Vec<&str> = header.split(',').map(str::trim).collect();
        let file_col = columns.iter().position(|c| *c == "file");
        let label_col = columns.iter().position(|c| *c == "label");
        let (Some(file_col), Some(label_col)) = (file_col, label_col) else {
            bail!(
                "{}: header must have columns `file` and `label`, found `{header}`",
                csv_path.display()
            );
        };
        let mut rows = Vec::new();
        for (n, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let row = n + 2;
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let (Some(file), Some(label)) = (fields.get(file_col), fields.get(label_col)) else {
                bail!(
                    "{} row {row}: expected {} fields, found {}",
                    csv_path.display(),
                    columns.len(),
                    fields.len()
                );
            };
            let label = match *label {
                "" => None,
                l => Some(l.parse::<i64>().ok().filter(|&v| v >= 0).ok_or_else(|| {
                    PluginError::msg(format!(
                        "{} row {row}: label `{l}` is not a non-negative whole number",
                        csv_path.display()
                    ))
                })?),
            };
            rows.push((file.to_string(), label));
        }
        if rows.is_empty() {
            bail!("{}: no images listed", csv_path.display());
        }
        let num_classes = rows
            .iter()
            .filter_map(|r| r.1)
            .max()
            .map(|m| m as usize + 1);
        if test {
            rows.clear();
        }
        Ok(PngFolder {
            root,
            rows,
            num_classes,
        })
    }
}

impl Dataset for PngFolder {
    fn len(&self) -> usize {
        self.rows.len()
    }

    fn num_classes(&self) -> Option<usize> {
        self.num_classes
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let Some((file, label)) = self.rows.get(index) else {
            bail!("index {index} out of range ({} images)", self.rows.len());
        };
        let path = self.root.join(file);
        let image = decode_png(&path).map_err(|e| e.context(path.display()))?;
        Ok(Sample::new(image, *label, file.clone()))
    }

    fn targets(&self) -> Result<Vec<Option<i64>>> {
        Ok(self.rows.iter().map(|r| r.1).collect())
    }
}

fn decode_png(path: &std::path::Path) -> Result<Image> {
    let mut decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path)?));
    decoder.set_transformations(png::Transformations::EXPAND);
    // `png`'s errors have no `From` conversion: `from_error` (or `Context::context`) keeps
    // them, with their causes.
    let mut reader = decoder.read_info().map_err(PluginError::from_error)?;
    let mut buffer = vec![0; reader.output_buffer_size()];
    let frame = reader
        .next_frame(&mut buffer)
        .map_err(PluginError::from_error)?;
    buffer.truncate(frame.buffer_size());
    let channels = frame.color_type.samples() as u32;
    match frame.bit_depth {
        png::BitDepth::Sixteen => {
            let values = buffer
                .chunks_exact(2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .collect();
            Image::from_u16(frame.width, frame.height, channels, values)
        }
        _ => Image::from_u8(frame.width, frame.height, channels, buffer),
    }
}

fn plugin() -> Plugin {
    Plugin::new("example-png-folder", env!("CARGO_PKG_VERSION")).dataset(
        "PngFolder",
        "PNG images in `root`, listed with labels in `root/labels.csv` (file,label)",
        PngFolder::open,
    )
}

ssl_plugin_api::export_plugin!(plugin);
