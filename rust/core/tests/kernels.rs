//! Every kernel level against a naive reference, over random shapes, formats and options.

use rand_xoshiro::rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use recengine_core::simd::{available_levels, set_level};
use recengine_core::{lookup, Bags, DType, Error, Mode, Table};
use std::sync::Mutex;

/// The SIMD level is process-wide: tests that force one take turns.
static LEVEL_LOCK: Mutex<()> = Mutex::new(());

struct Case {
    rows: usize,
    dim: usize,
    dtype: DType,
    mode: Mode,
    lengths: Vec<i64>,
    indices: Vec<i64>,
    weights: Option<Vec<f32>>,
    padding: Option<i64>,
}

fn naive(table: &Table, c: &Case) -> Vec<f32> {
    let mut all = vec![0f32; c.rows * c.dim];
    table.to_f32(&mut all).unwrap();
    let mut out = vec![0f32; c.lengths.len() * c.dim];
    let mut j = 0;
    for (b, &l) in c.lengths.iter().enumerate() {
        let o = &mut out[b * c.dim..(b + 1) * c.dim];
        let mut acc = vec![if c.mode == Mode::Max { f64::NEG_INFINITY } else { 0.0 }; c.dim];
        let mut count = 0;
        for _ in 0..l {
            let r = c.indices[j] as usize;
            let w = c.weights.as_ref().map_or(1.0, |w| w[j]) as f64;
            j += 1;
            if Some(r as i64) == c.padding {
                continue;
            }
            count += 1;
            for (a, x) in acc.iter_mut().zip(&all[r * c.dim..(r + 1) * c.dim]) {
                if c.mode == Mode::Max {
                    *a = a.max(*x as f64);
                } else {
                    *a += w * *x as f64;
                }
            }
        }
        for (d, a) in o.iter_mut().zip(&acc) {
            *d = if count == 0 {
                0.0
            } else if c.mode == Mode::Mean {
                (*a / count as f64) as f32
            } else {
                *a as f32
            };
        }
    }
    out
}

fn random_case(rng: &mut Xoshiro256PlusPlus) -> Case {
    let dims = [1, 2, 3, 7, 8, 15, 16, 17, 31, 32, 33, 48, 64, 100, 128, 129, 255, 256, 257, 300, 513];
    let dim = dims[(rng.next_u64() % dims.len() as u64) as usize];
    let rows = 1 + (rng.next_u64() % 300) as usize;
    let dtype = DType::ALL[(rng.next_u64() % 5) as usize];
    let mode = [Mode::Sum, Mode::Mean, Mode::Max][(rng.next_u64() % 3) as usize];
    let batch = (rng.next_u64() % 40) as usize;
    let lengths: Vec<i64> = (0..batch).map(|_| (rng.next_u64() % 25) as i64).collect();
    let n: i64 = lengths.iter().sum();
    let indices: Vec<i64> = (0..n).map(|_| (rng.next_u64() % rows as u64) as i64).collect();
    let weights = (mode == Mode::Sum && rng.next_u64().is_multiple_of(2))
        .then(|| (0..n).map(|_| (rng.next_u64() % 1000) as f32 / 250.0 - 2.0).collect());
    let padding = (rng.next_u64().is_multiple_of(3)).then(|| (rng.next_u64() % rows as u64) as i64);
    Case { rows, dim, dtype, mode, lengths, indices, weights, padding }
}

#[test]
fn every_level_matches_the_naive_reference() {
    let _guard = LEVEL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
    for level in available_levels() {
        set_level(Some(level)).unwrap();
        for case in 0..300 {
            let c = random_case(&mut rng);
            let table = Table::random(c.rows, c.dim, c.dtype, case).unwrap();
            let mut out = vec![f32::NAN; c.lengths.len() * c.dim];
            lookup(
                table.view().unwrap(),
                &c.indices,
                Bags::Lengths(&c.lengths),
                c.weights.as_deref(),
                c.mode,
                c.padding,
                &mut out,
            )
            .unwrap();
            let want = naive(&table, &c);
            for (k, (a, b)) in out.iter().zip(&want).enumerate() {
                let tol = 1e-4 * (1.0 + b.abs()) * (1.0 + c.lengths.iter().max().copied().unwrap_or(0) as f32);
                assert!(
                    (a - b).abs() <= tol,
                    "{level:?} {:?} {:?} dim {} element {k}: {a} vs {b}",
                    c.dtype,
                    c.mode,
                    c.dim
                );
            }
        }
    }
    set_level(None).unwrap();
}

#[test]
fn out_of_range_indices_are_reported_with_their_bag() {
    let _guard = LEVEL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for level in available_levels() {
        set_level(Some(level)).unwrap();
        let table = Table::random(10, 16, DType::Fp32, 0).unwrap();
        let mut out = vec![0f32; 2 * 16];
        for bad in [10i64, -1, i64::MAX, i64::MIN] {
            let err = lookup(table.view().unwrap(), &[1, 2, bad], Bags::Lengths(&[1i64, 2]), None, Mode::Sum, None, &mut out)
                .unwrap_err();
            match err {
                Error::IndexOutOfRange(e) => {
                    assert_eq!((e.index, e.position, e.bag, e.num_rows), (bad, 2, 1, 10));
                }
                other => panic!("{other}"),
            }
        }
    }
    set_level(None).unwrap();
}

#[test]
fn int32_indices_and_large_batches_agree_with_int64() {
    let table = Table::random(5000, 64, DType::Int8, 3).unwrap();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    let idx64: Vec<i64> = (0..200_000).map(|_| (rng.next_u64() % 5000) as i64).collect();
    let idx32: Vec<i32> = idx64.iter().map(|&i| i as i32).collect();
    let offsets: Vec<i32> = (0..2000).map(|b| b * 100).collect();
    let mut a = vec![0f32; 2000 * 64];
    let mut b = vec![0f32; 2000 * 64];
    let bags = Bags::Offsets { offsets: &offsets, include_last: false };
    lookup(table.view().unwrap(), &idx64, bags, None, Mode::Mean, None, &mut a).unwrap();
    lookup(table.view().unwrap(), &idx32, bags, None, Mode::Mean, None, &mut b).unwrap();
    assert_eq!(a, b);
}
