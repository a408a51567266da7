//! `ssl-host pack` and the `Packed` dataset end to end: packed samples are the source's
//! (pixels, labels, ids, groups, declaration), packs are deterministic, an interrupted pack
//! leaves no index listing a partial shard, training from a packed folder equals training
//! from its source, and Python's `webdataset` reads our shards as we read its.

use e2e::*;
use ssl_builtin_datasets::testdata::cxr::{write_covid, write_image_folder};
use ssl_plugin_api::host::{builtin_plugins, DatasetFactory, DatasetHandle};
use ssl_plugin_api::{Image, Params, Pixels, Transform};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn factory(name: &str) -> DatasetFactory {
    ssl_builtin_datasets::link();
    builtin_plugins()
        .unwrap()
        .into_iter()
        .flat_map(|p| p.datasets)
        .find(|d| d.name() == name)
        .unwrap_or_else(|| panic!("no built-in dataset {name}"))
}

fn open(name: &str, params: serde_json::Value) -> DatasetHandle {
    factory(name)
        .create(&Params::from_value(params).unwrap())
        .unwrap()
}

fn packed(dir: &Path) -> DatasetHandle {
    open("Packed", serde_json::json!({ "root": dir }))
}

fn pack(dataset: &str, root: &Path, out: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "pack".to_string(),
        format!("--dataset={dataset}"),
        format!("--local_dataset={}", root.display()),
        format!("--output={}", out.display()),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ssl_host(&refs)
}

/// The pipelines' `Resize` to a longer side of `side`, back to the image's bit depth: what
/// `--max_side` promises.
fn resized(image: &Image, side: u32) -> Image {
    let (w, h) = (image.width(), image.height());
    let long = w.max(h);
    if long <= side {
        return image.clone();
    }
    let s = |x: u32| ((x as f64 * side as f64 / long as f64).round() as u32).max(1);
    let (ow, oh) = (s(w), s(h));
    let resize = ssl_builtin_transforms::resize::Resize::from_params(
        &Params::from_value(serde_json::json!({ "size": [oh, ow] })).unwrap(),
    )
    .unwrap();
    let out = resize.apply(image.clone(), 0).unwrap();
    let Pixels::F32(v) = out.pixels() else {
        panic!("Resize gives floats")
    };
    match image.pixels() {
        Pixels::U16(_) => Image::from_u16(
            ow,
            oh,
            image.channels(),
            v.iter().map(|&x| (x * 65535.0).round() as u16).collect(),
        )
        .unwrap(),
        _ => Image::from_u8(
            ow,
            oh,
            image.channels(),
            v.iter().map(|&x| (x * 255.0).round() as u8).collect(),
        )
        .unwrap(),
    }
}

/// Every sample of `packed` is `source`'s (resized to `max_side`), with its label and id; the
/// groups, class count and declaration agree.
fn assert_same(source: &DatasetHandle, packed: &DatasetHandle, max_side: Option<u32>, what: &str) {
    assert_eq!(packed.len(), source.len(), "{what}");
    assert_eq!(packed.num_classes(), source.num_classes(), "{what}");
    assert_eq!(packed.groups().unwrap(), source.groups().unwrap(), "{what}");
    for i in 0..source.len() {
        let (s, p) = (source.get(i).unwrap(), packed.get(i).unwrap());
        let expected = match max_side {
            Some(side) => resized(s.image(), side),
            None => s.image().clone(),
        };
        assert_eq!(p.image(), &expected, "{what}: sample {i} ({})", s.id());
        assert_eq!(
            (p.label(), p.id()),
            (s.label(), s.id()),
            "{what}: sample {i}"
        );
    }
}

fn params(root: &Path) -> Params {
    Params::from_value(serde_json::json!({ "root": root, "split": "train" })).unwrap()
}

/// 16-bit grey PNGs in class folders (ImageFolder reads them as 16-bit RGB).
fn write_png16_folder(root: &Path) {
    for (c, class) in ["a", "b"].iter().enumerate() {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for k in 0..3u32 {
            let (w, h) = (20 + k, 14);
            let values: Vec<u8> = (0..w * h)
                .flat_map(|i| (((i * 997 + k * 131 + c as u32 * 7) * 13) as u16).to_be_bytes())
                .collect();
            let file = std::fs::File::create(root.join(class).join(format!("{k}.png"))).unwrap();
            let mut encoder = png::Encoder::new(file, w, h);
            encoder.set_color(png::ColorType::Grayscale);
            encoder.set_depth(png::BitDepth::Sixteen);
            encoder
                .write_header()
                .unwrap()
                .write_image_data(&values)
                .unwrap();
        }
    }
}

#[test]
fn packed_samples_are_the_sources_with_and_without_max_side() {
    let tmp = tempfile::tempdir().unwrap();
    // Grey, groups (subjects), images of 40 px.
    let covid = tmp.path().join("covid");
    write_covid(&covid, 5, 2, 40).unwrap();
    // RGB, PNG and JPEG files.
    let folder = tmp.path().join("folder");
    write_image_folder(&folder, &["cat", "dog"], 3, 30).unwrap();
    // 16 bit.
    let deep = tmp.path().join("deep");
    write_png16_folder(&deep);
    for (name, root) in [
        ("CovidDataset", &covid),
        ("ImageFolder", &folder),
        ("ImageFolder", &deep),
    ] {
        let source = open(name, serde_json::json!({ "root": root }));
        for (encoding, max_side) in [("npy", None), ("png", None), ("npy", Some(17u32))] {
            let out = tmp.path().join(format!(
                "{}-{encoding}-{max_side:?}",
                root.file_name().unwrap().to_str().unwrap()
            ));
            let mut extra = vec![format!("--encoding={encoding}")];
            if let Some(side) = max_side {
                extra.push(format!("--max_side={side}"));
            }
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            pack(name, root, &out, &extra).assert_ok();
            let what = format!("{name} at {} ({encoding}, {max_side:?})", root.display());
            assert_same(&source, &packed(&out), max_side, &what);
            // What the source declares, the packed copy declares.
            assert_eq!(
                factory("Packed").info_for(&params(&out)).unwrap(),
                factory(name).info_for(&params(root)).unwrap(),
                "{what}"
            );
        }
    }
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("deep-npy-None/index.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(index["bit_depth"], 16);
    assert_eq!(index["channels"], 3);
    assert_eq!(index["source"]["dataset"], "ImageFolder");
    let covid_index =
        std::fs::read_to_string(tmp.path().join("covid-npy-None/index.json")).unwrap();
    assert!(
        covid_index.contains("\"image_kind\": \"grey\""),
        "{covid_index}"
    );
}

fn folder_bytes(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn packs_are_byte_identical_and_an_interrupted_pack_lists_no_partial_shard() {
    let tmp = tempfile::tempdir().unwrap();
    // 64 px RGB Shapes: 12 kB a sample, 3 shards of about 1 MB.
    let shapes = [
        "--num_samples=200",
        "--image_size=64",
        "--shard_size=1",
        "--encoding=npy",
    ];
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let mut one_thread = shapes.to_vec();
    one_thread.push("--num_workers=1");
    pack("Shapes", tmp.path(), &a, &shapes).assert_ok();
    pack("Shapes", tmp.path(), &b, &one_thread).assert_ok();
    let (fa, fb) = (folder_bytes(&a), folder_bytes(&b));
    assert!(fa.contains_key("shard-000002.tar"), "{:?}", fa.keys());
    assert_eq!(fa.keys().collect::<Vec<_>>(), fb.keys().collect::<Vec<_>>());
    for (name, bytes) in &fa {
        assert!(
            bytes == &fb[name],
            "two packs of the same input differ in {name}"
        );
    }
    let source = open(
        "Shapes",
        serde_json::json!({ "num_samples": 200, "image_size": 64 }),
    );
    assert_same(&source, &packed(&a), None, "Shapes");

    // An image folder with an unreadable image after the first shard: the pack stops naming
    // it, and the index of the pack before it is gone, so no index lists a shard of the
    // interrupted pack.
    let folder = tmp.path().join("folder");
    write_image_folder(&folder, &["a", "b"], 40, 200).unwrap();
    let out = tmp.path().join("packed");
    let args = ["--shard_size=1", "--num_workers=1"];
    pack("ImageFolder", &folder, &out, &args).assert_ok();
    assert!(out.join("index.json").exists());
    std::fs::write(folder.join("b/img4.png"), b"not a png").unwrap();
    let run = pack("ImageFolder", &folder, &out, &args);
    run.assert_clear_error(&["img4.png", "--skip_unreadable_images=true"]);
    assert!(
        !out.join("index.json").exists(),
        "the old index.json lists replaced shards"
    );
    assert!(
        out.join("shard-000000.tar").exists(),
        "shards before the bad image are written"
    );
    let leftovers: Vec<String> = folder_bytes(&out)
        .into_keys()
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Nor is the folder read as foreign shards (new and stale ones mixed).
    let err = factory("Packed")
        .create(&params(&out))
        .err()
        .expect("an interrupted pack is not a dataset")
        .causes()
        .collect::<Vec<_>>()
        .join(": ");
    assert!(
        err.contains("interrupted") && err.contains("index.json"),
        "{err}"
    );

    // Skipping: the bad image is counted, named in the warning, and every other sample packed.
    let run = pack(
        "ImageFolder",
        &folder,
        &out,
        &["--shard_size=1", "--skip_unreadable_images=true"],
    );
    run.assert_ok();
    assert!(
        run.stderr.contains("skipped 1 unreadable") && run.stderr.contains("img4.png"),
        "{}",
        run.stderr
    );
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["skipped"], 1);
    assert_eq!(index["samples"], 79);
    assert_eq!(packed(&out).len(), 79);
}

#[test]
fn training_from_a_packed_folder_equals_training_from_its_source() {
    let tmp = tempfile::tempdir().unwrap();
    let packed_dir = tmp.path().join("shapes");
    pack(
        "Shapes",
        tmp.path(),
        &packed_dir,
        &[
            "--num_samples=96",
            "--image_size=32",
            "--texture_strength=0.3",
            "--noise=0.3",
        ],
    )
    .assert_ok();
    let train = |out: &Path, data: &[String]| {
        let mut args = vec![
            "--model=ShapesSimCLR".to_string(),
            format!("--output_dir={}", out.display()),
            "--num_epochs=2".into(),
            "--ssl_training_batch_size=16".into(),
            "--linear_head_batch_size=16".into(),
            "--ssl_encoder=resnet18".into(),
            "--is_debug_model=true".into(),
            "--num_workers=2".into(),
            "--device=cpu".into(),
        ];
        args.extend_from_slice(data);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        ssl_host(&refs).assert_ok();
        metric_rows(out)
    };
    let from_source = train(
        &tmp.path().join("source-run"),
        &[
            // ShapesBYOL's texture_strength and noise (0.3) stay as the config has them.
            "--ssl_dataset_params.num_samples=96".into(),
            "--ssl_dataset_params.image_size=32".into(),
            "--linear_head_dataset_params.num_samples=96".into(),
            "--linear_head_dataset_params.image_size=32".into(),
        ],
    );
    let from_packed = train(
        &tmp.path().join("packed-run"),
        &[
            "--ssl_training_dataset_name=Packed".into(),
            "--linear_head_dataset_name=Packed".into(),
            format!("--local_dataset={}", packed_dir.display()),
        ],
    );
    assert!(from_source.len() > 4, "{from_source:?}");
    assert_eq!(from_packed, from_source);
}

fn python() -> PathBuf {
    repo_root().join(".deps/torch-venv/bin/python")
}

fn run_python(script: &str, args: &[&Path]) {
    let output = Command::new(python())
        .args(["-W", "ignore", "-c", script])
        .args(args)
        .output()
        .expect("the venv's python runs (scripts/setup-libtorch.sh makes it)");
    assert!(
        output.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn raw_bytes(image: &Image) -> Vec<u8> {
    match image.pixels() {
        Pixels::U8(v) => v.to_vec(),
        Pixels::U16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Pixels::F32(_) => panic!("float image"),
    }
}

/// Reads a shard folder with Python's webdataset; writes, per sample, `<key>.raw` (pixels,
/// C order, little-endian), and `samples.json` ([key, id, label, shape] per sample).
const READ_WITH_WEBDATASET: &str = r#"
import sys, os, io, json, glob
import numpy as np, webdataset as wds
from PIL import Image
src, out = sys.argv[1], sys.argv[2]
urls = sorted(glob.glob(os.path.join(src, "*.tar")))
rows = []
for s in wds.WebDataset(urls, shardshuffle=False).decode():
    if "npy" in s:
        a = s["npy"]
    else:
        a = np.array(Image.open(io.BytesIO(s["png"])))
    a = np.ascontiguousarray(a)
    a.astype(a.dtype.newbyteorder("<")).tofile(os.path.join(out, s["__key__"] + ".raw"))
    rows.append([s["__key__"], s["json"]["id"], s.get("cls"), list(a.shape)])
json.dump(rows, open(os.path.join(out, "samples.json"), "w"))
"#;

/// Writes shards with webdataset's ShardWriter: 7 grey 8-bit PNGs, 6 RGB `.npy`, labels,
/// ids and groups; plus the expected pixels as `<key>.raw`.
const WRITE_WITH_WEBDATASET: &str = r#"
import sys, os, io
import numpy as np, webdataset as wds
from PIL import Image
out, raw = sys.argv[1], sys.argv[2]
with wds.ShardWriter(os.path.join(out, "wds-%06d.tar"), maxcount=5) as sink:
    for i in range(13):
        rng = np.random.default_rng(i)
        key = "sample%04d" % i
        sample = {"__key__": key, "cls": i % 3, "json": {"id": "img/%d" % i, "group": "p%d" % (i // 4)}}
        if i < 7:
            a = rng.integers(0, 256, (9 + i, 11), dtype=np.uint8)
            buf = io.BytesIO(); Image.fromarray(a).save(buf, format="PNG")
            sample["png"] = buf.getvalue()
        else:
            a = rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)
            sample["npy"] = a
        a.tofile(os.path.join(raw, key + ".raw"))
        sink.write(sample)
"#;

#[test]
fn python_webdataset_reads_our_shards_and_we_read_its() {
    let tmp = tempfile::tempdir().unwrap();
    let covid = tmp.path().join("covid");
    write_covid(&covid, 4, 2, 24).unwrap();
    let source = open("CovidDataset", serde_json::json!({ "root": covid }));
    for encoding in ["npy", "png"] {
        let out = tmp.path().join(format!("packed-{encoding}"));
        pack(
            "CovidDataset",
            &covid,
            &out,
            &[&format!("--encoding={encoding}")],
        )
        .assert_ok();
        let read = tmp.path().join(format!("read-{encoding}"));
        std::fs::create_dir_all(&read).unwrap();
        run_python(READ_WITH_WEBDATASET, &[&out, &read]);
        let rows: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(read.join("samples.json")).unwrap())
                .unwrap();
        assert_eq!(rows.len(), source.len());
        for (i, row) in rows.iter().enumerate() {
            let s = source.get(i).unwrap();
            let key = row[0].as_str().unwrap();
            assert_eq!(key, format!("{i:09}"));
            assert_eq!(row[1], s.id(), "{encoding} {key}");
            assert_eq!(row[2].as_i64(), s.label(), "{encoding} {key}");
            let shape = serde_json::json!([s.image().height(), s.image().width()]);
            assert_eq!(row[3], shape, "{encoding} {key}: grey stays one channel");
            let pixels = std::fs::read(read.join(format!("{key}.raw"))).unwrap();
            assert!(
                pixels == raw_bytes(s.image()),
                "{encoding} {key}: pixels differ"
            );
        }
    }

    // Shards written by webdataset's ShardWriter, without any index.
    let shards = tmp.path().join("wds");
    let raw = tmp.path().join("wds-raw");
    std::fs::create_dir_all(&shards).unwrap();
    std::fs::create_dir_all(&raw).unwrap();
    run_python(WRITE_WITH_WEBDATASET, &[&shards, &raw]);
    let dataset = packed(&shards);
    assert_eq!(dataset.len(), 13);
    assert_eq!(dataset.num_classes(), Some(3));
    let groups = dataset.groups().unwrap().expect("groups from .json");
    assert_eq!(groups.len(), 13);
    for (i, group) in groups.iter().enumerate() {
        let s = dataset.get(i).unwrap();
        let key = format!("sample{i:04}");
        assert_eq!(s.id(), format!("img/{i}"));
        assert_eq!(s.label(), Some(i as i64 % 3));
        assert_eq!(group, &format!("p{}", i / 4));
        let expected = std::fs::read(raw.join(format!("{key}.raw"))).unwrap();
        assert!(raw_bytes(s.image()) == expected, "{key}: pixels differ");
        assert_eq!(s.image().channels(), if i < 7 { 1 } else { 3 }, "{key}");
    }
    assert!(
        shards.join("index.json").exists(),
        "the index is cached beside the shards"
    );
    // A second open reads the cached index and gives the same.
    assert_eq!(packed(&shards).get(12).unwrap().id(), "img/12");
}

/// The figures of docs/datasets-at-scale.md ("The encoding, measured"): NIH-like 1024 px grey PNGs packed at
/// `--max_side=512` as `.npy` and as `.png`; bytes per sample and decode time per sample
/// through `Packed`, next to decoding the source PNGs. Run with
/// `cargo test -p e2e --test packed -- --ignored --nocapture measure`.
#[test]
#[ignore = "a measurement, not a check"]
fn measure_encodings_on_1024_px_grey_pngs() {
    use std::time::Instant;
    let tmp = tempfile::tempdir().unwrap();
    let nih = tmp.path().join("nih");
    let count = 48;
    ssl_builtin_datasets::testdata::cxr::write_nih(&nih, count, 1024).unwrap();
    let time_per_sample = |dataset: &DatasetHandle| {
        let start = Instant::now();
        for _ in 0..3 {
            for i in 0..dataset.len() {
                dataset.get(i).unwrap();
            }
        }
        start.elapsed().as_secs_f64() * 1000.0 / (3 * dataset.len()) as f64
    };
    let source = open("NIHCXR", serde_json::json!({ "root": nih }));
    let png_bytes: u64 = walk_bytes(&nih, "png");
    println!(
        "source PNG 1024 px: {:.0} bytes/sample, {:.2} ms/sample to decode",
        png_bytes as f64 / count as f64,
        time_per_sample(&source)
    );
    for encoding in ["npy", "png"] {
        let out = tmp.path().join(encoding);
        pack(
            "NIHCXR",
            &nih,
            &out,
            &[&format!("--encoding={encoding}"), "--max_side=512"],
        )
        .assert_ok();
        let bytes = walk_bytes(&out, "tar");
        let dataset = packed(&out);
        println!(
            "packed {encoding} 512 px: {:.0} bytes/sample, {:.3} ms/sample to read",
            bytes as f64 / count as f64,
            time_per_sample(&dataset)
        );
    }
}

fn walk_bytes(dir: &Path, ext: &str) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            total += walk_bytes(&path, ext);
        } else if path.extension().is_some_and(|e| e == ext) {
            total += std::fs::metadata(&path).unwrap().len();
        }
    }
    total
}
