//! The runtime: threads, thread pool, SIMD level, prefetch distance, build info, the
//! gather probe.

use crate::prelude::*;

#[pyfunction]
pub(crate) fn set_num_threads(n: usize) -> PyResult<()> {
    recengine_core::parallel::set_num_threads(n).py_err()
}

#[pyfunction]
pub(crate) fn get_num_threads() -> usize {
    recengine_core::parallel::num_threads()
}

#[pyfunction]
pub(crate) fn set_thread_pool(mode: Opt<openmp::PoolMode>) -> PyResult<()> {
    openmp::set_mode(mode.0).py_err()
}

#[pyfunction]
pub(crate) fn get_thread_pool() -> (&'static str, &'static str, Option<String>) {
    let library = openmp::team().map(|t| t.library.clone());
    (openmp::mode().name(), recengine_core::parallel::pool_in_use(), library)
}

/// The kernels' prefetch distance in lookups, after setting it when `distance` is given
/// (negative: the default again). A tuning aid; `RECENGINE_PREFETCH_DISTANCE` sets it at start.
#[pyfunction]
#[pyo3(signature = (distance=None))]
pub(crate) fn prefetch_distance(distance: Option<i64>) -> usize {
    if let Some(d) = distance {
        recengine_core::kernel::set_prefetch_distance(usize::try_from(d).ok());
    }
    recengine_core::kernel::prefetch_distance()
}

#[pyfunction]
pub(crate) fn simd_level() -> &'static str {
    simd::level().name()
}

#[pyfunction]
pub(crate) fn available_simd_levels() -> Vec<&'static str> {
    simd::available_levels().into_iter().map(simd::Level::name).collect()
}

#[pyfunction]
#[pyo3(signature = (level=None))]
pub(crate) fn set_simd_level(level: Option<Opt<simd::Level>>) -> PyResult<()> {
    simd::set_level(level.map(|l| l.0)).map_err(value_error)
}

#[pyfunction]
pub(crate) fn build_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("version", env!("CARGO_PKG_VERSION"))?;
    d.set_item("profile", if cfg!(debug_assertions) { "debug" } else { "release" })?;
    d.set_item("simd", simd::level().name())?;
    d.set_item("simd_available", PyList::new(py, available_simd_levels())?)?;
    d.set_item("threads", recengine_core::parallel::num_threads())?;
    d.set_item("pool", recengine_core::parallel::pool_in_use())?;
    d.set_item("pool_mode", openmp::mode().name())?;
    d.set_item("pool_library", openmp::team().map(|t| t.library.clone()))?;
    d.set_item("target", std::env::consts::ARCH)?;
    d.set_item("serial_work_bytes", recengine_core::lookup::SERIAL_WORK_BYTES)?;
    d.set_item("prefetch_distance", recengine_core::kernel::prefetch_distance())?;
    Ok(d)
}

/// Best seconds over `repeats` passes of a plain gather of the rows `indices` names.
#[pyfunction]
#[pyo3(signature = (table, indices, repeats=5))]
pub(crate) fn gather_probe(py: Python<'_>, table: &Bound<'_, PyTable>, indices: &Bound<'_, PyAny>, repeats: usize) -> PyResult<f64> {
    let idx = ints(indices, "indices")?;
    let t = table.get().inner.clone();
    let s = idx.slice();
    detach(py, || match s {
        IntSlice::I32(x) => probe::gather_probe(&t.view()?, x, repeats),
        IntSlice::I64(x) => probe::gather_probe(&t.view()?, x, repeats),
    })
}

/// Add this file's classes and functions to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(set_thread_pool, m)?)?;
    m.add_function(wrap_pyfunction!(prefetch_distance, m)?)?;
    m.add_function(wrap_pyfunction!(get_thread_pool, m)?)?;
    m.add_function(wrap_pyfunction!(simd_level, m)?)?;
    m.add_function(wrap_pyfunction!(available_simd_levels, m)?)?;
    m.add_function(wrap_pyfunction!(set_simd_level, m)?)?;
    m.add_function(wrap_pyfunction!(build_info, m)?)?;
    m.add_function(wrap_pyfunction!(gather_probe, m)?)?;
    Ok(())
}
