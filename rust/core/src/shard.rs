//! Sharded lookup: tables split over shards, each batch routed to the pieces that hold its
//! rows, pooled piece by piece, and merged into the output the unsharded lookup gives.
//!
//! A table is split one of five ways ([`Split`]): whole on one shard (table-wise); contiguous
//! row ranges on several shards (row-wise, and table-row-wise, which is row-wise within one
//! group of shards); column ranges (column-wise); or whole on several shards, each serving a
//! share of the batch's bags (replicated). Row-wise pieces pool partial bags (sums for sum and
//! mean, maxima for max) that the merge adds (mean divides by the whole bag's length) or takes
//! the maximum of; the other splits write their own output cells.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

use crate::error::{Error, IndexError, Result};
use crate::kernel::{Index, Mode, Out};
use crate::lookup::{make_job, run_outs};
use crate::table::Table;

/// How one table is split over shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The whole table on one shard.
    Table,
    /// Contiguous row ranges on several shards.
    Row,
    /// Contiguous column ranges on several shards.
    Column,
    /// Row ranges on the shards of one group (TorchRec's table-row-wise, a host's ranks).
    TableRow,
    /// The whole table on several shards, each pooling a contiguous share of the bags.
    Replicated,
}

impl Split {
    pub fn parse(name: &str) -> Result<Split> {
        Ok(match name {
            "table" => Split::Table,
            "row" => Split::Row,
            "column" => Split::Column,
            "table_row" => Split::TableRow,
            "replicated" => Split::Replicated,
            _ => {
                return Err(Error::value(format!(
                    "unknown split {name:?}; expected \"table\", \"row\", \"column\", \"table_row\" or \"replicated\""
                )))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Split::Table => "table",
            Split::Row => "row",
            Split::Column => "column",
            Split::TableRow => "table_row",
            Split::Replicated => "replicated",
        }
    }

    fn by_rows(self) -> bool {
        matches!(self, Split::Row | Split::TableRow)
    }
}

/// A part of one table held by one shard: rows `rows` and columns `cols`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub shard: usize,
    pub rows: Range<usize>,
    pub cols: Range<usize>,
}

/// How one table is split, and its pieces (row-wise pieces in row order, column-wise ones in
/// column order).
#[derive(Debug, Clone)]
pub struct TablePlan {
    pub split: Split,
    pub pieces: Vec<Piece>,
}

/// Where every table's pieces live.
#[derive(Debug, Clone)]
pub struct Plan {
    pub num_shards: usize,
    pub tables: Vec<TablePlan>,
}

impl Plan {
    /// Check the plan against the tables' `(rows, dim)`: every shard id exists, and every
    /// table's pieces cover it exactly as its split says (pieces are put in row or column
    /// order).
    pub fn check(mut self, shapes: &[(usize, usize)]) -> Result<Plan> {
        if self.num_shards == 0 {
            return Err(Error::value("a plan needs at least one shard"));
        }
        if self.tables.len() != shapes.len() {
            return Err(Error::value(format!(
                "the plan places {} tables but there are {}",
                self.tables.len(),
                shapes.len()
            )));
        }
        for (t, (tp, &(rows, dim))) in self.tables.iter_mut().zip(shapes).enumerate() {
            let whole = |p: &Piece| p.rows == (0..rows) && p.cols == (0..dim);
            if tp.pieces.is_empty() {
                return Err(Error::value(format!("table {t} has no pieces")));
            }
            if let Some(p) = tp.pieces.iter().find(|p| p.shard >= self.num_shards) {
                return Err(Error::value(format!(
                    "table {t} has a piece on shard {} of {}",
                    p.shard, self.num_shards
                )));
            }
            match tp.split {
                Split::Table => {
                    if tp.pieces.len() != 1 || !whole(&tp.pieces[0]) {
                        return Err(Error::value(format!(
                            "table {t} is split by table: it needs one piece of all {rows} rows and {dim} columns"
                        )));
                    }
                }
                Split::Replicated => {
                    if let Some(p) = tp.pieces.iter().find(|p| !whole(p)) {
                        return Err(Error::value(format!(
                            "table {t} is replicated: every piece must hold all of it, but one holds rows {:?}, columns {:?}",
                            p.rows, p.cols
                        )));
                    }
                    let mut shards: Vec<usize> = tp.pieces.iter().map(|p| p.shard).collect();
                    shards.sort_unstable();
                    shards.dedup();
                    if shards.len() != tp.pieces.len() {
                        return Err(Error::value(format!("table {t} is replicated twice on one shard")));
                    }
                }
                Split::Row | Split::TableRow => {
                    tp.pieces.sort_by_key(|p| p.rows.start);
                    if let Some(p) = tp.pieces.iter().find(|p| p.cols != (0..dim)) {
                        return Err(Error::value(format!(
                            "table {t} is split by rows: every piece needs all {dim} columns, one has {:?}",
                            p.cols
                        )));
                    }
                    cover(t, "rows", tp.pieces.iter().map(|p| p.rows.clone()), rows)?;
                }
                Split::Column => {
                    tp.pieces.sort_by_key(|p| p.cols.start);
                    if let Some(p) = tp.pieces.iter().find(|p| p.rows != (0..rows)) {
                        return Err(Error::value(format!(
                            "table {t} is split by columns: every piece needs all {rows} rows, one has {:?}",
                            p.rows
                        )));
                    }
                    cover(t, "columns", tp.pieces.iter().map(|p| p.cols.clone()), dim)?;
                }
            }
        }
        Ok(self)
    }
}

/// Check that sorted `ranges` tile `0..n` with non-empty ranges.
fn cover(t: usize, what: &str, ranges: impl Iterator<Item = Range<usize>>, n: usize) -> Result<()> {
    let mut next = 0;
    for r in ranges {
        if r.start > next {
            return Err(Error::value(format!("table {t} leaves {what} {next}..{} on no shard", r.start)));
        }
        if r.start < next || r.is_empty() {
            return Err(Error::value(format!(
                "table {t} has {what} {r:?}, which overlaps another piece or is empty"
            )));
        }
        next = r.end;
    }
    if next != n {
        return Err(Error::value(format!(
            "table {t} leaves {what} {next}..{n} on no shard (it has {n})"
        )));
    }
    Ok(())
}

/// One piece's share of one table's lookup: pool `indices` (local to the piece) in bags
/// `offsets` with `mode`, giving output rows `bags` of the piece's columns.
pub struct Sub<'a, I: Clone> {
    pub table: usize,
    pub piece: usize,
    pub indices: Cow<'a, [I]>,
    pub offsets: Vec<usize>,
    pub weights: Option<Cow<'a, [f32]>>,
    pub mode: Mode,
    pub bags: Range<usize>,
}

/// The error the unsharded lookup reports for the first out-of-range index of table `t`.
fn first_bad<I: Index>(t: usize, indices: &[I], offsets: &[usize], num_rows: usize) -> Option<Error> {
    let n = num_rows as u64;
    let position = indices.iter().position(|i| i.to_u64() >= n)?;
    let bag = offsets[1..].partition_point(|&o| o <= position);
    Some(Error::IndexOutOfRange(IndexError {
        index: indices[position].to_i64(),
        position,
        bag,
        num_rows,
        table: Some(t),
    }))
}

/// Route table `t`'s lookup (`indices` in bags `offsets`, `B + 1` boundaries, checked) to the
/// pieces of `plan` (a table of a [`Plan::check`]ed plan): one [`Sub`] per piece with lookups to pool (pieces that receive none
/// are left out; their output cells stay zero). Indices are checked against the table's
/// `num_rows` here, so errors name the same index, position and bag as unsharded.
#[allow(clippy::too_many_arguments)]
pub fn route<'a, I: Index>(
    plan: &TablePlan,
    t: usize,
    num_rows: usize,
    indices: &'a [I],
    offsets: &[usize],
    weights: Option<&'a [f32]>,
    mode: Mode,
) -> Result<Vec<Sub<'a, I>>> {
    if let Some(e) = first_bad(t, indices, offsets, num_rows) {
        return Err(e);
    }
    if let Some(w) = weights {
        if mode != Mode::Sum {
            return Err(Error::value("per-sample weights are only supported with mode=\"sum\""));
        }
        if w.len() != indices.len() {
            return Err(Error::value(format!(
                "weights has {} entries but there are {} indices",
                w.len(),
                indices.len()
            )));
        }
    }
    let batch = offsets.len() - 1;
    let mut subs = Vec::with_capacity(plan.pieces.len());
    match plan.split {
        Split::Table | Split::Column => {
            if !indices.is_empty() {
                for p in 0..plan.pieces.len() {
                    subs.push(Sub {
                        table: t,
                        piece: p,
                        indices: Cow::Borrowed(indices),
                        offsets: offsets.to_vec(),
                        weights: weights.map(Cow::Borrowed),
                        mode,
                        bags: 0..batch,
                    });
                }
            }
        }
        Split::Replicated => {
            let n = plan.pieces.len();
            for p in 0..n {
                let bags = batch * p / n..batch * (p + 1) / n;
                let (lo, hi) = (offsets[bags.start], offsets[bags.end]);
                if hi > lo {
                    subs.push(Sub {
                        table: t,
                        piece: p,
                        indices: Cow::Borrowed(&indices[lo..hi]),
                        offsets: offsets[bags.start..=bags.end].iter().map(|o| o - lo).collect(),
                        weights: weights.map(|w| Cow::Borrowed(&w[lo..hi])),
                        mode,
                        bags,
                    });
                }
            }
        }
        Split::Row | Split::TableRow => {
            let starts: Vec<u64> = plan.pieces.iter().map(|p| p.rows.start as u64).collect();
            let n = starts.len();
            // Which piece each lookup goes to, and how many each piece gets per bag.
            let owner: Vec<u32> = indices
                .iter()
                .map(|i| (starts.partition_point(|&s| s <= i.to_u64()) - 1) as u32)
                .collect();
            let mut counts = vec![0usize; n * batch];
            for b in 0..batch {
                for &p in &owner[offsets[b]..offsets[b + 1]] {
                    counts[p as usize * batch + b] += 1;
                }
            }
            // Sums and maxima of parts; mean is the whole bag's sum over its length (merge).
            let part_mode = if mode == Mode::Max { Mode::Max } else { Mode::Sum };
            for (p, piece) in plan.pieces.iter().enumerate() {
                let c = &counts[p * batch..(p + 1) * batch];
                let total: usize = c.iter().sum();
                if total == 0 {
                    continue;
                }
                let mut offs = Vec::with_capacity(batch + 1);
                offs.push(0);
                let mut acc = 0;
                for &k in c {
                    acc += k;
                    offs.push(acc);
                }
                let first = piece.rows.start as i64;
                let mut local = Vec::with_capacity(total);
                let mut w = weights.map(|_| Vec::with_capacity(total));
                for (j, &o) in owner.iter().enumerate() {
                    if o as usize == p {
                        local.push(I::from_i64(indices[j].to_i64() - first));
                        if let (Some(w), Some(src)) = (w.as_mut(), weights) {
                            w.push(src[j]);
                        }
                    }
                }
                subs.push(Sub {
                    table: t,
                    piece: p,
                    indices: Cow::Owned(local),
                    offsets: offs,
                    weights: w.map(Cow::Owned),
                    mode: part_mode,
                    bags: 0..batch,
                });
            }
        }
    }
    Ok(subs)
}

/// Route a whole batch: one request per table, every table with the same batch (checked),
/// each routed by [`route`]. Returns the batch and every piece's share.
pub fn route_all<'a, I: Index>(
    plan: &Plan,
    shapes: &[(usize, usize)],
    requests: &[Request<'a, I>],
    mode: Mode,
) -> Result<(usize, Vec<Sub<'a, I>>)> {
    if requests.len() != shapes.len() {
        return Err(Error::value(format!("{} index arrays for {} tables", requests.len(), shapes.len())));
    }
    let batch = requests.first().map_or(0, |r| r.offsets.len() - 1);
    if let Some(t) = requests.iter().position(|r| r.offsets.len() - 1 != batch) {
        return Err(Error::value(format!(
            "table {t} has {} bags but table 0 has {batch}; every table needs the same batch",
            requests[t].offsets.len() - 1
        )));
    }
    let mut subs = Vec::new();
    for (t, r) in requests.iter().enumerate() {
        subs.extend(route(&plan.tables[t], t, shapes[t].0, r.indices, &r.offsets, r.weights, mode)?);
    }
    Ok((batch, subs))
}

/// One piece's pooled share of a batch, as a shard sends it back: `block` holds `bags.len()`
/// rows of the piece's columns, pooled from the share's own bag `offsets`.
pub struct Share<'b> {
    pub table: usize,
    pub piece: usize,
    pub bags: Range<usize>,
    pub offsets: &'b [usize],
    pub block: &'b [f32],
}

/// The pooled output `[batch, sum(dims)]` of a routed batch from every share: row-wise
/// pieces folded by [`merge_rows`] (the whole bags' `offsets` per table), the others placed.
pub fn merge(plan: &Plan, dims: &[usize], mode: Mode, offsets: &[Vec<usize>], batch: usize, shares: &[Share<'_>]) -> Result<Vec<f32>> {
    let layout = Layout::new(dims);
    let mut out = crate::mem::filled(batch.saturating_mul(layout.stride), 0f32, "the pooled output")?;
    for (t, tp) in plan.tables.iter().enumerate() {
        let mine = shares.iter().filter(|s| s.table == t);
        if tp.split.by_rows() {
            let parts: Vec<(&[usize], &[f32])> = mine.map(|s| (s.offsets, s.block)).collect();
            merge_rows(&layout, t, dims[t], mode, &offsets[t], &parts, &mut out);
        } else {
            for s in mine {
                place(tp, &layout, t, s.piece, &s.bags, s.block, &mut out);
            }
        }
    }
    Ok(out)
}

/// Output layout of a sharded lookup: table `t`'s columns start at `columns[t]` of rows
/// `stride` floats wide.
pub struct Layout {
    pub columns: Vec<usize>,
    pub stride: usize,
}

impl Layout {
    pub fn new(dims: &[usize]) -> Layout {
        let mut columns = Vec::with_capacity(dims.len());
        let mut c = 0;
        for &d in dims {
            columns.push(c);
            c += d;
        }
        Layout { columns, stride: c }
    }
}

/// Where a sub-request's pooled rows go: straight into the output, or into a partial block
/// that [`merge_rows`] folds in.
fn writes_directly(split: Split) -> bool {
    !split.by_rows()
}

/// Copy a sub-request's pooled block (`bags.len()` rows of the piece's width) into `out`.
pub fn place(plan: &TablePlan, layout: &Layout, t: usize, piece: usize, bags: &Range<usize>, block: &[f32], out: &mut [f32]) {
    let cols = &plan.pieces[piece].cols;
    let width = cols.len();
    let start = layout.columns[t] + cols.start;
    for (k, b) in bags.clone().enumerate() {
        out[b * layout.stride + start..b * layout.stride + start + width].copy_from_slice(&block[k * width..(k + 1) * width]);
    }
}

/// Fold the row-wise partial blocks of table `t` into `out`: add them (and divide by each
/// bag's length for mean), or take the maximum over the pieces that had lookups in the bag
/// (max). `parts` are `(sub offsets, block [B, dim])` pairs; `offsets` the whole bags'.
pub fn merge_rows(layout: &Layout, t: usize, dim: usize, mode: Mode, offsets: &[usize], parts: &[(&[usize], &[f32])], out: &mut [f32]) {
    let batch = offsets.len() - 1;
    let c0 = layout.columns[t];
    for b in 0..batch {
        let row = &mut out[b * layout.stride + c0..b * layout.stride + c0 + dim];
        let mut seen = false;
        for (offs, block) in parts {
            if offs[b + 1] == offs[b] {
                continue; // no lookups of this bag in this piece
            }
            let part = &block[b * dim..(b + 1) * dim];
            match (mode, seen) {
                (Mode::Max, true) => row.iter_mut().zip(part).for_each(|(o, &x)| if x > *o { *o = x }),
                (Mode::Max, false) => row.copy_from_slice(part),
                (_, false) => row.copy_from_slice(part),
                (_, true) => row.iter_mut().zip(part).for_each(|(o, &x)| *o += x),
            }
            seen = true;
        }
        let len = offsets[b + 1] - offsets[b];
        if mode == Mode::Mean && len > 0 {
            let inv = 1.0 / len as f32;
            row.iter_mut().for_each(|o| *o *= inv);
        }
    }
}

/// Tables split by a [`Plan`], each piece an owned table of its rows and columns.
pub struct ShardedCollection {
    plan: Plan,
    shapes: Vec<(usize, usize)>,
    pieces: Vec<Vec<Arc<Table>>>,
    layout: Layout,
}

/// One table's request: indices, `B + 1` bag boundaries (checked), optional weights.
pub struct Request<'a, I> {
    pub indices: &'a [I],
    pub offsets: Vec<usize>,
    pub weights: Option<&'a [f32]>,
}

impl ShardedCollection {
    /// Split `tables` by `plan` (checked), copying each piece out of its table.
    pub fn new(plan: Plan, tables: &[&Table]) -> Result<ShardedCollection> {
        let shapes: Vec<(usize, usize)> = tables.iter().map(|t| (t.num_rows(), t.dim())).collect();
        let plan = plan.check(&shapes)?;
        let pieces = plan
            .tables
            .iter()
            .zip(tables)
            .map(|(tp, table)| tp.pieces.iter().map(|p| table.slice(p.rows.clone(), p.cols.clone()).map(Arc::new)).collect())
            .collect::<Result<Vec<Vec<Arc<Table>>>>>()?;
        let layout = Layout::new(&shapes.iter().map(|s| s.1).collect::<Vec<_>>());
        Ok(ShardedCollection { plan, shapes, pieces, layout })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn piece(&self, t: usize, p: usize) -> &Arc<Table> {
        &self.pieces[t][p]
    }

    pub fn dims(&self) -> Vec<usize> {
        self.shapes.iter().map(|s| s.1).collect()
    }

    /// Pool every table for the same batch, as the unsharded collection lookup does, into a
    /// new `[B, sum(dims)]` array (row-major). All pieces' shares run together on the pool.
    pub fn lookup<I: Index>(&self, requests: &[Request<'_, I>], mode: Mode) -> Result<Vec<f32>> {
        let (batch, subs) = route_all(&self.plan, &self.shapes, requests, mode)?;
        let stride = self.layout.stride;
        let mut out = crate::mem::filled(batch.saturating_mul(stride), 0f32, "the pooled output")?;
        // Row-wise shares pool into partial blocks of their own, merged below.
        let mut partial: Vec<Vec<f32>> = subs
            .iter()
            .map(|s| {
                let split = self.plan.tables[s.table].split;
                let len = if writes_directly(split) { 0 } else { batch.saturating_mul(self.shapes[s.table].1) };
                crate::mem::filled(len, 0f32, "a row-wise share's partial output")
            })
            .collect::<Result<_>>()?;
        let base = out.as_mut_ptr();
        let outs: Vec<Out> = subs
            .iter()
            .zip(partial.iter_mut())
            .map(|(s, block)| {
                let piece = &self.plan.tables[s.table].pieces[s.piece];
                if block.is_empty() {
                    let col = self.layout.columns[s.table] + piece.cols.start;
                    Out { ptr: base.wrapping_add(s.bags.start * stride + col), stride }
                } else {
                    Out { ptr: block.as_mut_ptr(), stride: self.shapes[s.table].1 }
                }
            })
            .collect();
        let jobs = subs
            .iter()
            .map(|s| {
                make_job(
                    self.pieces[s.table][s.piece].view()?,
                    &s.indices,
                    s.offsets.clone(),
                    s.weights.as_deref(),
                    s.mode,
                    None,
                    Some(s.table),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        // SAFETY: a direct share writes rows `bags` of its piece's columns of its table's
        // output columns: table-wise and column-wise pieces of one table cover disjoint
        // columns, replicas disjoint bag ranges, and tables disjoint columns; each of those
        // cells lies inside `out` (`batch` rows of `stride`). A row-wise share writes its own
        // `batch x dim` block. `out` and the blocks outlive the call and are not otherwise
        // touched during it.
        unsafe { run_outs(&jobs, &outs)? };
        drop(jobs);
        for (t, r) in requests.iter().enumerate() {
            let tp = &self.plan.tables[t];
            if tp.split.by_rows() {
                let parts: Vec<(&[usize], &[f32])> = subs
                    .iter()
                    .zip(&partial)
                    .filter(|(s, _)| s.table == t)
                    .map(|(s, b)| (s.offsets.as_slice(), b.as_slice()))
                    .collect();
                merge_rows(&self.layout, t, self.shapes[t].1, mode, &r.offsets, &parts, &mut out);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::lookup::{make_job, run};

    fn piece(shard: usize, rows: Range<usize>, cols: Range<usize>) -> Piece {
        Piece { shard, rows, cols }
    }

    fn unsharded(tables: &[&Table], reqs: &[Request<'_, i64>], mode: Mode) -> Vec<f32> {
        let dims: Vec<usize> = tables.iter().map(|t| t.dim()).collect();
        let layout = Layout::new(&dims);
        let batch = reqs[0].offsets.len() - 1;
        let jobs: Vec<_> = tables
            .iter()
            .zip(reqs)
            .enumerate()
            .map(|(t, (tab, r))| make_job(tab.view().unwrap(), r.indices, r.offsets.clone(), r.weights, mode, None, Some(t)).unwrap())
            .collect();
        let mut out = vec![0f32; batch * layout.stride];
        run(&jobs, &layout.columns, &mut out, layout.stride).unwrap();
        out
    }

    #[test]
    fn every_split_equals_the_unsharded_lookup() {
        let a = Table::random(10, 6, DType::Fp32, 1).unwrap();
        let b = Table::random(7, 5, DType::Int4, 2).unwrap();
        let plan = Plan {
            num_shards: 3,
            tables: vec![
                TablePlan { split: Split::Row, pieces: vec![piece(2, 6..10, 0..6), piece(0, 0..3, 0..6), piece(1, 3..6, 0..6)] },
                TablePlan { split: Split::Column, pieces: vec![piece(0, 0..7, 0..3), piece(1, 0..7, 3..5)] },
            ],
        };
        let ia: Vec<i64> = vec![0, 9, 3, 4, 7, 2, 2];
        let ib: Vec<i64> = vec![6, 0, 1, 3, 5, 2, 4, 4];
        for mode in [Mode::Sum, Mode::Mean, Mode::Max] {
            let reqs = [
                Request { indices: &ia, offsets: vec![0, 3, 3, 7], weights: None },
                Request { indices: &ib, offsets: vec![0, 1, 5, 8], weights: None },
            ];
            let sharded = ShardedCollection::new(plan.clone(), &[&a, &b]).unwrap();
            let got = sharded.lookup(&reqs, mode).unwrap();
            let want = unsharded(&[&a, &b], &reqs, mode);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-5, "{mode:?}: {got:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn bad_plans_are_refused() {
        let shapes = [(10, 4)];
        let rows = |pieces| Plan { num_shards: 2, tables: vec![TablePlan { split: Split::Row, pieces }] };
        let err = rows(vec![piece(0, 0..4, 0..4), piece(1, 5..10, 0..4)]).check(&shapes).unwrap_err();
        assert!(err.to_string().contains("leaves rows 4..5 on no shard"), "{err}");
        let err = rows(vec![piece(0, 0..6, 0..4), piece(1, 5..10, 0..4)]).check(&shapes).unwrap_err();
        assert!(err.to_string().contains("overlaps"), "{err}");
        let err = rows(vec![piece(0, 0..4, 0..4), piece(3, 4..10, 0..4)]).check(&shapes).unwrap_err();
        assert!(err.to_string().contains("shard 3 of 2"), "{err}");
        let zero = Plan { num_shards: 0, tables: vec![] };
        assert!(zero.check(&[]).is_err());
    }

    #[test]
    fn slicing_keeps_every_value() {
        for dtype in [DType::Fp32, DType::Fp16, DType::Bf16, DType::Int8, DType::Int4] {
            let t = Table::random(9, 7, dtype, 5).unwrap();
            let s = t.slice(2..8, 1..6).unwrap();
            let (mut full, mut part) = (vec![0f32; 9 * 7], vec![0f32; 6 * 5]);
            t.to_f32(&mut full).unwrap();
            s.to_f32(&mut part).unwrap();
            for r in 0..6 {
                for c in 0..5 {
                    assert_eq!(part[r * 5 + c], full[(r + 2) * 7 + c + 1], "{dtype:?}");
                }
            }
        }
    }
}
