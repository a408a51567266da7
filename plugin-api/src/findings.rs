//! Multi-label datasets: a sample may carry several binary labels ("findings", as NIH's 14
//! chest X-ray findings or CheXpert's observations). A dataset declares them all at once with
//! [`Dataset::findings`](crate::Dataset::findings); single-label datasets leave it at `None`.

use crate::error::{PluginError, Result};

/// The value of a finding that is present.
pub const PRESENT: i8 = 1;
/// The value of a finding that is absent.
pub const ABSENT: i8 = 0;
/// The value of a finding that is not known for a sample (e.g. CheXpert's uncertain labels
/// under the `ignore` policy): left out of losses and metrics.
pub const UNKNOWN: i8 = -1;

/// The findings of every sample of a multi-label dataset.
///
/// ```no_run
/// use ssl_plugin_api::Findings;
///
/// // Two samples, findings Edema and Effusion: the first has Edema, the second is unknown
/// // for Edema and has no Effusion.
/// let f = Findings::new(vec!["Edema".into(), "Effusion".into()], vec![1, 0, -1, 0]).unwrap();
/// assert_eq!(f.len(), 2);
/// assert_eq!(f.of(1), &[-1, 0]);
/// assert!(Findings::new(vec!["Edema".into()], vec![2]).is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Findings {
    names: Vec<String>,
    values: Vec<i8>,
}

impl Findings {
    /// Findings `names` and their `values`, row-major `[samples × names]`, each
    /// [`PRESENT`], [`ABSENT`] or [`UNKNOWN`]. `Err` when a name is empty or repeated, the
    /// values do not fill whole rows, or a value is not one of the three.
    pub fn new(names: Vec<String>, values: Vec<i8>) -> Result<Findings> {
        if names.is_empty() {
            return Err(PluginError::msg(
                "a multi-label dataset needs at least one finding",
            ));
        }
        for (i, name) in names.iter().enumerate() {
            if name.trim().is_empty() {
                return Err(PluginError::msg(format!("finding {i} has an empty name")));
            }
            if names[..i].contains(name) {
                return Err(PluginError::msg(format!("finding `{name}` is named twice")));
            }
        }
        if !values.len().is_multiple_of(names.len()) {
            return Err(PluginError::msg(format!(
                "{} finding values do not fill rows of {} findings",
                values.len(),
                names.len()
            )));
        }
        if let Some((i, v)) = values
            .iter()
            .enumerate()
            .find(|(_, v)| ![PRESENT, ABSENT, UNKNOWN].contains(v))
        {
            return Err(PluginError::msg(format!(
                "sample {} has value {v} for finding `{}`; expected 1 (present), 0 (absent) or -1 (unknown)",
                i / names.len(),
                names[i % names.len()]
            )));
        }
        Ok(Findings { names, values })
    }

    /// The findings' names, in column order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.values.len() / self.names.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The findings of sample `index`, one value per name. Panics out of range.
    pub fn of(&self, index: usize) -> &[i8] {
        let n = self.names.len();
        &self.values[index * n..(index + 1) * n]
    }

    /// All values, row-major `[samples × names]`.
    pub fn values(&self) -> &[i8] {
        &self.values
    }

    /// The findings of the samples `indices`, in that order (a subset, e.g. one split).
    pub fn select(&self, indices: &[usize]) -> Findings {
        let values = indices
            .iter()
            .flat_map(|&i| self.of(i).iter().copied())
            .collect();
        Findings {
            names: self.names.clone(),
            values,
        }
    }

    /// Splits into names and values.
    pub fn into_parts(self) -> (Vec<String>, Vec<i8>) {
        (self.names, self.values)
    }
}
