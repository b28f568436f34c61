//! `Table`: an embedding table whose rows live in Rust memory.

use crate::prelude::*;

/// An embedding table whose rows live in Rust memory (owned, or a read-only file mapping).
#[pyclass(name = "Table", module = "recengine._core", frozen)]
pub(crate) struct PyTable {
    pub(crate) inner: Arc<Table>,
}

#[pymethods]
impl PyTable {
    #[staticmethod]
    fn from_array(py: Python<'_>, array: &Bound<'_, PyAny>, dtype: Opt<DType>) -> PyResult<PyTable> {
        let dt = dtype.0;
        let wrong = || type_error("from_array takes a 2-D float32 or float16 numpy array");
        if array.cast::<PyArray2<u8>>().is_ok() {
            return Err(wrong());
        }
        let t = match table_array(array, None, None)? {
            TableArray::F32(a) => {
                let (rows, dim) = (a.shape()[0], a.shape()[1]);
                let s = a.as_slice().expect("checked contiguous");
                detach(py, || Table::from_f32(s, rows, dim, dt))
            }
            TableArray::F16(a) => {
                let (rows, dim) = (a.shape()[0], a.shape()[1]);
                let bits = bytemuck_f16(a.as_slice().expect("checked contiguous"));
                detach(py, || Table::from_f16_bits(bits, rows, dim, dt))
            }
            TableArray::Raw(..) => return Err(wrong()),
        };
        Ok(PyTable { inner: Arc::new(t?) })
    }

    #[staticmethod]
    fn from_raw(py: Python<'_>, data: &Bound<'_, PyAny>, dtype: Opt<DType>, dim: usize) -> PyResult<PyTable> {
        let dt = dtype.0;
        let a = data
            .cast::<PyArray2<u8>>()
            .map_err(|_| type_error("raw rows must be a 2-D uint8 array [num_rows, row_bytes]"))?;
        let rows = a.shape()[0];
        if a.shape()[1] != dt.row_bytes(dim) {
            return Err(value_error(format!(
                "{} rows of dim {dim} take {} bytes each, but the array has {} columns",
                dt.name(),
                dt.row_bytes(dim),
                a.shape()[1]
            )));
        }
        let ro = a.try_readonly()?;
        let s = ro.as_slice().map_err(|_| value_error("the array must be C-contiguous"))?;
        let t = detach(py, || Table::from_raw(s, rows, dim, dt))?;
        Ok(PyTable { inner: Arc::new(t) })
    }

    #[staticmethod]
    fn random(py: Python<'_>, num_rows: usize, dim: usize, dtype: Opt<DType>, seed: u64) -> PyResult<PyTable> {
        let dt = dtype.0;
        let t = detach(py, || Table::random(num_rows, dim, dt, seed))?;
        Ok(PyTable { inner: Arc::new(t) })
    }

    #[staticmethod]
    #[pyo3(signature = (path, offset, num_rows, dim, dtype, mmap=true))]
    fn open(py: Python<'_>, path: &str, offset: usize, num_rows: usize, dim: usize, dtype: Opt<DType>, mmap: bool) -> PyResult<PyTable> {
        let dt = dtype.0;
        let t = detach(py, || Table::open(path, offset, num_rows, dim, dt, mmap))?;
        Ok(PyTable { inner: Arc::new(t) })
    }

    #[staticmethod]
    #[pyo3(signature = (path, name=None, mmap=true))]
    fn load_safetensors(py: Python<'_>, path: &str, name: Option<&str>, mmap: bool) -> PyResult<PyTable> {
        let t = detach(py, || Table::load_safetensors(path, name, mmap))?;
        Ok(PyTable { inner: Arc::new(t) })
    }

    fn save_safetensors(&self, py: Python<'_>, path: &str, name: &str) -> PyResult<()> {
        detach(py, || self.inner.save_safetensors(path, name))
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

    #[pyo3(signature = (indices, offsets=None, lengths=None, weights=None, mode=Opt(Mode::Sum), padding_idx=None, include_last_offset=false))]
    #[allow(clippy::too_many_arguments)]
    fn lookup<'py>(
        &self,
        py: Python<'py>,
        indices: &Bound<'py, PyAny>,
        offsets: Option<&Bound<'py, PyAny>>,
        lengths: Option<&Bound<'py, PyAny>>,
        weights: Option<&Bound<'py, PyAny>>,
        mode: Opt<Mode>,
        padding_idx: Option<i64>,
        include_last_offset: bool,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let req = request(indices, offsets, lengths, weights, include_last_offset)?;
        lookup_one(py, self.inner.view().py_err()?, &req, mode.0, padding_idx)
    }

    /// The lookup with the table read obliviously: every row once, in order, whatever the ids
    /// (bit for bit the plain lookup's output; no padding_idx).
    #[pyo3(signature = (indices, offsets=None, lengths=None, weights=None, mode=Opt(Mode::Sum), include_last_offset=false))]
    #[allow(clippy::too_many_arguments)]
    fn lookup_scan<'py>(
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
        crate::oblivious::scan_one(py, self.inner.view().py_err()?, &req, mode.0)
    }

    /// The lookup reading the rows `reads` in that order (the ids and dummy rows), `slots[r]`
    /// the lookup read `r` fills or `len(indices)` for a dummy (bit for bit the plain output).
    #[pyo3(signature = (indices, reads, slots, offsets=None, lengths=None, weights=None, mode=Opt(Mode::Sum), include_last_offset=false))]
    #[allow(clippy::too_many_arguments)]
    fn lookup_padded<'py>(
        &self,
        py: Python<'py>,
        indices: &Bound<'py, PyAny>,
        reads: &Bound<'py, PyAny>,
        slots: &Bound<'py, PyAny>,
        offsets: Option<&Bound<'py, PyAny>>,
        lengths: Option<&Bound<'py, PyAny>>,
        weights: Option<&Bound<'py, PyAny>>,
        mode: Opt<Mode>,
        include_last_offset: bool,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let req = request(indices, offsets, lengths, weights, include_last_offset)?;
        crate::oblivious::padded_one(py, self.inner.view().py_err()?, &req, reads, slots, mode.0)
    }

    fn quantize(&self, py: Python<'_>, dtype: Opt<DType>) -> PyResult<PyTable> {
        let dt = dtype.0;
        let t = detach(py, || self.inner.convert(dt))?;
        Ok(PyTable { inner: Arc::new(t) })
    }

    /// A new owned table of rows `row_start..row_end` and columns `col_start..col_end`.
    fn slice(&self, py: Python<'_>, row_start: usize, row_end: usize, col_start: usize, col_end: usize) -> PyResult<PyTable> {
        let t = detach(py, || self.inner.slice(row_start..row_end, col_start..col_end))?;
        Ok(PyTable { inner: Arc::new(t) })
    }

    fn to_numpy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let out = arrays::new_array::<f32, 2>(py, [self.inner.num_rows(), self.inner.dim()])?;
        {
            let mut rw = out.readwrite();
            let s = rw.as_slice_mut().expect("a new array is contiguous");
            detach(py, || self.inner.to_f32(s))?;
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
pub(crate) fn bytemuck_f16(s: &[half::f16]) -> &[u16] {
    // SAFETY: `half::f16` is `repr(transparent)` over `u16`: same size, alignment and validity.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u16>(), s.len()) }
}


pub(crate) fn check_dim(dim: usize) -> PyResult<()> {
    if dim == 0 {
        return Err(value_error("an embedding table needs dim >= 1, got 0"));
    }
    Ok(())
}

#[pyfunction]
pub(crate) fn safetensors_names(py: Python<'_>, path: &str) -> PyResult<Vec<String>> {
    detach(py, || Table::safetensors_names(path))
}

/// Bytes one row of `dim` values takes in storage format `dtype` (the core's definition, which
/// the Python package reads rather than restates).
#[pyfunction]
pub(crate) fn row_bytes(dtype: Opt<DType>, dim: usize) -> usize {
    dtype.0.row_bytes(dim)
}

/// Add this file's classes and functions to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTable>()?;
    m.add_function(wrap_pyfunction!(safetensors_names, m)?)?;
    m.add_function(wrap_pyfunction!(row_bytes, m)?)?;
    Ok(())
}
