//! The one place errors become Python exceptions: core errors and the bindings' own argument
//! errors alike raise the classes of one hierarchy, `recengine.RecengineError`, each also a
//! subclass of the builtin a caller expects (`RecengineIndexError` is an `IndexError`, ...).

use pyo3::exceptions::{PyException, PyIndexError, PyMemoryError, PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};
use pyo3::PyErr;
use recengine_core::Error;

pyo3::create_exception!(
    recengine,
    RecengineError,
    PyException,
    "Every error recengine's core raises; each one is also the builtin exception a caller would \
     expect (IndexError, ValueError, TypeError, MemoryError, OSError)."
);

/// The kinds of error, each a subclass of `RecengineError` and of one builtin.
#[derive(Clone, Copy)]
enum Kind {
    Index,
    Value,
    Type,
    Memory,
    Os,
}

const KINDS: [(Kind, &str); 5] = [
    (Kind::Index, "RecengineIndexError"),
    (Kind::Value, "RecengineValueError"),
    (Kind::Type, "RecengineTypeError"),
    (Kind::Memory, "RecengineMemoryError"),
    (Kind::Os, "RecengineOSError"),
];

static CLASSES: PyOnceLock<Vec<Py<PyType>>> = PyOnceLock::new();

fn builtin(py: Python<'_>, kind: Kind) -> Bound<'_, PyType> {
    match kind {
        Kind::Index => py.get_type::<PyIndexError>(),
        Kind::Value => py.get_type::<PyValueError>(),
        Kind::Type => py.get_type::<PyTypeError>(),
        Kind::Memory => py.get_type::<PyMemoryError>(),
        Kind::Os => py.get_type::<PyOSError>(),
    }
}

fn classes(py: Python<'_>) -> PyResult<&Vec<Py<PyType>>> {
    CLASSES.get_or_try_init(py, || {
        let base = py.get_type::<RecengineError>();
        KINDS
            .iter()
            .map(|&(kind, name)| {
                let ns = PyDict::new(py);
                ns.set_item("__module__", "recengine")?;
                ns.set_item("__doc__", format!("A recengine error that is also a {}.", builtin(py, kind).name()?))?;
                let bases = PyTuple::new(py, [base.clone(), builtin(py, kind)])?;
                let class = py.get_type::<PyType>().call1((name, bases, ns))?;
                Ok(class.cast_into::<PyType>()?.unbind())
            })
            .collect()
    })
}

fn error(kind: Kind, msg: String) -> PyErr {
    Python::attach(|py| match classes(py) {
        Ok(c) => PyErr::from_type(c[kind as usize].bind(py).clone(), msg),
        Err(e) => e,
    })
}

pub(crate) fn index_error(msg: impl Into<String>) -> PyErr {
    error(Kind::Index, msg.into())
}

pub(crate) fn value_error(msg: impl Into<String>) -> PyErr {
    error(Kind::Value, msg.into())
}

pub(crate) fn type_error(msg: impl Into<String>) -> PyErr {
    error(Kind::Type, msg.into())
}

pub(crate) fn memory_error(msg: impl Into<String>) -> PyErr {
    error(Kind::Memory, msg.into())
}

/// Map a core error to its Python exception class.
pub(crate) fn to_py(err: Error) -> PyErr {
    match err {
        Error::IndexOutOfRange(e) => index_error(e.to_string()),
        Error::Value(msg) => value_error(msg),
        Error::Type(msg) => type_error(msg),
        e @ Error::Memory { .. } => memory_error(e.to_string()),
        e @ Error::Io { .. } => error(Kind::Os, e.to_string()),
    }
}

/// `?`-friendly conversion of core results.
pub(crate) trait IntoPy<T> {
    fn py_err(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for recengine_core::Result<T> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

/// Run the core's `f` without the GIL and map its error: how every long call is made.
pub(crate) fn detach<T: Send, F: Send + FnOnce() -> recengine_core::Result<T>>(py: Python<'_>, f: F) -> PyResult<T> {
    py.detach(f).map_err(to_py)
}

/// Add the exception classes to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("RecengineError", py.get_type::<RecengineError>())?;
    for (class, (_, name)) in classes(py)?.iter().zip(KINDS) {
        m.add(name, class.bind(py))?;
    }
    Ok(())
}
