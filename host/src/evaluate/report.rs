//! The results of an evaluation: one row per (encoder, protocol, label fraction, seed,
//! metric), written as `results.csv` and `results.json`, and summarised as a Markdown table
//! (`results.md`, also printed).

use crate::atomic_file;
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// One measured value.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub encoder: String,
    /// `linear`, `knn-k200-t0.1`, `knn-k20-t0.07`.
    pub protocol: String,
    pub dataset: String,
    /// The share of the training labels used (1.0: all).
    pub fraction: f64,
    pub seed: u64,
    /// `top1`, `top5`, `auroc`, `auroc_macro`, `auprc_macro`, `auroc/<finding>`, ...
    pub metric: String,
    pub value: f64,
    /// The 95% bootstrap interval over the test set, where computed.
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    /// The probe's chosen inverse L2 penalty C (linear probe only).
    pub penalty: Option<f64>,
    /// Labelled training samples actually used.
    pub labelled_samples: usize,
    pub test_samples: usize,
    /// For kept encoders of a run: the epoch after which the encoder was kept.
    pub epoch: Option<usize>,
    /// Short SHA-256 of the sorted sample ids of the training and test splits.
    pub train_split: String,
    pub test_split: String,
    pub ssl_host_version: String,
}

fn csv_number(v: Option<f64>) -> String {
    v.map(|v| format!("{v}")).unwrap_or_default()
}

/// `results.csv`: a header, then one line per row.
pub fn to_csv(rows: &[Row]) -> String {
    let mut text = String::from(
        "encoder,protocol,dataset,fraction,seed,metric,value,ci_low,ci_high,penalty,labelled_samples,test_samples,epoch,train_split,test_split,ssl_host_version\n",
    );
    let field = crate::commands::embed::csv_field;
    for r in rows {
        text.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            field(&r.encoder),
            field(&r.protocol),
            field(&r.dataset),
            r.fraction,
            r.seed,
            field(&r.metric),
            r.value,
            csv_number(r.ci_low),
            csv_number(r.ci_high),
            csv_number(r.penalty),
            r.labelled_samples,
            r.test_samples,
            r.epoch.map(|e| e.to_string()).unwrap_or_default(),
            r.train_split,
            r.test_split,
            r.ssl_host_version,
        ));
    }
    text
}

/// Mean and sample standard deviation (0 for one value) of the finite `values`.
pub fn mean_sd(values: &[f64]) -> (f64, f64) {
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    if v.len() < 2 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
    (mean, var.sqrt())
}

/// The Markdown summary: one line per (encoder, protocol, fraction) of the final encoders
/// (not the kept ones), with each of `metrics` as mean ± sd over seeds and the first seed's
/// 95% interval.
pub fn markdown(rows: &[Row], metrics: &[&str]) -> String {
    let mut groups: BTreeMap<(String, String, u64), Vec<&Row>> = BTreeMap::new();
    let mut order: Vec<(String, String, u64)> = Vec::new();
    for r in rows.iter().filter(|r| r.epoch.is_none()) {
        let key = (
            r.encoder.clone(),
            r.protocol.clone(),
            (r.fraction * 1e6).round() as u64,
        );
        if !groups.contains_key(&key) {
            order.push(key.clone());
        }
        groups.entry(key).or_default().push(r);
    }
    // A metric gets an interval column when any of its rows has an interval.
    let with_ci: Vec<bool> = metrics
        .iter()
        .map(|m| rows.iter().any(|r| r.metric == *m && r.ci_low.is_some()))
        .collect();
    let mut text = String::from("| encoder | protocol | labels | labelled images |");
    for (m, ci) in metrics.iter().zip(&with_ci) {
        text.push_str(&format!(" {m} |"));
        if *ci {
            text.push_str(" 95% CI |");
        }
    }
    text.push_str("\n| --- | --- | --- | --- |");
    for ci in &with_ci {
        text.push_str(if *ci { " --- | --- |" } else { " --- |" });
    }
    text.push('\n');
    for key in order {
        let rows = &groups[&key];
        let first = rows[0];
        let seeds: Vec<u64> = {
            let mut s: Vec<u64> = rows.iter().map(|r| r.seed).collect();
            s.sort();
            s.dedup();
            s
        };
        let labelled: Vec<f64> = seeds
            .iter()
            .filter_map(|s| rows.iter().find(|r| r.seed == *s))
            .map(|r| r.labelled_samples as f64)
            .collect();
        let (labelled_mean, _) = mean_sd(&labelled);
        text.push_str(&format!(
            "| {} | {} | {}% | {:.0} |",
            first.encoder,
            first.protocol,
            trim_number(first.fraction * 100.0),
            labelled_mean.round()
        ));
        for (m, with_ci) in metrics.iter().zip(&with_ci) {
            let values: Vec<&Row> = rows.iter().filter(|r| r.metric == *m).copied().collect();
            if values.is_empty() {
                text.push_str(if *with_ci { " | |" } else { " |" });
                continue;
            }
            let (mean, sd) = mean_sd(&values.iter().map(|r| r.value).collect::<Vec<_>>());
            let cell = if values.len() > 1 {
                format!("{mean:.4} ± {sd:.4}")
            } else {
                format!("{mean:.4}")
            };
            let ci = values
                .iter()
                .min_by_key(|r| r.seed)
                .and_then(|r| Some(format!("{:.4}–{:.4}", r.ci_low?, r.ci_high?)))
                .unwrap_or_default();
            if *with_ci {
                text.push_str(&format!(" {cell} | {ci} |"));
            } else {
                text.push_str(&format!(" {cell} |"));
            }
        }
        text.push('\n');
    }
    text
}

fn trim_number(x: f64) -> String {
    let s = format!("{x:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Writes `results.csv`, `results.json` and `results.md` into `dir` (each atomically).
pub fn write(dir: &Path, rows: &[Row], markdown_text: &str) -> Result<()> {
    atomic_file::write_atomic(&dir.join("results.csv"), to_csv(rows).as_bytes())?;
    let json = serde_json::to_string_pretty(rows)?;
    atomic_file::write_atomic(&dir.join("results.json"), json.as_bytes())?;
    atomic_file::write_atomic(&dir.join("results.md"), markdown_text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(encoder: &str, fraction: f64, seed: u64, metric: &str, value: f64) -> Row {
        Row {
            encoder: encoder.into(),
            protocol: "linear".into(),
            dataset: "D".into(),
            fraction,
            seed,
            metric: metric.into(),
            value,
            ci_low: (seed == 0).then_some(value - 0.1),
            ci_high: (seed == 0).then_some(value + 0.1),
            penalty: Some(1.0),
            labelled_samples: 10 + seed as usize,
            test_samples: 5,
            epoch: None,
            train_split: "a".into(),
            test_split: "b".into(),
            ssl_host_version: "0".into(),
        }
    }

    #[test]
    fn the_summary_gives_mean_sd_over_seeds_and_the_first_seeds_interval() {
        let rows = vec![
            row("A", 0.1, 0, "top1", 0.5),
            row("A", 0.1, 1, "top1", 0.7),
            row("A", 1.0, 0, "top1", 0.9),
            row("B,x", 1.0, 0, "top1", 0.4),
        ];
        let md = markdown(&rows, &["top1"]);
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines.len(), 5, "{md}");
        assert!(
            lines[2].starts_with("| A | linear | 10% | 11 | 0.6000 ± 0.1414 | 0.4000–0.6000 |"),
            "{md}"
        );
        assert!(
            lines[3].contains("| 100% |") && lines[3].contains("0.9000 |"),
            "{md}"
        );
        let csv = to_csv(&rows);
        assert!(csv
            .lines()
            .nth(4)
            .unwrap()
            .starts_with("\"B,x\",linear,D,1,0,top1,0.4,"));
        assert_eq!(csv.lines().count(), 5);
        assert_eq!(mean_sd(&[1.0, f64::NAN, 3.0]), (2.0, 2f64.sqrt()));
    }
}
