//! Options the API names by string (pooling mode, storage dtype, shard split, cache policy,
//! thread pool, SIMD level), behind one trait so that a binding takes every one of them the
//! same way, and each name and its error message live with the option.

use crate::Result;

/// A value named by a string.
pub trait Named: Copy + Sized {
    /// The value called `name`, or an error that names the choices.
    fn from_name(name: &str) -> Result<Self>;
    /// Its canonical name.
    fn to_name(self) -> &'static str;
}

/// Implement [`Named`] for a type with `parse(&str) -> Result<Self>` and `name(self)`.
macro_rules! named {
    ($($t:ty),*) => {$(
        impl Named for $t {
            fn from_name(name: &str) -> Result<Self> {
                <$t>::parse(name)
            }
            fn to_name(self) -> &'static str {
                self.name()
            }
        }
    )*};
}

named!(crate::Mode, crate::DType, crate::shard::Split, crate::cache::Policy);

impl Named for crate::openmp::PoolMode {
    fn from_name(name: &str) -> Result<Self> {
        Self::parse(name).ok_or_else(|| {
            crate::Error::value(format!("unknown thread pool {name:?}; expected auto, torch or own"))
        })
    }
    fn to_name(self) -> &'static str {
        self.name()
    }
}

impl Named for crate::simd::Level {
    fn from_name(name: &str) -> Result<Self> {
        Self::parse(name).ok_or_else(|| {
            crate::Error::value(format!("unknown SIMD level {name:?}; expected avx512, avx2 or scalar"))
        })
    }
    fn to_name(self) -> &'static str {
        self.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, Mode};

    #[test]
    fn names_round_trip_and_unknown_ones_name_the_choices() {
        for m in [Mode::Sum, Mode::Mean, Mode::Max] {
            assert_eq!(Mode::from_name(m.to_name()).unwrap(), m);
        }
        for d in DType::ALL {
            assert_eq!(DType::from_name(d.to_name()).unwrap(), d);
        }
        let err = Mode::from_name("median").unwrap_err().to_string();
        assert!(err.contains("\"sum\""), "{err}");
        let err = crate::simd::Level::from_name("sse").unwrap_err().to_string();
        assert!(err.contains("avx2"), "{err}");
    }
}
