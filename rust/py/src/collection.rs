//! `Collection`: several tables pooled for one batch in one call.

use crate::prelude::*;

/// Several tables pooled for one batch in one call.
#[pyclass(name = "Collection", module = "recengine._core", frozen)]
pub(crate) struct PyCollection {
    tables: Vec<Arc<Table>>,
}

#[pymethods]
impl PyCollection {
    #[new]
    fn new(tables: Vec<Bound<'_, PyTable>>) -> PyResult<PyCollection> {
        if tables.is_empty() {
            return Err(value_error("a collection needs at least one table"));
        }
        Ok(PyCollection { tables: tables.iter().map(|t| t.get().inner.clone()).collect() })
    }

    #[getter]
    fn dims(&self) -> Vec<usize> {
        self.tables.iter().map(|t| t.dim()).collect()
    }

    #[pyo3(signature = (indices, offsets=None, lengths=None, weights=None, mode=Opt(Mode::Sum), include_last_offset=false))]
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
        let t = self.tables.len();
        let mode = mode.0;
        let reqs = requests(t, &indices, offsets.as_ref(), lengths.as_ref(), weights.as_ref(), include_last_offset)?;
        let views = self.tables.iter().map(|t| t.view()).collect::<recengine_core::Result<Vec<TableView<'_>>>>().py_err()?;
        pool_requests(py, &views, &reqs, &vec![mode; t], &vec![None; t])
    }
}

/// Add this file's classes and functions to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyCollection>()?;
    Ok(())
}
