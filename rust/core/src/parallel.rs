//! The core's thread pool: a rayon pool of a settable size, safe in forked children.
//!
//! The pool is created on first use with `RECENGINE_NUM_THREADS` threads (else one per core
//! this process may run on), and re-created when the count changes. A forked child (a
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

struct PoolState {
    pid: u32,
    threads: usize,
    pool: ThreadPool,
}

static POOL: ArcSwapOption<PoolState> = ArcSwapOption::const_empty();
/// The requested thread count; 0 means "not set yet".
static THREADS: AtomicUsize = AtomicUsize::new(0);

fn default_threads() -> usize {
    std::env::var("RECENGINE_NUM_THREADS")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The thread count lookups use.
pub fn num_threads() -> usize {
    match THREADS.load(Ordering::Relaxed) {
        0 => {
            let n = default_threads();
            // Another thread may have set a count meanwhile; keep theirs.
            let _ = THREADS.compare_exchange(0, n, Ordering::Relaxed, Ordering::Relaxed);
            THREADS.load(Ordering::Relaxed)
        }
        n => n,
    }
}

/// Set the thread count (1 or more). The pool is rebuilt at its next use.
pub fn set_num_threads(n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::value("the thread count must be at least 1"));
    }
    if n > 4096 {
        return Err(Error::value(format!("{n} threads is more than this library allows (4096)")));
    }
    THREADS.store(n, Ordering::Relaxed);
    Ok(())
}

/// Run `f` inside the pool (rayon's parallel iterators in `f` use it, on the pool's
/// `num_threads() - 1` threads while the caller waits).
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> Result<R> {
    let pool = current_pool()?;
    Ok(pool.pool.install(f))
}

fn current_pool() -> Result<Arc<PoolState>> {
    let want = num_threads();
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
            let task = unsafe { &*self.task };
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task(k)))
                .unwrap_or_else(|_| Err(Error::value("a worker thread panicked (a bug in recengine)")));
            if let Err(e) = r {
                let mut slot = self.error.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                slot.get_or_insert(e);
            }
            self.done.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// Run `task(0..n)` on the calling thread and up to `max_threads - 1` of the pool's threads,
/// and return the first error.
///
/// The calling thread starts on the items at once and the pool's threads join as they wake,
/// each claiming items from a shared counter, so a small call never waits for a thread to
/// wake: a thread that wakes after the items are gone finds nothing and touches nothing.
pub fn for_each_index(n: usize, max_threads: usize, task: &(dyn Fn(usize) -> Result<()> + Sync)) -> Result<()> {
    let threads = num_threads().min(max_threads);
    if threads <= 1 || n <= 1 {
        return (0..n).try_for_each(task);
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
