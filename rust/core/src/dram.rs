//! A DDR4 memory-system model for emulating SparseLengthsSum traffic (RecNMP).
//!
//! Channels hold DIMMs, DIMMs ranks, ranks bank groups of banks; each bank has an open-page
//! row buffer. A channel's controller takes 64-byte read requests in arrival order into a
//! queue of `queue_depth` and schedules them FR-FCFS (ready row hits first, then the oldest),
//! issuing ACT, RD and PRE under the DDR4 timing constraints (tRCD, tCL, tRP, tRAS, tRTP,
//! tCCD_S/L, tRRD_S/L, tFAW, the burst on the data bus, rank-to-rank turnaround) and one
//! command per clock on the command bus. Time is in clock cycles; the model is deterministic
//! and channels are independent, so they are emulated in parallel with identical results for
//! any thread count. [`validate`] replays an emitted command trace and checks every
//! constraint.

use crate::error::{Error, Result};
use crate::parallel;

/// DDR4 timing parameters in clock cycles (`tck_ns` per cycle). Defaults: DDR4-2400 (tCK
/// 0.833 ns, CL-tRCD-tRP 17-17-17, tRAS 32 ns, tRTP 7.5 ns, tCCD_S/L 4/6, tRRD_S/L 4/6 (x8),
/// tFAW 21 ns, BL8 = 4 cycles on the bus, 2 cycles of rank-to-rank turnaround).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    pub tck_ns: f64,
    pub cl: u64,
    pub trcd: u64,
    pub trp: u64,
    pub tras: u64,
    pub trtp: u64,
    pub tccd_s: u64,
    pub tccd_l: u64,
    pub trrd_s: u64,
    pub trrd_l: u64,
    pub tfaw: u64,
    pub tbl: u64,
    pub trtrs: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            tck_ns: 0.833,
            cl: 17,
            trcd: 17,
            trp: 17,
            tras: 39,
            trtp: 9,
            tccd_s: 4,
            tccd_l: 6,
            trrd_s: 4,
            trrd_l: 6,
            tfaw: 26,
            tbl: 4,
            trtrs: 2,
        }
    }
}

/// The largest timing value (cycles) [`Config::check`] accepts: 2^20, about 0.9 ms at
/// DDR4-2400 (datasheet values are below 100). Cycle counts are sums of a few such values per
/// command, so they cannot wrap, and the fast mode's command-bus bitmap spans a bounded window.
pub const MAX_TIMING_CYCLES: u64 = 1 << 20;

/// The organisation of the memory system. Defaults: 4 channels of 2 DIMMs of 2 ranks, 4 bank
/// groups of 4 banks, 8 KiB rows per rank, 64-byte bursts, a 32-request controller queue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    pub channels: usize,
    pub dimms_per_channel: usize,
    pub ranks_per_dimm: usize,
    pub bank_groups: usize,
    pub banks_per_group: usize,
    pub row_bytes: usize,
    pub line_bytes: usize,
    pub queue_depth: usize,
    pub timing: Timing,
}

crate::settings::settings!(Config, "DRAM", [
    channels => channels, dimms_per_channel => dimms_per_channel, ranks_per_dimm => ranks_per_dimm,
    bank_groups => bank_groups, banks_per_group => banks_per_group, row_bytes => row_bytes,
    line_bytes => line_bytes, queue_depth => queue_depth, tck_ns => timing.tck_ns, cl => timing.cl,
    trcd => timing.trcd, trp => timing.trp, tras => timing.tras, trtp => timing.trtp,
    tccd_s => timing.tccd_s, tccd_l => timing.tccd_l, trrd_s => timing.trrd_s,
    trrd_l => timing.trrd_l, tfaw => timing.tfaw, tbl => timing.tbl, trtrs => timing.trtrs,
]);

impl Default for Config {
    fn default() -> Self {
        Config {
            channels: 4,
            dimms_per_channel: 2,
            ranks_per_dimm: 2,
            bank_groups: 4,
            banks_per_group: 4,
            row_bytes: 8192,
            line_bytes: 64,
            queue_depth: 32,
            timing: Timing::default(),
        }
    }
}

/// The most of any one count (channels, DIMMs, ranks, bank groups, banks, queue depth).
pub const MAX_COUNT: usize = 1 << 16;
/// The most banks in one channel.
pub const MAX_BANKS: usize = 1 << 20;

impl Config {
    /// Check that every count is positive and the sizes divide as the mapping needs.
    pub fn check(&self) -> Result<()> {
        let counts = [
            ("channels", self.channels),
            ("dimms_per_channel", self.dimms_per_channel),
            ("ranks_per_dimm", self.ranks_per_dimm),
            ("bank_groups", self.bank_groups),
            ("banks_per_group", self.banks_per_group),
            ("queue_depth", self.queue_depth),
        ];
        if let Some((name, _)) = counts.iter().find(|(_, v)| *v == 0) {
            return Err(Error::value(format!("{name} must be at least 1")));
        }
        // Both timing models keep per-bank state for a channel's banks, and the emulator's
        // vectors store a bank group and bank in 16 bits.
        if let Some((name, v)) = counts.iter().find(|(_, v)| *v > MAX_COUNT) {
            return Err(Error::value(format!("{name} = {v} is more than this model allows ({MAX_COUNT})")));
        }
        let banks = self.ranks_per_channel().saturating_mul(self.banks_per_rank());
        if banks > MAX_BANKS {
            return Err(Error::value(format!("a channel of {banks} banks is more than this model allows ({MAX_BANKS})")));
        }
        if self.line_bytes == 0 || self.row_bytes < self.line_bytes || !self.row_bytes.is_multiple_of(self.line_bytes) {
            return Err(Error::value(format!(
                "row_bytes ({}) must be a positive multiple of line_bytes ({})",
                self.row_bytes, self.line_bytes
            )));
        }
        let t = &self.timing;
        if t.tck_ns.is_nan() || t.tck_ns <= 0.0 || t.tbl == 0 {
            return Err(Error::value("tck_ns and tbl must be positive"));
        }
        let cycles = [("cl", t.cl), ("trcd", t.trcd), ("trp", t.trp), ("tras", t.tras), ("trtp", t.trtp), ("tccd_s", t.tccd_s), ("tccd_l", t.tccd_l), ("trrd_s", t.trrd_s), ("trrd_l", t.trrd_l), ("tfaw", t.tfaw), ("tbl", t.tbl), ("trtrs", t.trtrs)];
        if let Some((name, v)) = cycles.iter().find(|(_, v)| *v > MAX_TIMING_CYCLES) {
            return Err(Error::value(format!("{name} = {v} cycles is more than this model allows ({MAX_TIMING_CYCLES})")));
        }
        Ok(())
    }

    pub fn ranks_per_channel(&self) -> usize {
        self.dimms_per_channel * self.ranks_per_dimm
    }

    pub fn banks_per_rank(&self) -> usize {
        self.bank_groups * self.banks_per_group
    }

    /// A line's bank group among the channel's (`rank * bank_groups + bank_group`).
    pub fn group_index(&self, l: &Location) -> usize {
        l.rank * self.bank_groups + l.bank_group
    }

    /// A line's bank among the channel's.
    pub fn bank_index(&self, l: &Location) -> usize {
        self.group_index(l) * self.banks_per_group + l.bank
    }

    /// Where byte `addr` lives. From the low bits: the line within a row, then channel, bank
    /// group, bank, rank, row, so that a vector of up to a row stays in one row of one bank and
    /// consecutive vectors spread over channels and banks.
    pub fn locate(&self, addr: u64) -> Location {
        self.locator().locate(addr)
    }

    /// [`Config::locate`] for many addresses: the sizes it divides by, prepared once.
    pub fn locator(&self) -> Locator {
        let d = |n: usize| Divisor::new(n as u64);
        Locator {
            line: d(self.line_bytes),
            column: d(self.row_bytes / self.line_bytes),
            channel: d(self.channels),
            bank_group: d(self.bank_groups),
            bank: d(self.banks_per_group),
            rank: d(self.ranks_per_channel()),
        }
    }
}

/// Division by a fixed positive number: a shift when it is a power of two.
#[derive(Debug, Clone, Copy)]
struct Divisor {
    n: u64,
    shift: Option<u32>,
}

impl Divisor {
    fn new(n: u64) -> Divisor {
        Divisor { n, shift: n.is_power_of_two().then(|| n.trailing_zeros()) }
    }

    /// `(x / n, x % n)`.
    #[inline]
    fn split(&self, x: u64) -> (u64, u64) {
        match self.shift {
            Some(s) => (x >> s, x & (self.n - 1)),
            None => (x / self.n, x % self.n),
        }
    }
}

/// [`Config::locate`] with its divisions prepared ([`Config::locator`]).
#[derive(Debug, Clone, Copy)]
pub struct Locator {
    line: Divisor,
    column: Divisor,
    channel: Divisor,
    bank_group: Divisor,
    bank: Divisor,
    rank: Divisor,
}

impl Locator {
    #[inline]
    pub fn locate(&self, addr: u64) -> Location {
        let (x, _) = self.line.split(addr);
        let (x, column) = self.column.split(x);
        let (x, channel) = self.channel.split(x);
        let (x, bank_group) = self.bank_group.split(x);
        let (x, bank) = self.bank.split(x);
        let (row, rank) = self.rank.split(x);
        Location { channel: channel as usize, rank: rank as usize, bank_group: bank_group as usize, bank: bank as usize, row, column: column as u32 }
    }
}

/// A 64-byte line's place in the memory system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub channel: usize,
    pub rank: usize,
    pub bank_group: usize,
    pub bank: usize,
    pub row: u64,
    pub column: u32,
}

/// A DRAM command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Act,
    Rd,
    Pre,
}

impl Kind {
    /// The command's code in a trace array: 0 ACT, 1 RD, 2 PRE.
    pub fn code(self) -> i64 {
        match self {
            Kind::Act => 0,
            Kind::Rd => 1,
            Kind::Pre => 2,
        }
    }

    /// The command of a trace code.
    pub fn from_code(code: i64) -> Result<Kind> {
        match code {
            0 => Ok(Kind::Act),
            1 => Ok(Kind::Rd),
            2 => Ok(Kind::Pre),
            k => Err(Error::value(format!("unknown command kind {k}"))),
        }
    }
}

impl Command {
    /// The trace row of the command: cycle, kind code, rank, bank group, bank, row.
    pub fn to_row(&self) -> [i64; 6] {
        [self.cycle as i64, self.kind.code(), self.rank as i64, self.bank_group as i64, self.bank as i64, self.row as i64]
    }

    /// The command of a trace row (as [`Command::to_row`] writes it).
    pub fn from_row(r: [i64; 6]) -> Result<Command> {
        let field = |x: i64| usize::try_from(x).map_err(|_| Error::value("negative field in a trace"));
        let cycle = u64::try_from(r[0]).map_err(|_| Error::value("negative field in a trace"))?;
        let row = u64::try_from(r[5]).map_err(|_| Error::value("negative field in a trace"))?;
        Ok(Command { cycle, kind: Kind::from_code(r[1])?, rank: field(r[2])?, bank_group: field(r[3])?, bank: field(r[4])?, row, request: 0 })
    }
}

/// One command issued on a channel at `cycle` (for RD, `request` is the request it serves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    pub cycle: u64,
    pub kind: Kind,
    pub rank: usize,
    pub bank_group: usize,
    pub bank: usize,
    pub row: u64,
    pub request: usize,
}

/// What one channel did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChannelStats {
    pub reads: u64,
    pub activates: u64,
    pub precharges: u64,
    pub row_hits: u64,
    /// The cycle the last burst finished on the data bus.
    pub finish: u64,
    /// Each request's completion cycle (its burst's end), in request order.
    pub done: Vec<u64>,
}

/// One bank's state: its open row, when it was activated, and the earliest cycle it may next
/// activate, read or precharge.
#[derive(Clone, Copy, Default)]
pub(crate) struct Bank {
    pub(crate) open: Option<u64>,
    pub(crate) act_at: u64,
    pub(crate) next_act: u64,
    pub(crate) next_rd: u64,
    pub(crate) next_pre: u64,
}

/// One channel's controller and banks.
struct Channel<'a> {
    cfg: &'a Config,
    banks: Vec<Bank>,
    /// Per rank: the cycles of its last four ACTs, and per bank group the last ACT and RD.
    acts: Vec<[u64; 4]>,
    nacts: Vec<usize>,
    last_act_bg: Vec<Option<u64>>,
    last_rd_bg: Vec<Option<u64>>,
    last_act_rank: Vec<Option<u64>>,
    last_rd_rank: Vec<Option<u64>>,
    bus_free: u64,
    bus_rank: Option<usize>,
    cmd_free: u64,
}

impl<'a> Channel<'a> {
    fn new(cfg: &'a Config) -> Channel<'a> {
        let ranks = cfg.ranks_per_channel();
        Channel {
            cfg,
            banks: vec![Bank::default(); ranks * cfg.banks_per_rank()],
            acts: vec![[0; 4]; ranks],
            nacts: vec![0; ranks],
            last_act_bg: vec![None; ranks * cfg.bank_groups],
            last_rd_bg: vec![None; ranks * cfg.bank_groups],
            last_act_rank: vec![None; ranks],
            last_rd_rank: vec![None; ranks],
            bus_free: 0,
            bus_rank: None,
            cmd_free: 0,
        }
    }

    fn bank_index(&self, l: &Location) -> usize {
        self.cfg.bank_index(l)
    }

    /// The next command request `l` needs, and the earliest cycle it may issue.
    #[cfg(test)]
    fn next(&self, l: &Location) -> (Kind, u64) {
        let b = &self.banks[self.bank_index(l)];
        let kind = match b.open {
            Some(row) if row == l.row => Kind::Rd,
            Some(_) => Kind::Pre,
            None => Kind::Act,
        };
        (kind, self.cmd_free.max(self.earliest(self.bank_index(l), l.rank, l.bank_group, kind)))
    }

    /// The earliest cycle a `kind` command to bank `k` (of `rank`, `bank_group`) meets every
    /// constraint but the command bus's.
    #[cfg(test)]
    fn earliest(&self, k: usize, rank: usize, bank_group: usize, kind: Kind) -> u64 {
        self.local(k, kind).max(self.shared(rank, bank_group, kind))
    }

    /// The earliest cycle bank `k`'s own state allows a `kind` command.
    fn local(&self, k: usize, kind: Kind) -> u64 {
        let b = &self.banks[k];
        match kind {
            Kind::Rd => b.next_rd,
            Kind::Pre => b.next_pre,
            Kind::Act => b.next_act,
        }
    }

    /// The earliest cycle the rank, its bank group and the data bus allow a `kind` command to
    /// a bank of `rank`, `bank_group`. Every constraint is "some earlier command's cycle plus
    /// a delay", so this only grows as commands issue.
    fn shared(&self, rank: usize, bank_group: usize, kind: Kind) -> u64 {
        let t = &self.cfg.timing;
        let bg = rank * self.cfg.bank_groups + bank_group;
        let after = |x: Option<u64>, d: u64| x.map_or(0, |x| x + d);
        match kind {
            Kind::Rd => {
                // The burst must find the data bus free (and turn around between ranks).
                let turnaround = if self.bus_rank.is_some_and(|r| r != rank) { t.trtrs } else { 0 };
                let bus = (self.bus_free + turnaround).saturating_sub(t.cl);
                after(self.last_rd_rank[rank], t.tccd_s).max(after(self.last_rd_bg[bg], t.tccd_l)).max(bus)
            }
            Kind::Pre => 0,
            Kind::Act => {
                let faw = if self.nacts[rank] >= 4 { self.acts[rank][self.nacts[rank] % 4] + t.tfaw } else { 0 };
                after(self.last_act_rank[rank], t.trrd_s).max(after(self.last_act_bg[bg], t.trrd_l)).max(faw)
            }
        }
    }

    /// Issue `kind` for request `r` at `at`, record it in `trace` and count it in `stats`
    /// (`activated[r]`: whether `r` opened its row, so that its read is no row hit).
    #[allow(clippy::too_many_arguments)]
    fn record(&mut self, l: &Location, kind: Kind, at: u64, r: usize, trace: Option<&mut Vec<Command>>, stats: &mut ChannelStats, activated: &mut [bool]) {
        self.issue(l, kind, at);
        if let Some(tr) = trace {
            tr.push(Command { cycle: at, kind, rank: l.rank, bank_group: l.bank_group, bank: l.bank, row: l.row, request: r });
        }
        match kind {
            Kind::Act => {
                stats.activates += 1;
                activated[r] = true;
            }
            Kind::Pre => stats.precharges += 1,
            Kind::Rd => {
                stats.reads += 1;
                if !activated[r] {
                    stats.row_hits += 1;
                }
                let end = at + self.cfg.timing.cl + self.cfg.timing.tbl;
                stats.done[r] = end;
                stats.finish = stats.finish.max(end);
            }
        }
    }

    fn issue(&mut self, l: &Location, kind: Kind, at: u64) {
        let t = self.cfg.timing;
        let k = self.bank_index(l);
        let bg = self.cfg.group_index(l);
        self.cmd_free = at + 1;
        let b = &mut self.banks[k];
        match kind {
            Kind::Act => {
                b.open = Some(l.row);
                b.act_at = at;
                b.next_rd = at + t.trcd;
                b.next_pre = at + t.tras;
                let n = self.nacts[l.rank];
                self.acts[l.rank][n % 4] = at;
                self.nacts[l.rank] = n + 1;
                self.last_act_rank[l.rank] = Some(at);
                self.last_act_bg[bg] = Some(at);
            }
            Kind::Rd => {
                b.next_pre = b.next_pre.max(at + t.trtp);
                self.last_rd_rank[l.rank] = Some(at);
                self.last_rd_bg[bg] = Some(at);
                self.bus_free = at + t.cl + t.tbl;
                self.bus_rank = Some(l.rank);
            }
            Kind::Pre => {
                b.open = None;
                b.next_act = (at + t.trp).max(b.act_at + t.tras + t.trp);
            }
        }
    }
}

/// The banks with a candidate command, for [`run_channel`]'s scan, packed so that the scan
/// reads three arrays in order: per busy bank its own bound on the candidate's cycle, which
/// bank-group bound applies (an index into the shared bounds), and the tie-break (not a read,
/// then the request's age) as one word; `slot[k]` is bank `k`'s place (or `usize::MAX`).
struct Busy {
    local: Vec<u64>,
    bound: Vec<usize>,
    tie: Vec<u64>,
    bank: Vec<usize>,
    slot: Vec<usize>,
}

impl Busy {
    fn set(&mut self, k: usize, local: u64, bound: usize, tie: u64) {
        let s = self.slot[k];
        if s == usize::MAX {
            self.slot[k] = self.bank.len();
            self.local.push(local);
            self.bound.push(bound);
            self.tie.push(tie);
            self.bank.push(k);
        } else {
            (self.local[s], self.bound[s], self.tie[s]) = (local, bound, tie);
        }
    }

    fn remove(&mut self, k: usize) {
        let s = std::mem::replace(&mut self.slot[k], usize::MAX);
        if s == usize::MAX {
            return;
        }
        self.local.swap_remove(s);
        self.bound.swap_remove(s);
        self.tie.swap_remove(s);
        self.bank.swap_remove(s);
        if let Some(&moved) = self.bank.get(s) {
            self.slot[moved] = s;
        }
    }

    /// The soonest candidate by (cycle, not a read, age): its request and cycle, the later of
    /// its own bound, its shared bound and the command bus's `floor`. Each candidate's key is
    /// one word, (cycles past `floor`, not a read, request), so the scan is a branch-free
    /// minimum; a candidate more than `2^24` cycles past the floor (only with absurd timing
    /// values) sends the decision to the plain two-word comparison.
    fn soonest(&self, shared: &[u64], floor: u64) -> (usize, u64) {
        let (mut best, mut far) = (u64::MAX, 0u64);
        for ((&local, &bound), &tie) in self.local.iter().zip(&self.bound).zip(&self.tie) {
            let wait = local.max(shared[bound]).saturating_sub(floor);
            far |= wait >> WAIT_BITS;
            best = best.min((wait << TIE_BITS) | tie);
        }
        if far == 0 {
            return ((best & REQUEST_MASK) as usize, floor + (best >> TIE_BITS));
        }
        let mut key = (u64::MAX, u64::MAX);
        for ((&local, &bound), &tie) in self.local.iter().zip(&self.bound).zip(&self.tie) {
            key = key.min((local.max(shared[bound]).max(floor), tie));
        }
        ((key.1 & REQUEST_MASK) as usize, key.0)
    }
}

/// A scheduler key: (cycles past the floor: `WAIT_BITS`, not a read: 1 bit, request:
/// `TIE_BITS - 1` bits).
const WAIT_BITS: u32 = 24;
const TIE_BITS: u32 = 64 - WAIT_BITS;
const REQUEST_MASK: u64 = (1 << (TIE_BITS - 1)) - 1;

/// Emulate one channel serving `requests` (its lines' locations, in arrival order, all
/// arriving at cycle 0) FR-FCFS; with `trace`, every command is recorded.
///
/// The controller queue holds the `queue_depth` oldest unserved requests. Each decision
/// takes, among the commands that can issue soonest, a row-hit read first, then the oldest
/// request's; a precharge never closes a row that a queued request still hits. Every request
/// of one bank wants the same next command (a read of the open row, else a precharge, else an
/// activate), so each bank offers one candidate: its oldest row hit's read, else its oldest
/// request's command. A decision scans the banks with a candidate, whose earliest cycle is the
/// later of a per-bank bound (kept with the candidate) and a per-bank-group bound for its kind
/// (updated for the groups a command affects), so it costs a few loads per busy bank.
pub fn run_channel(cfg: &Config, requests: &[Location], mut trace: Option<&mut Vec<Command>>) -> ChannelStats {
    assert!((requests.len() as u64) <= REQUEST_MASK, "more requests on one channel than the scheduler numbers (2^39)");
    let mut ch = Channel::new(cfg);
    let nb = ch.banks.len();
    let groups = cfg.ranks_per_channel() * cfg.bank_groups;
    let mut stats = ChannelStats { done: vec![0; requests.len()], ..Default::default() };
    // Per bank: queued requests in arrival order, and the candidate (kind, request) with its
    // own bound; the banks that have a candidate, and where each sits in that list.
    let mut waiting: Vec<Vec<usize>> = vec![Vec::new(); nb];
    let mut cand: Vec<Option<(Kind, usize)>> = vec![None; nb];
    let mut sched = Busy { local: Vec::with_capacity(nb), bound: Vec::with_capacity(nb), tie: Vec::with_capacity(nb), bank: Vec::with_capacity(nb), slot: vec![usize::MAX; nb] };
    // Per bank group, the rank's, group's and bus's bound for a read and for an activate, and
    // a last entry of 0 (a precharge's).
    let mut shared = vec![0u64; 2 * groups + 1];
    let mut activated = vec![false; requests.len()];
    let refresh = |ch: &Channel, k: usize, waiting: &[usize], cand: &mut [Option<(Kind, usize)>], sched: &mut Busy| {
        cand[k] = waiting.first().map(|&first| match ch.banks[k].open {
            Some(row) => match waiting.iter().find(|&&r| requests[r].row == row) {
                Some(&r) => (Kind::Rd, r),
                None => (Kind::Pre, first),
            },
            None => (Kind::Act, first),
        });
        match cand[k] {
            Some((kind, r)) => {
                let group = k / cfg.banks_per_group;
                let bound = match kind {
                    Kind::Rd => 2 * group,
                    Kind::Act => 2 * group + 1,
                    Kind::Pre => 2 * groups,
                };
                let tie = (u64::from(kind != Kind::Rd) << (TIE_BITS - 1)) | r as u64;
                sched.set(k, ch.local(k, kind), bound, tie);
            }
            None => sched.remove(k),
        }
    };
    let (mut next_in, mut queued) = (0, 0);
    loop {
        while queued < cfg.queue_depth && next_in < requests.len() {
            let r = next_in;
            next_in += 1;
            queued += 1;
            let k = ch.bank_index(&requests[r]);
            waiting[k].push(r);
            // A new request changes its bank's candidate only when the bank had none, or when
            // it hits the open row that the bank was about to close.
            let changes = match cand[k] {
                None => true,
                Some((Kind::Pre, _)) => ch.banks[k].open == Some(requests[r].row),
                Some(_) => false,
            };
            if changes {
                refresh(&ch, k, &waiting[k], &mut cand, &mut sched);
            }
        }
        if queued == 0 {
            break;
        }
        let (r, at) = sched.soonest(&shared, ch.cmd_free);
        let k = ch.bank_index(&requests[r]);
        let (kind, _) = cand[k].expect("some queued request can always make progress");
        let l = requests[r];
        ch.record(&l, kind, at, r, trace.as_deref_mut(), &mut stats, &mut activated);
        match kind {
            Kind::Act => {
                for g in 0..cfg.bank_groups {
                    shared[2 * (l.rank * cfg.bank_groups + g) + 1] = ch.shared(l.rank, g, Kind::Act);
                }
            }
            Kind::Pre => {}
            Kind::Rd => {
                let w = &mut waiting[k];
                w.remove(w.iter().position(|&x| x == r).expect("a read serves a queued request"));
                queued -= 1;
                // The data bus is every group's.
                for rank in 0..cfg.ranks_per_channel() {
                    for g in 0..cfg.bank_groups {
                        shared[2 * (rank * cfg.bank_groups + g)] = ch.shared(rank, g, Kind::Rd);
                    }
                }
            }
        }
        refresh(&ch, k, &waiting[k], &mut cand, &mut sched);
    }
    stats
}

/// [`run_channel`], or with `fast` the fast mode's
/// [`run_channel_fast`](crate::dram_fast::run_channel_fast).
pub fn run_channel_timed(cfg: &Config, requests: &[Location], trace: Option<&mut Vec<Command>>, fast: bool) -> ChannelStats {
    if fast {
        crate::dram_fast::run_channel_fast(cfg, requests, trace)
    } else {
        run_channel(cfg, requests, trace)
    }
}

/// Emulate every channel (in parallel on the core's threads) serving the lines at `addrs`
/// (byte addresses of 64-byte lines, in arrival order): one [`ChannelStats`] per channel,
/// with each channel's command trace when `traces` is set.
pub fn run(cfg: &Config, addrs: &[u64], traces: bool) -> Result<(Vec<ChannelStats>, Vec<Vec<Command>>)> {
    run_timed(cfg, addrs, traces, false)
}

/// [`run`] with the command model, or with `fast` the fast mode ([`crate::dram_fast`]).
pub fn run_timed(cfg: &Config, addrs: &[u64], traces: bool, fast: bool) -> Result<(Vec<ChannelStats>, Vec<Vec<Command>>)> {
    cfg.check()?;
    if traces && fast {
        return Err(Error::value("command traces come from the command model, not the fast mode"));
    }
    let mut per: Vec<Vec<Location>> = vec![Vec::new(); cfg.channels];
    let locator = cfg.locator();
    for &a in addrs {
        let l = locator.locate(a);
        per[l.channel].push(l);
    }
    type Slot = std::sync::Mutex<Option<(ChannelStats, Vec<Command>)>>;
    let out: Vec<Slot> = (0..cfg.channels).map(|_| std::sync::Mutex::new(None)).collect();
    parallel::for_each_index(cfg.channels, usize::MAX, &|c| {
        let mut trace = Vec::new();
        let stats = run_channel_timed(cfg, &per[c], traces.then_some(&mut trace), fast);
        *out[c].lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((stats, trace));
        Ok(())
    })?;
    let (stats, cmds) = out
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner).expect("every channel ran"))
        .unzip();
    Ok((stats, cmds))
}

/// The scheduler of [`run_channel`] written plainly, for the tests: every decision scans every
/// queued request. [`run_channel`] must issue exactly the same commands.
#[cfg(test)]
fn run_channel_scan(cfg: &Config, requests: &[Location], mut trace: Option<&mut Vec<Command>>) -> ChannelStats {
    let mut ch = Channel::new(cfg);
    let mut stats = ChannelStats { done: vec![0; requests.len()], ..Default::default() };
    let mut queue: Vec<usize> = Vec::with_capacity(cfg.queue_depth);
    let mut next_in = 0;
    let mut activated = vec![false; requests.len()];
    let mut wanted = vec![false; ch.banks.len()];
    loop {
        while queue.len() < cfg.queue_depth && next_in < requests.len() {
            queue.push(next_in);
            next_in += 1;
        }
        if queue.is_empty() {
            break;
        }
        // FR-FCFS: among the commands that can issue soonest, a row-hit read first, then the
        // oldest request; a precharge never closes a row another queued request still hits.
        for &r in &queue {
            let k = ch.bank_index(&requests[r]);
            if ch.banks[k].open == Some(requests[r].row) {
                wanted[k] = true;
            }
        }
        let mut best: Option<(u64, bool, usize, Kind)> = None;
        for (q, &r) in queue.iter().enumerate() {
            let l = &requests[r];
            let (kind, at) = ch.next(l);
            if kind == Kind::Pre && wanted[ch.bank_index(l)] {
                continue;
            }
            let key = (at, kind != Kind::Rd, q, kind);
            if best.is_none_or(|b| (key.0, key.1, key.2) < (b.0, b.1, b.2)) {
                best = Some(key);
            }
        }
        for &r in &queue {
            wanted[ch.bank_index(&requests[r])] = false;
        }
        let (at, _, q, kind) = best.expect("some queued request can always make progress");
        let r = queue[q];
        ch.record(&requests[r], kind, at, r, trace.as_deref_mut(), &mut stats, &mut activated);
        if kind == Kind::Rd {
            queue.remove(q);
        }
    }
    stats
}

/// Replay one channel's command trace and check every timing constraint the model enforces
/// (and that each read finds its row open); the first violation is returned as an error.
pub fn validate(cfg: &Config, trace: &[Command]) -> Result<()> {
    let t = cfg.timing;
    let ranks = cfg.ranks_per_channel();
    let nb = ranks * cfg.banks_per_rank();
    let idx = |c: &Command| (c.rank * cfg.bank_groups + c.bank_group) * cfg.banks_per_group + c.bank;
    let mut open: Vec<Option<u64>> = vec![None; nb];
    let mut last_act: Vec<Option<u64>> = vec![None; nb];
    let mut last_pre: Vec<Option<u64>> = vec![None; nb];
    let mut last_rd_bank: Vec<Option<u64>> = vec![None; nb];
    let mut rank_acts: Vec<Vec<u64>> = vec![Vec::new(); ranks];
    let mut bg_act: Vec<Option<u64>> = vec![None; ranks * cfg.bank_groups];
    let mut last_rd: Vec<(u64, usize, usize)> = Vec::new();
    let mut last_cmd: Option<u64> = None;
    let mut bus: Option<(u64, usize)> = None;
    let fail = |c: &Command, what: &str| Err(Error::value(format!("{:?} at cycle {} (rank {}, bank group {}, bank {}): {what}", c.kind, c.cycle, c.rank, c.bank_group, c.bank)));
    for c in trace {
        if last_cmd.is_some_and(|x| c.cycle <= x) {
            return fail(c, "two commands in one cycle, or out of order");
        }
        last_cmd = Some(c.cycle);
        let k = idx(c);
        match c.kind {
            Kind::Act => {
                if open[k].is_some() {
                    return fail(c, "ACT to an open bank");
                }
                if last_pre[k].is_some_and(|p| c.cycle < p + t.trp) {
                    return fail(c, "tRP");
                }
                if last_act[k].is_some_and(|a| c.cycle < a + t.tras + t.trp) {
                    return fail(c, "tRC");
                }
                let acts = &rank_acts[c.rank];
                if let Some(&a) = acts.last() {
                    if c.cycle < a + t.trrd_s {
                        return fail(c, "tRRD_S");
                    }
                }
                let g = c.rank * cfg.bank_groups + c.bank_group;
                if bg_act[g].is_some_and(|a| c.cycle < a + t.trrd_l) {
                    return fail(c, "tRRD_L");
                }
                bg_act[g] = Some(c.cycle);
                if acts.len() >= 4 && c.cycle < acts[acts.len() - 4] + t.tfaw {
                    return fail(c, "tFAW");
                }
                rank_acts[c.rank].push(c.cycle);
                open[k] = Some(c.row);
                last_act[k] = Some(c.cycle);
            }
            Kind::Rd => {
                if open[k] != Some(c.row) {
                    return fail(c, "RD to a closed bank or another row");
                }
                if last_act[k].is_some_and(|a| c.cycle < a + t.trcd) {
                    return fail(c, "tRCD");
                }
                for &(x, rank, bg) in last_rd.iter().rev().take(8) {
                    if rank == c.rank && c.cycle < x + if bg == c.bank_group { t.tccd_l } else { t.tccd_s } {
                        return fail(c, "tCCD");
                    }
                }
                let start = c.cycle + t.cl;
                if let Some((end, rank)) = bus {
                    let gap = if rank != c.rank { t.trtrs } else { 0 };
                    if start < end + gap {
                        return fail(c, "data bus overlap (or rank turnaround)");
                    }
                }
                bus = Some((start + t.tbl, c.rank));
                last_rd.push((c.cycle, c.rank, c.bank_group));
                last_rd_bank[k] = Some(c.cycle);
            }
            Kind::Pre => {
                if open[k].is_none() {
                    return fail(c, "PRE to a closed bank");
                }
                if last_act[k].is_some_and(|a| c.cycle < a + t.tras) {
                    return fail(c, "tRAS");
                }
                if last_rd_bank[k].is_some_and(|r| c.cycle < r + t.trtp) {
                    return fail(c, "tRTP");
                }
                open[k] = None;
                last_pre[k] = Some(c.cycle);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_row_hit_is_faster_than_a_row_miss() {
        let cfg = Config { channels: 1, ..Config::default() };
        let t = cfg.timing;
        let same_row = run_channel(&cfg, &[cfg.locate(0), cfg.locate(64)], None);
        assert_eq!(same_row.row_hits, 1);
        assert_eq!(same_row.done[0], t.trcd + t.cl + t.tbl);
        let other_row = cfg.row_bytes as u64 * (cfg.channels * cfg.banks_per_rank() * cfg.ranks_per_channel()) as u64;
        let conflict = run_channel(&cfg, &[cfg.locate(0), cfg.locate(other_row)], None);
        assert_eq!(conflict.row_hits, 0);
        assert!(conflict.finish > same_row.finish);
    }

    /// `n` random 64-byte-aligned addresses below `span` (xorshift from `seed`).
    pub(crate) fn random_lines(n: usize, span: u64, seed: u64) -> Vec<u64> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % span) & !63
            })
            .collect()
    }

    #[test]
    fn the_bank_scan_scheduler_issues_what_a_plain_scan_issues() {
        // Small and large spans (row hits common or rare), several queue depths and shapes.
        for (i, (span, queue, ranks)) in [(1u64 << 16, 32, 2), (1 << 30, 32, 2), (1 << 22, 4, 1), (1 << 26, 64, 4), (1 << 20, 1, 2)].into_iter().enumerate() {
            let mut cfg = Config { channels: 1, ranks_per_dimm: ranks, queue_depth: queue, ..Config::default() };
            if i == 2 {
                // Waits beyond the scheduler's one-word keys take its two-word comparison.
                cfg.timing.tras = 1 << 25;
            }
            let reqs: Vec<Location> = random_lines(3000, span, 99 + i as u64).iter().map(|&a| cfg.locate(a)).collect();
            let (mut fast, mut plain) = (Vec::new(), Vec::new());
            let a = run_channel(&cfg, &reqs, Some(&mut fast));
            let b = run_channel_scan(&cfg, &reqs, Some(&mut plain));
            assert_eq!(a, b, "case {i}");
            assert_eq!(fast, plain, "case {i}");
            validate(&cfg, &fast).unwrap();
        }
    }

    #[test]
    fn every_emitted_trace_meets_the_timing() {
        let cfg = Config::default();
        let mut x = 12345u64;
        let addrs: Vec<u64> = (0..4000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % (1 << 30)) & !63
            })
            .collect();
        let (stats, traces) = run(&cfg, &addrs, true).unwrap();
        assert_eq!(stats.iter().map(|s| s.reads).sum::<u64>(), 4000);
        for tr in &traces {
            validate(&cfg, tr).unwrap();
        }
        // The validator catches a read moved before its row is ready, and a fifth ACT inside
        // the four-activate window.
        let mut early = traces[0].clone();
        let rd = early.iter().position(|c| c.kind == Kind::Rd).unwrap();
        let act = early[..rd].iter().rposition(|c| c.kind == Kind::Act && c.rank == early[rd].rank && c.bank == early[rd].bank && c.bank_group == early[rd].bank_group).unwrap();
        let moved = early[act].cycle + 1;
        early[rd].cycle = moved;
        early.sort_by_key(|c| c.cycle);
        assert!(validate(&cfg, &early).is_err());
        let burst: Vec<Command> = (0..5)
            .map(|i| Command { cycle: 5 * i as u64, kind: Kind::Act, rank: 0, bank_group: i % 4, bank: i / 4, row: 0, request: i })
            .collect();
        assert!(validate(&cfg, &burst).unwrap_err().to_string().contains("tFAW"));
    }
}
