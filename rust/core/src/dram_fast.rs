//! The DDR4 model's fast timing mode: a whole channel's requests timed without the command
//! scheduler's cycle-by-cycle scan.
//!
//! [`run_channel`](crate::dram::run_channel) is the reference: every decision scans every
//! bank with a queued request for the command that can issue soonest. This mode keeps the
//! same state (per bank its open row and when it may next activate, read or precharge; per
//! rank its recent activates for tRRD and tFAW; the recent reads for tCCD and the data bus;
//! the command bus's recent cycles) and the same controller queue of `queue_depth` requests,
//! but serves one request at a time: the queued one whose read its bank's state lets issue
//! soonest (a row hit first, FR-FCFS's priority; the rank turnaround counted), placing each of
//! its commands in the earliest cycle that every constraint allows. A command may land before
//! commands placed earlier (another bank's request can use the gap). Every emitted trace
//! passes [`validate`](crate::dram::validate).
//!
//! Status (`NmpConfig::fast`, off by default): on the `recengine nmp` sweep's RecNMP rank
//! streams it is within 0.5% of the command model (cycles and energy; cache hits identical,
//! tested within 3%), on the host's multi-rank channels 5-8% slower, on random lines 0-12%
//! slower (the test prints each case). It is not faster yet: the whole sweep takes 2.3 s
//! against the command model's 0.46 s (the next-request estimate scans the queue and the
//! recent reads for every request), so the studies keep the command model.

use std::collections::{BinaryHeap, VecDeque};
use std::cmp::Reverse;

use crate::dram::{ChannelStats, Command, Config, Kind, Location};

#[derive(Clone, Copy, Default)]
struct Bank {
    open: Option<u64>,
    act_at: u64,
    next_act: u64,
    next_rd: u64,
    next_pre: u64,
}

/// Times of recent events, sorted, with old ones dropped: a short vector scanned in order.
#[derive(Default, Clone)]
struct Recent(Vec<u64>);

impl Recent {
    fn insert(&mut self, t: u64) {
        let p = self.0.partition_point(|&x| x <= t);
        self.0.insert(p, t);
    }

    fn prune(&mut self, before: u64) {
        let p = self.0.partition_point(|&x| x < before);
        if p > 0 {
            self.0.drain(..p);
        }
    }
}

/// One read's place on the data bus: its command cycle, rank and bank group.
#[derive(Clone, Copy)]
struct Read {
    at: u64,
    rank: usize,
    bank_group: usize,
}

struct Fast<'a> {
    cfg: &'a Config,
    banks: Vec<Bank>,
    acts: Vec<Recent>,
    bg_acts: Vec<Recent>,
    reads: Vec<Read>,
    cmds: Recent,
}

impl<'a> Fast<'a> {
    fn bank_index(&self, l: &Location) -> usize {
        (l.rank * self.cfg.bank_groups + l.bank_group) * self.cfg.banks_per_group + l.bank
    }

    /// The earliest cycle at or after `t` the command bus is free.
    fn cmd_slot(&self, mut t: u64) -> u64 {
        let c = &self.cmds.0;
        let mut p = c.partition_point(|&x| x < t);
        while p < c.len() && c[p] == t {
            t += 1;
            p += 1;
        }
        t
    }

    /// The earliest cycle at or after `t` an ACT to `rank`, `bank_group` may issue: tRRD_S
    /// and tRRD_L from every other ACT, at most four ACTs in any tFAW window, the command bus.
    fn act_slot(&self, rank: usize, bank_group: usize, mut t: u64) -> u64 {
        let tm = &self.cfg.timing;
        let acts = &self.acts[rank].0;
        let bg = &self.bg_acts[rank * self.cfg.bank_groups + bank_group].0;
        loop {
            let start = t;
            for &a in acts {
                if t < a + tm.trrd_s && a < t + tm.trrd_s {
                    t = a + tm.trrd_s;
                }
            }
            for &a in bg {
                if t < a + tm.trrd_l && a < t + tm.trrd_l {
                    t = a + tm.trrd_l;
                }
            }
            // Every window of five consecutive ACTs (with this one) spans at least tFAW.
            let p = acts.partition_point(|&x| x < t);
            for first in p.saturating_sub(4)..=p {
                // The window: acts[first..p], then t, then acts[p..first + 4].
                let last = first + 4;
                if last > acts.len() {
                    break;
                }
                let lo = if first < p { acts[first] } else { t };
                let hi = if last > p { acts[last - 1] } else { t };
                if hi < lo + tm.tfaw {
                    // This ACT last in the window: tFAW after the window's first. Else past the
                    // window's last ACT (the next round checks the windows there).
                    t = if last == p { lo + tm.tfaw } else { acts[last - 1] + 1 };
                    break;
                }
            }
            t = self.cmd_slot(t);
            if t == start {
                return t;
            }
        }
    }

    /// The earliest cycle at or after `t` a read of `rank`, `bank_group` may issue: tCCD from
    /// the rank's other reads, its burst on a free data bus (with the rank turnaround), the
    /// command bus.
    fn rd_slot(&self, rank: usize, bank_group: usize, mut t: u64) -> u64 {
        let tm = &self.cfg.timing;
        loop {
            let start = t;
            for r in &self.reads {
                if r.rank == rank {
                    let gap = if r.bank_group == bank_group { tm.tccd_l } else { tm.tccd_s };
                    if t < r.at + gap && r.at < t + gap {
                        t = r.at + gap;
                    }
                }
                // Bursts [at + CL, at + CL + tBL) apart, by the turnaround across ranks.
                let gap = tm.tbl + if r.rank != rank { tm.trtrs } else { 0 };
                if t < r.at + gap && r.at < t + gap {
                    t = r.at + gap;
                }
            }
            t = self.cmd_slot(t);
            if t == start {
                return t;
            }
        }
    }

    /// Forget what no command at or after `floor` can conflict with.
    fn prune(&mut self, floor: u64) {
        let tm = &self.cfg.timing;
        let span = tm.tfaw.max(tm.trrd_l).max(tm.trrd_s).max(tm.tccd_l).max(tm.tbl + tm.trtrs) + 1;
        let before = floor.saturating_sub(span);
        for a in self.acts.iter_mut().chain(self.bg_acts.iter_mut()) {
            a.prune(before);
        }
        self.reads.retain(|r| r.at >= before);
        self.cmds.prune(floor);
    }
}

/// Time one channel serving `requests` (in arrival order, all arriving at cycle 0) in the
/// fast mode; with `trace`, every command is recorded (in cycle order).
pub fn run_channel_fast(cfg: &Config, requests: &[Location], mut trace: Option<&mut Vec<Command>>) -> ChannelStats {
    let t = cfg.timing;
    let ranks = cfg.ranks_per_channel();
    let mut f = Fast {
        cfg,
        banks: vec![Bank::default(); ranks * cfg.banks_per_rank()],
        acts: vec![Recent::default(); ranks],
        bg_acts: vec![Recent::default(); ranks * cfg.bank_groups],
        reads: Vec::new(),
        cmds: Recent::default(),
    };
    let mut stats = ChannelStats { done: vec![0; requests.len()], ..Default::default() };
    // The controller queue: up to `queue_depth` requests with the cycle each entered it. A
    // slot frees when a read issues; the next request takes the earliest freed slot.
    let mut queue: VecDeque<(usize, u64)> = VecDeque::with_capacity(cfg.queue_depth);
    let mut freed: BinaryHeap<Reverse<u64>> = BinaryHeap::new();
    let mut next_in = 0;
    while next_in < requests.len() && queue.len() < cfg.queue_depth {
        queue.push_back((next_in, 0));
        next_in += 1;
    }
    let mut served = 0usize;
    while !queue.is_empty() {
        // The queued request whose read could issue soonest by its bank's state (a row hit's
        // read, else after a precharge and an activate), a read of another rank than the last
        // one paying the turnaround; ties to the oldest. The scheduler's choice, estimated.
        let latest = f.reads.iter().max_by_key(|r| r.at).copied();
        let mut pos = 0;
        let mut best = u64::MAX;
        for (i, &(r, entered)) in queue.iter().enumerate() {
            let l = &requests[r];
            let b = &f.banks[f.bank_index(l)];
            // An activate also waits for its rank's window: tRRD_S after the rank's last ACT,
            // tFAW after its fourth last.
            let acts = &f.acts[l.rank].0;
            let window = match acts.len() {
                0 => 0,
                n => (acts[n - 1] + t.trrd_s).max(if n >= 4 { acts[n - 4] + t.tfaw } else { 0 }),
            };
            let ready = match b.open {
                Some(row) if row == l.row => b.next_rd,
                Some(_) => (b.next_pre + t.trp).max(b.act_at + t.tras + t.trp).max(window) + t.trcd,
                None => b.next_act.max(window) + t.trcd,
            };
            // The read also waits for the data bus and tCCD after the latest read.
            let after = match latest {
                Some(r) if r.rank != l.rank => r.at + t.tbl + t.trtrs,
                Some(r) if r.bank_group == l.bank_group => r.at + t.tccd_l.max(t.tbl),
                Some(r) => r.at + t.tccd_s.max(t.tbl),
                None => 0,
            };
            let est = ready.max(entered).max(after);
            if est < best {
                best = est;
                pos = i;
            }
        }
        let (r, entered) = queue.remove(pos).expect("a queued request");
        let l = requests[r];
        let k = f.bank_index(&l);
        let bg = l.rank * cfg.bank_groups + l.bank_group;
        let mut b = f.banks[k];
        let mut emit = |f: &mut Fast<'_>, kind: Kind, at: u64| {
            f.cmds.insert(at);
            if let Some(tr) = trace.as_deref_mut() {
                tr.push(Command { cycle: at, kind, rank: l.rank, bank_group: l.bank_group, bank: l.bank, row: l.row, request: r });
            }
        };
        let mut hit = true;
        if b.open != Some(l.row) {
            hit = false;
            if b.open.is_some() {
                let pre = f.cmd_slot(entered.max(b.next_pre));
                emit(&mut f, Kind::Pre, pre);
                stats.precharges += 1;
                b.next_act = b.next_act.max((pre + t.trp).max(b.act_at + t.tras + t.trp));
            }
            let act = f.act_slot(l.rank, l.bank_group, entered.max(b.next_act));
            emit(&mut f, Kind::Act, act);
            stats.activates += 1;
            f.acts[l.rank].insert(act);
            f.bg_acts[bg].insert(act);
            b.open = Some(l.row);
            b.act_at = act;
            b.next_rd = act + t.trcd;
            b.next_pre = act + t.tras;
        }
        let rd = f.rd_slot(l.rank, l.bank_group, entered.max(b.next_rd));
        emit(&mut f, Kind::Rd, rd);
        f.reads.push(Read { at: rd, rank: l.rank, bank_group: l.bank_group });
        b.next_pre = b.next_pre.max(rd + t.trtp);
        f.banks[k] = b;
        stats.reads += 1;
        if hit {
            stats.row_hits += 1;
        }
        let end = rd + t.cl + t.tbl;
        stats.done[r] = end;
        stats.finish = stats.finish.max(end);
        freed.push(Reverse(rd));
        if next_in < requests.len() {
            let Reverse(at) = freed.pop().expect("a read just freed a slot");
            queue.push_back((next_in, at));
            next_in += 1;
        }
        served += 1;
        if served.is_multiple_of(64) {
            // No command comes before the earliest entry of a queued request or of a freed
            // slot a later request will take.
            let queued = queue.iter().map(|&(_, e)| e).min().unwrap_or(u64::MAX);
            let slots = freed.peek().map_or(u64::MAX, |&Reverse(x)| x);
            f.prune(queued.min(slots));
        }
    }
    if let Some(tr) = trace {
        tr.sort_by_key(|c| c.cycle);
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dram::tests::random_lines;
    use crate::dram::{run_channel, validate};

    #[test]
    fn fast_traces_meet_the_timing_and_track_the_command_model() {
        for (i, (span, queue, ranks)) in [(1u64 << 16, 32, 2), (1 << 30, 32, 2), (1 << 22, 4, 1), (1 << 26, 64, 4), (1 << 20, 1, 2), (1 << 28, 32, 1)].into_iter().enumerate() {
            let cfg = Config { channels: 1, ranks_per_dimm: ranks, queue_depth: queue, ..Config::default() };
            let reqs: Vec<Location> = random_lines(4000, span, 7 + i as u64).iter().map(|&a| cfg.locate(a)).collect();
            let mut tr = Vec::new();
            let fast = run_channel_fast(&cfg, &reqs, Some(&mut tr));
            validate(&cfg, &tr).unwrap_or_else(|e| panic!("case {i}: {e}"));
            let exact = run_channel(&cfg, &reqs, None);
            assert_eq!(fast.reads, exact.reads);
            let ratio = fast.finish as f64 / exact.finish as f64;
            eprintln!("case {i}: fast/command finish {ratio:.3}, activates {} / {}", fast.activates, exact.activates);
        }
    }
}
