//! `ssl-host dump`: writes samples exactly as a dataset loads them (before any transform) as
//! `<index>.png` and `labels.csv` (`index,id,label`).

use super::embed::csv_field;
use crate::cli::Cli;
use crate::registry::Registry;
use anyhow::{bail, Context, Result};
use ssl_plugin_api::{Image, Pixels};
use std::io::Write;
use std::path::Path;

pub fn run(registry: &Registry, cli: &mut Cli) -> Result<()> {
    let out = cli.take("out").context("dump needs --out=DIR")?;
    let limit = match cli.take("limit") {
        Some(l) => Some(
            l.parse::<usize>()
                .with_context(|| format!("--limit={l}: expected a whole number"))?,
        ),
        None => None,
    };
    let args = super::DatasetArgs::take(cli, "dump")?;
    let dataset_name = args.name.clone();
    let dataset = args.open(registry, false)?;
    let count = limit.unwrap_or(dataset.len()).min(dataset.len());
    let out = Path::new(&out);
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let labels_path = out.join("labels.csv");
    let mut labels = String::from("index,id,label\n");
    for index in 0..count {
        let sample = dataset
            .get(index)
            .with_context(|| format!("{dataset_name} sample {index}"))?;
        let path = out.join(format!("{index}.png"));
        write_png(sample.image(), &path).with_context(|| format!("writing {}", path.display()))?;
        let label = sample.label().map(|l| l.to_string()).unwrap_or_default();
        labels.push_str(&format!("{index},{},{label}\n", csv_field(sample.id())));
    }
    let mut file = std::fs::File::create(&labels_path)
        .with_context(|| format!("creating {}", labels_path.display()))?;
    file.write_all(labels.as_bytes())?;
    println!(
        "wrote {count} samples of {dataset_name} to {}",
        out.display()
    );
    Ok(())
}

/// Writes `image` as an 8-bit PNG ([`encode_png`]).
pub fn write_png(image: &Image, path: &Path) -> Result<()> {
    std::fs::write(path, encode_png(image)?)?;
    Ok(())
}

/// 8-bit PNG of the image's channels (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA). 16-bit values keep
/// their top 8 bits; floats are read as [0, 1].
pub fn encode_png(image: &Image) -> Result<Vec<u8>> {
    let color = match image.channels() {
        1 => png::ColorType::Grayscale,
        2 => png::ColorType::GrayscaleAlpha,
        3 => png::ColorType::Rgb,
        4 => png::ColorType::Rgba,
        c => bail!("cannot write a {c}-channel image as PNG"),
    };
    let bytes: Vec<u8> = match image.pixels() {
        Pixels::U8(v) => v.to_vec(),
        Pixels::U16(v) => v.iter().map(|&x| (x >> 8) as u8).collect(),
        Pixels::F32(v) => v
            .iter()
            .map(|&x| (x.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect(),
    };
    let mut encoded = Vec::new();
    let mut encoder = png::Encoder::new(&mut encoded, image.width(), image.height());
    encoder.set_color(color);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header()?.write_image_data(&bytes)?;
    Ok(encoded)
}
