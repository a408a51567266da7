//! `ssl-host preview --model=NAME [--name=value]... --out=FILE.png [--count=8]`: a grid with
//! one row per sample of the first SSL training batch of epoch 1: the image as the dataset
//! loads it (resized to the first view's size), then its augmented views (every view group, in
//! order) exactly as training makes them, through the same loader, with either `augment_on`
//! (device augmentation runs on the CPU here). A header row names the columns; small images
//! (CIFAR, Shapes) are enlarged, nearest neighbour, to at least 128 pixels per cell.

use crate::cli::Cli;
use crate::commands::dump::encode_png;
use crate::config::{RunConfig, TransformSpec};
use crate::pipeline::Pipeline;
use crate::registry::Registry;
use crate::split::split_dataset;
use crate::tasks::ssl::{ssl_dataset, training_sampler, training_views};
use anyhow::{anyhow, bail, Context, Result};
use ssl_plugin_api::tch::{Device, Kind, Tensor};
use ssl_plugin_api::{Image, Pixels};
use std::path::Path;
use std::sync::Arc;

/// Gap between tiles, in pixels (white).
const GAP: usize = 4;
/// Cells smaller than this are enlarged by a whole factor (nearest neighbour).
const MIN_CELL: usize = 128;

pub fn run(registry: &Registry, cli: &mut Cli) -> Result<()> {
    let out = cli
        .take("out")
        .context("preview needs --out=FILE.png (where the grid goes)")?;
    let count = match cli.take("count") {
        Some(c) => c
            .parse::<usize>()
            .ok()
            .filter(|&c| c > 0)
            .ok_or_else(|| anyhow!("--count={c}: expected a whole number of at least 1"))?,
        None => 8,
    };
    let model = cli.take("model").context(
        "preview needs --model=NAME (a config in configs/, a plugin's, or a .toml path)",
    )?;
    let overrides = std::mem::take(&mut cli.options);
    let config = RunConfig::resolve(&model, &overrides, registry)?;
    let (name, dataset) = ssl_dataset(registry, &config)?;
    let (train, _) = split_dataset(&dataset, config.val_split, config.random_seed)?;
    // The first batch of epoch 1 as training orders it (whole, even when drop_last would drop
    // a short one), its first `count` samples.
    let whole = RunConfig {
        drop_last: false,
        ..config.clone()
    };
    let mut order = training_sampler(&whole, &dataset, train)?
        .batches(0)
        .concat();
    order.truncate(count);
    if order.is_empty() {
        bail!("the SSL training split of `{name}` is empty: nothing to preview");
    }
    let source = training_views(registry, &config, Arc::clone(&dataset), &name, Device::Cpu)?;
    let batch = source.collate(&order, 0)?;
    let views = batch.to_device(Device::Cpu)?;
    let mut rows: Vec<Vec<Tile>> = Vec::new();
    for (row_index, &index) in batch.indices.iter().enumerate() {
        let sample = dataset
            .get(index)
            .with_context(|| format!("{name} sample {index}"))?;
        let first = views[0].get(row_index as i64);
        let (h, w) = (first.size()[1], first.size()[2]);
        let resize = Pipeline::build(
            registry,
            &[TransformSpec {
                name: "Resize".into(),
                params: toml::Table::from_iter([(
                    "size".to_string(),
                    toml::Value::Array(vec![toml::Value::Integer(h), toml::Value::Integer(w)]),
                )]),
            }],
            "preview",
        )?;
        let mut row = Vec::with_capacity(views.len() + 1);
        row.push(Tile::from_image(&resize.apply(sample.image().clone(), 0)?)?);
        for view in &views {
            row.push(Tile::from_tensor(&view.get(row_index as i64))?);
        }
        rows.push(row);
    }
    let labels: Vec<String> = std::iter::once("image".to_string())
        .chain((1..=views.len()).map(|v| format!("view {v}")))
        .collect();
    let grid = compose(&labels, &rows)?;
    let out = Path::new(&out);
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Under a temporary name: a failure never leaves a truncated PNG in place of a preview.
    let png = encode_png(&grid).with_context(|| format!("writing {}", out.display()))?;
    crate::atomic_file::write_atomic(out, &png)?;
    println!(
        "wrote {} ({} samples of {name}, augmented on the {}: the image, then its {} views per row)",
        out.display(),
        rows.len(),
        config.augment_on,
        source.views()
    );
    Ok(())
}

/// An RGB 8-bit tile.
struct Tile {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl Tile {
    /// A `[C, H, W]` float tensor in [0, 1].
    fn from_tensor(t: &Tensor) -> Result<Tile> {
        let size = t.size();
        let [c, h, w] = size[..] else {
            bail!("cannot show a view of shape {size:?}");
        };
        let hwc = t
            .to_kind(Kind::Float)
            .clamp(0.0, 1.0)
            .permute([1, 2, 0])
            .contiguous()
            .view([-1]);
        let values = Vec::<f32>::try_from(&hwc)?;
        let image = Image::from_f32(w as u32, h as u32, c as u32, values)?;
        Tile::from_image(&image)
    }

    /// The tile enlarged `factor` times, nearest neighbour.
    fn enlarged(&self, factor: usize) -> Tile {
        if factor <= 1 {
            return Tile {
                width: self.width,
                height: self.height,
                rgb: self.rgb.clone(),
            };
        }
        let (width, height) = (self.width * factor, self.height * factor);
        let mut rgb = Vec::with_capacity(width * height * 3);
        for y in 0..height {
            let row = &self.rgb[(y / factor) * self.width * 3..][..self.width * 3];
            for x in 0..width {
                rgb.extend_from_slice(&row[(x / factor) * 3..][..3]);
            }
        }
        Tile { width, height, rgb }
    }

    fn from_image(image: &Image) -> Result<Tile> {
        let c = image.channels() as usize;
        let values: Vec<u8> = match image.pixels() {
            Pixels::U8(v) => v.to_vec(),
            Pixels::U16(v) => v.iter().map(|&x| (x >> 8) as u8).collect(),
            Pixels::F32(v) => v
                .iter()
                .map(|&x| (x.clamp(0.0, 1.0) * 255.0).round() as u8)
                .collect(),
        };
        let rgb = match c {
            1 => values.iter().flat_map(|&g| [g, g, g]).collect(),
            3 => values,
            c if c > 3 => values
                .chunks_exact(c)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect(),
            c => bail!("cannot show a {c}-channel image"),
        };
        Ok(Tile {
            width: image.width() as usize,
            height: image.height() as usize,
            rgb,
        })
    }
}

/// A header row of `labels` over rows of tiles, on a white background with gaps; cells
/// smaller than [`MIN_CELL`] are enlarged by a whole factor.
fn compose(labels: &[String], rows: &[Vec<Tile>]) -> Result<Image> {
    let cell_w = rows.iter().flatten().map(|t| t.width).max().unwrap_or(0);
    let cell_h = rows.iter().flatten().map(|t| t.height).max().unwrap_or(0);
    let factor = MIN_CELL.div_ceil(cell_w.min(cell_h).max(1)).max(1);
    let (cell_w, cell_h) = (cell_w * factor, cell_h * factor);
    let columns = rows
        .iter()
        .map(Vec::len)
        .max()
        .unwrap_or(0)
        .max(labels.len());
    let header = font::HEIGHT * font::SCALE + 2 * GAP;
    let width = columns * cell_w + (columns + 1) * GAP;
    let height = header + rows.len() * cell_h + (rows.len() + 1) * GAP;
    let mut canvas = vec![255u8; width * height * 3];
    for (c, label) in labels.iter().enumerate() {
        let x0 = GAP + c * (cell_w + GAP);
        font::draw(&mut canvas, width, x0, GAP, label);
    }
    for (r, row) in rows.iter().enumerate() {
        for (c, tile) in row.iter().enumerate() {
            let tile = tile.enlarged(factor);
            let x0 = GAP + c * (cell_w + GAP);
            let y0 = header + GAP + r * (cell_h + GAP);
            for y in 0..tile.height {
                let src = &tile.rgb[y * tile.width * 3..(y + 1) * tile.width * 3];
                let start = ((y0 + y) * width + x0) * 3;
                canvas[start..start + src.len()].copy_from_slice(src);
            }
        }
    }
    Ok(Image::from_u8(width as u32, height as u32, 3, canvas)?)
}

/// A 5 × 7 pixel font for the header labels (lower-case letters, digits, space), drawn 2×.
mod font {
    /// Glyph height in font pixels.
    pub const HEIGHT: usize = 7;
    /// Screen pixels per font pixel.
    pub const SCALE: usize = 2;

    /// Rows of a glyph, 5 bits each (bit 4 = leftmost column); unknown characters are blank.
    fn glyph(c: char) -> [u8; 7] {
        match c {
            'a' => [0, 0, 14, 1, 15, 17, 15],
            'e' => [0, 0, 14, 17, 31, 16, 14],
            'g' => [0, 15, 17, 17, 15, 1, 14],
            'i' => [4, 0, 12, 4, 4, 4, 14],
            'm' => [0, 0, 26, 21, 21, 17, 17],
            'v' => [0, 0, 17, 17, 17, 10, 4],
            'w' => [0, 0, 17, 17, 21, 21, 10],
            '0' => [14, 17, 19, 21, 25, 17, 14],
            '1' => [4, 12, 4, 4, 4, 4, 14],
            '2' => [14, 17, 1, 2, 4, 8, 31],
            '3' => [31, 2, 4, 2, 1, 17, 14],
            '4' => [2, 6, 10, 18, 31, 2, 2],
            '5' => [31, 16, 30, 1, 1, 17, 14],
            '6' => [6, 8, 16, 30, 17, 17, 14],
            '7' => [31, 1, 2, 4, 8, 8, 8],
            '8' => [14, 17, 17, 14, 17, 17, 14],
            '9' => [14, 17, 17, 15, 1, 2, 12],
            _ => [0; 7],
        }
    }

    /// Draws `text` in black with its top-left corner at (`x0`, `y0`) of an RGB canvas
    /// `width` pixels wide (clipped at the right edge).
    pub fn draw(canvas: &mut [u8], width: usize, x0: usize, y0: usize, text: &str) {
        for (k, c) in text.chars().enumerate() {
            let rows = glyph(c);
            for (gy, bits) in rows.iter().enumerate() {
                for gx in 0..5 {
                    if bits & (1 << (4 - gx)) == 0 {
                        continue;
                    }
                    for dy in 0..SCALE {
                        for dx in 0..SCALE {
                            let x = x0 + (k * 6 + gx) * SCALE + dx;
                            let y = y0 + gy * SCALE + dy;
                            if x < width {
                                let at = (y * width + x) * 3;
                                if at + 3 <= canvas.len() {
                                    canvas[at..at + 3].fill(0);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compose_enlarges_small_cells_and_writes_a_header() {
        let tile = |v: u8| Tile {
            width: 2,
            height: 2,
            rgb: vec![v; 12],
        };
        let labels: Vec<String> = ["image", "view 1", "view 2"].map(String::from).to_vec();
        let grid = compose(&labels, &[vec![tile(0), tile(100), tile(200)]]).unwrap();
        let cell = MIN_CELL; // 2 px enlarged 64 times
        let header = font::HEIGHT * font::SCALE + 2 * GAP;
        assert_eq!(
            (grid.width() as usize, grid.height() as usize),
            (3 * cell + 4 * GAP, header + cell + 2 * GAP)
        );
        let Pixels::U8(p) = grid.pixels() else {
            panic!("u8")
        };
        let at = |x: usize, y: usize| p[(y * grid.width() as usize + x) * 3];
        assert_eq!(at(0, 0), 255);
        let top = header + GAP;
        assert_eq!(at(GAP, top), 0);
        assert_eq!(
            at(GAP + cell - 1, top + cell - 1),
            0,
            "enlarged to the whole cell"
        );
        assert_eq!(at(GAP + cell + GAP, top + 1), 100);
        assert_eq!(at(GAP + 2 * (cell + GAP), top), 200);
        // The header has ink (the labels) and only in its band.
        let header_ink = (0..header)
            .flat_map(|y| (0..grid.width() as usize).map(move |x| (x, y)))
            .filter(|&(x, y)| at(x, y) == 0)
            .count();
        assert!(header_ink > 50, "{header_ink}");
    }
}
