//! The one place that orders samples. A [`Sampler`] turns the dataset indices of a split into
//! the batches of a pass, as a pure function of (seed, epoch, cycle, rank, world size): the same
//! arguments always give the same batches, whatever the number of worker threads, so a resumed
//! run sees the data an uninterrupted one would.
//!
//! Data-parallel semantics: the global batch is `world × batch_size`; the global order and the
//! global batches are those of a one-process run with the global batch size, and rank `r` takes
//! the `r`-th slice of `batch_size` samples of each. Every sample is seen once per pass, and
//! what a sample looks like never depends on the rank. Without `drop_last`, an incomplete last
//! global batch is, with several processes, filled up from the start of the order (as torch's
//! `DistributedSampler` pads), so every rank takes the same number of equal batches; one
//! process keeps it incomplete ([`Sampler::real_samples`] tells the repeats apart).

use crate::seeds::{permutation, seed_of};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Tells the deal of shards ([`Order::Shards`]) apart from other draws.
const DEAL: u64 = 0x5AAD;

/// How a pass orders the split.
#[derive(Clone, Debug, PartialEq)]
pub enum Order {
    /// The split's own order (validation, test, embeddings, predictions).
    Sequential,
    /// A fresh permutation of the split every epoch, drawn from `seed_of([seed, epoch, stream])`
    /// (and the cycle, for passes that cycle, see [`Sampler::cycled`]).
    Shuffled {
        /// The run's `random_seed`.
        seed: u64,
        /// Tells the shuffles of different loaders apart.
        stream: u64,
    },
    /// Shard-grouped (`sample_order = shards`), for packed datasets: each epoch the shards are
    /// put in a random order (drawn from the seed and the epoch only: every such pass of an
    /// epoch over one split deals the same shards to a process) and their samples, in that order, cut into `partitions` equal
    /// contiguous parts; each part is shuffled within itself, and global batch `k` is block `k`
    /// of every part in turn (a block: `global batch / partitions` samples). With as many
    /// partitions as processes, rank `r`'s slice of every global batch comes from part `r`, so
    /// a process reads about 1/N of the shards (plus at most the two it shares at its part's
    /// ends) and the last, padded, global batch. The order is a pure function of (seed, epoch,
    /// stream, partitions, block), not of the process count: one process with N partitions and
    /// N times the batch reads the global batches an N-process run reads. The fewer than
    /// `partitions` samples left over by the cut come last.
    Shards {
        /// The run's `random_seed`.
        seed: u64,
        /// Tells the shuffles of different loaders apart.
        stream: u64,
        /// The shard of every dataset index (indexed by dataset index).
        shard_of: Arc<[u32]>,
        /// Number of parts (0: the number of processes).
        partitions: usize,
    },
}

/// Batches of a split.
#[derive(Clone, Debug)]
pub struct Sampler {
    indices: Vec<usize>,
    batch_size: usize,
    drop_last: bool,
    order: Order,
    rank: usize,
    world: usize,
}

impl Sampler {
    /// A one-process sampler over `indices` (dataset indices of a split) in batches of
    /// `batch_size`, dropping an incomplete last batch when `drop_last`.
    pub fn new(indices: Vec<usize>, batch_size: usize, drop_last: bool, order: Order) -> Sampler {
        Sampler {
            indices,
            batch_size,
            drop_last,
            order,
            rank: 0,
            world: 1,
        }
    }

    /// The same sampler for process `rank` of `world`: `batch_size` stays per process.
    pub fn for_rank(mut self, rank: usize, world: usize) -> Sampler {
        assert!(world >= 1 && rank < world, "rank {rank} of {world}");
        self.rank = rank;
        self.world = world;
        self
    }

    /// Number of samples in the split.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether the split is empty.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// Per-process batch size.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The batches of this process for one pass of `epoch`.
    pub fn batches(&self, epoch: u64) -> Vec<Vec<usize>> {
        self.slice(&self.ordered(&[epoch]))
    }

    /// The split in the order of one pass; `key`: the epoch (and the cycle).
    fn ordered(&self, key: &[u64]) -> Vec<usize> {
        let mixed = |seed: u64, stream: u64| {
            let mut parts = vec![seed];
            parts.extend_from_slice(&key[..1]);
            parts.push(stream);
            parts.extend_from_slice(&key[1..]);
            seed_of(&parts)
        };
        match &self.order {
            Order::Sequential => self.indices.clone(),
            Order::Shuffled { seed, stream } => self.shuffled(mixed(*seed, *stream)),
            // The shards are dealt by (seed, epoch) alone, so every shuffled pass of an epoch
            // over the same split (SSL training, the online linear head, any cycle) gives a
            // process the same shards; the stream and cycle shuffle within the parts.
            Order::Shards {
                seed,
                stream,
                shard_of,
                ..
            } => self.shard_grouped(
                seed_of(&[*seed, key[0], DEAL]),
                mixed(*seed, *stream),
                shard_of,
            ),
        }
    }

    /// This sampler, or an error when its global batch does not divide into the parts of
    /// [`Order::Shards`] (see [`Sampler::shard_blocks`]): check it when the run is built.
    pub fn checked(self) -> anyhow::Result<Sampler> {
        self.shard_blocks().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(self)
    }

    /// The number of parts of [`Order::Shards`] and their block size, or why the batch does
    /// not divide into them.
    pub fn shard_blocks(&self) -> Result<(usize, usize), String> {
        let Order::Shards { partitions, .. } = &self.order else {
            return Ok((1, self.batch_size * self.world));
        };
        let parts = if *partitions == 0 {
            self.world
        } else {
            *partitions
        };
        let global = self.batch_size * self.world;
        if !global.is_multiple_of(parts) {
            return Err(format!(
                "sample_order = shards: the global batch of {global} samples ({} per process × {} processes) does not divide into shard_partitions = {parts} equal blocks",
                self.batch_size, self.world
            ));
        }
        Ok((parts, global / parts))
    }

    fn shard_grouped(&self, deal: u64, seed: u64, shard_of: &[u32]) -> Vec<usize> {
        let (parts, block) = self.shard_blocks().unwrap_or_else(|e| panic!("{e}"));
        let mut by_shard: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for &i in &self.indices {
            by_shard.entry(shard_of[i]).or_default().push(i);
        }
        let shards: Vec<Vec<usize>> = by_shard.into_values().collect();
        let dealt: Vec<usize> = permutation(shards.len(), deal)
            .into_iter()
            .flat_map(|s| shards[s].iter().copied())
            .collect();
        let per_part = dealt.len() / parts;
        let parts_shuffled: Vec<Vec<usize>> = (0..parts)
            .map(|r| {
                let part = &dealt[r * per_part..(r + 1) * per_part];
                permutation(per_part, seed_of(&[seed, 2, r as u64]))
                    .into_iter()
                    .map(|i| part[i])
                    .collect()
            })
            .collect();
        let mut order = Vec::with_capacity(dealt.len());
        for k in 0..per_part.div_ceil(block) {
            for part in &parts_shuffled {
                order.extend_from_slice(&part[k * block..((k + 1) * block).min(per_part)]);
            }
        }
        order.extend_from_slice(&dealt[parts * per_part..]);
        order
    }

    /// `steps` batches of `epoch` for a pass that must last `steps` steps (the online linear
    /// head beside the SSL pass): the split re-shuffled every cycle (the permutation of cycle
    /// `k` is drawn from `seed_of([seed, epoch, stream, k])`), cycled when shorter and cut when
    /// longer, as the original. `None` when one cycle gives no batch (fewer samples than a
    /// global batch with `drop_last`).
    pub fn cycled(&self, epoch: u64, steps: usize) -> Option<Vec<Vec<usize>>> {
        let mut plan = Vec::with_capacity(steps);
        let mut cycle = 0u64;
        while plan.len() < steps {
            let batches = self.slice(&self.ordered(&[epoch, cycle]));
            if batches.is_empty() {
                return None;
            }
            plan.extend(batches);
            cycle += 1;
        }
        plan.truncate(steps);
        Some(plan)
    }

    /// How many samples of this process's batch number `k` of [`Sampler::batches`] (of
    /// `len` samples) are the split's own rather than the repeats that fill the last global
    /// batch with several processes: the first that many. Metrics over every sample once
    /// (validation, the kNN monitor) keep only those.
    pub fn real_samples(&self, k: usize, len: usize) -> usize {
        let start = k * self.batch_size * self.world + self.rank * self.batch_size;
        self.indices.len().saturating_sub(start).min(len)
    }

    fn shuffled(&self, seed: u64) -> Vec<usize> {
        permutation(self.indices.len(), seed)
            .into_iter()
            .map(|i| self.indices[i])
            .collect()
    }

    /// This rank's slice of each global batch of `order`.
    fn slice(&self, order: &[usize]) -> Vec<Vec<usize>> {
        let global = self.batch_size * self.world;
        let mut out = Vec::with_capacity(order.len().div_ceil(global.max(1)));
        for batch in order.chunks(global) {
            if batch.len() < global {
                if self.drop_last {
                    break;
                }
                if self.world > 1 {
                    // Fill the last global batch from the start of the order, so that every
                    // rank gets a full batch.
                    let padded: Vec<usize> = batch
                        .iter()
                        .chain(order.iter().cycle())
                        .take(global)
                        .copied()
                        .collect();
                    let start = self.rank * self.batch_size;
                    out.push(padded[start..start + self.batch_size].to_vec());
                    break;
                }
            }
            let start = (self.rank * self.batch_size).min(batch.len());
            let end = ((self.rank + 1) * self.batch_size).min(batch.len());
            out.push(batch[start..end].to_vec());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shuffled(n: usize, bs: usize, drop_last: bool) -> Sampler {
        Sampler::new(
            (100..100 + n).collect(),
            bs,
            drop_last,
            Order::Shuffled {
                seed: 42,
                stream: 11,
            },
        )
    }

    #[test]
    fn batches_are_a_pure_function_of_seed_and_epoch() {
        let s = shuffled(50, 8, true);
        assert_eq!(s.batches(3), s.batches(3));
        assert_ne!(s.batches(3), s.batches(4));
        let b = s.batches(0);
        assert_eq!(b.len(), 6);
        assert!(b.iter().all(|b| b.len() == 8));
        // The order is the permutation of the split's indices (what the loaders used before
        // the sampler existed).
        let want: Vec<usize> = permutation(50, seed_of(&[42, 0, 11]))
            .into_iter()
            .map(|i| 100 + i)
            .collect();
        assert_eq!(b.concat(), want[..48].to_vec());
    }

    #[test]
    fn drop_last_and_sequential() {
        let s = Sampler::new((0..10).collect(), 4, false, Order::Sequential);
        assert_eq!(
            s.batches(7),
            vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]
        );
        let s = Sampler::new((0..10).collect(), 4, true, Order::Sequential);
        assert_eq!(s.batches(0).len(), 2);
        let s = Sampler::new((0..10).collect(), 5, true, Order::Sequential);
        assert_eq!(s.batches(0).len(), 2);
    }

    #[test]
    fn ranks_take_their_slice_of_the_one_process_global_batches() {
        // 43 samples, global batch 8: 5 full global batches and 3 left over (fewer than one
        // rank's batch of 4).
        for drop_last in [true, false] {
            let whole = shuffled(43, 8, drop_last).batches(2);
            let ranks: Vec<Vec<Vec<usize>>> = (0..2)
                .map(|r| shuffled(43, 4, drop_last).for_rank(r, 2).batches(2))
                .collect();
            // Every rank the same number of batches of the same size.
            assert_eq!(ranks[0].len(), ranks[1].len());
            assert!(ranks.iter().flatten().all(|b| b.len() == 4));
            for (k, global) in whole.iter().enumerate().take(5) {
                let joined: Vec<usize> = ranks[0][k].iter().chain(&ranks[1][k]).copied().collect();
                assert_eq!(&joined, global, "global batch {k}, drop_last {drop_last}");
            }
            if drop_last {
                assert_eq!(ranks[0].len(), 5);
            } else {
                // The last global batch: the 3 left over, then the order's first 5 again.
                assert_eq!(ranks[0].len(), 6);
                let order = whole.concat();
                let last: Vec<usize> = ranks[0][5].iter().chain(&ranks[1][5]).copied().collect();
                assert_eq!(last[..3], order[40..43]);
                assert_eq!(last[3..], order[..5]);
                // Only the first 3 of the last global batch are real: all of rank 0's first 3.
                let sequential: Vec<Sampler> = (0..2)
                    .map(|r| shuffled(43, 4, false).for_rank(r, 2))
                    .collect();
                assert_eq!(sequential[0].real_samples(5, 4), 3);
                assert_eq!(sequential[1].real_samples(5, 4), 0);
                assert_eq!(sequential[1].real_samples(4, 4), 4);
                let mut seen: Vec<usize> = ranks.iter().flatten().flatten().copied().collect();
                seen.sort();
                seen.dedup();
                assert_eq!(seen.len(), 43, "every sample at least once");
            }
        }
        // One process keeps the incomplete last batch as it is.
        let one = shuffled(43, 8, false).batches(2);
        assert_eq!(one.last().unwrap().len(), 3);
    }

    /// 10 shards of 7 samples (70 samples), split indices 3.. (67 samples).
    fn sharded(bs: usize, partitions: usize, drop_last: bool) -> Sampler {
        let shard_of: Arc<[u32]> = (0..70).map(|i| (i / 7) as u32).collect();
        Sampler::new(
            (3..70).collect(),
            bs,
            drop_last,
            Order::Shards {
                seed: 5,
                stream: 2,
                shard_of,
                partitions,
            },
        )
    }

    #[test]
    fn shard_grouped_ranks_read_their_own_shards_and_equal_one_process_with_the_doubled_batch() {
        let shard = |i: usize| i / 7;
        for drop_last in [true, false] {
            let one = sharded(8, 2, drop_last);
            assert_eq!(one.batches(4), one.batches(4), "a pure function");
            assert_ne!(one.batches(4), one.batches(5), "reshuffled every epoch");
            let whole = one.batches(4);
            let ranks: Vec<Vec<Vec<usize>>> = (0..2)
                .map(|r| sharded(4, 0, drop_last).for_rank(r, 2).batches(4))
                .collect();
            assert_eq!(ranks[0].len(), ranks[1].len());
            for (k, global) in whole.iter().enumerate() {
                if global.len() < 8 {
                    continue;
                }
                let joined: Vec<usize> = ranks[0][k].iter().chain(&ranks[1][k]).copied().collect();
                assert_eq!(&joined, global, "global batch {k}");
            }
            // The full batches of each rank lie in its own shards: at most one shard (where
            // the parts meet) is read by both.
            let touched = |r: usize| -> std::collections::BTreeSet<usize> {
                ranks[r]
                    .iter()
                    .filter(|b| b.len() == 4)
                    .take(33 / 4)
                    .flatten()
                    .map(|&i| shard(i))
                    .collect()
            };
            let (a, b) = (touched(0), touched(1));
            assert!(a.intersection(&b).count() <= 1, "{a:?} {b:?}");
            assert!(a.len() <= 6 && b.len() <= 6, "{a:?} {b:?}");
        }
        // Another stream (the online linear head's pass) or cycle of the same epoch: other
        // batches from the same shards on each rank.
        let other = |r: usize| {
            let mut s = sharded(4, 0, true).for_rank(r, 2);
            if let Order::Shards { stream, .. } = &mut s.order {
                *stream = 9;
            }
            s
        };
        for r in 0..2 {
            let shards_of = |b: &Vec<Vec<usize>>| -> std::collections::BTreeSet<usize> {
                b.iter().flatten().map(|&i| shard(i)).collect()
            };
            let mine = sharded(4, 0, true).for_rank(r, 2).batches(4);
            let theirs = other(r).batches(4);
            assert_ne!(mine, theirs);
            assert_eq!(shards_of(&mine), shards_of(&theirs));
            assert_eq!(
                shards_of(&other(r).cycled(4, 16).unwrap()),
                shards_of(&mine)
            );
        }
        // Every sample once per pass (one process, keeping the incomplete last batch).
        let mut seen: Vec<usize> = sharded(8, 2, false).batches(1).concat();
        seen.sort();
        assert_eq!(seen, (3..70).collect::<Vec<_>>());
        // A batch that does not divide into the parts is refused with the parameters named.
        let err = sharded(5, 2, true).checked().unwrap_err().to_string();
        assert!(err.contains("shard_partitions = 2"), "{err}");
        assert!(sharded(8, 2, true).checked().is_ok());
    }

    #[test]
    fn cycled_passes_reshuffle_each_cycle_and_cut() {
        let s = shuffled(20, 8, true);
        let plan = s.cycled(1, 5).unwrap();
        assert_eq!(plan.len(), 5);
        // Two batches per cycle: cycles 0, 1 and half of 2, each its own permutation.
        let cycle = |k: u64| -> Vec<usize> {
            permutation(20, seed_of(&[42, 1, 11, k]))
                .into_iter()
                .map(|i| 100 + i)
                .collect()
        };
        assert_eq!(plan[0..2].concat(), cycle(0)[..16].to_vec());
        assert_eq!(plan[2..4].concat(), cycle(1)[..16].to_vec());
        assert_eq!(plan[4], cycle(2)[..8].to_vec());
        assert_eq!(shuffled(5, 8, true).cycled(0, 3), None);
        assert_eq!(s.cycled(0, 0), Some(vec![]));
    }
}
