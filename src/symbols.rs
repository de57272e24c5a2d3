//! Dump-time symbolization, with a cache. Never called from the allocation hook.
//!
//! `backtrace::resolve` turns a return address into its chain of (possibly inlined) functions
//! with file and line. The first resolution of a process loads debug info (~60 ms measured in
//! prior work, tens of MB for a large binary); later new addresses cost a few µs. Results are
//! cached per address for the life of the process; the cache's size is reported in
//! `HeapProfile::symbol_cache_bytes` and it all counts in `Stats::profiler_bytes`.
use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::sites::FxBuild;

/// One function at a frame: the outermost is the function the return address lies in; inlined
/// callees come before it (innermost first), as pprof orders the Lines of a Location.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Symbol {
    /// Demangled name without the hash suffix, e.g. `alloc::raw_vec::finish_grow`.
    pub function: String,
    /// Source file, if the binary has line tables.
    pub file: Option<String>,
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

struct Cache {
    map: HashMap<usize, Arc<[Symbol]>, FxBuild>,
    bytes: usize,
}

static CACHE: Mutex<Option<Cache>> = Mutex::new(None);

/// Resolves every address in `addrs`, returning them in order. Must run inside the profiler guard.
pub(crate) fn resolve_all(addrs: &[usize]) -> Vec<Arc<[Symbol]>> {
    debug_assert!(crate::guard::in_profiler());
    let mut guard = CACHE.lock();
    let cache = guard.get_or_insert_with(|| Cache { map: HashMap::default(), bytes: 0 });
    addrs
        .iter()
        .map(|&a| {
            if let Some(s) = cache.map.get(&a) {
                return s.clone();
            }
            let syms = resolve_one(a);
            cache.bytes += 64
                + syms
                    .iter()
                    .map(|s| 48 + s.function.len() + s.file.as_ref().map_or(0, |f| f.len()))
                    .sum::<usize>();
            cache.map.insert(a, syms.clone());
            syms
        })
        .collect()
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
    const PREFIXES: &[&str] = &[
        "heapsight::",
        "<heapsight::",
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
pub const DROP_FRAMES_REGEX: &str = r"(heapsight::.*|<heapsight::.*|__rust_alloc.*|__rust_dealloc.*|__rust_realloc.*|__rg_.*|__rdl_.*|alloc::alloc::.*|<alloc::alloc::Global as core::alloc::Allocator>.*|std::alloc::.*|core::alloc::.*|backtrace::.*|_Unwind_.*)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_frames() {
        assert!(is_allocator_frame("__rust_alloc"));
        assert!(is_allocator_frame("alloc::alloc::Global::alloc_impl"));
        assert!(is_allocator_frame("<heapsight::alloc::HeapSight<A> as core::alloc::global::GlobalAlloc>::alloc"));
        assert!(!is_allocator_frame("alloc::raw_vec::finish_grow"));
        assert!(!is_allocator_frame("hashbrown::raw::RawTable<T,A>::reserve_rehash"));
        assert!(!is_allocator_frame("alloc::fmt::format::format_inner"));
        assert!(!is_allocator_frame("myapp::build"));
    }

    #[test]
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
        assert!(s.function.contains("resolves_a_return_address_to_its_call_line"), "{s:?}");
        assert_eq!(s.line, Some(line), "{s:?}");
    }
}
