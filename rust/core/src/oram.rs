//! Path ORAM (Stefanov et al., CCS 2013) over a table's rows, and the lookup through it.
//!
//! The rows are blocks in a binary tree of buckets of [`Z`] blocks each, with `2^h` leaves for
//! `N` rows where `h = ceil(log2 N) - 1` (20 levels for `2^20` rows, so a lookup reads and
//! writes 20 x 4 blocks, as in the Path ORAM paper). Every block is assigned a uniformly random
//! leaf and lives on the path from the root to that leaf or in the stash. To read block `a`:
//! look up and replace its leaf in the position map (a fresh random leaf), read every bucket on
//! the path to the old leaf into the stash, take the block from the stash, then write the path
//! back from the leaf up, each bucket taking up to `Z` stash blocks whose leaf shares it. The
//! buckets touched are a path to a leaf drawn at random independently of the ids, so the
//! sequence of paths is the same distribution for any sequence of ids.
//!
//! The position map is itself kept in a Path ORAM of blocks of [`POSITIONS_PER_BLOCK`] leaves
//! (recursively) until it has at most [`MAP_CUTOFF`] entries, which are held in a plain array
//! (the client's memory). The stash is bounded by [`STASH_LIMIT`] blocks: Path ORAM with
//! `Z = 4` overflows a stash of `R` blocks with probability below `14 * 0.6002^R` per access
//! (the paper's bound), so a stash past the limit is reported as an error rather than grown.
//! [`PathOram::stash_max`] reports the most blocks the stash held after any write-back.
//!
//! What this is not: blocks are not encrypted, dummy slots are not rewritten and the stash and
//! the position map are plain client memory, handled with branches (an enclave would keep
//! them in private memory and scan them obliviously, as Oblix does). The visible trace is the
//! tree's buckets; the costs measured are a lower bound for an enclave's Path ORAM. Leaves come
//! from Xoshiro256++, which is fast but not a cryptographic generator: seed it from the OS.

use rand_xoshiro::rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::error::{Error, Result};
use crate::kernel::{Index, Mode};
use crate::lookup::TableView;
use crate::mem;
use crate::oblivious::{checked_rows, gather_buffer, pool_gathered};
use crate::DType;

/// Blocks per bucket (Path ORAM's `Z`).
pub const Z: usize = 4;
/// Leaves (u32) per block of a position map ORAM: 64-byte blocks.
pub const POSITIONS_PER_BLOCK: usize = 16;
/// A position map of at most this many entries is a plain array.
pub const MAP_CUTOFF: usize = 4096;
/// The most blocks the stash may hold after a write-back.
pub const STASH_LIMIT: usize = 256;

const EMPTY: u64 = u64::MAX;

/// One visible bucket path: the ORAM it belongs to (0 the rows', 1.. the position maps') and
/// the leaf it ends at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathRead {
    pub tree: u8,
    pub leaf: u32,
}

/// The tree of buckets and the stash of one Path ORAM.
struct Tree {
    height: u32,
    block: usize,
    ids: Vec<u64>,
    leaves: Vec<u32>,
    data: Vec<u8>,
    stash_ids: Vec<u64>,
    stash_leaves: Vec<u32>,
    stash_data: Vec<u8>,
    stash_max: usize,
}

fn ceil_log2(n: usize) -> u32 {
    usize::BITS - n.saturating_sub(1).leading_zeros()
}

impl Tree {
    /// A tree for `n` blocks of `block` bytes, block `i` filled by `init(i, bytes)` and put on
    /// the path to `positions[i]` (in the deepest bucket with room, else the stash).
    fn new(n: usize, block: usize, positions: &[u32], init: &mut dyn FnMut(usize, &mut [u8])) -> Result<Tree> {
        let height = ceil_log2(n).saturating_sub(1);
        let buckets = (1usize << (height + 1)) - 1;
        let slots = buckets * Z;
        let bytes = slots.checked_mul(block).ok_or_else(|| Error::value("an ORAM too large to address"))?;
        let mut t = Tree {
            height,
            block,
            ids: mem::filled(slots, EMPTY, "the ORAM's block ids")?,
            leaves: mem::filled(slots, 0u32, "the ORAM's block leaves")?,
            data: mem::filled(bytes, 0u8, "the ORAM's buckets")?,
            stash_ids: Vec::new(),
            stash_leaves: Vec::new(),
            stash_data: Vec::new(),
            stash_max: 0,
        };
        let mut fill = mem::filled(buckets, 0u8, "the bucket counts")?;
        let mut scratch = vec![0u8; block];
        for (i, &leaf) in positions.iter().enumerate().take(n) {
            scratch.fill(0);
            init(i, &mut scratch);
            let home = (0..=height).rev().map(|l| t.node(leaf, l)).find(|&b| (fill[b] as usize) < Z);
            match home {
                Some(b) => {
                    let s = b * Z + fill[b] as usize;
                    fill[b] += 1;
                    t.ids[s] = i as u64;
                    t.leaves[s] = leaf;
                    t.data[s * block..(s + 1) * block].copy_from_slice(&scratch);
                }
                None => t.push_stash(i as u64, leaf, &scratch),
            }
        }
        t.stash_max = t.stash_ids.len();
        Ok(t)
    }

    fn leaves(&self) -> u32 {
        1u32 << self.height
    }

    /// The bucket at `level` (0 the root) on the path to `leaf`.
    fn node(&self, leaf: u32, level: u32) -> usize {
        (1usize << level) - 1 + (leaf >> (self.height - level)) as usize
    }

    fn push_stash(&mut self, id: u64, leaf: u32, bytes: &[u8]) {
        self.stash_ids.push(id);
        self.stash_leaves.push(leaf);
        self.stash_data.extend_from_slice(bytes);
    }

    /// Read the path to `leaf` into the stash, give block `id` to `f` and move it to
    /// `new_leaf`, and write the path back.
    fn access(&mut self, id: u64, leaf: u32, new_leaf: u32, f: &mut dyn FnMut(&mut [u8])) -> Result<()> {
        let b = self.block;
        for level in 0..=self.height {
            let node = self.node(leaf, level);
            for s in node * Z..(node + 1) * Z {
                if self.ids[s] != EMPTY {
                    self.stash_ids.push(self.ids[s]);
                    self.stash_leaves.push(self.leaves[s]);
                    self.stash_data.extend_from_slice(&self.data[s * b..(s + 1) * b]);
                    self.ids[s] = EMPTY;
                }
            }
        }
        let k = self.stash_ids.iter().position(|&x| x == id).ok_or_else(|| {
            Error::value(format!("ORAM block {id} is neither on its path nor in the stash"))
        })?;
        f(&mut self.stash_data[k * b..(k + 1) * b]);
        self.stash_leaves[k] = new_leaf;
        for level in (0..=self.height).rev() {
            let node = self.node(leaf, level);
            let shift = self.height - level;
            let mut used = 0;
            let mut k = 0;
            while k < self.stash_ids.len() && used < Z {
                if self.stash_leaves[k] >> shift == leaf >> shift {
                    let s = node * Z + used;
                    used += 1;
                    self.ids[s] = self.stash_ids[k];
                    self.leaves[s] = self.stash_leaves[k];
                    self.data[s * b..(s + 1) * b].copy_from_slice(&self.stash_data[k * b..(k + 1) * b]);
                    self.remove_stash(k);
                } else {
                    k += 1;
                }
            }
        }
        self.stash_max = self.stash_max.max(self.stash_ids.len());
        if self.stash_ids.len() > STASH_LIMIT {
            return Err(Error::value(format!(
                "the ORAM's stash overflowed: {} blocks > {STASH_LIMIT}",
                self.stash_ids.len()
            )));
        }
        Ok(())
    }

    fn remove_stash(&mut self, k: usize) {
        let b = self.block;
        let last = self.stash_ids.len() - 1;
        self.stash_ids.swap_remove(k);
        self.stash_leaves.swap_remove(k);
        if k != last {
            self.stash_data.copy_within(last * b..(last + 1) * b, k * b);
        }
        self.stash_data.truncate(last * b);
    }
}

/// Where each block's leaf is kept.
enum PositionMap {
    Plain(Vec<u32>),
    Oram(Box<PathOram>),
}

/// A Path ORAM of `blocks` blocks of `block_bytes` bytes (see the module).
pub struct PathOram {
    tree: Tree,
    map: PositionMap,
    rng: Xoshiro256PlusPlus,
    depth: u8,
    blocks: usize,
}

impl PathOram {
    /// An ORAM of `blocks` blocks, block `i` filled by `init(i, bytes)`, with leaves drawn from
    /// a generator seeded by `seed`.
    pub fn new(blocks: usize, block_bytes: usize, seed: u64, init: &mut dyn FnMut(usize, &mut [u8])) -> Result<PathOram> {
        PathOram::build(blocks, block_bytes, seed, 0, init)
    }

    fn build(blocks: usize, block_bytes: usize, seed: u64, depth: u8, init: &mut dyn FnMut(usize, &mut [u8])) -> Result<PathOram> {
        if blocks == 0 || block_bytes == 0 {
            return Err(Error::value("an ORAM needs at least one block of at least one byte"));
        }
        if blocks > (1usize << 31) {
            return Err(Error::value(format!("an ORAM holds at most 2^31 blocks, got {blocks}")));
        }
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let leaves = 1u32 << ceil_log2(blocks).saturating_sub(1);
        let mut positions = mem::with_capacity(blocks, "the ORAM's positions")?;
        positions.extend((0..blocks).map(|_| (rng.next_u64() % leaves as u64) as u32));
        let tree = Tree::new(blocks, block_bytes, &positions, init)?;
        let map = if blocks <= MAP_CUTOFF {
            PositionMap::Plain(positions)
        } else {
            let n = blocks.div_ceil(POSITIONS_PER_BLOCK);
            let map_seed = rng.next_u64();
            let mut fill = |j: usize, bytes: &mut [u8]| {
                let first = j * POSITIONS_PER_BLOCK;
                for (k, p) in positions[first..blocks.min(first + POSITIONS_PER_BLOCK)].iter().enumerate() {
                    bytes[4 * k..4 * k + 4].copy_from_slice(&p.to_le_bytes());
                }
            };
            PositionMap::Oram(Box::new(PathOram::build(n, 4 * POSITIONS_PER_BLOCK, map_seed, depth + 1, &mut fill)?))
        };
        Ok(PathOram { tree, map, rng, depth, blocks })
    }

    /// Give block `id` to `f` (to read or change), recording the paths read in `trace`.
    pub fn access(&mut self, id: usize, trace: &mut Option<Vec<PathRead>>, f: &mut dyn FnMut(&mut [u8])) -> Result<()> {
        if id >= self.blocks {
            return Err(Error::value(format!("ORAM block {id} outside [0, {})", self.blocks)));
        }
        let new_leaf = (self.rng.next_u64() % self.tree.leaves() as u64) as u32;
        let leaf = match &mut self.map {
            PositionMap::Plain(p) => std::mem::replace(&mut p[id], new_leaf),
            PositionMap::Oram(o) => {
                let off = 4 * (id % POSITIONS_PER_BLOCK);
                let mut old = 0u32;
                o.access(id / POSITIONS_PER_BLOCK, trace, &mut |b: &mut [u8]| {
                    let cell = &mut b[off..off + 4];
                    old = u32::from_le_bytes([cell[0], cell[1], cell[2], cell[3]]);
                    cell.copy_from_slice(&new_leaf.to_le_bytes());
                })?;
                old
            }
        };
        if let Some(t) = trace {
            t.push(PathRead { tree: self.depth, leaf });
        }
        self.tree.access(id as u64, leaf, new_leaf, f)
    }

    /// Levels of the tree of every ORAM, the rows' first and then each position map's.
    pub fn levels(&self) -> Vec<u32> {
        let mut v = vec![self.tree.height + 1];
        if let PositionMap::Oram(o) = &self.map {
            v.extend(o.levels());
        }
        v
    }

    /// The most blocks any stash held after a write-back, the rows' ORAM first.
    pub fn stash_max(&self) -> Vec<usize> {
        let mut v = vec![self.tree.stash_max];
        if let PositionMap::Oram(o) = &self.map {
            v.extend(o.stash_max());
        }
        v
    }

    /// Bytes held by the trees (every ORAM's buckets, ids and leaves).
    pub fn nbytes(&self) -> usize {
        let own = self.tree.data.len() + self.tree.ids.len() * 12;
        own + match &self.map {
            PositionMap::Plain(p) => 4 * p.len(),
            PositionMap::Oram(o) => o.nbytes(),
        }
    }
}

/// A table's rows in a Path ORAM: lookups through it read random paths, not the ids' rows.
pub struct OramTable {
    oram: PathOram,
    num_rows: usize,
    dim: usize,
    dtype: DType,
    trace: Option<Vec<PathRead>>,
}

impl OramTable {
    /// Copy `table`'s rows into a new Path ORAM seeded by `seed`.
    pub fn new(table: TableView<'_>, seed: u64) -> Result<OramTable> {
        let rb = table.dtype.row_bytes(table.dim);
        let mut init = |i: usize, b: &mut [u8]| b.copy_from_slice(&table.data[i * rb..(i + 1) * rb]);
        let oram = PathOram::new(table.num_rows, rb, seed, &mut init)?;
        Ok(OramTable { oram, num_rows: table.num_rows, dim: table.dim, dtype: table.dtype, trace: None })
    }

    pub fn num_rows(&self) -> usize {
        self.num_rows
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn oram(&self) -> &PathOram {
        &self.oram
    }

    /// Start (or stop, dropping what was recorded) recording the paths read.
    pub fn record(&mut self, on: bool) {
        self.trace = on.then(Vec::new);
    }

    /// The paths read since the last call, in order (empty when not recording).
    pub fn take_trace(&mut self) -> Vec<PathRead> {
        self.trace.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Pool `indices` into `out` (`[B, dim]` for the bags `offsets` bound) as the plain lookup
    /// does, each row fetched through the ORAM in lookup order.
    pub fn lookup<I: Index>(
        &mut self,
        indices: &[I],
        offsets: Vec<usize>,
        weights: Option<&[f32]>,
        mode: Mode,
        out: &mut [f32],
    ) -> Result<()> {
        let rows = checked_rows(indices, &offsets, self.num_rows)?;
        let shape = TableView { data: &[], num_rows: self.num_rows, dim: self.dim, dtype: self.dtype, huge_pages: false };
        let rb = self.dtype.row_bytes(self.dim);
        let mut gathered = gather_buffer(&shape, rows.len())?;
        for (slot, &r) in gathered.chunks_exact_mut(rb.max(1)).zip(&rows) {
            self.oram.access(r as usize, &mut self.trace, &mut |b: &mut [u8]| slot.copy_from_slice(b))?;
        }
        pool_gathered(&shape, &gathered, rows.len(), offsets, weights, mode, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lookup::bag_offsets;
    use crate::{f32_bytes, lookup, Bags};

    fn counting(blocks: usize, seed: u64) -> PathOram {
        PathOram::new(blocks, 8, seed, &mut |i, b| b.copy_from_slice(&(i as u64).to_le_bytes())).unwrap()
    }

    fn read(o: &mut PathOram, id: usize, trace: &mut Option<Vec<PathRead>>) -> u64 {
        let mut v = 0u64;
        o.access(id, trace, &mut |b: &mut [u8]| v = u64::from_le_bytes(b.try_into().unwrap())).unwrap();
        v
    }

    #[test]
    fn levels_follow_the_row_count() {
        assert_eq!(counting(1, 0).levels(), vec![1]);
        assert_eq!(counting(4096, 0).levels(), vec![12]);
        // 2^20 rows: 20 levels; the map of 65,536 blocks (16 levels), then one of 4,096.
        let o = PathOram::new(1 << 20, 1, 0, &mut |_, _| {}).unwrap();
        assert_eq!(o.levels(), vec![20, 16, 12]);
    }

    #[test]
    fn every_block_reads_back_and_writes_stick() {
        let mut o = counting(10_000, 3);
        let mut t = None;
        for i in (0..10_000).step_by(7) {
            assert_eq!(read(&mut o, i, &mut t), i as u64);
        }
        o.access(5, &mut t, &mut |b: &mut [u8]| b.copy_from_slice(&77u64.to_le_bytes())).unwrap();
        for _ in 0..3 {
            assert_eq!(read(&mut o, 5, &mut t), 77);
        }
        assert!(o.access(10_000, &mut t, &mut |_| {}).is_err());
    }

    #[test]
    fn the_stash_stays_small() {
        let mut o = counting(1 << 13, 11);
        let mut t = None;
        for k in 0..50_000usize {
            read(&mut o, (k * 2_654_435_761) % (1 << 13), &mut t);
        }
        assert!(o.stash_max().iter().all(|&s| s < 40), "{:?}", o.stash_max());
    }

    #[test]
    fn the_paths_do_not_follow_the_ids() {
        // One id read over and over and distinct ids read once each: one leaf a path, uniform
        // over the leaves, and a repeated id never re-reads its last path more than chance.
        let n = 1 << 12;
        for ids in [vec![9usize; 4000], (0..4000).collect()] {
            let mut o = counting(n, 5);
            let mut t = Some(Vec::new());
            for &i in &ids {
                read(&mut o, i, &mut t);
            }
            let t = t.unwrap();
            assert_eq!(t.len(), ids.len());
            let leaves = 1 << 11;
            let mut counts = [0f64; 8];
            for p in &t {
                counts[(p.leaf as usize * 8) / leaves] += 1.0;
            }
            let e = ids.len() as f64 / 8.0;
            let chi2: f64 = counts.iter().map(|c| (c - e) * (c - e) / e).sum();
            assert!(chi2 < 24.3, "chi2 {chi2} over 7 degrees of freedom"); // p = 0.001
            let same = t.windows(2).filter(|w| w[0].leaf == w[1].leaf).count();
            assert!(same < 10, "{same} repeats of the previous leaf");
        }
    }

    #[test]
    fn oram_lookup_equals_the_plain_lookup_bit_for_bit() {
        let dim = 3;
        let data: Vec<f32> = (0..5000 * dim).map(|k| (k as f32 * 0.11).cos()).collect();
        let view = TableView { data: f32_bytes(&data), num_rows: 5000, dim, dtype: DType::Fp32, huge_pages: false };
        let mut ot = OramTable::new(view, 1).unwrap();
        ot.record(true);
        let ids: Vec<i64> = vec![4999, 0, 7, 7, 2500, 13];
        let lengths: Vec<i64> = vec![3, 0, 3];
        for mode in [Mode::Sum, Mode::Mean, Mode::Max] {
            let offs = bag_offsets(Bags::Lengths(&lengths), ids.len()).unwrap();
            let mut a = vec![0f32; 3 * dim];
            let mut b = vec![1f32; 3 * dim];
            lookup(view, &ids, Bags::Lengths(&lengths), None, mode, None, &mut a).unwrap();
            ot.lookup(&ids, offs, None, mode, &mut b).unwrap();
            assert_eq!(a, b);
        }
        // 5,000 rows: a map ORAM, so two paths a lookup.
        assert_eq!(ot.take_trace().len(), 3 * 2 * ids.len());
        assert!(ot.take_trace().is_empty());
    }
}
