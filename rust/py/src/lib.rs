//! `recengine._core`: the thin PyO3 layer over `recengine-core`.
//!
//! Each binding takes its numpy arguments without copying (see `arrays`), checks what needs
//! the interpreter, then releases the GIL (`py.detach`) for the work, and maps errors in one
//! place (`errors`).

mod arrays;
mod errors;

use std::sync::Arc;

use numpy::{IntoPyArray, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::{PyIndexError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use recengine_core::backward::{self, Grad};
use recengine_core::backward::Plan;
use recengine_core::{dram, nmp, openmp};
use recengine_core::cache::{self, BlobCache, Policy as CachePolicy, Stats as CacheStats, Store};
use recengine_core::shard::{self, Layout, Piece, ShardedCollection, Split, TablePlan};
use recengine_core::{
    bag_offsets, make_job, probe, run, simd, Bags, DType, Index, Mode, Table, TableView,
};

use crate::arrays::{floats, in_place, ints, ints_1d, IntSlice, Ints};
use crate::errors::IntoPy;

/// How the bags of one lookup were given.
enum BagsArg<'py> {
    Offsets(Ints<'py>, bool),
    Lengths(Ints<'py>),
    Fixed { bags: usize, per_bag: usize },
}

/// One table's arguments, borrowed from Python.
struct Request<'py> {
    indices: Ints<'py>,
    bags: BagsArg<'py>,
    weights: Option<numpy::PyReadonlyArrayDyn<'py, f32>>,
}

fn request<'py>(
    indices: &Bound<'py, PyAny>,
    offsets: Option<&Bound<'py, PyAny>>,
    lengths: Option<&Bound<'py, PyAny>>,
    weights: Option<&Bound<'py, PyAny>>,
    include_last_offset: bool,
) -> PyResult<Request<'py>> {
    let indices = ints(indices, "indices")?;
    let shape = indices.shape();
    let bags = match (shape.len(), offsets, lengths) {
        (1, Some(_), Some(_)) => return Err(PyValueError::new_err("give offsets or lengths, not both")),
        (1, Some(o), None) => BagsArg::Offsets(ints_1d(o, "offsets")?, include_last_offset),
        (1, None, Some(l)) => BagsArg::Lengths(ints_1d(l, "lengths")?),
        (1, None, None) => {
            return Err(PyValueError::new_err(
                "1-D indices need offsets (torch style) or lengths (Caffe2 style) to form bags",
            ))
        }
        (2, None, None) => BagsArg::Fixed { bags: shape[0], per_bag: shape[1] },
        (2, _, _) => {
            return Err(PyValueError::new_err(
                "with 2-D indices [B, n] (B bags of n), offsets and lengths must be None",
            ))
        }
        (d, _, _) => return Err(PyValueError::new_err(format!("indices must be 1-D or 2-D, got {d}-D"))),
    };
    let weights = weights.map(|w| floats(w, "per-sample weights")).transpose()?;
    if let Some(w) = &weights {
        if w.shape() != shape.as_slice() {
            return Err(PyValueError::new_err(format!(
                "per-sample weights must have the indices' shape {shape:?}, got {:?}",
                w.shape()
            )));
        }
    }
    Ok(Request { indices, bags, weights })
}

impl Request<'_> {
    fn offsets(&self) -> recengine_core::Result<Vec<usize>> {
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

    fn weights(&self) -> Option<&[f32]> {
        self.weights.as_ref().map(|w| w.as_slice().expect("checked contiguous"))
    }
}

/// Pool `views[t]` with `indices[t]` into a new `[B, sum(dims)]` array, without the GIL.
#[allow(clippy::type_complexity)]
fn pool_into_new<'py, I: Index>(
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
        py.detach(|| {
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
        })
        .py_err()?;
    }
    Ok(out)
}

/// One table's lookup from its borrowed request.
fn lookup_one<'py>(
    py: Python<'py>,
    view: TableView<'_>,
    req: &Request<'py>,
    mode: &str,
    padding_idx: Option<i64>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let mode = Mode::parse(mode).py_err()?;
    let offsets = req.offsets().py_err()?;
    let w = [req.weights()];
    match req.indices.slice() {
        IntSlice::I32(s) => pool_into_new(py, &[view], &[s], vec![offsets], &w, &[mode], &[padding_idx]),
        IntSlice::I64(s) => pool_into_new(py, &[view], &[s], vec![offsets], &w, &[mode], &[padding_idx]),
    }
}

/// An embedding table whose rows live in Rust memory (owned, or a read-only file mapping).
#[pyclass(name = "Table", module = "recengine._core", frozen)]
struct PyTable {
    inner: Arc<Table>,
}

fn dtype(name: &str) -> PyResult<DType> {
    DType::parse(name).py_err()
}

#[pymethods]
impl PyTable {
    #[staticmethod]
    fn from_array(py: Python<'_>, array: &Bound<'_, PyAny>, dtype: &str) -> PyResult<PyTable> {
        let dt = self::dtype(dtype)?;
        let wrong = || PyTypeError::new_err("from_array takes a 2-D float32 or float16 numpy array");
        if array.cast::<PyArray2<u8>>().is_ok() {
            return Err(wrong());
        }
        let t = match table_array(array, None, None)? {
            TableArray::F32(a) => {
                let (rows, dim) = (a.shape()[0], a.shape()[1]);
                let s = a.as_slice().expect("checked contiguous");
                py.detach(|| Table::from_f32(s, rows, dim, dt))
            }
            TableArray::F16(a) => {
                let (rows, dim) = (a.shape()[0], a.shape()[1]);
                let bits = bytemuck_f16(a.as_slice().expect("checked contiguous"));
                py.detach(|| Table::from_f16_bits(bits, rows, dim, dt))
            }
            TableArray::Raw(..) => return Err(wrong()),
        };
        Ok(PyTable { inner: Arc::new(t.py_err()?) })
    }

    #[staticmethod]
    fn from_raw(py: Python<'_>, data: &Bound<'_, PyAny>, dtype: &str, dim: usize) -> PyResult<PyTable> {
        let dt = self::dtype(dtype)?;
        let a = data
            .cast::<PyArray2<u8>>()
            .map_err(|_| PyTypeError::new_err("raw rows must be a 2-D uint8 array [num_rows, row_bytes]"))?;
        let rows = a.shape()[0];
        if a.shape()[1] != dt.row_bytes(dim) {
            return Err(PyValueError::new_err(format!(
                "{} rows of dim {dim} take {} bytes each, but the array has {} columns",
                dt.name(),
                dt.row_bytes(dim),
                a.shape()[1]
            )));
        }
        let ro = a.try_readonly()?;
        let s = ro.as_slice().map_err(|_| PyValueError::new_err("the array must be C-contiguous"))?;
        let t = py.detach(|| Table::from_raw(s, rows, dim, dt)).py_err()?;
        Ok(PyTable { inner: Arc::new(t) })
    }

    #[staticmethod]
    fn random(py: Python<'_>, num_rows: usize, dim: usize, dtype: &str, seed: u64) -> PyResult<PyTable> {
        let dt = self::dtype(dtype)?;
        let t = py.detach(|| Table::random(num_rows, dim, dt, seed)).py_err()?;
        Ok(PyTable { inner: Arc::new(t) })
    }

    #[staticmethod]
    #[pyo3(signature = (path, offset, num_rows, dim, dtype, mmap=true))]
    fn open(py: Python<'_>, path: &str, offset: usize, num_rows: usize, dim: usize, dtype: &str, mmap: bool) -> PyResult<PyTable> {
        let dt = self::dtype(dtype)?;
        let t = py.detach(|| Table::open(path, offset, num_rows, dim, dt, mmap)).py_err()?;
        Ok(PyTable { inner: Arc::new(t) })
    }

    #[staticmethod]
    #[pyo3(signature = (path, name=None, mmap=true))]
    fn load_safetensors(py: Python<'_>, path: &str, name: Option<&str>, mmap: bool) -> PyResult<PyTable> {
        let t = py.detach(|| Table::load_safetensors(path, name, mmap)).py_err()?;
        Ok(PyTable { inner: Arc::new(t) })
    }

    fn save_safetensors(&self, py: Python<'_>, path: &str, name: &str) -> PyResult<()> {
        py.detach(|| self.inner.save_safetensors(path, name)).py_err()
    }

    #[getter]
    fn num_rows(&self) -> usize {
        self.inner.num_rows()
    }
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    #[getter]
    fn dtype(&self) -> &'static str {
        self.inner.dtype().name()
    }
    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.nbytes()
    }
    #[getter]
    fn row_bytes(&self) -> usize {
        self.inner.row_bytes()
    }
    #[getter]
    fn is_mmap(&self) -> bool {
        self.inner.is_mmap()
    }

    #[pyo3(signature = (indices, offsets=None, lengths=None, weights=None, mode="sum", padding_idx=None, include_last_offset=false))]
    #[allow(clippy::too_many_arguments)]
    fn lookup<'py>(
        &self,
        py: Python<'py>,
        indices: &Bound<'py, PyAny>,
        offsets: Option<&Bound<'py, PyAny>>,
        lengths: Option<&Bound<'py, PyAny>>,
        weights: Option<&Bound<'py, PyAny>>,
        mode: &str,
        padding_idx: Option<i64>,
        include_last_offset: bool,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let req = request(indices, offsets, lengths, weights, include_last_offset)?;
        lookup_one(py, self.inner.view().py_err()?, &req, mode, padding_idx)
    }

    fn quantize(&self, py: Python<'_>, dtype: &str) -> PyResult<PyTable> {
        let dt = self::dtype(dtype)?;
        let t = py.detach(|| self.inner.convert(dt)).py_err()?;
        Ok(PyTable { inner: Arc::new(t) })
    }

    /// A new owned table of rows `row_start..row_end` and columns `col_start..col_end`.
    fn slice(&self, py: Python<'_>, row_start: usize, row_end: usize, col_start: usize, col_end: usize) -> PyResult<PyTable> {
        let t = py.detach(|| self.inner.slice(row_start..row_end, col_start..col_end)).py_err()?;
        Ok(PyTable { inner: Arc::new(t) })
    }

    fn to_numpy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let out = arrays::new_array::<f32, 2>(py, [self.inner.num_rows(), self.inner.dim()])?;
        {
            let mut rw = out.readwrite();
            let s = rw.as_slice_mut().expect("a new array is contiguous");
            py.detach(|| self.inner.to_f32(s)).py_err()?;
        }
        Ok(out)
    }

    fn raw<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<u8>>> {
        let out = arrays::new_array::<u8, 2>(py, [self.inner.num_rows(), self.inner.row_bytes()])?;
        {
            let mut rw = out.readwrite();
            let s = rw.as_slice_mut().expect("a new array is contiguous");
            let src = self.inner.bytes().py_err()?;
            py.detach(|| s.copy_from_slice(src));
        }
        Ok(out)
    }
}

/// View float16 values as their bits.
fn bytemuck_f16(s: &[half::f16]) -> &[u16] {
    // SAFETY: `half::f16` is `repr(transparent)` over `u16`: same size, alignment and validity.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u16>(), s.len()) }
}

/// Several tables pooled for one batch in one call.
#[pyclass(name = "Collection", module = "recengine._core", frozen)]
struct PyCollection {
    tables: Vec<Arc<Table>>,
}

#[pymethods]
impl PyCollection {
    #[new]
    fn new(tables: Vec<Bound<'_, PyTable>>) -> PyResult<PyCollection> {
        if tables.is_empty() {
            return Err(PyValueError::new_err("a collection needs at least one table"));
        }
        Ok(PyCollection { tables: tables.iter().map(|t| t.get().inner.clone()).collect() })
    }

    #[getter]
    fn dims(&self) -> Vec<usize> {
        self.tables.iter().map(|t| t.dim()).collect()
    }

    #[pyo3(signature = (indices, offsets=None, lengths=None, weights=None, mode="sum", include_last_offset=false))]
    fn lookup<'py>(
        &self,
        py: Python<'py>,
        indices: Vec<Bound<'py, PyAny>>,
        offsets: Option<Vec<Bound<'py, PyAny>>>,
        lengths: Option<Vec<Bound<'py, PyAny>>>,
        weights: Option<Vec<Option<Bound<'py, PyAny>>>>,
        mode: &str,
        include_last_offset: bool,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let t = self.tables.len();
        let mode = Mode::parse(mode).py_err()?;
        let reqs = requests(t, &indices, offsets.as_ref(), lengths.as_ref(), weights.as_ref(), include_last_offset)?;
        let views = self.tables.iter().map(|t| t.view()).collect::<recengine_core::Result<Vec<TableView<'_>>>>().py_err()?;
        pool_requests(py, &views, &reqs, &vec![mode; t], &vec![None; t])
    }
}

/// A plan from Python: `splits[t]` names table `t`'s split and `pieces[t]` lists its pieces as
/// `(shard, row_start, row_end, col_start, col_end)`.
fn plan_from(num_shards: usize, splits: &[String], pieces: &[PlanPieces]) -> PyResult<shard::Plan> {
    if splits.len() != pieces.len() {
        return Err(PyValueError::new_err("splits and pieces need one entry per table"));
    }
    let tables = splits
        .iter()
        .zip(pieces)
        .map(|(split, ps)| {
            Ok(TablePlan {
                split: Split::parse(split).py_err()?,
                pieces: ps.iter().map(|&(shard, r0, r1, c0, c1)| Piece { shard, rows: r0..r1, cols: c0..c1 }).collect(),
            })
        })
        .collect::<PyResult<Vec<_>>>()?;
    Ok(shard::Plan { num_shards, tables })
}

fn plan_to(plan: &shard::Plan) -> (usize, Vec<String>, Vec<PlanPieces>) {
    let splits = plan.tables.iter().map(|t| t.split.name().to_string()).collect();
    let pieces = plan
        .tables
        .iter()
        .map(|t| t.pieces.iter().map(|p| (p.shard, p.rows.start, p.rows.end, p.cols.start, p.cols.end)).collect())
        .collect();
    (plan.num_shards, splits, pieces)
}

/// One table's pieces as `(shard, row_start, row_end, col_start, col_end)`.
type PlanPieces = Vec<(usize, usize, usize, usize, usize)>;

/// Per-table requests of a sharded call, with int64 indices (int32 ones widened, a copy).
struct Requests<'py> {
    reqs: Vec<Request<'py>>,
    widened: Vec<Option<Vec<i64>>>,
    offsets: Vec<Vec<usize>>,
}

impl<'py> Requests<'py> {
    #[allow(clippy::too_many_arguments)]
    fn take(
        t: usize,
        indices: &[Bound<'py, PyAny>],
        offsets: Option<&Vec<Bound<'py, PyAny>>>,
        lengths: Option<&Vec<Bound<'py, PyAny>>>,
        weights: Option<&Vec<Option<Bound<'py, PyAny>>>>,
        include_last_offset: bool,
    ) -> PyResult<Requests<'py>> {
        let reqs = requests(t, indices, offsets, lengths, weights, include_last_offset)?;
        let offsets = reqs.iter().map(Request::offsets).collect::<recengine_core::Result<Vec<_>>>().py_err()?;
        let widened = reqs
            .iter()
            .map(|r| match r.indices.slice() {
                IntSlice::I32(x) => Some(x.iter().map(|&i| i64::from(i)).collect()),
                IntSlice::I64(_) => None,
            })
            .collect();
        Ok(Requests { reqs, widened, offsets })
    }

    fn shard_requests(&self) -> Vec<shard::Request<'_, i64>> {
        self.reqs
            .iter()
            .zip(&self.widened)
            .zip(&self.offsets)
            .map(|((r, w), o)| shard::Request {
                indices: match (r.indices.slice(), w) {
                    (IntSlice::I64(x), _) => x,
                    (IntSlice::I32(_), w) => w.as_deref().expect("widened above"),
                },
                offsets: o.clone(),
                weights: r.weights(),
            })
            .collect()
    }
}

/// Tables split over shards by a plan, pooled in process (every piece's share of a batch on
/// the core's threads at once) with the same results as the unsharded collection.
#[pyclass(name = "ShardedCollection", module = "recengine._core", frozen)]
struct PyShardedCollection {
    inner: Arc<ShardedCollection>,
}

#[pymethods]
impl PyShardedCollection {
    /// Split `tables` by the plan (`num_shards`, per-table `splits` and `pieces` as
    /// `(shard, row_start, row_end, col_start, col_end)`), copying each piece out.
    #[new]
    fn new(
        py: Python<'_>,
        tables: Vec<Bound<'_, PyTable>>,
        num_shards: usize,
        splits: Vec<String>,
        pieces: Vec<PlanPieces>,
    ) -> PyResult<PyShardedCollection> {
        let plan = plan_from(num_shards, &splits, &pieces)?;
        let tables: Vec<Arc<Table>> = tables.iter().map(|t| t.get().inner.clone()).collect();
        let refs: Vec<&Table> = tables.iter().map(|t| t.as_ref()).collect();
        let inner = py.detach(|| ShardedCollection::new(plan, &refs)).py_err()?;
        Ok(PyShardedCollection { inner: Arc::new(inner) })
    }

    #[getter]
    fn dims(&self) -> Vec<usize> {
        self.inner.dims()
    }

    /// The checked plan: `(num_shards, splits, pieces)` (pieces in row or column order).
    fn plan(&self) -> (usize, Vec<String>, Vec<PlanPieces>) {
        plan_to(self.inner.plan())
    }

    /// Piece `p` of table `t` (a table of its own).
    fn piece(&self, t: usize, p: usize) -> PyResult<PyTable> {
        let tp = self.inner.plan().tables.get(t).ok_or_else(|| PyIndexError::new_err(format!("no table {t}")))?;
        if p >= tp.pieces.len() {
            return Err(PyIndexError::new_err(format!("table {t} has no piece {p}")));
        }
        Ok(PyTable { inner: self.inner.piece(t, p).clone() })
    }

    #[pyo3(signature = (indices, offsets=None, lengths=None, weights=None, mode="sum", include_last_offset=false))]
    #[allow(clippy::too_many_arguments)]
    fn lookup<'py>(
        &self,
        py: Python<'py>,
        indices: Vec<Bound<'py, PyAny>>,
        offsets: Option<Vec<Bound<'py, PyAny>>>,
        lengths: Option<Vec<Bound<'py, PyAny>>>,
        weights: Option<Vec<Option<Bound<'py, PyAny>>>>,
        mode: &str,
        include_last_offset: bool,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let t = self.inner.dims().len();
        let mode = Mode::parse(mode).py_err()?;
        let reqs = Requests::take(t, &indices, offsets.as_ref(), lengths.as_ref(), weights.as_ref(), include_last_offset)?;
        let sreqs = reqs.shard_requests();
        let batch = sreqs.first().map_or(0, |r| r.offsets.len() - 1);
        let stride: usize = self.inner.dims().iter().sum();
        let out = py.detach(|| self.inner.lookup(&sreqs, mode)).py_err()?;
        Ok(numpy::ndarray::Array2::from_shape_vec((batch, stride), out)
            .map_err(|e| PyValueError::new_err(e.to_string()))?
            .into_pyarray(py))
    }
}

/// Routing for a distributed sharded lookup: the plan and the tables' shapes, no rows.
#[pyclass(name = "Router", module = "recengine._core", frozen)]
struct PyRouter {
    plan: shard::Plan,
    shapes: Vec<(usize, usize)>,
}

/// One routed batch: each shard's share (`by_shard`) and the merge of the shards' blocks.
#[pyclass(name = "Routed", module = "recengine._core", frozen)]
struct PyRouted {
    subs: Vec<OwnedSub>,
    offsets: Vec<Vec<usize>>,
    mode: Mode,
    batch: usize,
}

struct OwnedSub {
    table: usize,
    piece: usize,
    indices: Vec<i64>,
    offsets: Vec<i64>,
    weights: Option<Vec<f32>>,
    mode: Mode,
    bags: std::ops::Range<usize>,
}

#[pymethods]
impl PyRouter {
    #[new]
    fn new(
        shapes: Vec<(usize, usize)>,
        num_shards: usize,
        splits: Vec<String>,
        pieces: Vec<PlanPieces>,
    ) -> PyResult<PyRouter> {
        let plan = plan_from(num_shards, &splits, &pieces)?.check(&shapes).py_err()?;
        Ok(PyRouter { plan, shapes })
    }

    fn plan(&self) -> (usize, Vec<String>, Vec<PlanPieces>) {
        plan_to(&self.plan)
    }

    /// Route a batch (arguments as `ShardedCollection.lookup`): indices are checked here.
    #[pyo3(signature = (indices, offsets=None, lengths=None, weights=None, mode="sum", include_last_offset=false))]
    #[allow(clippy::too_many_arguments)]
    fn route<'py>(
        &self,
        py: Python<'py>,
        indices: Vec<Bound<'py, PyAny>>,
        offsets: Option<Vec<Bound<'py, PyAny>>>,
        lengths: Option<Vec<Bound<'py, PyAny>>>,
        weights: Option<Vec<Option<Bound<'py, PyAny>>>>,
        mode: &str,
        include_last_offset: bool,
    ) -> PyResult<PyRouted> {
        let t = self.shapes.len();
        let mode = Mode::parse(mode).py_err()?;
        let reqs = Requests::take(t, &indices, offsets.as_ref(), lengths.as_ref(), weights.as_ref(), include_last_offset)?;
        let sreqs = reqs.shard_requests();
        let batch = sreqs.first().map_or(0, |r| r.offsets.len() - 1);
        if let Some(bad) = sreqs.iter().position(|r| r.offsets.len() - 1 != batch) {
            return Err(PyValueError::new_err(format!(
                "table {bad} has {} bags but table 0 has {batch}; every table needs the same batch",
                sreqs[bad].offsets.len() - 1
            )));
        }
        let subs = py
            .detach(|| -> recengine_core::Result<Vec<OwnedSub>> {
                let mut all = Vec::new();
                for (i, r) in sreqs.iter().enumerate() {
                    for s in shard::route(&self.plan.tables[i], i, self.shapes[i].0, r.indices, &r.offsets, r.weights, mode)? {
                        all.push(OwnedSub {
                            table: s.table,
                            piece: s.piece,
                            offsets: s.offsets.iter().map(|&o| o as i64).collect(),
                            indices: s.indices.into_owned(),
                            weights: s.weights.map(|w| w.into_owned()),
                            mode: s.mode,
                            bags: s.bags,
                        });
                    }
                }
                Ok(all)
            })
            .py_err()?;
        Ok(PyRouted { subs, offsets: sreqs.into_iter().map(|r| r.offsets).collect(), mode, batch })
    }
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Sum => "sum",
        Mode::Mean => "mean",
        Mode::Max => "max",
    }
}

/// One shard's share of a routed batch: `(table, piece, indices, offsets, weights, mode)`.
type ShardWork<'py> = (usize, usize, Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i64>>, Option<Bound<'py, PyArray1<f32>>>, &'static str);

#[pymethods]
impl PyRouted {
    /// Each involved shard's work, keyed by shard id: a list of `(table, piece, indices,
    /// offsets, weights, mode)`, offsets with the last entry (`include_last_offset`).
    fn by_shard<'py>(&self, py: Python<'py>, router: &PyRouter) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for s in &self.subs {
            let shard = router.plan.tables[s.table].pieces[s.piece].shard;
            let item: ShardWork<'py> = (
                s.table,
                s.piece,
                PyArray1::from_slice(py, &s.indices),
                PyArray1::from_slice(py, &s.offsets),
                s.weights.as_ref().map(|w| PyArray1::from_slice(py, w)),
                mode_name(s.mode),
            );
            match out.get_item(shard)? {
                Some(list) => list.cast::<PyList>()?.append(item)?,
                None => out.set_item(shard, PyList::new(py, [item])?)?,
            }
        }
        Ok(out)
    }

    /// How many pieces' shares there are (one per piece with lookups).
    fn __len__(&self) -> usize {
        self.subs.len()
    }

    /// The pooled output `[B, sum(dims)]` from every share's block, `blocks[(table, piece)]`
    /// a float32 `[bags, piece columns]` array (bags: the whole batch, or a replica's share).
    fn merge<'py>(&self, py: Python<'py>, router: &PyRouter, blocks: &Bound<'py, PyDict>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let dims: Vec<usize> = router.shapes.iter().map(|s| s.1).collect();
        let layout = Layout::new(&dims);
        let mut out = recengine_core::mem::filled(self.batch.saturating_mul(layout.stride), 0f32, "the pooled output").py_err()?;
        let mut held = Vec::with_capacity(self.subs.len());
        for s in &self.subs {
            let block = blocks
                .get_item((s.table, s.piece))?
                .ok_or_else(|| PyValueError::new_err(format!("no block for table {} piece {}", s.table, s.piece)))?;
            let a = block
                .cast::<PyArray2<f32>>()
                .map_err(|_| PyTypeError::new_err("each block must be a 2-D float32 array"))?
                .try_readonly()?;
            let width = router.plan.tables[s.table].pieces[s.piece].cols.len();
            if a.shape() != [s.bags.len(), width] || !in_place(&*a) {
                return Err(PyValueError::new_err(format!(
                    "the block of table {} piece {} must be a C-contiguous, aligned [{}, {width}] array, got {:?}",
                    s.table,
                    s.piece,
                    s.bags.len(),
                    a.shape()
                )));
            }
            held.push(a);
        }
        for (t, tp) in router.plan.tables.iter().enumerate() {
            let mine: Vec<usize> = (0..self.subs.len()).filter(|&k| self.subs[k].table == t).collect();
            if matches!(tp.split, Split::Row | Split::TableRow) {
                let offs: Vec<Vec<usize>> = mine.iter().map(|&k| self.subs[k].offsets.iter().map(|&o| o as usize).collect()).collect();
                let parts: Vec<(&[usize], &[f32])> = mine
                    .iter()
                    .zip(&offs)
                    .map(|(&k, o)| (o.as_slice(), held[k].as_slice().expect("checked contiguous")))
                    .collect();
                shard::merge_rows(&layout, t, dims[t], self.mode, &self.offsets[t], &parts, &mut out);
            } else {
                for &k in &mine {
                    let s = &self.subs[k];
                    shard::place(tp, &layout, t, s.piece, &s.bags, held[k].as_slice().expect("checked contiguous"), &mut out);
                }
            }
        }
        Ok(numpy::ndarray::Array2::from_shape_vec((self.batch, layout.stride), out)
            .map_err(|e| PyValueError::new_err(e.to_string()))?
            .into_pyarray(py))
    }
}

/// A buffer cache of equal-size blobs (see `recengine_core::cache`).
#[pyclass(name = "BlobCache", module = "recengine._core", frozen)]
struct PyBlobCache {
    inner: Arc<BlobCache>,
}

fn cache_stats<'py>(py: Python<'py>, st: CacheStats) -> PyResult<Bound<'py, PyDict>> {
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

fn id_list(ids: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
    let x = ints(ids, "ids")?;
    let out: Option<Vec<usize>> = match x.slice() {
        IntSlice::I32(v) => v.iter().map(|&i| usize::try_from(i).ok()).collect(),
        IntSlice::I64(v) => v.iter().map(|&i| usize::try_from(i).ok()).collect(),
    };
    out.ok_or_else(|| PyIndexError::new_err("ids must not be negative"))
}

#[pymethods]
impl PyBlobCache {
    /// A cache of `slots` blobs over the rows of `array` (2-D, any dtype: each row's bytes is
    /// a blob; copied once into the cache's own memory).
    #[staticmethod]
    #[pyo3(signature = (array, slots, policy="inactive_lifo", wait_s=30.0))]
    fn from_array(array: &Bound<'_, PyAny>, slots: usize, policy: &str, wait_s: f64) -> PyResult<PyBlobCache> {
        let a = array
            .cast::<PyArray2<u8>>()
            .map_err(|_| PyTypeError::new_err("the store must be a 2-D uint8 array [blobs, blob_bytes]"))?;
        let ro = a.try_readonly()?;
        let blob = a.shape()[1];
        let bytes = ro.as_slice().map_err(|_| PyValueError::new_err("the store array must be C-contiguous"))?;
        let store = Store::from_bytes(bytes).py_err()?;
        Self::build(store, blob, slots, policy, wait_s)
    }

    /// A cache over `num_blobs` blobs of `blob_bytes` at `offset` of the file `path`,
    /// memory-mapped read-only (blobs are paged in from disk when missed).
    #[staticmethod]
    #[pyo3(signature = (path, num_blobs, blob_bytes, slots, policy="inactive_lifo", offset=0, wait_s=30.0))]
    fn from_file(path: &str, num_blobs: usize, blob_bytes: usize, slots: usize, policy: &str, offset: usize, wait_s: f64) -> PyResult<PyBlobCache> {
        let len = num_blobs.checked_mul(blob_bytes).ok_or_else(|| PyValueError::new_err("num_blobs x blob_bytes overflows"))?;
        let store = Store::map_file(path, offset, len).py_err()?;
        Self::build(store, blob_bytes, slots, policy, wait_s)
    }

    /// A cache of `slots` rows of `table` (shared, not copied: a memory-mapped table stays
    /// on disk until rows are missed).
    #[staticmethod]
    #[pyo3(signature = (table, slots, policy="inactive_lifo", wait_s=30.0))]
    fn from_table(table: &Bound<'_, PyTable>, slots: usize, policy: &str, wait_s: f64) -> PyResult<PyBlobCache> {
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
        let slots = py.detach(move || cache.fetch(&ids)).py_err()?;
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
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
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
    fn build(store: Store, blob: usize, slots: usize, policy: &str, wait_s: f64) -> PyResult<PyBlobCache> {
        if !(wait_s.is_finite() && wait_s >= 0.0) {
            return Err(PyValueError::new_err(format!("wait_s must be >= 0, got {wait_s}")));
        }
        let policy = CachePolicy::parse(policy).py_err()?;
        let inner = BlobCache::new(store, blob, slots, policy, std::time::Duration::from_secs_f64(wait_s)).py_err()?;
        Ok(PyBlobCache { inner: Arc::new(inner) })
    }
}

/// The cache's bookkeeping alone, for callers that move the data themselves (GPU slots).
#[pyclass(name = "CacheDirectory", module = "recengine._core", frozen)]
struct PyCacheDirectory {
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
    #[pyo3(signature = (slots, num_ids, policy="inactive_lifo"))]
    fn new(slots: usize, num_ids: usize, policy: &str) -> PyResult<Self> {
        let policy = CachePolicy::parse(policy).py_err()?;
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
            None => Err(PyValueError::new_err("other batches pin the slots this batch needs; release them first")),
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
fn simulate_cache<'py>(py: Python<'py>, policy: &str, slots: usize, num_ids: usize, trace: Vec<Vec<usize>>) -> PyResult<Bound<'py, PyDict>> {
    let policy = CachePolicy::parse(policy).py_err()?;
    let st = py.detach(|| cache::simulate(policy, slots, num_ids, &trace)).py_err()?;
    cache_stats(py, st)
}

/// A DDR4 configuration from a dict of the fields of `dram::Config` and `dram::Timing` (missing
/// ones keep their defaults; unknown ones are an error).
fn dram_config(cfg: Option<&Bound<'_, PyDict>>) -> PyResult<dram::Config> {
    let mut c = dram::Config::default();
    let Some(d) = cfg else { return Ok(c) };
    for (k, v) in d.iter() {
        let key: String = k.extract()?;
        let t = &mut c.timing;
        match key.as_str() {
            "channels" => c.channels = v.extract()?,
            "dimms_per_channel" => c.dimms_per_channel = v.extract()?,
            "ranks_per_dimm" => c.ranks_per_dimm = v.extract()?,
            "bank_groups" => c.bank_groups = v.extract()?,
            "banks_per_group" => c.banks_per_group = v.extract()?,
            "row_bytes" => c.row_bytes = v.extract()?,
            "line_bytes" => c.line_bytes = v.extract()?,
            "queue_depth" => c.queue_depth = v.extract()?,
            "tck_ns" => t.tck_ns = v.extract()?,
            "cl" => t.cl = v.extract()?,
            "trcd" => t.trcd = v.extract()?,
            "trp" => t.trp = v.extract()?,
            "tras" => t.tras = v.extract()?,
            "trtp" => t.trtp = v.extract()?,
            "tccd_s" => t.tccd_s = v.extract()?,
            "tccd_l" => t.tccd_l = v.extract()?,
            "trrd_s" => t.trrd_s = v.extract()?,
            "trrd_l" => t.trrd_l = v.extract()?,
            "tfaw" => t.tfaw = v.extract()?,
            "tbl" => t.tbl = v.extract()?,
            "trtrs" => t.trtrs = v.extract()?,
            _ => return Err(PyValueError::new_err(format!("unknown DRAM setting {key:?}"))),
        }
    }
    c.check().py_err()?;
    Ok(c)
}

/// Command traces as int64 arrays `[n, 6]`: cycle, kind (0 ACT, 1 RD, 2 PRE), rank, bank
/// group, bank, row.
fn trace_array<'py>(py: Python<'py>, tr: &[dram::Command]) -> PyResult<Bound<'py, PyArray2<i64>>> {
    let kind = |k: dram::Kind| match k {
        dram::Kind::Act => 0,
        dram::Kind::Rd => 1,
        dram::Kind::Pre => 2,
    };
    let flat: Vec<i64> = tr
        .iter()
        .flat_map(|c| [c.cycle as i64, kind(c.kind), c.rank as i64, c.bank_group as i64, c.bank as i64, c.row as i64])
        .collect();
    Ok(numpy::ndarray::Array2::from_shape_vec((tr.len(), 6), flat)
        .map_err(|e| PyValueError::new_err(e.to_string()))?
        .into_pyarray(py))
}

/// Emulate the memory system serving 64-byte line reads at byte addresses `addrs` (in arrival
/// order): per channel a dict of reads, activates, precharges, row_hits and finish (cycles),
/// and with `trace` each channel's command trace.
#[pyfunction]
#[pyo3(signature = (addrs, config=None, trace=false))]
#[allow(clippy::type_complexity)]
fn dram_run<'py>(
    py: Python<'py>,
    addrs: &Bound<'py, PyAny>,
    config: Option<&Bound<'py, PyDict>>,
    trace: bool,
) -> PyResult<(Vec<Bound<'py, PyDict>>, Vec<Bound<'py, PyArray2<i64>>>)> {
    let cfg = dram_config(config)?;
    let a = ints(addrs, "addrs")?;
    let addrs: Vec<u64> = match a.slice() {
        IntSlice::I32(v) => v.iter().map(|&x| u64::try_from(x)).collect::<Result<_, _>>(),
        IntSlice::I64(v) => v.iter().map(|&x| u64::try_from(x)).collect::<Result<_, _>>(),
    }
    .map_err(|_| PyValueError::new_err("addresses must not be negative"))?;
    let (stats, traces) = py.detach(|| dram::run(&cfg, &addrs, trace)).py_err()?;
    let dicts = stats
        .iter()
        .map(|s| {
            let d = PyDict::new(py);
            d.set_item("reads", s.reads)?;
            d.set_item("activates", s.activates)?;
            d.set_item("precharges", s.precharges)?;
            d.set_item("row_hits", s.row_hits)?;
            d.set_item("finish", s.finish)?;
            Ok(d)
        })
        .collect::<PyResult<Vec<_>>>()?;
    let arrays = traces.iter().map(|t| trace_array(py, t)).collect::<PyResult<Vec<_>>>()?;
    Ok((dicts, arrays))
}

/// Check one channel's command trace (an `[n, 6]` array as `dram_run` gives) against every
/// timing constraint: ValueError naming the first violation.
#[pyfunction]
#[pyo3(signature = (trace, config=None))]
fn dram_validate(trace: PyReadonlyArray2<'_, i64>, config: Option<&Bound<'_, PyDict>>) -> PyResult<()> {
    let cfg = dram_config(config)?;
    let a = trace.as_array();
    if a.ncols() != 6 {
        return Err(PyValueError::new_err("a trace is an [n, 6] array"));
    }
    let cmds = a
        .rows()
        .into_iter()
        .map(|r| {
            let kind = match r[1] {
                0 => dram::Kind::Act,
                1 => dram::Kind::Rd,
                2 => dram::Kind::Pre,
                k => return Err(PyValueError::new_err(format!("unknown command kind {k}"))),
            };
            let u = |x: i64| usize::try_from(x).map_err(|_| PyValueError::new_err("negative field in a trace"));
            Ok(dram::Command { cycle: r[0] as u64, kind, rank: u(r[2])?, bank_group: u(r[3])?, bank: u(r[4])?, row: r[5] as u64, request: 0 })
        })
        .collect::<PyResult<Vec<_>>>()?;
    if let Some(c) = cmds.iter().find(|c| c.rank >= cfg.ranks_per_channel() || c.bank_group >= cfg.bank_groups || c.bank >= cfg.banks_per_group) {
        return Err(PyValueError::new_err(format!("a command names rank {}, bank group {}, bank {} outside the configuration", c.rank, c.bank_group, c.bank)));
    }
    dram::validate(&cfg, &cmds).py_err()
}

/// Emulate SLS lookups on the host or on RecNMP (see `recengine_core::nmp`): `table_rows`
/// gives each table's rows; `models`, `tables`, `rows`, `bags` one entry per lookup; `config`
/// the DRAM fields (as `dram_run`) plus nmp, vector_bytes, instr_per_packet, cache_bytes,
/// cache_ways, hot_threshold, table_aware, cache_hit_cycles and the energy fields. With
/// `trace`, the dict also holds `commands`: the DRAM command streams (as `dram_run` gives),
/// one per channel on the host and one per rank with NMP.
#[pyfunction]
#[pyo3(signature = (table_rows, models, tables, rows, bags, config=None, trace=false))]
#[allow(clippy::too_many_arguments)]
fn nmp_emulate<'py>(
    py: Python<'py>,
    table_rows: Vec<u64>,
    models: PyReadonlyArray1<'py, i64>,
    tables: PyReadonlyArray1<'py, i64>,
    rows: PyReadonlyArray1<'py, i64>,
    bags: PyReadonlyArray1<'py, i64>,
    config: Option<&Bound<'py, PyDict>>,
    trace: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let mut c = nmp::NmpConfig::default();
    let dram_keys = PyDict::new(py);
    if let Some(d) = config {
        for (k, v) in d.iter() {
            let key: String = k.extract()?;
            let e = &mut c.energy;
            match key.as_str() {
                "nmp" => c.nmp = v.extract()?,
                "vector_bytes" => c.vector_bytes = v.extract()?,
                "instr_per_packet" => c.instr_per_packet = v.extract()?,
                "cache_bytes" => c.cache_bytes = v.extract()?,
                "cache_ways" => c.cache_ways = v.extract()?,
                "hot_threshold" => c.hot_threshold = v.extract()?,
                "table_aware" => c.table_aware = v.extract()?,
                "cache_hit_cycles" => c.cache_hit_cycles = v.extract()?,
                "act_pj" => e.act_pj = v.extract()?,
                "rd_pj" => e.rd_pj = v.extract()?,
                "pre_pj" => e.pre_pj = v.extract()?,
                "io_pj_per_bit" => e.io_pj_per_bit = v.extract()?,
                "background_mw_per_rank" => e.background_mw_per_rank = v.extract()?,
                "nmp_add_pj" => e.nmp_add_pj = v.extract()?,
                "cache_read_pj" => e.cache_read_pj = v.extract()?,
                "cache_write_pj" => e.cache_write_pj = v.extract()?,
                _ => dram_keys.set_item(k, v)?,
            }
        }
    }
    c.dram = dram_config(Some(&dram_keys))?;
    let (m, t, r, b) = (models.as_slice()?, tables.as_slice()?, rows.as_slice()?, bags.as_slice()?);
    let n = m.len();
    if t.len() != n || r.len() != n || b.len() != n {
        return Err(PyValueError::new_err("models, tables, rows and bags need one entry per lookup"));
    }
    let neg = || PyIndexError::new_err("models, tables, rows and bags must not be negative");
    let lookups = (0..n)
        .map(|i| {
            Ok(nmp::Lookup {
                model: u32::try_from(m[i]).map_err(|_| neg())?,
                table: u32::try_from(t[i]).map_err(|_| neg())?,
                row: u64::try_from(r[i]).map_err(|_| neg())?,
                bag: u64::try_from(b[i]).map_err(|_| neg())?,
            })
        })
        .collect::<PyResult<Vec<_>>>()?;
    let (rep, commands) = py.detach(|| nmp::emulate_traced(&c, &table_rows, &lookups, trace)).py_err()?;
    let d = PyDict::new(py);
    d.set_item("lookups", rep.lookups)?;
    d.set_item("cycles", rep.cycles)?;
    d.set_item("latency_ns", rep.cycles as f64 * c.dram.timing.tck_ns)?;
    d.set_item("dram_reads", rep.dram_reads)?;
    d.set_item("activates", rep.activates)?;
    d.set_item("precharges", rep.precharges)?;
    d.set_item("row_hits", rep.row_hits)?;
    d.set_item("cache_hits", rep.cache_hits)?;
    d.set_item("cache_accesses", rep.cache_accesses)?;
    d.set_item("channel_bytes", rep.channel_bytes)?;
    d.set_item("energy_pj", rep.energy_pj)?;
    if trace {
        let arrays = commands.iter().map(|t| trace_array(py, t)).collect::<PyResult<Vec<_>>>()?;
        d.set_item("commands", arrays)?;
    }
    Ok(d)
}

/// Borrow `t` tables' requests from per-table Python lists (each list given has one entry per
/// table).
fn requests<'py>(
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
fn per_table(t: usize, args: &[(&str, Option<usize>)]) -> PyResult<()> {
    for &(what, n) in args {
        if let Some(n) = n.filter(|&n| n != t) {
            return Err(PyValueError::new_err(format!("{what} has {n} entries for {t} tables")));
        }
    }
    Ok(())
}

/// Pool several tables' borrowed requests into one `[B, sum(dims)]` array.
fn pool_requests<'py>(
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
    let widened: Vec<Option<Vec<i64>>> = slices
        .iter()
        .map(|s| match s {
            IntSlice::I32(x) => Some(x.iter().map(|&i| i64::from(i)).collect()),
            IntSlice::I64(_) => None,
        })
        .collect();
    let s64: Vec<&[i64]> = slices
        .iter()
        .zip(&widened)
        .map(|(s, w)| match s {
            IntSlice::I64(x) => x,
            IntSlice::I32(_) => w.as_deref().expect("widened above"),
        })
        .collect();
    pool_into_new(py, views, &s64, offs, &ws, modes, pads)
}

/// A table borrowed from a numpy array without a copy: float32 or float16 rows, or raw rows
/// of any storage format (uint8 `[num_rows, row_bytes]`, e.g. a bfloat16 tensor's bytes).
enum TableArray<'py> {
    F32(PyReadonlyArray2<'py, f32>),
    F16(PyReadonlyArray2<'py, half::f16>),
    Raw(PyReadonlyArray2<'py, u8>, DType, usize),
}

/// Take `array` as a table: float32/float16 as is, or uint8 raw rows of `dtype` (with `dim`,
/// derived from the row width when it is not given).
fn table_array<'py>(array: &Bound<'py, PyAny>, dtype: Option<&str>, dim: Option<usize>) -> PyResult<TableArray<'py>> {
    fn borrow<'py, T: numpy::Element>(a: &Bound<'py, PyArray2<T>>) -> PyResult<PyReadonlyArray2<'py, T>> {
        if !in_place(a) {
            return Err(PyValueError::new_err("the table array must be C-contiguous and aligned (np.require(a, requirements=\"CA\") makes such a copy)"));
        }
        Ok(a.try_readonly()?)
    }
    let table = if let Ok(a) = array.cast::<PyArray2<u8>>() {
        let name = dtype.ok_or_else(|| {
            PyTypeError::new_err("a uint8 table array holds raw rows: give its storage dtype")
        })?;
        let dt = self::dtype(name)?;
        let row_bytes = a.shape()[1];
        let dim = match dim {
            Some(d) => d,
            None => match dt {
                DType::Fp32 => row_bytes / 4,
                DType::Fp16 | DType::Bf16 => row_bytes / 2,
                DType::Int8 => row_bytes.saturating_sub(8),
                DType::Int4 => row_bytes.saturating_sub(4) * 2,
            },
        };
        if dim == 0 || dt.row_bytes(dim) != row_bytes {
            return Err(PyValueError::new_err(format!(
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
        return Err(PyTypeError::new_err(
            "the table must be a 2-D float32 or float16 numpy array, or uint8 raw rows",
        ));
    };
    if let (Some(name), TableArray::F32(_) | TableArray::F16(_)) = (dtype, &table) {
        let given = if matches!(table, TableArray::F32(_)) { DType::Fp32 } else { DType::Fp16 };
        if self::dtype(name)? != given {
            return Err(PyTypeError::new_err(format!(
                "a {} array cannot hold {name} rows (raw rows come as uint8)",
                given.name()
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
#[pyo3(signature = (array, indices, offsets=None, lengths=None, weights=None, mode="sum", padding_idx=None, include_last_offset=false, dtype=None, dim=None, huge_pages=false))]
#[allow(clippy::too_many_arguments)]
fn pool_array<'py>(
    py: Python<'py>,
    array: &Bound<'py, PyAny>,
    indices: &Bound<'py, PyAny>,
    offsets: Option<&Bound<'py, PyAny>>,
    lengths: Option<&Bound<'py, PyAny>>,
    weights: Option<&Bound<'py, PyAny>>,
    mode: &str,
    padding_idx: Option<i64>,
    include_last_offset: bool,
    dtype: Option<&str>,
    dim: Option<usize>,
    huge_pages: bool,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let table = table_array(array, dtype, dim)?;
    let req = request(indices, offsets, lengths, weights, include_last_offset)?;
    // Only a prefetch hint: a wrong flag changes speed, never results.
    let view = TableView { huge_pages, ..table.view() };
    lookup_one(py, view, &req, mode, padding_idx)
}

/// The per-value weights of a keyed call, checked to hold one float per value.
fn keyed_weights<'py>(weights: Option<&Bound<'py, PyAny>>, n: usize) -> PyResult<Option<numpy::PyReadonlyArrayDyn<'py, f32>>> {
    let weights = weights.map(|w| floats(w, "weights")).transpose()?;
    if let Some(len) = weights.as_ref().map(|w| w.as_slice().expect("checked contiguous").len()) {
        if len != n {
            return Err(PyValueError::new_err(format!("weights has {len} entries for {n} values")));
        }
    }
    Ok(weights)
}

/// Where each key's ids start in the flat `values` (`num_keys + 1` entries) and each slot's
/// bag boundaries, from TorchRec-style `lengths` `[num_keys * batch]` (checked).
#[allow(clippy::type_complexity)]
fn keyed_layout(slots: &[usize], n: usize, lengths: &Ints<'_>, batch: usize) -> PyResult<(Vec<usize>, Vec<Vec<usize>>)> {
    let num_lengths = lengths.slice().len();
    // With batch 0 there are no lengths: every key the slots name exists, empty.
    let num_keys = num_lengths.checked_div(batch).unwrap_or_else(|| slots.iter().max().map_or(0, |&m| m + 1));
    if num_lengths != num_keys * batch {
        return Err(PyValueError::new_err(format!(
            "{num_lengths} lengths do not split into keys of batch {batch}"
        )));
    }
    if let Some(&bad) = slots.iter().find(|&&k| k >= num_keys) {
        return Err(PyValueError::new_err(format!("key {bad} is not one of the {num_keys} keys")));
    }
    let mut starts = Vec::with_capacity(num_keys + 1);
    let mut total = 0u64;
    starts.push(0usize);
    for k in 0..num_keys {
        let r = k * batch..(k + 1) * batch;
        let sum = match lengths.slice() {
            IntSlice::I32(l) => l[r].iter().try_fold(0u64, |a, &x| u64::try_from(x).ok().map(|x| a + x)),
            IntSlice::I64(l) => l[r].iter().try_fold(0u64, |a, &x| u64::try_from(x).ok().map(|x| a + x)),
        }
        .ok_or_else(|| PyValueError::new_err(format!("key {k} has a negative length")))?;
        total = total.saturating_add(sum);
        if total > n as u64 {
            return Err(PyValueError::new_err(format!("the lengths of key {k} run past the {n} values")));
        }
        starts.push(total as usize);
    }
    if total != n as u64 {
        return Err(PyValueError::new_err(format!("the lengths sum to {total} but there are {n} values")));
    }
    let offs = slots
        .iter()
        .map(|&k| {
            let r = k * batch..(k + 1) * batch;
            let count = starts[k + 1] - starts[k];
            match lengths.slice() {
                IntSlice::I32(l) => bag_offsets(Bags::Lengths(&l[r]), count),
                IntSlice::I64(l) => bag_offsets(Bags::Lengths(&l[r]), count),
            }
        })
        .collect::<recengine_core::Result<Vec<_>>>()
        .py_err()?;
    Ok((starts, offs))
}

/// The backward of [`KeyedTables::pool`]: `grad` is the output's gradient `[batch, sum of the
/// blocks' dims]`; block `j` (key `slots[j]`, table `tables[j]` of `num_rows[tables[j]]` rows
/// and dim `dims[tables[j]]`) adds its gradient into `outs[tables[j]]` (float32
/// `[num_rows, dim]`, dense) when that is given, else returns its sparse gradient (rows and
/// values per lookup) in the result's entry `j`.
#[pyfunction]
#[pyo3(signature = (grad, tables, slots, num_rows, dims, values, lengths, batch, modes, outs, weights=None, accumulate=None))]
#[allow(clippy::too_many_arguments)]
fn pool_keyed_backward<'py>(
    py: Python<'py>,
    grad: &Bound<'py, PyAny>,
    tables: Vec<usize>,
    slots: Vec<usize>,
    num_rows: Vec<usize>,
    dims: Vec<usize>,
    values: &Bound<'py, PyAny>,
    lengths: &Bound<'py, PyAny>,
    batch: usize,
    modes: Vec<String>,
    outs: Vec<Option<Bound<'py, PyAny>>>,
    weights: Option<&Bound<'py, PyAny>>,
    accumulate: Option<Vec<String>>,
) -> PyResult<Vec<Option<SparseGrad<'py>>>> {
    let t = num_rows.len();
    if dims.len() != t || modes.len() != t || outs.len() != t {
        return Err(PyValueError::new_err(format!("dims, modes and outs need one entry per table ({t})")));
    }
    let accumulate = match accumulate {
        None => vec![DType::Fp32; t],
        Some(a) if a.len() == t => a.iter().map(|d| DType::parse(d)).collect::<recengine_core::Result<Vec<_>>>().py_err()?,
        Some(_) => return Err(PyValueError::new_err(format!("accumulate needs one dtype per table ({t})"))),
    };
    if tables.len() != slots.len() || tables.iter().any(|&x| x >= t) {
        return Err(PyValueError::new_err("tables and slots need one entry per block, naming known tables"));
    }
    let g = grad
        .cast::<PyArray2<f32>>()
        .map_err(|_| PyTypeError::new_err("grad must be a 2-D float32 array"))?;
    let stride: usize = tables.iter().map(|&x| dims[x]).sum();
    if !in_place(g) || g.shape() != [batch, stride] {
        return Err(PyValueError::new_err(format!(
            "grad must be a C-contiguous, aligned [{batch}, {stride}] array, got shape {:?}",
            g.shape()
        )));
    }
    let g = g.try_readonly()?;
    let gs = g.as_slice().expect("checked contiguous");
    let modes = modes.iter().map(|m| Mode::parse(m)).collect::<recengine_core::Result<Vec<_>>>().py_err()?;
    let values = ints_1d(values, "values")?;
    let lengths = ints_1d(lengths, "lengths")?;
    let n = values.slice().len();
    let weights = keyed_weights(weights, n)?;
    let w_all = weights.as_ref().map(|w| w.as_slice().expect("checked contiguous"));
    let (starts, offs) = keyed_layout(&slots, n, &lengths, batch)?;
    let mut dense = Vec::with_capacity(t);
    for (i, o) in outs.iter().enumerate() {
        dense.push(match o {
            None => None,
            Some(o) => {
                let a = o
                    .cast::<PyArray2<f32>>()
                    .map_err(|_| PyTypeError::new_err("outs must hold float32 [num_rows, dim] arrays"))?;
                if a.shape() != [num_rows[i], dims[i]] || !in_place(a) {
                    return Err(PyValueError::new_err(format!(
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
    let plans = py
        .detach(|| {
            backward::plans(tables.len(), n, |j| {
                let (ti, ids) = (tables[j], starts[slots[j]]..starts[slots[j] + 1]);
                let w = w_all.map(|w| &w[ids.clone()]);
                let (rows, dim, mode) = (num_rows[ti], dims[ti], modes[ti]);
                let acc = accumulate[ti];
                match (idx, sorted[j]) {
                    (IntSlice::I32(v), true) => Plan::new_as(rows, dim, &v[ids], &offs[j], w, mode, None, acc),
                    (IntSlice::I64(v), true) => Plan::new_as(rows, dim, &v[ids], &offs[j], w, mode, None, acc),
                    (IntSlice::I32(v), false) => Plan::unsorted(rows, dim, &v[ids], &offs[j], w, mode, None)?.accumulate_as(acc),
                    (IntSlice::I64(v), false) => Plan::unsorted(rows, dim, &v[ids], &offs[j], w, mode, None)?.accumulate_as(acc),
                }
            })
        })
        .py_err()?;
    let view = |j: usize| Grad { data: gs, stride, col: cols[j] };
    // Dense blocks one after another (blocks of one table add into one buffer).
    for (j, plan) in plans.iter().enumerate() {
        if let Some(out) = dense[tables[j]].as_mut() {
            let os = out.as_slice_mut().expect("checked contiguous");
            py.detach(|| plan.add_dense(view(j), os)).py_err()?;
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
    py.detach(|| backward::gather_all(jobs)).py_err()?;
    Ok(result)
}

/// Pool keyed jagged ids (TorchRec's layout) for one batch in one call.
///
/// `values` holds the ids of `num_keys` keys, key-major, and `lengths[k * batch + b]` is how
/// many ids key `k` has for sample `b`. Output block `j` pools key `slots[j]` with table
/// `views[tables[j]]` by `modes[tables[j]]`; the output is `[batch, sum of the blocks' dims]`,
/// blocks side by side in order.
#[allow(clippy::too_many_arguments)]
fn pool_keyed_views<'py>(
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
    let (starts, offs) = keyed_layout(slots, n, &lengths, batch)?;
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
struct HeldWeight {
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
struct KeyedTables {
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
        dtypes: Vec<String>,
        modes: Vec<String>,
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
        let modes = modes.iter().map(|m| Mode::parse(m)).collect::<recengine_core::Result<Vec<_>>>().py_err()?;
        let held = weights
            .into_iter()
            .zip(aliases)
            .zip(&dtypes)
            .zip(huge)
            .map(|(((weight, alias), dt), huge_pages)| {
                let dtype = self::dtype(dt)?;
                if !matches!(dtype, DType::Fp32 | DType::Fp16 | DType::Bf16) {
                    return Err(PyTypeError::new_err(format!("a torch weight cannot hold {dt} rows")));
                }
                let element = if dtype == DType::Fp32 { 4 } else { 2 };
                let contiguous: bool = alias.call_method0("is_contiguous")?.extract()?;
                let (rows, dim): (usize, usize) = alias.getattr("shape")?.extract()?;
                let size: usize = alias.call_method0("element_size")?.extract()?;
                let ptr: usize = alias.call_method0("data_ptr")?.extract()?;
                let same: usize = weight.call_method0("data_ptr")?.extract()?;
                if !contiguous || size != element || ptr != same || (ptr == 0 && rows > 0) {
                    return Err(PyValueError::new_err(format!(
                        "each weight must be a C-contiguous 2-D {dt} CPU tensor with its alias"
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
            return Err(PyValueError::new_err("tables and slots need one entry per output block (at least one)"));
        }
        if let Some(&bad) = tables.iter().find(|&&x| x >= t) {
            return Err(PyValueError::new_err(format!("table {bad} is not one of the {t} tables")));
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

/// A sparse gradient: `(rows [K] int64, values [K, D])`, one per non-padding lookup.
type SparseGrad<'py> = (Bound<'py, PyArray1<i64>>, Bound<'py, PyArray2<f32>>);

/// The backward of a pooling call: the table's gradient from the output's gradient `grad`
/// `[B, D]`. With `out` (float32 `[num_rows, D]`) it is added there (dense); without, the
/// sparse gradient comes back: each non-padding lookup's row and scaled output gradient, in
/// lookup order (torch's uncoalesced layout).
#[pyfunction]
#[pyo3(signature = (grad, num_rows, indices, offsets=None, lengths=None, weights=None, mode="sum", padding_idx=None, include_last_offset=false, out=None, accumulate="fp32"))]
#[allow(clippy::too_many_arguments)]
fn pool_backward<'py>(
    py: Python<'py>,
    grad: &Bound<'py, PyAny>,
    num_rows: usize,
    indices: &Bound<'py, PyAny>,
    offsets: Option<&Bound<'py, PyAny>>,
    lengths: Option<&Bound<'py, PyAny>>,
    weights: Option<&Bound<'py, PyAny>>,
    mode: &str,
    padding_idx: Option<i64>,
    include_last_offset: bool,
    out: Option<&Bound<'py, PyAny>>,
    accumulate: &str,
) -> PyResult<Option<SparseGrad<'py>>> {
    let accumulate = DType::parse(accumulate).py_err()?;
    let g = grad
        .cast::<PyArray2<f32>>()
        .map_err(|_| PyTypeError::new_err("grad must be a 2-D float32 array [B, D]"))?;
    if !in_place(g) {
        return Err(PyValueError::new_err("grad must be C-contiguous and aligned"));
    }
    let dim = g.shape()[1];
    let g = g.try_readonly()?;
    let gs = g.as_slice().expect("checked contiguous");
    let req = request(indices, offsets, lengths, weights, include_last_offset)?;
    let mode = Mode::parse(mode).py_err()?;
    let offs = req.offsets().py_err()?;
    let w = req.weights();
    let idx = req.indices.slice();
    let dense = out.is_some();
    let (pad, acc) = (padding_idx, accumulate);
    let plan = py
        .detach(|| match (idx, dense) {
            (IntSlice::I32(s), true) => Plan::new_as(num_rows, dim, s, &offs, w, mode, pad, acc),
            (IntSlice::I64(s), true) => Plan::new_as(num_rows, dim, s, &offs, w, mode, pad, acc),
            (IntSlice::I32(s), false) => Plan::unsorted(num_rows, dim, s, &offs, w, mode, pad)?.accumulate_as(acc),
            (IntSlice::I64(s), false) => Plan::unsorted(num_rows, dim, s, &offs, w, mode, pad)?.accumulate_as(acc),
        })
        .py_err()?;
    if let Some(out) = out {
        let o = out
            .cast::<PyArray2<f32>>()
            .map_err(|_| PyTypeError::new_err("out must be a 2-D float32 array [num_rows, D]"))?;
        if o.shape() != [num_rows, dim] || !in_place(o) {
            return Err(PyValueError::new_err(format!(
                "out must be a C-contiguous, aligned [{num_rows}, {dim}] array, got shape {:?}",
                o.shape()
            )));
        }
        let mut rw = o.try_readwrite()?;
        let os = rw.as_slice_mut().expect("checked contiguous");
        py.detach(|| plan.add_dense(Grad::dense(gs, dim), os)).py_err()?;
        return Ok(None);
    }
    let rows = PyArray1::from_vec(py, plan.rows());
    // `gather` writes every value (one row per lookup) before Python sees the array; on error
    // the array is dropped unread.
    let values = arrays::new_array::<f32, 2>(py, [plan.len(), dim])?;
    {
        let mut rw = values.readwrite();
        let vs = rw.as_slice_mut().expect("a new array is contiguous");
        py.detach(|| plan.gather(Grad::dense(gs, dim), vs)).py_err()?;
    }
    Ok(Some((rows, values)))
}

fn check_dim(dim: usize) -> PyResult<()> {
    if dim == 0 {
        return Err(PyValueError::new_err("an embedding table needs dim >= 1, got 0"));
    }
    Ok(())
}

#[pyfunction]
fn safetensors_names(py: Python<'_>, path: &str) -> PyResult<Vec<String>> {
    py.detach(|| Table::safetensors_names(path)).py_err()
}

#[pyfunction]
fn set_num_threads(n: usize) -> PyResult<()> {
    recengine_core::parallel::set_num_threads(n).py_err()
}

#[pyfunction]
fn get_num_threads() -> usize {
    recengine_core::parallel::num_threads()
}

#[pyfunction]
fn set_thread_pool(mode: &str) -> PyResult<()> {
    let parsed = openmp::PoolMode::parse(mode)
        .ok_or_else(|| PyValueError::new_err(format!("unknown thread pool {mode:?}; expected auto, torch or own")))?;
    openmp::set_mode(parsed).py_err()
}

#[pyfunction]
fn get_thread_pool() -> (&'static str, &'static str, Option<String>) {
    let library = openmp::team().map(|t| t.library.clone());
    (openmp::mode().name(), recengine_core::parallel::pool_in_use(), library)
}

/// The kernels' prefetch distance in lookups, after setting it when `distance` is given
/// (negative: the default again). A tuning aid; `RECENGINE_PREFETCH_DISTANCE` sets it at start.
#[pyfunction]
#[pyo3(signature = (distance=None))]
fn prefetch_distance(distance: Option<i64>) -> usize {
    if let Some(d) = distance {
        recengine_core::kernel::set_prefetch_distance(usize::try_from(d).ok());
    }
    recengine_core::kernel::prefetch_distance()
}

#[pyfunction]
fn simd_level() -> &'static str {
    simd::level().name()
}

#[pyfunction]
fn available_simd_levels() -> Vec<&'static str> {
    simd::available_levels().into_iter().map(simd::Level::name).collect()
}

#[pyfunction]
#[pyo3(signature = (level=None))]
fn set_simd_level(level: Option<&str>) -> PyResult<()> {
    let parsed = match level {
        None => None,
        Some(name) => Some(simd::Level::parse(name).ok_or_else(|| {
            PyValueError::new_err(format!("unknown SIMD level {name:?}; expected avx512, avx2 or scalar"))
        })?),
    };
    simd::set_level(parsed).map_err(PyValueError::new_err)
}

#[pyfunction]
fn build_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
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
fn gather_probe(py: Python<'_>, table: &Bound<'_, PyTable>, indices: &Bound<'_, PyAny>, repeats: usize) -> PyResult<f64> {
    let idx = ints(indices, "indices")?;
    let t = table.get().inner.clone();
    let s = idx.slice();
    py.detach(|| match s {
        IntSlice::I32(x) => probe::gather_probe(&t.view()?, x, repeats),
        IntSlice::I64(x) => probe::gather_probe(&t.view()?, x, repeats),
    })
    .py_err()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<PyTable>()?;
    m.add_class::<PyCollection>()?;
    m.add_class::<KeyedTables>()?;
    m.add_class::<PyShardedCollection>()?;
    m.add_class::<PyRouter>()?;
    m.add_class::<PyRouted>()?;
    m.add_class::<PyBlobCache>()?;
    m.add_class::<PyCacheDirectory>()?;
    m.add_function(wrap_pyfunction!(dram_run, m)?)?;
    m.add_function(wrap_pyfunction!(dram_validate, m)?)?;
    m.add_function(wrap_pyfunction!(nmp_emulate, m)?)?;
    m.add_function(wrap_pyfunction!(simulate_cache, m)?)?;
    m.add_function(wrap_pyfunction!(pool_array, m)?)?;
    m.add_function(wrap_pyfunction!(pool_keyed_backward, m)?)?;
    m.add_function(wrap_pyfunction!(pool_backward, m)?)?;
    m.add_function(wrap_pyfunction!(safetensors_names, m)?)?;
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
