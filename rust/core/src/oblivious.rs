//! Oblivious lookups: which table rows a call reads does not depend on the ids it looks up.
//!
//! [`scan_lookup`] reads the whole table once per call, row after row, and for every row
//! writes every slot of a gather buffer with a branch-free byte select (the slot takes the
//! row where the slot's id equals the row's number, and keeps its bytes otherwise). The buffer
//! then holds the looked-up rows in lookup order, in the table's own format, and the plain
//! kernel pools it reading its rows 0, 1, 2 ... in order: the output is bit for bit the plain
//! lookup's, and the memory addresses touched depend on the table's and the call's shapes
//! only. The cost is a read of the whole table and `rows x lookups` row selects per call,
//! split over the core's threads by contiguous parts of the table (each part selects into
//! a private zeroed buffer; the buffers are OR-ed, which is exact as one part holds each
//! looked-up row).
//!
//! [`padded_lookup`] is the weaker padding defence's kernel: it reads the rows it is given, in
//! the given order (the ids mixed with dummy rows), and pools the real ones in lookup order.
//!
//! What stays visible to the scan: the shapes (rows, dim, lookups, bags), the timing of the shapes, and
//! an index error (an out-of-range id is refused before the scan). The selects are written
//! without branches on the ids and the mask is hidden from the optimiser
//! (`std::hint::black_box`), which would otherwise branch on it; the compiled code is not
//! verified for constant time.

use crate::error::{Error, IndexError, Result};
use crate::kernel::{Index, Mode};
use crate::lookup::{make_job, run, TableView};
use crate::mem;
use crate::parallel;
use std::sync::Mutex;

/// `0xFF` when `a == b`, `0x00` otherwise, without a branch.
#[inline(always)]
fn eq_mask(a: u64, b: u64) -> u8 {
    let x = a ^ b;
    // The top bit of `x | -x` is set exactly when `x != 0`.
    let nonzero = ((x | x.wrapping_neg()) >> 63) as u8;
    nonzero.wrapping_sub(1)
}

/// Select rows `first..` of `rows` (whole rows of `rb` bytes) into every slot of `out` whose
/// target they are, reading every row once in order and selecting into every slot for every
/// row (a slot no row of the range matches keeps its bytes).
fn scan_rows(rows: &[u8], first: usize, rb: usize, targets: &[u64], out: &mut [u8]) {
    for (r, row) in rows.chunks_exact(rb).enumerate() {
        let r = (first + r) as u64;
        for (slot, &t) in out.chunks_exact_mut(rb).zip(targets) {
            // black_box: left to itself the optimiser sees that the mask is all or nothing
            // and turns the select into a branch that skips reading the row (measured: the
            // "scan" then ran at 150 GB/s from DRAM on one core, reading only the matches).
            let m = std::hint::black_box(eq_mask(t, r));
            for (d, &s) in slot.iter_mut().zip(row) {
                *d = (*d & !m) | (s & m);
            }
        }
    }
}

/// Rows a part of a parallel scan takes at least.
const ROWS_PER_PART: usize = 1024;
/// Bytes of private gather buffers a parallel scan may hold.
const PART_BUFFER_BYTES: usize = 1 << 30;

/// Copy rows `targets` of `table` into `out` (`[targets.len(), row_bytes]`, zeroed), reading
/// every row of the table once. The rows are split in contiguous parts over the core's
/// threads; each part selects into a zeroed private buffer, where only the slots its rows
/// match become non-zero, and the buffers are OR-ed into `out`: every part reads all of its
/// rows and writes all of its buffer whatever the ids.
fn scan_gather(table: TableView<'_>, targets: &[u64], out: &mut [u8]) -> Result<()> {
    let rb = table.dtype.row_bytes(table.dim);
    if rb == 0 || targets.is_empty() {
        return Ok(());
    }
    let by_memory = (PART_BUFFER_BYTES / out.len().max(1)).max(1);
    let parts = parallel::num_threads().min(table.num_rows.div_ceil(ROWS_PER_PART)).min(by_memory);
    if parts <= 1 {
        scan_rows(table.data, 0, rb, targets, out);
        return Ok(());
    }
    let per = table.num_rows.div_ceil(parts);
    let mut buffers = Vec::with_capacity(parts);
    for _ in 0..parts {
        buffers.push(Mutex::new(mem::filled(out.len(), 0u8, "a scan part's gathered rows")?));
    }
    parallel::for_each_index(parts, parts, &|k| {
        let first = (k * per).min(table.num_rows);
        let last = ((k + 1) * per).min(table.num_rows);
        // Each part is claimed by exactly one item: the lock is never contended.
        let mut buf = buffers[k].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        scan_rows(&table.data[first * rb..last * rb], first, rb, targets, &mut buf);
        Ok(())
    })?;
    for b in buffers {
        let b = b.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (o, x) in out.iter_mut().zip(&b) {
            *o |= x;
        }
    }
    Ok(())
}

/// The ids as row numbers, each checked against `num_rows` (an out-of-range id is refused
/// with its position and bag before any row is read).
pub(crate) fn checked_rows<I: Index>(indices: &[I], offsets: &[usize], num_rows: usize) -> Result<Vec<u64>> {
    let mut rows = mem::with_capacity(indices.len(), "the ids")?;
    for (p, i) in indices.iter().enumerate() {
        let v = i.to_i64();
        if v < 0 || v as u64 >= num_rows as u64 {
            let bag = offsets.partition_point(|&o| o <= p).saturating_sub(1);
            return Err(Error::IndexOutOfRange(IndexError { index: v, position: p, bag, num_rows, table: None }));
        }
        rows.push(v as u64);
    }
    Ok(rows)
}

/// A zeroed gather buffer of `slots` rows of `table`'s format.
pub(crate) fn gather_buffer(table: &TableView<'_>, slots: usize) -> Result<Vec<u8>> {
    let rb = table.dtype.row_bytes(table.dim);
    let bytes = slots.checked_mul(rb).ok_or_else(|| Error::value("too many lookups"))?;
    mem::filled(bytes, 0u8, "the gathered rows")
}

/// Pool the first `lookups` rows of `gathered` (rows of `table`'s format, in lookup order) into
/// the bags `offsets` bound, as the plain lookup pools the table: bit for bit its output.
pub(crate) fn pool_gathered(
    table: &TableView<'_>,
    gathered: &[u8],
    lookups: usize,
    offsets: Vec<usize>,
    weights: Option<&[f32]>,
    mode: Mode,
    out: &mut [f32],
) -> Result<()> {
    let view = TableView {
        data: &gathered[..lookups * table.dtype.row_bytes(table.dim)],
        num_rows: lookups,
        dim: table.dim,
        dtype: table.dtype,
        huge_pages: false,
    };
    let mut order = mem::with_capacity(lookups, "the gathered order")?;
    order.extend(0..lookups as i64);
    let job = make_job(view, &order, offsets, weights, mode, None, None)?;
    if out.len() != job.num_bags() * table.dim {
        return Err(Error::value("output of the wrong size"));
    }
    run(&[job], &[0], out, table.dim)
}

/// Pool `indices` of `table` into `out` (`[B, dim]` for the bags `offsets` bound) as the plain
/// lookup does, reading the table obliviously (see the module).
pub fn scan_lookup<I: Index>(
    table: TableView<'_>,
    indices: &[I],
    offsets: Vec<usize>,
    weights: Option<&[f32]>,
    mode: Mode,
    out: &mut [f32],
) -> Result<()> {
    let targets = checked_rows(indices, &offsets, table.num_rows)?;
    let mut gathered = gather_buffer(&table, indices.len())?;
    scan_gather(table, &targets, &mut gathered)?;
    pool_gathered(&table, &gathered, indices.len(), offsets, weights, mode, out)
}

/// Pool `indices` of `table` into `out` as the plain lookup does, reading the rows `reads` in
/// that order instead: `slots[r]` is the position in `indices` whose row read `r` is (each
/// position once), or `indices.len()` for a dummy read that is dropped. The padded lookup of
/// `recengine` builds `reads` from the ids and dummy rows; the output is bit for bit the plain
/// lookup's whatever the dummies and their order.
pub fn padded_lookup<I: Index>(
    table: TableView<'_>,
    indices: &[I],
    offsets: Vec<usize>,
    reads: &[I],
    slots: &[I],
    weights: Option<&[f32]>,
    mode: Mode,
    out: &mut [f32],
) -> Result<()> {
    let n = indices.len();
    if reads.len() != slots.len() {
        return Err(Error::value(format!("{} reads but {} slots", reads.len(), slots.len())));
    }
    let ids = checked_rows(indices, &offsets, table.num_rows)?;
    let rows = checked_rows(reads, &[0], table.num_rows)?;
    let rb = table.dtype.row_bytes(table.dim);
    let mut gathered = gather_buffer(&table, n + 1)?;
    let mut filled = mem::filled(n, false, "the filled slots")?;
    for (&r, s) in rows.iter().zip(slots) {
        let s = s.to_i64();
        if s < 0 || s as usize > n {
            return Err(Error::value(format!("slot {s} outside [0, {n}]")));
        }
        let s = s as usize;
        if s < n {
            if filled[s] {
                return Err(Error::value(format!("slot {s} read twice")));
            }
            filled[s] = true;
            if ids[s] != r {
                return Err(Error::value(format!("slot {s} reads row {r}, not its id {}", ids[s])));
            }
        }
        let src = &table.data[r as usize * rb..(r as usize + 1) * rb];
        gathered[s * rb..(s + 1) * rb].copy_from_slice(src);
    }
    if let Some(s) = filled.iter().position(|f| !f) {
        return Err(Error::value(format!("lookup {s} has no read")));
    }
    pool_gathered(&table, &gathered, n, offsets, weights, mode, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lookup::bag_offsets;
    use crate::{f32_bytes, lookup, Bags, DType};

    fn view(data: &[f32], dim: usize) -> TableView<'_> {
        TableView { data: f32_bytes(data), num_rows: data.len() / dim, dim, dtype: DType::Fp32, huge_pages: false }
    }

    #[test]
    fn masks_select_exactly_one() {
        assert_eq!(eq_mask(7, 7), 0xFF);
        assert_eq!(eq_mask(7, 8), 0);
        assert_eq!(eq_mask(0, u64::MAX), 0);
        assert_eq!(eq_mask(u64::MAX, u64::MAX), 0xFF);
    }

    #[test]
    fn scan_equals_the_plain_lookup_bit_for_bit() {
        let dim = 5;
        let data: Vec<f32> = (0..40 * dim).map(|k| (k as f32 * 0.37).sin()).collect();
        let ids: Vec<i64> = vec![3, 39, 3, 0, 17, 17, 22, 8, 1];
        let lengths: Vec<i64> = vec![2, 0, 4, 3];
        for mode in [Mode::Sum, Mode::Mean, Mode::Max] {
            let offs = bag_offsets(Bags::Lengths(&lengths), ids.len()).unwrap();
            let mut a = vec![0f32; 4 * dim];
            let mut b = vec![1f32; 4 * dim];
            lookup(view(&data, dim), &ids, Bags::Lengths(&lengths), None, mode, None, &mut a).unwrap();
            scan_lookup(view(&data, dim), &ids, offs, None, mode, &mut b).unwrap();
            assert_eq!(a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                       b.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_scan_split_over_threads_is_the_same() {
        let dim = 4;
        let data: Vec<f32> = (0..9000 * dim).map(|k| (k as f32 * 0.013).cos()).collect();
        let ids: Vec<i64> = vec![0, 8999, 1023, 1024, 4500, 4500, 2047, 7];
        let offs = bag_offsets(Bags::Lengths(&[3, 5]), ids.len()).unwrap();
        let mut a = vec![0f32; 2 * dim];
        let mut b = vec![0f32; 2 * dim];
        lookup(view(&data, dim), &ids, Bags::Lengths(&[3, 5]), None, Mode::Sum, None, &mut a).unwrap();
        scan_lookup(view(&data, dim), &ids, offs, None, Mode::Sum, &mut b).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn out_of_range_ids_are_refused_with_their_bag() {
        let data = vec![0f32; 8];
        let offs = vec![0, 1, 2];
        let mut out = vec![0f32; 4];
        let err = scan_lookup(view(&data, 2), &[1i64, 4], offs, None, Mode::Sum, &mut out).unwrap_err();
        match err {
            Error::IndexOutOfRange(e) => assert_eq!((e.index, e.position, e.bag), (4, 1, 1)),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn padded_reads_pool_only_the_real_rows_in_lookup_order() {
        let dim = 3;
        let data: Vec<f32> = (0..10 * dim).map(|k| (k as f32 * 0.7).sin()).collect();
        let ids: Vec<i64> = vec![4, 9, 4];
        let offs = vec![0, 2, 3];
        // Read order: a dummy, id 2, id 0, two dummies, id 1.
        let reads: Vec<i64> = vec![7, 4, 4, 0, 3, 9];
        let slots: Vec<i64> = vec![3, 2, 0, 3, 3, 1];
        let mut a = vec![0f32; 2 * dim];
        let mut b = vec![0f32; 2 * dim];
        lookup(view(&data, dim), &ids, Bags::Lengths(&[2, 1]), None, Mode::Sum, None, &mut a).unwrap();
        padded_lookup(view(&data, dim), &ids, offs.clone(), &reads, &slots, None, Mode::Sum, &mut b).unwrap();
        assert_eq!(a, b);
        let twice: Vec<i64> = vec![0, 0, 1, 2];
        let err = padded_lookup(view(&data, dim), &ids, offs, &[4i64, 4, 9, 4], &twice, None, Mode::Sum, &mut b);
        assert!(err.unwrap_err().to_string().contains("slot 0 read twice"));
    }
}
