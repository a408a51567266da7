//! The chest X-ray augmentation YAML of the original (InnerEye's `ssl_augmentation_config.py`
//! keys, read like yacs does) and the transform pipelines it describes
//! (`create_transforms_from_config`).
//!
//! - [`parse`] reads a YAML text into a [`CxrAugmentationConfig`]; absent keys keep the
//!   original's defaults ([`CxrAugmentationConfig::default`]). Pairs may be written as in the
//!   original files, the string `(0.4, 1.0)`, or as a YAML list `[0.4, 1.0]`; a parenthesised
//!   number such as `(4)` is that number. Numbers may be integers or decimals wherever a
//!   number is expected; sizes must be positive integers. An unknown key (at any level) or a
//!   value of the wrong type is an error naming the file and the key.
//! - [`pipeline`] builds the transform list of one use; [`cxr_pipelines`] does both uses
//!   (training with augmentations, validation without) from a YAML text and checks that
//!   every transform accepts its parameters.
//! - [`builtin_yaml`] gives the two shipped files (`configs/*.yaml`) by file name.

use crate::config::TransformSpec;
use anyhow::{anyhow, bail, Context, Result};
use serde_yaml::Value as Yaml;
use ssl_builtin_transforms as tf;
use ssl_plugin_api::{Params, Transform};
use std::collections::BTreeMap;
use toml::{Table, Value};

/// The shipped augmentation files: file name and text.
const BUILTIN: [(&str, &str); 2] = [
    (
        "cxr_ssl_encoder_augmentations.yaml",
        include_str!("../../configs/cxr_ssl_encoder_augmentations.yaml"),
    ),
    (
        "cxr_linear_head_augmentations.yaml",
        include_str!("../../configs/cxr_linear_head_augmentations.yaml"),
    ),
];

/// The names of the shipped augmentation files ([`builtin_yaml`] knows them).
pub const BUILTIN_YAML_NAMES: [&str; 2] = [BUILTIN[0].0, BUILTIN[1].0];

/// The text of a shipped augmentation file, by file name (`cxr_ssl_encoder_augmentations.yaml`
/// or `cxr_linear_head_augmentations.yaml`); `None` for any other name.
pub fn builtin_yaml(name: &str) -> Option<&'static str> {
    BUILTIN
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
}

/// `preprocess` section.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocess {
    /// `center_crop_size` (224): side of the final central crop.
    pub center_crop_size: u32,
    /// `resize` (256): output side of the random crop, or shorter side of the resize.
    pub resize: u32,
}

/// `augmentation.random_affine`.
#[derive(Clone, Debug, PartialEq)]
pub struct RandomAffineConfig {
    /// `max_angle` (0): rotation in `U(-a, a)` degrees.
    pub max_angle: f64,
    /// `max_horizontal_shift` (0.0): fraction of the width.
    pub max_horizontal_shift: f64,
    /// `max_vertical_shift` (0.0): fraction of the height.
    pub max_vertical_shift: f64,
    /// `max_shear` (5): x-shear in `U(-s, s)` degrees.
    pub max_shear: f64,
}

/// `augmentation.random_color`.
#[derive(Clone, Debug, PartialEq)]
pub struct RandomColorConfig {
    /// `brightness` (0.0).
    pub brightness: f64,
    /// `contrast` (0.1).
    pub contrast: f64,
    /// `saturation` (0.0).
    pub saturation: f64,
}

/// `augmentation.elastic_transform`.
#[derive(Clone, Debug, PartialEq)]
pub struct ElasticConfig {
    /// `sigma` (4).
    pub sigma: f64,
    /// `alpha` (35).
    pub alpha: f64,
    /// `p_apply` (0.5).
    pub p_apply: f64,
}

/// `augmentation.gaussian_noise`.
#[derive(Clone, Debug, PartialEq)]
pub struct GaussianNoiseConfig {
    /// `std` (0.01).
    pub std: f64,
    /// `p_apply` (0.5).
    pub p_apply: f64,
}

/// `augmentation.random_erasing`.
#[derive(Clone, Debug, PartialEq)]
pub struct RandomErasingConfig {
    /// `scale` ((0.01, 0.1)): erased fraction of the area.
    pub scale: (f64, f64),
    /// `ratio` ((0.3, 3.3)): aspect ratio of the erased box.
    pub ratio: (f64, f64),
}

/// `augmentation` section.
#[derive(Clone, Debug, PartialEq)]
pub struct Augmentation {
    /// `use_random_crop` (False): `RandomResizedCrop`, else `Resize`.
    pub use_random_crop: bool,
    /// `use_random_horizontal_flip` (False).
    pub use_random_horizontal_flip: bool,
    /// `use_random_affine` (False).
    pub use_random_affine: bool,
    /// `use_random_color` (False): `ColorJitter`.
    pub use_random_color: bool,
    /// `add_gaussian_noise` (False).
    pub add_gaussian_noise: bool,
    /// `use_gamma_transform` (False).
    pub use_gamma_transform: bool,
    /// `use_random_erasing` (False).
    pub use_random_erasing: bool,
    /// `use_elastic_transform` (False).
    pub use_elastic_transform: bool,
    /// `random_crop.scale` ((0.9, 1.0)).
    pub random_crop_scale: (f64, f64),
    /// `elastic_transform.*`.
    pub elastic_transform: ElasticConfig,
    /// `gaussian_noise.*`.
    pub gaussian_noise: GaussianNoiseConfig,
    /// `random_horizontal_flip.prob` (0.5).
    pub random_horizontal_flip_prob: f64,
    /// `random_affine.*`.
    pub random_affine: RandomAffineConfig,
    /// `random_color.*`.
    pub random_color: RandomColorConfig,
    /// `gamma.scale` ((0.5, 1.5)).
    pub gamma_scale: (f64, f64),
    /// `label_smoothing.epsilon` (0.1; read but unused by SSL, as in the original).
    pub label_smoothing_epsilon: f64,
    /// `random_erasing.*`.
    pub random_erasing: RandomErasingConfig,
}

/// The whole augmentation config of a chest X-ray dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct CxrAugmentationConfig {
    /// `preprocess.*`.
    pub preprocess: Preprocess,
    /// `augmentation.*`.
    pub augmentation: Augmentation,
}

/// The two pipelines of one augmentation file.
#[derive(Clone, Debug, PartialEq)]
pub struct CxrPipelines {
    /// With augmentations (`apply_augmentations=True`).
    pub train: Vec<TransformSpec>,
    /// Without: `[ExpandChannels,] Resize, CenterCrop`.
    pub val_without_augmentation: Vec<TransformSpec>,
}

/// The type of a key's value.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Bool,
    Size,
    Number,
    Pair,
}

impl Kind {
    fn expected(self) -> &'static str {
        match self {
            Kind::Bool => "True or False",
            Kind::Size => "a positive integer",
            Kind::Number => "a number",
            Kind::Pair => "a pair of numbers such as (0.4, 1.0) or [0.4, 1.0]",
        }
    }
}

/// A parsed value.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Val {
    Bool(bool),
    Size(u32),
    Number(f64),
    Pair(f64, f64),
}

use Kind::{Bool as B, Number as N, Pair as P, Size as S};

/// Every key (dotted path), its type and the original's default.
const KEYS: [(&str, Kind, Val); 28] = [
    ("preprocess.center_crop_size", S, Val::Size(224)),
    ("preprocess.resize", S, Val::Size(256)),
    ("augmentation.use_random_crop", B, Val::Bool(false)),
    (
        "augmentation.use_random_horizontal_flip",
        B,
        Val::Bool(false),
    ),
    ("augmentation.use_random_affine", B, Val::Bool(false)),
    ("augmentation.use_random_color", B, Val::Bool(false)),
    ("augmentation.add_gaussian_noise", B, Val::Bool(false)),
    ("augmentation.use_gamma_transform", B, Val::Bool(false)),
    ("augmentation.use_random_erasing", B, Val::Bool(false)),
    ("augmentation.use_elastic_transform", B, Val::Bool(false)),
    ("augmentation.random_crop.scale", P, Val::Pair(0.9, 1.0)),
    ("augmentation.elastic_transform.sigma", N, Val::Number(4.0)),
    ("augmentation.elastic_transform.alpha", N, Val::Number(35.0)),
    (
        "augmentation.elastic_transform.p_apply",
        N,
        Val::Number(0.5),
    ),
    ("augmentation.gaussian_noise.std", N, Val::Number(0.01)),
    ("augmentation.gaussian_noise.p_apply", N, Val::Number(0.5)),
    (
        "augmentation.random_horizontal_flip.prob",
        N,
        Val::Number(0.5),
    ),
    ("augmentation.random_affine.max_angle", N, Val::Number(0.0)),
    (
        "augmentation.random_affine.max_horizontal_shift",
        N,
        Val::Number(0.0),
    ),
    (
        "augmentation.random_affine.max_vertical_shift",
        N,
        Val::Number(0.0),
    ),
    ("augmentation.random_affine.max_shear", N, Val::Number(5.0)),
    ("augmentation.random_color.brightness", N, Val::Number(0.0)),
    ("augmentation.random_color.contrast", N, Val::Number(0.1)),
    ("augmentation.random_color.saturation", N, Val::Number(0.0)),
    ("augmentation.gamma.scale", P, Val::Pair(0.5, 1.5)),
    ("augmentation.label_smoothing.epsilon", N, Val::Number(0.1)),
    ("augmentation.random_erasing.scale", P, Val::Pair(0.01, 0.1)),
    ("augmentation.random_erasing.ratio", P, Val::Pair(0.3, 3.3)),
];

impl Default for CxrAugmentationConfig {
    /// The original's defaults (`ssl_augmentation_config.py`): every augmentation off.
    fn default() -> Self {
        from_values(&BTreeMap::new())
    }
}

/// The config with the values in `set` (by dotted key), defaults elsewhere.
fn from_values(set: &BTreeMap<&'static str, Val>) -> CxrAugmentationConfig {
    let get = |key: &str| -> Val {
        set.get(key).copied().unwrap_or_else(|| {
            KEYS.iter()
                .find(|(k, _, _)| *k == key)
                .map(|(_, _, d)| *d)
                .expect("a key of the table")
        })
    };
    let flag = |key: &str| matches!(get(&format!("augmentation.{key}")), Val::Bool(true));
    let num = |key: &str| match get(&format!("augmentation.{key}")) {
        Val::Number(x) => x,
        other => unreachable!("{key} holds {other:?}"),
    };
    let pair = |key: &str| match get(&format!("augmentation.{key}")) {
        Val::Pair(a, b) => (a, b),
        other => unreachable!("{key} holds {other:?}"),
    };
    let size = |key: &str| match get(&format!("preprocess.{key}")) {
        Val::Size(s) => s,
        other => unreachable!("{key} holds {other:?}"),
    };
    CxrAugmentationConfig {
        preprocess: Preprocess {
            center_crop_size: size("center_crop_size"),
            resize: size("resize"),
        },
        augmentation: Augmentation {
            use_random_crop: flag("use_random_crop"),
            use_random_horizontal_flip: flag("use_random_horizontal_flip"),
            use_random_affine: flag("use_random_affine"),
            use_random_color: flag("use_random_color"),
            add_gaussian_noise: flag("add_gaussian_noise"),
            use_gamma_transform: flag("use_gamma_transform"),
            use_random_erasing: flag("use_random_erasing"),
            use_elastic_transform: flag("use_elastic_transform"),
            random_crop_scale: pair("random_crop.scale"),
            elastic_transform: ElasticConfig {
                sigma: num("elastic_transform.sigma"),
                alpha: num("elastic_transform.alpha"),
                p_apply: num("elastic_transform.p_apply"),
            },
            gaussian_noise: GaussianNoiseConfig {
                std: num("gaussian_noise.std"),
                p_apply: num("gaussian_noise.p_apply"),
            },
            random_horizontal_flip_prob: num("random_horizontal_flip.prob"),
            random_affine: RandomAffineConfig {
                max_angle: num("random_affine.max_angle"),
                max_horizontal_shift: num("random_affine.max_horizontal_shift"),
                max_vertical_shift: num("random_affine.max_vertical_shift"),
                max_shear: num("random_affine.max_shear"),
            },
            random_color: RandomColorConfig {
                brightness: num("random_color.brightness"),
                contrast: num("random_color.contrast"),
                saturation: num("random_color.saturation"),
            },
            gamma_scale: pair("gamma.scale"),
            label_smoothing_epsilon: num("label_smoothing.epsilon"),
            random_erasing: RandomErasingConfig {
                scale: pair("random_erasing.scale"),
                ratio: pair("random_erasing.ratio"),
            },
        },
    }
}

/// A Python literal as yacs' `literal_eval` reads the original's strings: a number, or a
/// parenthesised / bracketed tuple of numbers. Returns the numbers and whether it is a tuple.
fn literal(text: &str) -> Option<(Vec<f64>, bool)> {
    let number = |s: &str| -> Option<f64> {
        let s = s.trim();
        let ok = !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E' | '_'));
        let x: f64 = s.replace('_', "").parse().ok().filter(|_| ok)?;
        x.is_finite().then_some(x)
    };
    let t = text.trim();
    let inner = t
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .or_else(|| t.strip_prefix('[').and_then(|s| s.strip_suffix(']')));
    let Some(inner) = inner else {
        return number(t).map(|x| (vec![x], false));
    };
    if !inner.contains(',') {
        // `(4)` is the number 4; `[4]` is a one-element list.
        return number(inner).map(|x| (vec![x], t.starts_with('[')));
    }
    let inner = inner.trim_end().strip_suffix(',').unwrap_or(inner);
    let items: Option<Vec<f64>> = inner.split(',').map(number).collect();
    items.map(|v| (v, true))
}

fn yaml_number(v: &Yaml) -> Option<f64> {
    v.as_f64().filter(|x| x.is_finite())
}

/// Reads one value of `kind`.
fn read_value(v: &Yaml, kind: Kind) -> Option<Val> {
    let text = v.as_str().and_then(literal);
    match kind {
        Kind::Bool => v.as_bool().map(Val::Bool),
        Kind::Number => yaml_number(v)
            .or_else(|| match &text {
                Some((xs, false)) => Some(xs[0]),
                _ => None,
            })
            .map(Val::Number),
        Kind::Size => {
            let n = v.as_u64().or_else(|| match &text {
                Some((xs, false)) if xs[0].fract() == 0.0 && xs[0] >= 0.0 => Some(xs[0] as u64),
                _ => None,
            })?;
            u32::try_from(n).ok().filter(|&n| n > 0).map(Val::Size)
        }
        Kind::Pair => {
            let xs: Vec<f64> = match (v.as_sequence(), text) {
                (Some(seq), _) => seq.iter().map(yaml_number).collect::<Option<_>>()?,
                (None, Some((xs, true))) => xs,
                _ => return None,
            };
            match xs.as_slice() {
                [a, b] => Some(Val::Pair(*a, *b)),
                _ => None,
            }
        }
    }
}

/// The valid names directly under `prefix` (`""` for the top level).
fn children(prefix: &str) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = KEYS
        .iter()
        .filter_map(|(key, _, _)| {
            let rest = if prefix.is_empty() {
                Some(*key)
            } else {
                key.strip_prefix(prefix)?.strip_prefix('.')
            };
            rest.map(|r| r.split('.').next().unwrap_or(r))
        })
        .collect();
    names.dedup();
    names.sort_unstable();
    names.dedup();
    names
}

fn show(v: &Yaml) -> String {
    serde_yaml::to_string(v)
        .map(|s| s.trim_end().replace('\n', " "))
        .unwrap_or_else(|_| format!("{v:?}"))
}

/// Walks the mapping found at `prefix`, storing every leaf into `out`.
fn walk(
    map: &serde_yaml::Mapping,
    prefix: &str,
    source: &str,
    out: &mut BTreeMap<&'static str, Val>,
) -> Result<()> {
    let valid = children(prefix);
    let section = if prefix.is_empty() {
        "at the top level".to_string()
    } else {
        format!("in `{prefix}`")
    };
    for (k, v) in map {
        let Some(name) = k.as_str() else {
            bail!(
                "{source}: key {} {section} is not a name (valid keys: {})",
                show(k),
                list(&valid)
            );
        };
        let path = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        };
        if let Some((key, kind, _)) = KEYS.iter().find(|(key, _, _)| *key == path) {
            let val = read_value(v, *kind).ok_or_else(|| {
                anyhow!(
                    "{source}: key `{path}` = {}: expected {}",
                    show(v),
                    kind.expected()
                )
            })?;
            out.insert(key, val);
        } else if valid.contains(&name) {
            let Some(inner) = v.as_mapping() else {
                bail!(
                    "{source}: key `{path}` = {}: expected a section with the keys {}",
                    show(v),
                    list(&children(&path))
                );
            };
            walk(inner, &path, source, out)?;
        } else {
            bail!(
                "{source}: unknown key `{path}` {section} (valid keys: {})",
                list(&valid)
            );
        }
    }
    Ok(())
}

fn list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses an augmentation YAML text (`source` names it in errors). Absent keys keep the
/// original's defaults; an empty document gives [`CxrAugmentationConfig::default`].
pub fn parse(yaml_text: &str, source: &str) -> Result<CxrAugmentationConfig> {
    let doc: Yaml =
        serde_yaml::from_str(yaml_text).with_context(|| format!("{source}: invalid YAML"))?;
    let mut values = BTreeMap::new();
    match &doc {
        Yaml::Null => {}
        Yaml::Mapping(map) => walk(map, "", source, &mut values)?,
        other => bail!(
            "{source}: expected a mapping with the sections {}, found {}",
            list(&children("")),
            show(other)
        ),
    }
    let config = from_values(&values);
    check_ranges(&config, source)?;
    Ok(config)
}

/// Value checks that do not depend on which augmentations are on.
fn check_ranges(config: &CxrAugmentationConfig, source: &str) -> Result<()> {
    let a = &config.augmentation;
    let probabilities = [
        (
            "augmentation.elastic_transform.p_apply",
            a.elastic_transform.p_apply,
        ),
        (
            "augmentation.gaussian_noise.p_apply",
            a.gaussian_noise.p_apply,
        ),
        (
            "augmentation.random_horizontal_flip.prob",
            a.random_horizontal_flip_prob,
        ),
    ];
    for (key, p) in probabilities {
        if !(0.0..=1.0).contains(&p) {
            bail!("{source}: key `{key}` = {p}: expected a probability in [0, 1]");
        }
    }
    let pairs = [
        ("augmentation.random_crop.scale", a.random_crop_scale),
        ("augmentation.gamma.scale", a.gamma_scale),
        ("augmentation.random_erasing.scale", a.random_erasing.scale),
        ("augmentation.random_erasing.ratio", a.random_erasing.ratio),
    ];
    for (key, (lo, hi)) in pairs {
        if lo > hi {
            bail!(
                "{source}: key `{key}` = ({lo}, {hi}): the first value must not exceed the second"
            );
        }
    }
    Ok(())
}

fn float(x: f64) -> Value {
    Value::Float(x)
}

fn pair(p: (f64, f64)) -> Value {
    Value::Array(vec![Value::Float(p.0), Value::Float(p.1)])
}

fn spec(name: &str, params: Vec<(&str, Value)>) -> TransformSpec {
    TransformSpec {
        name: name.to_string(),
        params: params
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<Table>(),
    }
}

/// The transforms of `create_transforms_from_config(config, apply_augmentations,
/// expand_channels)`, in order:
///
/// `ExpandChannels` (if `expand_channels`), then with augmentations: `RandomAffine`,
/// `RandomResizedCrop` (or `Resize` without `use_random_crop`), `RandomHorizontalFlip`,
/// `RandomGamma`, `ColorJitter`, `ElasticTransform`, `CenterCrop`, `RandomErasing`,
/// `AddGaussianNoise` (each optional item only when its flag is on); without: `Resize`,
/// `CenterCrop`.
pub fn pipeline(
    config: &CxrAugmentationConfig,
    apply_augmentations: bool,
    expand_channels: bool,
) -> Vec<TransformSpec> {
    let pre = &config.preprocess;
    let a = &config.augmentation;
    let resize = || spec("Resize", vec![("size", Value::Integer(pre.resize.into()))]);
    let center_crop = || {
        spec(
            "CenterCrop",
            vec![("size", Value::Integer(pre.center_crop_size.into()))],
        )
    };
    let mut out = Vec::new();
    if expand_channels {
        out.push(spec("ExpandChannels", vec![]));
    }
    if !apply_augmentations {
        out.push(resize());
        out.push(center_crop());
        return out;
    }
    if a.use_random_affine {
        let r = &a.random_affine;
        out.push(spec(
            "RandomAffine",
            vec![
                ("degrees", float(r.max_angle)),
                (
                    "translate",
                    pair((r.max_horizontal_shift, r.max_vertical_shift)),
                ),
                ("shear", float(r.max_shear)),
            ],
        ));
    }
    if a.use_random_crop {
        out.push(spec(
            "RandomResizedCrop",
            vec![
                ("size", Value::Integer(pre.resize.into())),
                ("scale", pair(a.random_crop_scale)),
            ],
        ));
    } else {
        out.push(resize());
    }
    if a.use_random_horizontal_flip {
        out.push(spec(
            "RandomHorizontalFlip",
            vec![("p", float(a.random_horizontal_flip_prob))],
        ));
    }
    if a.use_gamma_transform {
        out.push(spec("RandomGamma", vec![("scale", pair(a.gamma_scale))]));
    }
    if a.use_random_color {
        let c = &a.random_color;
        out.push(spec(
            "ColorJitter",
            vec![
                ("brightness", float(c.brightness)),
                ("contrast", float(c.contrast)),
                ("saturation", float(c.saturation)),
            ],
        ));
    }
    if a.use_elastic_transform {
        let e = &a.elastic_transform;
        out.push(spec(
            "ElasticTransform",
            vec![
                ("alpha", float(e.alpha)),
                ("sigma", float(e.sigma)),
                ("p_apply", float(e.p_apply)),
            ],
        ));
    }
    out.push(center_crop());
    if a.use_random_erasing {
        out.push(spec(
            "RandomErasing",
            vec![
                ("scale", pair(a.random_erasing.scale)),
                ("ratio", pair(a.random_erasing.ratio)),
            ],
        ));
    }
    if a.add_gaussian_noise {
        let g = &a.gaussian_noise;
        out.push(spec(
            "AddGaussianNoise",
            vec![("p_apply", float(g.p_apply)), ("std", float(g.std))],
        ));
    }
    out
}

/// The built-in transform of `spec`, created from its parameters.
fn create(spec: &TransformSpec) -> Result<Box<dyn Transform>> {
    let json = serde_json::to_value(&spec.params).context("transform parameters")?;
    let params = Params::from_value(json)?;
    let p = &params;
    let made: ssl_plugin_api::Result<Box<dyn Transform>> = match spec.name.as_str() {
        "ExpandChannels" => tf::ExpandChannels::from_params(p).map(|t| Box::new(t) as _),
        "RandomAffine" => tf::RandomAffine::from_params(p).map(|t| Box::new(t) as _),
        "RandomResizedCrop" => tf::RandomResizedCrop::from_params(p).map(|t| Box::new(t) as _),
        "Resize" => tf::Resize::from_params(p).map(|t| Box::new(t) as _),
        "RandomHorizontalFlip" => {
            tf::RandomHorizontalFlip::from_params(p).map(|t| Box::new(t) as _)
        }
        "RandomGamma" => tf::RandomGamma::from_params(p).map(|t| Box::new(t) as _),
        "ColorJitter" => tf::ColorJitter::from_params(p).map(|t| Box::new(t) as _),
        "ElasticTransform" => tf::ElasticTransform::from_params(p).map(|t| Box::new(t) as _),
        "CenterCrop" => tf::CenterCrop::from_params(p).map(|t| Box::new(t) as _),
        "RandomErasing" => tf::RandomErasing::from_params(p).map(|t| Box::new(t) as _),
        "AddGaussianNoise" => tf::AddGaussianNoise::from_params(p).map(|t| Box::new(t) as _),
        other => bail!("no built-in transform `{other}`"),
    };
    Ok(made?)
}

/// The YAML keys that feed the transform `name` (for error messages).
fn keys_of(name: &str) -> &'static str {
    match name {
        "RandomAffine" => "augmentation.random_affine",
        "RandomResizedCrop" => "preprocess.resize, augmentation.random_crop.scale",
        "Resize" => "preprocess.resize",
        "RandomHorizontalFlip" => "augmentation.random_horizontal_flip.prob",
        "RandomGamma" => "augmentation.gamma.scale",
        "ColorJitter" => "augmentation.random_color",
        "ElasticTransform" => "augmentation.elastic_transform",
        "CenterCrop" => "preprocess.center_crop_size",
        "RandomErasing" => "augmentation.random_erasing",
        "AddGaussianNoise" => "augmentation.gaussian_noise",
        _ => "(none)",
    }
}

/// Parses `yaml_text` (`source` names it in errors) and builds its two pipelines: `train`
/// with augmentations and `val_without_augmentation` (`Resize`, `CenterCrop`), each led by
/// `ExpandChannels` when `expand_channels`. Every transform is created once to check its
/// parameters, so a bad value fails here, naming the file and the keys.
pub fn cxr_pipelines(yaml_text: &str, source: &str, expand_channels: bool) -> Result<CxrPipelines> {
    let config = parse(yaml_text, source)?;
    let pipelines = CxrPipelines {
        train: pipeline(&config, true, expand_channels),
        val_without_augmentation: pipeline(&config, false, expand_channels),
    };
    for s in pipelines
        .train
        .iter()
        .chain(&pipelines.val_without_augmentation)
    {
        create(s).with_context(|| {
            format!(
                "{source}: the values of {} do not make a valid {}",
                keys_of(&s.name),
                s.name
            )
        })?;
    }
    Ok(pipelines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssl_plugin_api::{Image, Pixels};

    const ENCODER: &str = "cxr_ssl_encoder_augmentations.yaml";
    const LINEAR: &str = "cxr_linear_head_augmentations.yaml";

    fn names(specs: &[TransformSpec]) -> Vec<&str> {
        specs.iter().map(|s| s.name.as_str()).collect()
    }

    /// `name` with the parameters of the TOML table `params`.
    fn expect(name: &str, params: &str) -> TransformSpec {
        TransformSpec {
            name: name.to_string(),
            params: params.parse::<Table>().unwrap(),
        }
    }

    fn err(yaml: &str) -> String {
        format!("{:#}", parse(yaml, "aug.yaml").expect_err(yaml))
    }

    #[test]
    fn key_table_has_no_duplicates() {
        let mut keys: Vec<&str> = KEYS.iter().map(|k| k.0).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), KEYS.len());
        assert_eq!(children(""), ["augmentation", "preprocess"]);
        assert_eq!(children("preprocess"), ["center_crop_size", "resize"]);
    }

    #[test]
    fn defaults_are_the_originals() {
        let d = CxrAugmentationConfig::default();
        assert_eq!(parse("", "empty.yaml").unwrap(), d);
        assert_eq!(
            d.preprocess,
            Preprocess {
                center_crop_size: 224,
                resize: 256
            }
        );
        let a = &d.augmentation;
        assert!(!a.use_random_crop && !a.use_random_affine && !a.add_gaussian_noise);
        assert_eq!(a.random_crop_scale, (0.9, 1.0));
        assert_eq!(
            a.elastic_transform,
            ElasticConfig {
                sigma: 4.0,
                alpha: 35.0,
                p_apply: 0.5
            }
        );
        assert_eq!(
            a.gaussian_noise,
            GaussianNoiseConfig {
                std: 0.01,
                p_apply: 0.5
            }
        );
        assert_eq!(a.random_horizontal_flip_prob, 0.5);
        assert_eq!(
            a.random_affine,
            RandomAffineConfig {
                max_angle: 0.0,
                max_horizontal_shift: 0.0,
                max_vertical_shift: 0.0,
                max_shear: 5.0
            }
        );
        assert_eq!(
            a.random_color,
            RandomColorConfig {
                brightness: 0.0,
                contrast: 0.1,
                saturation: 0.0
            }
        );
        assert_eq!(a.gamma_scale, (0.5, 1.5));
        assert_eq!(a.label_smoothing_epsilon, 0.1);
        assert_eq!(a.random_erasing.scale, (0.01, 0.1));
        assert_eq!(a.random_erasing.ratio, (0.3, 3.3));
        // All flags off: training is only resize and centre crop.
        assert_eq!(
            names(&pipeline(&d, true, true)),
            ["ExpandChannels", "Resize", "CenterCrop"]
        );
    }

    #[test]
    fn shipped_encoder_file_has_the_originals_values() {
        let c = parse(builtin_yaml(ENCODER).unwrap(), ENCODER).unwrap();
        let mut want = CxrAugmentationConfig::default();
        let a = &mut want.augmentation;
        a.use_random_crop = true;
        a.use_random_horizontal_flip = true;
        a.use_random_affine = true;
        a.use_random_color = true;
        a.add_gaussian_noise = true;
        a.use_gamma_transform = true;
        a.use_random_erasing = true;
        a.use_elastic_transform = true;
        a.random_crop_scale = (0.4, 1.0);
        a.elastic_transform = ElasticConfig {
            sigma: 4.0,
            alpha: 34.0,
            p_apply: 0.4,
        };
        a.gaussian_noise.std = 0.05;
        a.random_affine = RandomAffineConfig {
            max_angle: 180.0,
            max_horizontal_shift: 0.0,
            max_vertical_shift: 0.0,
            max_shear: 40.0,
        };
        a.random_color = RandomColorConfig {
            brightness: 0.2,
            contrast: 0.2,
            saturation: 0.0,
        };
        a.random_erasing.scale = (0.15, 0.4);
        a.random_erasing.ratio = (0.33, 3.0);
        assert_eq!(c, want);
    }

    #[test]
    fn shipped_linear_head_file_has_the_originals_values() {
        let c = parse(builtin_yaml(LINEAR).unwrap(), LINEAR).unwrap();
        let mut want = CxrAugmentationConfig::default();
        let a = &mut want.augmentation;
        a.use_random_crop = true;
        a.use_random_horizontal_flip = true;
        a.use_random_affine = true;
        a.use_random_color = true;
        a.use_gamma_transform = true;
        a.random_crop_scale = (0.8, 1.0);
        a.random_affine = RandomAffineConfig {
            max_angle: 30.0,
            max_horizontal_shift: 0.0,
            max_vertical_shift: 0.0,
            max_shear: 15.0,
        };
        a.random_color = RandomColorConfig {
            brightness: 0.2,
            contrast: 0.2,
            saturation: 0.0,
        };
        assert_eq!(c, want);
    }

    #[test]
    fn encoder_pipelines_are_the_originals() {
        let p = cxr_pipelines(builtin_yaml(ENCODER).unwrap(), ENCODER, true).unwrap();
        let train = [
            expect("ExpandChannels", ""),
            expect(
                "RandomAffine",
                "degrees = 180.0\ntranslate = [0.0, 0.0]\nshear = 40.0",
            ),
            expect("RandomResizedCrop", "size = 256\nscale = [0.4, 1.0]"),
            expect("RandomHorizontalFlip", "p = 0.5"),
            expect("RandomGamma", "scale = [0.5, 1.5]"),
            expect(
                "ColorJitter",
                "brightness = 0.2\ncontrast = 0.2\nsaturation = 0.0",
            ),
            expect(
                "ElasticTransform",
                "alpha = 34.0\nsigma = 4.0\np_apply = 0.4",
            ),
            expect("CenterCrop", "size = 224"),
            expect("RandomErasing", "scale = [0.15, 0.4]\nratio = [0.33, 3.0]"),
            expect("AddGaussianNoise", "p_apply = 0.5\nstd = 0.05"),
        ];
        assert_eq!(p.train, train);
        let val = [
            expect("ExpandChannels", ""),
            expect("Resize", "size = 256"),
            expect("CenterCrop", "size = 224"),
        ];
        assert_eq!(p.val_without_augmentation, val);
        // Without channel expansion only the first item goes.
        let q = cxr_pipelines(builtin_yaml(ENCODER).unwrap(), ENCODER, false).unwrap();
        assert_eq!(q.train, train[1..]);
        assert_eq!(q.val_without_augmentation, val[1..]);
    }

    #[test]
    fn linear_head_pipelines_are_the_originals() {
        let p = cxr_pipelines(builtin_yaml(LINEAR).unwrap(), LINEAR, true).unwrap();
        let train = [
            expect("ExpandChannels", ""),
            expect(
                "RandomAffine",
                "degrees = 30.0\ntranslate = [0.0, 0.0]\nshear = 15.0",
            ),
            expect("RandomResizedCrop", "size = 256\nscale = [0.8, 1.0]"),
            expect("RandomHorizontalFlip", "p = 0.5"),
            expect("RandomGamma", "scale = [0.5, 1.5]"),
            expect(
                "ColorJitter",
                "brightness = 0.2\ncontrast = 0.2\nsaturation = 0.0",
            ),
            expect("CenterCrop", "size = 224"),
        ];
        assert_eq!(p.train, train);
        assert_eq!(
            names(&p.val_without_augmentation),
            ["ExpandChannels", "Resize", "CenterCrop"]
        );
    }

    #[test]
    fn pipelines_run_and_keep_channels_identical() {
        // As the original's test: a white 312×312 grey image gives [3, 224, 224] views with
        // identical channels that differ between seeds; plus a textured image.
        let white = Image::from_u8(312, 312, 1, vec![255; 312 * 312]).unwrap();
        let texture = Image::from_u8(
            300,
            280,
            1,
            (0..300 * 280).map(|i| (i * 7919 % 251) as u8).collect(),
        )
        .unwrap();
        for name in BUILTIN_YAML_NAMES {
            let p = cxr_pipelines(builtin_yaml(name).unwrap(), name, true).unwrap();
            for (which, specs) in [("train", &p.train), ("val", &p.val_without_augmentation)] {
                let steps: Vec<_> = specs.iter().map(|s| create(s).unwrap()).collect();
                let mut views = Vec::new();
                for (input, seed) in [(&white, 1u64), (&white, 2), (&texture, 3)] {
                    let mut img = input.clone();
                    for (i, t) in steps.iter().enumerate() {
                        img = t.apply(img, seed * 100 + i as u64).unwrap();
                    }
                    assert_eq!((img.channels(), img.height(), img.width()), (3, 224, 224));
                    let Pixels::F32(v) = img.pixels() else {
                        panic!("F32 output expected")
                    };
                    assert!(
                        v.chunks_exact(3).all(|p| p[0] == p[1] && p[1] == p[2]),
                        "{name} {which}: channels differ"
                    );
                    assert!(v.iter().all(|x| (0.0..=1.0).contains(x)));
                    views.push(v.to_vec());
                }
                if which == "train" {
                    assert_ne!(
                        views[0], views[1],
                        "{name}: views of seeds 1 and 2 are equal"
                    );
                } else {
                    assert_eq!(views[0], views[1], "{name}: validation is deterministic");
                }
            }
        }
    }

    #[test]
    fn tuple_strings_and_lists_parse() {
        let yaml =
            "augmentation:\n  random_crop:\n    scale: (0.4, 1.0)\n  elastic_transform:\n    \
                    sigma: (4)\n    alpha: '(35.5)'\n  gamma:\n    scale: [0.25, 2]\n  \
                    random_erasing:\n    ratio: '(1, 3,)'\npreprocess:\n  resize: (300)\n";
        let c = parse(yaml, "t.yaml").unwrap();
        let a = &c.augmentation;
        assert_eq!(a.random_crop_scale, (0.4, 1.0));
        assert_eq!(a.elastic_transform.sigma, 4.0);
        assert_eq!(a.elastic_transform.alpha, 35.5);
        assert_eq!(a.gamma_scale, (0.25, 2.0));
        assert_eq!(a.random_erasing.ratio, (1.0, 3.0));
        assert_eq!(c.preprocess.resize, 300);
        assert_eq!(literal("(0.4, 1.0)"), Some((vec![0.4, 1.0], true)));
        assert_eq!(literal(" (4) "), Some((vec![4.0], false)));
        assert_eq!(literal("(4,)"), Some((vec![4.0], true)));
        assert_eq!(literal("(a, 1)"), None);
        assert_eq!(literal("(inf, 1)"), None);
    }

    #[test]
    fn unknown_keys_are_named_with_the_file_and_the_valid_ones() {
        let e = err("augmentation:\n  use_random_flip: True\n");
        assert!(e.contains("aug.yaml"), "{e}");
        assert!(e.contains("`augmentation.use_random_flip`"), "{e}");
        assert!(e.contains("`use_random_horizontal_flip`"), "{e}");
        let e = err("augmentation:\n  random_affine:\n    max_rotation: 3\n");
        assert!(
            e.contains("`augmentation.random_affine.max_rotation`"),
            "{e}"
        );
        assert!(
            e.contains("`max_angle`") && e.contains("`max_shear`"),
            "{e}"
        );
        let e = err("preprocessing:\n  resize: 3\n");
        assert!(
            e.contains("`preprocessing`") && e.contains("`preprocess`"),
            "{e}"
        );
        assert!(e.contains("`augmentation`"), "{e}");
    }

    #[test]
    fn wrong_types_name_the_key_and_what_was_expected() {
        let e = err("augmentation:\n  use_random_crop: 3\n");
        assert!(
            e.contains("`augmentation.use_random_crop`") && e.contains("True or False"),
            "{e}"
        );
        let e = err("augmentation:\n  random_crop:\n    scale: (0.4)\n");
        assert!(
            e.contains("`augmentation.random_crop.scale`") && e.contains("pair"),
            "{e}"
        );
        let e = err("augmentation:\n  random_crop:\n    scale: [0.1, 0.2, 0.3]\n");
        assert!(e.contains("pair"), "{e}");
        let e = err("preprocess:\n  resize: 25.5\n");
        assert!(
            e.contains("`preprocess.resize`") && e.contains("positive integer"),
            "{e}"
        );
        let e = err("preprocess:\n  center_crop_size: 0\n");
        assert!(e.contains("positive integer"), "{e}");
        let e = err("augmentation:\n  gamma: 3\n");
        assert!(
            e.contains("`augmentation.gamma`") && e.contains("`scale`"),
            "{e}"
        );
        let e = err("augmentation:\n  random_color:\n    contrast: high\n");
        assert!(
            e.contains("`augmentation.random_color.contrast`") && e.contains("a number"),
            "{e}"
        );
        let e = err("- 1\n- 2\n");
        assert!(e.contains("aug.yaml") && e.contains("mapping"), "{e}");
        let e = err("augmentation: [\n");
        assert!(e.contains("aug.yaml") && e.contains("invalid YAML"), "{e}");
        let e = err("augmentation:\n  random_horizontal_flip:\n    prob: 1.5\n");
        assert!(e.contains("probability"), "{e}");
        let e = err("augmentation:\n  gamma:\n    scale: (1.5, 0.5)\n");
        assert!(e.contains("`augmentation.gamma.scale`"), "{e}");
    }

    #[test]
    fn values_a_transform_refuses_fail_with_the_file_and_keys() {
        let yaml = "augmentation:\n  use_random_affine: True\n  random_affine:\n    \
                    max_horizontal_shift: 2.0\n";
        let e = format!("{:#}", cxr_pipelines(yaml, "bad.yaml", true).unwrap_err());
        assert!(
            e.contains("bad.yaml") && e.contains("augmentation.random_affine"),
            "{e}"
        );
        assert!(
            e.contains("RandomAffine") && e.contains("`translate`"),
            "{e}"
        );
        // The same value is fine while the augmentation is off (the original ignores it).
        let off = yaml.replace("True", "False");
        assert!(cxr_pipelines(&off, "ok.yaml", true).is_ok());
    }

    #[test]
    fn builtin_yaml_knows_the_shipped_files_only() {
        for name in BUILTIN_YAML_NAMES {
            let text = builtin_yaml(name).unwrap();
            assert!(text.contains("preprocess:") && text.contains("augmentation:"));
        }
        assert!(builtin_yaml("configs/cxr_ssl_encoder_augmentations.yaml").is_none());
        assert!(builtin_yaml("other.yaml").is_none());
    }
}
