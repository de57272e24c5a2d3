//! Dump-time symbolization, with a cache. Never called from the allocation hook.
//!
//! `backtrace::resolve` turns a return address into its chain of (possibly inlined) functions
//! with file and line. The first resolution of a process loads debug info (~60 ms measured in
//! prior work, tens of MB for a large binary); later new addresses cost a few µs. Results are
//! cached per address for the life of the process; the cache's size is reported in
//! `HeapProfile::symbol_cache_bytes` and it all counts in `Stats::profiler_bytes`.
use std::collections::HashMap;
use std::sync::Arc;

use crate::sites::FxBuild;
use crate::sync::SpinLock;

/// One function at a frame: the outermost is the function the return address lies in; inlined
/// callees come before it (innermost first), as pprof orders the Lines of a Location.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Symbol {
    /// Demangled name without the hash suffix, e.g. `alloc::raw_vec::finish_grow`.
    pub function: String,
    /// Source file, if the binary has line tables.
    pub file: Option<String>,
    /// Line in `file`, if the binary has line tables.
    pub line: Option<u32>,
}

/// One stack frame: a return address and what is known about it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Frame {
    /// The return address as captured (pprof's `Location.address` is this minus 1).
    pub address: usize,
    /// Innermost first; empty when unsymbolized or unknown.
    pub symbols: Arc<[Symbol]>,
}

impl Frame {
    /// The function the frame is in (outermost symbol), if known.
    pub fn function(&self) -> Option<&str> {
        self.symbols.last().map(|s| s.function.as_str())
    }
}

/// Why every symbol list handed out is also kept here, for the life of the process: they are
/// allocated inside the profiler guard, and `Frame` is `Clone` with a public `symbols` field, so a
/// program can keep an `Arc` past its `HeapProfile`. If that clone were the last reference, its
/// drop would free, outside the guard, a block the program never allocated, and the exact counters
/// would drift (`free > alloc`). With the cache holding a reference, a program's drop only ever
/// decrements a count. So: never evict from this cache without revisiting that.
struct Cache {
    map: HashMap<usize, Arc<[Symbol]>, FxBuild>,
    /// Per address, its symbols after trimming the allocator's functions off the inner end
    /// (`snapshot::trim_allocator_frames`); same lifetime rule as `map`.
    trimmed: HashMap<(usize, usize), Arc<[Symbol]>, FxBuild>,
    /// The symbols of an unsymbolized or unknown frame.
    empty: Arc<[Symbol]>,
    bytes: usize,
}

/// A spin lock, not a `parking_lot::Mutex`, so that `fork()` can hold it across the fork and the
/// child can release it (see `sync`): a parking_lot mutex with parked waiters unlocks through
/// parking_lot's global hash table, whose bucket locks a thread that does not exist in the child
/// may hold. It is only taken at dump time (waiters yield), never in the allocation hook.
static CACHE: SpinLock<Option<Cache>> = SpinLock::new(None);

/// `pthread_atfork` prepare: takes the cache lock (see `sites::atfork_prepare`).
pub(crate) fn lock_for_fork() {
    CACHE.raw_lock();
}

/// `pthread_atfork` parent and child: releases the lock taken by [`lock_for_fork`].
///
/// # Safety
/// [`lock_for_fork`] must have been called by this thread (or, in a forked child, by the thread
/// that forked) with no release since.
pub(crate) unsafe fn unlock_after_fork() {
    // SAFETY: per this function's contract the lock is held by `raw_lock` and no guard exists.
    unsafe { CACHE.raw_unlock() }
}

fn with_cache<R>(f: impl FnOnce(&mut Cache) -> R) -> R {
    let mut guard = CACHE.lock();
    f(guard.get_or_insert_with(|| Cache {
        map: HashMap::default(),
        trimmed: HashMap::default(),
        empty: Arc::from(Vec::new()),
        bytes: 0,
    }))
}

/// The shared empty symbol list (see [`Cache`] for why it is shared). Inside the guard.
pub(crate) fn empty() -> Arc<[Symbol]> {
    with_cache(|c| c.empty.clone())
}

/// `keep`, the inner-end-trimmed symbols of the frame at `address`, as the shared list for that
/// address (see [`Cache`]). Inside the guard.
pub(crate) fn trimmed(address: usize, keep: &[Symbol]) -> Arc<[Symbol]> {
    with_cache(|c| {
        // The kept symbols are a suffix of the address's symbol list, so (address, length)
        // names them; entries are never replaced (a replaced entry could leave a program's
        // clone as the last reference).
        if let Some(s) = c.trimmed.get(&(address, keep.len())) {
            return s.clone();
        }
        let s: Arc<[Symbol]> = Arc::from(keep);
        c.bytes += 64 + keep.iter().map(Symbol::heap_bytes).sum::<usize>();
        c.trimmed.insert((address, keep.len()), s.clone());
        s
    })
}

impl Symbol {
    /// Bytes this symbol holds on the heap, roughly, for `cache_bytes`.
    fn heap_bytes(&self) -> usize {
        48 + self.function.len() + self.file.as_ref().map_or(0, |f| f.len())
    }
}

/// Resolves every address in `addrs`, returning them in order. Must run inside the profiler guard.
pub(crate) fn resolve_all(addrs: &[usize]) -> Vec<Arc<[Symbol]>> {
    debug_assert!(crate::guard::in_profiler());
    with_cache(|cache| {
        addrs
            .iter()
            .map(|&a| {
                if let Some(s) = cache.map.get(&a) {
                    return s.clone();
                }
                let syms = resolve_one(a);
                cache.bytes += 64 + syms.iter().map(Symbol::heap_bytes).sum::<usize>();
                cache.map.insert(a, syms.clone());
                syms
            })
            .collect()
    })
}

fn resolve_one(addr: usize) -> Arc<[Symbol]> {
    let mut out = Vec::new();
    // `resolve` looks up `addr - 1` for us: a return address points after the call, possibly at
    // the next line or function.
    backtrace::resolve(addr as *mut core::ffi::c_void, |sym| {
        let function = match sym.name() {
            // `{:#}` drops the `::h0123...` hash.
            Some(n) => format!("{n:#}"),
            None => String::from("??"),
        };
        out.push(Symbol {
            function,
            file: sym.filename().map(|p| p.display().to_string()),
            line: sym.lineno(),
        });
    });
    out.into()
}

/// Approximate bytes held by the symbol cache.
pub(crate) fn cache_bytes() -> usize {
    CACHE.lock().as_ref().map_or(0, |c| c.bytes)
}

/// Is this function part of the allocation machinery rather than the program's call site?
/// Such frames at the leaf end of a stack are trimmed (Go hides `runtime.mallocgc`; tcmalloc
/// sends `drop_frames`). Growth frames like `alloc::raw_vec::finish_grow` or hashbrown's
/// `reserve_rehash` are *not* matched: they tell which container grew.
pub(crate) fn is_allocator_frame(function: &str) -> bool {
    // heapsight's own frames on the allocation path, by module, not all of `heapsight::`: the
    // generic wrappers that run the program's code (`<heapsight::tags::Tagged<F>>::poll`,
    // `heapsight::tags::with_tag`, `heapsight::measure::measure`) sit between a call site and its
    // caller, and the code inlined into them is the program's.
    const PREFIXES: &[&str] = &[
        "heapsight::alloc::",
        "<heapsight::alloc::",
        "heapsight::guard::",
        "heapsight::counters::",
        "heapsight::sampler::",
        "heapsight::sites::",
        "heapsight::stack::",
        "__rust_alloc",
        "__rust_dealloc",
        "__rust_realloc",
        "__rg_",
        "__rdl_",
        "alloc::alloc::",
        "<alloc::alloc::Global as core::alloc::Allocator>",
        "std::alloc::",
        "<std::alloc::System as core::alloc::global::GlobalAlloc>",
        "core::alloc::",
        "backtrace::",
        "_Unwind_",
    ];
    PREFIXES.iter().any(|p| function.starts_with(p))
}

/// The regular expression pprof's `drop_frames` gets, for stacks written without symbols and
/// symbolized later by `go tool pprof`: the same frames as [`is_allocator_frame`].
pub const DROP_FRAMES_REGEX: &str = r"(<?heapsight::(alloc|guard|counters|sampler|sites|stack)::.*|__rust_alloc.*|__rust_dealloc.*|__rust_realloc.*|__rg_.*|__rdl_.*|alloc::alloc::.*|<alloc::alloc::Global as core::alloc::Allocator>.*|std::alloc::.*|core::alloc::.*|backtrace::.*|_Unwind_.*)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_frames() {
        assert!(is_allocator_frame("__rust_alloc"));
        assert!(is_allocator_frame("alloc::alloc::Global::alloc_impl"));
        assert!(is_allocator_frame(
            "<heapsight::alloc::HeapSight<A> as core::alloc::global::GlobalAlloc>::alloc"
        ));
        assert!(!is_allocator_frame("alloc::raw_vec::finish_grow"));
        assert!(!is_allocator_frame(
            "hashbrown::raw::RawTable<T,A>::reserve_rehash"
        ));
        assert!(!is_allocator_frame("alloc::fmt::format::format_inner"));
        assert!(!is_allocator_frame("myapp::build"));
        // Wrappers that run the program's code are the program's frames.
        let poll = "<heapsight::tags::Tagged<F> as core::future::future::Future>::poll";
        assert!(!is_allocator_frame(poll));
        assert!(!is_allocator_frame("heapsight::tags::with_tag"));
        assert!(!is_allocator_frame("heapsight::measure::measure"));
        assert!(is_allocator_frame("heapsight::alloc::take_sample"));
        assert!(is_allocator_frame("heapsight::stack::capture"));
    }

    #[test]
    #[cfg_attr(heapsight_portable, ignore = "uses the frame-pointer walk")]
    fn resolves_a_return_address_to_its_call_line() {
        if !crate::stack::COMPILED_WITH_FP {
            eprintln!("SKIPPED: built without frame pointers");
            return;
        }
        let mut buf = [0usize; 4];
        let b = crate::stack::thread_stack_bounds();
        let n = crate::stack::walk_frame_pointers(&mut buf, b.1);
        let line = line!() - 1;
        assert!(n > 0);
        // buf[0] returns into this function, just after the call on line `line`.
        let syms = crate::guard::profiler_scope(|| resolve_all(&buf[..1]));
        let s = syms[0].first().expect("symbolized");
        assert!(
            s.function
                .contains("resolves_a_return_address_to_its_call_line"),
            "{s:?}"
        );
        assert_eq!(s.line, Some(line), "{s:?}");
    }
}
