//! Pooling kernels: for each bag `b` of a range, `out[b] = reduce_{j in bag} w_j * T[idx_j]`.
//!
//! The SIMD kernel keeps a bag's whole output block in vector registers (up to `MAX_NV`
//! vectors, one const-generic instantiation per block size), decodes each stored format on the
//! fly (quantized rows fold their scale into the FMA weight and sum their biases apart),
//! prefetches rows a few lookups ahead (`prefetch_distance`), checks each index with one unsigned compare,
//! and allocates nothing. Unweighted sums take two lookups at a time into two accumulator
//! sets (summed at the bag's end), so the adds of cached rows do not wait on each other. Rows wider than one block are pooled block by block. A scalar kernel
//! covers CPUs without AVX2.

use std::ops::Range;

use crate::dtype::DType;
use crate::error::{Error, IndexError, Result};
use crate::quant;
use crate::simd::Level;

/// How a bag's rows are reduced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Sum,
    Mean,
    Max,
}

impl Mode {
    pub fn parse(name: &str) -> Result<Mode> {
        match name {
            "sum" => Ok(Mode::Sum),
            "mean" => Ok(Mode::Mean),
            "max" => Ok(Mode::Max),
            _ => Err(Error::value(format!(
                "unknown mode {name:?}; expected \"sum\", \"mean\" or \"max\""
            ))),
        }
    }
    /// The mode's name, as `parse` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Sum => "sum",
            Mode::Mean => "mean",
            Mode::Max => "max",
        }
    }
}

/// An index type: i32 or i64. Negative values map to huge unsigned ones, so one unsigned
/// compare against the row count rejects both ends.
pub trait Index: Copy + Send + Sync + 'static {
    fn to_u64(self) -> u64;
    fn to_i64(self) -> i64;
    /// `v`, which the caller knows fits (an index shifted down into a smaller range).
    fn from_i64(v: i64) -> Self;
}

impl Index for i32 {
    #[inline(always)]
    fn to_u64(self) -> u64 {
        i64::from(self) as u64
    }
    #[inline(always)]
    fn to_i64(self) -> i64 {
        i64::from(self)
    }
    #[inline(always)]
    fn from_i64(v: i64) -> Self {
        v as i32
    }
}

impl Index for i64 {
    #[inline(always)]
    fn to_u64(self) -> u64 {
        self as u64
    }
    #[inline(always)]
    fn to_i64(self) -> i64 {
        self
    }
    #[inline(always)]
    fn from_i64(v: i64) -> Self {
        v
    }
}


/// One table's share of a pooling call, already validated: `offsets` has `B + 1` entries,
/// non-decreasing, ending at `indices.len()`; `weights`, when given, has one per index and the
/// mode is `Sum`; `padding < num_rows`; `data` holds `num_rows * row_bytes` bytes.
pub struct Job<'a, I> {
    pub data: &'a [u8],
    pub num_rows: usize,
    pub dim: usize,
    pub dtype: DType,
    /// Whether the rows live in 2 MiB pages (see `Prefetch::new`).
    pub huge_pages: bool,
    pub indices: &'a [I],
    pub offsets: Vec<usize>,
    pub weights: Option<&'a [f32]>,
    pub mode: Mode,
    pub padding: Option<u64>,
    /// The table's position in a collection, for error messages.
    pub table: Option<usize>,
}

impl<I: Index> Job<'_, I> {
    pub fn num_bags(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn row_bytes(&self) -> usize {
        self.dtype.row_bytes(self.dim)
    }

    fn index_error(&self, position: usize, bag: usize) -> Error {
        Error::IndexOutOfRange(IndexError {
            index: self.indices[position].to_i64(),
            position,
            bag,
            num_rows: self.num_rows,
            table: self.table,
        })
    }

    /// The first out-of-range index, if any (the error path uses it to report the same index
    /// whatever the threads found first).
    pub fn first_bad_index(&self) -> Option<Error> {
        let n = self.num_rows as u64;
        let pos = self.indices.iter().position(|i| i.to_u64() >= n)?;
        let bag = self.offsets[1..].partition_point(|&o| o <= pos);
        Some(self.index_error(pos, bag))
    }
}

/// Where a job writes: `ptr` is its first output element (row 0, its first column) and rows
/// are `stride` floats apart.
#[derive(Clone, Copy)]
pub struct Out {
    pub ptr: *mut f32,
    pub stride: usize,
}

// SAFETY: an `Out` is only a pointer to the caller's output buffer; the scheduler hands each
// work item a disjoint set of (bag, column) cells, so concurrent writes never overlap, and the
// buffer outlives the call that uses it.
unsafe impl Send for Out {}
// SAFETY: see `Send`; shared `Out`s are only used to write disjoint cells.
unsafe impl Sync for Out {}

/// A tuning knob read once from the environment variable `name` (a number, at most `max`),
/// else `default`; `cell` caches it (`usize::MAX`: not read yet).
fn env_knob(cell: &std::sync::atomic::AtomicUsize, name: &str, default: usize, max: usize) -> usize {
    use std::sync::atomic::Ordering;
    let v = cell.load(Ordering::Relaxed);
    if v != usize::MAX {
        return v;
    }
    let v = std::env::var(name)
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .map_or(default, |v| v.min(max));
    cell.store(v, Ordering::Relaxed);
    v
}

static DISTANCE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(usize::MAX);
/// The default of [`prefetch_distance`]. Measured on the 2-core EPYC (Zen 4), tables of
/// 20K-2M rows of 128-512 bytes, 1-80 lookups a bag, interleaved call by call with torch:
/// at batch 1024, DRAM-resident 128- and 256-byte rows pooled 15-45% faster at 32 than at
/// FBGEMM's 16 and cached or 512-byte rows the same; at batch 16 the two were within noise
/// (the range's first rows are prefetched before its loop, so a long distance costs a small
/// call nothing). 48 and 64 were 5-30% slower on 512-byte rows.
const DEFAULT_DISTANCE: usize = 32;

/// How many lookups ahead the kernels prefetch rows: `RECENGINE_PREFETCH_DISTANCE` when set
/// (a tuning knob, 0 to 64) or [`set_prefetch_distance`], else [`DEFAULT_DISTANCE`].
pub fn prefetch_distance() -> usize {
    env_knob(&DISTANCE, "RECENGINE_PREFETCH_DISTANCE", DEFAULT_DISTANCE, 64)
}

/// Set the prefetch distance for the rest of the process (`None`: the default again); a
/// tuning aid for benchmarks that compare distances in one run; at most 64.
pub fn set_prefetch_distance(distance: Option<usize>) {
    let _ = prefetch_distance(); // read the environment first, so it cannot overwrite this
    DISTANCE.store(distance.map_or(DEFAULT_DISTANCE, |d| d.min(64)), std::sync::atomic::Ordering::Relaxed);
}

/// How many lines of each row the kernels prefetch at most: `RECENGINE_PREFETCH_LINES` when set
/// (a tuning knob, 0 for none), else no cap beyond `Prefetch::new`'s own.
pub fn prefetch_lines() -> usize {
    static LINES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(usize::MAX);
    env_knob(&LINES, "RECENGINE_PREFETCH_LINES", usize::MAX - 1, 64)
}

/// Pool `bags` of `job` into `out` with the kernels of `level`.
///
/// # Safety
/// `out` must be valid for writes of rows `bags` (each `job.dim` floats at `ptr + b * stride`),
/// and no other thread may write those cells during the call.
pub unsafe fn pool_range<I: Index>(
    level: Level,
    job: &Job<'_, I>,
    bags: Range<usize>,
    out: Out,
) -> Result<()> {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: each level's entry point runs only when the CPU has its features (the level
        // comes from `simd::level`, which checks); the output contract is the caller's.
        unsafe {
            match level {
                Level::Avx512 => return x86::pool_avx512(job, bags, out),
                Level::Avx2 => return x86::pool_avx2(job, bags, out),
                Level::Scalar => {}
            }
        }
    }
    let _ = level;
    // SAFETY: the caller's output contract.
    unsafe { pool_scalar(job, bags, out) }
}

/// The portable kernel: decode each row, accumulate in the output row.
unsafe fn pool_scalar<I: Index>(job: &Job<'_, I>, bags: Range<usize>, out: Out) -> Result<()> {
    let dim = job.dim;
    let rb = job.row_bytes();
    let mut row = vec![0f32; dim];
    let nrows = job.num_rows as u64;
    let pad = job.padding.unwrap_or(u64::MAX);
    for b in bags {
        // SAFETY: the caller guarantees row `b` of `out` is ours and `dim` floats long.
        let o = unsafe { std::slice::from_raw_parts_mut(out.ptr.add(b * out.stride), dim) };
        let init = if job.mode == Mode::Max { f32::NEG_INFINITY } else { 0.0 };
        o.fill(init);
        let mut count = 0usize;
        for j in job.offsets[b]..job.offsets[b + 1] {
            let r = job.indices[j].to_u64();
            if r >= nrows {
                return Err(job.index_error(j, b));
            }
            if r == pad {
                continue;
            }
            count += 1;
            let start = r as usize * rb;
            quant::decode_row(job.dtype, &job.data[start..start + rb], &mut row);
            let w = job.weights.map_or(1.0, |w| w[j]);
            if job.mode == Mode::Max {
                // torch's rule: the first row, then each value greater than the one held
                // (so a NaN held stays, and a later NaN is never taken).
                for (a, x) in o.iter_mut().zip(&row) {
                    if count == 1 || *x > *a {
                        *a = *x;
                    }
                }
            } else {
                for (a, x) in o.iter_mut().zip(&row) {
                    *a += w * x;
                }
            }
        }
        if count == 0 {
            o.fill(0.0);
        } else if job.mode == Mode::Mean {
            let inv = 1.0 / count as f32;
            o.iter_mut().for_each(|a| *a *= inv);
        }
    }
    Ok(())
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::Prefetch;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    use std::ops::Range;

    use super::{Index, Job, Mode, Out};
    use crate::dtype::DType;
    use crate::error::Result;
    use crate::simd::{Avx2, Avx512, Simd};


    /// A storage format as the SIMD kernel reads it.
    trait Format {
        const QUANT: bool;
        /// Byte offset of column `col` in a row (`col` is a multiple of the lane count).
        fn byte_offset(col: usize) -> usize;
        /// Load the valid lanes of the values at `p`.
        unsafe fn load<S: Simd>(p: *const u8, t: S::Tail) -> S::V;
        /// Load a full vector of values at `p`.
        unsafe fn full<S: Simd>(p: *const u8) -> S::V;
        /// The row's scale and bias; `(1, 0)` for float formats.
        #[inline(always)]
        unsafe fn scale_bias<S: Simd>(_row: *const u8, _dim: usize) -> (f32, f32) {
            (1.0, 0.0)
        }
        /// Where a row of `dim` values keeps its scale (quantized formats).
        #[inline(always)]
        fn scale_at(_dim: usize) -> Option<usize> {
            None
        }
    }

    struct F32;
    struct F16;
    struct Bf16;
    struct Q8;
    struct Q4;

    /// A float format: `$bytes` bytes a value, read by the given loads, no scale or bias.
    macro_rules! float_format {
        ($name:ident, $bytes:literal, $load:ident, $full:ident) => {
            impl Format for $name {
                const QUANT: bool = false;
                #[inline(always)]
                fn byte_offset(col: usize) -> usize {
                    $bytes * col
                }
                #[inline(always)]
                unsafe fn load<S: Simd>(p: *const u8, t: S::Tail) -> S::V {
                    // SAFETY: forwarded caller contract.
                    unsafe { S::$load(p, t) }
                }
                #[inline(always)]
                unsafe fn full<S: Simd>(p: *const u8) -> S::V {
                    // SAFETY: forwarded caller contract.
                    unsafe { S::$full(p) }
                }
            }
        };
    }

    float_format!(F32, 4, load_f32, full_f32);
    float_format!(F16, 2, load_f16, full_f16);
    float_format!(Bf16, 2, load_bf16, full_bf16);

    impl Format for Q8 {
        const QUANT: bool = true;
        #[inline(always)]
        fn byte_offset(col: usize) -> usize {
            col
        }
        #[inline(always)]
        unsafe fn load<S: Simd>(p: *const u8, t: S::Tail) -> S::V {
            // SAFETY: forwarded caller contract.
            unsafe { S::load_u8(p, t) }
        }
        #[inline(always)]
        unsafe fn full<S: Simd>(p: *const u8) -> S::V {
            // SAFETY: forwarded caller contract.
            unsafe { S::full_u8(p) }
        }
        #[inline(always)]
        fn scale_at(dim: usize) -> Option<usize> {
            Some(dim)
        }
        #[inline(always)]
        unsafe fn scale_bias<S: Simd>(row: *const u8, dim: usize) -> (f32, f32) {
            // SAFETY: an int8 row has its f32 scale and bias at bytes dim..dim + 8.
            unsafe {
                let p = row.add(dim).cast::<f32>();
                (p.read_unaligned(), p.add(1).read_unaligned())
            }
        }
    }

    impl Format for Q4 {
        const QUANT: bool = true;
        #[inline(always)]
        fn byte_offset(col: usize) -> usize {
            col / 2
        }
        #[inline(always)]
        unsafe fn load<S: Simd>(p: *const u8, t: S::Tail) -> S::V {
            // SAFETY: forwarded caller contract.
            unsafe { S::load_u4(p, t) }
        }
        #[inline(always)]
        unsafe fn full<S: Simd>(p: *const u8) -> S::V {
            // SAFETY: forwarded caller contract.
            unsafe { S::full_u4(p) }
        }
        #[inline(always)]
        fn scale_at(dim: usize) -> Option<usize> {
            Some(dim.div_ceil(2))
        }
        #[inline(always)]
        unsafe fn scale_bias<S: Simd>(row: *const u8, dim: usize) -> (f32, f32) {
            // SAFETY: an int4 row has its f16 scale and bias at bytes ceil(dim/2)..+4.
            unsafe {
                let p = row.add(dim.div_ceil(2)).cast::<u16>();
                (S::f16_to_f32(p.read_unaligned()), S::f16_to_f32(p.add(1).read_unaligned()))
            }
        }
    }

    /// Which lines of a row's byte range `[from, to)` to prefetch, fixed for a whole call so
    /// that the prefetch loop's trip count never varies (a count that depends on each random
    /// row's alignment mispredicts on rows that are not a multiple of 64 bytes).
    #[derive(Clone, Copy)]
    pub(crate) struct Prefetch {
        from: usize,
        /// Lines at `from + 64 k` for `k < lines`.
        lines: usize,
        /// The range's last byte (counted from `from`), when rows may straddle one line more
        /// than `lines` covers.
        last: Option<usize>,
        /// `Some(offset)` when two prefetches cover the range: the first line and the one at
        /// `offset` (the same line again for a one-line range). Most rows of recommendation
        /// tables (up to 128 aligned bytes) take this path, two plain prefetches with no jump.
        pair: Option<usize>,
    }

    impl Prefetch {
        /// On 4 KiB pages (`huge_pages` false) only the first line of a row is prefetched:
        /// there nearly every random row misses the TLB and each prefetched line that misses
        /// starts a page walk of its own. Measured: on a Xeon, prefetching every line of 256-
        /// and 512-byte rows of DRAM-resident tables made lookups 20-35% slower than one or
        /// two lines (the hardware fetches the rest once the first loads arrive), and on an
        /// EPYC, 128-byte rows of an L2-resident table pooled 22% faster with one line than
        /// with two. On 2 MiB pages every line is prefetched, which measured best there
        /// (one line was 20% slower on a DRAM-resident table).
        ///
        /// `also`: a byte of the row every lookup reads whatever the columns (a quantized
        /// row's scale), prefetched too when the cap leaves its line out: 8-bit rows of 64
        /// values (72 bytes) have their scale and bias on their second line, which the
        /// one-line cap would leave to a demand miss on every lookup.
        pub(crate) fn new(base: *const u8, row_bytes: usize, from: usize, to: usize, huge_pages: bool, also: Option<usize>) -> Prefetch {
            const SMALL_PAGE_LINES: usize = 1;
            let len = to - from;
            let aligned = (base as usize + from).is_multiple_of(64) && row_bytes.is_multiple_of(64);
            let lines = len.div_ceil(64);
            let cap = super::prefetch_lines().min(if huge_pages { usize::MAX } else { SMALL_PAGE_LINES });
            if cap < lines {
                if let Some(at) = also.filter(|&at| cap == 1 && at > from) {
                    return Prefetch { from, lines: 1, last: None, pair: Some(at - from) };
                }
                let pair = (cap <= 2).then(|| 64 * cap.saturating_sub(1));
                return Prefetch { from, lines: cap, last: None, pair: pair.filter(|_| cap > 0) };
            }
            let last = (!aligned && len > 0).then(|| len - 1);
            // Unaligned rows: where in its first line a row's range can start (row starts step
            // by gcd(row_bytes, 64) from a 64-byte aligned base) says whether the first and last
            // bytes' lines are all of it: for 8-bit rows of 64 values (72 bytes, starting 8
            // bytes apart) they are, two prefetches rather than three.
            let step = 1usize << row_bytes.trailing_zeros().min(6);
            let latest = (base as usize + from) % step + (64 - step);
            let pair = match last {
                None if lines <= 2 => Some(64 * lines.saturating_sub(1)),
                Some(l) if lines <= 1 || latest + len <= 128 => Some(l),
                _ => None,
            };
            Prefetch { from, lines, last, pair }
        }

        /// Bring row `r` towards L1. `r` may be any value, even an index that the kernel will
        /// reject: a prefetch is a hint that never faults, and the address is computed with
        /// wrapping arithmetic and never dereferenced.
        #[inline(always)]
        pub(crate) fn row(&self, base: *const u8, row_bytes: usize, r: usize) {
            let row = base.wrapping_add(r.wrapping_mul(row_bytes)).wrapping_add(self.from);
            if let Some(second) = self.pair {
                // SAFETY: prefetch is a hint; it does not fault on any address.
                unsafe {
                    _mm_prefetch::<_MM_HINT_T0>(row.cast());
                    _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(second).cast());
                }
                return;
            }
            let line = |k: usize| {
                // SAFETY: prefetch is a hint; it does not fault on any address.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(64 * k).cast()) };
            };
            // Straight-line code for the common counts (the count is the same for every row
            // of a call, so this branch is always predicted).
            match self.lines {
                1 => line(0),
                2 => {
                    line(0);
                    line(1);
                }
                3 => {
                    line(0);
                    line(1);
                    line(2);
                }
                4 => {
                    line(0);
                    line(1);
                    line(2);
                    line(3);
                }
                n => (0..n).for_each(line),
            }
            if let Some(last) = self.last {
                // SAFETY: as above.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(last).cast()) };
            }
        }
    }

    /// Vector `v` of a block: a full load when the block fills all its vectors (`FULL`), else
    /// a load of the tail's lanes.
    #[inline(always)]
    unsafe fn load<S: Simd, F: Format, const FULL: bool>(block: *const u8, v: usize, t: S::Tail) -> S::V {
        let p = block.wrapping_add(F::byte_offset(v * S::LANES));
        // SAFETY: the caller's block holds `NV * LANES` values when `FULL`, else `t` lanes here.
        unsafe {
            if FULL {
                F::full::<S>(p)
            } else {
                F::load::<S>(p, t)
            }
        }
    }

    /// Pool the column block `[col0, col0 + ncols)` of each bag in `bags`, keeping the block's
    /// NV accumulator vectors in registers.
    // The `for v in 0..NV` loops index the accumulators and tails together; with NV a
    // constant they unroll and the arrays live in registers.
    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    unsafe fn pool_block<S: Simd, F: Format, I: Index, const NV: usize, const MAX: bool, const FULL: bool>(
        job: &Job<'_, I>,
        bags: Range<usize>,
        col0: usize,
        ncols: usize,
        out: Out,
    ) -> Result<()> {
        // SAFETY (whole body): `job` is validated (see `Job`): offsets stay inside `indices`
        // and `weights`, every row read is checked against `num_rows` first, and the tails
        // cover only the block's columns, so loads stay inside the row; writes go to the
        // output cells of `bags`, which the caller gives us alone.
        unsafe {
            // SAFETY: tail(0..=LANES) is valid for every level.
            // Vectors past the block's columns get an empty tail: they read and write nothing,
            // and their addresses are formed with `wrapping_add` so none is out of bounds.
            let mut tails = [S::tail(0); NV];
            for (v, t) in tails.iter_mut().enumerate() {
                *t = S::tail(ncols.saturating_sub(v * S::LANES).min(S::LANES));
            }
            let dim = job.dim;
            let rb = job.row_bytes();
            let base = job.data.as_ptr();
            let first_byte = F::byte_offset(col0);
            let to = (F::byte_offset(col0 + ncols) + 8).min(rb);
            let prefetch = Prefetch::new(base, rb, first_byte, to, job.huge_pages, F::scale_at(dim));
            let nrows = job.num_rows as u64;
            let pad = job.padding.unwrap_or(u64::MAX);
            let idx = job.indices.as_ptr();
            // Lookups before this position have a lookup `ahead_by` further on to prefetch.
            let ahead_by = super::prefetch_distance();
            let prefetch_until = job.indices.len().saturating_sub(ahead_by);
            let idx_ahead = idx.wrapping_add(ahead_by);
            // The loop prefetches `ahead_by` lookups ahead, so the range's first `ahead_by`
            // rows are asked for here, before it starts: a long distance then costs a small
            // call nothing.
            if bags.start < bags.end {
                let first = *job.offsets.get_unchecked(bags.start);
                let last = (*job.offsets.get_unchecked(bags.end)).min(first + ahead_by);
                for j in first..last {
                    prefetch.row(base, rb, (*idx.add(j)).to_u64() as usize);
                }
            }
            let init = if MAX { S::splat(f32::NEG_INFINITY) } else { S::zero() };
            for b in bags {
                let (start, e) = (*job.offsets.get_unchecked(b), *job.offsets.get_unchecked(b + 1));
                let mut acc = [init; NV];
                let mut bias_sum = 0f32;
                // Padding is rare: count its hits, not the rows pooled.
                let mut pad_hits = 0usize;
                let mut s = start;
                if !MAX && job.weights.is_none() {
                    // Unweighted sums: two lookups at a time into two sets of accumulators, so
                    // each add waits on the one two lookups back rather than on the last (the
                    // add's latency, not the loads, bounds a bag of cached rows otherwise).
                    // The sets are summed at the bag's end.
                    let mut odd = [S::zero(); NV];
                    let mut odd_bias = 0f32;
                    // The pairing depends on the bag alone (never on where the call ends), so
                    // a bag pools to the same bits in any batch.
                    while s + 2 <= e {
                        if s + 2 <= prefetch_until {
                            prefetch.row(base, rb, (*idx_ahead.add(s)).to_u64() as usize);
                            prefetch.row(base, rb, (*idx_ahead.add(s + 1)).to_u64() as usize);
                        } else if s < prefetch_until {
                            prefetch.row(base, rb, (*idx_ahead.add(s)).to_u64() as usize);
                        }
                        let (r0, r1) = ((*idx.add(s)).to_u64(), (*idx.add(s + 1)).to_u64());
                        if r0 >= nrows || r1 >= nrows || r0 == pad || r1 == pad {
                            break; // the loop below handles (and reports) these one at a time
                        }
                        let (row0, row1) = (base.add(r0 as usize * rb), base.add(r1 as usize * rb));
                        let (block0, block1) = (row0.add(first_byte), row1.add(first_byte));
                        if F::QUANT {
                            let (sc0, bi0) = F::scale_bias::<S>(row0, dim);
                            let (sc1, bi1) = F::scale_bias::<S>(row1, dim);
                            bias_sum += bi0;
                            odd_bias += bi1;
                            let (w0, w1) = (S::splat(sc0), S::splat(sc1));
                            for v in 0..NV {
                                acc[v] = S::fmadd(load::<S, F, FULL>(block0, v, tails[v]), w0, acc[v]);
                                odd[v] = S::fmadd(load::<S, F, FULL>(block1, v, tails[v]), w1, odd[v]);
                            }
                        } else {
                            for v in 0..NV {
                                acc[v] = S::add(acc[v], load::<S, F, FULL>(block0, v, tails[v]));
                                odd[v] = S::add(odd[v], load::<S, F, FULL>(block1, v, tails[v]));
                            }
                        }
                        s += 2;
                    }
                    for v in 0..NV {
                        acc[v] = S::add(acc[v], odd[v]);
                    }
                    bias_sum += odd_bias;
                }
                for j in s..e {
                    if j < prefetch_until {
                        prefetch.row(base, rb, (*idx_ahead.add(j)).to_u64() as usize);
                    }
                    let r = (*idx.add(j)).to_u64();
                    if r >= nrows {
                        return Err(job.index_error(j, b));
                    }
                    if r == pad {
                        pad_hits += 1;
                        continue;
                    }
                    let row = base.add(r as usize * rb);
                    let block = row.add(first_byte);
                    if MAX {
                        let (sc, bi) = F::scale_bias::<S>(row, dim);
                        let (sv, bv) = (S::splat(sc), S::splat(bi));
                        // torch's rule, as in `pool_scalar`: the bag's first row, then
                        // `max(x, acc)`, which keeps `acc` when either is NaN.
                        let first = j == start + pad_hits;
                        for v in 0..NV {
                            let x = load::<S, F, FULL>(block, v, tails[v]);
                            let x = if F::QUANT { S::fmadd(x, sv, bv) } else { x };
                            acc[v] = if first { x } else { S::max(x, acc[v]) };
                        }
                    } else {
                        let mut w = match job.weights {
                            Some(ws) => *ws.get_unchecked(j),
                            None => 1.0,
                        };
                        if F::QUANT {
                            let (sc, bi) = F::scale_bias::<S>(row, dim);
                            bias_sum += w * bi;
                            w *= sc;
                        }
                        let wv = S::splat(w);
                        for v in 0..NV {
                            let x = load::<S, F, FULL>(block, v, tails[v]);
                            acc[v] = S::fmadd(x, wv, acc[v]);
                        }
                    }
                }
                let o = out.ptr.add(b * out.stride + col0);
                let count = e - start - pad_hits;
                if count == 0 {
                    for v in 0..NV {
                        S::store(o.wrapping_add(v * S::LANES), S::zero(), tails[v]);
                    }
                    continue;
                }
                if !MAX {
                    if F::QUANT {
                        let bv = S::splat(bias_sum);
                        for a in &mut acc {
                            *a = S::add(*a, bv);
                        }
                    }
                    if job.mode == Mode::Mean {
                        let m = S::splat(1.0 / count as f32);
                        for a in &mut acc {
                            *a = S::mul(*a, m);
                        }
                    }
                }
                for v in 0..NV {
                    S::store(o.wrapping_add(v * S::LANES), acc[v], tails[v]);
                }
            }
            Ok(())
        }
    }

    /// Walk the row in blocks of at most `MAX_NV` vectors, each with the smallest kernel that
    /// holds it.
    #[inline(always)]
    unsafe fn pool_blocks<S: Simd, F: Format, I: Index>(
        job: &Job<'_, I>,
        bags: Range<usize>,
        out: Out,
    ) -> Result<()> {
        let max_cols = S::MAX_NV * S::LANES;
        let is_max = job.mode == Mode::Max;
        let mut col0 = 0;
        while col0 < job.dim {
            let ncols = (job.dim - col0).min(max_cols);
            let nv = ncols.div_ceil(S::LANES);
            let b = bags.clone();
            macro_rules! go {
                ($nv:literal) => {
                    // SAFETY: forwarded caller contract.
                    unsafe {
                        match (is_max, ncols == $nv * S::LANES) {
                            (true, true) => pool_block::<S, F, I, $nv, true, true>(job, b, col0, ncols, out),
                            (true, false) => pool_block::<S, F, I, $nv, true, false>(job, b, col0, ncols, out),
                            (false, true) => pool_block::<S, F, I, $nv, false, true>(job, b, col0, ncols, out),
                            (false, false) => pool_block::<S, F, I, $nv, false, false>(job, b, col0, ncols, out),
                        }
                    }
                };
            }
            match nv {
                1 => go!(1),
                2 => go!(2),
                3 | 4 => go!(4),
                5..=8 => go!(8),
                _ => go!(16),
            }?;
            col0 += ncols;
        }
        Ok(())
    }

    #[inline(always)]
    unsafe fn by_format<S: Simd, I: Index>(job: &Job<'_, I>, bags: Range<usize>, out: Out) -> Result<()> {
        // SAFETY: forwarded caller contract.
        unsafe {
            match job.dtype {
                DType::Fp32 => pool_blocks::<S, F32, I>(job, bags, out),
                DType::Fp16 => pool_blocks::<S, F16, I>(job, bags, out),
                DType::Bf16 => pool_blocks::<S, Bf16, I>(job, bags, out),
                DType::Int8 => pool_blocks::<S, Q8, I>(job, bags, out),
                DType::Int4 => pool_blocks::<S, Q4, I>(job, bags, out),
            }
        }
    }

    /// # Safety
    /// The CPU must support AVX-512 F/BW/VL, AVX2, FMA and F16C; output as for `pool_range`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) unsafe fn pool_avx512<I: Index>(job: &Job<'_, I>, bags: Range<usize>, out: Out) -> Result<()> {
        // SAFETY: forwarded caller contract.
        unsafe { by_format::<Avx512, I>(job, bags, out) }
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; output as for `pool_range`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn pool_avx2<I: Index>(job: &Job<'_, I>, bags: Range<usize>, out: Out) -> Result<()> {
        // SAFETY: forwarded caller contract.
        unsafe { by_format::<Avx2, I>(job, bags, out) }
    }

    #[cfg(test)]
    mod tests {
        use super::Prefetch;

        /// The lines `Prefetch::row` asks for, as row-relative byte addresses of `base`.
        fn prefetched_lines(p: &Prefetch, base: usize, row_bytes: usize, r: usize) -> Vec<usize> {
            let row = base + r * row_bytes + p.from;
            let mut at = Vec::new();
            if let Some(second) = p.pair {
                at.extend([row, row + second]);
            } else {
                at.extend((0..p.lines).map(|k| row + 64 * k));
                at.extend(p.last.map(|l| row + l));
            }
            at.into_iter().map(|a| a / 64).collect()
        }

        #[test]
        fn huge_page_prefetches_cover_every_line_of_every_row() {
            // Every line a row's range touches is prefetched, for row sizes that are and are not
            // multiples of 64 (8-bit rows of 64 values are 72 bytes) and any column range.
            for base in [0usize, 64 * 1000] {
                for row_bytes in [8usize, 36, 64, 72, 100, 136, 256, 264] {
                    for (from, to) in [(0, row_bytes), (0, row_bytes.min(40)), (row_bytes / 2, row_bytes)] {
                        if to <= from {
                            continue;
                        }
                        let p = Prefetch::new(base as *const u8, row_bytes, from, to, true, None);
                        for r in 0..130 {
                            let want: Vec<usize> =
                                ((base + r * row_bytes + from) / 64..=(base + r * row_bytes + to - 1) / 64).collect();
                            let got = prefetched_lines(&p, base, row_bytes, r);
                            assert!(
                                want.iter().all(|l| got.contains(l)),
                                "row_bytes {row_bytes} [{from}, {to}) row {r}: want {want:?}, got {got:?}"
                            );
                        }
                    }
                }
            }
            // 72-byte rows take two prefetches, not two lines and the last byte again.
            let p = Prefetch::new(std::ptr::null(), 72, 0, 72, true, None);
            assert_eq!(p.pair, Some(71));
        }

        #[test]
        fn small_pages_prefetch_the_scale_line_of_quantized_rows() {
            let p = Prefetch::new(std::ptr::null(), 72, 0, 72, false, Some(64));
            assert_eq!((p.lines, p.pair), (1, Some(64)));
            let p = Prefetch::new(std::ptr::null(), 72, 0, 72, false, None);
            assert_eq!((p.lines, p.pair), (1, Some(0)));
        }
    }
}
