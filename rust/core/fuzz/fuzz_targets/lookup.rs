//! A lookup of an arbitrary table (any storage format, any bytes: NaNs, infinities,
//! denormals, absurd int8/int4 scales) with arbitrary indices, bags, weights, mode and
//! padding row, at the SIMD level the CPU has and at the scalar level: both must answer
//! (the same, within rounding) or both refuse; neither may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use recengine_core::simd::{self, Level};
use recengine_core::{lookup, Bags, DType, Mode, Table};

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn i64(&mut self) -> i64 {
        (0..8).fold(0i64, |v, _| (v << 8) | self.byte() as i64)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let dtype = [DType::Fp32, DType::Fp16, DType::Bf16, DType::Int8, DType::Int4][input.byte() as usize % 5];
    let dim = 1 + input.byte() as usize % 40;
    let rows = input.byte() as usize % 20;
    let table = match Table::from_raw(&input.bytes(rows * dtype.row_bytes(dim)), rows, dim, dtype) {
        Ok(t) => t,
        Err(_) => return,
    };
    let mode = [Mode::Sum, Mode::Mean, Mode::Max][input.byte() as usize % 3];
    let n = input.byte() as usize % 64;
    // Mostly rows of the table, sometimes anything.
    let indices: Vec<i64> = (0..n)
        .map(|_| match input.byte() % 8 {
            0 => input.i64(),
            b => (b as i64 + input.byte() as i64) % (rows as i64 + 2) - 1,
        })
        .collect();
    let sizes: Vec<i64> = (0..input.byte() % 16).map(|_| (input.byte() % 12) as i64 - 1).collect();
    let weighted = input.byte() % 2 == 1;
    let weights: Vec<f32> = (0..n).map(|_| f32::from_bits(input.i64() as u32)).collect();
    let padding = match input.byte() % 4 {
        0 => Some(input.i64()),
        1 => Some(input.byte() as i64 % (rows as i64 + 1)),
        _ => None,
    };
    let bags = match input.byte() % 3 {
        0 => Bags::Lengths(&sizes),
        1 => Bags::Offsets { offsets: &sizes, include_last: input.byte() % 2 == 1 },
        _ => Bags::Fixed { bags: sizes.len(), per_bag: input.byte() as usize % 5 },
    };
    let batch = match bags {
        Bags::Fixed { bags, .. } => bags,
        Bags::Lengths(l) => l.len(),
        Bags::Offsets { offsets, include_last } => offsets.len().saturating_sub(include_last as usize),
    };
    let view = table.view().expect("an owned table");
    let run = |level: Option<Level>| {
        simd::set_level(level).expect("scalar and the detected level are always available");
        let mut out = vec![0f32; batch * dim];
        let w = weighted.then_some(&weights[..]);
        lookup(view, &indices, bags_again(&bags), w, mode, padding, &mut out).map(|()| out)
    };
    let best = run(None);
    let scalar = run(Some(Level::Scalar));
    simd::set_level(None).unwrap();
    match (&best, &scalar) {
        (Ok(a), Ok(b)) => {
            for (x, y) in a.iter().zip(b) {
                if mode == Mode::Max && !dtype.is_quantized() {
                    // Max picks stored values: exact. (Quantized rows are decoded with a
                    // fused multiply-add in the SIMD kernels and two roundings in the
                    // scalar one, an ulp apart.)
                    assert!(x == y || (x.is_nan() && y.is_nan()), "max: {x} vs {y}");
                } else if !dtype.is_quantized() && x.is_finite() && y.is_finite() && x.abs() < 1e30 && y.abs() < 1e30 {
                    // (Quantized sums accumulate code x scale and the biases apart, so rows
                    // of huge scale and bias that cancel round differently from the scalar
                    // kernel's decoded rows: by up to an ulp of those terms, which this
                    // target cannot bound from the output alone.)
                    assert!((x - y).abs() <= 1e-3 * (1.0 + x.abs() + y.abs()), "{x} vs {y}");
                }
            }
        }
        (Err(_), Err(_)) => {}
        _ => panic!("the SIMD and scalar kernels disagree on refusing: {best:?} vs {scalar:?}"),
    }
});

fn bags_again<'a>(bags: &Bags<'a, i64>) -> Bags<'a, i64> {
    match *bags {
        Bags::Lengths(l) => Bags::Lengths(l),
        Bags::Offsets { offsets, include_last } => Bags::Offsets { offsets, include_last },
        Bags::Fixed { bags, per_bag } => Bags::Fixed { bags, per_bag },
    }
}
