//! The chest X-ray augmentation YAML of the original (InnerEye's `ssl_augmentation_config.py`
//! keys, read like yacs does) and the transform pipelines it describes
//! (`create_transforms_from_config`).
//!
//! - [`CxrAugmentationConfig`] and its sections are the one definition of the keys: each
//!   field's doc line, name, type and the original's default. [`parse`] reads a YAML text
//!   into it; absent keys keep the defaults ([`CxrAugmentationConfig::default`]). Pairs may be written as in the
//!   original files, the string `(0.4, 1.0)`, or as a YAML list `[0.4, 1.0]`; a parenthesised
//!   number such as `(4)` is that number. Numbers may be integers or decimals wherever a
//!   number is expected; sizes must be positive integers. An unknown key (at any level) or a
//!   value of the wrong type is an error naming the file and the key.
//! - [`pipeline`] builds the transform list of one use; [`cxr_pipelines`] does both uses
//!   (training with augmentations, validation without) from a YAML text, and
//!   [`CxrPipelines::check`] creates every transform through the registry, like any other
//!   transform, to check that it accepts its parameters.
//! - [`builtin_yaml`] gives the two shipped files (`configs/*.yaml`) by file name.

use crate::config::schema::{settings, Fields};
use crate::config::TransformSpec;
use crate::registry::Registry;
use anyhow::{anyhow, bail, Context, Result};
use serde_yaml::Value as Yaml;
use ssl_plugin_api::host::TransformHandle;
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

settings! {
    /// The whole augmentation config of a chest X-ray dataset.
    #[derive(Clone, Debug, PartialEq)]
    pub struct CxrAugmentationConfig as dyn Node {
        /// sizes of the resize and the final crop
        preprocess: Preprocess = Preprocess::default(),
        /// which augmentations are on, and their values
        augmentation: Augmentation = Augmentation::default(),
    }
}

settings! {
    /// `preprocess` section.
    #[derive(Clone, Debug, PartialEq)]
    pub struct Preprocess as dyn Node {
        /// side of the final central crop
        center_crop_size: u32 = 224,
        /// output side of the random crop, or shorter side of the resize
        resize: u32 = 256,
    }
}

settings! {
    /// `augmentation` section.
    #[derive(Clone, Debug, PartialEq)]
    pub struct Augmentation as dyn Node {
        /// `RandomResizedCrop`, else `Resize`
        use_random_crop: bool = false,
        /// `RandomHorizontalFlip`
        use_random_horizontal_flip: bool = false,
        /// `RandomAffine`
        use_random_affine: bool = false,
        /// `ColorJitter`
        use_random_color: bool = false,
        /// `AddGaussianNoise`
        add_gaussian_noise: bool = false,
        /// `RandomGamma`
        use_gamma_transform: bool = false,
        /// `RandomErasing`
        use_random_erasing: bool = false,
        /// `ElasticTransform`
        use_elastic_transform: bool = false,
        /// the random crop
        random_crop: RandomCropConfig = RandomCropConfig::default(),
        /// the elastic transform
        elastic_transform: ElasticConfig = ElasticConfig::default(),
        /// the Gaussian noise
        gaussian_noise: GaussianNoiseConfig = GaussianNoiseConfig::default(),
        /// the horizontal flip
        random_horizontal_flip: RandomHorizontalFlipConfig = RandomHorizontalFlipConfig::default(),
        /// the affine transform
        random_affine: RandomAffineConfig = RandomAffineConfig::default(),
        /// the colour jitter
        random_color: RandomColorConfig = RandomColorConfig::default(),
        /// the gamma transform
        gamma: GammaConfig = GammaConfig::default(),
        /// label smoothing (read but unused by SSL, as in the original)
        label_smoothing: LabelSmoothingConfig = LabelSmoothingConfig::default(),
        /// the random erasing
        random_erasing: RandomErasingConfig = RandomErasingConfig::default(),
    }
}

settings! {
    /// `augmentation.random_crop`.
    #[derive(Clone, Debug, PartialEq)]
    pub struct RandomCropConfig as dyn Node {
        /// range of the cropped fraction of the area
        scale: (f64, f64) = (0.9, 1.0),
    }
}

settings! {
    /// `augmentation.elastic_transform`.
    #[derive(Clone, Debug, PartialEq)]
    pub struct ElasticConfig as dyn Node {
        /// smoothing of the displacement field, in pixels
        sigma: f64 = 4.0,
        /// strength of the displacement
        alpha: f64 = 35.0,
        /// probability of applying it
        p_apply: f64 = 0.5,
    }
}

settings! {
    /// `augmentation.gaussian_noise`.
    #[derive(Clone, Debug, PartialEq)]
    pub struct GaussianNoiseConfig as dyn Node {
        /// standard deviation of the noise
        std: f64 = 0.01,
        /// probability of applying it
        p_apply: f64 = 0.5,
    }
}

settings! {
    /// `augmentation.random_horizontal_flip`.
    #[derive(Clone, Debug, PartialEq)]
    pub struct RandomHorizontalFlipConfig as dyn Node {
        /// probability of flipping
        prob: f64 = 0.5,
    }
}

settings! {
    /// `augmentation.random_affine`.
    #[derive(Clone, Debug, PartialEq)]
    pub struct RandomAffineConfig as dyn Node {
        /// rotation in `U(-a, a)` degrees
        max_angle: f64 = 0.0,
        /// horizontal shift, fraction of the width
        max_horizontal_shift: f64 = 0.0,
        /// vertical shift, fraction of the height
        max_vertical_shift: f64 = 0.0,
        /// x-shear in `U(-s, s)` degrees
        max_shear: f64 = 5.0,
    }
}

settings! {
    /// `augmentation.random_color`.
    #[derive(Clone, Debug, PartialEq)]
    pub struct RandomColorConfig as dyn Node {
        /// brightness jitter
        brightness: f64 = 0.0,
        /// contrast jitter
        contrast: f64 = 0.1,
        /// saturation jitter
        saturation: f64 = 0.0,
    }
}

settings! {
    /// `augmentation.gamma`.
    #[derive(Clone, Debug, PartialEq)]
    pub struct GammaConfig as dyn Node {
        /// range of the gamma exponent
        scale: (f64, f64) = (0.5, 1.5),
    }
}

settings! {
    /// `augmentation.label_smoothing`.
    #[derive(Clone, Debug, PartialEq)]
    pub struct LabelSmoothingConfig as dyn Node {
        /// smoothing of the labels
        epsilon: f64 = 0.1,
    }
}

settings! {
    /// `augmentation.random_erasing`.
    #[derive(Clone, Debug, PartialEq)]
    pub struct RandomErasingConfig as dyn Node {
        /// range of the erased fraction of the area
        scale: (f64, f64) = (0.01, 0.1),
        /// range of the aspect ratio of the erased box
        ratio: (f64, f64) = (0.3, 3.3),
    }
}

/// The two pipelines of one augmentation file.
#[derive(Clone, Debug, PartialEq)]
pub struct CxrPipelines {
    /// With augmentations (`apply_augmentations=True`).
    pub train: Vec<TransformSpec>,
    /// Without: `[ExpandChannels,] Resize, CenterCrop`.
    pub val_without_augmentation: Vec<TransformSpec>,
}

/// A key of the YAML, value or section, read in place from the YAML found at its dotted `path`
/// (`source` names the file in errors).
pub trait Node {
    /// Reads `value` into this key.
    fn read(&mut self, value: &Yaml, path: &str, source: &str) -> Result<()>;
}

/// A value key: how it is read from YAML and what the error says was expected.
trait Leaf: Sized {
    const EXPECTED: &'static str;
    fn from_yaml(value: &Yaml) -> Option<Self>;
}

impl<T: Leaf> Node for T {
    fn read(&mut self, value: &Yaml, path: &str, source: &str) -> Result<()> {
        *self = T::from_yaml(value).ok_or_else(|| {
            anyhow!(
                "{source}: key `{path}` = {}: expected {}",
                show(value),
                T::EXPECTED
            )
        })?;
        Ok(())
    }
}

impl Leaf for bool {
    const EXPECTED: &'static str = "True or False";
    fn from_yaml(v: &Yaml) -> Option<Self> {
        v.as_bool()
    }
}

/// Sizes are positive integers.
impl Leaf for u32 {
    const EXPECTED: &'static str = "a positive integer";
    fn from_yaml(v: &Yaml) -> Option<Self> {
        let n = v.as_u64().or_else(|| match v.as_str().and_then(literal) {
            Some((xs, false)) if xs[0].fract() == 0.0 && xs[0] >= 0.0 => Some(xs[0] as u64),
            _ => None,
        })?;
        u32::try_from(n).ok().filter(|&n| n > 0)
    }
}

impl Leaf for f64 {
    const EXPECTED: &'static str = "a number";
    fn from_yaml(v: &Yaml) -> Option<Self> {
        yaml_number(v).or_else(|| match v.as_str().and_then(literal) {
            Some((xs, false)) => Some(xs[0]),
            _ => None,
        })
    }
}

impl Leaf for (f64, f64) {
    const EXPECTED: &'static str = "a pair of numbers such as (0.4, 1.0) or [0.4, 1.0]";
    fn from_yaml(v: &Yaml) -> Option<Self> {
        let xs: Vec<f64> = match (v.as_sequence(), v.as_str().and_then(literal)) {
            (Some(seq), _) => seq.iter().map(yaml_number).collect::<Option<_>>()?,
            (None, Some((xs, true))) => xs,
            _ => return None,
        };
        match xs.as_slice() {
            [a, b] => Some((*a, *b)),
            _ => None,
        }
    }
}

/// Sections are read key by key; an unknown key names the valid ones.
macro_rules! sections {
    ($($section:ty),*) => {
        $(impl Node for $section {
            fn read(&mut self, value: &Yaml, path: &str, source: &str) -> Result<()> {
                let Some(map) = value.as_mapping() else {
                    bail!(
                        "{source}: key `{path}` = {}: expected a section with the keys {}",
                        show(value),
                        list(&sorted_names::<$section>())
                    );
                };
                read_section(self, map, path, source)
            }
        })*
    };
}

sections!(
    Preprocess,
    Augmentation,
    RandomCropConfig,
    ElasticConfig,
    GaussianNoiseConfig,
    RandomHorizontalFlipConfig,
    RandomAffineConfig,
    RandomColorConfig,
    GammaConfig,
    LabelSmoothingConfig,
    RandomErasingConfig
);

/// The keys of section `S`, sorted (as the errors list them).
fn sorted_names<S: Fields<dyn Node>>() -> Vec<&'static str> {
    let mut names = S::names();
    names.sort_unstable();
    names
}

/// Reads every key of `map` into `section`, found at `path` (`""`: the top level).
fn read_section<S: Fields<dyn Node>>(
    section: &mut S,
    map: &serde_yaml::Mapping,
    path: &str,
    source: &str,
) -> Result<()> {
    let valid = sorted_names::<S>();
    let place = if path.is_empty() {
        "at the top level".to_string()
    } else {
        format!("in `{path}`")
    };
    for (k, v) in map {
        let Some(name) = k.as_str() else {
            bail!(
                "{source}: key {} {place} is not a name (valid keys: {})",
                show(k),
                list(&valid)
            );
        };
        let key = if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        };
        match section.field_mut(name) {
            Some(node) => node.read(v, &key, source)?,
            None => bail!(
                "{source}: unknown key `{key}` {place} (valid keys: {})",
                list(&valid)
            ),
        }
    }
    Ok(())
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

fn show(v: &Yaml) -> String {
    serde_yaml::to_string(v)
        .map(|s| s.trim_end().replace('\n', " "))
        .unwrap_or_else(|_| format!("{v:?}"))
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
    let mut config = CxrAugmentationConfig::default();
    match &doc {
        Yaml::Null => {}
        Yaml::Mapping(map) => read_section(&mut config, map, "", source)?,
        other => bail!(
            "{source}: expected a mapping with the sections {}, found {}",
            list(&sorted_names::<CxrAugmentationConfig>()),
            show(other)
        ),
    }
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
            a.random_horizontal_flip.prob,
        ),
    ];
    for (key, p) in probabilities {
        if !(0.0..=1.0).contains(&p) {
            bail!("{source}: key `{key}` = {p}: expected a probability in [0, 1]");
        }
    }
    let pairs = [
        ("augmentation.random_crop.scale", a.random_crop.scale),
        ("augmentation.gamma.scale", a.gamma.scale),
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
                ("scale", pair(a.random_crop.scale)),
            ],
        ));
    } else {
        out.push(resize());
    }
    if a.use_random_horizontal_flip {
        out.push(spec(
            "RandomHorizontalFlip",
            vec![("p", float(a.random_horizontal_flip.prob))],
        ));
    }
    if a.use_gamma_transform {
        out.push(spec("RandomGamma", vec![("scale", pair(a.gamma.scale))]));
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
/// `ExpandChannels` when `expand_channels`. [`CxrPipelines::check`] checks their values.
pub fn cxr_pipelines(yaml_text: &str, source: &str, expand_channels: bool) -> Result<CxrPipelines> {
    let config = parse(yaml_text, source)?;
    Ok(CxrPipelines {
        train: pipeline(&config, true, expand_channels),
        val_without_augmentation: pipeline(&config, false, expand_channels),
    })
}

impl CxrPipelines {
    /// Creates every transform once through `registry`, as any other transform, so that a
    /// value a transform refuses fails here, naming the file (`source`) and the keys.
    pub fn check(&self, source: &str, registry: &Registry) -> Result<()> {
        for s in self.train.iter().chain(&self.val_without_augmentation) {
            create(s, registry).with_context(|| {
                format!(
                    "{source}: the values of {} do not make a valid {}",
                    keys_of(&s.name),
                    s.name
                )
            })?;
        }
        Ok(())
    }
}

/// The transform of `spec`, created through `registry` from its parameters.
fn create(spec: &TransformSpec, registry: &Registry) -> Result<TransformHandle> {
    let params = spec.plugin_params()?;
    Ok(registry.transform(&spec.name)?.create(&params)?)
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

    fn registry() -> Registry {
        Registry::load(&[]).unwrap()
    }

    #[test]
    fn sections_list_their_keys() {
        assert_eq!(
            sorted_names::<CxrAugmentationConfig>(),
            ["augmentation", "preprocess"]
        );
        assert_eq!(sorted_names::<Preprocess>(), ["center_crop_size", "resize"]);
        assert_eq!(Augmentation::FIELDS.len(), 17);
        assert_eq!(
            Augmentation::FIELDS[0].help(),
            "`RandomResizedCrop`, else `Resize`"
        );
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
        assert_eq!(a.random_crop.scale, (0.9, 1.0));
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
        assert_eq!(a.random_horizontal_flip.prob, 0.5);
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
        assert_eq!(a.gamma.scale, (0.5, 1.5));
        assert_eq!(a.label_smoothing.epsilon, 0.1);
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
        a.random_crop.scale = (0.4, 1.0);
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
        a.random_crop.scale = (0.8, 1.0);
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
        let registry = registry();
        for name in BUILTIN_YAML_NAMES {
            let p = cxr_pipelines(builtin_yaml(name).unwrap(), name, true).unwrap();
            p.check(name, &registry).unwrap();
            for (which, specs) in [("train", &p.train), ("val", &p.val_without_augmentation)] {
                let steps: Vec<_> = specs
                    .iter()
                    .map(|s| create(s, &registry).unwrap())
                    .collect();
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
        assert_eq!(a.random_crop.scale, (0.4, 1.0));
        assert_eq!(a.elastic_transform.sigma, 4.0);
        assert_eq!(a.elastic_transform.alpha, 35.5);
        assert_eq!(a.gamma.scale, (0.25, 2.0));
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
        let registry = registry();
        let check = |yaml: &str, source: &str| {
            cxr_pipelines(yaml, source, true)
                .unwrap()
                .check(source, &registry)
        };
        let e = format!("{:#}", check(yaml, "bad.yaml").unwrap_err());
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
        assert!(check(&off, "ok.yaml").is_ok());
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
