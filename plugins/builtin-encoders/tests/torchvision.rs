//! The encoders against torchvision itself (through the project's Python venv): the same
//! parameter and buffer names and shapes, and the same outputs and BatchNorm updates for the
//! same weights and input.

mod common;

use common::{build, dump, run_python, scratch_dir};
use ssl_plugin_api::tch::{self, Device, Kind, Tensor};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// Prints `arch<TAB>name<TAB>d0,d1,...` for every entry of torchvision's `state_dict()`
/// of each model named in argv, less the classifier and `num_batches_tracked`.
const NAMES_SCRIPT: &str = r#"
import sys, torchvision
for arch in sys.argv[1:]:
    m = getattr(torchvision.models, arch)(weights=None)
    for k, v in m.state_dict().items():
        if k.startswith(("fc.", "classifier.")) or k.endswith("num_batches_tracked"):
            continue
        print(arch, k, ",".join(str(d) for d in v.shape), sep="\t")
"#;

type Shapes = BTreeMap<String, Vec<i64>>;

/// torchvision's names and shapes for the four models, computed once (one Python start).
fn torchvision_shapes() -> &'static BTreeMap<String, Shapes> {
    static SHAPES: OnceLock<BTreeMap<String, Shapes>> = OnceLock::new();
    SHAPES.get_or_init(|| {
        let archs = ["resnet18", "resnet50", "resnet101", "densenet121"];
        let mut args = vec!["-c", NAMES_SCRIPT];
        args.extend(archs);
        let out = run_python(&args);
        let mut all: BTreeMap<String, Shapes> = BTreeMap::new();
        for line in out.lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), 3, "odd line from python: {line:?}");
            let dims = fields[2]
                .split(',')
                .filter(|d| !d.is_empty())
                .map(|d| d.parse().expect("a dimension"))
                .collect();
            all.entry(fields[0].to_string())
                .or_default()
                .insert(fields[1].to_string(), dims);
        }
        for arch in archs {
            assert!(all.contains_key(arch), "python listed nothing for {arch}");
        }
        all
    })
}

fn assert_same_names_and_shapes(arch: &str) {
    let enc = build(arch, "{}");
    let mut ours: Shapes = BTreeMap::new();
    for (name, t) in enc
        .named_parameters()
        .into_iter()
        .chain(enc.named_buffers())
    {
        assert!(
            ours.insert(name.clone(), t.size()).is_none(),
            "{arch}: `{name}` twice"
        );
    }
    let theirs = &torchvision_shapes()[arch];
    let missing: Vec<_> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
    let extra: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{arch}: missing {missing:?}, not in torchvision {extra:?}"
    );
    for (name, shape) in theirs {
        assert_eq!(&ours[name], shape, "{arch}: shape of `{name}`");
    }
    // Buffers are exactly torchvision's BatchNorm running statistics.
    let n_buffers = enc.named_buffers().len();
    let tv_buffers = theirs.keys().filter(|k| k.contains("running_")).count();
    assert_eq!(n_buffers, tv_buffers, "{arch}: buffers");
}

#[test]
fn resnet18_names_and_shapes_match_torchvision() {
    assert_same_names_and_shapes("resnet18");
}

#[test]
fn resnet50_names_and_shapes_match_torchvision() {
    assert_same_names_and_shapes("resnet50");
}

#[test]
fn resnet101_names_and_shapes_match_torchvision() {
    assert_same_names_and_shapes("resnet101");
}

#[test]
fn densenet121_names_and_shapes_match_torchvision() {
    assert_same_names_and_shapes("densenet121");
}

/// Loads our initial state into torchvision's model (`cifar` = "1": conv1 replaced by the
/// 3×3 stride-1 one, max-pool kept), runs the same input in eval then train mode and
/// compares outputs and the updated running statistics with ours.
const PARITY_SCRIPT: &str = r#"
import sys, numpy as np, torch, torch.nn.functional as F, torchvision
arch, d, cifar = sys.argv[1], sys.argv[2], sys.argv[3] == "1"

def load(group):
    lines = open(f"{d}/{group}/manifest.tsv").read().splitlines()
    data = np.fromfile(f"{d}/{group}/data.f32", dtype="<f4")
    out, off = {}, 0
    for line in lines:
        name, dims = line.split("\t")
        shape = [int(x) for x in dims.split(",") if x]
        n = int(np.prod(shape)) if shape else 1
        out[name] = torch.from_numpy(data[off:off + n].copy()).reshape(shape)
        off += n
    assert off == data.size, (group, off, data.size)
    return out

m = getattr(torchvision.models, arch)(weights=None)
if cifar:
    m.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
missing, unexpected = m.load_state_dict(load("state"), strict=False)
assert not unexpected, unexpected
bad = [k for k in missing
       if not (k.startswith(("fc.", "classifier.")) or k.endswith("num_batches_tracked"))]
assert not bad, bad
if arch.startswith("resnet"):
    m.fc = torch.nn.Identity()
    f = m
else:
    f = lambda x: torch.flatten(F.adaptive_avg_pool2d(m.features(x), 1), 1)

def check(what, ours, theirs):
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    err = (ours - theirs).abs().max().item()
    scale = theirs.abs().max().item()
    print(f"{arch} {what}: max abs diff {err:.3g} (scale {scale:.3g})")
    assert err <= 1e-4 * scale + 1e-6, what

io = load("io")
with torch.no_grad():
    m.eval()
    check("eval output", io["eval"], f(io["input"]))
    m.train()
    check("train output", io["train"], f(io["input"]))
sd = m.state_dict()
after = load("after")
assert len(after) == sum(1 for k in sd if "running_" in k)
worst = max(((v - sd[k]).abs().max().item(), k) for k, v in after.items())
print(f"{arch} running stats: worst diff {worst[0]:.3g} at {worst[1]}")
assert worst[0] <= 1e-5, worst
"#;

fn assert_matches_torchvision(arch: &str, cifar: bool, batch: i64, size: i64) {
    let dir = scratch_dir(&format!("parity-{arch}-{size}-{}", u8::from(cifar)));
    let json = if cifar {
        r#"{"cifar_stem": true}"#
    } else {
        "{}"
    };
    let mut enc = build(arch, json);
    let mut state = enc.named_parameters();
    state.extend(enc.named_buffers());
    dump(&dir.join("state"), &state);
    let x = Tensor::randn([batch, 3, size, size], (Kind::Float, Device::Cpu));
    let eval = tch::no_grad(|| enc.forward(&x, false)).unwrap();
    let train = tch::no_grad(|| enc.forward(&x, true)).unwrap();
    let io = [
        ("input".to_string(), x),
        ("eval".to_string(), eval),
        ("train".to_string(), train),
    ];
    dump(&dir.join("io"), &io);
    dump(&dir.join("after"), &enc.named_buffers());
    let dir = dir.to_str().expect("utf-8 path");
    let flag = if cifar { "1" } else { "0" };
    let out = run_python(&["-c", PARITY_SCRIPT, arch, dir, flag]);
    eprintln!("{out}");
}

#[test]
fn resnet18_computes_as_torchvision() {
    assert_matches_torchvision("resnet18", false, 4, 64);
}

#[test]
fn resnet18_cifar_stem_computes_as_torchvision_with_3x3_conv1_and_max_pool() {
    assert_matches_torchvision("resnet18", true, 4, 32);
}

#[test]
fn resnet50_computes_as_torchvision() {
    assert_matches_torchvision("resnet50", false, 2, 64);
}

#[test]
fn densenet121_computes_as_torchvision() {
    assert_matches_torchvision("densenet121", false, 2, 64);
}
