//! The batch pipeline compiler: a whole list of built-in transforms as one batch transform.
//!
//! Runs of two or more consecutive geometric steps (`RandomAffine`, `RandomResizedCrop`,
//! `RandomHorizontalFlip`, `Resize`, `CenterCrop`) become one coordinate map per sample
//! ([`geometry`](crate::geometry)) and one bilinear sampling of the input, at the output
//! size; the other steps run as their batch transforms, one after the other. A one-channel
//! batch stays one channel until the end when the list holds `ExpandChannels` (the three
//! channels would stay identical through every built-in step), and is then expanded as a
//! view. Every step draws from `step_seed(view seed, position)`, as when the steps run one by
//! one, so the drawn parameters are identical; pixel values differ where a run of geometric
//! steps is sampled once (bilinear) instead of step by step (the affine step alone samples
//! the nearest pixel).

use crate::batch::check;
use crate::expand_channels::to_rgb;
use crate::geometry::{Coords, Geometric};
use crate::resample::bilinear_border;
use crate::*;
use ssl_plugin_api::tch::Tensor;
use ssl_plugin_api::{step_seed, BatchTransform, Context, Params, Result, TransformStep};

/// What the compiler says it does (shown by the host).
pub const DESCRIPTION: &str = "builtin-batch-transforms: a list made only of built-in \
    transforms runs as one batch transform; consecutive geometric steps (RandomAffine, \
    RandomResizedCrop, RandomHorizontalFlip, Resize, CenterCrop) are composed into one \
    sampling grid per sample and sampled once, bilinearly, at the output size (pixel values \
    differ from the steps run one by one: one bilinear resampling instead of nearest then \
    bilinear; the drawn crops, angles and flips are identical); one-channel images are \
    expanded to three only at the end; the other steps run batched one by one";

/// A geometric step: a batch transform that also maps coordinates.
trait GeometricStep: Geometric + BatchTransform {}
impl<T: Geometric + BatchTransform> GeometricStep for T {}

/// One step of a list, made from its name and parameters.
enum Made {
    Geometric(Box<dyn GeometricStep>),
    Other(Box<dyn BatchTransform>),
    /// `ExpandChannels`: deferred to the end.
    Expand,
    /// `ToFloat`: nothing to do on a float batch.
    Identity,
}

/// Makes the batch transform of `step`, `None` when the name is not a built-in one.
fn make(step: &TransformStep) -> Result<Option<Made>> {
    let p: &Params = &step.params;
    fn geo<T: GeometricStep>(t: Result<T>) -> Result<Option<Made>> {
        Ok(Some(Made::Geometric(Box::new(t?))))
    }
    fn other<T: BatchTransform>(t: Result<T>) -> Result<Option<Made>> {
        Ok(Some(Made::Other(Box::new(t?))))
    }
    match step.name.as_str() {
        "RandomAffine" => geo(RandomAffine::from_params(p)),
        "RandomResizedCrop" => geo(RandomResizedCrop::from_params(p)),
        "RandomHorizontalFlip" => geo(RandomHorizontalFlip::from_params(p)),
        "Resize" => geo(Resize::from_params(p)),
        "CenterCrop" => geo(CenterCrop::from_params(p)),
        "ColorJitter" => other(ColorJitter::from_params(p)),
        "RandomGrayscale" => other(RandomGrayscale::from_params(p)),
        "GaussianBlur" => other(GaussianBlur::from_params(p)),
        "RandomGamma" => other(RandomGamma::from_params(p)),
        "ElasticTransform" => other(ElasticTransform::from_params(p)),
        "RandomErasing" => other(RandomErasing::from_params(p)),
        "AddGaussianNoise" => other(AddGaussianNoise::from_params(p)),
        "ExpandChannels" => ExpandChannels::from_params(p).map(|_| Some(Made::Expand)),
        "ToFloat" => ToFloat::from_params(p).map(|_| Some(Made::Identity)),
        _ => Ok(None),
    }
}

/// A part of a compiled list.
enum Segment {
    /// Geometric steps composed into one sampling, with their positions in the list.
    Chain(Vec<(usize, Box<dyn GeometricStep>)>),
    /// One step run as its batch transform.
    Step(usize, Box<dyn BatchTransform>),
}

/// A list of built-in transforms compiled into one batch transform (see the module doc).
pub struct CompiledPipeline {
    segments: Vec<Segment>,
    expand: bool,
}

/// Compiles `steps`; `None` when one of them is not a built-in transform.
pub fn compile(steps: &[TransformStep]) -> Result<Option<CompiledPipeline>> {
    let mut segments = Vec::new();
    let mut run: Vec<(usize, Box<dyn GeometricStep>)> = Vec::new();
    let mut expand = false;
    fn close(run: &mut Vec<(usize, Box<dyn GeometricStep>)>, segments: &mut Vec<Segment>) {
        match run.len() {
            0 => {}
            1 => {
                let (pos, step) = run.pop().expect("one step");
                let step: Box<dyn BatchTransform> = Box::new(AsBatch(step));
                segments.push(Segment::Step(pos, step));
            }
            _ => segments.push(Segment::Chain(std::mem::take(run))),
        }
    }
    for (pos, step) in steps.iter().enumerate() {
        let made = make(step).with_context(|| format!("step {pos} (`{}`)", step.name))?;
        match made {
            None => return Ok(None),
            Some(Made::Geometric(g)) => run.push((pos, g)),
            Some(Made::Other(t)) => {
                close(&mut run, &mut segments);
                segments.push(Segment::Step(pos, t));
            }
            Some(Made::Expand) => expand = true,
            Some(Made::Identity) => {}
        }
    }
    close(&mut run, &mut segments);
    Ok(Some(CompiledPipeline { segments, expand }))
}

/// A lone geometric step run as its own batch transform.
struct AsBatch(Box<dyn GeometricStep>);

impl BatchTransform for AsBatch {
    fn apply(&self, batch: &Tensor, seeds: &[u64]) -> Result<Tensor> {
        self.0.apply(batch, seeds)
    }
}

fn step_seeds(seeds: &[u64], position: usize) -> Vec<u64> {
    seeds.iter().map(|&s| step_seed(s, position)).collect()
}

/// Runs a chain of geometric steps as one bilinear sampling of `batch`.
fn run_chain(
    batch: &Tensor,
    seeds: &[u64],
    chain: &[(usize, Box<dyn GeometricStep>)],
) -> Result<Tensor> {
    let (batch, dims) = check("geometric chain", batch, seeds)?;
    let mut sizes = vec![(dims.h, dims.w)];
    for (_, step) in chain {
        let &(h, w) = sizes.last().expect("input size");
        sizes.push(step.output_size(h, w)?);
    }
    let (out_h, out_w) = sizes[chain.len()];
    if dims.n == 0 || dims.h == 0 || dims.w == 0 {
        return Ok(Tensor::zeros(
            [dims.n, dims.c, out_h, out_w],
            (batch.kind(), batch.device()),
        ));
    }
    let mut c = Coords::identity(dims.n, out_h, out_w, batch.device());
    for (i, (pos, step)) in chain.iter().enumerate().rev() {
        let (h, w) = sizes[i];
        c = step.map_back(&step_seeds(seeds, *pos), h, w, c)?;
    }
    let shape = [dims.n, out_h, out_w];
    let sampled = bilinear_border(
        &batch,
        dims,
        &c.y.expand(shape, false),
        &c.x.expand(shape, false),
    );
    let (decided, fill) = c.fill_mask();
    Ok(fill.where_self(&decided, &sampled))
}

impl BatchTransform for CompiledPipeline {
    fn apply(&self, batch: &Tensor, seeds: &[u64]) -> Result<Tensor> {
        let (mut x, _) = check("compiled pipeline", batch, seeds)?;
        for segment in &self.segments {
            x = match segment {
                Segment::Chain(chain) => run_chain(&x, seeds, chain)?,
                Segment::Step(pos, step) => step.apply(&x, &step_seeds(seeds, *pos))?,
            };
        }
        if self.expand {
            x = to_rgb("ExpandChannels", x)?;
        }
        Ok(x)
    }
}
