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

/// Run `f` inside the pool (rayon's parallel iterators in `f` use it).
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
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(want)
        .thread_name(|i| format!("recengine-{i}"))
        .build()
        .map_err(|e| Error::value(format!("could not start {want} threads: {e}")))?;
    let state = Arc::new(PoolState { pid, threads: want, pool });
    if let Some(old) = POOL.swap(Some(state.clone())) {
        if old.pid != pid {
            // Inherited across fork: its threads do not exist here. Never drop it.
            std::mem::forget(old);
        }
    }
    Ok(state)
}
