//! The roofline probe: how fast this machine gathers random rows, with no pooling at all.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::error::Result;
use crate::kernel::Index;
use crate::lookup::{TableView, SERIAL_WORK_BYTES};
use crate::parallel;

/// Rows copied into a small ring buffer that stays in L1.
const RING_ROWS: usize = 16;

/// Gather the rows named by `indices` (clamped into the table) into a small L1-resident ring
/// with `memcpy`, prefetching rows as far ahead as the kernels do. This is the least work
/// that reads every byte of every row; returns a checksum so the copies cannot be elided.
fn gather<I: Index>(t: &TableView<'_>, indices: &[I], ring: &mut [u8]) -> u64 {
    let rb = t.dtype.row_bytes(t.dim);
    let data = t.data;
    let last = t.num_rows.saturating_sub(1);
    #[cfg(target_arch = "x86_64")]
    let pf = crate::kernel::Prefetch::new(data.as_ptr(), rb, 0, rb, t.huge_pages, None);
    #[cfg(target_arch = "x86_64")]
    let distance = crate::kernel::prefetch_distance();
    for (j, i) in indices.iter().enumerate() {
        #[cfg(target_arch = "x86_64")]
        if let Some(ahead) = indices.get(j + distance) {
            pf.row(data.as_ptr(), rb, ahead.to_u64() as usize);
        }
        let start = (i.to_u64() as usize).min(last) * rb;
        let slot = (j % RING_ROWS) * rb;
        ring[slot..slot + rb].copy_from_slice(&data[start..start + rb]);
    }
    ring.iter().step_by(61).fold(0u64, |a, &b| a.wrapping_mul(31).wrapping_add(u64::from(b)))
}

/// Best wall time (seconds) over `repeats` passes of a gather of `indices`: serial below the
/// lookups' work threshold, else equal chunks of indices over all the pool's threads.
pub fn gather_probe<I: Index>(t: &TableView<'_>, indices: &[I], repeats: usize) -> Result<f64> {
    if t.num_rows == 0 || indices.is_empty() {
        return Ok(0.0);
    }
    let threads = parallel::num_threads();
    let rb = t.dtype.row_bytes(t.dim);
    let serial = threads <= 1 || indices.len() * rb <= SERIAL_WORK_BYTES;
    let chunk = indices.len().div_ceil(threads * 4).max(1);
    let mut best = f64::INFINITY;
    let mut sink = 0u64;
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        sink ^= if serial {
            gather(t, indices, &mut vec![0u8; RING_ROWS * rb])
        } else {
            let chunks: Vec<&[I]> = indices.chunks(chunk).collect();
            let sums: Vec<AtomicU64> = chunks.iter().map(|_| AtomicU64::new(0)).collect();
            parallel::for_each_index(chunks.len(), threads, &|k| {
                sums[k].store(gather(t, chunks[k], &mut vec![0u8; RING_ROWS * rb]), Ordering::Relaxed);
                Ok(())
            })?;
            sums.iter().fold(0u64, |a, s| a.wrapping_add(s.load(Ordering::Relaxed)))
        };
        best = best.min(start.elapsed().as_secs_f64());
    }
    std::hint::black_box(sink);
    Ok(best)
}
