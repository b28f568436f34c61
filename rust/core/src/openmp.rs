//! Running the core's parallel loops on torch's own worker threads.
//!
//! torch's CPU ops run on an OpenMP team (libgomp in the pip wheels; Intel's and LLVM's
//! runtimes export the same `GOMP_parallel` entry point). After each op that team's threads
//! spin for a while before they sleep, and a second pool of threads that wants the same cores
//! then loses them to the spinners (and takes them back from torch's next op): both slow
//! down. So when torch is in the process, the core hands its loops to that same team, through
//! the runtime's `GOMP_parallel` (what a compiler emits for `#pragma omp parallel`), as
//! FBGEMM's kernels do inside torch: the threads that just ran torch's op, still spinning,
//! take the core's items at once, and no thread of ours competes with them.
//!
//! The runtime is found without Python: the first parallel call after a new shared library
//! was loaded (glibc's `dlpi_adds` counter, one look at the loader's list, tens of
//! nanoseconds otherwise) looks for `libtorch_cpu` among the loaded objects and resolves
//! `GOMP_parallel` and `omp_get_max_threads` through its dependencies, so exactly the runtime
//! torch calls is used, and torch's own `at::get_num_threads` for the thread count. A forked
//! child never uses the parent's team (libgomp's threads do not survive `fork` and its pool
//! would wait for them): a `pthread_atfork` handler counts forks, the attachment records the
//! count it was made at, and a child falls back to the core's own pool.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;

/// `GOMP_parallel(fn, data, num_threads, flags)`: run `fn(data)` on a team of `num_threads`
/// (0: the runtime's default), the calling thread included, and return when all are done.
type GompParallel = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);
/// `omp_get_max_threads()`: the team size a parallel region of the calling thread would get;
/// also the shape of torch's `at::get_num_threads()` (no arguments, an `int` back).
type OmpGetMaxThreads = unsafe extern "C" fn() -> c_int;

/// torch's OpenMP runtime, as resolved in one process.
pub struct Team {
    parallel: GompParallel,
    /// torch's `at::get_num_threads()` when found, else the runtime's `omp_get_max_threads`.
    max_threads: OmpGetMaxThreads,
    /// [`FORKS`] when the runtime was found: a forked child sees a higher count.
    forks: u64,
    /// The file of the runtime (`.../torch/lib/libgomp.so.1`).
    pub library: String,
}

impl Team {
    /// The team size torch's next op on this thread would use: `torch.get_num_threads()`.
    /// torch sets each thread's OpenMP count lazily, before the thread's first op, and
    /// `at::get_num_threads` does that too, so a thread that has not run a torch op yet gets
    /// torch's count rather than the runtime's default (every core).
    pub fn max_threads(&self) -> usize {
        // SAFETY: a resolved `at::get_num_threads` or `omp_get_max_threads` of a loaded
        // library; both take no arguments, return an int, and may be called from any thread.
        let n = unsafe { (self.max_threads)() };
        usize::try_from(n).unwrap_or(1).max(1)
    }

    /// Run `body` on `threads` threads of the calling thread's team (the caller is one of
    /// them) and return once every one of them has returned from it.
    pub fn run(&self, threads: usize, body: &(dyn Fn() + Sync)) {
        extern "C" fn trampoline(data: *mut c_void) {
            // SAFETY: `data` is the `&&dyn Fn` that `run` passes below; `GOMP_parallel` does
            // not return before every thread of the team has returned from this function, so
            // the reference is alive for each call. `body` must not unwind (callers catch
            // panics), since unwinding out of an `extern "C"` function aborts.
            let body = unsafe { &*data.cast::<&(dyn Fn() + Sync)>() };
            body();
        }
        let mut body = body;
        let threads = c_uint::try_from(threads).unwrap_or(c_uint::MAX).max(1);
        // SAFETY: a resolved `GOMP_parallel`; the data pointer outlives the call (see above),
        // and flags 0 asks for a plain parallel region (no proc_bind).
        unsafe { (self.parallel)(trampoline, (&raw mut body).cast::<c_void>(), threads, 0) };
    }
}

/// Where the core runs its parallel loops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMode {
    /// torch's team when torch (with an OpenMP runtime) is loaded in this process, else the
    /// core's own pool.
    Auto = 0,
    /// torch's team, required: selecting it fails while torch is not loaded.
    Torch = 1,
    /// The core's own pool, always.
    Own = 2,
}

impl PoolMode {
    pub fn name(self) -> &'static str {
        match self {
            PoolMode::Auto => "auto",
            PoolMode::Torch => "torch",
            PoolMode::Own => "own",
        }
    }

    pub fn parse(text: &str) -> Option<PoolMode> {
        [PoolMode::Auto, PoolMode::Torch, PoolMode::Own].into_iter().find(|m| m.name() == text)
    }
}

static MODE: AtomicU8 = AtomicU8::new(u8::MAX);
static TEAM: ArcSwapOption<Team> = ArcSwapOption::const_empty();
/// The loader's load count at the last search for torch (0: never searched).
static LOADS_SEEN: AtomicU64 = AtomicU64::new(0);
/// How many times this process's line of ancestors forked since the handler was registered.
static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn forked() {
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// The mode in force: set by [`set_mode`], else `RECENGINE_POOL`, else `auto`.
pub fn mode() -> PoolMode {
    match MODE.load(Ordering::Relaxed) {
        0 => PoolMode::Auto,
        1 => PoolMode::Torch,
        2 => PoolMode::Own,
        _ => {
            let m = std::env::var("RECENGINE_POOL").ok().and_then(|s| PoolMode::parse(s.trim())).unwrap_or(PoolMode::Auto);
            let _ = MODE.compare_exchange(u8::MAX, m as u8, Ordering::Relaxed, Ordering::Relaxed);
            m
        }
    }
}

/// Choose where the core's loops run. `Torch` fails unless torch's OpenMP runtime is loaded.
pub fn set_mode(m: PoolMode) -> crate::Result<()> {
    if m == PoolMode::Torch && find().is_none() {
        return Err(crate::Error::value(
            "torch's OpenMP runtime is not loaded in this process (import torch first, or use \"auto\")",
        ));
    }
    MODE.store(m as u8, Ordering::Relaxed);
    Ok(())
}

/// The team the core's loops run on now, if any (none in mode `own`, without torch, or in a
/// child forked after the runtime was found).
pub fn team() -> Option<Arc<Team>> {
    if mode() == PoolMode::Own {
        return None;
    }
    find()
}

/// torch's runtime in this process, looked for again only when a library was loaded since.
fn find() -> Option<Arc<Team>> {
    if let Some(team) = TEAM.load_full() {
        return (team.forks == FORKS.load(Ordering::Relaxed)).then_some(team);
    }
    let loads = loads();
    if loads == LOADS_SEEN.load(Ordering::Relaxed) {
        return None;
    }
    LOADS_SEEN.store(loads, Ordering::Relaxed);
    let team = Arc::new(resolve()?);
    let _ = TEAM.compare_and_swap(&None::<Arc<Team>>, Some(team));
    TEAM.load_full()
}

#[cfg(target_os = "linux")]
fn loads() -> u64 {
    unsafe extern "C" fn first(info: *mut libc::dl_phdr_info, _size: usize, data: *mut c_void) -> c_int {
        // SAFETY: the loader passes a valid `info` for the call, and `data` is the `u64` below.
        unsafe { *data.cast::<u64>() = (*info).dlpi_adds };
        1
    }
    let mut adds = 0u64;
    // SAFETY: `first` matches the callback type, writes only through `data` (a live `u64`), and
    // stops the walk after the first object.
    unsafe { libc::dl_iterate_phdr(Some(first), (&raw mut adds).cast::<c_void>()) };
    adds.max(1)
}

#[cfg(not(target_os = "linux"))]
fn loads() -> u64 {
    0
}

/// The path of the loaded `libtorch_cpu`, if any.
#[cfg(target_os = "linux")]
fn torch_library() -> Option<CString> {
    unsafe extern "C" fn look(info: *mut libc::dl_phdr_info, _size: usize, data: *mut c_void) -> c_int {
        // SAFETY: the loader passes a valid `info` whose `dlpi_name` is null or a C string for
        // the call, and `data` is the `Option<CString>` below.
        unsafe {
            let name = (*info).dlpi_name;
            if name.is_null() {
                return 0;
            }
            let name = CStr::from_ptr(name);
            let base = name.to_bytes().rsplit(|&b| b == b'/').next().unwrap_or_default();
            if base.starts_with(b"libtorch_cpu.") {
                *data.cast::<Option<CString>>() = Some(name.to_owned());
                return 1;
            }
        }
        0
    }
    let mut found: Option<CString> = None;
    // SAFETY: `look` matches the callback type and writes only through `data`, a live
    // `Option<CString>`.
    unsafe { libc::dl_iterate_phdr(Some(look), (&raw mut found).cast::<c_void>()) };
    found
}

#[cfg(target_os = "linux")]
fn resolve() -> Option<Team> {
    let path = torch_library()?;
    static WATCH: std::sync::Once = std::sync::Once::new();
    // SAFETY: registers a child handler that only increments an atomic (async-signal-safe).
    // The library is never unloaded (CPython does not unload extension modules), so the
    // handler's code stays mapped.
    WATCH.call_once(|| unsafe {
        libc::pthread_atfork(None, None, Some(forked));
    });
    // SAFETY: RTLD_NOLOAD only returns a handle to an object already loaded (its constructors
    // have run), adding a reference that is never dropped, so the object stays loaded.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_LAZY) };
    if handle.is_null() {
        return None;
    }
    let symbol = |name: &CStr| {
        // SAFETY: a live handle and a C string; the result is null or the symbol's address,
        // searched in libtorch_cpu and then its dependencies, as the loader bound torch's calls.
        unsafe { libc::dlsym(handle, name.as_ptr()) }
    };
    let parallel = symbol(c"GOMP_parallel");
    let mut max_threads = symbol(c"omp_get_max_threads");
    if parallel.is_null() || max_threads.is_null() {
        return None; // torch built without OpenMP (its native pool): keep ours.
    }
    // `at::get_num_threads()` (Itanium-mangled; a plain function of no arguments returning
    // int, the same call as a C function's): torch's count from any thread.
    let torch_threads = symbol(c"_ZN2at15get_num_threadsEv");
    if !torch_threads.is_null() {
        max_threads = torch_threads;
    }
    Some(Team {
        // SAFETY: `GOMP_parallel` and `omp_get_max_threads` are libgomp's documented C entry
        // points with exactly these signatures (Intel's and LLVM's runtimes export the same
        // ones for compatibility); `at::get_num_threads` is `int ()` with C++ linkage, called
        // the same way on the platform ABI.
        parallel: unsafe { std::mem::transmute::<*mut c_void, GompParallel>(parallel) },
        // SAFETY: as above.
        max_threads: unsafe { std::mem::transmute::<*mut c_void, OmpGetMaxThreads>(max_threads) },
        forks: FORKS.load(Ordering::Relaxed),
        library: library_of(parallel).unwrap_or_else(|| path.to_string_lossy().into_owned()),
    })
}

#[cfg(not(target_os = "linux"))]
fn resolve() -> Option<Team> {
    None
}

/// The file that holds `address`.
#[cfg(target_os = "linux")]
fn library_of(address: *mut c_void) -> Option<String> {
    let mut info = libc::Dl_info {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    // SAFETY: `info` is a valid out-parameter; dladdr only reads the loader's tables.
    let ok = unsafe { libc::dladdr(address, &raw mut info) };
    if ok == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr set `dli_fname` to a C string owned by the loader.
    let name: *const c_char = info.dli_fname;
    Some(unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned())
}
