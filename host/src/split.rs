//! Train/validation splits, exactly as the original draws them: torch's `randperm` (bolts'
//! `random_split`) for most datasets, NumPy's `RandomState` permutation of subjects for datasets
//! whose samples come in groups (several images per patient).

use anyhow::{anyhow, Result};
use ssl_plugin_api::host::DatasetHandle;
use ssl_plugin_api::tch::{Device, Kind, Tensor};

/// The train/validation split of a dataset of `len` samples, as bolts' `random_split`:
/// `val_len = int(val_split * len)`, the permutation is torch's `randperm(len)` from a generator
/// seeded with `seed` (so splits match the original's), train = its first `len - val_len`
/// entries, val = the rest.
pub fn train_val_split(len: usize, val_split: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let val_len = (val_split * len as f64).floor() as usize;
    ssl_plugin_api::tch::manual_seed(seed as i64);
    let perm = Tensor::randperm(len as i64, (Kind::Int64, Device::Cpu));
    let perm: Vec<i64> = Vec::<i64>::try_from(&perm).expect("randperm gives int64");
    let perm: Vec<usize> = perm.into_iter().map(|i| i as usize).collect();
    let (train, val) = perm.split_at(len - val_len);
    (train.to_vec(), val.to_vec())
}

/// NumPy's legacy `RandomState(seed)` generator (MT19937 seeded as `init_genrand`), enough of
/// it to reproduce `RandomState(seed).permutation(array)`.
struct NumpyRandomState {
    key: [u32; 624],
    pos: usize,
}

impl NumpyRandomState {
    fn new(seed: u32) -> Self {
        let mut key = [0u32; 624];
        key[0] = seed;
        for i in 1..624 {
            let prev = key[i - 1];
            key[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        NumpyRandomState { key, pos: 624 }
    }

    fn next_u32(&mut self) -> u32 {
        if self.pos >= 624 {
            for i in 0..624 {
                let y = (self.key[i] & 0x8000_0000) | (self.key[(i + 1) % 624] & 0x7fff_ffff);
                let mut v = self.key[(i + 397) % 624] ^ (y >> 1);
                if y & 1 == 1 {
                    v ^= 0x9908_b0df;
                }
                self.key[i] = v;
            }
            self.pos = 0;
        }
        let mut y = self.key[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// A uniform integer in `0..=max` by masked rejection (`random_interval`).
    fn interval(&mut self, max: u32) -> u32 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        for shift in [1, 2, 4, 8, 16] {
            mask |= mask >> shift;
        }
        loop {
            let value = self.next_u32() & mask;
            if value <= max {
                return value;
            }
        }
    }

    /// `permutation(items)`: Fisher-Yates from the end, as NumPy's `shuffle`.
    fn permutation<T: Clone>(&mut self, items: &[T]) -> Vec<T> {
        let mut out = items.to_vec();
        for i in (1..out.len()).rev() {
            let j = self.interval(i as u32) as usize;
            out.swap(i, j);
        }
        out
    }
}

/// The train/validation split of a dataset whose samples come in groups (e.g. several images
/// per patient), as the original's `CovidDataset._split_dataset`: the sorted unique groups
/// are permuted by `numpy.random.RandomState(seed)`, the first `int(groups × val_split)` are
/// validation, the rest training; samples follow their group, in dataset order.
pub fn group_split(groups: &[String], val_split: f64, seed: u32) -> (Vec<usize>, Vec<usize>) {
    // The original reads the CSV with pandas: a column of integers becomes int64 and
    // np.unique sorts it numerically ("2" before "10", "007" = "7"); anything else as strings.
    match groups
        .iter()
        .map(|g| g.trim().parse::<i64>().ok())
        .collect::<Option<Vec<i64>>>()
    {
        Some(numbers) => split_by_key(&numbers, val_split, seed),
        None => split_by_key(groups, val_split, seed),
    }
}

fn split_by_key<K: Ord + std::hash::Hash + Clone>(
    keys: &[K],
    val_split: f64,
    seed: u32,
) -> (Vec<usize>, Vec<usize>) {
    let mut unique: Vec<&K> = keys.iter().collect();
    unique.sort();
    unique.dedup();
    let shuffled = NumpyRandomState::new(seed).permutation(&unique);
    let val_len = (unique.len() as f64 * val_split).floor() as usize;
    let val: std::collections::HashSet<&K> = shuffled[..val_len].iter().copied().collect();
    let (mut train_idx, mut val_idx) = (Vec::new(), Vec::new());
    for (i, k) in keys.iter().enumerate() {
        if val.contains(k) {
            val_idx.push(i);
        } else {
            train_idx.push(i);
        }
    }
    (train_idx, val_idx)
}

/// The split of `dataset`: by group when it has groups ([`group_split`]), else
/// [`train_val_split`].
pub fn split_dataset(
    dataset: &DatasetHandle,
    val_split: f64,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>)> {
    Ok(match dataset.groups()? {
        Some(groups) => {
            // NumPy's RandomState, which the original seeds with it, takes 32-bit seeds only.
            let seed = u32::try_from(seed).map_err(|_| {
                anyhow!(
                    "random_seed={seed}: a dataset split by subject uses NumPy's RandomState, \
                     whose seeds are below 2^32"
                )
            })?;
            group_split(&groups, val_split, seed)
        }
        None => train_val_split(dataset.len(), val_split, seed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_split_matches_numpy() {
        // numpy: RandomState(seed).permutation(np.unique(subjects)) for 12 subjects, named by
        // strings, and by integers as pandas reads a numeric column (sorted 2 < 10, "007" = 7).
        let named: Vec<String> = (0..30).map(|i| format!("s{:02}", (i * 7) % 12)).collect();
        let numbered: Vec<String> = (0..30)
            .map(|i| match (i * 7) % 12 {
                7 => "007".to_string(),
                k => (k * 5).to_string(),
            })
            .collect();
        let python =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.deps/torch-venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: run scripts/setup-libtorch.sh",
            python.display()
        );
        let script = "import numpy as np, sys\n\
            s = np.array(sys.argv[1].split(','))\n\
            s = s.astype(np.int64) if sys.argv[3] == 'int' else s\n\
            u = np.random.RandomState(int(sys.argv[2])).permutation(np.unique(s))\n\
            n = int(len(u) * 0.25)\n\
            print(','.join(str(i) for i in np.where(np.isin(s, u[n:]))[0]))\n\
            print(','.join(str(i) for i in np.where(np.isin(s, u[:n]))[0]))";
        for (subjects, kind, seed) in [
            (&named, "str", 1u32),
            (&named, "str", 42),
            (&named, "str", 12345),
            (&numbered, "int", 1),
            (&numbered, "int", 42),
        ] {
            let out = std::process::Command::new(&python)
                .args(["-c", script, &subjects.join(","), &seed.to_string(), kind])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8(out.stdout).unwrap();
            let mut lines = text.lines();
            let parse = |l: Option<&str>| -> Vec<usize> {
                l.unwrap().split(',').map(|v| v.parse().unwrap()).collect()
            };
            let (train, val) = (parse(lines.next()), parse(lines.next()));
            assert_eq!(
                group_split(subjects, 0.25, seed),
                (train, val),
                "{kind} subjects, seed {seed}"
            );
        }
    }

    #[test]
    fn split_matches_torch_random_split() {
        // bolts/torch anchor: random_split of CIFAR10's 50000 with seed 42 starts with these.
        let (train, val) = train_val_split(50000, 0.1, 42);
        assert_eq!((train.len(), val.len()), (45000, 5000));
        assert_eq!(&train[..5], &[37542, 44491, 216, 43688, 41558]);
        let mut all: Vec<usize> = train.iter().chain(&val).copied().collect();
        all.sort();
        assert_eq!(all, (0..50000).collect::<Vec<_>>());
    }
}
