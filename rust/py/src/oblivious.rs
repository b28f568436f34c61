//! Oblivious lookups (`recengine_core::oblivious`): a table's `lookup_scan`.

use crate::prelude::*;
use recengine_core::oblivious::scan_lookup;

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
