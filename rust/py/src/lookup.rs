//! Lookup arguments from Python (indices, offsets or lengths, weights) and pooling into a
//! new array; `pool_array` pools a caller's numpy array in place.

use crate::prelude::*;

/// How the bags of one lookup were given.
pub(crate) enum BagsArg<'py> {
    Offsets(Ints<'py>, bool),
    Lengths(Ints<'py>),
    Fixed { bags: usize, per_bag: usize },
}

/// One table's arguments, borrowed from Python.
pub(crate) struct Request<'py> {
    pub(crate) indices: Ints<'py>,
    bags: BagsArg<'py>,
    weights: Option<numpy::PyReadonlyArrayDyn<'py, f32>>,
}

pub(crate) fn request<'py>(
    indices: &Bound<'py, PyAny>,
    offsets: Option<&Bound<'py, PyAny>>,
    lengths: Option<&Bound<'py, PyAny>>,
    weights: Option<&Bound<'py, PyAny>>,
    include_last_offset: bool,
) -> PyResult<Request<'py>> {
    let indices = ints(indices, "indices")?;
    let shape = indices.shape();
    let bags = match (shape.len(), offsets, lengths) {
        (1, Some(_), Some(_)) => return Err(value_error("give offsets or lengths, not both")),
        (1, Some(o), None) => BagsArg::Offsets(ints_1d(o, "offsets")?, include_last_offset),
        (1, None, Some(l)) => BagsArg::Lengths(ints_1d(l, "lengths")?),
        (1, None, None) => {
            return Err(value_error(
                "1-D indices need offsets (torch style) or lengths (Caffe2 style) to form bags",
            ))
        }
        (2, None, None) => BagsArg::Fixed { bags: shape[0], per_bag: shape[1] },
        (2, _, _) => {
            return Err(value_error(
                "with 2-D indices [B, n] (B bags of n), offsets and lengths must be None",
            ))
        }
        (d, _, _) => return Err(value_error(format!("indices must be 1-D or 2-D, got {d}-D"))),
    };
    let weights = weights.map(|w| floats(w, "per-sample weights")).transpose()?;
    if let Some(w) = &weights {
        if w.shape() != shape.as_slice() {
            return Err(value_error(format!(
                "per-sample weights must have the indices' shape {shape:?}, got {:?}",
                w.shape()
            )));
        }
    }
    Ok(Request { indices, bags, weights })
}

impl Request<'_> {
    pub(crate) fn offsets(&self) -> recengine_core::Result<Vec<usize>> {
        let n = self.indices.slice().len();
        match &self.bags {
            BagsArg::Offsets(o, last) => match o.slice() {
                IntSlice::I32(s) => bag_offsets(Bags::Offsets { offsets: s, include_last: *last }, n),
                IntSlice::I64(s) => bag_offsets(Bags::Offsets { offsets: s, include_last: *last }, n),
            },
            BagsArg::Lengths(l) => match l.slice() {
                IntSlice::I32(s) => bag_offsets(Bags::Lengths(s), n),
                IntSlice::I64(s) => bag_offsets(Bags::Lengths(s), n),
            },
            BagsArg::Fixed { bags, per_bag } => {
                let fixed: Bags<'_, i64> = Bags::Fixed { bags: *bags, per_bag: *per_bag };
                bag_offsets(fixed, n)
            }
        }
    }

    pub(crate) fn weights(&self) -> Option<&[f32]> {
        self.weights.as_ref().map(|w| w.as_slice().expect("checked contiguous"))
    }
}

/// Pool `views[t]` with `indices[t]` into a new `[B, sum(dims)]` array, without the GIL.
#[allow(clippy::type_complexity)]
pub(crate) fn pool_into_new<'py, I: Index>(
    py: Python<'py>,
    views: &[TableView<'_>],
    indices: &[&[I]],
    offsets: Vec<Vec<usize>>,
    weights: &[Option<&[f32]>],
    modes: &[Mode],
    padding: &[Option<i64>],
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let batch = offsets.first().map_or(0, |o| o.len() - 1);
    let columns: Vec<usize> = views.iter().scan(0, |c, v| {
        let start = *c;
        *c += v.dim;
        Some(start)
    }).collect();
    let stride: usize = views.iter().map(|v| v.dim).sum();
    // The array is filled completely before Python sees it: every job writes all of its bags'
    // cells in its columns (zeros for empty bags), the columns partition each row, and all
    // jobs have `batch` bags (checked by `run`). On error the array is dropped unread.
    let out = arrays::new_array::<f32, 2>(py, [batch, stride])?;
    {
        let mut rw = out.readwrite();
        let out_slice = rw.as_slice_mut().expect("a new array is contiguous");
        detach(py, || {
            let jobs = views
                .iter()
                .zip(indices)
                .zip(offsets)
                .enumerate()
                .map(|(t, ((v, idx), offs))| {
                    let position = (views.len() > 1).then_some(t);
                    make_job(*v, idx, offs, weights[t], modes[t], padding[t], position)
                })
                .collect::<recengine_core::Result<Vec<_>>>()?;
            run(&jobs, &columns, out_slice, stride)
        })?;
    }
    Ok(out)
}

/// One table's lookup from its borrowed request.
pub(crate) fn lookup_one<'py>(
    py: Python<'py>,
    view: TableView<'_>,
    req: &Request<'py>,
    mode: Mode,
    padding_idx: Option<i64>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let offsets = req.offsets().py_err()?;
    let w = [req.weights()];
    match req.indices.slice() {
        IntSlice::I32(s) => pool_into_new(py, &[view], &[s], vec![offsets], &w, &[mode], &[padding_idx]),
        IntSlice::I64(s) => pool_into_new(py, &[view], &[s], vec![offsets], &w, &[mode], &[padding_idx]),
    }
}


/// Borrow `t` tables' requests from per-table Python lists (each list given has one entry per
/// table).
pub(crate) fn requests<'py>(
    t: usize,
    indices: &[Bound<'py, PyAny>],
    offsets: Option<&Vec<Bound<'py, PyAny>>>,
    lengths: Option<&Vec<Bound<'py, PyAny>>>,
    weights: Option<&Vec<Option<Bound<'py, PyAny>>>>,
    include_last_offset: bool,
) -> PyResult<Vec<Request<'py>>> {
    per_table(t, &[
        ("indices", Some(indices.len())),
        ("offsets", offsets.map(Vec::len)),
        ("lengths", lengths.map(Vec::len)),
        ("weights", weights.map(Vec::len)),
    ])?;
    (0..t)
        .map(|i| {
            request(
                &indices[i],
                offsets.map(|o| &o[i]),
                lengths.map(|l| &l[i]),
                weights.and_then(|w| w[i].as_ref()),
                include_last_offset,
            )
        })
        .collect()
}

/// Check that each per-table argument given (`Some(len)`) has one entry per table.
pub(crate) fn per_table(t: usize, args: &[(&str, Option<usize>)]) -> PyResult<()> {
    for &(what, n) in args {
        if let Some(n) = n.filter(|&n| n != t) {
            return Err(value_error(format!("{what} has {n} entries for {t} tables")));
        }
    }
    Ok(())
}

/// Pool several tables' borrowed requests into one `[B, sum(dims)]` array.
pub(crate) fn pool_requests<'py>(
    py: Python<'py>,
    views: &[TableView<'_>],
    reqs: &[Request<'py>],
    modes: &[Mode],
    pads: &[Option<i64>],
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let offs = reqs.iter().map(Request::offsets).collect::<recengine_core::Result<Vec<_>>>().py_err()?;
    let ws: Vec<Option<&[f32]>> = reqs.iter().map(Request::weights).collect();
    let slices: Vec<IntSlice<'_>> = reqs.iter().map(|r| r.indices.slice()).collect();
    if let Some(s32) = slices.iter().map(|s| match s { IntSlice::I32(x) => Some(*x), IntSlice::I64(_) => None }).collect::<Option<Vec<&[i32]>>>() {
        return pool_into_new(py, views, &s32, offs, &ws, modes, pads);
    }
    // Mixed or all int64: widen the int32 ones (a copy of those indices only).
    let widened: Vec<Option<Vec<i64>>> = slices.iter().map(|s| s.widened()).collect();
    let s64: Vec<&[i64]> = slices.iter().zip(&widened).map(|(s, w)| s.as_i64(w)).collect();
    pool_into_new(py, views, &s64, offs, &ws, modes, pads)
}

/// A table borrowed from a numpy array without a copy: float32 or float16 rows, or raw rows
/// of any storage format (uint8 `[num_rows, row_bytes]`, e.g. a bfloat16 tensor's bytes).
pub(crate) enum TableArray<'py> {
    F32(PyReadonlyArray2<'py, f32>),
    F16(PyReadonlyArray2<'py, half::f16>),
    Raw(PyReadonlyArray2<'py, u8>, DType, usize),
}

/// Take `array` as a table: float32/float16 as is, or uint8 raw rows of `dtype` (with `dim`,
/// derived from the row width when it is not given).
pub(crate) fn table_array<'py>(array: &Bound<'py, PyAny>, dtype: Option<DType>, dim: Option<usize>) -> PyResult<TableArray<'py>> {
    fn borrow<'py, T: numpy::Element>(a: &Bound<'py, PyArray2<T>>) -> PyResult<PyReadonlyArray2<'py, T>> {
        if !in_place(a) {
            return Err(value_error("the table array must be C-contiguous and aligned (np.require(a, requirements=\"CA\") makes such a copy)"));
        }
        Ok(a.try_readonly()?)
    }
    let table = if let Ok(a) = array.cast::<PyArray2<u8>>() {
        let dt = dtype.ok_or_else(|| {
            type_error("a uint8 table array holds raw rows: give its storage dtype")
        })?;
        let row_bytes = a.shape()[1];
        let dim = dim.unwrap_or_else(|| dt.dim_from_row_bytes(row_bytes));
        if dim == 0 || dt.row_bytes(dim) != row_bytes {
            return Err(value_error(format!(
                "{} rows of dim {dim} take {} bytes each, but the array has {row_bytes} columns",
                dt.name(),
                dt.row_bytes(dim)
            )));
        }
        TableArray::Raw(borrow(a)?, dt, dim)
    } else if let Ok(a) = array.cast::<PyArray2<f32>>() {
        TableArray::F32(borrow(a)?)
    } else if let Ok(a) = array.cast::<PyArray2<half::f16>>() {
        TableArray::F16(borrow(a)?)
    } else {
        return Err(type_error(
            "the table must be a 2-D float32 or float16 numpy array, or uint8 raw rows",
        ));
    };
    if let (Some(dt), TableArray::F32(_) | TableArray::F16(_)) = (dtype, &table) {
        let given = if matches!(table, TableArray::F32(_)) { DType::Fp32 } else { DType::Fp16 };
        if dt != given {
            return Err(type_error(format!(
                "a {} array cannot hold {} rows (raw rows come as uint8)",
                given.name(),
                dt.name()
            )));
        }
    }
    check_dim(table.view().dim)?;
    Ok(table)
}

impl TableArray<'_> {
    fn view(&self) -> TableView<'_> {
        let (data, rows, dim, dtype) = match self {
            TableArray::F32(a) => {
                let s = a.as_slice().expect("checked contiguous");
                (recengine_core::f32_bytes(s), a.shape()[0], a.shape()[1], DType::Fp32)
            }
            TableArray::F16(a) => {
                let s = bytemuck_f16(a.as_slice().expect("checked contiguous"));
                (recengine_core::u16_bytes(s), a.shape()[0], a.shape()[1], DType::Fp16)
            }
            TableArray::Raw(a, dt, dim) => (a.as_slice().expect("checked contiguous"), a.shape()[0], *dim, *dt),
        };
        // A caller's array: its pages are whatever its allocator gave (4 KiB, as a rule).
        TableView { data, num_rows: rows, dim, dtype, huge_pages: false }
    }
}

/// Pool rows of a numpy array in place (no copy of the table). `huge_pages` says the array lies
/// on 2 MiB pages (the kernels then prefetch whole rows).
#[pyfunction]
#[pyo3(signature = (array, indices, offsets=None, lengths=None, weights=None, mode=Opt(Mode::Sum), padding_idx=None, include_last_offset=false, dtype=None, dim=None, huge_pages=false))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn pool_array<'py>(
    py: Python<'py>,
    array: &Bound<'py, PyAny>,
    indices: &Bound<'py, PyAny>,
    offsets: Option<&Bound<'py, PyAny>>,
    lengths: Option<&Bound<'py, PyAny>>,
    weights: Option<&Bound<'py, PyAny>>,
    mode: Opt<Mode>,
    padding_idx: Option<i64>,
    include_last_offset: bool,
    dtype: Option<Opt<DType>>,
    dim: Option<usize>,
    huge_pages: bool,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let table = table_array(array, dtype.map(|d| d.0), dim)?;
    let req = request(indices, offsets, lengths, weights, include_last_offset)?;
    // Only a prefetch hint: a wrong flag changes speed, never results.
    let view = TableView { huge_pages, ..table.view() };
    lookup_one(py, view, &req, mode.0, padding_idx)
}

/// Add this file's classes and functions to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(pool_array, m)?)?;
    Ok(())
}
