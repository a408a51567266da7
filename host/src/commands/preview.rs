//! `ssl-host preview --model=NAME [--name=value]... --out=FILE.png [--count=8]`: a grid with
//! one row per sample of the SSL training split: the image as the dataset loads it (resized to
//! the first view's size), then its augmented views (every view group, in order) exactly as
//! epoch 1 of training draws them.

use crate::cli::Cli;
use crate::commands::dump::encode_png;
use crate::config::{RunConfig, TransformSpec};
use crate::pipeline::Pipeline;
use crate::registry::Registry;
use crate::split::split_dataset;
use crate::tasks::ssl::{ssl_dataset, training_views};
use anyhow::{anyhow, bail, Context, Result};
use ssl_plugin_api::{Image, Pixels};
use std::path::Path;
use std::sync::Arc;

/// Gap between tiles, in pixels (white).
const GAP: usize = 4;

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
    let source = training_views(registry, &config, Arc::clone(&dataset), &name)?;
    let mut rows: Vec<Vec<Tile>> = Vec::new();
    for &index in train.iter().take(count) {
        let sample = dataset
            .get(index)
            .with_context(|| format!("{name} sample {index}"))?;
        // Epoch 0, as the loader draws them.
        let views = source
            .views_of(sample.image(), 0, index)
            .with_context(|| format!("{name} sample {index} ({})", sample.id()))?;
        let mut row = Vec::with_capacity(views.len() + 1);
        let (h, w) = (views[0].height(), views[0].width());
        let resize = Pipeline::build(
            registry,
            &[TransformSpec {
                name: "Resize".into(),
                params: toml::Table::from_iter([(
                    "size".to_string(),
                    toml::Value::Array(vec![
                        toml::Value::Integer(h as i64),
                        toml::Value::Integer(w as i64),
                    ]),
                )]),
            }],
            "preview",
        )?;
        row.push(Tile::from_image(&resize.apply(sample.image().clone(), 0)?)?);
        for view in &views {
            row.push(Tile::from_image(view)?);
        }
        rows.push(row);
    }
    if rows.is_empty() {
        bail!("the SSL training split of `{name}` is empty: nothing to preview");
    }
    let grid = compose(&rows)?;
    let out = Path::new(&out);
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Under a temporary name: a failure never leaves a truncated PNG in place of a preview.
    let png = encode_png(&grid).with_context(|| format!("writing {}", out.display()))?;
    crate::atomic_file::write_atomic(out, &png)?;
    println!(
        "wrote {} ({} samples of {name}: the image, then its {} views per row)",
        out.display(),
        rows.len(),
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

/// Rows of tiles on a white background with a gap between them.
fn compose(rows: &[Vec<Tile>]) -> Result<Image> {
    let cell_w = rows.iter().flatten().map(|t| t.width).max().unwrap_or(0);
    let cell_h = rows.iter().flatten().map(|t| t.height).max().unwrap_or(0);
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width = columns * cell_w + (columns + 1) * GAP;
    let height = rows.len() * cell_h + (rows.len() + 1) * GAP;
    let mut canvas = vec![255u8; width * height * 3];
    for (r, row) in rows.iter().enumerate() {
        for (c, tile) in row.iter().enumerate() {
            let x0 = GAP + c * (cell_w + GAP);
            let y0 = GAP + r * (cell_h + GAP);
            for y in 0..tile.height {
                let src = &tile.rgb[y * tile.width * 3..(y + 1) * tile.width * 3];
                let start = ((y0 + y) * width + x0) * 3;
                canvas[start..start + src.len()].copy_from_slice(src);
            }
        }
    }
    Ok(Image::from_u8(width as u32, height as u32, 3, canvas)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compose_places_tiles_with_gaps() {
        let tile = |v: u8| Tile {
            width: 2,
            height: 2,
            rgb: vec![v; 12],
        };
        let grid = compose(&[vec![tile(0), tile(100), tile(200)]]).unwrap();
        assert_eq!((grid.width(), grid.height()), (3 * 2 + 4 * 4, 2 + 2 * 4));
        let Pixels::U8(p) = grid.pixels() else {
            panic!("u8")
        };
        let at = |x: usize, y: usize| p[(y * grid.width() as usize + x) * 3];
        assert_eq!(at(0, 0), 255);
        assert_eq!(at(GAP, GAP), 0);
        assert_eq!(at(GAP + 2 + GAP, GAP + 1), 100);
        assert_eq!(at(GAP + 2 * (2 + GAP), GAP), 200);
    }
}
