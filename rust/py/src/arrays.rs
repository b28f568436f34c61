//! Taking numpy arguments without copies: C-contiguous, aligned int32/int64 indices and
//! float32 weights are borrowed in place; anything else (a view at an odd byte offset too)
//! goes through `recengine._convert` once (which copies or raises a clear TypeError).

use std::os::raw::c_int;

use numpy::ndarray::{Dim, Dimension};
use numpy::npyffi::{npy_intp, PY_ARRAY_API};
use numpy::{Element, PyArray, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::errors::{memory_error, to_py, value_error};
use pyo3::types::PyString;
use recengine_core::Named;

/// Borrowed indices (or offsets, or lengths) of either integer width.
pub enum Ints<'py> {
    I32(PyReadonlyArrayDyn<'py, i32>),
    I64(PyReadonlyArrayDyn<'py, i64>),
}

/// A borrowed slice of either width.
#[derive(Clone, Copy)]
pub enum IntSlice<'a> {
    I32(&'a [i32]),
    I64(&'a [i64]),
}

impl<'a> IntSlice<'a> {
    /// An int64 copy of int32 indices; None for int64 ones, which are used as they are.
    pub fn widened(self) -> Option<Vec<i64>> {
        match self {
            IntSlice::I32(x) => Some(x.iter().map(|&i| i64::from(i)).collect()),
            IntSlice::I64(_) => None,
        }
    }

    /// The indices as int64: these, or `widened`, their copy from [`IntSlice::widened`].
    pub fn as_i64<'b>(self, widened: &'b Option<Vec<i64>>) -> &'b [i64]
    where
        'a: 'b,
    {
        match self {
            IntSlice::I64(x) => x,
            IntSlice::I32(_) => widened.as_deref().expect("int32 indices come with their widened copy"),
        }
    }
}

impl<'py> Ints<'py> {
    pub fn shape(&self) -> Vec<usize> {
        match self {
            Ints::I32(a) => a.shape().to_vec(),
            Ints::I64(a) => a.shape().to_vec(),
        }
    }

    pub fn slice(&self) -> IntSlice<'_> {
        // The arrays were checked C-contiguous and aligned when taken, so as_slice cannot fail.
        match self {
            Ints::I32(a) => IntSlice::I32(a.as_slice().expect("checked contiguous")),
            Ints::I64(a) => IntSlice::I64(a.as_slice().expect("checked contiguous")),
        }
    }
}

impl IntSlice<'_> {
    pub fn len(&self) -> usize {
        match self {
            IntSlice::I32(s) => s.len(),
            IntSlice::I64(s) => s.len(),
        }
    }
}

fn convert_fn<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let m = MODULE.get_or_try_init(py, || py.import("recengine._convert").map(Bound::unbind))?;
    m.bind(py).getattr(name)
}

/// Whether an array can be read in place as a slice: C-contiguous and aligned for its type
/// (a view at an odd byte offset is contiguous but not aligned, and cannot be a Rust slice).
pub fn in_place<'py>(a: &impl PyUntypedArrayMethods<'py>) -> bool {
    a.is_c_contiguous() && a.is_aligned()
}

fn try_ints<'py>(obj: &Bound<'py, PyAny>) -> Option<Ints<'py>> {
    if let Ok(a) = obj.cast::<PyArrayDyn<i64>>() {
        if in_place(a) {
            return a.try_readonly().ok().map(Ints::I64);
        }
    } else if let Ok(a) = obj.cast::<PyArrayDyn<i32>>() {
        if in_place(a) {
            return a.try_readonly().ok().map(Ints::I32);
        }
    }
    None
}

/// Take an integer array argument (`name` is used in error messages).
pub fn ints<'py>(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<Ints<'py>> {
    if let Some(x) = try_ints(obj) {
        return Ok(x);
    }
    let converted = convert_fn(obj.py(), "as_index_array")?.call1((obj, name))?;
    try_ints(&converted).ok_or_else(|| value_error(format!("could not take {name} as an integer array")))
}

/// Take a float32 array argument.
pub fn floats<'py>(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<PyReadonlyArrayDyn<'py, f32>> {
    if let Ok(a) = obj.cast::<PyArrayDyn<f32>>() {
        if in_place(a) {
            if let Ok(r) = a.try_readonly() {
                return Ok(r);
            }
        }
    }
    let converted = convert_fn(obj.py(), "as_float32_array")?.call1((obj, name))?;
    let a = converted.cast::<PyArrayDyn<f32>>()?;
    Ok(a.try_readonly()?)
}

/// A 1-D integer argument (offsets, lengths).
pub fn ints_1d<'py>(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<Ints<'py>> {
    let x = ints(obj, name)?;
    if x.shape().len() != 1 {
        return Err(value_error(format!("{name} must be 1-D, got shape {:?}", x.shape())));
    }
    Ok(x)
}

/// A new C-contiguous array of shape `dims`, uninitialised (every caller writes all of it).
/// numpy's own error (a `MemoryError` for a size the machine cannot hold, a `ValueError` for
/// one numpy cannot describe) comes back as an `Err`, where `PyArray::new` panics on it.
pub fn new_array<'py, T: Element, const N: usize>(
    py: Python<'py>,
    dims: [usize; N],
) -> PyResult<Bound<'py, PyArray<T, Dim<[usize; N]>>>>
where
    Dim<[usize; N]>: Dimension,
{
    let mut shape = [0 as npy_intp; N];
    for (d, &n) in shape.iter_mut().zip(&dims) {
        *d = npy_intp::try_from(n).map_err(|_| memory_error(format!("an array of shape {dims:?} is too large")))?;
    }
    let descr = T::get_dtype(py).into_dtype_ptr();
    // SAFETY: `shape` holds `N` dimensions, `descr` is a new reference that numpy steals, and
    // `PyArray_Empty` returns a new reference to a C-contiguous array or null with the Python
    // error set, which `from_owned_ptr_or_err` turns into an `Err`. It leaves float and
    // integer elements uninitialised but valid for any bit pattern.
    let ptr = unsafe { PY_ARRAY_API.PyArray_Empty(py, N as c_int, shape.as_mut_ptr(), descr, 0) };
    // SAFETY: `ptr` is an owned reference or null (see above).
    let obj = unsafe { Bound::from_owned_ptr_or_err(py, ptr) }?;
    Ok(obj.cast_into::<PyArray<T, Dim<[usize; N]>>>()?)
}

/// An option named by a string (pooling mode, dtype, split, cache policy, thread pool, SIMD
/// level), taken as the core's enum: the one way every binding reads such an argument. An
/// unknown name raises the core's error, which names the choices.
#[derive(Clone, Copy)]
pub struct Opt<T>(pub T);

impl<'a, 'py, T: Named> FromPyObject<'a, 'py> for Opt<T> {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let text = obj.cast::<PyString>()?;
        let name = text.to_cow()?;
        T::from_name(&name).map(Opt).map_err(to_py)
    }
}
