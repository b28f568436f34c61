//! The one place core errors become Python exceptions.

use pyo3::exceptions::{PyIndexError, PyMemoryError, PyOSError, PyTypeError, PyValueError};
use pyo3::PyErr;
use recengine_core::Error;

/// Map a core error to its Python exception class.
pub fn to_py(err: Error) -> PyErr {
    match err {
        Error::IndexOutOfRange(e) => PyIndexError::new_err(e.to_string()),
        Error::Value(msg) => PyValueError::new_err(msg),
        Error::Type(msg) => PyTypeError::new_err(msg),
        e @ Error::Memory { .. } => PyMemoryError::new_err(e.to_string()),
        e @ Error::Io { .. } => PyOSError::new_err(e.to_string()),
    }
}

/// `?`-friendly conversion of core results.
pub trait IntoPy<T> {
    fn py_err(self) -> pyo3::PyResult<T>;
}

impl<T> IntoPy<T> for recengine_core::Result<T> {
    fn py_err(self) -> pyo3::PyResult<T> {
        self.map_err(to_py)
    }
}
