//! Where the core's parallel loops run: on torch's OpenMP team when torch is loaded in the
//! process ([`crate::openmp`]), else on the core's own pool, a rayon pool of a settable size,
//! safe in forked children.
//!
//! The thread count is the one set by [`set_num_threads`] or `RECENGINE_NUM_THREADS`; without
//! either it is torch's (`omp_get_max_threads` of the calling thread) while the loops run on
//! torch's team, else one per core this process may run on.
//!
//! The own pool is created on first use and re-created when the count changes. A forked child (a
//! DataLoader-style worker) inherits the parent's pool object but none of its threads; the
//! pool records the pid that built it, and a process that finds a pool of another pid leaks
//! that husk (dropping it could wait on locks held by threads that do not exist) and builds
//! its own. The pool is reached through a lock-free `ArcSwap`, so no lock can be inherited
//! held across `fork`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rayon::ThreadPool;

use crate::error::{Error, Result};
use crate::openmp::{self, Team};

struct PoolState {
    pid: u32,
    threads: usize,
    pool: ThreadPool,
}

static POOL: ArcSwapOption<PoolState> = ArcSwapOption::const_empty();
/// The thread count set by [`set_num_threads`] or `RECENGINE_NUM_THREADS`; 0 means "not read
/// yet", `usize::MAX` "not set".
static THREADS: AtomicUsize = AtomicUsize::new(0);

/// The count set by [`set_num_threads`] or the environment, if any.
fn chosen_threads() -> Option<usize> {
    let n = match THREADS.load(Ordering::Relaxed) {
        0 => {
            let env = std::env::var("RECENGINE_NUM_THREADS")
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .filter(|&n| n > 0)
                .map_or(usize::MAX, |n| n.min(max_threads()));
            // Another thread may have set a count meanwhile; keep theirs.
            let _ = THREADS.compare_exchange(0, env, Ordering::Relaxed, Ordering::Relaxed);
            THREADS.load(Ordering::Relaxed)
        }
        n => n,
    };
    (n != usize::MAX).then_some(n)
}

/// The cores this process may run on, read once (`available_parallelism` reads the cgroup's
/// CPU quota files: tens of microseconds, more than a small lookup).
fn cores() -> usize {
    static CORES: AtomicUsize = AtomicUsize::new(0);
    match CORES.load(Ordering::Relaxed) {
        0 => {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            CORES.store(n, Ordering::Relaxed);
            n
        }
        n => n,
    }
}

fn threads_for(team: Option<&Team>) -> usize {
    chosen_threads().unwrap_or_else(|| match team {
        Some(team) => team.max_threads(),
        None => cores(),
    })
}

/// The thread count a parallel call made now from this thread uses.
pub fn num_threads() -> usize {
    threads_for(openmp::team().as_deref())
}

/// Where a parallel call made now runs: `"torch"` (torch's OpenMP team) or `"own"`.
pub fn pool_in_use() -> &'static str {
    if openmp::team().is_some() {
        "torch"
    } else {
        "own"
    }
}

/// Threads per core a count may ask for at most: more only adds switching (and thousands of
/// threads on a few cores made a lookup take minutes).
pub const MAX_THREADS_PER_CORE: usize = 4;

/// The largest thread count: [`MAX_THREADS_PER_CORE`] per core this process may run on.
pub fn max_threads() -> usize {
    MAX_THREADS_PER_CORE * cores()
}

/// Set the thread count: 1 to [`max_threads`]. The pool is rebuilt at its next use.
/// (`RECENGINE_NUM_THREADS` above the maximum is taken as the maximum.)
pub fn set_num_threads(n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::value("the thread count must be at least 1"));
    }
    let most = max_threads();
    if n > most {
        return Err(Error::value(format!(
            "{n} threads is more than {MAX_THREADS_PER_CORE} per core of the {} this process may \
             run on (at most {most})",
            cores()
        )));
    }
    THREADS.store(n, Ordering::Relaxed);
    Ok(())
}

/// Run `task(k, chunk)` for each `chunk_len`-long chunk `k` of `data` (the last may be
/// shorter) on the core's threads, as [`for_each_index`] does.
pub fn for_each_chunk<T: Send>(
    data: &mut [T],
    chunk_len: usize,
    task: &(dyn Fn(usize, &mut [T]) -> Result<()> + Sync),
) -> Result<()> {
    let chunks: Vec<std::sync::Mutex<&mut [T]>> = data.chunks_mut(chunk_len.max(1)).map(std::sync::Mutex::new).collect();
    for_each_index(chunks.len(), usize::MAX, &|k| {
        // Each chunk is claimed by exactly one item: the lock is never contended.
        let mut chunk = chunks[k].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        task(k, &mut chunk)
    })
}

/// Below this many keys [`sort`] runs on the calling thread.
const PARALLEL_SORT_LEN: usize = 1 << 16;

/// Sort `keys` ascending on the core's threads (a sample sort: splitters from a sorted sample,
/// each chunk of the input counted and then scattered into its buckets' places, each bucket
/// sorted by one thread). The result is the sorted sequence whatever the thread count.
pub fn sort(keys: &mut Vec<u64>) -> Result<()> {
    let n = keys.len();
    let threads = num_threads();
    if threads <= 1 || n < PARALLEL_SORT_LEN {
        keys.sort_unstable();
        return Ok(());
    }
    let buckets = threads * 4;
    let mut sample: Vec<u64> = keys.iter().step_by((n / (buckets * 32)).max(1)).copied().collect();
    sample.sort_unstable();
    let splitters: Vec<u64> = (1..buckets).map(|b| sample[b * sample.len() / buckets]).collect();
    let bucket = |k: u64| splitters.partition_point(|&s| s <= k);
    let chunk_len = n.div_ceil(threads * 4);
    let chunks: Vec<&[u64]> = keys.chunks(chunk_len).collect();
    // 1. How many keys of each chunk fall in each bucket.
    let counts: Vec<std::sync::Mutex<Vec<usize>>> = (0..chunks.len()).map(|_| std::sync::Mutex::new(Vec::new())).collect();
    for_each_index(chunks.len(), usize::MAX, &|c| {
        let mut count = vec![0usize; buckets];
        for &k in chunks[c] {
            count[bucket(k)] += 1;
        }
        *counts[c].lock().unwrap_or_else(std::sync::PoisonError::into_inner) = count;
        Ok(())
    })?;
    let counts: Vec<Vec<usize>> = counts.into_iter().map(|m| m.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner)).collect();
    // 2. The output, bucket-major, cut into one slice per (bucket, chunk), and each chunk's
    // keys scattered into its own slices.
    let mut out = vec![0u64; n];
    {
        let mut slots: Vec<Option<std::sync::Mutex<&mut [u64]>>> = (0..buckets * chunks.len()).map(|_| None).collect();
        let mut rest: &mut [u64] = &mut out;
        for b in 0..buckets {
            for (c, count) in counts.iter().enumerate() {
                let (mine, tail) = rest.split_at_mut(count[b]);
                slots[c * buckets + b] = Some(std::sync::Mutex::new(mine));
                rest = tail;
            }
        }
        for_each_index(chunks.len(), usize::MAX, &|c| {
            let mut guards: Vec<_> = slots[c * buckets..(c + 1) * buckets]
                .iter()
                .map(|s| s.as_ref().expect("every slot is set").lock().unwrap_or_else(std::sync::PoisonError::into_inner))
                .collect();
            let mut filled = vec![0usize; buckets];
            for &k in chunks[c] {
                let b = bucket(k);
                guards[b][filled[b]] = k;
                filled[b] += 1;
            }
            Ok(())
        })?;
    }
    // 3. Each bucket sorted on its own.
    let sizes: Vec<usize> = (0..buckets).map(|b| counts.iter().map(|c| c[b]).sum()).collect();
    let mut rest: &mut [u64] = &mut out;
    let mut parts = Vec::with_capacity(buckets);
    for &size in &sizes {
        let (mine, tail) = rest.split_at_mut(size);
        parts.push(std::sync::Mutex::new(mine));
        rest = tail;
    }
    for_each_index(buckets, usize::MAX, &|b| {
        parts[b].lock().unwrap_or_else(std::sync::PoisonError::into_inner).sort_unstable();
        Ok(())
    })?;
    drop(parts);
    *keys = out;
    Ok(())
}

fn current_pool() -> Result<Arc<PoolState>> {
    let want = threads_for(None);
    let pid = std::process::id();
    if let Some(state) = POOL.load_full() {
        if state.pid == pid && state.threads == want {
            return Ok(state);
        }
    }
    // The thread that calls `for_each_index` works too, so `want - 1` helpers make `want`
    // threads: one more would oversubscribe the cores while helpers linger, and a calling
    // thread that loses its core to a spinning helper waits a whole scheduler time slice.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(want.saturating_sub(1).max(1))
        .thread_name(|i| format!("recengine-{i}"))
        .build()
        .map_err(|e| Error::value(format!("could not start {want} threads: {e}")))?;
    let state = Arc::new(PoolState { pid, threads: want, pool });
    if let Some(old) = POOL.swap(Some(state.clone())) {
        if old.pid != pid {
            // Inherited across fork: its threads do not exist here. Never drop it, and forget
            // its lingering helpers, which do not exist here either.
            std::mem::forget(old);
            LINGERING.store(0, Ordering::Release);
            LATEST.store(None);
        }
    }
    Ok(state)
}

/// How long a helper keeps looking for the next call's work after finishing its items, before
/// it goes back to the pool to sleep: back-to-back calls (a serving loop, one call per table)
/// then find their helpers awake, instead of paying a sleeping thread's wake-up (tens of
/// microseconds, more than a small call's whole work) each time. OpenMP runtimes spin the
/// same way after a parallel region.
const LINGER: std::time::Duration = std::time::Duration::from_micros(100);

/// The latest call with work to share, for lingering helpers to join.
static LATEST: ArcSwapOption<Shared> = ArcSwapOption::const_empty();
/// How many helpers are lingering now.
static LINGERING: AtomicUsize = AtomicUsize::new(0);

/// A call's work items, shared by the calling thread and the pool's helpers.
struct Shared {
    next: AtomicUsize,
    done: AtomicUsize,
    n: usize,
    /// Helpers that joined, and how many the call's work can use (see `join`).
    joined: AtomicUsize,
    max_helpers: usize,
    /// The task, with its lifetime erased; dereferenced only by whoever claimed an item `< n`,
    /// and the caller does not return before every claimed item is done (see `for_each_index`).
    task: *const (dyn Fn(usize) -> Result<()> + Sync),
    error: std::sync::Mutex<Option<Error>>,
}

// SAFETY: `task` points to a `Sync` closure; the other fields are atomics and a mutex.
unsafe impl Send for Shared {}
// SAFETY: as for `Send`.
unsafe impl Sync for Shared {}

impl Shared {
    /// Whether every item has been claimed (a helper joining now would find nothing).
    fn exhausted(&self) -> bool {
        self.next.load(Ordering::Acquire) >= self.n
    }

    /// Take a helper's place in this call, if its work can use one more: a small call that
    /// is worth two threads is not split sixteen ways because sixteen happen to be awake.
    fn join(&self) -> bool {
        self.joined.fetch_add(1, Ordering::AcqRel) < self.max_helpers
    }

    /// A pool thread's task: claim items of `call`, then linger for `LINGER`, joining any
    /// newer call that is published meanwhile, and return to the pool when none comes.
    fn help(mut call: Arc<Shared>) {
        let mut joined = call.join();
        loop {
            if joined {
                call.work();
            }
            LINGERING.fetch_add(1, Ordering::AcqRel);
            let start = std::time::Instant::now();
            let mut next = None;
            let mut spins = 0u32;
            while next.is_none() {
                // A guard, not a clone: spinning must not bounce the call's reference count.
                let latest = LATEST.load();
                if let Some(latest) = latest.as_ref() {
                    if !Arc::ptr_eq(latest, &call) {
                        if !latest.exhausted() && latest.join() {
                            next = Some(Arc::clone(latest));
                            break;
                        }
                        // Full or done: remember it as seen, so it is asked only once.
                        call = Arc::clone(latest);
                    }
                }
                std::hint::spin_loop();
                spins += 1;
                if spins.is_multiple_of(64) && start.elapsed() >= LINGER {
                    break;
                }
            }
            LINGERING.fetch_sub(1, Ordering::AcqRel);
            match next {
                Some(latest) => {
                    call = latest;
                    joined = true;
                }
                None => return,
            }
        }
    }

    /// Claim and run items until none are left.
    fn work(&self) {
        loop {
            let k = self.next.fetch_add(1, Ordering::AcqRel);
            if k >= self.n {
                return;
            }
            // SAFETY: item `k < n` was claimed, so the caller is still inside `for_each_index`
            // (it waits for `done == n`), and the closure `task` points to is alive.
            run_item(unsafe { &*self.task }, k, &self.error);
            self.done.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// Run item `k`, keeping the first error (a panic becomes one: nothing unwinds out of a pool
/// thread or an OpenMP region).
fn run_item(task: &(dyn Fn(usize) -> Result<()> + Sync), k: usize, error: &std::sync::Mutex<Option<Error>>) {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task(k)))
        .unwrap_or_else(|_| Err(Error::value("a worker thread panicked (a bug in recengine)")));
    if let Err(e) = r {
        let mut slot = error.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        slot.get_or_insert(e);
    }
}

/// `for_each_index` on torch's team: up to `workers` of its threads claim items from a shared
/// counter until none are left; the region's end waits for all of them.
///
/// The region always asks for the whole team (torch's size, or the core's count when that is
/// larger), as torch's own `parallel_for` does, and the threads past `workers` return at once:
/// a region of another size makes the runtime re-form its team, and threads left out of one
/// region go back to sleep, so torch's next op (and the core's next call) would wait for them
/// to wake. Measured on 16 cores: a torch MLP right after a core call ran 1.9x slower when the
/// core asked for teams of 2-16 threads by the call's size.
fn on_team(team: &Team, n: usize, threads: usize, workers: usize, task: &(dyn Fn(usize) -> Result<()> + Sync)) -> Result<()> {
    let next = AtomicUsize::new(0);
    let joined = AtomicUsize::new(0);
    let error = std::sync::Mutex::new(None);
    team.run(threads.max(team.max_threads()), &|| {
        if joined.fetch_add(1, Ordering::Relaxed) >= workers {
            return;
        }
        loop {
            let k = next.fetch_add(1, Ordering::Relaxed);
            if k >= n {
                return;
            }
            run_item(task, k, &error);
        }
    });
    error.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner).map_or(Ok(()), Err)
}

/// Run `task(0..n)` on the calling thread and up to `max_threads - 1` of the pool's threads,
/// and return the first error.
///
/// The calling thread starts on the items at once and the pool's threads join as they wake,
/// each claiming items from a shared counter, so a small call never waits for a thread to
/// wake: a thread that wakes after the items are gone finds nothing and touches nothing.
pub fn for_each_index(n: usize, max_threads: usize, task: &(dyn Fn(usize) -> Result<()> + Sync)) -> Result<()> {
    let team = openmp::team();
    let all = threads_for(team.as_deref());
    let threads = all.min(max_threads);
    if threads <= 1 || n <= 1 {
        return (0..n).try_for_each(task);
    }
    if let Some(team) = team {
        return on_team(&team, n, all, threads.min(n), task);
    }
    let pool = current_pool()?;
    // SAFETY: erases the borrow's lifetime. The pointer is dereferenced only for claimed
    // items, and this function does not return (or unwind: `work` catches panics) until every
    // claimed item is done; late helpers claim nothing. So no use outlives the borrow.
    let task: *const (dyn Fn(usize) -> Result<()> + Sync) = unsafe {
        std::mem::transmute::<
            *const (dyn Fn(usize) -> Result<()> + Sync + '_),
            *const (dyn Fn(usize) -> Result<()> + Sync + 'static),
        >(task)
    };
    let wanted = threads.min(n) - 1;
    let shared = Arc::new(Shared {
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        n,
        joined: AtomicUsize::new(0),
        max_helpers: wanted,
        task,
        error: std::sync::Mutex::new(None),
    });
    // Helpers lingering after an earlier call join from the published slot at once; wake
    // sleeping ones only for the rest.
    LATEST.store(Some(shared.clone()));
    for _ in 0..wanted.saturating_sub(LINGERING.load(Ordering::Acquire)) {
        let s = shared.clone();
        pool.pool.spawn(move || Shared::help(s));
    }
    shared.work();
    // Every item is claimed; wait for the ones still running elsewhere.
    let mut spins = 0u32;
    while shared.done.load(Ordering::Acquire) < n {
        if spins < 1 << 14 {
            std::hint::spin_loop();
            spins += 1;
        } else {
            std::thread::yield_now();
        }
    }
    // Unpublish this call if it is still the latest (lingering helpers then stop checking it).
    LATEST.compare_and_swap(&Some(shared.clone()), None::<Arc<Shared>>);
    let mut slot = shared.error.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    slot.take().map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize, seed: u64, skew: bool) -> Vec<u64> {
        let mut state = seed | 1;
        (0..n)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // Skewed: most keys in a few rows, as a Zipf-like trace puts them.
                let row = if skew && !state.is_multiple_of(4) { state % 7 } else { state % 100_000 };
                row << 32 | i as u64
            })
            .collect()
    }

    #[test]
    fn sort_matches_std_for_any_thread_count() {
        for (n, skew) in [(0, false), (10, false), (PARALLEL_SORT_LEN + 1, false), (200_000, true), (300_001, false)] {
            let mut want = keys(n, 7, skew);
            want.sort_unstable();
            for threads in [1, 2, 3, 5] {
                set_num_threads(threads).unwrap();
                let mut got = keys(n, 7, skew);
                sort(&mut got).unwrap();
                assert_eq!(got, want, "n {n}, skew {skew}, threads {threads}");
            }
        }
        // Equal keys (no position bits) sort too.
        set_num_threads(3).unwrap();
        let mut same: Vec<u64> = (0..100_000u64).map(|i| i % 3).collect();
        sort(&mut same).unwrap();
        assert!(same.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn every_chunk_once_and_errors_come_back() {
        set_num_threads(3).unwrap();
        let mut data = vec![0u32; 10_001];
        for_each_chunk(&mut data, 1000, &|k, chunk| {
            chunk.iter_mut().for_each(|x| *x += k as u32 + 1);
            Ok(())
        })
        .unwrap();
        assert!(data.iter().enumerate().all(|(i, &x)| x == (i / 1000) as u32 + 1));
        let err = for_each_chunk(&mut data, 1000, &|k, _| if k == 4 { Err(Error::value("chunk 4")) } else { Ok(()) });
        assert!(matches!(err, Err(Error::Value(m)) if m == "chunk 4"));
    }
}
