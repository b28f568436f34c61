//! The order in which torch's CPU `sort` leaves equal keys, for the float16 and bfloat16
//! backward (see [`crate::backward::Plan::accumulate_as`]).
//!
//! torch's CPU backward of EmbeddingBag sorts the lookups by row with an *unstable* sort and
//! then adds each row's lookups in the order the sort left them; in float16 and bfloat16,
//! where every addition rounds, that order decides the gradient's last bits. Below 32768
//! indices torch's sort is libstdc++'s `std::sort` (introsort: median-of-three quicksort down
//! to runs of 16, heapsort past a depth of `2 log2 n`, then one insertion sort), which this
//! module follows step for step; from 32768 it is FBGEMM's radix sort, which is stable.

/// From this many indices torch sorts with a stable radix sort (its parallel grain size).
pub const TORCH_RADIX_SORT_MIN: usize = 32768;

/// Runs below this length are left to the final insertion sort (libstdc++'s `_S_threshold`).
const THRESHOLD: usize = 16;

/// The positions `0..keys.len()` in the order torch's `keys.sort()` returns as its indices:
/// ascending by key, with equal keys in `std::sort`'s order (below [`TORCH_RADIX_SORT_MIN`])
/// or in position order (from it, as the radix sort).
pub fn torch_sort_order(keys: &[u64]) -> Vec<u32> {
    let mut a: Vec<(u64, u32)> = keys.iter().enumerate().map(|(p, &k)| (k, p as u32)).collect();
    if keys.len() >= TORCH_RADIX_SORT_MIN {
        a.sort_by_key(|&(k, _)| k); // stable, as the radix sort
    } else {
        std_sort(&mut a);
    }
    a.into_iter().map(|(_, p)| p).collect()
}

/// libstdc++'s `std::sort`, comparing keys only.
fn std_sort(a: &mut [(u64, u32)]) {
    let n = a.len();
    if n == 0 {
        return;
    }
    introsort_loop(a, 0, n, 2 * n.ilog2() as usize);
    if n > THRESHOLD {
        insertion_sort(a, 0, THRESHOLD);
        for i in THRESHOLD..n {
            unguarded_linear_insert(a, i);
        }
    } else {
        insertion_sort(a, 0, n);
    }
}

#[inline]
fn less(x: (u64, u32), y: (u64, u32)) -> bool {
    x.0 < y.0
}

fn introsort_loop(a: &mut [(u64, u32)], first: usize, mut last: usize, mut depth: usize) {
    while last - first > THRESHOLD {
        if depth == 0 {
            heap_select(a, first, last);
            sort_heap(a, first, last);
            return;
        }
        depth -= 1;
        let mid = first + (last - first) / 2;
        move_median_to_first(a, first, first + 1, mid, last - 1);
        let cut = unguarded_partition(a, first + 1, last, first);
        introsort_loop(a, cut, last, depth);
        last = cut;
    }
}

fn move_median_to_first(a: &mut [(u64, u32)], result: usize, x: usize, y: usize, z: usize) {
    let (ax, ay, az) = (a[x], a[y], a[z]);
    let median = if less(ax, ay) {
        if less(ay, az) {
            y
        } else if less(ax, az) {
            z
        } else {
            x
        }
    } else if less(ax, az) {
        x
    } else if less(ay, az) {
        z
    } else {
        y
    };
    a.swap(result, median);
}

fn unguarded_partition(a: &mut [(u64, u32)], mut first: usize, mut last: usize, pivot: usize) -> usize {
    loop {
        while less(a[first], a[pivot]) {
            first += 1;
        }
        last -= 1;
        while less(a[pivot], a[last]) {
            last -= 1;
        }
        if first >= last {
            return first;
        }
        a.swap(first, last);
        first += 1;
    }
}

fn insertion_sort(a: &mut [(u64, u32)], first: usize, last: usize) {
    for i in first + 1..last {
        if less(a[i], a[first]) {
            a[first..=i].rotate_right(1);
        } else {
            unguarded_linear_insert(a, i);
        }
    }
}

fn unguarded_linear_insert(a: &mut [(u64, u32)], mut last: usize) {
    let val = a[last];
    while less(val, a[last - 1]) {
        a[last] = a[last - 1];
        last -= 1;
    }
    a[last] = val;
}

/// `std::__adjust_heap` on the heap `a[first..first + len]`: sift the hole at `hole` down to
/// a leaf, then push `value` up from there.
fn adjust_heap(a: &mut [(u64, u32)], first: usize, mut hole: usize, len: usize, value: (u64, u32)) {
    let top = hole;
    let mut child = hole;
    while len >= 2 && child < (len - 1) / 2 {
        child = 2 * (child + 1);
        if less(a[first + child], a[first + child - 1]) {
            child -= 1;
        }
        a[first + hole] = a[first + child];
        hole = child;
    }
    if len.is_multiple_of(2) && len >= 2 && child == (len - 2) / 2 {
        child = 2 * (child + 1);
        a[first + hole] = a[first + child - 1];
        hole = child - 1;
    }
    while hole > top {
        let parent = (hole - 1) / 2;
        if !less(a[first + parent], value) {
            break;
        }
        a[first + hole] = a[first + parent];
        hole = parent;
    }
    a[first + hole] = value;
}

fn make_heap(a: &mut [(u64, u32)], first: usize, last: usize) {
    let len = last - first;
    if len < 2 {
        return;
    }
    let mut parent = (len - 2) / 2;
    loop {
        adjust_heap(a, first, parent, len, a[first + parent]);
        if parent == 0 {
            return;
        }
        parent -= 1;
    }
}

/// `std::__heap_select` with `middle == last`: the whole range made a heap.
fn heap_select(a: &mut [(u64, u32)], first: usize, last: usize) {
    make_heap(a, first, last);
}

fn sort_heap(a: &mut [(u64, u32)], first: usize, mut last: usize) {
    while last - first > 1 {
        last -= 1;
        let value = a[last];
        a[last] = a[first];
        adjust_heap(a, first, 0, last - first, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted_by_key(keys: &[u64], order: &[u32]) -> bool {
        let mut seen = vec![false; keys.len()];
        for &p in order {
            if std::mem::replace(&mut seen[p as usize], true) {
                return false;
            }
        }
        order.windows(2).all(|w| keys[w[0] as usize] <= keys[w[1] as usize])
    }

    #[test]
    fn sorts_every_size_and_heapsorts_past_the_depth_limit() {
        let mut state = 12345u64;
        for n in [0usize, 1, 2, 15, 16, 17, 33, 100, 1000, 5000] {
            for distinct in [1u64, 3, 50, 1 << 20] {
                let keys: Vec<u64> = (0..n)
                    .map(|_| {
                        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        (state >> 33) % distinct
                    })
                    .collect();
                assert!(sorted_by_key(&keys, &torch_sort_order(&keys)), "n {n} distinct {distinct}");
            }
        }
        // Depth 0 from the start: the heapsort path alone must sort too.
        let keys: Vec<u64> = (0..200u64).map(|k| (k * 7919) % 61).collect();
        let mut a: Vec<(u64, u32)> = keys.iter().enumerate().map(|(p, &k)| (k, p as u32)).collect();
        introsort_loop(&mut a, 0, 200, 0);
        assert!(a.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn known_orders_of_equal_keys() {
        // Orders torch 2.15 returns for `torch.tensor(keys).sort()` (indices).
        let keys = [2u64, 0, 1, 0, 2, 0, 1, 1, 2, 0, 1, 2, 2, 1, 1, 2, 1, 2, 1, 0];
        assert_eq!(
            torch_sort_order(&keys),
            vec![1, 19, 9, 5, 3, 6, 7, 2, 10, 13, 14, 16, 18, 4, 8, 11, 12, 15, 17, 0]
        );
        let big: Vec<u64> = vec![0; TORCH_RADIX_SORT_MIN];
        assert_eq!(torch_sort_order(&big), (0..TORCH_RADIX_SORT_MIN as u32).collect::<Vec<_>>());
    }
}
