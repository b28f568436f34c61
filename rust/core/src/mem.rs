//! Fallible allocation. Buffers whose size comes from the caller's data (tables, offsets,
//! gradients, cache slots) are reserved with `try_reserve_exact`, so a size the machine
//! cannot hold is an [`Error::Memory`] (Python's `MemoryError`) and the process goes on,
//! where `vec![..]` would abort it.

use crate::error::{Error, Result};

/// An empty vector with room for `n` items.
pub fn with_capacity<T>(n: usize, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| Error::memory(n.saturating_mul(std::mem::size_of::<T>()), what))?;
    Ok(v)
}

/// `n` copies of `value`.
pub fn filled<T: Clone>(n: usize, value: T, what: &str) -> Result<Vec<T>> {
    let mut v = with_capacity(n, what)?;
    v.resize(n, value);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_impossible_size_is_an_error_not_an_abort() {
        let err = filled(usize::MAX / 16, 0u64, "the test buffer").unwrap_err();
        assert!(matches!(err, Error::Memory { .. }), "{err}");
        assert!(err.to_string().contains("the test buffer"), "{err}");
        let err = with_capacity::<u8>(isize::MAX as usize, "bytes").unwrap_err();
        assert!(matches!(err, Error::Memory { .. }), "{err}");
        assert_eq!(filled(3, 7u8, "x").unwrap(), vec![7, 7, 7]);
    }
}
