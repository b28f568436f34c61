//! The backward of pooling: `pool_backward` (one table) and `pool_keyed_backward`.

use crate::prelude::*;

/// The backward of [`KeyedTables::pool`]: `grad` is the output's gradient `[batch, sum of the
/// blocks' dims]`; block `j` (key `slots[j]`, table `tables[j]` of `num_rows[tables[j]]` rows
/// and dim `dims[tables[j]]`) adds its gradient into `outs[tables[j]]` (float32
/// `[num_rows, dim]`, dense) when that is given, else returns its sparse gradient (rows and
/// values per lookup) in the result's entry `j`.
#[pyfunction]
#[pyo3(signature = (grad, tables, slots, num_rows, dims, values, lengths, batch, modes, outs, weights=None, accumulate=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn pool_keyed_backward<'py>(
    py: Python<'py>,
    grad: &Bound<'py, PyAny>,
    tables: Vec<usize>,
    slots: Vec<usize>,
    num_rows: Vec<usize>,
    dims: Vec<usize>,
    values: &Bound<'py, PyAny>,
    lengths: &Bound<'py, PyAny>,
    batch: usize,
    modes: Vec<Opt<Mode>>,
    outs: Vec<Option<Bound<'py, PyAny>>>,
    weights: Option<&Bound<'py, PyAny>>,
    accumulate: Option<Vec<Opt<DType>>>,
) -> PyResult<Vec<Option<SparseGrad<'py>>>> {
    let t = num_rows.len();
    if dims.len() != t || modes.len() != t || outs.len() != t {
        return Err(value_error(format!("dims, modes and outs need one entry per table ({t})")));
    }
    let accumulate = match accumulate {
        None => vec![DType::Fp32; t],
        Some(a) if a.len() == t => a.iter().map(|d| d.0).collect(),
        Some(_) => return Err(value_error(format!("accumulate needs one dtype per table ({t})"))),
    };
    if tables.len() != slots.len() || tables.iter().any(|&x| x >= t) {
        return Err(value_error("tables and slots need one entry per block, naming known tables"));
    }
    let g = grad
        .cast::<PyArray2<f32>>()
        .map_err(|_| type_error("grad must be a 2-D float32 array"))?;
    let stride: usize = tables.iter().map(|&x| dims[x]).sum();
    if !in_place(g) || g.shape() != [batch, stride] {
        return Err(value_error(format!(
            "grad must be a C-contiguous, aligned [{batch}, {stride}] array, got shape {:?}",
            g.shape()
        )));
    }
    let g = g.try_readonly()?;
    let gs = g.as_slice().expect("checked contiguous");
    let values = ints_1d(values, "values")?;
    let lengths = ints_1d(lengths, "lengths")?;
    let n = values.slice().len();
    let weights = keyed_weights(weights, n)?;
    let w_all = weights.as_ref().map(|w| w.as_slice().expect("checked contiguous"));
    let layout = keyed_layout(&slots, n, &lengths, batch)?;
    let mut dense = Vec::with_capacity(t);
    for (i, o) in outs.iter().enumerate() {
        dense.push(match o {
            None => None,
            Some(o) => {
                let a = o
                    .cast::<PyArray2<f32>>()
                    .map_err(|_| type_error("outs must hold float32 [num_rows, dim] arrays"))?;
                if a.shape() != [num_rows[i], dims[i]] || !in_place(a) {
                    return Err(value_error(format!(
                        "outs[{i}] must be a C-contiguous, aligned [{}, {}] array",
                        num_rows[i], dims[i]
                    )));
                }
                Some(a.try_readwrite()?)
            }
        });
    }
    let idx = values.slice();
    // Each block's gradient columns, and its plan (sorted for dense tables), built in parallel.
    let mut cols = Vec::with_capacity(tables.len());
    let mut col = 0;
    for &ti in &tables {
        cols.push(col);
        col += dims[ti];
    }
    let sorted: Vec<bool> = tables.iter().map(|&ti| dense[ti].is_some()).collect();
    let specs: Vec<backward::KeyedTable> = (0..t)
        .map(|i| backward::KeyedTable { rows: num_rows[i], dim: dims[i], mode: modes[i].0, accumulate: accumulate[i], dense: dense[i].is_some() })
        .collect();
    let blocks: Vec<(usize, usize)> = tables.iter().copied().zip(slots.iter().copied()).collect();
    let plans = detach(py, || match idx {
        IntSlice::I32(v) => backward::keyed_plans(&specs, &blocks, &layout, v, w_all),
        IntSlice::I64(v) => backward::keyed_plans(&specs, &blocks, &layout, v, w_all),
    })?;
    let view = |j: usize| Grad { data: gs, stride, col: cols[j] };
    // Dense blocks one after another (blocks of one table add into one buffer).
    for (j, plan) in plans.iter().enumerate() {
        if let Some(out) = dense[tables[j]].as_mut() {
            let os = out.as_slice_mut().expect("checked contiguous");
            detach(py, || plan.add_dense(view(j), os))?;
        }
    }
    // Sparse blocks: allocate every block's values, then gather them all in parallel.
    let mut result = Vec::with_capacity(tables.len());
    let mut blocks = Vec::new();
    for (j, plan) in plans.iter().enumerate() {
        if sorted[j] {
            result.push(None);
            continue;
        }
        let rows = PyArray1::from_vec(py, plan.rows());
        // `gather_all` below writes every value (one row per lookup) before Python sees the
        // array; on error the arrays are dropped unread.
        let vals = arrays::new_array::<f32, 2>(py, [plan.len(), dims[tables[j]]])?;
        blocks.push((j, vals.clone()));
        result.push(Some((rows, vals)));
    }
    let mut borrows = blocks.iter().map(|(j, a)| Ok((*j, a.try_readwrite()?))).collect::<PyResult<Vec<_>>>()?;
    let jobs: Vec<(&Plan, Grad<'_>, &mut [f32])> = borrows
        .iter_mut()
        .map(|(j, rw)| (&plans[*j], view(*j), rw.as_slice_mut().expect("a new array is contiguous")))
        .collect();
    detach(py, || backward::gather_all(jobs))?;
    Ok(result)
}

/// A sparse gradient: `(rows [K] int64, values [K, D])`, one per non-padding lookup.
pub(crate) type SparseGrad<'py> = (Bound<'py, PyArray1<i64>>, Bound<'py, PyArray2<f32>>);

/// The backward of a pooling call: the table's gradient from the output's gradient `grad`
/// `[B, D]`. With `out` (float32 `[num_rows, D]`) it is added there (dense); without, the
/// sparse gradient comes back: each non-padding lookup's row and scaled output gradient, in
/// lookup order (torch's uncoalesced layout).
#[pyfunction]
#[pyo3(signature = (grad, num_rows, indices, offsets=None, lengths=None, weights=None, mode=Opt(Mode::Sum), padding_idx=None, include_last_offset=false, out=None, accumulate=Opt(DType::Fp32)))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn pool_backward<'py>(
    py: Python<'py>,
    grad: &Bound<'py, PyAny>,
    num_rows: usize,
    indices: &Bound<'py, PyAny>,
    offsets: Option<&Bound<'py, PyAny>>,
    lengths: Option<&Bound<'py, PyAny>>,
    weights: Option<&Bound<'py, PyAny>>,
    mode: Opt<Mode>,
    padding_idx: Option<i64>,
    include_last_offset: bool,
    out: Option<&Bound<'py, PyAny>>,
    accumulate: Opt<DType>,
) -> PyResult<Option<SparseGrad<'py>>> {
    let accumulate = accumulate.0;
    let g = grad
        .cast::<PyArray2<f32>>()
        .map_err(|_| type_error("grad must be a 2-D float32 array [B, D]"))?;
    if !in_place(g) {
        return Err(value_error("grad must be C-contiguous and aligned"));
    }
    let dim = g.shape()[1];
    let g = g.try_readonly()?;
    let gs = g.as_slice().expect("checked contiguous");
    let req = request(indices, offsets, lengths, weights, include_last_offset)?;
    let mode = mode.0;
    let offs = req.offsets().py_err()?;
    let w = req.weights();
    let idx = req.indices.slice();
    let dense = out.is_some();
    let (pad, acc) = (padding_idx, accumulate);
    let plan = detach(py, || match (idx, dense) {
            (IntSlice::I32(s), true) => Plan::new_as(num_rows, dim, s, &offs, w, mode, pad, acc),
            (IntSlice::I64(s), true) => Plan::new_as(num_rows, dim, s, &offs, w, mode, pad, acc),
            (IntSlice::I32(s), false) => Plan::unsorted(num_rows, dim, s, &offs, w, mode, pad)?.accumulate_as(acc),
            (IntSlice::I64(s), false) => Plan::unsorted(num_rows, dim, s, &offs, w, mode, pad)?.accumulate_as(acc),
        })?;
    if let Some(out) = out {
        let o = out
            .cast::<PyArray2<f32>>()
            .map_err(|_| type_error("out must be a 2-D float32 array [num_rows, D]"))?;
        if o.shape() != [num_rows, dim] || !in_place(o) {
            return Err(value_error(format!(
                "out must be a C-contiguous, aligned [{num_rows}, {dim}] array, got shape {:?}",
                o.shape()
            )));
        }
        let mut rw = o.try_readwrite()?;
        let os = rw.as_slice_mut().expect("checked contiguous");
        detach(py, || plan.add_dense(Grad::dense(gs, dim), os))?;
        return Ok(None);
    }
    let rows = PyArray1::from_vec(py, plan.rows());
    // `gather` writes every value (one row per lookup) before Python sees the array; on error
    // the array is dropped unread.
    let values = arrays::new_array::<f32, 2>(py, [plan.len(), dim])?;
    {
        let mut rw = values.readwrite();
        let vs = rw.as_slice_mut().expect("a new array is contiguous");
        detach(py, || plan.gather(Grad::dense(gs, dim), vs))?;
    }
    Ok(Some((rows, values)))
}

/// Add this file's classes and functions to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(pool_keyed_backward, m)?)?;
    m.add_function(wrap_pyfunction!(pool_backward, m)?)?;
    Ok(())
}
