//! Storage formats of embedding rows.

use crate::error::{Error, Result};

/// How one row of `dim` values is stored.
///
/// * `Fp32`, `Fp16`, `Bf16`: `dim` little-endian values.
/// * `Int8` (fused 8-bit rowwise): `dim` u8 codes, then an f32 scale and an f32 bias;
///   a value is `code * scale + bias`.
/// * `Int4` (fused 4-bit rowwise): `ceil(dim / 2)` bytes, column `2k` in the low nibble of
///   byte `k` and `2k + 1` in the high nibble, then an f16 scale and an f16 bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    Fp32,
    Fp16,
    Bf16,
    Int8,
    Int4,
}

impl DType {
    /// Every format, in a fixed order.
    pub const ALL: [DType; 5] = [DType::Fp32, DType::Fp16, DType::Bf16, DType::Int8, DType::Int4];

    /// The canonical name used by the Python API.
    pub fn name(self) -> &'static str {
        match self {
            DType::Fp32 => "fp32",
            DType::Fp16 => "fp16",
            DType::Bf16 => "bf16",
            DType::Int8 => "int8",
            DType::Int4 => "int4",
        }
    }

    /// Parse a canonical name.
    pub fn parse(name: &str) -> Result<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name).ok_or_else(|| {
            Error::type_(format!(
                "unsupported table dtype {name:?}; expected one of fp32, fp16, bf16, int8, int4"
            ))
        })
    }

    /// Bytes of one stored row of `dim` values.
    pub fn row_bytes(self, dim: usize) -> usize {
        match self {
            DType::Fp32 => 4 * dim,
            DType::Fp16 | DType::Bf16 => 2 * dim,
            DType::Int8 => dim + 8,
            DType::Int4 => dim.div_ceil(2) + 4,
        }
    }

    /// The dim of rows `row_bytes` wide, the inverse of [`DType::row_bytes`] (for int4 the
    /// even one of the two dims of that width). Where no dim gives that width it is the nearest
    /// smaller one: a caller checks `row_bytes(dim) == row_bytes`.
    pub fn dim_from_row_bytes(self, row_bytes: usize) -> usize {
        match self {
            DType::Fp32 => row_bytes / 4,
            DType::Fp16 | DType::Bf16 => row_bytes / 2,
            DType::Int8 => row_bytes.saturating_sub(8),
            DType::Int4 => row_bytes.saturating_sub(4) * 2,
        }
    }

    /// Whether rows carry a scale and bias.
    pub fn is_quantized(self) -> bool {
        matches!(self, DType::Int8 | DType::Int4)
    }
}
