//! Path ORAM (`recengine_core::oram`): `Oram`, a table's rows behind an ORAM.

use std::sync::Mutex;

use crate::prelude::*;
use recengine_core::oram::OramTable;

/// A table's rows copied into a Path ORAM (see `recengine_core::oram`).
#[pyclass(name = "Oram", module = "recengine._core", frozen)]
pub(crate) struct PyOram {
    inner: Mutex<OramTable>,
}

impl PyOram {
    fn with<T>(&self, f: impl FnOnce(&mut OramTable) -> T) -> T {
        // A panic cannot leave the ORAM half-written (an access either finishes or errors
        // before it moves blocks), so a poisoned lock is still a sound ORAM.
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }
}

#[pymethods]
impl PyOram {
    #[new]
    fn new(py: Python<'_>, table: &PyTable, seed: u64) -> PyResult<PyOram> {
        let view = table.inner.view().py_err()?;
        let t = detach(py, || OramTable::new(view, seed))?;
        Ok(PyOram { inner: Mutex::new(t) })
    }

    /// The plain lookup's output, each row fetched through the ORAM in lookup order.
    #[pyo3(signature = (indices, offsets=None, lengths=None, weights=None, mode=Opt(Mode::Sum), include_last_offset=false))]
    #[allow(clippy::too_many_arguments)]
    fn lookup<'py>(
        &self,
        py: Python<'py>,
        indices: &Bound<'py, PyAny>,
        offsets: Option<&Bound<'py, PyAny>>,
        lengths: Option<&Bound<'py, PyAny>>,
        weights: Option<&Bound<'py, PyAny>>,
        mode: Opt<Mode>,
        include_last_offset: bool,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let req = request(indices, offsets, lengths, weights, include_last_offset)?;
        let offs = req.offsets().py_err()?;
        let dim = self.with(|t| t.dim());
        let out = arrays::new_array::<f32, 2>(py, [offs.len() - 1, dim])?;
        {
            let mut rw = out.readwrite();
            let s = rw.as_slice_mut().expect("a new array is contiguous");
            let w = req.weights();
            match req.indices.slice() {
                IntSlice::I32(i) => detach(py, || self.with(|t| t.lookup(i, offs, w, mode.0, s)))?,
                IntSlice::I64(i) => detach(py, || self.with(|t| t.lookup(i, offs, w, mode.0, s)))?,
            }
        }
        Ok(out)
    }

    /// Start (True) or stop (False) recording the paths lookups read.
    fn record(&self, on: bool) {
        self.with(|t| t.record(on))
    }

    /// The paths read since the last call: `(trees, leaves)`, uint8 and uint32 arrays, tree 0
    /// the rows' ORAM and 1, 2 ... its position maps'.
    fn take_trace<'py>(&self, py: Python<'py>) -> (Bound<'py, PyArray1<u8>>, Bound<'py, PyArray1<u32>>) {
        let t = self.with(|t| t.take_trace());
        let trees: Vec<u8> = t.iter().map(|p| p.tree).collect();
        let leaves: Vec<u32> = t.iter().map(|p| p.leaf).collect();
        (trees.into_pyarray(py), leaves.into_pyarray(py))
    }

    #[getter]
    fn num_rows(&self) -> usize {
        self.with(|t| t.num_rows())
    }
    /// Levels of each ORAM's tree, the rows' first.
    #[getter]
    fn levels(&self) -> Vec<u32> {
        self.with(|t| t.oram().levels())
    }
    /// The most blocks each ORAM's stash held after a write-back, the rows' first.
    #[getter]
    fn stash_max(&self) -> Vec<usize> {
        self.with(|t| t.oram().stash_max())
    }
    /// Bytes the ORAMs hold.
    #[getter]
    fn nbytes(&self) -> usize {
        self.with(|t| t.oram().nbytes())
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyOram>()?;
    m.add("ORAM_BUCKET", recengine_core::oram::Z)?;
    m.add("ORAM_STASH_LIMIT", recengine_core::oram::STASH_LIMIT)?;
    Ok(())
}
