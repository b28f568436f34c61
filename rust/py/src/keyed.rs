//! Keyed jagged lookups (TorchRec's layout) straight from torch weights: `KeyedTables`.

use crate::prelude::*;

/// The per-value weights of a keyed call, checked to hold one float per value.
pub(crate) fn keyed_weights<'py>(weights: Option<&Bound<'py, PyAny>>, n: usize) -> PyResult<Option<numpy::PyReadonlyArrayDyn<'py, f32>>> {
    let weights = weights.map(|w| floats(w, "weights")).transpose()?;
    if let Some(len) = weights.as_ref().map(|w| w.as_slice().expect("checked contiguous").len()) {
        if len != n {
            return Err(value_error(format!("weights has {len} entries for {n} values")));
        }
    }
    Ok(weights)
}

/// Where each key's ids start in the flat `values` (`num_keys + 1` entries) and each slot's
/// bag boundaries, from TorchRec-style `lengths` `[num_keys * batch]` (checked by the core).
#[allow(clippy::type_complexity)]
pub(crate) fn keyed_layout(slots: &[usize], n: usize, lengths: &Ints<'_>, batch: usize) -> PyResult<KeyedLayout> {
    match lengths.slice() {
        IntSlice::I32(l) => KeyedLayout::new(slots, n, l, batch),
        IntSlice::I64(l) => KeyedLayout::new(slots, n, l, batch),
    }
    .py_err()
}

/// Pool keyed jagged ids (TorchRec's layout) for one batch in one call.
///
/// `values` holds the ids of `num_keys` keys, key-major, and `lengths[k * batch + b]` is how
/// many ids key `k` has for sample `b`. Output block `j` pools key `slots[j]` with table
/// `views[tables[j]]` by `modes[tables[j]]`; the output is `[batch, sum of the blocks' dims]`,
/// blocks side by side in order.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pool_keyed_views<'py>(
    py: Python<'py>,
    views: &[TableView<'_>],
    modes: &[Mode],
    tables: &[usize],
    slots: &[usize],
    values: &Bound<'py, PyAny>,
    lengths: &Bound<'py, PyAny>,
    batch: usize,
    weights: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let values = ints_1d(values, "values")?;
    let lengths = ints_1d(lengths, "lengths")?;
    let n = values.slice().len();
    let weights = keyed_weights(weights, n)?;
    let w_all = weights.as_ref().map(|w| w.as_slice().expect("checked contiguous"));
    let KeyedLayout { starts, offsets: offs } = keyed_layout(slots, n, &lengths, batch)?;
    let block_views: Vec<TableView<'_>> = tables.iter().map(|&i| views[i]).collect();
    let bmodes: Vec<Mode> = tables.iter().map(|&i| modes[i]).collect();
    let ws: Vec<Option<&[f32]>> = slots.iter().map(|&k| w_all.map(|w| &w[starts[k]..starts[k + 1]])).collect();
    let pads = vec![None; slots.len()];
    match values.slice() {
        IntSlice::I32(v) => {
            let idx: Vec<&[i32]> = slots.iter().map(|&k| &v[starts[k]..starts[k + 1]]).collect();
            pool_into_new(py, &block_views, &idx, offs, &ws, &bmodes, &pads)
        }
        IntSlice::I64(v) => {
            let idx: Vec<&[i64]> = slots.iter().map(|&k| &v[starts[k]..starts[k + 1]]).collect();
            pool_into_new(py, &block_views, &idx, offs, &ws, &bmodes, &pads)
        }
    }
}

/// One torch weight held by a [`KeyedTables`]: the Parameter (or tensor) the caller passes
/// each call, a detached alias of it that keeps its storage alive, and where that storage was.
pub(crate) struct HeldWeight {
    weight: Py<PyAny>,
    /// Never read: holding it keeps the storage `ptr` points into allocated.
    _alias: Py<PyAny>,
    ptr: usize,
    rows: usize,
    dim: usize,
    /// The weight's strides and torch dtype object when held: `weight.data` may be replaced
    /// by a view of the same memory with other strides (a transpose) or another dtype.
    strides: (isize, isize),
    torch_dtype: Py<PyAny>,
    dtype: DType,
    huge_pages: bool,
}

impl HeldWeight {
    /// Whether `w` is still the held weight with the same storage address, shape, strides
    /// and dtype.
    fn current(&self, w: &Bound<'_, PyAny>) -> PyResult<bool> {
        let py = w.py();
        if !w.is(self.weight.bind(py)) || w.call_method0(pyo3::intern!(py, "data_ptr"))?.extract::<usize>()? != self.ptr {
            return Ok(false);
        }
        let shape: (usize, usize) = w.getattr(pyo3::intern!(py, "shape"))?.extract()?;
        if shape != (self.rows, self.dim) || !w.getattr(pyo3::intern!(py, "dtype"))?.is(self.torch_dtype.bind(py)) {
            return Ok(false);
        }
        let strides: (isize, isize) = w.call_method0(pyo3::intern!(py, "stride"))?.extract()?;
        Ok(strides == self.strides)
    }
}

/// Torch weights pooled by keyed jagged ids ([`pool_keyed_views`]'s layout) straight from their
/// storage: everything about the tables is taken once, when this is built, so a call costs
/// the same whatever the number of tables, bar one address check per weight.
#[pyclass(name = "KeyedTables", module = "recengine._core", frozen)]
pub(crate) struct KeyedTables {
    held: Vec<HeldWeight>,
    modes: Vec<Mode>,
}

#[pymethods]
impl KeyedTables {
    /// `weights`: C-contiguous 2-D CPU tensors; `aliases`: a detached alias of each (what
    /// `weight.detach()` returns); `dtypes`: their storage dtypes ("fp32", "fp16", "bf16");
    /// `modes`: how each table pools; `huge_pages`: which weights live on 2 MiB pages (the
    /// kernels then prefetch whole rows).
    #[new]
    #[pyo3(signature = (weights, aliases, dtypes, modes, huge_pages=None))]
    fn new(
        weights: Vec<Bound<'_, PyAny>>,
        aliases: Vec<Bound<'_, PyAny>>,
        dtypes: Vec<Opt<DType>>,
        modes: Vec<Opt<Mode>>,
        huge_pages: Option<Vec<bool>>,
    ) -> PyResult<Self> {
        let t = weights.len();
        per_table(t, &[
            ("aliases", Some(aliases.len())),
            ("dtypes", Some(dtypes.len())),
            ("modes", Some(modes.len())),
            ("huge_pages", huge_pages.as_ref().map(Vec::len)),
        ])?;
        let huge = huge_pages.unwrap_or_else(|| vec![false; t]);
        let modes = modes.iter().map(|m| m.0).collect();
        let held = weights
            .into_iter()
            .zip(aliases)
            .zip(&dtypes)
            .zip(huge)
            .map(|(((weight, alias), dt), huge_pages)| {
                let dtype = dt.0;
                if !matches!(dtype, DType::Fp32 | DType::Fp16 | DType::Bf16) {
                    return Err(type_error(format!("a torch weight cannot hold {} rows", dtype.name())));
                }
                let element = if dtype == DType::Fp32 { 4 } else { 2 };
                let contiguous: bool = alias.call_method0("is_contiguous")?.extract()?;
                let (rows, dim): (usize, usize) = alias.getattr("shape")?.extract()?;
                let size: usize = alias.call_method0("element_size")?.extract()?;
                let ptr: usize = alias.call_method0("data_ptr")?.extract()?;
                let same: usize = weight.call_method0("data_ptr")?.extract()?;
                if !contiguous || size != element || ptr != same || (ptr == 0 && rows > 0) {
                    return Err(value_error(format!(
                        "each weight must be a C-contiguous 2-D {} CPU tensor with its alias", dtype.name()
                    )));
                }
                check_dim(dim)?;
                let strides: (isize, isize) = weight.call_method0("stride")?.extract()?;
                let torch_dtype = weight.getattr("dtype")?.unbind();
                Ok(HeldWeight { weight: weight.unbind(), _alias: alias.unbind(), ptr, rows, dim, strides, torch_dtype, dtype, huge_pages })
            })
            .collect::<PyResult<Vec<_>>>()?;
        Ok(KeyedTables { held, modes })
    }

    /// Whether `weights` are still the held tensors, at the same addresses and shapes.
    fn current(&self, weights: Vec<Bound<'_, PyAny>>) -> PyResult<bool> {
        if weights.len() != self.held.len() {
            return Ok(false);
        }
        for (h, w) in self.held.iter().zip(&weights) {
            if !h.current(w)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Pool as [`pool_keyed_views`] does (output block `j`: key `slots[j]` through table
    /// `tables[j]`), or return None, touching nothing, when `weights` are not
    /// [`current`](Self::current): the caller then builds a new `KeyedTables`.
    #[pyo3(signature = (weights, tables, slots, values, lengths, batch, per_value_weights=None))]
    #[allow(clippy::too_many_arguments)]
    fn pool<'py>(
        &self,
        py: Python<'py>,
        weights: Vec<Bound<'py, PyAny>>,
        tables: Vec<usize>,
        slots: Vec<usize>,
        values: &Bound<'py, PyAny>,
        lengths: &Bound<'py, PyAny>,
        batch: usize,
        per_value_weights: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyArray2<f32>>>> {
        if !self.current(weights)? {
            return Ok(None);
        }
        let t = self.held.len();
        if tables.is_empty() || tables.len() != slots.len() {
            return Err(value_error("tables and slots need one entry per output block (at least one)"));
        }
        if let Some(&bad) = tables.iter().find(|&&x| x >= t) {
            return Err(value_error(format!("table {bad} is not one of the {t} tables")));
        }
        let views: Vec<TableView<'_>> = self
            .held
            .iter()
            .map(|h| {
                let len = h.rows * h.dtype.row_bytes(h.dim);
                // SAFETY: `ptr` is the start of the alias's C-contiguous `rows x dim` storage
                // (checked when built), which the held alias keeps allocated, and `current`
                // has just checked, with the GIL held, that the weight still has this address
                // and shape, so its storage was neither replaced nor resized. The slice is
                // only read, and only during this call (while `self` holds the alias). Writes
                // from another thread during the call race as they do in torch's own kernels.
                let data = if len == 0 { &[][..] } else { unsafe { std::slice::from_raw_parts(h.ptr as *const u8, len) } };
                TableView { data, num_rows: h.rows, dim: h.dim, dtype: h.dtype, huge_pages: h.huge_pages }
            })
            .collect();
        pool_keyed_views(py, &views, &self.modes, &tables, &slots, values, lengths, batch, per_value_weights).map(Some)
    }

    fn __len__(&self) -> usize {
        self.held.len()
    }
}

/// Add this file's classes and functions to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<KeyedTables>()?;
    Ok(())
}
