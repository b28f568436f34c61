//! The DDR4 model's fast timing mode: a channel's requests timed a vector at a time, without
//! the command scheduler's per-command scan.
//!
//! [`run_channel`](crate::dram::run_channel) is the reference: every command is a decision
//! over the banks with a queued request. This mode keeps the same per-bank state (open row,
//! when it may next activate, read or precharge), the same controller queue of `queue_depth`
//! lines and the same shared constraints, but makes one decision per *unit*: the consecutive
//! lines of one row of one bank that arrive together (an embedding vector's lines). The unit
//! chosen is the queued one whose first read can issue soonest (its bank's state; tCCD, the
//! data bus and the rank turnaround after the last read; for a row miss also tRCD after the
//! activate that its rank's tRRD/tFAW window and its bank group's tRRD_L allow), ties to the
//! oldest: FR-FCFS's choice. Its PRE, ACT and reads are then placed at once. Reads issue in
//! the order placed, and so do each rank's activates, so every shared constraint is a bound
//! after the last such command and each decision costs a scan of the queue.
//!
//! A unit's reads go back to back on the data bus when the queue holds a unit of the same rank
//! in another bank group, or one will enter while its reads free their slots: the command
//! model interleaves that unit's reads between them (tCCD_L keeps a bank group's reads 6
//! cycles apart, the bus takes one every 4), at the same pace. The partner's reads, placed
//! later, then go back to back too (the next unit of the rank from another bank group takes
//! up the pairing). Without a partner they are tCCD_L apart. So a fast trace is a schedule of
//! the same length, not a command stream the validator accepts: command streams come from the
//! command model. On the `recengine nmp` sweep it is within 1.3% of the command model (cycles
//! and energy; the cache is the same code, so its hits are identical); `benches/nmp_speed.py`
//! prints both modes' speed and agreement.

use std::collections::VecDeque;

use crate::dram::{Bank, ChannelStats, Command, Config, Kind, Location};

/// The cycles that hold an event, one bit per cycle from word `base` on; the words below the
/// oldest cycle any later check looks at are dropped now and then.
#[derive(Default, Clone)]
struct Cycles {
    base: u64,
    words: Vec<u64>,
}

impl Cycles {
    #[inline]
    fn word(&self, w: u64) -> u64 {
        // Below the base, `w - base` wraps to an index past the end: no events there.
        self.words.get(w.wrapping_sub(self.base) as usize).copied().unwrap_or(0)
    }

    /// The events in `[t, t + 64)`, bit `i` for cycle `t + i`.
    #[inline]
    fn window(&self, t: u64) -> u64 {
        let (w, s) = (t >> 6, t & 63);
        let lo = self.word(w) >> s;
        if s == 0 { lo } else { lo | self.word(w + 1) << (64 - s) }
    }

    fn set(&mut self, t: u64) {
        let w = t >> 6;
        if self.words.is_empty() {
            self.base = w;
        }
        // Cycles below the base are past every later check: nothing to record.
        let Some(i) = w.checked_sub(self.base) else { return };
        if self.words.len() as u64 <= i {
            self.words.resize(i as usize + 1, 0);
        }
        self.words[i as usize] |= 1 << (t & 63);
    }

    #[cfg(test)]
    fn is_set(&self, t: u64) -> bool {
        self.word(t >> 6) >> (t & 63) & 1 == 1
    }

    /// Forget the events before word `t / 64`, moving the words when enough are dead.
    fn drop_before(&mut self, t: u64) {
        let dead = (t >> 6).saturating_sub(self.base).min(self.words.len() as u64) as usize;
        if dead >= 64 || (dead > 0 && dead == self.words.len()) {
            self.words.drain(..dead);
            self.base += dead as u64;
        }
    }
}

/// Consecutive lines of one row of one bank, arriving together: `lines` requests from
/// `first`, the first at `loc`.
#[derive(Clone, Copy)]
struct Unit {
    first: usize,
    lines: usize,
    loc: Location,
}

/// The arrival-ordered requests grouped into units.
fn units(requests: &[Location]) -> Vec<Unit> {
    let mut out: Vec<Unit> = Vec::with_capacity(requests.len());
    for (i, l) in requests.iter().enumerate() {
        if let Some(u) = out.last_mut() {
            let p = &u.loc;
            if (p.rank, p.bank_group, p.bank, p.row) == (l.rank, l.bank_group, l.bank, l.row) && u64::from(p.column) + u.lines as u64 == u64::from(l.column) {
                u.lines += 1;
                continue;
            }
        }
        out.push(Unit { first: i, lines: 1, loc: *l });
    }
    out
}

/// One channel's shared timing state. Reads issue in the order they are placed, and so do
/// each rank's activates, so every shared constraint is one bound after the last such command
/// (as in the command model, [`crate::dram::run_channel`]), kept as the earliest cycle it
/// allows (0: none yet): per rank the next ACT (tRRD_S after its last, tFAW after its fourth
/// last) and read (tCCD_S), per bank group the next ACT (tRRD_L) and read (tCCD_L), and the
/// data bus after the last burst (and the turnaround to another rank).
struct Shared {
    acts: Vec<[u64; 4]>,
    nacts: Vec<usize>,
    act_rank: Vec<u64>,
    act_bg: Vec<u64>,
    rd_rank: Vec<u64>,
    rd_bg: Vec<u64>,
    /// The last read: its cycle and rank.
    last_rd: Option<(u64, usize)>,
    cmds: Cycles,
}

impl Shared {
    /// The earliest cycle at or after `t` the command bus is free.
    fn cmd_slot(&self, mut t: u64) -> u64 {
        loop {
            let busy = self.cmds.window(t).trailing_ones();
            t += u64::from(busy);
            if busy < 64 {
                return t;
            }
        }
    }

    /// The data bus's bound on a read of `rank`.
    fn bus(&self, cfg: &Config, rank: usize) -> u64 {
        self.last_rd.map_or(0, |(at, r)| at + cfg.timing.tbl + if r != rank { cfg.timing.trtrs } else { 0 })
    }

    fn activated(&mut self, cfg: &Config, rank: usize, g: usize, at: u64) {
        let t = &cfg.timing;
        let n = self.nacts[rank];
        self.acts[rank][n % 4] = at;
        self.nacts[rank] = n + 1;
        // With this one, the rank's last four ACTs: the next waits tFAW after the oldest.
        let faw = if n >= 3 { self.acts[rank][(n + 1) % 4] + t.tfaw } else { 0 };
        self.act_rank[rank] = (at + t.trrd_s).max(faw);
        self.act_bg[g] = at + t.trrd_l;
    }

    fn read(&mut self, cfg: &Config, rank: usize, g: usize, at: u64) {
        self.rd_rank[rank] = at + cfg.timing.tccd_s;
        self.rd_bg[g] = at + cfg.timing.tccd_l;
        self.last_rd = Some((at, rank));
    }
}

/// The controller queue, one entry per queued unit in arrival order (struct of arrays for the
/// scan): the unit, the cycle it entered, its bank, its bound from its own bank's state and
/// entry, and which shared bound applies (2 x its rank's bank group, plus 1 when it needs an
/// activate).
#[derive(Default)]
struct Queue {
    unit: Vec<usize>,
    entered: Vec<u64>,
    bank: Vec<usize>,
    own: Vec<u64>,
    bound: Vec<usize>,
}

impl Queue {
    fn remove(&mut self, i: usize) {
        self.unit.remove(i);
        self.entered.remove(i);
        self.bank.remove(i);
        self.own.remove(i);
        self.bound.remove(i);
    }
}

/// A selection key: (estimated cycle: `KEY_BITS`, queue position: `POS_BITS`).
const POS_BITS: u32 = 20;
const KEY_BITS: u32 = 64 - POS_BITS;

/// Time one channel serving `requests` (in arrival order, all arriving at cycle 0) in the
/// fast mode; with `trace`, every command placed is recorded (in cycle order; see the module's
/// note: not a stream for [`validate`](crate::dram::validate)).
pub fn run_channel_fast(cfg: &Config, requests: &[Location], mut trace: Option<&mut Vec<Command>>) -> ChannelStats {
    let t = cfg.timing;
    let ranks = cfg.ranks_per_channel();
    let groups = ranks * cfg.bank_groups;
    let mut banks = vec![Bank::default(); ranks * cfg.banks_per_rank()];
    let mut sh = Shared {
        acts: vec![[0; 4]; ranks],
        nacts: vec![0; ranks],
        act_rank: vec![0; ranks],
        act_bg: vec![0; groups],
        rd_rank: vec![0; ranks],
        rd_bg: vec![0; groups],
        last_rd: None,
        cmds: Cycles::default(),
    };
    let mut stats = ChannelStats { done: vec![0; requests.len()], ..Default::default() };
    let units = units(requests);
    // Per rank, the bank group of a unit whose reads went back to back counting on the next
    // unit of the rank from another bank group to interleave with.
    let mut partner: Vec<Option<usize>> = vec![None; ranks];
    // A queued unit's own bound on its next read (a row hit's read, else tRCD after an
    // activate that waits for a precharge if another row is open, or for the bank's tRC),
    // and which shared bound applies (below).
    let own = |b: &Bank, l: &Location, entered: u64| -> (u64, usize) {
        let (at, miss) = match b.open {
            Some(r) if r == l.row => (b.next_rd.max(entered), false),
            Some(_) => ((b.next_pre.max(entered) + t.trp).max(b.act_at + t.tras + t.trp) + t.trcd, true),
            None => (b.next_act.max(entered) + t.trcd, true),
        };
        (at, 2 * cfg.group_index(l) + usize::from(miss))
    };
    // Per bank group, the shared bound on a queued read there at 2g, and on one that needs an
    // activate first (the activate's bound plus tRCD, or the read's) at 2g + 1.
    let mut shared = vec![0u64; 2 * groups];
    // Each line holds one of `queue_depth` slots from when it enters the queue (`line_in`)
    // until its read issues. A unit is queued when a slot is free for each of its lines (for
    // a unit longer than the queue, all of them: its later lines take the slots its first
    // reads free); its activate waits for its first line, each read for its own. Reads issue
    // in order, so slots free in order.
    let mut q = Queue::default();
    let mut free: VecDeque<u64> = (0..cfg.queue_depth).map(|_| 0).collect();
    let mut line_in = vec![0u64; requests.len()];
    let mut next_in = 0;
    let mut served = 0usize;
    // Queued units per rank and per bank group.
    let (mut per_rank, mut per_group) = (vec![0usize; ranks], vec![0usize; groups]);
    loop {
        while next_in < units.len() {
            let need = units[next_in].lines.min(cfg.queue_depth);
            if free.len() < need {
                break;
            }
            let first = units[next_in].first;
            for (slot, at) in line_in[first..first + need].iter_mut().zip(free.drain(..need)) {
                *slot = at;
            }
            let entered = line_in[first];
            let l = &units[next_in].loc;
            let k = cfg.bank_index(l);
            let (o, bound) = own(&banks[k], l, entered);
            q.unit.push(next_in);
            q.entered.push(entered);
            q.bank.push(k);
            q.own.push(o);
            q.bound.push(bound);
            per_rank[l.rank] += 1;
            per_group[cfg.group_index(l)] += 1;
            next_in += 1;
        }
        if q.unit.is_empty() {
            break;
        }
        for rank in 0..ranks {
            let rd_rank = sh.bus(cfg, rank).max(sh.rd_rank[rank]);
            let act_rank = sh.act_rank[rank];
            for g in rank * cfg.bank_groups..(rank + 1) * cfg.bank_groups {
                let rd = rd_rank.max(sh.rd_bg[g]);
                shared[2 * g] = rd;
                shared[2 * g + 1] = rd.max(act_rank.max(sh.act_bg[g]) + t.trcd);
            }
        }
        // The queued unit whose first read can issue soonest; ties to the oldest. One-word
        // keys, (estimate, position), for a branch-free minimum; an estimate past 2^KEY_BITS
        // cycles (absurd timing values only) or a queue past 2^POS_BITS units takes the plain
        // comparison.
        let mut key = u64::MAX;
        let mut far = (q.unit.len() >> POS_BITS) as u64;
        for (i, (&o, &g)) in q.own.iter().zip(&q.bound).enumerate() {
            let est = o.max(shared[g]);
            far |= est >> KEY_BITS;
            key = key.min(est << POS_BITS | i as u64);
        }
        let pos = if far == 0 {
            (key & ((1 << POS_BITS) - 1)) as usize
        } else {
            let ests = q.own.iter().zip(&q.bound).map(|(&o, &g)| o.max(shared[g]));
            ests.enumerate().min_by_key(|&(i, e)| (e, i)).map_or(0, |(i, _)| i)
        };
        let entered = q.entered[pos];
        let Unit { first: r, lines, loc: l } = units[q.unit[pos]];
        let k = q.bank[pos];
        let g = cfg.group_index(&l);
        let mut b = banks[k];
        let mut emit = |sh: &mut Shared, kind: Kind, at: u64, r: usize| {
            sh.cmds.set(at);
            if let Some(tr) = trace.as_deref_mut() {
                tr.push(Command { cycle: at, kind, rank: l.rank, bank_group: l.bank_group, bank: l.bank, row: l.row, request: r });
            }
        };
        let hit = b.open == Some(l.row);
        if !hit {
            if b.open.is_some() {
                let pre = sh.cmd_slot(entered.max(b.next_pre));
                emit(&mut sh, Kind::Pre, pre, r);
                stats.precharges += 1;
                b.next_act = (pre + t.trp).max(b.act_at + t.tras + t.trp);
            }
            let act = sh.cmd_slot(entered.max(b.next_act).max(sh.act_rank[l.rank]).max(sh.act_bg[g]));
            emit(&mut sh, Kind::Act, act, r);
            stats.activates += 1;
            sh.activated(cfg, l.rank, g, act);
            b.open = Some(l.row);
            b.act_at = act;
            b.next_rd = act + t.trcd;
            b.next_pre = act + t.tras;
        }
        // The unit's reads: back to back when paired (below), else tCCD_L apart.
        let mut at = entered.max(b.next_rd).max(sh.rd_bg[g]);
        // FR-FCFS interleaves a unit's reads with those of a unit of its rank in another bank
        // group, queued or let in by the slots its reads free while they issue: both then go
        // back to back (each fills the other's tCCD_L gaps). The partner is the next unit of
        // the rank served from another bank group, which takes up the pairing (`partner`).
        let mut back_to_back = partner[l.rank].is_some_and(|pg| pg != g);
        if back_to_back {
            partner[l.rank] = None;
        } else {
            back_to_back = per_rank[l.rank] > per_group[g] || {
                let mut room = free.len() + lines.min(cfg.queue_depth);
                let mut found = false;
                for u in &units[next_in..] {
                    let need = u.lines.min(cfg.queue_depth);
                    if need > room {
                        break;
                    }
                    room -= need;
                    if u.loc.rank == l.rank && u.loc.bank_group != l.bank_group {
                        found = true;
                        break;
                    }
                }
                found
            };
            if back_to_back {
                partner[l.rank] = Some(g);
            }
        }
        for j in 0..lines {
            let r = r + j;
            if !back_to_back && j > 0 {
                at = at.max(sh.rd_bg[g]);
            }
            let rd = sh.cmd_slot(at.max(line_in[r]).max(sh.bus(cfg, l.rank)).max(sh.rd_rank[l.rank]));
            emit(&mut sh, Kind::Rd, rd, r);
            sh.read(cfg, l.rank, g, rd);
            b.next_pre = b.next_pre.max(rd + t.trtp);
            stats.reads += 1;
            if hit || j > 0 {
                stats.row_hits += 1;
            }
            let end = rd + t.cl + t.tbl;
            stats.done[r] = end;
            stats.finish = stats.finish.max(end);
            // The slot goes to the unit's line `queue_depth` on, if any, else back to the queue.
            match line_in.get_mut(r + cfg.queue_depth).filter(|_| j + cfg.queue_depth < lines) {
                Some(slot) => *slot = rd,
                None => free.push_back(rd),
            }
            at = rd + 1;
        }
        banks[k] = b;
        q.remove(pos);
        per_rank[l.rank] -= 1;
        per_group[g] -= 1;
        // The bank's state changed: so did its queued units' own bounds.
        for i in 0..q.unit.len() {
            if q.bank[i] == k {
                (q.own[i], q.bound[i]) = own(&b, &units[q.unit[i]].loc, q.entered[i]);
            }
        }
        served += 1;
        if served.is_multiple_of(64) {
            // No command comes before the earliest entry of a queued unit or a free slot.
            let queued = q.entered.iter().copied().min().unwrap_or(u64::MAX);
            sh.cmds.drop_before(queued.min(free.front().copied().unwrap_or(u64::MAX)));
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
    fn cycles_record_events_and_forget_old_words() {
        let mut c = Cycles::default();
        for t in [70u64, 130, 131, 300] {
            c.set(t);
        }
        assert!(c.is_set(300) && !c.is_set(299) && c.is_set(70));
        assert_eq!(c.window(128) & 0b1111, 0b1100);
        // Dropping keeps what is at or after the word of the cycle given.
        c.drop_before(140);
        assert!(c.is_set(130) && c.is_set(131));
        c.drop_before(10_000);
        assert!(!c.is_set(300));
        c.set(20_000);
        assert!(c.is_set(20_000));
    }

    #[test]
    fn fast_schedules_meet_the_timing_but_tccd_l_within_a_vector_and_track_the_command_model() {
        // Random lines (one-line units) and vectors of two lines, small and large spans (row
        // hits common or rare), several queue depths and ranks.
        let cases = [(1u64 << 16, 32, 2usize, 1u64), (1 << 30, 32, 2, 1), (1 << 22, 4, 1, 1), (1 << 26, 64, 4, 2), (1 << 20, 1, 2, 2), (1 << 28, 32, 1, 2), (1 << 28, 32, 8, 2)];
        for (i, (span, queue, ranks, lines)) in cases.into_iter().enumerate() {
            let cfg = Config { channels: 1, dimms_per_channel: ranks.div_ceil(2), ranks_per_dimm: ranks.min(2), queue_depth: queue, ..Config::default() };
            let addrs: Vec<u64> = random_lines(3000, span, 7 + i as u64).iter().flat_map(|&a| (0..lines).map(move |k| (a & !127) + 64 * k)).collect();
            let reqs: Vec<Location> = addrs.iter().map(|&a| cfg.locate(a)).collect();
            let mut tr = Vec::new();
            let fast = run_channel_fast(&cfg, &reqs, Some(&mut tr));
            // A vector's reads may be tCCD_S apart in one bank group; every other rule holds.
            let relaxed = Config { timing: crate::dram::Timing { tccd_l: cfg.timing.tccd_s, ..cfg.timing }, ..cfg };
            validate(&relaxed, &tr).unwrap_or_else(|e| panic!("case {i}: {e}"));
            assert_eq!(tr.len() as u64, fast.reads + fast.activates + fast.precharges);
            let exact = run_channel(&cfg, &reqs, None);
            assert_eq!(fast.reads, exact.reads);
            let ratio = fast.finish as f64 / exact.finish as f64;
            eprintln!("case {i}: fast/command finish {ratio:.3}, activates {} / {}", fast.activates, exact.activates);
            assert!((ratio - 1.0).abs() < 0.08, "case {i}: fast/command finish {ratio:.3}");
        }
    }
}
