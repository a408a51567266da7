//! The 2-D map of an encoder's test features: t-SNE (Barnes-Hut, from the `bhtsne` crate) of
//! the features reduced to their first 50 principal components, as is standard, on a seeded
//! subsample of at most `max_points` samples.
//!
//! PCA is computed here with libtorch (an eigendecomposition of the smaller Gram matrix, in
//! f64). It also gives the t-SNE's starting layout (the first two components, scaled small),
//! which keeps the global arrangement of clusters better than a random start. With that start,
//! exact nearest neighbours found here (libtorch) and bhtsne held to one thread, the map is a
//! deterministic function of the features and the seed. With too few samples for a t-SNE
//! neighbourhood, the map is the first two principal components and says so.
//!
//! What this does not do: pick the samples by label (the subsample is uniform), or align the
//! maps of several encoders with each other (each is its own t-SNE).

use anyhow::{bail, ensure, Context, Result};
use ssl_plugin_api::tch::{Kind, Tensor};

/// The most samples a map shows by default: t-SNE of 5,000 points takes seconds on two cores.
pub const DEFAULT_MAX_POINTS: usize = 5_000;

/// A 2-D map of feature vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    /// One point per chosen sample.
    pub points: Vec<(f32, f32)>,
    /// The rows of the features the points are, ascending: all rows, or a seeded subsample.
    /// They depend only on the number of rows, `max_points` and the seed, so encoders mapped
    /// with the same seed on the same test set show the same samples.
    pub indices: Vec<usize>,
    /// "t-SNE", or "PCA" when there were too few samples (or no variance) for t-SNE.
    pub method: &'static str,
}

/// The principal components t-SNE runs on.
const PCA_DIMS: usize = 50;
/// t-SNE's perplexity (its effective number of neighbours), lowered for small samples.
const PERPLEXITY: usize = 30;
/// Fewer samples than this get a PCA map: a t-SNE of a handful of points shows nothing.
const MIN_TSNE_POINTS: usize = 50;
/// Barnes-Hut's accuracy (0.5 is the usual choice).
const THETA: f32 = 0.5;
const EPOCHS: usize = 1000;
/// The factor on the affinities for the first 250 epochs (bhtsne's default, the usual one).
const EARLY_EXAGGERATION: f32 = 12.0;

/// The step size: n / early exaggeration, at least 200 (Belkina et al., 2019; 200 is the
/// original implementation's). bhtsne's own default is a quarter of that, scikit-learn's rule
/// for its gradient, which carries a factor 4 that bhtsne's does not: with it, clusters that
/// are far apart stay collapsed to points after the early exaggeration.
fn learning_rate(points: usize) -> f32 {
    (points as f32 / EARLY_EXAGGERATION).max(200.0)
}

/// Maps the rows of `features` (`[n, d]`, floating point, on the CPU) to 2-D by t-SNE, on a
/// subsample of at most `max_points` rows chosen by `seed`. Errors on a tensor that is not a
/// 2-D matrix of finite floats with at least one row and column.
pub fn project_2d(features: &Tensor, max_points: usize, seed: u64) -> Result<Projection> {
    check_features(features)?;
    ensure!(max_points > 0, "the 2-D map needs max_points above 0");
    let n = features.size()[0] as usize;
    let indices = subsample(n, max_points, seed);
    let index = Tensor::from_slice(&indices.iter().map(|&i| i as i64).collect::<Vec<_>>());
    let x = features.index_select(0, &index).to_kind(Kind::Double);
    let pcs = principal_components(&x, PCA_DIMS)?;
    let m = indices.len();
    let varied = pcs.size()[1] > 0 && pcs.abs().max().double_value(&[]) > 0.0;
    if m < MIN_TSNE_POINTS || !varied {
        return Ok(Projection {
            points: first_two(&pcs)?,
            indices,
            method: "PCA",
        });
    }
    let points = tsne(&pcs)?;
    Ok(Projection {
        points,
        indices,
        method: "t-SNE",
    })
}

fn check_features(features: &Tensor) -> Result<()> {
    let size = features.size();
    ensure!(
        size.len() == 2 && size[0] > 0 && size[1] > 0,
        "the 2-D map needs features as an [n, d] matrix with n, d > 0; got shape {size:?}"
    );
    ensure!(
        features.device() == ssl_plugin_api::tch::Device::Cpu,
        "the 2-D map needs the features on the CPU; they are on {:?}",
        features.device()
    );
    ensure!(
        features.is_floating_point(),
        "the 2-D map needs floating-point features; got {:?}",
        features.kind()
    );
    let finite = features.isfinite().all().int64_value(&[]) != 0;
    ensure!(finite, "the features hold NaN or infinite values");
    Ok(())
}

/// All of `0..n`, or `max_points` of them chosen by `seed`, ascending.
fn subsample(n: usize, max_points: usize, seed: u64) -> Vec<usize> {
    if n <= max_points {
        return (0..n).collect();
    }
    let mut chosen = crate::seeds::permutation(n, crate::seeds::seed_of(&[seed, 0x2D]));
    chosen.truncate(max_points);
    chosen.sort_unstable();
    chosen
}

/// The scores of the rows of `x` (`[m, d]`, f64) on their first `k` principal components
/// (fewer when the data has fewer dimensions), `[m, k']`, each component's sign chosen so
/// that its largest score is positive.
fn principal_components(x: &Tensor, k: usize) -> Result<Tensor> {
    let centred = x - x.mean_dim(0, true, Kind::Double);
    let (m, d) = (centred.size()[0], centred.size()[1]);
    let k = (k as i64).min(d).min(m - 1).max(0);
    if k == 0 {
        return Ok(Tensor::zeros([m, 0], (Kind::Double, x.device())));
    }
    // The eigenvectors of the smaller of the two Gram matrices give the same scores.
    let scores = if d <= m {
        let (_, vectors) = centred.tr().matmul(&centred).f_linalg_eigh("L")?;
        centred.matmul(&vectors.narrow(1, d - k, k))
    } else {
        let (values, vectors) = centred.matmul(&centred.tr()).f_linalg_eigh("L")?;
        let values = values.narrow(0, m - k, k).clamp_min(0.0).sqrt();
        vectors.narrow(1, m - k, k) * values
    };
    // Eigenvalues come ascending: put the first component first.
    let scores = scores.flip([1]);
    let largest = scores.abs().argmax(0, true);
    let sign = scores.gather(0, &largest, false).sign();
    let sign = sign.where_self(&sign.ne(0.0), &Tensor::ones_like(&sign));
    Ok(scores * sign)
}

/// The first two columns of `pcs` as points (a missing second column is 0).
fn first_two(pcs: &Tensor) -> Result<Vec<(f32, f32)>> {
    let m = pcs.size()[0];
    let cols = pcs.size()[1].min(2);
    let two = Tensor::zeros([m, 2], (Kind::Float, pcs.device()));
    if cols > 0 {
        two.narrow(1, 0, cols)
            .copy_(&pcs.narrow(1, 0, cols).to_kind(Kind::Float));
    }
    let flat: Vec<f32> = Vec::<f32>::try_from(two.reshape([-1])).context("reading the map")?;
    Ok(flat.chunks(2).map(|p| (p[0], p[1])).collect())
}

/// Barnes-Hut t-SNE of the rows of `pcs`, started from their first two components scaled to
/// a standard deviation of 1e-4 (the usual start's scale).
fn tsne(pcs: &Tensor) -> Result<Vec<(f32, f32)>> {
    let m = pcs.size()[0] as usize;
    let dims = pcs.size()[1] as usize;
    let x = pcs.to_kind(Kind::Float);
    let data: Vec<f32> = Vec::<f32>::try_from(x.reshape([-1])).context("reading the PCs")?;
    let rows: Vec<&[f32]> = data.chunks(dims).collect();
    let start = first_two(pcs)?;
    let sd = (start.iter().map(|p| (p.0 as f64).powi(2)).sum::<f64>() / m as f64).sqrt();
    let scale = if sd > 0.0 { 1e-4 / sd } else { 1.0 };
    let init: Vec<f32> = start
        .iter()
        .flat_map(|p| [(p.0 as f64 * scale) as f32, (p.1 as f64 * scale) as f32])
        .collect();
    // bhtsne takes 3 * perplexity neighbours of each point.
    let perplexity = PERPLEXITY.min((m - 1) / 3).max(1);
    let neighbours = nearest_neighbours(&x, 3 * perplexity)?;
    // One thread: bhtsne's parallel sums are reduced in an order that varies from run to run,
    // and their rounding, grown over the epochs, would move the map.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .context("starting the t-SNE's thread")?;
    let embedding = pool.install(|| {
        bhtsne::tSNE::<f32, &[f32], 2>::new(&rows)
            .perplexity(perplexity as f32)
            .early_exaggeration(EARLY_EXAGGERATION)
            .learning_rate(learning_rate(m))
            .epochs(EPOCHS)
            .initial_embedding(init)
            .barnes_hut_with_neighbors(THETA, &neighbours)
            .embedding()
    });
    if embedding.iter().any(|v| !v.is_finite()) {
        bail!("t-SNE of {m} points diverged (non-finite coordinates)");
    }
    Ok(embedding.chunks(2).map(|p| (p[0], p[1])).collect())
}

/// The `k` nearest neighbours of each row of `x` (`[m, p]`, f32, `k < m`) by Euclidean
/// distance, nearest first, the row itself left out: exact, by blocks of the distance matrix.
/// (bhtsne's own search picks its vantage points at random, which makes the map differ from
/// run to run.)
fn nearest_neighbours(x: &Tensor, k: usize) -> Result<Vec<Vec<bhtsne::Neighbor<f32>>>> {
    const BLOCK: i64 = 1024;
    let m = x.size()[0];
    let squares = (x * x).sum_dim_intlist(1, false, Kind::Float);
    let mut out = Vec::with_capacity(m as usize);
    for start in (0..m).step_by(BLOCK as usize) {
        let len = BLOCK.min(m - start);
        let block = x.narrow(0, start, len);
        let d2 = (squares.narrow(0, start, len).unsqueeze(1) + squares.unsqueeze(0)
            - block.matmul(&x.tr()) * 2.0)
            .clamp_min(0.0);
        let _ = d2
            .narrow(1, start, len)
            .diagonal(0, 0, 1)
            .fill_(f64::INFINITY);
        let (d2, index) = d2.f_topk(k as i64, 1, false, true)?;
        let distances: Vec<f32> = Vec::try_from(d2.sqrt().reshape([-1]))?;
        let indices: Vec<i64> = Vec::try_from(index.reshape([-1]))?;
        for (d, i) in distances.chunks(k).zip(indices.chunks(k)) {
            out.push(
                d.iter()
                    .zip(i)
                    .map(|(&distance, &index)| bhtsne::Neighbor {
                        index: index as usize,
                        distance,
                    })
                    .collect(),
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` points in `d` dimensions: two Gaussian clusters whose means differ by `gap` in every
    /// coordinate; the first half is cluster 0.
    fn two_clusters(n: i64, d: i64, gap: f64) -> (Tensor, Vec<bool>) {
        ssl_plugin_api::tch::manual_seed(11);
        let x = Tensor::randn([n, d], (Kind::Float, ssl_plugin_api::tch::Device::Cpu));
        let shift = Tensor::cat(
            &[
                Tensor::zeros([n / 2, d], (Kind::Float, x.device())),
                Tensor::full([n - n / 2, d], gap, (Kind::Float, x.device())),
            ],
            0,
        );
        let labels = (0..n).map(|i| i >= n / 2).collect();
        (x + shift, labels)
    }

    /// The best accuracy of a linear separator of the points: over 180 directions, the best
    /// threshold on the projection.
    fn linear_separability(points: &[(f32, f32)], labels: &[bool]) -> f64 {
        let mut best = 0.0f64;
        for a in 0..180 {
            let t = (a as f64).to_radians();
            let mut proj: Vec<(f64, bool)> = points
                .iter()
                .zip(labels)
                .map(|(p, &l)| (p.0 as f64 * t.cos() + p.1 as f64 * t.sin(), l))
                .collect();
            proj.sort_by(|a, b| a.0.total_cmp(&b.0));
            let total_pos = labels.iter().filter(|&&l| l).count();
            let (mut pos_below, mut neg_below) = (0usize, 0usize);
            for (k, &(_, l)) in proj.iter().enumerate() {
                if l {
                    pos_below += 1;
                } else {
                    neg_below += 1;
                }
                let n = labels.len();
                let neg_above = n - total_pos - neg_below;
                let pos_above = total_pos - pos_below;
                // Either side may be the positive one.
                let right = (neg_below + pos_above).max(pos_below + neg_above);
                best = best.max(right as f64 / n as f64);
                let _ = k;
            }
        }
        best
    }

    #[test]
    fn tsne_separates_two_clusters() {
        let (x, labels) = two_clusters(600, 64, 1.0);
        let p = project_2d(&x, DEFAULT_MAX_POINTS, 3).unwrap();
        assert_eq!(p.method, "t-SNE");
        assert_eq!(p.indices, (0..600).collect::<Vec<_>>());
        assert_eq!(p.points.len(), 600);
        let acc = linear_separability(&p.points, &labels);
        assert!(acc >= 0.95, "linear separability {acc}");
        // Deterministic given the features and seed.
        let again = project_2d(&x, DEFAULT_MAX_POINTS, 3).unwrap();
        let diff = p
            .points
            .iter()
            .zip(&again.points)
            .map(|(a, b)| (a.0 - b.0).abs().max((a.1 - b.1).abs()))
            .fold(0.0f32, f32::max);
        assert_eq!(diff, 0.0, "two runs differ by up to {diff}");
    }

    #[test]
    fn far_apart_clusters_keep_their_spread() {
        // Ten clusters far apart (each in its own direction): every one must come out as a
        // cloud, not a point. bhtsne's default step size left some at a spread of 1e-5.
        let n = 2_000i64;
        let labels: Vec<usize> = (0..n as usize).map(|i| i % 10).collect();
        let label_t = Tensor::from_slice(&labels.iter().map(|&l| l as i64).collect::<Vec<_>>());
        ssl_plugin_api::tch::manual_seed(5);
        let cpu = (Kind::Float, ssl_plugin_api::tch::Device::Cpu);
        let centres = Tensor::randn([10, 64], cpu) * 3.0;
        let x = centres.index_select(0, &label_t) + Tensor::randn([n, 64], cpu);
        let p = project_2d(&x, DEFAULT_MAX_POINTS, 0).unwrap();
        let spread = |l: usize| {
            let xs: Vec<f32> = (0..p.points.len())
                .filter(|&i| labels[i] == l)
                .map(|i| p.points[i].0)
                .collect();
            let mean = xs.iter().sum::<f32>() / xs.len() as f32;
            (xs.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / xs.len() as f32).sqrt()
        };
        for l in 0..10 {
            assert!(
                spread(l) > 0.1,
                "cluster {l} collapsed to a spread of {}",
                spread(l)
            );
        }
    }

    #[test]
    fn large_inputs_are_subsampled_by_seed() {
        let (x, labels) = two_clusters(1_000, 8, 3.0);
        let p = project_2d(&x, 300, 5).unwrap();
        assert_eq!(p.points.len(), 300);
        assert_eq!(p.indices.len(), 300);
        assert!(p.indices.windows(2).all(|w| w[0] < w[1]));
        assert!(p.indices.iter().any(|&i| i >= 500) && p.indices.iter().any(|&i| i < 500));
        let chosen: Vec<bool> = p.indices.iter().map(|&i| labels[i]).collect();
        assert!(linear_separability(&p.points, &chosen) >= 0.95);
        assert_eq!(subsample(1_000, 300, 5), p.indices);
        assert_ne!(subsample(1_000, 300, 6), p.indices);
    }

    #[test]
    fn few_points_get_a_pca_map() {
        let (x, labels) = two_clusters(20, 5, 4.0);
        let p = project_2d(&x, DEFAULT_MAX_POINTS, 0).unwrap();
        assert_eq!(p.method, "PCA");
        assert_eq!(p.points.len(), 20);
        assert!(linear_separability(&p.points, &labels) >= 0.95);
        // One feature: the second coordinate is 0. One row: the point is the origin.
        let col = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).reshape([3, 1]);
        let p = project_2d(&col, 10, 0).unwrap();
        assert!(p.points.iter().all(|q| q.1 == 0.0));
        assert!(p.points[0].0 != p.points[2].0);
        let one = Tensor::from_slice(&[1.0f32, 2.0]).reshape([1, 2]);
        assert_eq!(project_2d(&one, 10, 0).unwrap().points, vec![(0.0, 0.0)]);
    }

    #[test]
    fn pca_scores_match_the_principal_axes() {
        // Points along (3, 4)/5 with a little spread across it: the first component's scores
        // are the projections on that axis.
        let t: Vec<f64> = (0..50).map(|i| i as f64 - 24.5).collect();
        let rows: Vec<f64> = t
            .iter()
            .enumerate()
            .flat_map(|(i, &s)| {
                let across = if i % 2 == 0 { 0.1 } else { -0.1 };
                [0.6 * s - 0.8 * across, 0.8 * s + 0.6 * across]
            })
            .collect();
        let x = Tensor::from_slice(&rows).reshape([50, 2]);
        let pcs = principal_components(&x, 50).unwrap();
        assert_eq!(pcs.size(), [50, 2]);
        let first: Vec<f64> = Vec::try_from(pcs.select(1, 0)).unwrap();
        let centre = t.iter().sum::<f64>() / 50.0;
        // The axis's sign is a convention (here the scores of +-24.5 tie): either will do.
        let sign = first[0].signum() * (t[0] - centre).signum();
        for (got, s) in first.iter().zip(&t) {
            assert!((got - sign * (s - centre)).abs() < 1e-3, "{got} vs {s}");
        }
        // Wide data (d > m) goes through the other Gram matrix and agrees.
        let wide = Tensor::cat(
            &[&x, &Tensor::zeros([50, 80], (Kind::Double, x.device()))],
            1,
        );
        let wide_pcs = principal_components(&wide, 2).unwrap();
        for j in 0..2 {
            let (w, p) = (wide_pcs.select(1, j), pcs.select(1, j));
            let same = w.allclose(&p, 1e-6, 1e-6, false) || w.allclose(&-&p, 1e-6, 1e-6, false);
            assert!(same, "component {j} differs");
        }
    }

    /// The time to map 5,000 samples of 512 features (run by hand: `--ignored`).
    #[test]
    #[ignore]
    fn timing_of_a_full_map() {
        let (x, labels) = two_clusters(6_000, 512, 0.3);
        for _ in 0..2 {
            let start = std::time::Instant::now();
            let p = project_2d(&x, DEFAULT_MAX_POINTS, 1).unwrap();
            let chosen: Vec<bool> = p.indices.iter().map(|&i| labels[i]).collect();
            let acc = linear_separability(&p.points, &chosen);
            println!(
                "{} points in {:?}, separability {acc}",
                p.points.len(),
                start.elapsed()
            );
        }
    }

    #[test]
    fn neighbours_are_the_nearest_rows() {
        // Points on a line at 0, 1, 3, 7, 15: each one's nearest others, nearest first.
        let x = Tensor::from_slice(&[0.0f32, 1.0, 3.0, 7.0, 15.0]).reshape([5, 1]);
        let n = nearest_neighbours(&x, 2).unwrap();
        let idx: Vec<Vec<usize>> = n
            .iter()
            .map(|r| r.iter().map(|q| q.index).collect())
            .collect();
        assert_eq!(idx, [[1, 2], [0, 2], [1, 0], [2, 1], [3, 2]]);
        assert_eq!(n[3][0].distance, 4.0);
        assert_eq!(n[4][1].distance, 12.0);
    }

    #[test]
    fn bad_features_are_refused() {
        let cpu = (Kind::Float, ssl_plugin_api::tch::Device::Cpu);
        assert!(project_2d(&Tensor::zeros([4], cpu), 10, 0).is_err());
        assert!(project_2d(&Tensor::zeros([0, 3], cpu), 10, 0).is_err());
        assert!(project_2d(&Tensor::zeros([4, 3], (Kind::Int64, cpu.1)), 10, 0).is_err());
        let nan = Tensor::from_slice(&[1.0f32, f32::NAN, 0.0, 2.0]).reshape([2, 2]);
        let msg = format!("{:#}", project_2d(&nan, 10, 0).unwrap_err());
        assert!(msg.contains("NaN"), "{msg}");
        assert!(project_2d(&Tensor::zeros([4, 3], cpu), 0, 0).is_err());
        // No variance at all: a PCA map of one point repeated, not a failed t-SNE.
        let flat = project_2d(&Tensor::ones([100, 3], cpu), 10_000, 0).unwrap();
        assert_eq!(flat.method, "PCA");
        assert!(flat.points.iter().all(|&p| p == (0.0, 0.0)));
    }
}
