//! The roofline probe: how fast this machine gathers random rows, with no pooling at all.

use std::time::Instant;

use rayon::prelude::*;

use crate::error::Result;
use crate::kernel::Index;
use crate::lookup::{TableView, SERIAL_WORK_BYTES};
use crate::parallel;

/// Lookups ahead whose rows are prefetched (as the kernels do).
const PREFETCH: usize = 16;

/// Touch every cache line of each row named by `indices` (clamped into the table), reading
/// 8 bytes per line, with prefetch. Returns a checksum so the reads cannot be elided.
fn gather<I: Index>(t: &TableView<'_>, indices: &[I]) -> u64 {
    let rb = t.dtype.row_bytes(t.dim);
    let data = t.data;
    let last = t.num_rows.saturating_sub(1);
    let mut acc = 0u64;
    for (j, i) in indices.iter().enumerate() {
        if let Some(ahead) = indices.get(j + PREFETCH) {
            let r = (ahead.to_u64() as usize).min(last);
            prefetch(data, r * rb, rb);
        }
        let start = (i.to_u64() as usize).min(last) * rb;
        let row = &data[start..start + rb];
        let mut off = 0;
        while off < rb {
            let k = off.min(rb.saturating_sub(8));
            let mut word = [0u8; 8];
            let n = (rb - k).min(8);
            word[..n].copy_from_slice(&row[k..k + n]);
            acc = acc.wrapping_add(u64::from_le_bytes(word));
            // The next cache line of the row.
            off = ((data.as_ptr() as usize + start + off) | 63) + 1 - (data.as_ptr() as usize + start);
        }
    }
    acc
}

#[inline(always)]
fn prefetch(data: &[u8], start: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = data.as_ptr().wrapping_add(start) as usize;
        let mut line = p & !63;
        while line < p + len {
            // SAFETY: prefetch is a hint; it does not fault on any address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line as *const i8) };
            line += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (data, start, len);
}

/// Best wall time (seconds) over `repeats` passes of a multithreaded gather of `indices`,
/// split as lookups are (serial below the same work threshold), with the pool's threads.
pub fn gather_probe<I: Index>(t: &TableView<'_>, indices: &[I], repeats: usize) -> Result<f64> {
    let threads = parallel::num_threads();
    let rb = t.dtype.row_bytes(t.dim);
    let serial = threads <= 1 || indices.len() * rb <= SERIAL_WORK_BYTES || t.num_rows == 0;
    let chunk = indices.len().div_ceil(threads * 4).max(1);
    let mut best = f64::INFINITY;
    let mut sink = 0u64;
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        sink ^= if serial {
            gather(t, indices)
        } else {
            parallel::install(|| indices.par_chunks(chunk).map(|c| gather(t, c)).reduce(|| 0, u64::wrapping_add))?
        };
        best = best.min(start.elapsed().as_secs_f64());
    }
    std::hint::black_box(sink);
    Ok(best)
}
