//! recengine-core: embedding tables and SparseLengthsSum / EmbeddingBag pooling kernels.
//!
//! A pure Rust crate (no Python): [`Table`] holds rows in one of five storage formats
//! ([`DType`]), [`lookup::run`] pools bags of rows from one or many tables into a float32
//! output on the crate's thread pool ([`parallel`]), with SIMD kernels chosen at run time
//! ([`simd`]). The `recengine-py` crate binds it to Python as `recengine._core`.

#[cfg(target_endian = "big")]
compile_error!("recengine stores rows little-endian and supports little-endian targets only");

pub mod backward;
pub mod cache;
pub mod dram;
pub mod dram_fast;
pub mod dtype;
pub mod error;
pub mod kernel;
pub mod keyed;
pub mod lookup;
pub mod mem;
pub mod named;
pub mod nmp;
pub mod oblivious;
pub mod oram;
pub mod openmp;
pub mod parallel;
pub mod probe;
pub mod quant;
pub mod settings;
pub mod shard;
pub mod simd;
pub mod stdsort;
mod storage;
pub mod table;

pub use dtype::DType;
pub use error::{Error, IndexError, Result};
pub use kernel::{Index, Mode};
pub use named::Named;
pub use lookup::{bag_offsets, make_job, run, Bags, TableView};
pub use table::Table;

/// Pool one table: `out` is `[B, dim]` row-major for the `B` bags of `bags`.
pub fn lookup<I: Index, O: Index>(
    table: TableView<'_>,
    indices: &[I],
    bags: Bags<'_, O>,
    weights: Option<&[f32]>,
    mode: Mode,
    padding_idx: Option<i64>,
    out: &mut [f32],
) -> Result<()> {
    let offsets = bag_offsets(bags, indices.len())?;
    let job = make_job(table, indices, offsets, weights, mode, padding_idx, None)?;
    if out.len() != job.num_bags() * table.dim {
        return Err(Error::value("output of the wrong size"));
    }
    run(&[job], &[0], out, table.dim)
}

/// Reinterpret float32 values as their bytes (for tables that view a caller's array).
pub fn f32_bytes(values: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding or invalid bit patterns as bytes, u8 has alignment 1, and the
    // length covers exactly the same memory for the same lifetime.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values)) }
}

/// Reinterpret u16 values (f16 or bf16 bits) as their bytes.
pub fn u16_bytes(values: &[u16]) -> &[u8] {
    // SAFETY: as for `f32_bytes`.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values)) }
}
