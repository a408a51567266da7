//! The kNN monitor: weighted cosine k-nearest-neighbour classification of embeddings, as
//! solo-learn's and lightly's kNN callbacks (after Wu et al. 2018, "Unsupervised Feature
//! Learning via Non-Parametric Instance Discrimination"). Embeddings of a labelled bank and of
//! the queries are L2-normalised; each query's `k` most similar bank entries vote for their
//! class with weight `exp(similarity / temperature)`; the class with the largest sum wins.
//!
//! Pure tensor code: it knows nothing of loaders or encoders (the SSL task feeds it), and it
//! holds at most `QUERY_CHUNK × bank` similarities at a time.

use ssl_plugin_api::tch::{Kind, Tensor};

/// The number of neighbours (solo-learn's and lightly's default).
pub const K: i64 = 200;
/// The temperature of the neighbours' weights (solo-learn's and lightly's default).
pub const TEMPERATURE: f64 = 0.1;
/// Queries compared with the bank at once (bounds memory to this many rows of similarities).
const QUERY_CHUNK: i64 = 256;

/// The accuracy of a kNN classification.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KnnAccuracy {
    pub top1: f64,
    /// Top-5 accuracy; `None` with fewer than 5 classes.
    pub top5: Option<f64>,
}

/// Rows scaled to unit L2 norm (as `F.normalize`, eps 1e-12).
fn l2_normalised(x: &Tensor) -> Tensor {
    let x = x.to_kind(Kind::Float);
    let norm = x.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
    x / norm
}

/// The class scores `[queries, num_classes]` of each query: the sum of
/// `exp(cosine similarity / temperature)` over its `k` nearest bank entries (all of them when
/// the bank is smaller), per class of those entries. `bank` is `[n, d]`, `bank_labels` `[n]`
/// (int64 in `0..num_classes`), `queries` `[m, d]`.
pub fn class_scores(
    bank: &Tensor,
    bank_labels: &Tensor,
    queries: &Tensor,
    num_classes: i64,
    k: i64,
    temperature: f64,
) -> Tensor {
    let bank = l2_normalised(bank);
    let labels = bank_labels.to_kind(Kind::Int64);
    let k = k.min(bank.size()[0]);
    let chunks: Vec<Tensor> = l2_normalised(queries)
        .split(QUERY_CHUNK, 0)
        .iter()
        .map(|q| {
            let similarity = q.matmul(&bank.tr());
            let (top, index) = similarity.topk(k, 1, true, true);
            let weights = (top / temperature).exp();
            let neighbour_labels = labels
                .index_select(0, &index.flatten(0, -1))
                .view_as(&index);
            // Σ over neighbours of weight × one-hot(label), as a scatter-add.
            Tensor::zeros([q.size()[0], num_classes], (Kind::Float, q.device())).scatter_add(
                1,
                &neighbour_labels,
                &weights,
            )
        })
        .collect();
    if chunks.is_empty() {
        return Tensor::zeros([0, num_classes], (Kind::Float, bank.device()));
    }
    Tensor::cat(&chunks, 0)
}

/// The finding scores `[queries, findings]` of each query for a multi-label bank: per
/// finding, the share of its `k` nearest bank entries' weights (`exp(cosine similarity /
/// temperature)`, as [`class_scores`]) that goes to entries where the finding is present,
/// among the entries where it is known. `bank_findings` is `[n, findings]` with 1 (present),
/// 0 (absent) or -1 (unknown); a finding no neighbour knows scores 0.5.
pub fn finding_scores(
    bank: &Tensor,
    bank_findings: &Tensor,
    queries: &Tensor,
    k: i64,
    temperature: f64,
) -> Tensor {
    let findings = bank_findings.size()[1];
    let bank = l2_normalised(bank);
    let values = bank_findings.to_kind(Kind::Float).to_device(bank.device());
    let present = values.eq(1.0).to_kind(Kind::Float);
    let known = values.ge(0.0).to_kind(Kind::Float);
    let k = k.min(bank.size()[0]);
    let chunks: Vec<Tensor> = l2_normalised(queries)
        .split(QUERY_CHUNK, 0)
        .iter()
        .map(|q| {
            let m = q.size()[0];
            let similarity = q.matmul(&bank.tr());
            let (top, index) = similarity.topk(k, 1, true, true);
            let weights = (top / temperature).exp().unsqueeze(1); // [m, 1, k]
            let flat = index.flatten(0, -1);
            let rows = |t: &Tensor| t.index_select(0, &flat).view([m, k, findings]);
            let votes = weights.bmm(&rows(&present)).squeeze_dim(1);
            let known_weight = weights.bmm(&rows(&known)).squeeze_dim(1);
            let share = &votes / known_weight.clamp_min(f64::MIN_POSITIVE);
            share.where_self(&known_weight.gt(0.0), &share.full_like(0.5))
        })
        .collect();
    if chunks.is_empty() {
        return Tensor::zeros([0, findings], (Kind::Float, bank.device()));
    }
    Tensor::cat(&chunks, 0)
}

/// Top-1 (and, with at least 5 classes, top-5) accuracy of the weighted kNN classification of
/// `queries` (labels `query_labels`) against the labelled `bank`; NaN without queries.
pub fn knn_accuracy(
    bank: &Tensor,
    bank_labels: &Tensor,
    queries: &Tensor,
    query_labels: &Tensor,
    num_classes: i64,
    k: i64,
    temperature: f64,
) -> KnnAccuracy {
    let n = queries.size()[0];
    if n == 0 || bank.size()[0] == 0 {
        return KnnAccuracy {
            top1: f64::NAN,
            top5: (num_classes >= 5).then_some(f64::NAN),
        };
    }
    let scores = class_scores(bank, bank_labels, queries, num_classes, k, temperature);
    let targets = query_labels
        .to_kind(Kind::Int64)
        .to_device(scores.device())
        .unsqueeze(1);
    let hits_within = |top: i64| {
        let (_, ranked) = scores.topk(top, 1, true, true);
        let hits = ranked.eq_tensor(&targets).any_dim(1, false);
        hits.to_kind(Kind::Double)
            .sum(Kind::Double)
            .double_value(&[])
            / n as f64
    };
    KnnAccuracy {
        top1: hits_within(1),
        top5: (num_classes >= 5).then(|| hits_within(5)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(rows: &[[f32; 2]]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, 2])
    }

    fn labels(l: &[i64]) -> Tensor {
        Tensor::from_slice(l)
    }

    /// The predicted class of each query.
    fn predict(bank: &Tensor, y: &Tensor, q: &Tensor, classes: i64, k: i64, temp: f64) -> Vec<i64> {
        let scores = class_scores(bank, y, q, classes, k, temp);
        Vec::<i64>::try_from(scores.argmax(1, false)).unwrap()
    }

    /// Three clusters at angles 0°, 120°, 240° (cosine kNN sees directions only: the
    /// magnitudes differ on purpose).
    fn clusters() -> (Tensor, Tensor) {
        let mut rows = Vec::new();
        let mut y = Vec::new();
        for class in 0..3i64 {
            for j in 0..5 {
                let angle = (class as f32) * 2.0944 + (j as f32 - 2.0) * 0.05;
                let r = 1.0 + j as f32;
                rows.push([r * angle.cos(), r * angle.sin()]);
                y.push(class);
            }
        }
        (t(&rows), labels(&y))
    }

    #[test]
    fn a_query_next_to_a_cluster_gets_its_class() {
        let (bank, y) = clusters();
        let queries = t(&[[10.0, 0.3], [-0.5, 0.8], [-0.4, -0.9]]);
        assert_eq!(predict(&bank, &y, &queries, 3, 5, 0.1), vec![0, 1, 2]);
        let acc = knn_accuracy(&bank, &y, &queries, &labels(&[0, 1, 2]), 3, K, TEMPERATURE);
        assert_eq!(acc.top1, 1.0);
        assert_eq!(acc.top5, None, "top-5 only with at least 5 classes");
        let wrong = knn_accuracy(&bank, &y, &queries, &labels(&[1, 1, 0]), 3, 5, 0.1);
        assert!((wrong.top1 - 1.0 / 3.0).abs() < 1e-12, "{wrong:?}");
    }

    #[test]
    fn scores_are_the_exp_weighted_votes_of_the_k_nearest() {
        // Unit vectors: similarities to the query [1, 0] are 1, 0.6, 0 and -1.
        let bank = t(&[[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]]);
        let y = labels(&[0, 1, 1, 0]);
        let q = t(&[[2.0, 0.0]]);
        let s = class_scores(&bank, &y, &q, 2, 3, 0.5);
        let got = Vec::<f32>::try_from(s.flatten(0, -1)).unwrap();
        let want = [(1.0f32 / 0.5).exp(), (0.6f32 / 0.5).exp() + 1.0];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-4, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn k_larger_than_the_bank_uses_the_whole_bank() {
        let (bank, y) = clusters();
        let q = t(&[[1.0, 0.0]]);
        let all = class_scores(&bank, &y, &q, 3, 15, 0.1);
        let more = class_scores(&bank, &y, &q, 3, 1000, 0.1);
        assert!(all.allclose(&more, 1e-6, 1e-6, false));
        assert_eq!(predict(&bank, &y, &q, 3, K, TEMPERATURE), vec![0]);
    }

    /// One close neighbour of class 0, three farther ones of class 1: the nearest alone (k = 1)
    /// or a sharp temperature says 0; four neighbours at a soft temperature say 1.
    #[test]
    fn k_and_temperature_change_the_answer() {
        let bank = t(&[[1.0, 0.0], [0.8, 0.6], [0.8, -0.6], [0.6, 0.8]]);
        let y = labels(&[0, 1, 1, 1]);
        let q = t(&[[1.0, 0.0]]);
        assert_eq!(predict(&bank, &y, &q, 2, 1, 0.1), vec![0]);
        assert_eq!(predict(&bank, &y, &q, 2, 4, 1.0), vec![1]);
        assert_eq!(predict(&bank, &y, &q, 2, 4, 0.05), vec![0]);
    }

    #[test]
    fn top5_counts_a_hit_within_the_five_best_classes() {
        // Six classes, one bank entry each, at decreasing similarity to the query.
        let angles = [0.0f32, 0.2, 0.4, 0.6, 0.8, 3.0];
        let rows: Vec<[f32; 2]> = angles.iter().map(|a| [a.cos(), a.sin()]).collect();
        let bank = t(&rows);
        let y = labels(&[0, 1, 2, 3, 4, 5]);
        let q = t(&[[1.0, 0.0], [1.0, 0.0]]);
        let acc = knn_accuracy(&bank, &y, &q, &labels(&[4, 5]), 6, K, TEMPERATURE);
        assert_eq!(acc.top1, 0.0);
        assert_eq!(acc.top5, Some(0.5), "class 4 ranks fifth, class 5 sixth");
    }

    #[test]
    fn queries_are_processed_in_chunks_with_the_same_result() {
        let bank = Tensor::randn([50, 8], (Kind::Float, ssl_plugin_api::tch::Device::Cpu));
        let y = Tensor::randint(3, [50], (Kind::Int64, ssl_plugin_api::tch::Device::Cpu));
        let q = Tensor::randn(
            [QUERY_CHUNK * 2 + 7, 8],
            (Kind::Float, ssl_plugin_api::tch::Device::Cpu),
        );
        let whole = class_scores(&bank, &y, &q, 3, 10, 0.1);
        let first = class_scores(&bank, &y, &q.narrow(0, 0, 5), 3, 10, 0.1);
        let last = class_scores(&bank, &y, &q.narrow(0, QUERY_CHUNK * 2, 7), 3, 10, 0.1);
        assert_eq!(whole.size(), [QUERY_CHUNK * 2 + 7, 3]);
        assert!(whole.narrow(0, 0, 5).allclose(&first, 1e-5, 1e-5, false));
        assert!(whole
            .narrow(0, QUERY_CHUNK * 2, 7)
            .allclose(&last, 1e-5, 1e-5, false));
    }

    #[test]
    fn finding_scores_are_the_weighted_share_of_known_neighbours_with_the_finding() {
        // Similarities to the query [1, 0]: 1, 0.6, 0 and -1; k = 3 leaves the last out.
        let bank = t(&[[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]]);
        let findings = Tensor::from_slice(&[1i8, 0, 0, -1, 1, 1, 1, 1]).view([4, 2]);
        let q = t(&[[3.0, 0.0]]);
        let got = Vec::<f32>::try_from(finding_scores(&bank, &findings, &q, 3, 0.5).flatten(0, -1))
            .unwrap();
        let w = [2.0f32.exp(), 1.2f32.exp(), 1.0];
        // Finding 0: present at entries 0 and 2 of the three. Finding 1: unknown at entry 1.
        let want = [(w[0] + w[2]) / (w[0] + w[1] + w[2]), w[2] / (w[0] + w[2])];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
        // No neighbour knows the finding: 0.5.
        let unknown = Tensor::from_slice(&[-1i8; 4]).view([4, 1]);
        let s = finding_scores(&bank, &unknown, &q, 2, 0.5);
        assert_eq!(Vec::<f32>::try_from(s.flatten(0, -1)).unwrap(), [0.5]);
    }

    /// The class and finding scores against an independent NumPy implementation of the same
    /// rule (L2-normalise, the k most similar bank rows, weights exp(sim / T)), on random
    /// features: the same predicted classes, scores within float32 rounding.
    #[test]
    fn class_and_finding_scores_match_numpy() {
        use ssl_plugin_api::tch::Device;
        let python =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.deps/torch-venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: run scripts/setup-libtorch.sh",
            python.display()
        );
        let dir = tempfile::tempdir().unwrap();
        ssl_plugin_api::tch::manual_seed(3);
        let bank = Tensor::randn([300, 16], (Kind::Float, Device::Cpu));
        let queries = Tensor::randn([40, 16], (Kind::Float, Device::Cpu));
        let labels = Tensor::randint(7, [300], (Kind::Int64, Device::Cpu));
        let findings = Tensor::randint_low(-1, 2, [300, 4], (Kind::Int64, Device::Cpu));
        for (name, t) in [
            ("bank", &bank),
            ("queries", &queries),
            ("labels", &labels),
            ("findings", &findings),
        ] {
            t.write_npy(dir.path().join(format!("{name}.npy"))).unwrap();
        }
        let script = r#"
import numpy as np, sys
d = sys.argv[1]
b, q = np.load(d + "/bank.npy"), np.load(d + "/queries.npy")
y, f = np.load(d + "/labels.npy"), np.load(d + "/findings.npy")
def norm(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
b, q = norm(b.astype(np.float64)), norm(q.astype(np.float64))
for k, t in [(200, 0.1), (20, 0.07), (5, 0.5)]:
    sim = q @ b.T
    idx = np.argsort(-sim, axis=1)[:, :k]
    w = np.exp(np.take_along_axis(sim, idx, axis=1) / t)
    classes = np.zeros((len(q), 7))
    for i in range(len(q)):
        np.add.at(classes[i], y[idx[i]], w[i])
    known = (f[idx] >= 0) * w[:, :, None]
    present = (f[idx] == 1) * w[:, :, None]
    share = present.sum(1) / np.maximum(known.sum(1), 1e-300)
    share[known.sum(1) == 0] = 0.5
    np.save(d + f"/classes_{k}.npy", classes.astype(np.float32))
    np.save(d + f"/findings_{k}.npy", share.astype(np.float32))
"#;
        let out = std::process::Command::new(&python)
            .args(["-c", script, &dir.path().display().to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for (k, t) in [(200, 0.1), (20, 0.07), (5, 0.5)] {
            let want = Tensor::read_npy(dir.path().join(format!("classes_{k}.npy"))).unwrap();
            let got = class_scores(&bank, &labels, &queries, 7, k, t);
            assert_eq!(
                Vec::<i64>::try_from(got.argmax(1, false)).unwrap(),
                Vec::<i64>::try_from(want.argmax(1, false)).unwrap(),
                "k {k}"
            );
            assert!(got.allclose(&want, 1e-4, 1e-3, false), "k {k}");
            let want = Tensor::read_npy(dir.path().join(format!("findings_{k}.npy"))).unwrap();
            let got = finding_scores(&bank, &findings, &queries, k, t);
            assert!(got.allclose(&want, 1e-4, 1e-5, false), "k {k}");
        }
    }
}
