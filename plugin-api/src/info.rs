//! What a plugin declares about its datasets, encoders and algorithms, so the host knows how
//! to use them without creating them and without testing their names.
//!
//! A plugin attaches a declaration to the entry it has just added to its [`Plugin`]
//! (`.dataset(..).dataset_info(..)`, `.encoder(..).encoder_info(..)`,
//! `.algorithm(..).algorithm_info(..)`); an entry without one gets the `Default`. The host
//! reads them back with `DatasetFactory::info`, `EncoderFactory::info` and
//! `AlgorithmFactory::info`.
//!
//! [`Plugin`]: crate::Plugin

use crate::ffi::{AlgorithmInfoFfi, DatasetInfoFfi, EncoderInfoFfi, ImageKindFfi};
use abi_stable::std_types::{RString, Tuple2};

/// The colour layout of a dataset's images.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ImageKind {
    /// Three channels (the default).
    #[default]
    Rgb,
    /// One grey channel: pipelines from an augmentation YAML start or end by expanding it to
    /// three channels (`ExpandChannels`), as the original does for chest X-rays.
    Grey,
}

/// What the host needs to know about a dataset. `Default`: RGB images of ordinary size, all
/// the same size, no default evaluation pipeline.
///
/// ```no_run
/// use ssl_plugin_api::{DatasetInfo, ImageKind};
///
/// // Chest X-rays: grey, of many sizes, evaluated on a 224 px centre crop.
/// let info = DatasetInfo {
///     image_kind: ImageKind::Grey,
///     varying_sizes: true,
///     eval_transforms: vec![
///         ("ExpandChannels".into(), "{}".into()),
///         ("Resize".into(), r#"{"size": 256}"#.into()),
///         ("CenterCrop".into(), r#"{"size": 224}"#.into()),
///     ],
///     ..DatasetInfo::default()
/// };
/// assert!(!info.small_images);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatasetInfo {
    /// Grey or RGB images.
    pub image_kind: ImageKind,
    /// Small images (about 32 px, as CIFAR's): encoders with a small-image stem use it unless
    /// the run says otherwise (see [`EncoderInfo::small_image_param`]).
    pub small_images: bool,
    /// Images come in many sizes: a run must give a pipeline that resizes or crops them to
    /// one size before batching.
    pub varying_sizes: bool,
    /// The evaluation pipeline `embed` and `predict` use when none is given: one
    /// `(transform name, JSON object of its parameters)` per step, in order. Empty: none.
    pub eval_transforms: Vec<(String, String)>,
}

/// What the host needs to know about an encoder. `Default`: nothing to set.
///
/// ```no_run
/// use ssl_plugin_api::EncoderInfo;
///
/// let resnet = EncoderInfo { small_image_param: Some("cifar_stem".into()) };
/// assert_eq!(EncoderInfo::default().small_image_param, None);
/// # let _ = resnet;
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncoderInfo {
    /// The name of the encoder's bool parameter that selects a stem for small images (ResNet:
    /// `cifar_stem`). When a run does not give that parameter, the host sets it to the
    /// dataset's [`DatasetInfo::small_images`]. `None`: the encoder has no such option.
    pub small_image_param: Option<String>,
}

/// What the host needs to know about an SSL algorithm.
///
/// `Default`: schedule `warmup_cosine_epoch`, metric prefix left empty (registration fills in
/// the registered name, lower-cased), learning rate scaled with the number of processes.
///
/// ```no_run
/// use ssl_plugin_api::AlgorithmInfo;
///
/// // SimCLR updates its learning rate after every step; its metrics are `simclr/...`.
/// let info = AlgorithmInfo {
///     lr_schedule: "warmup_cosine_step".into(),
///     ..AlgorithmInfo::default()
/// };
/// assert!(info.scale_lr_with_processes);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlgorithmInfo {
    /// The learning-rate schedule a run with `lr_schedule = "auto"` uses:
    /// `warmup_cosine_epoch` (BYOL: warm-up then cosine decay, updated once per epoch) or
    /// `warmup_cosine_step` (SimCLR: the same curve, updated after every step); any schedule
    /// name the host accepts for `lr_schedule`.
    pub lr_schedule: String,
    /// The first part of the algorithm's metric names (`byol` gives `byol/train/loss`).
    /// Empty at registration: the registered name, lower-cased.
    pub metric_prefix: String,
    /// Whether distributed training multiplies `l_rate` by the number of processes.
    pub scale_lr_with_processes: bool,
}

impl Default for AlgorithmInfo {
    fn default() -> Self {
        AlgorithmInfo {
            lr_schedule: "warmup_cosine_epoch".into(),
            metric_prefix: String::new(),
            scale_lr_with_processes: true,
        }
    }
}

impl DatasetInfo {
    /// Checks the declaration; `Err` names what is wrong.
    pub(crate) fn check(&self) -> Result<(), String> {
        for (name, params) in &self.eval_transforms {
            if name.trim().is_empty() {
                return Err("an evaluation transform has an empty name".into());
            }
            match serde_json::from_str::<serde_json::Value>(params) {
                Ok(v) if v.is_object() => {}
                Ok(_) => {
                    return Err(format!(
                        "the parameters of evaluation transform `{name}` must be a JSON object, got `{params}`"
                    ))
                }
                Err(e) => {
                    return Err(format!(
                        "the parameters of evaluation transform `{name}` are not valid JSON ({e}): `{params}`"
                    ))
                }
            }
        }
        Ok(())
    }

    pub(crate) fn to_ffi(&self) -> DatasetInfoFfi {
        DatasetInfoFfi {
            image_kind: match self.image_kind {
                ImageKind::Rgb => ImageKindFfi::Rgb,
                ImageKind::Grey => ImageKindFfi::Grey,
            },
            small_images: self.small_images,
            varying_sizes: self.varying_sizes,
            eval_transforms: self
                .eval_transforms
                .iter()
                .map(|(n, p)| Tuple2(RString::from(n.as_str()), RString::from(p.as_str())))
                .collect(),
        }
    }

    #[cfg_attr(not(any(feature = "host", test)), allow(dead_code))]
    pub(crate) fn from_ffi(ffi: &DatasetInfoFfi) -> Self {
        DatasetInfo {
            image_kind: match ffi.image_kind {
                ImageKindFfi::Rgb => ImageKind::Rgb,
                ImageKindFfi::Grey => ImageKind::Grey,
            },
            small_images: ffi.small_images,
            varying_sizes: ffi.varying_sizes,
            eval_transforms: ffi
                .eval_transforms
                .iter()
                .map(|Tuple2(n, p)| (n.to_string(), p.to_string()))
                .collect(),
        }
    }
}

// Encoders and algorithms are registered with the feature `torch` only.
#[cfg_attr(not(feature = "torch"), allow(dead_code))]
impl EncoderInfo {
    pub(crate) fn check(&self) -> Result<(), String> {
        match &self.small_image_param {
            Some(p) if p.trim().is_empty() => {
                Err("`small_image_param` is an empty name (use None for no such parameter)".into())
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn to_ffi(&self) -> EncoderInfoFfi {
        EncoderInfoFfi {
            small_image_param: self.small_image_param.as_deref().map(RString::from).into(),
        }
    }

    pub(crate) fn from_ffi(ffi: &EncoderInfoFfi) -> Self {
        EncoderInfo {
            small_image_param: ffi.small_image_param.as_ref().map(|p| p.to_string()).into(),
        }
    }
}

#[cfg_attr(not(feature = "torch"), allow(dead_code))]
impl AlgorithmInfo {
    /// Checks the declaration; `Err` names what is wrong.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.lr_schedule.trim().is_empty() {
            return Err("`lr_schedule` is empty (e.g. warmup_cosine_epoch)".into());
        }
        Ok(())
    }

    /// The declaration of the algorithm registered as `name`: an empty metric prefix becomes
    /// the name, lower-cased.
    pub(crate) fn for_name(mut self, name: &str) -> Self {
        if self.metric_prefix.is_empty() {
            self.metric_prefix = name.to_lowercase();
        }
        self
    }

    pub(crate) fn to_ffi(&self) -> AlgorithmInfoFfi {
        AlgorithmInfoFfi {
            lr_schedule: self.lr_schedule.as_str().into(),
            metric_prefix: self.metric_prefix.as_str().into(),
            scale_lr_with_processes: self.scale_lr_with_processes,
        }
    }

    pub(crate) fn from_ffi(ffi: &AlgorithmInfoFfi) -> Self {
        AlgorithmInfo {
            lr_schedule: ffi.lr_schedule.to_string(),
            metric_prefix: ffi.metric_prefix.to_string(),
            scale_lr_with_processes: ffi.scale_lr_with_processes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_survive_their_ffi_form() {
        let dataset = DatasetInfo {
            image_kind: ImageKind::Grey,
            small_images: true,
            varying_sizes: true,
            eval_transforms: vec![("Resize".into(), r#"{"size":256}"#.into())],
        };
        assert_eq!(DatasetInfo::from_ffi(&dataset.to_ffi()), dataset);
        assert_eq!(
            DatasetInfo::from_ffi(&DatasetInfo::default().to_ffi()),
            DatasetInfo::default()
        );
        let encoder = EncoderInfo {
            small_image_param: Some("cifar_stem".into()),
        };
        assert_eq!(EncoderInfo::from_ffi(&encoder.to_ffi()), encoder);
        let algorithm = AlgorithmInfo {
            lr_schedule: "warmup_cosine_step".into(),
            metric_prefix: "simclr".into(),
            scale_lr_with_processes: false,
        };
        assert_eq!(AlgorithmInfo::from_ffi(&algorithm.to_ffi()), algorithm);
    }

    #[test]
    fn bad_declarations_are_named() {
        let bad_json = DatasetInfo {
            eval_transforms: vec![("Resize".into(), "{size: 256}".into())],
            ..Default::default()
        };
        let e = bad_json.check().unwrap_err();
        assert!(
            e.contains("`Resize`") && e.contains("not valid JSON"),
            "{e}"
        );
        let not_object = DatasetInfo {
            eval_transforms: vec![("Resize".into(), "256".into())],
            ..Default::default()
        };
        assert!(not_object.check().unwrap_err().contains("JSON object"));
        assert!(EncoderInfo {
            small_image_param: Some(" ".into())
        }
        .check()
        .is_err());
        let e = AlgorithmInfo {
            lr_schedule: String::new(),
            ..Default::default()
        }
        .check()
        .unwrap_err();
        assert!(e.contains("`lr_schedule`"), "{e}");
    }

    #[test]
    fn the_metric_prefix_defaults_to_the_lower_cased_name() {
        let info = AlgorithmInfo::default().for_name("SimCLR");
        assert_eq!(info.metric_prefix, "simclr");
        assert_eq!(info.lr_schedule, "warmup_cosine_epoch");
        assert!(info.scale_lr_with_processes);
        let own = AlgorithmInfo {
            metric_prefix: "mine".into(),
            ..Default::default()
        };
        assert_eq!(own.for_name("SimCLR").metric_prefix, "mine");
    }
}
