//! Arbitrary bytes as a safetensors table file (header and data), loaded memory-mapped and
//! into memory: either refused with an error or a table whose every row can be read and
//! whose two loads agree. No panic, no read outside the file.

#![no_main]

use libfuzzer_sys::fuzz_target;
use recengine_core::{lookup, Bags, Mode, Table};

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("recengine-fuzz-{}.safetensors", std::process::id()));
    std::fs::write(&path, data).expect("the temporary directory is writable");
    let p = path.to_str().expect("a UTF-8 temporary path");
    let (mapped, read) = (Table::load_safetensors(p, None, true), Table::load_safetensors(p, None, false));
    match (mapped, read) {
        (Ok(a), Ok(b)) => {
            assert_eq!((a.num_rows(), a.dim(), a.dtype()), (b.num_rows(), b.dim(), b.dtype()));
            assert_eq!(a.bytes().unwrap(), b.bytes().unwrap());
            let rows: Vec<i64> = (0..a.num_rows() as i64).collect();
            let mut out = vec![0f32; rows.len() * a.dim()];
            let bags: Bags<'_, i64> = Bags::Fixed { bags: rows.len(), per_bag: 1 };
            lookup(a.view().unwrap(), &rows, bags, None, Mode::Sum, None, &mut out).unwrap();
        }
        (Err(_), Err(_)) => {}
        (a, b) => panic!("mapped and read loads disagree: {:?} vs {:?}", a.err(), b.err()),
    }
    let _ = std::fs::remove_file(&path);
});
