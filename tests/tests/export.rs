//! Using trained encoders outside ssl-host: `export-encoder` loads into torchvision's ResNet-18
//! (ImageNet and CIFAR stems) and gives the features `embed` gives; `embed` of chest X-ray
//! DICOMs as `.npy` read back by NumPy; `predict` against torchvision with the classifier head;
//! and the errors for bad checkpoints, outputs and datasets.

use e2e::*;
use ssl_builtin_datasets::testdata::cxr::{rgb_pattern, write_png_rgb8};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(args: &[String]) -> Run {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ssl_host(&refs)
}

/// The workspace venv's python (torch, torchvision, numpy, pillow).
fn python() -> PathBuf {
    let python = repo_root().join(".deps/torch-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: these tests compare with torchvision in the workspace venv (.deps/torch-venv with torch, torchvision, numpy, pillow)",
        python.display()
    );
    python
}

/// Runs `script` with the venv's python and `args`; its stdout.
fn run_python(script: &str, args: &[String]) -> String {
    let output = Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A reader of safetensors files independent of ssl-host (8-byte little-endian header length,
/// JSON header, raw data), checked against `safetensors.torch` when that is installed.
const READ_SAFETENSORS: &str = r#"
import sys, json, struct
import numpy as np, torch

KINDS = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64,
         "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}

def read_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        array = np.frombuffer(data[a:b], dtype=KINDS[info["dtype"]]).reshape(info["shape"])
        out[name] = torch.from_numpy(array.copy())
    state = out
    try:
        from safetensors.torch import load_file
    except ImportError:
        return state, header.get("__metadata__", {})
    reference = load_file(path)
    assert sorted(reference) == sorted(state), "the two safetensors readers disagree on names"
    for k in state:
        assert torch.equal(reference[k], state[k]), k
    return state, header.get("__metadata__", {})

def load_image(path):
    from PIL import Image
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)
"#;

/// Loads an exported encoder into torchvision (`argv`: weights, arch, cifar stem 0/1,
/// images...) and prints the load result and each image's features.
const TORCHVISION_FEATURES: &str = r#"
import torchvision
weights, arch, cifar = sys.argv[1:4]
state, metadata = read_safetensors(weights)
print("metadata", json.dumps(metadata, sort_keys=True))
m = getattr(torchvision.models, arch)()
if cifar == "1":
    m.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
missing, unexpected = m.load_state_dict(state, strict=False)
print("missing", ",".join(sorted(missing)))
print("unexpected", ",".join(sorted(unexpected)))
m.fc = torch.nn.Identity()
m.eval()
with torch.no_grad():
    for path in sys.argv[4:]:
        print("values", path, " ".join(repr(float(v)) for v in m(load_image(path))[0]))
"#;

/// Turns an SSL checkpoint into a classifier checkpoint as the classifier runs write it
/// (`encoder.*` from the embedding encoder, the online head as `linear_head.linear.*`,
/// `algorithm = "Classifier"`, evaluation transform none), written by its own writer
/// (`argv`: SSL checkpoint, output).
const MAKE_CLASSIFIER: &str = r#"
src, dst = sys.argv[1:3]
state, metadata = read_safetensors(src)
record = json.loads(metadata["ssl_host"])
prefix = "algorithm." + record["embedding_encoder_prefix"]
tensors = {"encoder." + k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
for k in ("linear_head.linear.weight", "linear_head.linear.bias"):
    tensors[k] = state[k]
assert "linear_head_val_augmentations" not in record["config"]
lines = record["config"].split("\n")
record["config"] = "\n".join(lines[:1] + ["linear_head_val_augmentations = []"] + lines[1:])
record["algorithm"] = "Classifier"
record["embedding_encoder_prefix"] = ""
names = {np.dtype(v): k for k, v in KINDS.items()}
header, blobs, offset = {}, [], 0
for k in sorted(tensors):
    a = np.ascontiguousarray(tensors[k].numpy())
    blob = a.tobytes()
    header[k] = {"dtype": names[a.dtype], "shape": list(a.shape),
                 "data_offsets": [offset, offset + len(blob)]}
    blobs.append(blob)
    offset += len(blob)
header["__metadata__"] = {"ssl_host": json.dumps(record)}
text = json.dumps(header).encode()
text += b" " * ((8 - len(text) % 8) % 8)
with open(dst, "wb") as f:
    f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
"#;

/// torchvision's ResNet-18 with the classifier's encoder and head: softmax probabilities
/// (`argv`: classifier checkpoint, images...).
const TORCHVISION_PROBABILITIES: &str = r#"
import torchvision
state, _ = read_safetensors(sys.argv[1])
m = torchvision.models.resnet18()
weight, bias = state["linear_head.linear.weight"], state["linear_head.linear.bias"]
m.fc = torch.nn.Linear(weight.shape[1], weight.shape[0])
encoder = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
encoder["fc.weight"], encoder["fc.bias"] = weight, bias
missing, unexpected = m.load_state_dict(encoder, strict=False)
assert all(k.endswith("num_batches_tracked") for k in missing) and not unexpected, (missing, unexpected)
m.eval()
with torch.no_grad():
    for path in sys.argv[2:]:
        p = torch.softmax(m(load_image(path)), dim=1)[0]
        print("values", path, " ".join(repr(float(v)) for v in p))
"#;

/// Checks a `.npy` file against the CSV `embed` wrote of the same data (`argv`: npy, csv);
/// prints the array's dtype, shape and the largest difference.
const CHECK_NPY: &str = r#"
import sys
import numpy as np
a = np.load(sys.argv[1])
b = np.loadtxt(sys.argv[2], delimiter=",", skiprows=1, usecols=range(2, 2 + a.shape[1]), dtype=np.float32, ndmin=2)
print("dtype", a.dtype.str, "fortran", a.flags.f_contiguous and not a.flags.c_contiguous)
print("shape", " ".join(str(d) for d in a.shape))
print("maxdiff", float(np.abs(a - b).max()), "maxabs", float(np.abs(a).max()))
"#;

/// A tiny BYOL run on Shapes (one debug epoch, seconds); its run folder.
fn train(dir: &Path, extra: &[&str]) -> PathBuf {
    let out = dir.join("run");
    let mut args: Vec<String> = [
        "--model=ShapesBYOL",
        "--is_debug_model=true",
        "--num_epochs=1",
        "--ssl_encoder=resnet18",
        "--ssl_training_batch_size=8",
        "--linear_head_batch_size=8",
        "--ssl_dataset_params.num_samples=80",
        "--linear_head_dataset_params.num_samples=80",
        "--num_workers=2",
        "--device=cpu",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("--output_dir={}", out.display()));
    args.extend(extra.iter().map(|s| s.to_string()));
    run(&args).assert_ok();
    assert!(out.join("checkpoints/last.safetensors").exists());
    out
}

/// An ImageFolder with one class of RGB PNGs: two 32×32 and one 40×40.
fn write_images(root: &Path) -> Vec<PathBuf> {
    let files = [("a.png", 32u32, 1u64), ("b.png", 32, 2), ("c.png", 40, 3)];
    files
        .iter()
        .map(|(name, size, seed)| {
            let path = root.join("things").join(name);
            write_png_rgb8(&path, *size, *size, &rgb_pattern(*seed, *size, *size)).unwrap();
            path
        })
        .collect()
}

/// A CSV as rows of fields (no quoted fields in these tests).
fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

/// The `values PATH v...` lines of a python script's output, by file name.
fn python_values(output: &str) -> BTreeMap<String, Vec<f64>> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("values "))
        .map(|l| {
            let mut fields = l.split(' ');
            let path = fields.next().unwrap();
            let name = Path::new(path)
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            (name, fields.map(|v| v.parse().unwrap()).collect())
        })
        .collect()
}

/// The rows of an `embed`/`predict` CSV (`id,label,values...`), by the id's file name.
fn csv_values(path: &Path) -> BTreeMap<String, Vec<f64>> {
    csv_rows(path)[1..]
        .iter()
        .map(|row| {
            let name = row[0].rsplit('/').next().unwrap().to_string();
            (name, row[2..].iter().map(|v| v.parse().unwrap()).collect())
        })
        .collect()
}

/// max |a - b| / max |b| over all values, both maps having the same keys and lengths.
fn relative_difference(a: &BTreeMap<String, Vec<f64>>, b: &BTreeMap<String, Vec<f64>>) -> f64 {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    let mut diff = 0f64;
    let mut scale = 0f64;
    for (k, va) in a {
        let vb = &b[k];
        assert_eq!(va.len(), vb.len(), "{k}");
        for (x, y) in va.iter().zip(vb) {
            diff = diff.max((x - y).abs());
            scale = scale.max(y.abs());
        }
    }
    assert!(scale > 0.0, "all values are zero");
    diff / scale
}

fn line<'a>(output: &'a str, key: &str) -> &'a str {
    output
        .lines()
        .find_map(|l| l.strip_prefix(key).map(str::trim))
        .unwrap_or_else(|| panic!("no `{key}` line in:\n{output}"))
}

/// Exports the run's encoder and checks torchvision's ResNet-18 (conv1 swapped for the CIFAR
/// stem) loads it with only `fc.*` missing and gives `embed`'s features.
fn check_round_trip(dir: &Path, run_dir: &Path, cifar_stem: bool) {
    let weights = dir.join("out/encoder.safetensors");
    let export = run(&[
        "export-encoder".into(),
        format!("--checkpoint={}", run_dir.display()),
        format!("--out={}", weights.display()),
    ]);
    export.assert_ok();
    assert!(export.stdout.contains("resnet18"), "{}", export.stdout);
    assert_eq!(
        export.stdout.contains("Conv2d(3, 64, 3, 1, 1, bias=False)"),
        cifar_stem,
        "{}",
        export.stdout
    );

    let images = dir.join("images");
    let paths = write_images(&images);
    let mut args = vec![
        weights.display().to_string(),
        "resnet18".into(),
        if cifar_stem { "1" } else { "0" }.into(),
    ];
    args.extend(paths.iter().map(|p| p.display().to_string()));
    let output = run_python(&format!("{READ_SAFETENSORS}{TORCHVISION_FEATURES}"), &args);
    assert_eq!(line(&output, "missing"), "fc.bias,fc.weight", "{output}");
    assert_eq!(line(&output, "unexpected"), "", "{output}");
    let metadata = line(&output, "metadata");
    assert!(
        metadata.contains(r#""ssl_host_encoder": "resnet18""#)
            && metadata.contains(&format!(r#"\"cifar_stem\":{cifar_stem}"#)),
        "{metadata}"
    );
    let torchvision = python_values(&output);
    assert_eq!(torchvision.len(), 3);

    // Batches of 2 in dataset order: (a, b) are 32×32, c alone is 40×40; images go in as-is.
    let csv = dir.join("features.csv");
    run(&[
        "embed".into(),
        format!(
            "--checkpoint={}",
            run_dir.join("checkpoints/last.safetensors").display()
        ),
        "--dataset=ImageFolder".into(),
        format!("--local_dataset={}", images.display()),
        format!("--out={}", csv.display()),
        "--batch_size=2".into(),
        "--device=cpu".into(),
    ])
    .assert_ok();
    let rows = csv_rows(&csv);
    assert_eq!(rows[0].len(), 2 + 512);
    assert_eq!(rows[0][..4], ["id", "label", "e0", "e1"]);
    assert_eq!(rows[1][..2], ["things/a.png", "0"]);
    let ours = csv_values(&csv);
    let rel = relative_difference(&ours, &torchvision);
    assert!(
        rel < 1e-4,
        "embed and torchvision differ by {rel} (relative)"
    );
    // The features depend on the image.
    let (a, b) = (&ours["a.png"], &ours["b.png"]);
    assert!(a.iter().zip(b).any(|(x, y)| (x - y).abs() > 1e-3));

    // One batch of mixed sizes is an error that suggests --image_size.
    run(&[
        "embed".into(),
        format!("--checkpoint={}", run_dir.display()),
        "--dataset=ImageFolder".into(),
        format!("--local_dataset={}", images.display()),
        format!("--out={}", dir.join("mixed.csv").display()),
        "--device=cpu".into(),
    ])
    .assert_clear_error(&["c.png", "3×40×40", "3×32×32", "--image_size"]);
    assert!(!dir.join("mixed.csv").exists());
}

/// One tiny run (ImageNet stem) serves the round trip, `embed` and `predict` checks, which
/// would otherwise each train.
#[test]
fn export_embed_and_predict_of_a_trained_run() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = train(tmp.path(), &["--save_checkpoint_every_n_epochs=1"]);
    for (name, check) in [
        ("kept-encoder", check_kept_encoder as fn(&Path, &Path)),
        (
            "round-trip",
            check_round_trip_imagenet_stem as fn(&Path, &Path),
        ),
        ("rsna", check_embed_of_rsna_dicoms),
        ("predict", check_predict_against_torchvision),
        ("classifier", check_classifier_run),
    ] {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        check(&dir, &run_dir);
    }
}

/// `--save_checkpoint_every_n_epochs=1` kept epoch 1's encoder beside the last checkpoint:
/// a small file that `embed` and `export-encoder` read as a checkpoint, giving what the run's
/// last checkpoint gives (epoch 1 is the last epoch here).
fn check_kept_encoder(dir: &Path, run_dir: &Path) {
    let kept = run_dir.join("checkpoints/encoder-epoch-0001.safetensors");
    let last = run_dir.join("checkpoints/last.safetensors");
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(
        size(&kept) * 2 < size(&last),
        "the kept encoder ({} bytes) should be a fraction of the checkpoint ({} bytes)",
        size(&kept),
        size(&last)
    );
    let images = dir.join("images");
    write_images(&images);
    let embed = |checkpoint: &Path, out: &Path| {
        run(&[
            "embed".into(),
            format!("--checkpoint={}", checkpoint.display()),
            "--dataset=ImageFolder".into(),
            format!("--local_dataset={}", images.display()),
            format!("--out={}", out.display()),
            "--batch_size=2".into(),
            "--image_size=32".into(),
            "--device=cpu".into(),
        ])
        .assert_ok();
        std::fs::read_to_string(out).unwrap()
    };
    let from_kept = embed(&kept, &dir.join("kept.csv"));
    assert_eq!(from_kept, embed(run_dir, &dir.join("last.csv")));
    assert!(from_kept.lines().count() == 4, "{from_kept}");
    run(&[
        "export-encoder".into(),
        format!("--checkpoint={}", kept.display()),
        format!("--out={}", dir.join("encoder.safetensors").display()),
    ])
    .assert_ok();
}

fn check_round_trip_imagenet_stem(dir: &Path, run_dir: &Path) {
    check_round_trip(dir, run_dir, false);
}

#[test]
fn exported_cifar_stem_encoder_matches_torchvision_with_a_3x3_conv1() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = train(tmp.path(), &["--encoder_params.cifar_stem=true"]);
    check_round_trip(tmp.path(), &run_dir, true);
}

/// `embed` of RSNA DICOMs (chest X-ray transform: 224 px) as `.npy` + ids and as CSV.
fn check_embed_of_rsna_dicoms(dir: &Path, run_dir: &Path) {
    let rsna = dir.join("rsna");
    write_rsna(&rsna, 5, 40);
    let embed = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "embed".to_string(),
            format!("--checkpoint={}", run_dir.display()),
            "--dataset=RSNAKaggleCXR".into(),
            format!("--local_dataset={}", rsna.display()),
            format!("--out={}", out.display()),
            "--batch_size=2".into(),
            "--device=cpu".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        run(&args)
    };
    let npy = dir.join("emb.npy");
    let csv = dir.join("emb.csv");
    let done = embed(&npy, &[]);
    done.assert_ok();
    assert!(done.stdout.contains("[5, 512]"), "{}", done.stdout);
    embed(&csv, &[]).assert_ok();
    let output = run_python(
        CHECK_NPY,
        &[npy.display().to_string(), csv.display().to_string()],
    );
    assert_eq!(line(&output, "dtype"), "<f4 fortran False", "{output}");
    assert_eq!(line(&output, "shape"), "5 512", "{output}");
    let diffs: Vec<f64> = line(&output, "maxdiff")
        .split(' ')
        .filter_map(|v| v.parse().ok())
        .collect();
    assert_eq!(diffs[0], 0.0, "{output}");
    assert!(diffs[1] > 0.0, "{output}");

    // emb.ids.csv: index,id,label in dataset order, as the CSV's first columns.
    let ids = csv_rows(&dir.join("emb.ids.csv"));
    let rows = csv_rows(&csv);
    assert_eq!(ids[0], ["index", "id", "label"]);
    assert_eq!(ids.len(), 6);
    for (k, (i, r)) in ids[1..].iter().zip(&rows[1..]).enumerate() {
        assert_eq!(i[0], k.to_string());
        assert_eq!(i[1..], r[..2]);
        assert_eq!(i[2], (k % 2).to_string());
    }
    assert!(ids[1][1].contains("subject-000"), "{:?}", ids[1]);

    // The chest X-ray transform (ExpandChannels, Resize 256, CenterCrop 224) versus
    // --image_size=224 (Resize 224, CenterCrop 224): other pixels, other features.
    let sized = dir.join("sized.csv");
    embed(&sized, &["--image_size=224"]).assert_ok();
    let rel = relative_difference(&csv_values(&sized), &csv_values(&csv));
    assert!(rel > 1e-3, "--image_size changed nothing ({rel})");

    // An SSL checkpoint cannot predict.
    run(&[
        "predict".into(),
        format!("--checkpoint={}", run_dir.display()),
        "--dataset=RSNAKaggleCXR".into(),
        format!("--local_dataset={}", rsna.display()),
        format!("--out={}", dir.join("p.csv").display()),
    ])
    .assert_clear_error(&["BYOL", "not a classifier", "ssl-host embed"]);
}

/// `predict` of a classifier checkpoint (made from the run in Python, in the layout classifier
/// runs write) against torchvision's ResNet-18 with that encoder and head.
fn check_predict_against_torchvision(dir: &Path, run_dir: &Path) {
    let classifier = dir.join("classifier.safetensors");
    run_python(
        &format!("{READ_SAFETENSORS}{MAKE_CLASSIFIER}"),
        &[
            run_dir
                .join("checkpoints/last.safetensors")
                .display()
                .to_string(),
            classifier.display().to_string(),
        ],
    );
    let images = dir.join("images");
    let paths = write_images(&images);
    let predict = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "predict".to_string(),
            format!("--checkpoint={}", classifier.display()),
            "--dataset=ImageFolder".into(),
            format!("--local_dataset={}", images.display()),
            format!("--out={}", out.display()),
            "--device=cpu".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        run(&args)
    };
    let out = dir.join("predictions.csv");
    predict(&out, &["--batch_size=1"]).assert_ok();
    let rows = csv_rows(&out);
    assert_eq!(rows[0], ["id", "label", "p0", "p1", "p2", "p3"]);
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[3][..2], ["things/c.png", "0"]);
    let ours = csv_values(&out);
    for p in ours.values() {
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-5, "{p:?}");
    }
    let mut args = vec![classifier.display().to_string()];
    args.extend(paths.iter().map(|p| p.display().to_string()));
    let output = run_python(
        &format!("{READ_SAFETENSORS}{TORCHVISION_PROBABILITIES}"),
        &args,
    );
    let rel = relative_difference(&ours, &python_values(&output));
    assert!(
        rel < 1e-4,
        "predict and torchvision differ by {rel} (relative)"
    );

    // The same classifier exported: its encoder under torchvision's names.
    let weights = dir.join("enc.safetensors");
    run(&[
        "export-encoder".into(),
        format!("--checkpoint={}", classifier.display()),
        format!("--out={}", weights.display()),
    ])
    .assert_ok();
    assert!(std::fs::metadata(&weights).unwrap().len() > 40_000_000);

    // Images of different sizes in one batch.
    predict(&dir.join("m.csv"), &[]).assert_clear_error(&["c.png", "3×40×40"]);
}

/// A classifier run (`SSLClassifierCIFAR` on Shapes, frozen encoder from the SSL run):
/// `predict` of its run folder is deterministic under the random linear-head transform, and
/// its encoder embeds as the SSL run's.
fn check_classifier_run(dir: &Path, run_dir: &Path) {
    let classifier = dir.join("classifier-run");
    run(&[
        "--model=SSLClassifierCIFAR".into(),
        format!("--output_dir={}", classifier.display()),
        format!("--local_ssl_weights_path={}", run_dir.display()),
        "--linear_head_dataset_name=Shapes".into(),
        "--linear_head_dataset_params.num_samples=40".into(),
        "--num_epochs=1".into(),
        "--is_debug_model=true".into(),
        "--linear_head_batch_size=8".into(),
        "--num_workers=2".into(),
        "--device=cpu".into(),
    ])
    .assert_ok();
    let command = |name: &str, checkpoint: &Path, out: &Path| {
        run(&[
            name.into(),
            format!("--checkpoint={}", checkpoint.display()),
            "--dataset=Shapes".into(),
            "--num_samples=12".into(),
            "--batch_size=5".into(),
            "--device=cpu".into(),
            format!("--out={}", out.display()),
        ])
        .assert_ok();
    };
    let (a, b) = (dir.join("a.csv"), dir.join("b.csv"));
    command("predict", &classifier, &a);
    command("predict", &classifier, &b);
    let rows = csv_rows(&a);
    assert_eq!(rows[0], ["id", "label", "p0", "p1", "p2", "p3"]);
    assert_eq!(rows.len(), 13);
    for row in &rows[1..] {
        let p: Vec<f64> = row[2..].iter().map(|v| v.parse().unwrap()).collect();
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-5, "{row:?}");
        assert!(row[1].parse::<usize>().unwrap() < 4, "{row:?}");
    }
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

    let (ours, theirs) = (dir.join("cls.npy"), dir.join("ssl.npy"));
    command("embed", &classifier, &ours);
    command("embed", run_dir, &theirs);
    assert_eq!(
        std::fs::read(&ours).unwrap(),
        std::fs::read(&theirs).unwrap()
    );
}

#[test]
fn bad_checkpoints_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A safetensors file ssl-host did not write: one tensor, no `ssl_host` record.
    let foreign = dir.join("foreign.safetensors");
    let header = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 8]);
    std::fs::write(&foreign, &bytes).unwrap();
    // The same cut short.
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 4]).unwrap();
    let folder = dir.join("not-a-run");
    std::fs::create_dir_all(&folder).unwrap();
    let missing = dir.join("missing.safetensors");
    let images = dir.join("images");
    write_images(&images);

    let cases: [(&Path, &[&str]); 4] = [
        (&missing, &["missing.safetensors", "does not exist"]),
        (
            &truncated,
            &["truncated.safetensors", "truncated or corrupt"],
        ),
        (
            &foreign,
            &["foreign.safetensors", "not an ssl-host checkpoint"],
        ),
        (&folder, &["not-a-run", "not an ssl-host run folder"]),
    ];
    for (checkpoint, needles) in cases {
        let checkpoint = format!("--checkpoint={}", checkpoint.display());
        let data = [
            "--dataset=ImageFolder".to_string(),
            format!("--local_dataset={}", images.display()),
            "--device=cpu".into(),
        ];
        let mut predict = vec!["predict".to_string(), checkpoint.clone()];
        predict.extend_from_slice(&data);
        predict.push(format!("--out={}", dir.join("p.csv").display()));
        run(&predict).assert_clear_error(needles);
        let mut embed = vec!["embed".to_string(), checkpoint.clone()];
        embed.extend_from_slice(&data);
        embed.push(format!("--out={}", dir.join("e.npy").display()));
        run(&embed).assert_clear_error(needles);
        run(&[
            "export-encoder".into(),
            checkpoint,
            format!("--out={}", dir.join("x.safetensors").display()),
        ])
        .assert_clear_error(needles);
    }
    // Unknown output formats (checked before the checkpoint is read).
    let data = [
        "--dataset=ImageFolder".to_string(),
        format!("--local_dataset={}", images.display()),
        format!("--checkpoint={}", missing.display()),
    ];
    for (command, out, needles) in [
        ("export-encoder", "x.pt", &["x.pt", ".safetensors"][..]),
        ("embed", "e.json", &["e.json", ".csv or .npy"][..]),
        ("predict", "p.txt", &["p.txt", ".csv"][..]),
    ] {
        let mut args = vec![
            command.to_string(),
            format!("--out={}", dir.join(out).display()),
        ];
        let used = if command == "export-encoder" {
            &data[2..]
        } else {
            &data[..]
        };
        args.extend_from_slice(used);
        run(&args).assert_clear_error(needles);
    }
    // A dataset with no samples (an ImageFolder's test split), checked before the checkpoint.
    for (command, out) in [("embed", "e.npy"), ("predict", "p.csv")] {
        let mut args = vec![
            command.to_string(),
            format!("--out={}", dir.join(out).display()),
        ];
        args.extend_from_slice(&data);
        args.push("--split=test".into());
        run(&args).assert_clear_error(&["ImageFolder", "no samples"]);
    }
    run(&[
        "embed".into(),
        format!("--out={}", dir.join("e.csv").display()),
    ])
    .assert_clear_error(&["--checkpoint"]);
    for name in [
        "p.csv",
        "e.npy",
        "e.ids.csv",
        "x.safetensors",
        "x.pt",
        "e.json",
        "p.txt",
    ] {
        assert!(!dir.join(name).exists(), "{name} was written");
    }
}
