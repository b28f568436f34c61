//! Arbitrary offsets or lengths over an arbitrary number of indices: either refused, or
//! `B + 1` non-decreasing boundaries from 0 to the number of indices.

#![no_main]

use libfuzzer_sys::fuzz_target;
use recengine_core::{bag_offsets, Bags};

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else { return };
    let values: Vec<i64> = rest.chunks(8).map(|c| c.iter().fold(0i64, |v, b| (v << 8) | *b as i64)).collect();
    let n = values.first().map_or(0, |v| v.unsigned_abs() as usize % 1000);
    let bags = match head % 3 {
        0 => Bags::Lengths(&values),
        1 => Bags::Offsets { offsets: &values, include_last: head % 2 == 0 },
        _ => Bags::<i64>::Fixed { bags: n % 17, per_bag: (head as usize) % 9 },
    };
    if let Ok(offsets) = bag_offsets(bags, n) {
        assert_eq!(offsets.first(), Some(&0));
        assert_eq!(offsets.last(), Some(&n));
        assert!(offsets.windows(2).all(|w| w[0] <= w[1]));
    }
});
