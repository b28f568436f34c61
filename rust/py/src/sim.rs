//! The memory-system simulators: the DDR4 model (`dram_run`, `dram_validate`) and the RecNMP
//! emulator (`nmp_emulate`).

use crate::prelude::*;
use recengine_core::settings::{Settings, Value};

/// A setting's value from Python: a bool, a non-negative integer or a float.
fn setting(v: &Bound<'_, PyAny>) -> PyResult<Value> {
    if let Ok(b) = v.cast::<pyo3::types::PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if let Ok(i) = v.extract::<u64>() {
        return Ok(Value::Int(i));
    }
    Ok(Value::Float(v.extract::<f64>()?))
}

/// A config of `S` from its defaults and a dict of the fields to change (unknown ones are an
/// error).
fn configure<S: Settings + Default>(changes: Option<&Bound<'_, PyDict>>) -> PyResult<S> {
    let mut c = S::default();
    for (k, v) in changes.into_iter().flat_map(|d| d.iter()) {
        c.set(&k.extract::<String>()?, setting(&v)?).py_err()?;
    }
    Ok(c)
}

/// A config's settings as a dict of name -> value.
fn settings_dict<'py, S: Settings>(py: Python<'py>, c: &S) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (name, v) in c.settings() {
        match v {
            Value::Int(x) => d.set_item(name, x)?,
            Value::Float(x) => d.set_item(name, x)?,
            Value::Bool(x) => d.set_item(name, x)?,
        }
    }
    Ok(d)
}

/// A DDR4 configuration from a dict of its fields (missing ones keep their defaults).
fn dram_config(cfg: Option<&Bound<'_, PyDict>>) -> PyResult<dram::Config> {
    let c: dram::Config = configure(cfg)?;
    c.check().py_err()?;
    Ok(c)
}

/// The DDR4 model's settings and their defaults (the one definition: `dram::Config`).
#[pyfunction]
pub(crate) fn dram_defaults(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    settings_dict(py, &dram::Config::default())
}

/// The RecNMP emulator's own settings (its DRAM ones are `dram_defaults`) and their defaults.
#[pyfunction]
pub(crate) fn nmp_defaults(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = settings_dict(py, &nmp::NmpConfig::default())?;
    for (name, _) in dram::Config::default().settings() {
        d.del_item(name)?;
    }
    Ok(d)
}

/// Command traces as int64 arrays `[n, 6]`: cycle, kind (0 ACT, 1 RD, 2 PRE), rank, bank
/// group, bank, row.
pub(crate) fn trace_array<'py>(py: Python<'py>, tr: &[dram::Command]) -> PyResult<Bound<'py, PyArray2<i64>>> {
    let flat: Vec<i64> = tr.iter().flat_map(dram::Command::to_row).collect();
    Ok(numpy::ndarray::Array2::from_shape_vec((tr.len(), 6), flat)
        .map_err(|e| value_error(e.to_string()))?
        .into_pyarray(py))
}

/// Emulate the memory system serving 64-byte line reads at byte addresses `addrs` (in arrival
/// order): per channel a dict of reads, activates, precharges, row_hits and finish (cycles),
/// and with `trace` each channel's command trace.
#[pyfunction]
#[pyo3(signature = (addrs, config=None, trace=false))]
#[allow(clippy::type_complexity)]
pub(crate) fn dram_run<'py>(
    py: Python<'py>,
    addrs: &Bound<'py, PyAny>,
    config: Option<&Bound<'py, PyDict>>,
    trace: bool,
) -> PyResult<(Vec<Bound<'py, PyDict>>, Vec<Bound<'py, PyArray2<i64>>>)> {
    let cfg = dram_config(config)?;
    let a = ints(addrs, "addrs")?;
    let addrs: Vec<u64> = match a.slice() {
        IntSlice::I32(v) => v.iter().map(|&x| u64::try_from(x)).collect::<Result<_, _>>(),
        IntSlice::I64(v) => v.iter().map(|&x| u64::try_from(x)).collect::<Result<_, _>>(),
    }
    .map_err(|_| value_error("addresses must not be negative"))?;
    let (stats, traces) = detach(py, || dram::run(&cfg, &addrs, trace))?;
    let dicts = stats
        .iter()
        .map(|s| {
            let d = PyDict::new(py);
            d.set_item("reads", s.reads)?;
            d.set_item("activates", s.activates)?;
            d.set_item("precharges", s.precharges)?;
            d.set_item("row_hits", s.row_hits)?;
            d.set_item("finish", s.finish)?;
            Ok(d)
        })
        .collect::<PyResult<Vec<_>>>()?;
    let arrays = traces.iter().map(|t| trace_array(py, t)).collect::<PyResult<Vec<_>>>()?;
    Ok((dicts, arrays))
}

/// Check one channel's command trace (an `[n, 6]` array as `dram_run` gives) against every
/// timing constraint: ValueError naming the first violation.
#[pyfunction]
#[pyo3(signature = (trace, config=None))]
pub(crate) fn dram_validate(trace: PyReadonlyArray2<'_, i64>, config: Option<&Bound<'_, PyDict>>) -> PyResult<()> {
    let cfg = dram_config(config)?;
    let a = trace.as_array();
    if a.ncols() != 6 {
        return Err(value_error("a trace is an [n, 6] array"));
    }
    let cmds = a
        .rows()
        .into_iter()
        .map(|r| dram::Command::from_row([r[0], r[1], r[2], r[3], r[4], r[5]]))
        .collect::<recengine_core::Result<Vec<_>>>()
        .py_err()?;
    if let Some(c) = cmds.iter().find(|c| c.rank >= cfg.ranks_per_channel() || c.bank_group >= cfg.bank_groups || c.bank >= cfg.banks_per_group) {
        return Err(value_error(format!("a command names rank {}, bank group {}, bank {} outside the configuration", c.rank, c.bank_group, c.bank)));
    }
    dram::validate(&cfg, &cmds).py_err()
}

/// Emulate SLS lookups on the host or on RecNMP (see `recengine_core::nmp`): `table_rows`
/// gives each table's rows; `models`, `tables`, `rows`, `bags` one entry per lookup; `config`
/// the DRAM fields (as `dram_run`) plus nmp, vector_bytes, instr_per_packet, cache_bytes,
/// cache_ways, hot_threshold, table_aware, cache_hit_cycles and the energy fields. With
/// `trace`, the dict also holds `commands`: the DRAM command streams (as `dram_run` gives),
/// one per channel on the host and one per rank with NMP. `starts` (default `[0]`) splits the
/// lookups into a stream of batches (`nmp::emulate_stream`); the dict's `batch_*` lists hold
/// each batch's cycles, latency_ns, cache_hits, cache_accesses, dram_reads and energy_pj.
#[pyfunction]
#[pyo3(signature = (table_rows, models, tables, rows, bags, config=None, trace=false, starts=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn nmp_emulate<'py>(
    py: Python<'py>,
    table_rows: Vec<u64>,
    models: PyReadonlyArray1<'py, i64>,
    tables: PyReadonlyArray1<'py, i64>,
    rows: PyReadonlyArray1<'py, i64>,
    bags: PyReadonlyArray1<'py, i64>,
    config: Option<&Bound<'py, PyDict>>,
    trace: bool,
    starts: Option<Vec<usize>>,
) -> PyResult<Bound<'py, PyDict>> {
    let c: nmp::NmpConfig = configure(config)?;
    c.dram.check().py_err()?;
    let (m, t, r, b) = (models.as_slice()?, tables.as_slice()?, rows.as_slice()?, bags.as_slice()?);
    let n = m.len();
    if t.len() != n || r.len() != n || b.len() != n {
        return Err(value_error("models, tables, rows and bags need one entry per lookup"));
    }
    // Checked in one pass per column, then converted without a check per field.
    let within = |xs: &[i64], max: i64| xs.iter().fold(true, |ok, &x| ok & (0..=max).contains(&x));
    if !within(r, i64::MAX) || !within(b, i64::MAX) || !within(m, i64::MAX) || !within(t, i64::MAX) {
        return Err(index_error("models, tables, rows and bags must not be negative"));
    }
    if !within(m, i64::from(u32::MAX)) || !within(t, i64::from(u32::MAX)) {
        return Err(index_error("model and table ids must be below 2^32"));
    }
    let lookups: Vec<nmp::Lookup> = (0..n).map(|i| nmp::Lookup { model: m[i] as u32, table: t[i] as u32, row: r[i] as u64, bag: b[i] as u64 }).collect();
    let starts = starts.unwrap_or_else(|| vec![0]);
    let (run, commands) = detach(py, || nmp::emulate_batches(&c, &table_rows, &lookups, &starts, trace))?;
    let rep = &run.total;
    let d = PyDict::new(py);
    d.set_item("lookups", rep.lookups)?;
    d.set_item("cycles", rep.cycles)?;
    d.set_item("latency_ns", rep.cycles as f64 * c.dram.timing.tck_ns)?;
    d.set_item("dram_reads", rep.dram_reads)?;
    d.set_item("activates", rep.activates)?;
    d.set_item("precharges", rep.precharges)?;
    d.set_item("row_hits", rep.row_hits)?;
    d.set_item("cache_hits", rep.cache_hits)?;
    d.set_item("cache_accesses", rep.cache_accesses)?;
    d.set_item("channel_bytes", rep.channel_bytes)?;
    d.set_item("energy_pj", rep.energy_pj)?;
    let per = |f: fn(&nmp::Report) -> u64| run.batches.iter().map(f).collect::<Vec<u64>>();
    d.set_item("batch_cycles", per(|b| b.cycles))?;
    d.set_item("batch_latency_ns", run.batches.iter().map(|b| b.cycles as f64 * c.dram.timing.tck_ns).collect::<Vec<f64>>())?;
    d.set_item("batch_cache_hits", per(|b| b.cache_hits))?;
    d.set_item("batch_cache_accesses", per(|b| b.cache_accesses))?;
    d.set_item("batch_dram_reads", per(|b| b.dram_reads))?;
    d.set_item("batch_energy_pj", run.batches.iter().map(|b| b.energy_pj).collect::<Vec<f64>>())?;
    if trace {
        let arrays = commands.iter().map(|t| trace_array(py, t)).collect::<PyResult<Vec<_>>>()?;
        d.set_item("commands", arrays)?;
    }
    Ok(d)
}

/// Add this file's classes and functions to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(dram_run, m)?)?;
    m.add_function(wrap_pyfunction!(dram_validate, m)?)?;
    m.add_function(wrap_pyfunction!(nmp_emulate, m)?)?;
    m.add_function(wrap_pyfunction!(dram_defaults, m)?)?;
    m.add_function(wrap_pyfunction!(nmp_defaults, m)?)?;
    Ok(())
}
