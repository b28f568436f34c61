//! Oblivious lookups (`recengine_core::oblivious`): a table's `lookup_scan` and `lookup_padded`.

use std::borrow::Cow;

use crate::prelude::*;
use recengine_core::oblivious::{padded_lookup, scan_lookup};

/// One table's oblivious scan lookup from its borrowed request, into a new `[B, dim]` array.
pub(crate) fn scan_one<'py>(
    py: Python<'py>,
    view: TableView<'_>,
    req: &Request<'py>,
    mode: Mode,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let offsets = req.offsets().py_err()?;
    let out = arrays::new_array::<f32, 2>(py, [offsets.len() - 1, view.dim])?;
    {
        let mut rw = out.readwrite();
        let s = rw.as_slice_mut().expect("a new array is contiguous");
        let w = req.weights();
        // Every cell is written (empty bags give zeros); on error the array is dropped unread.
        match req.indices.slice() {
            IntSlice::I32(i) => detach(py, || scan_lookup(view, i, offsets, w, mode, s))?,
            IntSlice::I64(i) => detach(py, || scan_lookup(view, i, offsets, w, mode, s))?,
        }
    }
    Ok(out)
}

/// One table's padded lookup: the rows `reads` read in order, `slots` saying which lookup each
/// fills (`len(indices)` for a dummy), into a new `[B, dim]` array.
pub(crate) fn padded_one<'py>(
    py: Python<'py>,
    view: TableView<'_>,
    req: &Request<'py>,
    reads: &Bound<'py, PyAny>,
    slots: &Bound<'py, PyAny>,
    mode: Mode,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let offsets = req.offsets().py_err()?;
    let out = arrays::new_array::<f32, 2>(py, [offsets.len() - 1, view.dim])?;
    let (reads, slots) = (ints_1d(reads, "reads")?, ints_1d(slots, "slots")?);
    let (r, s) = (widen(reads.slice()), widen(slots.slice()));
    {
        let mut rw = out.readwrite();
        let o = rw.as_slice_mut().expect("a new array is contiguous");
        let w = req.weights();
        let ids = widen(req.indices.slice());
        detach(py, || padded_lookup(view, &ids, offsets, &r, &s, w, mode, o))?;
    }
    Ok(out)
}

/// The ids as i64 (the padded lookup's three id arrays may differ in width): int64 arrays
/// borrowed as they are, int32 ones widened into a copy.
fn widen(s: IntSlice<'_>) -> Cow<'_, [i64]> {
    match s {
        IntSlice::I32(v) => Cow::Owned(v.iter().map(|&x| i64::from(x)).collect()),
        IntSlice::I64(v) => Cow::Borrowed(v),
    }
}
