//! Encoding float rows into each storage format and decoding them back (scalar code; the
//! pooling kernels decode on the fly with SIMD).

use half::{bf16, f16};

use crate::dtype::DType;
use crate::error::{Error, Result};

/// [`encode_row`] of row number `row`, refusing non-finite values in an int8 or int4 row:
/// a NaN or an infinity has no scale and bias, and would come back as finite garbage.
pub fn encode_row_checked(dtype: DType, src: &[f32], dst: &mut [u8], row: usize) -> Result<()> {
    if dtype.is_quantized() {
        if let Some((col, x)) = src.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(Error::value(format!(
                "row {row} holds {x} (column {col}); {} rows must be finite to quantize",
                dtype.name()
            )));
        }
    }
    encode_row(dtype, src, dst);
    Ok(())
}

/// Encode `src` (one row, `dim` values) into `dst` (`dtype.row_bytes(dim)` bytes).
///
/// Quantisation follows the fused rowwise formats of FBGEMM: for int8, `scale = range / 255`,
/// `bias = min`, `code = rint((x - min) * 255 / (range + 1e-8))`; for int4, the bias is `min`
/// rounded to f16, the scale `range / 15` rounded to f16 (1 when the row is constant), and
/// `code = clamp(rint((x - bias) / scale), 0, 15)`.
pub fn encode_row(dtype: DType, src: &[f32], dst: &mut [u8]) {
    let dim = src.len();
    debug_assert_eq!(dst.len(), dtype.row_bytes(dim));
    match dtype {
        DType::Fp32 => {
            for (d, x) in dst.chunks_exact_mut(4).zip(src) {
                d.copy_from_slice(&x.to_le_bytes());
            }
        }
        DType::Fp16 => {
            for (d, x) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&f16::from_f32(*x).to_bits().to_le_bytes());
            }
        }
        DType::Bf16 => {
            for (d, x) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&bf16::from_f32(*x).to_bits().to_le_bytes());
            }
        }
        DType::Int8 => {
            let (min, max) = min_max(src);
            let range = max - min;
            let scale = range / 255.0;
            let inv = 255.0 / (range + 1e-8);
            for (d, x) in dst[..dim].iter_mut().zip(src) {
                *d = ((x - min) * inv).round_ties_even().clamp(0.0, 255.0) as u8;
            }
            dst[dim..dim + 4].copy_from_slice(&scale.to_le_bytes());
            dst[dim + 4..dim + 8].copy_from_slice(&min.to_le_bytes());
        }
        DType::Int4 => {
            let (min, max) = min_max(src);
            let bias16 = f16::from_f32(min);
            let bias = bias16.to_f32();
            let range = max - bias;
            let mut scale16 = f16::from_f32(if range > 0.0 { range / 15.0 } else { 1.0 });
            if scale16.to_f32() == 0.0 || !scale16.to_f32().is_finite() {
                scale16 = f16::ONE;
            }
            let inv = 1.0 / scale16.to_f32();
            let nbytes = dim.div_ceil(2);
            dst[..nbytes].fill(0);
            for (c, x) in src.iter().enumerate() {
                let q = ((x - bias) * inv).round_ties_even().clamp(0.0, 15.0) as u8;
                dst[c / 2] |= q << ((c % 2) * 4);
            }
            dst[nbytes..nbytes + 2].copy_from_slice(&scale16.to_bits().to_le_bytes());
            dst[nbytes + 2..nbytes + 4].copy_from_slice(&bias16.to_bits().to_le_bytes());
        }
    }
}

/// Decode one stored row (`dtype.row_bytes(dst.len())` bytes) into `dst`.
pub fn decode_row(dtype: DType, src: &[u8], dst: &mut [f32]) {
    let dim = dst.len();
    match dtype {
        DType::Fp32 => {
            for (x, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *x = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            }
        }
        DType::Fp16 => {
            for (x, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *x = f16::from_bits(u16::from_le_bytes([s[0], s[1]])).to_f32();
            }
        }
        DType::Bf16 => {
            for (x, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *x = bf16::from_bits(u16::from_le_bytes([s[0], s[1]])).to_f32();
            }
        }
        DType::Int8 => {
            let (scale, bias) = scale_bias(dtype, src, dim);
            for (x, q) in dst.iter_mut().zip(&src[..dim]) {
                *x = f32::from(*q) * scale + bias;
            }
        }
        DType::Int4 => {
            let (scale, bias) = scale_bias(dtype, src, dim);
            for (c, x) in dst.iter_mut().enumerate() {
                let q = (src[c / 2] >> ((c % 2) * 4)) & 0x0F;
                *x = f32::from(q) * scale + bias;
            }
        }
    }
}

/// The scale and bias of a quantized row; `(1, 0)` for float formats.
pub fn scale_bias(dtype: DType, row: &[u8], dim: usize) -> (f32, f32) {
    match dtype {
        DType::Int8 => {
            let s = &row[dim..dim + 8];
            (
                f32::from_le_bytes([s[0], s[1], s[2], s[3]]),
                f32::from_le_bytes([s[4], s[5], s[6], s[7]]),
            )
        }
        DType::Int4 => {
            let n = dim.div_ceil(2);
            let s = &row[n..n + 4];
            (
                f16::from_bits(u16::from_le_bytes([s[0], s[1]])).to_f32(),
                f16::from_bits(u16::from_le_bytes([s[2], s[3]])).to_f32(),
            )
        }
        _ => (1.0, 0.0),
    }
}

fn min_max(xs: &[f32]) -> (f32, f32) {
    if xs.is_empty() {
        return (0.0, 0.0);
    }
    xs.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(dtype: DType, row: &[f32]) -> Vec<f32> {
        let mut bytes = vec![0u8; dtype.row_bytes(row.len())];
        encode_row(dtype, row, &mut bytes);
        let mut back = vec![0f32; row.len()];
        decode_row(dtype, &bytes, &mut back);
        back
    }

    #[test]
    fn float_formats_round_trip() {
        let row = [1.0f32, -2.5, 0.125, 3.0e4, -0.0];
        assert_eq!(round_trip(DType::Fp32, &row), row);
        assert_eq!(round_trip(DType::Fp16, &row), row);
        assert_eq!(round_trip(DType::Bf16, &[1.0, -2.5, 0.125]), [1.0, -2.5, 0.125]);
    }

    #[test]
    fn int8_error_is_within_half_a_step() {
        let row: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let back = round_trip(DType::Int8, &row);
        let (lo, hi) = min_max(&row);
        let step = (hi - lo) / 255.0;
        for (a, b) in row.iter().zip(&back) {
            assert!((a - b).abs() <= step * 0.5 + 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn int4_packs_even_columns_low() {
        let row = [0.0f32, 15.0, 15.0];
        let mut bytes = vec![0u8; DType::Int4.row_bytes(3)];
        encode_row(DType::Int4, &row, &mut bytes);
        assert_eq!(bytes[0], 0xF0);
        assert_eq!(bytes[1], 0x0F);
        assert_eq!(round_trip(DType::Int4, &row), row);
    }

    #[test]
    fn constant_rows_are_exact() {
        for dtype in [DType::Int8, DType::Int4] {
            assert_eq!(round_trip(dtype, &[0.5; 9]), [0.5; 9]);
        }
    }
}
