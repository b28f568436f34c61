//! Keyed jagged ids, TorchRec's layout: `values` holds the ids of `num_keys` keys, key-major,
//! and `lengths[k * batch + b]` is how many ids key `k` has for sample `b`. A lookup pools
//! chosen keys (`slots`) each with its table; this module finds where each key's ids are and
//! each slot's bag boundaries, checking the lengths.

use crate::error::{Error, Result};
use crate::kernel::Index;
use crate::lookup::{bag_offsets, Bags};

/// Where the keys' ids are in `values`, and each slot's bags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedLayout {
    /// Key `k`'s ids are `values[starts[k]..starts[k + 1]]` (`num_keys + 1` entries).
    pub starts: Vec<usize>,
    /// Slot `j`'s bag offsets into its key's ids (`batch + 1` entries each).
    pub offsets: Vec<Vec<usize>>,
}

impl KeyedLayout {
    /// The layout of `n` values with `lengths` `[num_keys * batch]`, for the keys `slots`
    /// names. With `batch` 0 there are no lengths: every key the slots name exists, empty.
    pub fn new<I: Index>(slots: &[usize], n: usize, lengths: &[I], batch: usize) -> Result<KeyedLayout> {
        let num_lengths = lengths.len();
        let num_keys = num_lengths.checked_div(batch).unwrap_or_else(|| slots.iter().max().map_or(0, |&m| m + 1));
        if num_lengths != num_keys * batch {
            return Err(Error::value(format!("{num_lengths} lengths do not split into keys of batch {batch}")));
        }
        if let Some(&bad) = slots.iter().find(|&&k| k >= num_keys) {
            return Err(Error::value(format!("key {bad} is not one of the {num_keys} keys")));
        }
        let mut starts = Vec::with_capacity(num_keys + 1);
        let mut total = 0u64;
        starts.push(0usize);
        for k in 0..num_keys {
            let sum = lengths[k * batch..(k + 1) * batch]
                .iter()
                .try_fold(0u64, |a, &x| u64::try_from(x.to_i64()).ok().map(|x| a.saturating_add(x)))
                .ok_or_else(|| Error::value(format!("key {k} has a negative length")))?;
            total = total.saturating_add(sum);
            if total > n as u64 {
                return Err(Error::value(format!("the lengths of key {k} run past the {n} values")));
            }
            starts.push(total as usize);
        }
        if total != n as u64 {
            return Err(Error::value(format!("the lengths sum to {total} but there are {n} values")));
        }
        let offsets = slots
            .iter()
            .map(|&k| bag_offsets(Bags::Lengths(&lengths[k * batch..(k + 1) * batch]), starts[k + 1] - starts[k]))
            .collect::<Result<Vec<_>>>()?;
        Ok(KeyedLayout { starts, offsets })
    }

    /// The ids of key `k` within `values`.
    pub fn ids(&self, k: usize) -> std::ops::Range<usize> {
        self.starts[k]..self.starts[k + 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_bags_and_refusals() {
        // Two keys, batch 2: key 0 has 1 + 2 ids, key 1 has 0 + 1.
        let l = KeyedLayout::new(&[1, 0], 4, &[1i64, 2, 0, 1], 2).unwrap();
        assert_eq!(l.starts, vec![0, 3, 4]);
        assert_eq!(l.offsets, vec![vec![0, 0, 1], vec![0, 1, 3]]);
        assert_eq!(l.ids(1), 3..4);
        assert!(KeyedLayout::new(&[0], 4, &[1i64, 2, 0], 2).is_err()); // 3 lengths, batch 2
        assert!(KeyedLayout::new(&[2], 4, &[1i64, 2, 0, 1], 2).is_err()); // no key 2
        assert!(KeyedLayout::new(&[0], 4, &[1i64, -1, 3, 1], 2).is_err()); // negative
        assert!(KeyedLayout::new(&[0], 3, &[1i64, 2, 0, 1], 2).is_err()); // past the values
        assert!(KeyedLayout::new(&[0], 5, &[1i64, 2, 0, 1], 2).is_err()); // values left over
        let empty = KeyedLayout::new(&[0, 2], 0, &[0i32; 0], 0).unwrap();
        assert_eq!(empty.starts, vec![0, 0, 0, 0]);
    }
}
