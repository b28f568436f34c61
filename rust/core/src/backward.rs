//! The backward of pooling: the table's gradient from the pooled output's gradient.
//!
//! Each lookup `j` (index `r`, bag `b`) adds `scale_j * grad[b]` to row `r` of the table's
//! gradient, where `scale_j` is the per-sample weight (1 without) divided by the bag's
//! non-padding count in mean mode; padding lookups add nothing. [`Plan`] sorts the lookups by
//! row (and by position within a row, so sums run in a fixed order and results do not depend
//! on the thread count), and the threads then each own a run of whole rows: no two threads
//! write one row, so there are no atomics or locks in the sum, and no `unsafe`. That gives the
//! dense gradient (added into a `[num_rows, dim]` buffer). The sparse gradient is torch's
//! uncoalesced one and needs no sort: one row id and one scaled gradient row per non-padding
//! lookup, in lookup order ([`Plan::unsorted`], [`Plan::gather`]).
//!
//! Sums run in f32. For float16 and bfloat16 tables, [`Plan::accumulate_as`] makes them
//! torch's instead (its CPU backward's arithmetic): each lookup's factor rounded to the
//! table's dtype, and the dense gradient rounded to it after every addition, so a drop-in
//! for torch's EmbeddingBag gives torch's gradient and not a more precise one.

use std::ops::Range;
use std::sync::Mutex;

use half::{bf16, f16};

use crate::dtype::DType;
use crate::error::{Error, IndexError, Result};
use crate::kernel::{Index, Mode};
use crate::lookup::SERIAL_WORK_BYTES;
use crate::parallel;
use crate::stdsort;

/// Work items per thread, so that threads that finish early can take more.
const ITEMS_PER_THREAD: usize = 4;
const POSITION_BITS: u32 = 32;
const POSITION_MASK: u64 = (1 << POSITION_BITS) - 1;

/// The pooled output's gradient as a backward reads it: bag `b`'s row is
/// `data[b * stride + col..][..dim]`, so one table's columns of a many-table output are read in
/// place.
#[derive(Clone, Copy)]
pub struct Grad<'a> {
    pub data: &'a [f32],
    pub stride: usize,
    pub col: usize,
}

impl<'a> Grad<'a> {
    /// A `[B, dim]` gradient of one table.
    pub fn dense(data: &'a [f32], dim: usize) -> Grad<'a> {
        Grad { data, stride: dim, col: 0 }
    }

    #[inline(always)]
    fn row(&self, b: usize, dim: usize) -> &'a [f32] {
        let at = b * self.stride + self.col;
        &self.data[at..at + dim]
    }
}

/// The lookups of one pooling call, sorted by the row they touch.
pub struct Plan {
    dim: usize,
    num_rows: usize,
    bags: usize,
    /// `row << 32 | position`, sorted (or in position order, unsorted); padding left out.
    keys: Vec<u64>,
    /// Where each distinct row's keys start in `keys`, then `keys.len()` (sorted plans).
    starts: Vec<usize>,
    /// The bag of each position.
    bag_of: Vec<u32>,
    /// The factor of each position's gradient.
    scale: Vec<f32>,
    /// The dtype the dense sums round to after each addition (f32 for none).
    round: DType,
    /// The padding row, whose lookups are left out.
    padding: Option<u64>,
}

impl Plan {
    /// Check and sort the lookups of a call: `offsets` are its `B + 1` bag boundaries (from
    /// [`crate::bag_offsets`]), `weights` its per-sample weights (sum mode only) and
    /// `padding_idx` its padding row (negative counts from the end). Max mode has no backward
    /// here (its gradient goes to one row per bag and column, chosen in the forward).
    pub fn new<I: Index>(
        num_rows: usize,
        dim: usize,
        indices: &[I],
        offsets: &[usize],
        weights: Option<&[f32]>,
        mode: Mode,
        padding_idx: Option<i64>,
    ) -> Result<Plan> {
        Plan::new_as(num_rows, dim, indices, offsets, weights, mode, padding_idx, DType::Fp32)
    }

    /// [`Plan::new`] for a table of `dtype`, whose gradient is computed as torch computes it
    /// ([`Plan::accumulate_as`]): for float16 and bfloat16, each row's lookups are also added
    /// in the order torch's unsorted sort leaves them in ([`crate::stdsort`]), as the roundings
    /// depend on it.
    #[allow(clippy::too_many_arguments)]
    pub fn new_as<I: Index>(
        num_rows: usize,
        dim: usize,
        indices: &[I],
        offsets: &[usize],
        weights: Option<&[f32]>,
        mode: Mode,
        padding_idx: Option<i64>,
        dtype: DType,
    ) -> Result<Plan> {
        let mut plan = Plan::unsorted(num_rows, dim, indices, offsets, weights, mode, padding_idx)?
            .accumulate_as(dtype)?;
        // From `TORCH_RADIX_SORT_MIN` lookups torch's order is the stable one, which is the
        // order of the sorted (row, position) keys: the parallel sort gives it.
        if plan.round == DType::Fp32 || indices.len() >= stdsort::TORCH_RADIX_SORT_MIN {
            parallel::sort(&mut plan.keys)?;
        } else {
            let rows: Vec<u64> = indices.iter().map(|i| i.to_u64()).collect();
            let padding = plan.padding;
            plan.keys = stdsort::torch_sort_order(&rows)
                .into_iter()
                .filter(|&p| Some(rows[p as usize]) != padding)
                .map(|p| rows[p as usize] << POSITION_BITS | u64::from(p))
                .collect();
        }
        plan.find_starts();
        Ok(plan)
    }

    /// Where each distinct row's keys start, for keys grouped by row in ascending order.
    fn find_starts(&mut self) {
        let mut last = u64::MAX;
        for (k, key) in self.keys.iter().enumerate() {
            let row = key >> POSITION_BITS;
            if row != last {
                self.starts.push(k);
                last = row;
            }
        }
        self.starts.push(self.keys.len());
    }

    /// The same checks as [`Plan::new`], with the lookups left in position order: enough for
    /// [`Plan::rows`] and [`Plan::gather`] (the sparse gradient), not for the dense one.
    pub fn unsorted<I: Index>(
        num_rows: usize,
        dim: usize,
        indices: &[I],
        offsets: &[usize],
        weights: Option<&[f32]>,
        mode: Mode,
        padding_idx: Option<i64>,
    ) -> Result<Plan> {
        let n = indices.len();
        let bags = offsets.len().checked_sub(1).ok_or_else(|| Error::value("offsets are empty"))?;
        debug_assert_eq!(offsets[bags], n);
        if mode == Mode::Max {
            return Err(Error::value("the core has no backward for mode=\"max\""));
        }
        if u64::try_from(n).map_or(true, |n| n > POSITION_MASK) || u32::try_from(bags).is_err() {
            return Err(Error::value(format!(
                "a backward takes at most 2^32 - 1 indices and bags, got {n} and {bags}"
            )));
        }
        if u32::try_from(num_rows).is_err() {
            return Err(Error::value(format!(
                "a backward takes tables of at most 2^32 - 1 rows, got {num_rows}"
            )));
        }
        if let Some(w) = weights {
            if mode != Mode::Sum {
                return Err(Error::value("per-sample weights are only supported with mode=\"sum\""));
            }
            if w.len() != n {
                return Err(Error::value(format!(
                    "weights has {} entries but there are {n} indices",
                    w.len()
                )));
            }
        }
        let padding = match padding_idx {
            None => None,
            Some(p) => {
                let q = if p < 0 { p + num_rows as i64 } else { p };
                if q < 0 || q >= num_rows as i64 {
                    return Err(Error::value(format!(
                        "padding_idx {p} is out of range for a table of {num_rows} rows"
                    )));
                }
                Some(q as u64)
            }
        };

        let mut bag_of = crate::mem::filled(n, 0u32, "the gradient plan")?;
        let mut counts = crate::mem::filled(bags, 0u32, "the gradient plan")?;
        let mut keys = crate::mem::with_capacity(n, "the gradient plan")?;
        for b in 0..bags {
            for p in offsets[b]..offsets[b + 1] {
                bag_of[p] = b as u32;
                let row = indices[p].to_u64();
                if row >= num_rows as u64 {
                    return Err(Error::IndexOutOfRange(IndexError {
                        index: indices[p].to_i64(),
                        position: p,
                        bag: b,
                        num_rows,
                        table: None,
                    }));
                }
                if Some(row) != padding {
                    keys.push(row << POSITION_BITS | p as u64);
                    counts[b] += 1;
                }
            }
        }
        let scale: Vec<f32> = (0..n)
            .map(|p| {
                let w = weights.map_or(1.0, |w| w[p]);
                match mode {
                    Mode::Mean => w / counts[bag_of[p] as usize].max(1) as f32,
                    _ => w,
                }
            })
            .collect();
        Ok(Plan { dim, num_rows, bags, keys, starts: Vec::new(), bag_of, scale, round: DType::Fp32, padding })
    }

    /// Compute the gradient in `dtype`'s precision, as torch's CPU backward does for a
    /// table of that dtype: every factor (per-sample weight, `1 / bag size` in mean mode)
    /// rounded to `dtype`, and each addition into the dense gradient rounded to `dtype`
    /// (`g = round(g + round(factor * grad))`). The sparse gradient's values are then exact
    /// products, which the caller rounds once to `dtype`. `Fp32` leaves the plan as it is;
    /// the quantized dtypes have no gradient.
    pub fn accumulate_as(mut self, dtype: DType) -> Result<Plan> {
        match dtype {
            DType::Fp32 => return Ok(self),
            DType::Fp16 | DType::Bf16 => {}
            DType::Int8 | DType::Int4 => {
                return Err(Error::value(format!("a {} table has no gradient", dtype.name())))
            }
        }
        for s in &mut self.scale {
            *s = round_to(dtype, *s);
        }
        self.round = dtype;
        Ok(self)
    }

    /// How many distinct rows the lookups touch (padding aside); sorted plans only.
    pub fn num_unique(&self) -> usize {
        self.starts.len().saturating_sub(1)
    }

    /// The `u`-th distinct row.
    fn row(&self, u: usize) -> usize {
        (self.keys[self.starts[u]] >> POSITION_BITS) as usize
    }

    /// The row of each non-padding lookup, in the plan's order (lookup order when unsorted).
    pub fn rows(&self) -> Vec<i64> {
        self.keys.iter().map(|k| (k >> POSITION_BITS) as i64).collect()
    }

    /// How many lookups the gradient has (padding lookups aside).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no lookup reaches the gradient.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The sparse gradient's values: row `k` of `values` (`len() * dim`) gets lookup `k`'s
    /// scaled output gradient, for the rows of [`Plan::rows`].
    pub fn gather(&self, grad: Grad<'_>, values: &mut [f32]) -> Result<()> {
        self.check_grad(grad)?;
        let dim = self.dim;
        if values.len() != self.keys.len() * dim {
            return Err(Error::value("the sparse gradient has the wrong size"));
        }
        if dim == 0 {
            return Ok(());
        }
        let threads = parallel::num_threads();
        let bytes = values.len() * 8;
        let useful = bytes.div_ceil(SERIAL_WORK_BYTES).clamp(1, threads);
        let per_item = self.keys.len().div_ceil(useful * ITEMS_PER_THREAD).max(1);
        let chunks: Vec<Mutex<&mut [f32]>> = values.chunks_mut(per_item * dim).map(Mutex::new).collect();
        parallel::for_each_index(chunks.len(), useful, &|c| {
            let mut guard = chunks[c].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let keys = &self.keys[c * per_item..];
            for (dst, &key) in guard.chunks_mut(dim).zip(keys) {
                let p = (key & POSITION_MASK) as usize;
                let b = self.bag_of[p] as usize;
                let s = self.scale[p];
                for (d, &g) in dst.iter_mut().zip(grad.row(b, dim)) {
                    *d = s * g;
                }
            }
            Ok(())
        })
    }

    fn check_grad(&self, grad: Grad<'_>) -> Result<()> {
        let fits = grad.col + self.dim <= grad.stride
            && grad.data.len() == self.bags * grad.stride;
        if !fits {
            return Err(Error::value(format!(
                "the output gradient has {} values, expected {} bags of {} (columns {}..{} of {})",
                grad.data.len(),
                self.bags,
                self.dim,
                grad.col,
                grad.col + self.dim,
                grad.stride
            )));
        }
        Ok(())
    }

    /// Add the gradient into `out`, the dense `[num_rows, dim]` gradient of the table.
    pub fn add_dense(&self, grad: Grad<'_>, out: &mut [f32]) -> Result<()> {
        self.check_grad(grad)?;
        assert!(
            self.keys.is_empty() || !self.starts.is_empty(),
            "add_dense needs a sorted plan (Plan::new)"
        );
        if out.len() != self.num_rows * self.dim {
            return Err(Error::value(format!(
                "the dense gradient has {} values, expected {} rows of {}",
                out.len(),
                self.num_rows,
                self.dim
            )));
        }
        let items = self.split();
        // Item `k` writes the rows from its first distinct row up to the next item's first.
        let mut slices = Vec::with_capacity(items.len());
        let mut rest = out;
        let mut base = 0;
        for (k, range) in items.iter().enumerate() {
            let first = self.row(range.start);
            let end = items.get(k + 1).map_or(self.row(range.end - 1) + 1, |r| self.row(r.start));
            let (_, tail) = rest.split_at_mut((first - base) * self.dim);
            let (mine, tail) = tail.split_at_mut((end - first) * self.dim);
            slices.push(Mutex::new(mine));
            rest = tail;
            base = end;
        }
        self.run(&items, &slices, grad)
    }

    /// Ranges of distinct rows holding about equal numbers of lookups.
    fn split(&self) -> Vec<Range<usize>> {
        let unique = self.num_unique();
        let bytes = self.keys.len() * self.dim * 8;
        let threads = parallel::num_threads();
        let pieces = if threads <= 1 || bytes <= SERIAL_WORK_BYTES {
            1
        } else {
            bytes.div_ceil(SERIAL_WORK_BYTES).clamp(2, threads) * ITEMS_PER_THREAD
        };
        let target = self.keys.len().div_ceil(pieces).max(1);
        let mut items = Vec::with_capacity(pieces + 1);
        let mut start = 0;
        for u in 0..unique {
            if self.starts[u + 1] - self.starts[start] >= target {
                items.push(start..u + 1);
                start = u + 1;
            }
        }
        if start < unique {
            items.push(start..unique);
        }
        items
    }

    /// Add each item's rows into its slice of the dense gradient, which starts at the item's
    /// first distinct row.
    fn run(&self, items: &[Range<usize>], slices: &[Mutex<&mut [f32]>], grad: Grad<'_>) -> Result<()> {
        let dim = self.dim;
        let useful = (self.keys.len() * dim * 8).div_ceil(SERIAL_WORK_BYTES).max(1);
        parallel::for_each_index(items.len(), useful, &|k| {
            let range = items[k].clone();
            let mut guard = slices[k].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let dst_all: &mut [f32] = &mut guard;
            for u in range.clone() {
                let at = (self.row(u) - self.row(range.start)) * dim;
                let dst = &mut dst_all[at..at + dim];
                for &key in &self.keys[self.starts[u]..self.starts[u + 1]] {
                    let p = (key & POSITION_MASK) as usize;
                    let b = self.bag_of[p] as usize;
                    match self.round {
                        DType::Fp16 => axpy_rounded::<f16>(dst, self.scale[p], grad.row(b, dim)),
                        DType::Bf16 => axpy_rounded::<bf16>(dst, self.scale[p], grad.row(b, dim)),
                        _ => axpy(dst, self.scale[p], grad.row(b, dim)),
                    }
                }
            }
            Ok(())
        })
    }
}

/// Build `n` plans (`make(j)`), in parallel (one per work item) when the call's `lookups`
/// are worth waking threads for: the backward of a many-table call.
pub fn plans(n: usize, lookups: usize, make: impl Fn(usize) -> Result<Plan> + Sync) -> Result<Vec<Plan>> {
    if parallel::num_threads() <= 1 || lookups * 16 <= SERIAL_WORK_BYTES {
        return (0..n).map(make).collect();
    }
    let slots: Vec<Mutex<Option<Plan>>> = (0..n).map(|_| Mutex::new(None)).collect();
    parallel::for_each_index(n, parallel::num_threads(), &|j| {
        let plan = make(j)?;
        *slots[j].lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(plan);
        Ok(())
    })?;
    Ok(slots
        .into_iter()
        .map(|s| s.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner).expect("every item ran"))
        .collect())
}

/// One table of a keyed backward ([`keyed_plans`]).
#[derive(Debug, Clone, Copy)]
pub struct KeyedTable {
    pub rows: usize,
    pub dim: usize,
    pub mode: Mode,
    /// The dtype the gradient is accumulated in (torch's arithmetic for half tables).
    pub accumulate: DType,
    /// A dense gradient (a sorted plan, added into a buffer) or a sparse one (lookup order).
    pub dense: bool,
}

/// The plans of a keyed backward (TorchRec's layout, see [`crate::keyed`]): block `j` pooled
/// key `blocks[j].1` through table `blocks[j].0`; built in parallel.
pub fn keyed_plans<I: Index>(
    tables: &[KeyedTable],
    blocks: &[(usize, usize)],
    layout: &crate::keyed::KeyedLayout,
    values: &[I],
    weights: Option<&[f32]>,
) -> Result<Vec<Plan>> {
    plans(blocks.len(), values.len(), |j| {
        let (ti, key) = blocks[j];
        let t = tables[ti];
        let ids = layout.ids(key);
        let w = weights.map(|w| &w[ids.clone()]);
        let offsets = &layout.offsets[j];
        if t.dense {
            Plan::new_as(t.rows, t.dim, &values[ids], offsets, w, t.mode, None, t.accumulate)
        } else {
            Plan::unsorted(t.rows, t.dim, &values[ids], offsets, w, t.mode, None)?.accumulate_as(t.accumulate)
        }
    })
}

/// Gather several sparse gradients, in parallel (one block per work item, each free to split
/// further across idle threads) when there is enough work to wake threads for.
pub fn gather_all(jobs: Vec<(&Plan, Grad<'_>, &mut [f32])>) -> Result<()> {
    let bytes: usize = jobs.iter().map(|(_, _, v)| v.len() * 8).sum();
    if parallel::num_threads() <= 1 || bytes <= SERIAL_WORK_BYTES {
        return jobs.into_iter().try_for_each(|(plan, grad, values)| plan.gather(grad, values));
    }
    let jobs: Vec<_> = jobs.into_iter().map(Mutex::new).collect();
    parallel::for_each_index(jobs.len(), parallel::num_threads(), &|j| {
        let mut job = jobs[j].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (plan, grad, values) = &mut *job;
        plan.gather(*grad, values)
    })
}

/// `dst += a * x`, in a loop the compiler vectorises.
#[inline]
fn axpy(dst: &mut [f32], a: f32, x: &[f32]) {
    for (d, &v) in dst.iter_mut().zip(x) {
        *d += a * v;
    }
}

/// A 16-bit float type the dense sums can round to.
trait Half: Copy {
    fn round(x: f32) -> f32;
}

impl Half for f16 {
    #[inline(always)]
    fn round(x: f32) -> f32 {
        f16::from_f32(x).to_f32()
    }
}

impl Half for bf16 {
    #[inline(always)]
    fn round(x: f32) -> f32 {
        bf16::from_f32(x).to_f32()
    }
}

/// `x` rounded (to nearest, ties to even) to `dtype` and back to f32.
fn round_to(dtype: DType, x: f32) -> f32 {
    match dtype {
        DType::Fp16 => f16::round(x),
        DType::Bf16 => bf16::round(x),
        _ => x,
    }
}

/// `dst = round(dst + round(a * x))` per element: torch's half-precision axpy, which rounds
/// the product to the 16-bit type and then the sum (the product of two 16-bit values is
/// exact in f32, so each step rounds once, as torch's).
#[inline]
fn axpy_rounded<H: Half>(dst: &mut [f32], a: f32, x: &[f32]) {
    for (d, &v) in dst.iter_mut().zip(x) {
        *d = H::round(*d + H::round(a * v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain definition: every lookup adds its scaled bag gradient to its row.
    fn naive(
        num_rows: usize,
        dim: usize,
        indices: &[i64],
        offsets: &[usize],
        weights: Option<&[f32]>,
        mean: bool,
        padding: Option<i64>,
        grad: &[f32],
    ) -> Vec<f32> {
        let mut out = vec![0.0; num_rows * dim];
        for b in 0..offsets.len() - 1 {
            let bag = &indices[offsets[b]..offsets[b + 1]];
            let count = bag.iter().filter(|&&i| Some(i) != padding).count().max(1) as f32;
            for (j, &i) in bag.iter().enumerate() {
                if Some(i) == padding {
                    continue;
                }
                let mut s = weights.map_or(1.0, |w| w[offsets[b] + j]);
                if mean {
                    s /= count;
                }
                for d in 0..dim {
                    out[i as usize * dim + d] += s * grad[b * dim + d];
                }
            }
        }
        out
    }

    #[test]
    fn dense_and_compact_match_the_definition() {
        let (rows, dim) = (7, 3);
        let indices = [1i64, 3, 1, 6, 0, 3, 3, 2];
        let offsets = [0usize, 3, 3, 6, 8];
        let weights = [0.5f32, -1.0, 2.0, 1.5, 0.25, 3.0, -0.5, 1.0];
        let grad: Vec<f32> = (0..4 * dim).map(|x| x as f32 - 5.0).collect();
        for (w, mode, pad) in [
            (None, Mode::Sum, None),
            (Some(&weights[..]), Mode::Sum, Some(3)),
            (None, Mode::Mean, Some(1)),
            (None, Mode::Mean, None),
        ] {
            let want = naive(rows, dim, &indices, &offsets, w, mode == Mode::Mean, pad, &grad);
            let plan = Plan::new(rows, dim, &indices, &offsets, w, mode, pad).unwrap();
            let mut dense = vec![0.0; rows * dim];
            plan.add_dense(Grad::dense(&grad, dim), &mut dense).unwrap();
            for (a, b) in dense.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "{dense:?} != {want:?}");
            }
            // The sparse form: summing its rows gives the dense gradient.
            let sparse = Plan::unsorted(rows, dim, &indices, &offsets, w, mode, pad).unwrap();
            let mut values = vec![0.0; sparse.len() * dim];
            sparse.gather(Grad::dense(&grad, dim), &mut values).unwrap();
            let mut summed = vec![0.0; rows * dim];
            for (k, &r) in sparse.rows().iter().enumerate() {
                assert_ne!(Some(r), pad);
                for d in 0..dim {
                    summed[r as usize * dim + d] += values[k * dim + d];
                }
            }
            for (a, b) in summed.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn many_rows_split_across_threads() {
        let (rows, dim, bags, per_bag) = (5000usize, 16usize, 512usize, 40usize);
        let mut state = 12345u64;
        let indices: Vec<i64> = (0..bags * per_bag)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 33) % rows as u64) as i64
            })
            .collect();
        let offsets: Vec<usize> = (0..=bags).map(|b| b * per_bag).collect();
        let grad: Vec<f32> = (0..bags * dim).map(|x| (x % 13) as f32 * 0.5 - 3.0).collect();
        let want = naive(rows, dim, &indices, &offsets, None, true, Some(7), &grad);
        let plan = Plan::new(rows, dim, &indices, &offsets, None, Mode::Mean, Some(7)).unwrap();
        assert!(plan.split().len() > 1 || parallel::num_threads() == 1);
        let mut dense = vec![0.0; rows * dim];
        plan.add_dense(Grad::dense(&grad, dim), &mut dense).unwrap();
        for (a, b) in dense.iter().zip(&want) {
            assert!((a - b).abs() < 1e-4);
        }
    }

    #[test]
    fn bad_input_is_refused() {
        let offsets = [0usize, 2];
        assert!(matches!(
            Plan::new(3, 2, &[0i64, 3], &offsets, None, Mode::Sum, None),
            Err(Error::IndexOutOfRange(_))
        ));
        assert!(matches!(
            Plan::new(3, 2, &[0i64, -1], &offsets, None, Mode::Sum, None),
            Err(Error::IndexOutOfRange(_))
        ));
        assert!(Plan::new(3, 2, &[0i64, 1], &offsets, None, Mode::Max, None).is_err());
        assert!(Plan::new(3, 2, &[0i64, 1], &offsets, Some(&[1.0]), Mode::Sum, None).is_err());
        assert!(Plan::new(3, 2, &[0i64, 1], &offsets, None, Mode::Sum, Some(3)).is_err());
        let plan = Plan::new(3, 2, &[0i64, 1], &offsets, None, Mode::Sum, None).unwrap();
        assert!(plan.add_dense(Grad::dense(&[1.0; 2], 2), &mut [0.0; 5]).is_err());
        assert!(plan.add_dense(Grad::dense(&[1.0; 3], 2), &mut [0.0; 6]).is_err());
    }

    #[test]
    fn empty_calls_work() {
        let plan = Plan::new(3, 2, &[] as &[i64], &[0, 0, 0], None, Mode::Sum, None).unwrap();
        assert_eq!(plan.num_unique(), 0);
        let mut dense = vec![1.0; 6];
        plan.add_dense(Grad::dense(&[0.0; 4], 2), &mut dense).unwrap();
        assert_eq!(dense, vec![1.0; 6]);
        plan.gather(Grad::dense(&[0.0; 4], 2), &mut []).unwrap();
    }

    #[test]
    fn half_precision_sums_round_after_every_addition() {
        // Row 0 gets 2048 + 1 + 1: in f32 that is 2050; rounded to float16 after each
        // addition, 2048 + 1 ties to even (2048) both times, as torch's float16 backward.
        let grad = [2048.0f32, 1.0, 1.0];
        let offsets = [0usize, 1, 2, 3];
        let plan = Plan::new(2, 1, &[0i64, 0, 0], &offsets, None, Mode::Sum, None).unwrap();
        let mut f32_sum = vec![0.0; 2];
        plan.add_dense(Grad::dense(&grad, 1), &mut f32_sum).unwrap();
        assert_eq!(f32_sum, vec![2050.0, 0.0]);
        let plan = plan.accumulate_as(DType::Fp16).unwrap();
        let mut half_sum = vec![0.0; 2];
        plan.add_dense(Grad::dense(&grad, 1), &mut half_sum).unwrap();
        assert_eq!(half_sum, vec![2048.0, 0.0]);
        // bfloat16 keeps 8 significant bits: 256 + 1 rounds back to 256.
        let grad = [256.0f32, 1.0, 1.0];
        let plan = Plan::new(2, 1, &[0i64, 0, 0], &offsets, None, Mode::Sum, None).unwrap();
        let plan = plan.accumulate_as(DType::Bf16).unwrap();
        let mut bf_sum = vec![0.0; 2];
        plan.add_dense(Grad::dense(&grad, 1), &mut bf_sum).unwrap();
        assert_eq!(bf_sum, vec![256.0, 0.0]);
    }

    #[test]
    fn half_precision_mean_factors_are_rounded() {
        // Mean over a bag of 3: the factor 1/3 rounded to float16 (0.33325195), as torch's.
        let plan = Plan::unsorted(1, 1, &[0i64, 0, 0], &[0, 3], None, Mode::Mean, None).unwrap();
        let plan = plan.accumulate_as(DType::Fp16).unwrap();
        let mut values = vec![0.0; 3];
        plan.gather(Grad::dense(&[1.0], 1), &mut values).unwrap();
        assert_eq!(values, vec![f16::from_f32(1.0 / 3.0).to_f32(); 3]);
        assert!(Plan::unsorted(1, 1, &[0i64], &[0, 1], None, Mode::Sum, None)
            .unwrap()
            .accumulate_as(DType::Int8)
            .is_err());
    }
}
