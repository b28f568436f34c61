//! What every binding file uses: numpy, pyo3, the core's types, and the crate's helpers.

pub(crate) use std::sync::Arc;

pub(crate) use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods,
};
pub(crate) use pyo3::prelude::*;
pub(crate) use pyo3::types::{PyDict, PyList};
pub(crate) use recengine_core::backward::{self, Grad, Plan};
pub(crate) use recengine_core::cache::{self, BlobCache, Policy as CachePolicy, Stats as CacheStats, Store};
pub(crate) use recengine_core::shard::{self, Piece, ShardedCollection, Split, TablePlan};
pub(crate) use recengine_core::{bag_offsets, make_job, probe, run, simd, Bags, DType, Index, Mode, Table, TableView};
pub(crate) use recengine_core::keyed::KeyedLayout;
pub(crate) use recengine_core::{dram, nmp, openmp};

pub(crate) use crate::arrays::{self, floats, in_place, ints, ints_1d, IntSlice, Ints, Opt};
pub(crate) use crate::errors::{detach, index_error, type_error, value_error, IntoPy};
pub(crate) use crate::keyed::{keyed_layout, keyed_weights};
pub(crate) use crate::lookup::{lookup_one, per_table, pool_into_new, pool_requests, request, requests, table_array, Request, TableArray};
pub(crate) use crate::table::{bytemuck_f16, check_dim, PyTable};
