//! Writes the benchmark data of `scripts/bench/augment` and `scripts/bench/gpu`: the same
//! on-disk layouts the datasets read, with image contents that cost what real ones cost to
//! decode.
//!
//! ```text
//! cargo run --release -p builtin-datasets --features testdata --example write_bench_data -- \
//!     --out target/bench-data --count 200 [--sets nih,rsna,cifar] [--size 1024] [--threads N]
//! ```
//!
//! - `OUT/nih/`: NIH ChestX-ray14 as Kaggle unpacks it (`Data_Entry_2017.csv` with NIH's
//!   header, `images_001/images/*.png`): `count` 8-bit grey PNGs of `size × size`.
//! - `OUT/rsna/`: RSNA Kaggle (`dataset.csv` with `subject,label`, `{subject}.dcm`): `count`
//!   JPEG-baseline, 8-bit MONOCHROME2 DICOMs of `size × size`, as the Kaggle files are.
//! - `OUT/cifar/`: CIFAR-10's binary layout (`cifar-10-batches-bin/`) with at least `count`
//!   training images (five batches of `ceil(count / 5)`), and a test batch of as many.
//!
//! The chest images are synthetic radiographs ([`chest_image`]): a body, two darker lungs,
//! ribs, spine, heart and a fine film grain, varied per image. Smooth regions plus grain
//! compress like real X-rays (about 2-3 bits per pixel; NIH's PNGs average ~350 KB at 1024
//! px), so decoding costs what it costs on the real data; pure noise or flat images would
//! not. Each set is written once into its folder; a folder that already exists is refused
//! (delete it to write again).

use ssl_builtin_datasets::testdata::cifar::write_cifar10_binary;
use ssl_builtin_datasets::testdata::cxr::{
    nih_image_name, write_png_gray8, write_rsna_csv, NIH_HEADER,
};
use ssl_builtin_datasets::testdata::dicom::{write_dicom, DicomSpec, TransferSyntax};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

const USAGE: &str = "usage: write_bench_data --out DIR --count N [--sets nih,rsna,cifar] \
[--size PIXELS (1024)] [--threads N (all cores)]";

/// The command line.
struct Args {
    out: PathBuf,
    count: usize,
    sets: Vec<String>,
    size: u32,
    threads: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut out = None;
    let mut count = None;
    let mut sets = vec!["nih".to_string(), "rsna".to_string(), "cifar".to_string()];
    let mut size = 1024u32;
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        if name == "--help" || name == "-h" {
            return Err(USAGE.to_string());
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value; {USAGE}"))
        };
        let number = |text: String, what: &str| {
            text.parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| {
                    format!("{name}: expected {what} (a positive integer), got `{text}`")
                })
        };
        match name.as_str() {
            "--out" => out = Some(PathBuf::from(value()?)),
            "--count" => count = Some(number(value()?, "the number of images")?),
            "--size" => {
                let n = number(value()?, "the image side in pixels")?;
                size = u32::try_from(n)
                    .ok()
                    .filter(|&s| (8..=65535).contains(&s))
                    .ok_or_else(|| format!("--size: expected 8..=65535 pixels, got {n}"))?;
            }
            "--threads" => threads = number(value()?, "the number of threads")?,
            "--sets" => {
                sets = value()?.split(',').map(|s| s.trim().to_string()).collect();
                if let Some(bad) = sets
                    .iter()
                    .find(|s| !matches!(s.as_str(), "nih" | "rsna" | "cifar"))
                {
                    return Err(format!(
                        "--sets: unknown set `{bad}`; expected a comma-separated list of nih, rsna, cifar"
                    ));
                }
            }
            _ => return Err(format!("unknown argument `{arg}`; {USAGE}")),
        }
    }
    Ok(Args {
        out: out.ok_or_else(|| format!("--out is required; {USAGE}"))?,
        count: count.ok_or_else(|| format!("--count is required; {USAGE}"))?,
        sets,
        size,
        threads,
    })
}

/// SplitMix64: the per-pixel hash of the grain and the per-image variations.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform number in `[lo, hi)` from stream `k` of `seed`.
fn uniform(seed: u64, k: u64, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * (mix(seed ^ mix(k)) >> 40) as f32 / (1u64 << 24) as f32
}

/// 1 inside the ellipse centred at `(cx, cy)` with radii `(rx, ry)`, 0 outside, with a soft
/// edge `soft` (in units of the radius).
fn ellipse(u: f32, v: f32, cx: f32, cy: f32, rx: f32, ry: f32, soft: f32) -> f32 {
    let d = (((u - cx) / rx).powi(2) + ((v - cy) / ry).powi(2)).sqrt();
    (1.0 - (d - 1.0 + soft) / (2.0 * soft)).clamp(0.0, 1.0)
}

/// A synthetic frontal chest radiograph `seed` of `size × size`, 8-bit grey, row-major: dark
/// background, a bright body, two darker lungs crossed by ribs, spine, heart, and a film
/// grain of ±2 levels. Position, sizes, rib phase and exposure vary with `seed`.
fn chest_image(seed: u64, size: u32) -> Vec<u8> {
    let s = size as f32;
    let shift_x = uniform(seed, 1, -0.04, 0.04);
    let shift_y = uniform(seed, 2, -0.03, 0.03);
    let lung_w = uniform(seed, 3, 0.13, 0.17);
    let lung_h = uniform(seed, 4, 0.25, 0.31);
    let rib_phase = uniform(seed, 5, 0.0, std::f32::consts::TAU);
    let ribs = uniform(seed, 6, 8.0, 11.0);
    let exposure = uniform(seed, 7, 0.85, 1.15);
    let heart = uniform(seed, 8, 0.09, 0.13);
    let mut out = Vec::with_capacity((size * size) as usize);
    for y in 0..size {
        let v = y as f32 / s - shift_y;
        for x in 0..size {
            let u = x as f32 / s - shift_x;
            let body = ellipse(u, v, 0.5, 0.6, 0.46, 0.62, 0.08);
            let lungs = ellipse(u, v, 0.32, 0.45, lung_w, lung_h, 0.25)
                + ellipse(u, v, 0.68, 0.45, lung_w, lung_h, 0.25);
            // Ribs: bands that curve down away from the spine, visible over the lungs.
            let curve = v * ribs + 3.0 * (u - 0.5).powi(2) * ribs;
            let rib = (curve * std::f32::consts::TAU + rib_phase)
                .sin()
                .max(0.0)
                .powi(3);
            let spine = (-((u - 0.5) / 0.035).powi(2)).exp() * body;
            let heart = ellipse(u, v, 0.56, 0.6, heart * 1.3, heart, 0.4);
            let mut value = 18.0 + 22.0 * v.clamp(0.0, 1.0) + 150.0 * body * exposure
                - 95.0 * lungs.min(1.0)
                + 28.0 * rib * lungs.min(1.0)
                + 45.0 * spine
                + 50.0 * heart * body;
            let h = mix(seed.wrapping_mul(0x1000_0001) ^ ((y as u64) << 32 | x as u64));
            value += (h % 5) as f32 - 2.0;
            out.push(value.clamp(0.0, 255.0) as u8);
        }
    }
    out
}

/// Runs `write(i)` for `i` in `0..count` on `threads` threads; the first error wins.
fn for_each_parallel(
    count: usize,
    threads: usize,
    write: impl Fn(usize) -> Result<(), String> + Sync,
) -> Result<(), String> {
    let next = AtomicUsize::new(0);
    let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.min(count).max(1))
            .map(|_| {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return Ok(());
                    }
                    if let Err(e) = write(i) {
                        next.store(count, Ordering::Relaxed);
                        return Err(e);
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err("a writer thread panicked".into()))
            })
            .collect()
    });
    results.into_iter().collect()
}

/// A folder for one set; refuses one that exists.
fn fresh_folder(out: &Path, name: &str) -> Result<PathBuf, String> {
    let dir = out.join(name);
    if dir.exists() {
        return Err(format!(
            "{}: already exists; delete it to write the {name} set again",
            dir.display()
        ));
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
    Ok(dir)
}

fn write_nih_set(args: &Args) -> Result<PathBuf, String> {
    let dir = fresh_folder(&args.out, "nih")?;
    let images = dir.join("images_001").join("images");
    for_each_parallel(args.count, args.threads, |i| {
        let path = images.join(nih_image_name(i));
        write_png_gray8(
            &path,
            args.size,
            args.size,
            &chest_image(i as u64, args.size),
        )
        .map_err(|e| format!("{}: {e}", path.display()))
    })?;
    let mut csv = format!("{NIH_HEADER}\n");
    for i in 0..args.count {
        let findings = ["No Finding", "Cardiomegaly|Effusion", "Pneumonia"][i % 3];
        let gender = if i % 2 == 0 { "M" } else { "F" };
        let _ = writeln!(
            csv,
            "{},{findings},{},{},{},{gender},PA,{},{},0.143,0.143",
            nih_image_name(i),
            i % 2,
            i / 2 + 1,
            40 + i % 30,
            args.size,
            args.size
        );
    }
    let path = dir.join("Data_Entry_2017.csv");
    std::fs::write(&path, csv).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(dir)
}

fn write_rsna_set(args: &Args) -> Result<PathBuf, String> {
    let dir = fresh_folder(&args.out, "rsna")?;
    let subjects: Vec<String> = (0..args.count).map(|i| format!("bench{i:06}")).collect();
    for_each_parallel(args.count, args.threads, |i| {
        let pixels = chest_image(1_000_000 + i as u64, args.size);
        let mut spec = DicomSpec::gray8(
            args.size,
            args.size,
            pixels.into_iter().map(i32::from).collect(),
        );
        spec.transfer_syntax = TransferSyntax::JpegBaseline;
        let path = dir.join(format!("{}.dcm", subjects[i]));
        write_dicom(&path, &spec).map_err(|e| format!("{}: {}", path.display(), e.message()))
    })?;
    // Both classes present; about a quarter positive, as in the Kaggle table.
    let rows: Vec<(&str, i64)> = subjects
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i64::from(i % 4 == 1)))
        .collect();
    write_rsna_csv(&dir, &rows).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

fn write_cifar_set(args: &Args) -> Result<PathBuf, String> {
    let dir = fresh_folder(&args.out, "cifar")?;
    write_cifar10_binary(&dir, args.count.div_ceil(5))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

/// Total size of the files under `dir`, in bytes.
fn folder_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => folder_bytes(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("write_bench_data: {message}");
            return ExitCode::from(2);
        }
    };
    for set in &args.sets {
        let started = Instant::now();
        let written = match set.as_str() {
            "nih" => write_nih_set(&args),
            "rsna" => write_rsna_set(&args),
            _ => write_cifar_set(&args),
        };
        match written {
            Ok(dir) => eprintln!(
                "write_bench_data: {set}: {} images in {} ({:.1} MB, {:.1} s)",
                if set == "cifar" {
                    5 * args.count.div_ceil(5)
                } else {
                    args.count
                },
                dir.display(),
                folder_bytes(&dir) as f64 / 1e6,
                started.elapsed().as_secs_f64()
            ),
            Err(message) => {
                eprintln!("write_bench_data: {set}: {message}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
