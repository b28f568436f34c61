//! Time one table's pooling on one thread, best of many passes (a tuning aid, not a test):
//! `cargo run -p recengine-core --release --example hot_loop -- ROWS DIM LOOKUPS_PER_BAG BAGS`.
use recengine_core::{lookup, parallel, Bags, DType, Mode, Table};
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("a number")).collect();
    let (rows, dim, per_bag, bags) = match args[..] {
        [r, d, l, b] => (r, d, l, b),
        _ => (7750, 32, 120, 1024),
    };
    parallel::set_num_threads(1).unwrap();
    let table = Table::random(rows, dim, DType::Fp32, 1).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let indices: Vec<i64> = (0..bags * per_bag)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % rows as u64) as i64
        })
        .collect();
    let lengths = vec![per_bag as i64; bags];
    let mut out = vec![0f32; bags * dim];
    let mut best = f64::MAX;
    for _ in 0..200 {
        let t = Instant::now();
        lookup(table.view().unwrap(), &indices, Bags::Lengths(&lengths), None, Mode::Sum, None, &mut out).unwrap();
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!("{rows} x {dim}, {bags} bags of {per_bag}: best {:.1} us, {:.2} ns per lookup", best * 1e6, best * 1e9 / (bags * per_bag) as f64);
}
