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
//!   profiling, those whose row appears at least `hot_threshold` times in the trace, else
//!   every vector. Table-aware scheduling hands each rank its vectors grouped by table and row
//!   instead of in arrival order.
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

/// One vector a rank reads: its address and first line's place, whether its LocalityBit is
/// set, and its table (for table-aware scheduling).
#[derive(Clone, Copy)]
struct Vector {
    addr: u64,
    loc: Location,
    hot: bool,
    table: u32,
}

/// A set-associative LRU cache of vector addresses.
struct RankCache {
    sets: Vec<Vec<(u64, u64)>>,
    ways: usize,
    clock: u64,
}

impl RankCache {
    fn new(bytes: usize, vector_bytes: usize, ways: usize) -> RankCache {
        let lines = (bytes / vector_bytes).max(ways);
        let sets = (lines / ways).max(1);
        RankCache { sets: vec![Vec::with_capacity(ways); sets], ways, clock: 0 }
    }

    /// Look `addr` up: a hit, or (when `insert`) put it in, evicting the least recent.
    fn access(&mut self, addr: u64, insert: bool) -> bool {
        self.clock += 1;
        let n = self.sets.len() as u64;
        let set = &mut self.sets[(addr % n) as usize];
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
/// order). Deterministic; channels (host) or ranks (NMP) run in parallel on the core's threads
/// with identical results for any thread count.
pub fn emulate(cfg: &NmpConfig, table_rows: &[u64], lookups: &[Lookup]) -> Result<Report> {
    emulate_traced(cfg, table_rows, lookups, false).map(|(r, _)| r)
}

/// [`emulate`], also returning the DRAM command streams when `traces` is set: one per channel
/// on the host, one per rank with NMP (rank `c * ranks_per_channel + r`, its commands
/// addressed to rank 0 of a one-rank channel: the Rank-NMP unit's own bus), each checkable
/// with [`dram::validate`].
pub fn emulate_traced(cfg: &NmpConfig, table_rows: &[u64], lookups: &[Lookup], traces: bool) -> Result<(Report, Vec<Vec<dram::Command>>)> {
    cfg.check()?;
    if traces && cfg.fast {
        return Err(Error::value("command streams come from the command model: set timing='command' (fast=false)"));
    }
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
    let e = cfg.energy;
    let mut report = Report { lookups: lookups.len() as u64, ..Default::default() };
    let mut commands = Vec::new();
    let ranks_total = (cfg.dram.channels * cfg.dram.ranks_per_channel()) as f64;
    if !cfg.nmp {
        let addrs: Vec<u64> = lookups
            .iter()
            .flat_map(|l| {
                let a = cfg.address(&table_base, l);
                (0..lines).map(move |k| a + k * line)
            })
            .collect();
        let (stats, cmds) = dram::run_timed(&cfg.dram, &addrs, traces, cfg.fast)?;
        commands = cmds;
        for s in &stats {
            report.dram_reads += s.reads;
            report.activates += s.activates;
            report.precharges += s.precharges;
            report.row_hits += s.row_hits;
            report.cycles = report.cycles.max(s.finish);
        }
        report.channel_bytes = report.dram_reads * line;
    } else {
        // Which rank serves each vector, and the hot rows (LocalityBit).
        let ranks_per_channel = cfg.dram.ranks_per_channel();
        let n_ranks = cfg.dram.channels * ranks_per_channel;
        let mut per_rank: Vec<Vec<Vector>> = vec![Vec::new(); n_ranks];
        // The bags each DIMM returns a pooled vector for.
        let per_dimm = cfg.dram.ranks_per_dimm;
        let mut dimm_bags: Vec<FxHashSet<(u32, u64)>> = vec![FxHashSet::default(); cfg.dram.channels * cfg.dram.dimms_per_channel];
        for l in lookups {
            let a = cfg.address(&table_base, l);
            let loc = cfg.dram.locate(a);
            per_rank[loc.channel * ranks_per_channel + loc.rank].push(Vector { addr: a, loc, hot: true, table: l.table });
            dimm_bags[loc.channel * cfg.dram.dimms_per_channel + loc.rank / per_dimm].insert((l.model, l.bag));
        }
        // A vector's lines share its first line's DRAM row when vectors tile the row.
        let tiles = cfg.dram.row_bytes.is_multiple_of(cfg.vector_bytes);
        // Each rank alone: a one-rank channel of its own (its internal bus), cache in front.
        let rank_cfg = Config { channels: 1, dimms_per_channel: 1, ranks_per_dimm: 1, ..cfg.dram };
        type RankOut = (dram::ChannelStats, u64, u64, Vec<dram::Command>);
        let outs: Vec<std::sync::Mutex<Option<RankOut>>> = (0..n_ranks).map(|_| std::sync::Mutex::new(None)).collect();
        let per_rank: Vec<std::sync::Mutex<Vec<Vector>>> = per_rank.into_iter().map(std::sync::Mutex::new).collect();
        let instrs_per_rank: Vec<u64> = per_rank.iter().map(|m| m.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len() as u64).collect();
        parallel::for_each_index(n_ranks, usize::MAX, &|r| {
            let mut work = std::mem::take(&mut *per_rank[r].lock().unwrap_or_else(std::sync::PoisonError::into_inner));
            if cfg.hot_threshold > 0 {
                // Hot-entry profiling: a vector's LocalityBit is set when its row is looked up
                // at least `hot_threshold` times (counted per rank: a row lives in one rank).
                let mut counts: FxHashMap<u64, u64> = FxHashMap::default();
                for v in &work {
                    *counts.entry(v.addr).or_default() += 1;
                }
                for v in &mut work {
                    v.hot = counts[&v.addr] >= cfg.hot_threshold;
                }
            }
            if cfg.table_aware {
                // Within each window of the packet queue, the same table's vectors together
                // (arrival order kept within a table).
                for w in work.chunks_mut(SCHEDULE_WINDOW) {
                    w.sort_by_key(|v| v.table);
                }
            }
            let mut cache = (cfg.cache_bytes > 0).then(|| RankCache::new(cfg.cache_bytes, cfg.vector_bytes, cfg.cache_ways));
            let (mut hits, mut accesses) = (0u64, 0u64);
            let mut reqs = Vec::with_capacity(work.len() * lines as usize);
            for v in &work {
                if let Some(c) = cache.as_mut() {
                    accesses += 1;
                    if c.access(v.addr, v.hot) {
                        hits += 1;
                        continue;
                    }
                }
                for k in 0..lines {
                    let l = if tiles { Location { column: v.loc.column + k as u32, ..v.loc } } else { cfg.dram.locate(v.addr + k * line) };
                    reqs.push(Location { channel: 0, rank: 0, ..l });
                }
            }
            let mut trace = Vec::new();
            let mut stats = dram::run_channel_timed(&rank_cfg, &reqs, traces.then_some(&mut trace), cfg.fast);
            stats.finish += hits * cfg.cache_hit_cycles;
            *outs[r].lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((stats, hits, accesses, trace));
            Ok(())
        })?;
        let mut rank_finish = vec![0u64; n_ranks];
        for (r, m) in outs.into_iter().enumerate() {
            let (s, hits, accesses, trace) = m.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner).expect("every rank ran");
            report.dram_reads += s.reads;
            report.activates += s.activates;
            report.precharges += s.precharges;
            report.row_hits += s.row_hits;
            report.cache_hits += hits;
            report.cache_accesses += accesses;
            rank_finish[r] = s.finish;
            if traces {
                commands.push(trace);
            }
        }
        // The channel: instruction packets in, pooled vectors (one per bag and DIMM) out.
        let t = cfg.dram.timing;
        for c in 0..cfg.dram.channels {
            let instrs: u64 = instrs_per_rank[c * ranks_per_channel..(c + 1) * ranks_per_channel].iter().sum();
            let packets = instrs.div_ceil(cfg.instr_per_packet as u64);
            let dimms = cfg.dram.dimms_per_channel;
            let results: u64 = dimm_bags[c * dimms..(c + 1) * dimms].iter().map(|b| b.len() as u64).sum();
            let out_lines = results * lines;
            let slowest = rank_finish[c * ranks_per_channel..(c + 1) * ranks_per_channel].iter().copied().max().unwrap_or(0);
            let cycles = packets * t.tbl + slowest + out_lines * t.tbl;
            report.cycles = report.cycles.max(cycles);
            report.channel_bytes += (packets + out_lines) * line;
        }
    }
    let ns = report.cycles as f64 * cfg.dram.timing.tck_ns;
    let values = (cfg.vector_bytes / 4) as f64;
    report.energy_pj = report.activates as f64 * e.act_pj
        + report.dram_reads as f64 * e.rd_pj
        + report.precharges as f64 * e.pre_pj
        + report.channel_bytes as f64 * 8.0 * e.io_pj_per_bit
        + e.background_mw_per_rank * ranks_total * ns // mW x ns = pJ
        + if cfg.nmp { report.lookups as f64 * values * e.nmp_add_pj } else { 0.0 }
        + report.cache_accesses as f64 * e.cache_read_pj
        + (report.cache_accesses - report.cache_hits) as f64 * if cfg.cache_bytes > 0 { e.cache_write_pj } else { 0.0 };
    Ok((report, commands))
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
