//! Sharded tables: `ShardedCollection` (in process), `Router` and `Routed` (a distributed
//! lookup's routing and merge).

use crate::prelude::*;

/// A plan from Python: `splits[t]` names table `t`'s split and `pieces[t]` lists its pieces as
/// `(shard, row_start, row_end, col_start, col_end)`.
pub(crate) fn plan_from(num_shards: usize, splits: &[Opt<Split>], pieces: &[PlanPieces]) -> PyResult<shard::Plan> {
    if splits.len() != pieces.len() {
        return Err(value_error("splits and pieces need one entry per table"));
    }
    let tables = splits
        .iter()
        .zip(pieces)
        .map(|(split, ps)| {
            Ok(TablePlan {
                split: split.0,
                pieces: ps.iter().map(|&(shard, r0, r1, c0, c1)| Piece { shard, rows: r0..r1, cols: c0..c1 }).collect(),
            })
        })
        .collect::<PyResult<Vec<_>>>()?;
    Ok(shard::Plan { num_shards, tables })
}

pub(crate) fn plan_to(plan: &shard::Plan) -> (usize, Vec<String>, Vec<PlanPieces>) {
    let splits = plan.tables.iter().map(|t| t.split.name().to_string()).collect();
    let pieces = plan
        .tables
        .iter()
        .map(|t| t.pieces.iter().map(|p| (p.shard, p.rows.start, p.rows.end, p.cols.start, p.cols.end)).collect())
        .collect();
    (plan.num_shards, splits, pieces)
}

/// One table's pieces as `(shard, row_start, row_end, col_start, col_end)`.
pub(crate) type PlanPieces = Vec<(usize, usize, usize, usize, usize)>;

/// Per-table requests of a sharded call, with int64 indices (int32 ones widened, a copy).
pub(crate) struct Requests<'py> {
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
        let widened = reqs.iter().map(|r| r.indices.slice().widened()).collect();
        Ok(Requests { reqs, widened, offsets })
    }

    fn shard_requests(&self) -> Vec<shard::Request<'_, i64>> {
        self.reqs
            .iter()
            .zip(&self.widened)
            .zip(&self.offsets)
            .map(|((r, w), o)| shard::Request {
                indices: r.indices.slice().as_i64(w),
                offsets: o.clone(),
                weights: r.weights(),
            })
            .collect()
    }
}

/// Tables split over shards by a plan, pooled in process (every piece's share of a batch on
/// the core's threads at once) with the same results as the unsharded collection.
#[pyclass(name = "ShardedCollection", module = "recengine._core", frozen)]
pub(crate) struct PyShardedCollection {
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
        splits: Vec<Opt<Split>>,
        pieces: Vec<PlanPieces>,
    ) -> PyResult<PyShardedCollection> {
        let plan = plan_from(num_shards, &splits, &pieces)?;
        let tables: Vec<Arc<Table>> = tables.iter().map(|t| t.get().inner.clone()).collect();
        let refs: Vec<&Table> = tables.iter().map(|t| t.as_ref()).collect();
        let inner = detach(py, || ShardedCollection::new(plan, &refs))?;
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

    /// Piece `piece` of table `table` (a table of its own).
    fn piece(&self, table: usize, piece: usize) -> PyResult<PyTable> {
        let (t, p) = (table, piece);
        let tp = self.inner.plan().tables.get(t).ok_or_else(|| index_error(format!("no table {t}")))?;
        if p >= tp.pieces.len() {
            return Err(index_error(format!("table {t} has no piece {p}")));
        }
        Ok(PyTable { inner: self.inner.piece(t, p).clone() })
    }

    #[pyo3(signature = (indices, offsets=None, lengths=None, weights=None, mode=Opt(Mode::Sum), include_last_offset=false))]
    #[allow(clippy::too_many_arguments)]
    fn lookup<'py>(
        &self,
        py: Python<'py>,
        indices: Vec<Bound<'py, PyAny>>,
        offsets: Option<Vec<Bound<'py, PyAny>>>,
        lengths: Option<Vec<Bound<'py, PyAny>>>,
        weights: Option<Vec<Option<Bound<'py, PyAny>>>>,
        mode: Opt<Mode>,
        include_last_offset: bool,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let t = self.inner.dims().len();
        let mode = mode.0;
        let reqs = Requests::take(t, &indices, offsets.as_ref(), lengths.as_ref(), weights.as_ref(), include_last_offset)?;
        let sreqs = reqs.shard_requests();
        let batch = sreqs.first().map_or(0, |r| r.offsets.len() - 1);
        let stride: usize = self.inner.dims().iter().sum();
        let out = detach(py, || self.inner.lookup(&sreqs, mode))?;
        Ok(numpy::ndarray::Array2::from_shape_vec((batch, stride), out)
            .map_err(|e| value_error(e.to_string()))?
            .into_pyarray(py))
    }
}

/// Routing for a distributed sharded lookup: the plan and the tables' shapes, no rows.
#[pyclass(name = "Router", module = "recengine._core", frozen)]
pub(crate) struct PyRouter {
    plan: shard::Plan,
    shapes: Vec<(usize, usize)>,
}

/// One routed batch: each shard's share (`by_shard`) and the merge of the shards' blocks.
#[pyclass(name = "Routed", module = "recengine._core", frozen)]
pub(crate) struct PyRouted {
    subs: Vec<OwnedSub>,
    offsets: Vec<Vec<usize>>,
    mode: Mode,
    batch: usize,
}

pub(crate) struct OwnedSub {
    table: usize,
    piece: usize,
    indices: Vec<i64>,
    offsets: Vec<usize>,
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
        splits: Vec<Opt<Split>>,
        pieces: Vec<PlanPieces>,
    ) -> PyResult<PyRouter> {
        let plan = plan_from(num_shards, &splits, &pieces)?.check(&shapes).py_err()?;
        Ok(PyRouter { plan, shapes })
    }

    fn plan(&self) -> (usize, Vec<String>, Vec<PlanPieces>) {
        plan_to(&self.plan)
    }

    /// Route a batch (arguments as `ShardedCollection.lookup`): indices are checked here.
    #[pyo3(signature = (indices, offsets=None, lengths=None, weights=None, mode=Opt(Mode::Sum), include_last_offset=false))]
    #[allow(clippy::too_many_arguments)]
    fn route<'py>(
        &self,
        py: Python<'py>,
        indices: Vec<Bound<'py, PyAny>>,
        offsets: Option<Vec<Bound<'py, PyAny>>>,
        lengths: Option<Vec<Bound<'py, PyAny>>>,
        weights: Option<Vec<Option<Bound<'py, PyAny>>>>,
        mode: Opt<Mode>,
        include_last_offset: bool,
    ) -> PyResult<PyRouted> {
        let t = self.shapes.len();
        let mode = mode.0;
        let reqs = Requests::take(t, &indices, offsets.as_ref(), lengths.as_ref(), weights.as_ref(), include_last_offset)?;
        let sreqs = reqs.shard_requests();
        let (batch, subs) = detach(py, || {
            let (batch, subs) = shard::route_all(&self.plan, &self.shapes, &sreqs, mode)?;
            let owned = subs
                .into_iter()
                .map(|s| OwnedSub {
                    table: s.table,
                    piece: s.piece,
                    offsets: s.offsets,
                    indices: s.indices.into_owned(),
                    weights: s.weights.map(|w| w.into_owned()),
                    mode: s.mode,
                    bags: s.bags,
                })
                .collect();
            Ok((batch, owned))
        })?;
        Ok(PyRouted { subs, offsets: sreqs.into_iter().map(|r| r.offsets).collect(), mode, batch })
    }
}

/// One shard's share of a routed batch: `(table, piece, indices, offsets, weights, mode)`.
pub(crate) type ShardWork<'py> = (usize, usize, Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i64>>, Option<Bound<'py, PyArray1<f32>>>, &'static str);

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
                PyArray1::from_iter(py, s.offsets.iter().map(|&o| o as i64)),
                s.weights.as_ref().map(|w| PyArray1::from_slice(py, w)),
                s.mode.name(),
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
        let mut held = Vec::with_capacity(self.subs.len());
        for s in &self.subs {
            let block = blocks
                .get_item((s.table, s.piece))?
                .ok_or_else(|| value_error(format!("no block for table {} piece {}", s.table, s.piece)))?;
            let a = block
                .cast::<PyArray2<f32>>()
                .map_err(|_| type_error("each block must be a 2-D float32 array"))?
                .try_readonly()?;
            let width = router.plan.tables[s.table].pieces[s.piece].cols.len();
            if a.shape() != [s.bags.len(), width] || !in_place(&*a) {
                return Err(value_error(format!(
                    "the block of table {} piece {} must be a C-contiguous, aligned [{}, {width}] array, got {:?}",
                    s.table,
                    s.piece,
                    s.bags.len(),
                    a.shape()
                )));
            }
            held.push(a);
        }
        let shares: Vec<shard::Share<'_>> = self
            .subs
            .iter()
            .zip(&held)
            .map(|(s, a)| shard::Share {
                table: s.table,
                piece: s.piece,
                bags: s.bags.clone(),
                offsets: &s.offsets,
                block: a.as_slice().expect("checked contiguous"),
            })
            .collect();
        let out = detach(py, || shard::merge(&router.plan, &dims, self.mode, &self.offsets, self.batch, &shares))?;
        let stride: usize = dims.iter().sum();
        Ok(numpy::ndarray::Array2::from_shape_vec((self.batch, stride), out)
            .map_err(|e| value_error(e.to_string()))?
            .into_pyarray(py))
    }
}

/// Add this file's classes and functions to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyShardedCollection>()?;
    m.add_class::<PyRouter>()?;
    m.add_class::<PyRouted>()?;
    Ok(())
}
