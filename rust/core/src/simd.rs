//! Vector operations the pooling kernels are written against, implemented for AVX-512 and
//! AVX2, and the run-time choice between them (with a portable scalar kernel as fallback).
//!
//! The kernels are generic `#[inline(always)]` functions over [`Simd`]; each is instantiated
//! inside a `#[target_feature]` entry point, so the intrinsics inline with the right features.
//! Every method is `unsafe` for two reasons: it may only run on a CPU with the features of its
//! level (the dispatcher checks), and the loads read through raw pointers (callers pass
//! pointers to at least the bytes the tail says are valid).

use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction-set level the kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Scalar = 0,
    Avx2 = 1,
    Avx512 = 2,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    pub fn parse(name: &str) -> Option<Level> {
        [Level::Scalar, Level::Avx2, Level::Avx512].into_iter().find(|l| l.name() == name)
    }

    /// Whether this CPU can run the level.
    pub fn supported(self) -> bool {
        match self {
            Level::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => {
                Level::Avx2.supported()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// Levels this CPU supports, best first.
pub fn available_levels() -> Vec<Level> {
    [Level::Avx512, Level::Avx2, Level::Scalar].into_iter().filter(|l| l.supported()).collect()
}

const UNSET: u8 = u8::MAX;
static LEVEL: AtomicU8 = AtomicU8::new(UNSET);

fn from_u8(v: u8) -> Level {
    match v {
        2 => Level::Avx512,
        1 => Level::Avx2,
        _ => Level::Scalar,
    }
}

/// The level in use: forced by [`set_level`], else the `RECENGINE_SIMD` environment variable
/// (when the CPU supports it), else the best the CPU supports.
pub fn level() -> Level {
    let v = LEVEL.load(Ordering::Relaxed);
    if v != UNSET {
        return from_u8(v);
    }
    let best = available_levels()[0];
    let chosen = std::env::var("RECENGINE_SIMD")
        .ok()
        .and_then(|s| Level::parse(s.trim()))
        .filter(|l| l.supported() && *l <= best)
        .unwrap_or(best);
    LEVEL.store(chosen as u8, Ordering::Relaxed);
    chosen
}

/// Force a level (None: back to the default choice). Fails for a level the CPU lacks.
pub fn set_level(level: Option<Level>) -> Result<(), String> {
    match level {
        None => LEVEL.store(UNSET, Ordering::Relaxed),
        Some(l) if l.supported() => LEVEL.store(l as u8, Ordering::Relaxed),
        Some(l) => return Err(format!("this CPU does not support the {} kernels", l.name())),
    }
    Ok(())
}

/// The vector operations of one instruction-set level.
pub(crate) trait Simd {
    /// f32 lanes per vector.
    const LANES: usize;
    /// The most accumulator vectors a kernel keeps in registers.
    const MAX_NV: usize;
    type V: Copy;
    /// Which lanes of a vector are valid at the end of a row.
    type Tail: Copy;

    /// The tail for `n` valid lanes, `0 <= n <= LANES`.
    unsafe fn tail(n: usize) -> Self::Tail;
    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: f32) -> Self::V;
    /// `a * b + c`.
    unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    /// `a > b ? a : b` lane by lane: `b` where either is NaN (the x86 `maxps` rule).
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    /// Load the valid lanes (the rest are zero) of f32 values at `p`.
    unsafe fn load_f32(p: *const u8, t: Self::Tail) -> Self::V;
    unsafe fn load_f16(p: *const u8, t: Self::Tail) -> Self::V;
    unsafe fn load_bf16(p: *const u8, t: Self::Tail) -> Self::V;
    unsafe fn load_u8(p: *const u8, t: Self::Tail) -> Self::V;
    /// Values packed two to a byte (even column low nibble), starting at an even column.
    unsafe fn load_u4(p: *const u8, t: Self::Tail) -> Self::V;
    /// Full-width loads (every lane valid), which can fold into the converting instruction.
    unsafe fn full_f32(p: *const u8) -> Self::V;
    unsafe fn full_f16(p: *const u8) -> Self::V;
    unsafe fn full_bf16(p: *const u8) -> Self::V;
    unsafe fn full_u8(p: *const u8) -> Self::V;
    unsafe fn full_u4(p: *const u8) -> Self::V;
    /// Store the valid lanes of `v` at `p`.
    unsafe fn store(p: *mut f32, v: Self::V, t: Self::Tail);
    /// One f16 value to f32.
    unsafe fn f16_to_f32(bits: u16) -> f32;
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Simd;

    /// 8 lanes of f32 in `__m256`, with FMA and F16C.
    pub(crate) struct Avx2;

    /// Copy `n` bytes at `p` into a zeroed 32-byte buffer, so a partial tail can be loaded
    /// with full-width instructions without reading past the row.
    #[inline(always)]
    unsafe fn partial<const N: usize>(p: *const u8, n: usize) -> [u8; N] {
        let mut buf = [0u8; N];
        // SAFETY: the caller guarantees `n` readable bytes at `p`; `n <= N` by construction
        // of the tails (at most LANES elements of at most 4 bytes).
        unsafe { std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n.min(N)) };
        buf
    }

    impl Simd for Avx2 {
        const LANES: usize = 8;
        const MAX_NV: usize = 8;
        type V = __m256;
        type Tail = usize;

        #[inline(always)]
        unsafe fn tail(n: usize) -> usize {
            n
        }
        #[inline(always)]
        unsafe fn zero() -> __m256 {
            _mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m256 {
            _mm256_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            _mm256_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: __m256, b: __m256) -> __m256 {
            _mm256_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn max(a: __m256, b: __m256) -> __m256 {
            _mm256_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn load_f32(p: *const u8, n: usize) -> __m256 {
            // SAFETY (all loads below): `n` values are readable at `p` (caller contract).
            unsafe {
                if n == 8 {
                    _mm256_loadu_ps(p.cast())
                } else if n == 0 {
                    _mm256_setzero_ps()
                } else {
                    let b = partial::<32>(p, 4 * n);
                    _mm256_loadu_ps(b.as_ptr().cast())
                }
            }
        }
        #[inline(always)]
        unsafe fn load_f16(p: *const u8, n: usize) -> __m256 {
            unsafe {
                if n == 8 {
                    _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
                } else {
                    let b = partial::<16>(p, 2 * n);
                    _mm256_cvtph_ps(_mm_loadu_si128(b.as_ptr().cast()))
                }
            }
        }
        #[inline(always)]
        unsafe fn load_bf16(p: *const u8, n: usize) -> __m256 {
            unsafe {
                let x = if n == 8 {
                    _mm_loadu_si128(p.cast())
                } else {
                    let b = partial::<16>(p, 2 * n);
                    _mm_loadu_si128(b.as_ptr().cast())
                };
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(x)))
            }
        }
        #[inline(always)]
        unsafe fn load_u8(p: *const u8, n: usize) -> __m256 {
            unsafe {
                let x = if n == 8 {
                    _mm_loadl_epi64(p.cast())
                } else {
                    let b = partial::<16>(p, n);
                    _mm_loadl_epi64(b.as_ptr().cast())
                };
                _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(x))
            }
        }
        #[inline(always)]
        unsafe fn load_u4(p: *const u8, n: usize) -> __m256 {
            unsafe {
                let word = if n == 8 {
                    p.cast::<u32>().read_unaligned()
                } else {
                    let b = partial::<4>(p, n.div_ceil(2));
                    u32::from_le_bytes(b)
                };
                let x = _mm_cvtsi32_si128(word as i32);
                let m = _mm_set1_epi8(0x0F);
                let lo = _mm_and_si128(x, m);
                let hi = _mm_and_si128(_mm_srli_epi16::<4>(x), m);
                let bytes = _mm_unpacklo_epi8(lo, hi);
                _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes))
            }
        }
        #[inline(always)]
        unsafe fn full_f32(p: *const u8) -> __m256 {
            // SAFETY: 8 values are readable at `p` (caller contract).
            unsafe { _mm256_loadu_ps(p.cast()) }
        }
        #[inline(always)]
        unsafe fn full_f16(p: *const u8) -> __m256 {
            // SAFETY: as for `full_f32`.
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
        }
        #[inline(always)]
        unsafe fn full_bf16(p: *const u8) -> __m256 {
            // SAFETY: as for `full_f32`.
            unsafe { _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())))) }
        }
        #[inline(always)]
        unsafe fn full_u8(p: *const u8) -> __m256 {
            // SAFETY: as for `full_f32`.
            unsafe { _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p.cast()))) }
        }
        #[inline(always)]
        unsafe fn full_u4(p: *const u8) -> __m256 {
            // SAFETY: as for `full_f32` (4 bytes hold the 8 values).
            unsafe { Self::load_u4(p, 8) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256, n: usize) {
            // SAFETY: `n` floats are writable at `p` (caller contract).
            unsafe {
                if n == 8 {
                    _mm256_storeu_ps(p, v);
                } else if n > 0 {
                    let mut b = [0f32; 8];
                    _mm256_storeu_ps(b.as_mut_ptr(), v);
                    std::ptr::copy_nonoverlapping(b.as_ptr(), p, n);
                }
            }
        }
        #[inline(always)]
        unsafe fn f16_to_f32(bits: u16) -> f32 {
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
        }
    }

    /// 16 lanes of f32 in `__m512`; tails are lane masks, so partial rows need no copies.
    pub(crate) struct Avx512;

    impl Simd for Avx512 {
        const LANES: usize = 16;
        const MAX_NV: usize = 16;
        type V = __m512;
        type Tail = __mmask16;

        #[inline(always)]
        unsafe fn tail(n: usize) -> __mmask16 {
            if n >= 16 {
                0xFFFF
            } else {
                ((1u32 << n) - 1) as __mmask16
            }
        }
        #[inline(always)]
        unsafe fn zero() -> __m512 {
            _mm512_setzero_ps()
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m512 {
            _mm512_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            _mm512_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: __m512, b: __m512) -> __m512 {
            _mm512_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn max(a: __m512, b: __m512) -> __m512 {
            _mm512_max_ps(a, b)
        }
        // SAFETY (all loads below): masked loads read only the lanes set in the mask, which
        // the caller guarantees are readable; masked-off lanes never fault.
        #[inline(always)]
        unsafe fn load_f32(p: *const u8, m: __mmask16) -> __m512 {
            unsafe { _mm512_maskz_loadu_ps(m, p.cast()) }
        }
        #[inline(always)]
        unsafe fn load_f16(p: *const u8, m: __mmask16) -> __m512 {
            unsafe { _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p.cast())) }
        }
        #[inline(always)]
        unsafe fn load_bf16(p: *const u8, m: __mmask16) -> __m512 {
            unsafe {
                let x = _mm256_maskz_loadu_epi16(m, p.cast());
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(x)))
            }
        }
        #[inline(always)]
        unsafe fn load_u8(p: *const u8, m: __mmask16) -> __m512 {
            unsafe { _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, p.cast()))) }
        }
        #[inline(always)]
        unsafe fn load_u4(p: *const u8, m: __mmask16) -> __m512 {
            unsafe {
                // Tails are prefix masks of n lanes; lanes 2k and 2k+1 live in byte k, so the
                // first ceil(n / 2) bytes are needed.
                let bytes_mask = ((1u32 << m.count_ones().div_ceil(2)) - 1) as __mmask16;
                let x = _mm_maskz_loadu_epi8(bytes_mask, p.cast());
                let nib = _mm_set1_epi8(0x0F);
                let lo = _mm_and_si128(x, nib);
                let hi = _mm_and_si128(_mm_srli_epi16::<4>(x), nib);
                let v = _mm_unpacklo_epi8(lo, hi);
                _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v))
            }
        }
        // SAFETY (full loads below): all 16 values are readable at `p` (caller contract).
        #[inline(always)]
        unsafe fn full_f32(p: *const u8) -> __m512 {
            unsafe { _mm512_loadu_ps(p.cast()) }
        }
        #[inline(always)]
        unsafe fn full_f16(p: *const u8) -> __m512 {
            unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
        }
        #[inline(always)]
        unsafe fn full_bf16(p: *const u8) -> __m512 {
            unsafe {
                let x = _mm256_loadu_si256(p.cast());
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(x)))
            }
        }
        #[inline(always)]
        unsafe fn full_u8(p: *const u8) -> __m512 {
            unsafe { _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(p.cast()))) }
        }
        #[inline(always)]
        unsafe fn full_u4(p: *const u8) -> __m512 {
            unsafe {
                let x = _mm_loadl_epi64(p.cast());
                let nib = _mm_set1_epi8(0x0F);
                let lo = _mm_and_si128(x, nib);
                let hi = _mm_and_si128(_mm_srli_epi16::<4>(x), nib);
                _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi)))
            }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512, m: __mmask16) {
            // SAFETY: only the lanes set in the mask are written; the caller owns them.
            unsafe { _mm512_mask_storeu_ps(p, m, v) }
        }
        #[inline(always)]
        unsafe fn f16_to_f32(bits: u16) -> f32 {
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
        }
    }
}
