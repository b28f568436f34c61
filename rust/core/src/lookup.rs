//! Validated pooling calls: bag descriptions to offsets, argument checks, and the
//! multithreaded run over one or many tables balanced by work rather than by bag count.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernel::{pool_range, Index, Job, Mode, Out};
use crate::mem;
use crate::parallel;
use crate::simd;

/// Below this much work (bytes of rows read plus output written) a call runs on the calling
/// thread: waking the pool costs more than it saves.
pub const SERIAL_WORK_BYTES: usize = 96 * 1024;
/// Work items per thread, so that threads that finish early can take more.
const ITEMS_PER_THREAD: usize = 4;
/// Least work worth a work item of its own.
const MIN_ITEM_BYTES: usize = 32 * 1024;

/// How the indices are grouped into bags.
#[derive(Debug, Clone, Copy)]
pub enum Bags<'a, O> {
    /// torch style: where each bag starts; with `include_last`, the last entry is the end.
    Offsets { offsets: &'a [O], include_last: bool },
    /// Caffe2 style: the size of each bag.
    Lengths(&'a [O]),
    /// `bags` bags of `per_bag` indices each (2-D indices).
    Fixed { bags: usize, per_bag: usize },
}

/// The `B + 1` bag boundaries of `bags` over `n` indices, checked.
pub fn bag_offsets<O: Index>(bags: Bags<'_, O>, n: usize) -> Result<Vec<usize>> {
    match bags {
        Bags::Fixed { bags, per_bag } => {
            if bags.checked_mul(per_bag) != Some(n) {
                return Err(Error::value(format!(
                    "{bags} bags of {per_bag} do not match {n} indices"
                )));
            }
            let mut offs = mem::with_capacity(bags + 1, "the bag offsets")?;
            offs.extend((0..=bags).map(|b| b * per_bag));
            Ok(offs)
        }
        Bags::Lengths(lengths) => {
            let mut offs = mem::with_capacity(lengths.len() + 1, "the bag offsets")?;
            let mut total: u64 = 0;
            offs.push(0);
            for (i, l) in lengths.iter().enumerate() {
                let l = l.to_i64();
                if l < 0 {
                    return Err(Error::value(format!("lengths[{i}] = {l} is negative")));
                }
                total = total.saturating_add(l as u64);
                if total > n as u64 {
                    return Err(Error::value(format!(
                        "lengths sum to more than the {n} indices (past it at lengths[{i}])"
                    )));
                }
                offs.push(total as usize);
            }
            if total != n as u64 {
                return Err(Error::value(format!(
                    "lengths sum to {total} but there are {n} indices"
                )));
            }
            Ok(offs)
        }
        Bags::Offsets { offsets, include_last } => {
            if include_last && offsets.is_empty() {
                return Err(Error::value(
                    "with include_last_offset, offsets needs at least one entry (the end)",
                ));
            }
            let mut offs = mem::with_capacity(offsets.len() + 1, "the bag offsets")?;
            let mut prev: i64 = 0;
            for (i, o) in offsets.iter().enumerate() {
                let o = o.to_i64();
                if i == 0 && o != 0 {
                    return Err(Error::value(format!("offsets[0] must be 0, got {o}")));
                }
                if o < prev {
                    return Err(Error::value(format!(
                        "offsets must not decrease: offsets[{}] = {prev} > offsets[{i}] = {o}",
                        i - 1
                    )));
                }
                if o as u64 > n as u64 {
                    return Err(Error::value(format!(
                        "offsets[{i}] = {o} is past the end of the {n} indices"
                    )));
                }
                offs.push(o as usize);
                prev = o;
            }
            if include_last {
                if *offs.last().unwrap_or(&0) != n {
                    return Err(Error::value(format!(
                        "with include_last_offset the last offset must equal the number of \
                         indices ({n}), got {prev}"
                    )));
                }
            } else {
                offs.push(n);
            }
            Ok(offs)
        }
    }
}

/// A table's rows as the kernels see them.
#[derive(Clone, Copy)]
pub struct TableView<'a> {
    pub data: &'a [u8],
    pub num_rows: usize,
    pub dim: usize,
    pub dtype: DType,
    /// Whether the rows live in 2 MiB pages (the kernels then prefetch every line of a row;
    /// on 4 KiB pages, where nearly every random row misses the TLB, only its first line).
    pub huge_pages: bool,
}

/// Check the per-call arguments and build a job.
pub fn make_job<'a, I: Index>(
    table: TableView<'a>,
    indices: &'a [I],
    offsets: Vec<usize>,
    weights: Option<&'a [f32]>,
    mode: Mode,
    padding_idx: Option<i64>,
    position: Option<usize>,
) -> Result<Job<'a, I>> {
    debug_assert_eq!(table.data.len(), table.num_rows * table.dtype.row_bytes(table.dim));
    if let Some(w) = weights {
        if mode != Mode::Sum {
            return Err(Error::value(
                "per-sample weights are only supported with mode=\"sum\"",
            ));
        }
        if w.len() != indices.len() {
            return Err(Error::value(format!(
                "weights has {} entries but there are {} indices",
                w.len(),
                indices.len()
            )));
        }
    }
    let padding = match padding_idx {
        None => None,
        Some(p) => {
            let rows = table.num_rows as i64;
            let q = if p < 0 { p + rows } else { p };
            if q < 0 || q >= rows {
                return Err(Error::value(format!(
                    "padding_idx {p} is out of range for a table of {rows} rows"
                )));
            }
            Some(q as u64)
        }
    };
    Ok(Job {
        data: table.data,
        num_rows: table.num_rows,
        dim: table.dim,
        dtype: table.dtype,
        huge_pages: table.huge_pages,
        indices,
        offsets,
        weights,
        mode,
        padding,
        table: position,
    })
}

/// Work of a range of bags, in bytes touched: rows read plus the output written.
fn work(job: &Job<'_, impl Index>, bags: std::ops::Range<usize>) -> usize {
    let lookups = job.offsets[bags.end] - job.offsets[bags.start];
    lookups * job.row_bytes() + bags.len() * (4 * job.dim + 64)
}

/// Pool every job into `out` (`batch` rows of `stride` floats; job `t` writes the columns
/// starting at `columns[t]`). All jobs describe the same `batch` bags.
pub fn run<I: Index>(jobs: &[Job<'_, I>], columns: &[usize], out: &mut [f32], stride: usize) -> Result<()> {
    let batch = jobs.first().map_or(0, Job::num_bags);
    assert_eq!(columns.len(), jobs.len());
    for (t, job) in jobs.iter().enumerate() {
        if job.num_bags() != batch {
            return Err(Error::value(format!(
                "table {t} has {} bags but table 0 has {batch}; every table needs the same batch",
                job.num_bags()
            )));
        }
        assert!(columns[t] + job.dim <= stride, "column range outside the output row");
    }
    assert_eq!(out.len(), batch * stride, "output buffer of the wrong size");
    let base = out.as_mut_ptr();
    let outs: Vec<Out> = columns.iter().map(|&c| Out { ptr: base.wrapping_add(c), stride }).collect();
    // SAFETY: `out` holds `batch` rows of `stride` floats, every job has `batch` bags and
    // writes its own `dim` columns starting at `columns[t]`, inside the row (checked above);
    // `out` is borrowed mutably for the whole call.
    unsafe { run_outs(jobs, &outs) }
}

/// Pool every job into its own output: job `t` writes its `num_bags()` rows of `dim` floats
/// at `outs[t]`, rows `outs[t].stride` floats apart.
///
/// # Safety
///
/// Each `outs[t]` must point to `jobs[t].num_bags()` rows of `jobs[t].dim` writable floats,
/// `outs[t].stride` apart, valid for the whole call, and no two jobs' cells may overlap.
pub unsafe fn run_outs<I: Index>(jobs: &[Job<'_, I>], outs: &[Out]) -> Result<()> {
    assert_eq!(outs.len(), jobs.len());
    let level = simd::level();
    let total: usize = jobs.iter().map(|j| work(j, 0..j.num_bags())).sum();
    let threads = parallel::num_threads();

    let result = if threads <= 1 || total <= SERIAL_WORK_BYTES {
        jobs.iter().zip(outs).try_for_each(|(job, &o)| {
            // SAFETY: the caller's contract: `o` holds this job's rows, disjoint from others'.
            unsafe { pool_range(level, job, 0..job.num_bags(), o) }
        })
    } else {
        // A thread is worth waking for about SERIAL_WORK_BYTES of work.
        let useful = total.div_ceil(SERIAL_WORK_BYTES).clamp(2, threads);
        let items = split(jobs, total, useful * ITEMS_PER_THREAD, useful);
        parallel::for_each_index(items.len(), useful, &|k| {
            let (t, bags) = &items[k];
            // SAFETY: the items cover disjoint bag ranges of each job, and jobs' outputs are
            // disjoint and valid for the call (the caller's contract); see `split`.
            unsafe { pool_range(level, &jobs[*t], bags.clone(), outs[*t]) }
        })
    };
    match result {
        Err(e @ Error::IndexOutOfRange(_)) => {
            // Threads may have met different bad indices; report the first one.
            Err(jobs.iter().find_map(Job::first_bad_index).unwrap_or(e))
        }
        other => other,
    }
}

/// Cut each job's bags into ranges of about `total / pieces` work each, and each job into at
/// least `threads` ranges: items are claimed in order, so the threads then pool one table
/// together and share its rows in cache, rather than each pulling a different table through.
fn split<I: Index>(
    jobs: &[Job<'_, I>],
    total: usize,
    pieces: usize,
    threads: usize,
) -> Vec<(usize, std::ops::Range<usize>)> {
    let target = total.div_ceil(pieces).max(1);
    let mut items = Vec::with_capacity(pieces + jobs.len());
    for (t, job) in jobs.iter().enumerate() {
        let batch = job.num_bags();
        let job_work = work(job, 0..batch);
        // At least one range per thread, where each range keeps enough work to be worth it.
        let for_threads = threads.min(job_work / MIN_ITEM_BYTES);
        let n = job_work.div_ceil(target).max(for_threads).clamp(1, batch.max(1));
        let per_bag = 4 * job.dim + 64;
        let rb = job.row_bytes();
        // Work before bag b, a non-decreasing function of b.
        let before = |b: usize| job.offsets[b] * rb + b * per_bag;
        let mut start = 0;
        for k in 1..=n {
            let end = if k == n {
                batch
            } else {
                // The first bag at or past the k-th share of the work.
                let goal = job_work * k / n;
                let (mut lo, mut hi) = (start, batch);
                while lo < hi {
                    let mid = lo + (hi - lo) / 2;
                    if before(mid) < goal {
                        lo = mid + 1;
                    } else {
                        hi = mid;
                    }
                }
                lo
            };
            if end > start {
                items.push((t, start..end));
                start = end;
            }
        }
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_with_and_without_last() {
        let o = [0i64, 2, 2];
        assert_eq!(bag_offsets(Bags::Offsets { offsets: &o, include_last: false }, 5).unwrap(), [0, 2, 2, 5]);
        let o = [0i64, 2, 5];
        assert_eq!(bag_offsets(Bags::Offsets { offsets: &o, include_last: true }, 5).unwrap(), [0, 2, 5]);
        assert!(bag_offsets(Bags::Offsets { offsets: &o, include_last: true }, 6).is_err());
        let bad = [1i32, 2];
        assert!(bag_offsets(Bags::Offsets { offsets: &bad, include_last: false }, 5).is_err());
        let dec = [0i32, 3, 2];
        assert!(bag_offsets(Bags::Offsets { offsets: &dec, include_last: false }, 5).is_err());
        let past = [0i32, 7];
        assert!(bag_offsets(Bags::Offsets { offsets: &past, include_last: false }, 5).is_err());
    }

    #[test]
    fn lengths_must_sum_to_the_indices() {
        assert_eq!(bag_offsets(Bags::Lengths(&[2i32, 0, 3]), 5).unwrap(), [0, 2, 2, 5]);
        assert!(bag_offsets(Bags::Lengths(&[2i32, 2]), 5).is_err());
        assert!(bag_offsets(Bags::Lengths(&[-1i64, 6]), 5).is_err());
        let fixed: Bags<'_, i32> = Bags::Fixed { bags: 2, per_bag: 3 };
        assert_eq!(bag_offsets(fixed, 6).unwrap(), [0, 3, 6]);
    }
}
