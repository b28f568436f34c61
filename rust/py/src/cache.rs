//! The buffer cache: `BlobCache`, `CacheDirectory`, `simulate_cache`.

use crate::prelude::*;

/// A buffer cache of equal-size blobs (see `recengine_core::cache`).
#[pyclass(name = "BlobCache", module = "recengine._core", frozen)]
pub(crate) struct PyBlobCache {
    inner: Arc<BlobCache>,
}

pub(crate) fn cache_stats<'py>(py: Python<'py>, st: CacheStats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("hits", st.hits)?;
    d.set_item("misses", st.misses)?;
    d.set_item("evictions", st.evictions)?;
    d.set_item("bytes_copied", st.bytes_copied)?;
    d.set_item("copy_seconds", st.copy_seconds)?;
    d.set_item("batches", st.batches)?;
    d.set_item("miss_rate", st.miss_rate())?;
    Ok(d)
}

pub(crate) fn id_list(ids: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
    let x = ints(ids, "ids")?;
    let out: Option<Vec<usize>> = match x.slice() {
        IntSlice::I32(v) => v.iter().map(|&i| usize::try_from(i).ok()).collect(),
        IntSlice::I64(v) => v.iter().map(|&i| usize::try_from(i).ok()).collect(),
    };
    out.ok_or_else(|| index_error("ids must not be negative"))
}

#[pymethods]
impl PyBlobCache {
    /// A cache of `slots` blobs over the rows of `array` (2-D, any dtype: each row's bytes is
    /// a blob; copied once into the cache's own memory).
    #[staticmethod]
    #[pyo3(signature = (array, slots, policy=Opt(CachePolicy::InactiveLifo), wait_s=30.0))]
    fn from_array(array: &Bound<'_, PyAny>, slots: usize, policy: Opt<CachePolicy>, wait_s: f64) -> PyResult<PyBlobCache> {
        let a = array
            .cast::<PyArray2<u8>>()
            .map_err(|_| type_error("the store must be a 2-D uint8 array [blobs, blob_bytes]"))?;
        let ro = a.try_readonly()?;
        let blob = a.shape()[1];
        let bytes = ro.as_slice().map_err(|_| value_error("the store array must be C-contiguous"))?;
        let store = Store::from_bytes(bytes).py_err()?;
        Self::build(store, blob, slots, policy, wait_s)
    }

    /// A cache over `num_blobs` blobs of `blob_bytes` at `offset` of the file `path`,
    /// memory-mapped read-only (blobs are paged in from disk when missed).
    #[staticmethod]
    #[pyo3(signature = (path, num_blobs, blob_bytes, slots, policy=Opt(CachePolicy::InactiveLifo), offset=0, wait_s=30.0))]
    fn from_file(path: &str, num_blobs: usize, blob_bytes: usize, slots: usize, policy: Opt<CachePolicy>, offset: usize, wait_s: f64) -> PyResult<PyBlobCache> {
        let len = num_blobs.checked_mul(blob_bytes).ok_or_else(|| value_error("num_blobs x blob_bytes overflows"))?;
        let store = Store::map_file(path, offset, len).py_err()?;
        Self::build(store, blob_bytes, slots, policy, wait_s)
    }

    /// A cache of `slots` rows of `table` (shared, not copied: a memory-mapped table stays
    /// on disk until rows are missed).
    #[staticmethod]
    #[pyo3(signature = (table, slots, policy=Opt(CachePolicy::InactiveLifo), wait_s=30.0))]
    fn from_table(table: &Bound<'_, PyTable>, slots: usize, policy: Opt<CachePolicy>, wait_s: f64) -> PyResult<PyBlobCache> {
        let t = table.get().inner.clone();
        let blob = t.row_bytes();
        Self::build(Store::table(t), blob, slots, policy, wait_s)
    }

    #[getter]
    fn num_slots(&self) -> usize {
        self.inner.num_slots()
    }

    #[getter]
    fn blob_bytes(&self) -> usize {
        self.inner.blob_bytes()
    }

    #[getter]
    fn num_blobs(&self) -> usize {
        self.inner.num_blobs()
    }

    #[getter]
    fn policy(&self) -> &'static str {
        self.inner.policy().name()
    }

    /// Make `ids` resident and pinned; returns each id's slot (int64, in order). Misses are
    /// copied in parallel without the GIL. Waits while other batches pin the slots needed.
    fn fetch<'py>(&self, py: Python<'py>, ids: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let ids = id_list(ids)?;
        let cache = self.inner.clone();
        let slots = detach(py, move || cache.fetch(&ids))?;
        Ok(PyArray1::from_iter(py, slots.into_iter().map(|k| k as i64)))
    }

    /// Unpin a batch's ids.
    fn release(&self, ids: &Bound<'_, PyAny>) -> PyResult<()> {
        self.inner.release(&id_list(ids)?).py_err()
    }

    /// The slots as a read-only uint8 array `[slots, blob_bytes]` over the cache's memory:
    /// read only the slots of ids fetched and not yet released.
    fn arena<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyArray2<u8>>> {
        let cache = slf.get().inner.clone();
        let view = numpy::ndarray::ArrayView2::from_shape((cache.num_slots(), cache.blob_bytes()), cache.arena())
            .map_err(|e| value_error(e.to_string()))?;
        // SAFETY: the arena is owned by the `BlobCache` behind `slf`, which the array keeps
        // alive as its base object, and it is never reallocated; the array is made read-only.
        let arr = unsafe { PyArray2::borrow_from_array(&view, slf.into_any()) };
        arr.call_method1("setflags", (false,))?;
        Ok(arr)
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        cache_stats(py, self.inner.stats())
    }

    /// The id in each slot (None: empty).
    fn contents(&self) -> Vec<Option<usize>> {
        self.inner.contents()
    }

    /// How many batches pin each slot.
    fn pins(&self) -> Vec<u32> {
        self.inner.pins()
    }

    /// The batches to come, for Belady's MIN (the next fetch is `trace[0]`).
    fn set_future(&self, trace: Vec<Vec<usize>>) {
        self.inner.set_future(&trace);
    }
}

impl PyBlobCache {
    fn build(store: Store, blob: usize, slots: usize, policy: Opt<CachePolicy>, wait_s: f64) -> PyResult<PyBlobCache> {
        if !(wait_s.is_finite() && wait_s >= 0.0) {
            return Err(value_error(format!("wait_s must be >= 0, got {wait_s}")));
        }
        let policy = policy.0;
        let inner = BlobCache::new(store, blob, slots, policy, std::time::Duration::from_secs_f64(wait_s)).py_err()?;
        Ok(PyBlobCache { inner: Arc::new(inner) })
    }
}

/// The cache's bookkeeping alone, for callers that move the data themselves (GPU slots).
#[pyclass(name = "CacheDirectory", module = "recengine._core", frozen)]
pub(crate) struct PyCacheDirectory {
    inner: std::sync::Mutex<cache::Directory>,
}

impl PyCacheDirectory {
    fn lock(&self) -> std::sync::MutexGuard<'_, cache::Directory> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[pymethods]
impl PyCacheDirectory {
    #[new]
    #[pyo3(signature = (slots, num_ids, policy=Opt(CachePolicy::InactiveLifo)))]
    fn new(slots: usize, num_ids: usize, policy: Opt<CachePolicy>) -> PyResult<Self> {
        let policy = policy.0;
        Ok(PyCacheDirectory { inner: std::sync::Mutex::new(cache::Directory::new(slots, num_ids, policy).py_err()?) })
    }

    /// Make `ids` resident and pinned: `(slots, fills)`, each id's slot and the `(id, slot)`
    /// misses to copy (then call `loaded`). ValueError when other batches pin the slots
    /// needed.
    #[allow(clippy::type_complexity)]
    fn acquire(&self, ids: &Bound<'_, PyAny>) -> PyResult<(Vec<usize>, Vec<(usize, usize)>)> {
        let ids = id_list(ids)?;
        match self.lock().acquire(&ids).py_err()? {
            Some(g) => Ok((g.slots, g.fills.iter().map(|f| (f.id, f.slot)).collect())),
            None => Err(value_error("other batches pin the slots this batch needs; release them first")),
        }
    }

    /// The misses of an `acquire` are in their slots.
    fn loaded(&self, fills: Vec<(usize, usize)>) {
        let fills: Vec<cache::Fill> = fills.into_iter().map(|(id, slot)| cache::Fill { id, slot }).collect();
        self.lock().loaded(&fills);
    }

    fn release(&self, ids: &Bound<'_, PyAny>) -> PyResult<()> {
        self.lock().release(&id_list(ids)?).py_err()
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        cache_stats(py, self.lock().stats())
    }

    fn contents(&self) -> Vec<Option<usize>> {
        self.lock().contents()
    }

    fn set_future(&self, trace: Vec<Vec<usize>>) {
        self.lock().set_future(&trace);
    }
}

/// Replay `trace` (active ids per batch) through a cache of `slots` slots without data: hits,
/// misses, evictions and the miss rate.
#[pyfunction]
pub(crate) fn simulate_cache<'py>(py: Python<'py>, policy: Opt<CachePolicy>, slots: usize, num_ids: usize, trace: Vec<Vec<usize>>) -> PyResult<Bound<'py, PyDict>> {
    let policy = policy.0;
    let st = detach(py, || cache::simulate(policy, slots, num_ids, &trace))?;
    cache_stats(py, st)
}

/// Add this file's classes and functions to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyBlobCache>()?;
    m.add_class::<PyCacheDirectory>()?;
    m.add_function(wrap_pyfunction!(simulate_cache, m)?)?;
    Ok(())
}
