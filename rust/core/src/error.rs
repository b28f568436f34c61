//! The one error type of the core. The binding crate maps each variant to one Python
//! exception class (`rust/py/src/errors.rs`).

use std::fmt;

/// Everything the core can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An index outside `[0, num_rows)` (negative ones included).
    #[error("{0}")]
    IndexOutOfRange(IndexError),
    /// Arguments of the right types but inconsistent values or shapes.
    #[error("{0}")]
    Value(String),
    /// An argument of a type or dtype the core does not handle.
    #[error("{0}")]
    Type(String),
    /// A buffer of `bytes` bytes could not be allocated.
    #[error("could not allocate {bytes} bytes for {what}: not enough memory")]
    Memory { bytes: usize, what: String },
    /// A file could not be opened, mapped, read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where an out-of-range index was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexError {
    pub index: i64,
    pub position: usize,
    pub bag: usize,
    pub num_rows: usize,
    /// The table's position in a collection lookup.
    pub table: Option<usize>,
}

impl fmt::Display for IndexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "index {} at position {} (bag {}", self.index, self.position, self.bag)?;
        if let Some(t) = self.table {
            write!(f, " of table {t}")?;
        }
        write!(f, ") is out of range for a table of {} rows", self.num_rows)
    }
}

impl Error {
    pub(crate) fn value(msg: impl Into<String>) -> Self {
        Error::Value(msg.into())
    }

    pub(crate) fn type_(msg: impl Into<String>) -> Self {
        Error::Type(msg.into())
    }

    pub(crate) fn memory(bytes: usize, what: impl Into<String>) -> Self {
        Error::Memory { bytes, what: what.into() }
    }

    pub(crate) fn io(path: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

/// The core's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
