//! SparseLengthsSum on a DDR4 host vs on RecNMP's near-memory units.
//!
//! A trace is a list of lookups `(model, table, row, bag)`; tables of `vector_bytes` rows lie
//! one after another in memory, each starting on a DRAM row boundary.
//!
//! * Host: every line of every vector crosses its channel through the FR-FCFS controllers of
//!   [`dram`](crate::dram); the core pools.
//! * RecNMP: the host sends compressed NMP instructions (one per vector, `instr_per_packet` to
//!   a 64-byte packet) over each channel to the DIMM-NMP units, which hand them to the
//!   Rank-NMP unit of the vector's rank. Each rank reads its vectors with ACT/RD/PRE on its own
//!   internal bus (all ranks in parallel), pools them, and the DIMM sums the ranks' partial
//!   sums and returns one pooled vector per bag and DIMM over the channel. A per-rank
//!   RankCache (LRU, set-associative) keeps vectors whose LocalityBit is set: with hot-entry
//!   profiling, those whose row appears at least `hot_threshold` times in the batch, else
//!   every vector. Table-aware scheduling hands each rank its vectors grouped by table and row
//!   instead of in arrival order.
//!
//! A trace is one batch, or a stream of batches ([`emulate_stream`]) that run one after
//! another: each batch is profiled and scheduled on its own and starts with the banks
//! precharged, and the RankCaches keep their contents from batch to batch.
//!
//! Energy counts DRAM commands (ACT, RD, PRE), channel I/O per bit, background power for the
//! time taken, NMP adds per value and cache accesses; [`Energy`] holds the per-unit costs.

use rustc_hash::{FxHashMap, FxHashSet};

use crate::dram::{self, Config, Location};

/// Vectors a Rank-NMP unit's packet queue holds: table-aware scheduling reorders within it.
const SCHEDULE_WINDOW: usize = 32;
use crate::error::{Error, Result};
use crate::parallel;

/// One vector read: `model` (a co-located model or host thread), `table`, `row`, `bag`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lookup {
    pub model: u32,
    pub table: u32,
    pub row: u64,
    pub bag: u64,
}

/// Per-unit energies (pJ) and powers (mW). Defaults: DDR4-like per-command energies of a
/// Micron-style power model for an x8 rank, 4 pJ/bit channel I/O, 1 pJ per NMP float add, and
/// an SRAM RankCache access of NVMExplorer's table (2 MB SRAM array, 64-bit access, 1.128 pJ, scaled
/// to a 64-byte line: 8 accesses).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Energy {
    pub act_pj: f64,
    pub rd_pj: f64,
    pub pre_pj: f64,
    pub io_pj_per_bit: f64,
    pub background_mw_per_rank: f64,
    pub nmp_add_pj: f64,
    pub cache_read_pj: f64,
    pub cache_write_pj: f64,
}

impl Default for Energy {
    fn default() -> Self {
        Energy {
            act_pj: 1700.0,
            rd_pj: 1100.0,
            pre_pj: 900.0,
            io_pj_per_bit: 4.0,
            background_mw_per_rank: 300.0,
            nmp_add_pj: 1.0,
            cache_read_pj: 8.0 * 1.128,
            cache_write_pj: 8.0 * 17.02,
        }
    }
}

/// The emulated system.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NmpConfig {
    pub dram: Config,
    /// Whether SLS runs on the NMP units (else on the host).
    pub nmp: bool,
    pub vector_bytes: usize,
    pub instr_per_packet: usize,
    /// RankCache bytes per rank (0: none), ways, and the hot-entry threshold (0: profiling
    /// off, every vector may be cached).
    pub cache_bytes: usize,
    pub cache_ways: usize,
    pub hot_threshold: u64,
    pub table_aware: bool,
    /// Cycles of a RankCache hit.
    pub cache_hit_cycles: u64,
    /// Time the DRAM with the fast mode ([`crate::dram_fast`], the default) instead of the
    /// command model (which alone gives command streams).
    pub fast: bool,
    pub energy: Energy,
}

crate::settings::settings!(NmpConfig, "NMP", [
    nmp => nmp, vector_bytes => vector_bytes, instr_per_packet => instr_per_packet,
    cache_bytes => cache_bytes, cache_ways => cache_ways, hot_threshold => hot_threshold,
    table_aware => table_aware, cache_hit_cycles => cache_hit_cycles, fast => fast, act_pj => energy.act_pj,
    rd_pj => energy.rd_pj, pre_pj => energy.pre_pj, io_pj_per_bit => energy.io_pj_per_bit,
    background_mw_per_rank => energy.background_mw_per_rank, nmp_add_pj => energy.nmp_add_pj,
    cache_read_pj => energy.cache_read_pj, cache_write_pj => energy.cache_write_pj,
], rest: dram);

impl Default for NmpConfig {
    fn default() -> Self {
        NmpConfig {
            dram: Config::default(),
            nmp: true,
            vector_bytes: 128,
            instr_per_packet: 8,
            cache_bytes: 128 * 1024,
            cache_ways: 4,
            hot_threshold: 2,
            table_aware: true,
            cache_hit_cycles: 2,
            fast: true,
            energy: Energy::default(),
        }
    }
}

/// What an emulation measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub lookups: u64,
    pub cycles: u64,
    pub dram_reads: u64,
    pub activates: u64,
    pub precharges: u64,
    pub row_hits: u64,
    pub cache_hits: u64,
    pub cache_accesses: u64,
    pub channel_bytes: u64,
    pub energy_pj: f64,
}

impl NmpConfig {
    fn check(&self) -> Result<()> {
        self.dram.check()?;
        if self.vector_bytes == 0 || self.vector_bytes > self.dram.row_bytes {
            return Err(Error::value(format!(
                "vector_bytes must be in 1..={} (a DRAM row), got {}",
                self.dram.row_bytes, self.vector_bytes
            )));
        }
        if self.instr_per_packet == 0 {
            return Err(Error::value("instr_per_packet must be at least 1"));
        }
        if self.cache_bytes > 0 {
            if self.cache_ways == 0 {
                return Err(Error::value("cache_ways must be at least 1"));
            }
            if self.cache_bytes > 16 << 20 {
                return Err(Error::value(format!(
                    "a RankCache of {} bytes is larger than this model allows (16 MiB)",
                    self.cache_bytes
                )));
            }
            if self.cache_bytes < self.vector_bytes * self.cache_ways {
                return Err(Error::value("the RankCache must hold at least one set of vectors"));
            }
        }
        Ok(())
    }

    fn lines_per_vector(&self) -> u64 {
        self.vector_bytes.div_ceil(self.dram.line_bytes) as u64
    }

    /// Byte address of a vector: tables back to back, each on a row boundary.
    fn address(&self, table_base: &[u64], l: &Lookup) -> u64 {
        table_base[l.table as usize] + l.row * self.vector_bytes as u64
    }
}

/// One vector a rank reads: its address and first line's place in the rank (bank group,
/// bank, row, column), whether its LocalityBit is set, and its table (for table-aware
/// scheduling). Kept small: a stream holds one per lookup.
#[derive(Clone, Copy)]
struct Vector {
    addr: u64,
    row: u64,
    column: u32,
    table: u32,
    bank_group: u16,
    bank: u16,
    hot: bool,
}

impl Vector {
    fn new(addr: u64, loc: &Location, table: u32) -> Vector {
        // A bank group or bank number is below its count, at most 2^16 (Config::check).
        Vector { addr, row: loc.row, column: loc.column, table, bank_group: loc.bank_group as u16, bank: loc.bank as u16, hot: true }
    }

    /// The place of its `k`-th line on the rank's own bus, when the vector's lines share a row.
    fn line(&self, k: u32) -> Location {
        Location { channel: 0, rank: 0, bank_group: self.bank_group as usize, bank: self.bank as usize, row: self.row, column: self.column + k }
    }
}

/// Counts the distinct (model, bag) pairs each DIMM returns a pooled vector for, batch by
/// batch: a stamp per pair and DIMM when the batch's ids span a small range, else hash sets.
struct BagCounter {
    stamps: Vec<u32>,
    sets: Vec<FxHashSet<(u32, u64)>>,
}

impl BagCounter {
    /// Add `(dimm, lookup)` pairs of batch `b` (0-based); returns the count per DIMM.
    fn count(&mut self, b: usize, dimms: usize, pairs: impl Iterator<Item = (usize, (u32, u64))> + Clone) -> Vec<u64> {
        let mut out = vec![0u64; dimms];
        let (mut bmin, mut bmax, mut mmax) = (u64::MAX, 0u64, 0u32);
        for (_, (m, bag)) in pairs.clone() {
            bmin = bmin.min(bag);
            bmax = bmax.max(bag);
            mmax = mmax.max(m);
        }
        let span = (bmax.saturating_sub(bmin) as u128 + 1) * (mmax as u128 + 1) * dimms as u128;
        if span <= 1 << 22 {
            let span = span as usize;
            if self.stamps.len() < span {
                self.stamps.resize(span, 0);
            }
            let models = mmax as u64 + 1;
            let stamp = b as u32 + 1;
            for (d, (m, bag)) in pairs {
                let i = (((bag - bmin) * models + m as u64) * dimms as u64) as usize + d;
                if self.stamps[i] != stamp {
                    self.stamps[i] = stamp;
                    out[d] += 1;
                }
            }
        } else {
            self.sets.resize_with(dimms, FxHashSet::default);
            for (d, key) in pairs {
                self.sets[d].insert(key);
            }
            for (d, s) in self.sets.iter_mut().enumerate() {
                out[d] = s.len() as u64;
                s.clear();
            }
        }
        out
    }
}

/// A set-associative LRU cache of vectors, keyed by vector address.
struct RankCache {
    sets: Vec<Vec<(u64, u64)>>,
    ways: usize,
    vector_bytes: u64,
    clock: u64,
}

impl RankCache {
    fn new(bytes: usize, vector_bytes: usize, ways: usize) -> RankCache {
        let lines = (bytes / vector_bytes).max(ways);
        let sets = (lines / ways).max(1);
        RankCache { sets: vec![Vec::with_capacity(ways); sets], ways, vector_bytes: vector_bytes as u64, clock: 0 }
    }

    /// The set of the vector at `addr`: its vector number, hashed (the address bits that pick
    /// the channel and rank are the same for every vector a rank holds, and vector addresses
    /// are multiples of the vector size, so a plain modulus would use a few sets only).
    fn set_of(&self, addr: u64) -> usize {
        let h = (addr / self.vector_bytes).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ((h as u128 * self.sets.len() as u128) >> 64) as usize
    }

    /// Look `addr` up: a hit, or (when `insert`) put it in, evicting the least recent.
    fn access(&mut self, addr: u64, insert: bool) -> bool {
        self.clock += 1;
        let s = self.set_of(addr);
        let set = &mut self.sets[s];
        if let Some(e) = set.iter_mut().find(|e| e.0 == addr) {
            e.1 = self.clock;
            return true;
        }
        if insert {
            if set.len() < self.ways {
                set.push((addr, self.clock));
            } else if let Some(v) = set.iter_mut().min_by_key(|e| e.1) {
                *v = (addr, self.clock);
            }
        }
        false
    }
}

/// Emulate the trace of `lookups` over tables of `table_rows` rows (tables laid out in that
/// order) as one batch. Deterministic; channels (host) or ranks (NMP) run in parallel on the
/// core's threads with identical results for any thread count.
pub fn emulate(cfg: &NmpConfig, table_rows: &[u64], lookups: &[Lookup]) -> Result<Report> {
    emulate_traced(cfg, table_rows, lookups, false).map(|(r, _)| r)
}

/// [`emulate`], also returning the DRAM command streams when `traces` is set: one per channel
/// on the host, one per rank with NMP (rank `c * ranks_per_channel + r`, its commands
/// addressed to rank 0 of a one-rank channel: the Rank-NMP unit's own bus), each checkable
/// with [`dram::validate`].
pub fn emulate_traced(cfg: &NmpConfig, table_rows: &[u64], lookups: &[Lookup], traces: bool) -> Result<(Report, Vec<Vec<dram::Command>>)> {
    let (run, commands) = emulate_batches(cfg, table_rows, lookups, &[0], traces)?;
    Ok((run.total, commands))
}

/// What [`emulate_stream`] measured: the whole stream and each batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamReport {
    /// The stream: counters summed, cycles the batches' back to back.
    pub total: Report,
    pub batches: Vec<Report>,
}

/// Emulate a stream of batches: batch `i` is `lookups[starts[i]..starts[i + 1]]` (the last up
/// to the end; `starts` begins at 0 and never decreases). Batches run one after another, each
/// starting with every bank precharged. Hot-entry profiling counts within each batch (the host
/// profiles a batch before it sends it), table-aware scheduling reorders within each batch,
/// and the RankCaches keep their contents from batch to batch.
pub fn emulate_stream(cfg: &NmpConfig, table_rows: &[u64], lookups: &[Lookup], starts: &[usize]) -> Result<StreamReport> {
    emulate_batches(cfg, table_rows, lookups, starts, false).map(|(r, _)| r)
}

/// One rank's (or channel's) DRAM counters for one batch.
#[derive(Clone, Default)]
struct Counts {
    stats: dram::ChannelStats,
    hits: u64,
    accesses: u64,
}

/// Byte offsets of each table: back to back, each on a DRAM row boundary.
fn table_bases(cfg: &NmpConfig, table_rows: &[u64]) -> Result<Vec<u64>> {
    let row_bytes = cfg.dram.row_bytes as u64;
    let mut table_base = Vec::with_capacity(table_rows.len());
    let mut next = 0u64;
    for &rows in table_rows {
        table_base.push(next);
        next = rows
            .checked_mul(cfg.vector_bytes as u64)
            .map(|b| b.div_ceil(row_bytes) * row_bytes)
            .and_then(|b| next.checked_add(b))
            .filter(|&end| end < 1 << 56)
            .ok_or_else(|| Error::value("the tables are larger than the emulated address space (2^56 bytes)"))?;
    }
    Ok(table_base)
}

/// The batches' `[start, end)` ranges of `n` lookups, checked.
fn batch_ranges(starts: &[usize], n: usize) -> Result<Vec<(usize, usize)>> {
    if starts.first() != Some(&0) {
        return Err(Error::value("a stream's batch starts must begin with 0"));
    }
    if let Some(w) = starts.windows(2).find(|w| w[1] < w[0]) {
        return Err(Error::value(format!("batch starts must not decrease (got {} after {})", w[1], w[0])));
    }
    if let Some(&s) = starts.iter().find(|&&s| s > n) {
        return Err(Error::value(format!("a batch starts at lookup {s} but the trace has {n}")));
    }
    Ok(starts.iter().enumerate().map(|(i, &s)| (s, starts.get(i + 1).copied().unwrap_or(n))).collect())
}

/// The energy of a batch (or stream) with these counters and cycles.
fn energy_pj(cfg: &NmpConfig, r: &Report) -> f64 {
    let e = cfg.energy;
    let ns = r.cycles as f64 * cfg.dram.timing.tck_ns;
    let ranks_total = (cfg.dram.channels * cfg.dram.ranks_per_channel()) as f64;
    let values = (cfg.vector_bytes / 4) as f64;
    r.activates as f64 * e.act_pj
        + r.dram_reads as f64 * e.rd_pj
        + r.precharges as f64 * e.pre_pj
        + r.channel_bytes as f64 * 8.0 * e.io_pj_per_bit
        + e.background_mw_per_rank * ranks_total * ns // mW x ns = pJ
        + if cfg.nmp { r.lookups as f64 * values * e.nmp_add_pj } else { 0.0 }
        + r.cache_accesses as f64 * e.cache_read_pj
        + (r.cache_accesses - r.cache_hits) as f64 * if cfg.cache_bytes > 0 { e.cache_write_pj } else { 0.0 }
}

impl Report {
    fn add_dram(&mut self, c: &Counts) {
        self.dram_reads += c.stats.reads;
        self.activates += c.stats.activates;
        self.precharges += c.stats.precharges;
        self.row_hits += c.stats.row_hits;
        self.cache_hits += c.hits;
        self.cache_accesses += c.accesses;
    }

    fn add(&mut self, b: &Report) {
        self.lookups += b.lookups;
        self.cycles += b.cycles;
        self.dram_reads += b.dram_reads;
        self.activates += b.activates;
        self.precharges += b.precharges;
        self.row_hits += b.row_hits;
        self.cache_hits += b.cache_hits;
        self.cache_accesses += b.cache_accesses;
        self.channel_bytes += b.channel_bytes;
        self.energy_pj += b.energy_pj;
    }
}

/// [`emulate_stream`], also returning the DRAM command streams when `traces` is set (as
/// [`emulate_traced`]; a stream of one batch only).
pub fn emulate_batches(cfg: &NmpConfig, table_rows: &[u64], lookups: &[Lookup], starts: &[usize], traces: bool) -> Result<(StreamReport, Vec<Vec<dram::Command>>)> {
    cfg.check()?;
    if traces && cfg.fast {
        return Err(Error::value("command streams come from the command model: set timing='command' (fast=false)"));
    }
    let ranges = batch_ranges(starts, lookups.len())?;
    if traces && ranges.len() > 1 {
        return Err(Error::value("command streams are kept for one batch, not a stream of batches"));
    }
    let table_base = table_bases(cfg, table_rows)?;
    if let Some((i, l)) = lookups.iter().enumerate().find(|(_, l)| l.table as usize >= table_rows.len() || l.row >= table_rows[l.table as usize]) {
        return Err(Error::IndexOutOfRange(crate::error::IndexError {
            index: l.row as i64,
            position: i,
            bag: l.bag as usize,
            num_rows: table_rows.get(l.table as usize).copied().unwrap_or(0) as usize,
            table: Some(l.table as usize),
        }));
    }
    let lines = cfg.lines_per_vector();
    let line = cfg.dram.line_bytes as u64;
    let mut batches: Vec<Report> = ranges.iter().map(|&(s, e)| Report { lookups: (e - s) as u64, ..Default::default() }).collect();
    let mut commands = Vec::new();
    if !cfg.nmp {
        for (b, &(s, e)) in batches.iter_mut().zip(&ranges) {
            let addrs: Vec<u64> = lookups[s..e]
                .iter()
                .flat_map(|l| {
                    let a = cfg.address(&table_base, l);
                    (0..lines).map(move |k| a + k * line)
                })
                .collect();
            let (stats, cmds) = dram::run_timed(&cfg.dram, &addrs, traces, cfg.fast)?;
            commands = cmds;
            for s in stats {
                b.cycles = b.cycles.max(s.finish);
                b.add_dram(&Counts { stats: s, ..Default::default() });
            }
            b.channel_bytes = b.dram_reads * line;
        }
    } else {
        commands = run_nmp(cfg, &table_base, lookups, &ranges, &mut batches, traces)?;
    }
    let mut total = Report::default();
    for b in &mut batches {
        b.energy_pj = energy_pj(cfg, b);
        total.add(b);
    }
    Ok((StreamReport { total, batches }, commands))
}

/// RecNMP: each rank's Rank-NMP unit reads its batch's vectors (through its RankCache, which
/// persists across batches) on its own bus; the channel carries the instruction packets in and
/// the DIMMs' pooled vectors out. Fills `batches`' counters and cycles; returns the ranks'
/// command streams when `traces` is set (one batch).
fn run_nmp(cfg: &NmpConfig, table_base: &[u64], lookups: &[Lookup], ranges: &[(usize, usize)], batches: &mut [Report], traces: bool) -> Result<Vec<Vec<dram::Command>>> {
    let lines = cfg.lines_per_vector();
    let line = cfg.dram.line_bytes as u64;
    let n_batches = ranges.len();
    let ranks_per_channel = cfg.dram.ranks_per_channel();
    let n_ranks = cfg.dram.channels * ranks_per_channel;
    let dimms = cfg.dram.dimms_per_channel;
    let per_dimm = cfg.dram.ranks_per_dimm;
    // Which rank serves each vector, where each batch ends in each rank's list, and how many
    // pooled vectors (distinct bags) each DIMM returns per batch.
    let mut per_rank: Vec<Vec<Vector>> = (0..n_ranks).map(|_| Vec::with_capacity(lookups.len() / n_ranks + lookups.len() / (4 * n_ranks) + 16)).collect();
    let mut rank_ends = vec![0usize; n_ranks * n_batches];
    let mut results = vec![0u64; cfg.dram.channels * dimms * n_batches];
    let mut bags = BagCounter { stamps: Vec::new(), sets: Vec::new() };
    let mut dimm_of = Vec::new();
    let locator = cfg.dram.locator();
    for (b, &(s, e)) in ranges.iter().enumerate() {
        dimm_of.clear();
        for l in &lookups[s..e] {
            let a = cfg.address(table_base, l);
            let loc = locator.locate(a);
            per_rank[loc.channel * ranks_per_channel + loc.rank].push(Vector::new(a, &loc, l.table));
            dimm_of.push(loc.channel * dimms + loc.rank / per_dimm);
        }
        for (r, v) in per_rank.iter().enumerate() {
            rank_ends[r * n_batches + b] = v.len();
        }
        let pairs = dimm_of.iter().zip(&lookups[s..e]).map(|(&d, l)| (d, (l.model, l.bag)));
        for (d, n) in bags.count(b, cfg.dram.channels * dimms, pairs).into_iter().enumerate() {
            results[d * n_batches + b] = n;
        }
    }
    // A vector's lines share its first line's DRAM row when vectors tile the row.
    let tiles = cfg.dram.row_bytes.is_multiple_of(cfg.vector_bytes);
    // Each rank alone: a one-rank channel of its own (its internal bus), cache in front.
    let rank_cfg = Config { channels: 1, dimms_per_channel: 1, ranks_per_dimm: 1, ..cfg.dram };
    type RankOut = (Vec<Counts>, Vec<dram::Command>);
    let outs: Vec<std::sync::Mutex<Option<RankOut>>> = (0..n_ranks).map(|_| std::sync::Mutex::new(None)).collect();
    let per_rank: Vec<std::sync::Mutex<Vec<Vector>>> = per_rank.into_iter().map(std::sync::Mutex::new).collect();
    parallel::for_each_index(n_ranks, usize::MAX, &|r| {
        let mut work = std::mem::take(&mut *per_rank[r].lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        let mut cache = (cfg.cache_bytes > 0).then(|| RankCache::new(cfg.cache_bytes, cfg.vector_bytes, cfg.cache_ways));
        let mut counts = Vec::with_capacity(n_batches);
        let mut trace = Vec::new();
        let mut start = 0;
        let mut reqs = Vec::new();
        let mut order: Vec<u64> = Vec::new();
        let mut seen: FxHashMap<u64, u64> = FxHashMap::default();
        for &end in &rank_ends[r * n_batches..(r + 1) * n_batches] {
            let batch = &mut work[start..end];
            start = end;
            if cfg.hot_threshold > 0 {
                // Hot-entry profiling: a vector's LocalityBit is set when its row is looked up
                // at least `hot_threshold` times in the batch (counted per rank: a row lives in
                // one rank).
                seen.clear();
                seen.reserve(batch.len());
                for v in batch.iter() {
                    *seen.entry(v.addr).or_default() += 1;
                }
                for v in batch.iter_mut() {
                    v.hot = seen[&v.addr] >= cfg.hot_threshold;
                }
            }
            // The order the rank serves them, as keys (table << 32 | position): with
            // table-aware scheduling each window of the packet queue is sorted, which puts the
            // same table's vectors together and keeps arrival order within a table.
            if batch.len() > u32::MAX as usize {
                return Err(Error::value("a rank's batch holds more than 2^32 vectors"));
            }
            order.clear();
            let table_key = |(i, v): (usize, &Vector)| if cfg.table_aware { u64::from(v.table) << 32 | i as u64 } else { i as u64 };
            order.extend(batch.iter().enumerate().map(table_key));
            if cfg.table_aware {
                for w in order.chunks_mut(SCHEDULE_WINDOW) {
                    w.sort_unstable();
                }
            }
            let (mut hits, mut accesses) = (0u64, 0u64);
            reqs.clear();
            for v in order.iter().map(|&k| &batch[(k & u64::from(u32::MAX)) as usize]) {
                if let Some(c) = cache.as_mut() {
                    accesses += 1;
                    if c.access(v.addr, v.hot) {
                        hits += 1;
                        continue;
                    }
                }
                for k in 0..lines {
                    let l = if tiles { v.line(k as u32) } else { Location { channel: 0, rank: 0, ..locator.locate(v.addr + k * line) } };
                    reqs.push(l);
                }
            }
            let mut stats = dram::run_channel_timed(&rank_cfg, &reqs, traces.then_some(&mut trace), cfg.fast);
            stats.finish += hits * cfg.cache_hit_cycles;
            stats.done = Vec::new();
            counts.push(Counts { stats, hits, accesses });
        }
        *outs[r].lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((counts, trace));
        Ok(())
    })?;
    let mut rank_finish = vec![0u64; n_ranks * n_batches];
    let mut commands = Vec::new();
    for (r, m) in outs.into_iter().enumerate() {
        let (counts, trace) = m.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner).expect("every rank ran");
        for (b, c) in counts.iter().enumerate() {
            batches[b].add_dram(c);
            rank_finish[r * n_batches + b] = c.stats.finish;
        }
        if traces {
            commands.push(trace);
        }
    }
    // Each batch on each channel: instruction packets in, then the slowest rank, then the
    // pooled vectors (one per bag and DIMM) out.
    let t = cfg.dram.timing;
    for (b, rep) in batches.iter_mut().enumerate() {
        for c in 0..cfg.dram.channels {
            let ranks = c * ranks_per_channel..(c + 1) * ranks_per_channel;
            let instrs: u64 = ranks.clone().map(|r| (rank_ends[r * n_batches + b] - if b > 0 { rank_ends[r * n_batches + b - 1] } else { 0 }) as u64).sum();
            let packets = instrs.div_ceil(cfg.instr_per_packet as u64);
            let out_lines: u64 = (c * dimms..(c + 1) * dimms).map(|d| results[d * n_batches + b]).sum::<u64>() * lines;
            let slowest = ranks.map(|r| rank_finish[r * n_batches + b]).max().unwrap_or(0);
            rep.cycles = rep.cycles.max(packets * t.tbl + slowest + out_lines * t.tbl);
            rep.channel_bytes += (packets + out_lines) * line;
        }
    }
    Ok(commands)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookups(n: u64, rows: u64, seed: u64) -> Vec<Lookup> {
        let mut x = seed | 1;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                Lookup { model: 0, table: (i % 4) as u32, row: x % rows, bag: i / 40 }
            })
            .collect()
    }

    #[test]
    fn nmp_is_faster_than_the_host_and_reads_the_same_bytes_without_a_cache() {
        let tr = lookups(20000, 1 << 20, 7);
        let rows = [1u64 << 20; 4];
        let host = emulate(&NmpConfig { nmp: false, ..NmpConfig::default() }, &rows, &tr).unwrap();
        let nmp = emulate(&NmpConfig { cache_bytes: 0, ..NmpConfig::default() }, &rows, &tr).unwrap();
        assert_eq!(host.dram_reads, 20000 * 2);
        assert_eq!(nmp.dram_reads, host.dram_reads);
        assert!(nmp.cycles < host.cycles, "{} vs {}", nmp.cycles, host.cycles);
    }

    #[test]
    fn every_rank_stream_meets_the_timing_and_reads_what_missed_the_cache() {
        let tr = lookups(6000, 5000, 11);
        let rows = [5000u64; 4];
        let cfg = NmpConfig { fast: false, ..NmpConfig::default() };
        assert!(emulate_traced(&NmpConfig::default(), &rows, &tr, true).is_err());
        let (rep, streams) = emulate_traced(&cfg, &rows, &tr, true).unwrap();
        assert_eq!(streams.len(), cfg.dram.channels * cfg.dram.ranks_per_channel());
        let rank = Config { channels: 1, dimms_per_channel: 1, ranks_per_dimm: 1, ..cfg.dram };
        for s in &streams {
            dram::validate(&rank, s).unwrap();
        }
        let reads = streams.iter().flatten().filter(|c| c.kind == dram::Kind::Rd).count() as u64;
        assert_eq!(reads, rep.dram_reads);
        assert_eq!(rep.dram_reads, (rep.cache_accesses - rep.cache_hits) * 2);
        assert_eq!(emulate(&cfg, &rows, &tr).unwrap(), rep);
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;

    fn batch(rows: &[u64], bag0: u64) -> Vec<Lookup> {
        rows.iter().enumerate().map(|(i, &row)| Lookup { model: 0, table: 0, row, bag: bag0 + i as u64 / 8 }).collect()
    }

    #[test]
    fn a_stream_of_one_batch_is_the_batch_and_batches_add_up() {
        let tr: Vec<Lookup> = (0..3000u64).map(|i| Lookup { model: 0, table: (i % 3) as u32, row: i * 7919 % 5000, bag: i / 30 }).collect();
        let rows = [5000u64; 3];
        for fast in [true, false] {
            let cfg = NmpConfig { fast, ..NmpConfig::default() };
            let one = emulate_stream(&cfg, &rows, &tr, &[0]).unwrap();
            assert_eq!(one.total, emulate(&cfg, &rows, &tr).unwrap());
            let s = emulate_stream(&cfg, &rows, &tr, &[0, 1000, 1000, 2500]).unwrap();
            assert_eq!(s.batches.len(), 4);
            assert_eq!((s.batches[1].lookups, s.batches[1].cycles, s.batches[2].lookups), (0, 0, 1500));
            assert_eq!(s.batches.iter().map(|b| b.cycles).sum::<u64>(), s.total.cycles);
            assert_eq!(s.batches.iter().map(|b| b.cache_hits).sum::<u64>(), s.total.cache_hits);
            let e: f64 = s.batches.iter().map(|b| b.energy_pj).sum();
            assert!((e - s.total.energy_pj).abs() < 1e-6 * e);
        }
    }

    #[test]
    fn the_rank_caches_stay_warm_and_profiling_counts_each_batch() {
        // One channel of one rank; 64 distinct rows, each once per batch.
        let dram = Config { channels: 1, dimms_per_channel: 1, ranks_per_dimm: 1, ..Config::default() };
        let rows: Vec<u64> = (0..64).map(|i| i * 97).collect();
        let mut tr = batch(&rows, 0);
        tr.extend(batch(&rows, 8));
        let table = [10_000u64];
        // Every vector cacheable (no profiling): the second batch hits every time.
        let all = NmpConfig { dram, hot_threshold: 0, ..NmpConfig::default() };
        let s = emulate_stream(&all, &table, &tr, &[0, 64]).unwrap();
        assert_eq!((s.batches[0].cache_hits, s.batches[1].cache_hits), (0, 64));
        assert!(s.batches[1].cycles < s.batches[0].cycles);
        // Hot-entry profiling per batch: no row repeats within a batch, so none is cached;
        // over the two batches as one, every row is hot and the second pass hits.
        let hot = NmpConfig { dram, hot_threshold: 2, ..NmpConfig::default() };
        assert_eq!(emulate_stream(&hot, &table, &tr, &[0, 64]).unwrap().total.cache_hits, 0);
        assert_eq!(emulate(&hot, &table, &tr).unwrap().cache_hits, 64);
    }

    #[test]
    fn a_rank_cache_holds_as_many_vectors_as_it_has_lines() {
        // 8 KiB of 128-byte vectors: 64 lines. 48 distinct rows (one rank, rows spread over
        // the address bits that pick a set) are all still there on the second pass.
        let dram = Config { channels: 1, dimms_per_channel: 1, ranks_per_dimm: 1, ..Config::default() };
        let cfg = NmpConfig { dram, hot_threshold: 0, cache_bytes: 8 << 10, ..NmpConfig::default() };
        let rows: Vec<u64> = (0..48).map(|i| i * 4096).collect();
        let mut tr = batch(&rows, 0);
        tr.extend(batch(&rows, 6));
        let r = emulate(&cfg, &[1 << 20], &tr).unwrap();
        assert!(r.cache_hits >= 40, "{} of 48 hit", r.cache_hits);
    }

    #[test]
    fn bad_batch_starts_are_refused() {
        let tr = batch(&[1, 2, 3], 0);
        let cfg = NmpConfig::default();
        for starts in [&[][..], &[1], &[0, 2, 1], &[0, 4]] {
            assert!(matches!(emulate_stream(&cfg, &[10], &tr, starts), Err(Error::Value(_))), "{starts:?}");
        }
        let exact = NmpConfig { fast: false, ..cfg };
        assert!(emulate_batches(&exact, &[10], &tr, &[0, 1], true).is_err());
        assert!(emulate_batches(&exact, &[10], &tr, &[0], true).is_ok());
    }
}

#[cfg(test)]
mod fast_tests {
    use super::*;

    #[test]
    fn the_fast_mode_tracks_the_command_model_on_rank_streams_and_host_channels() {
        // Zipf-like rows: a few hot, many cold, over 8 tables.
        let mut x = 99u64;
        let lookups: Vec<Lookup> = (0..6000u64)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let row = if x.is_multiple_of(3) { x % 64 } else { x % 200_000 };
                Lookup { model: 0, table: (i % 8) as u32, row, bag: i / 40 }
            })
            .collect();
        let tables = vec![200_000u64; 8];
        for (ranks, nmp) in [(1usize, true), (2, true), (4, true), (8, true), (4, false), (8, false)] {
            let dram = Config { dimms_per_channel: ranks.div_ceil(2), ranks_per_dimm: ranks.min(2), ..Config::default() };
            let exact = NmpConfig { dram, nmp, fast: false, ..NmpConfig::default() };
            let fast = NmpConfig { fast: true, ..exact };
            let (a, b) = (emulate(&exact, &tables, &lookups).unwrap(), emulate(&fast, &tables, &lookups).unwrap());
            assert_eq!((a.cache_hits, a.dram_reads), (b.cache_hits, b.dram_reads), "{ranks} ranks");
            let r = b.cycles as f64 / a.cycles as f64;
            assert!((r - 1.0).abs() < 0.03, "{ranks} ranks: fast/command cycles {r:.3}");
            let e = b.energy_pj / a.energy_pj;
            assert!((e - 1.0).abs() < 0.03, "{ranks} ranks: fast/command energy {e:.3}");
        }
    }
}
