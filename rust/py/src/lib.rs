//! `recengine._core`: the thin PyO3 layer over `recengine-core`, one file per concept of the
//! core (tables, lookups and collections, keyed lookups, shards, the cache, the simulators,
//! the backward, the runtime).
//!
//! Each binding takes its numpy arguments without copying (`arrays`), checks what needs the
//! interpreter, then releases the GIL for the work and maps errors in one place (`errors`).

mod arrays;
mod backward;
mod cache;
mod collection;
mod errors;
mod keyed;
mod lookup;
mod oblivious;
mod oram;
mod prelude;
mod runtime;
mod shard;
mod sim;
mod table;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    table::register(m)?;
    collection::register(m)?;
    keyed::register(m)?;
    shard::register(m)?;
    cache::register(m)?;
    sim::register(m)?;
    lookup::register(m)?;
    backward::register(m)?;
    runtime::register(m)?;
    oram::register(m)?;
    Ok(())
}
