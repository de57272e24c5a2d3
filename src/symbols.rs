//! Dump-time symbolization: only the addresses a profile holds, with nothing kept but the answers.
//! Never called from the allocation hook.
//!
//! For each address not already in the cache, [`resolve_all`] finds its mapping in
//! `/proc/self/maps`, maps that ELF file read-only, and reads the chain of (possibly inlined)
//! functions with file and line from the DWARF of only the compilation units that hold the
//! addresses (`dwarf::resolve`, over `gimli`). Addresses without DWARF get the symbol table's
//! name. Once the batch is resolved the mapping is dropped: memory after a dump is the answers
//! only, a bounded cache of resolved frames ([`MAX_CACHE_BYTES`]), and the file's pages leave
//! resident memory with the mapping. docs/symbols.md has the measurements behind this choice. No lock is held while
//! resolving: the cache lock covers look-ups and inserts only, and `backtrace`'s global lock (which
//! a forked child could inherit held) is not used.
use std::collections::HashMap;
use std::sync::Arc;

use object::{Object, ObjectSection};

use crate::elf;
use crate::sites::FxBuild;
use crate::sync::{self, Lock};

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

/// The symbols of one frame, innermost first; derefs to `[Symbol]`.
///
/// Inside a profile the lists are shared, and they are the profiler's own memory, allocated and
/// freed inside the profiler guard so the exact counters never see them. A clone the program
/// makes is its own copy (allocated and later freed as the program's), never a reference to the
/// profiler's: otherwise, once the profile and the symbol cache had let go of a list, the
/// program's drop of the last reference would free, outside the guard, a block the program never
/// allocated, and the counters would drift (`free > alloc`).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Symbols(Arc<[Symbol]>);

impl Clone for Symbols {
    fn clone(&self) -> Self {
        if crate::guard::in_profiler() {
            Symbols(self.0.clone())
        } else {
            Symbols(self.0.iter().cloned().collect())
        }
    }
}

impl core::ops::Deref for Symbols {
    type Target = [Symbol];
    fn deref(&self) -> &[Symbol] {
        &self.0
    }
}

/// A list owned by whoever builds it (inside the profiler guard, the profiler's).
impl From<Vec<Symbol>> for Symbols {
    fn from(v: Vec<Symbol>) -> Self {
        Symbols(v.into())
    }
}

impl Symbols {
    /// A list of the profiler's own. Inside the guard.
    pub(crate) fn new(syms: Vec<Symbol>) -> Symbols {
        Symbols(syms.into())
    }

    /// The same list, shared (the profiler's own clone, whoever calls it). Inside the guard.
    pub(crate) fn share(&self) -> Symbols {
        Symbols(self.0.clone())
    }
}

/// One stack frame: a return address and what is known about it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Frame {
    /// The return address as captured (pprof's `Location.address` is this minus 1).
    pub address: usize,
    /// Innermost first; empty when unsymbolized or unknown.
    pub symbols: Symbols,
}

impl Frame {
    /// The function the frame is in (outermost symbol), if known.
    pub fn function(&self) -> Option<&str> {
        self.symbols.last().map(|s| s.function.as_str())
    }
}

/// Resolved frames by return address, bounded: when an insert would pass [`MAX_CACHE_BYTES`],
/// the whole map is dropped first (inside the guard) and refilled by the next dumps. Profiles
/// and the stack cache keep their own references, so dropping never frees a list still in use.
struct Cache {
    map: HashMap<usize, Symbols, FxBuild>,
    bytes: usize,
}

/// Bound on [`Cache`]: a few thousand frames, the addresses of a busy service's profile, so
/// later dumps do not re-read debug info.
pub(crate) const MAX_CACHE_BYTES: usize = 1 << 20;

/// Held across `fork()` and released in the child (see `sync`). Only taken at dump time for
/// look-ups and inserts, never while resolving and never in the allocation hook.
static CACHE: Lock<Option<Cache>> = Lock::new(&sync::SYMBOL_CACHE_LOCK, None);

fn with_cache<R>(f: impl FnOnce(&mut Cache) -> R) -> R {
    let mut guard = CACHE.lock();
    f(guard.get_or_insert_with(|| Cache {
        map: HashMap::default(),
        bytes: 0,
    }))
}

impl Symbol {
    /// Bytes this symbol holds on the heap, roughly, for `cache_bytes`.
    fn heap_bytes(&self) -> usize {
        48 + self.function.len() + self.file.as_ref().map_or(0, |f| f.len())
    }
}

/// Resolves every address in `addrs`, returning them in order. Must run inside the profiler guard.
pub(crate) fn resolve_all(addrs: &[usize]) -> Vec<Symbols> {
    debug_assert!(crate::guard::in_profiler());
    // A dump is outside the hook and every heapsight lock: the moment to give the sampled path's
    // DWARF unwinder the objects loaded since the last dump (`dlopen`).
    crate::stack::warm_up_dwarf();
    let mut out: Vec<Option<Symbols>> = with_cache(|c| {
        addrs
            .iter()
            .map(|a| c.map.get(a).map(Symbols::share))
            .collect()
    });
    let missing: Vec<usize> = addrs
        .iter()
        .zip(&out)
        .filter(|(_, s)| s.is_none())
        .map(|(a, _)| *a)
        .collect();
    if missing.is_empty() {
        return out.into_iter().map(Option::unwrap_or_default).collect();
    }
    // The expensive part, with no lock held.
    let resolved = resolve_uncached(&missing);
    let evicted = with_cache(|c| {
        let mut evicted = None;
        for (a, syms) in missing.iter().zip(&resolved) {
            let bytes = 64 + syms.iter().map(Symbol::heap_bytes).sum::<usize>();
            if c.bytes + bytes > MAX_CACHE_BYTES {
                evicted = Some(core::mem::take(&mut c.map));
                c.bytes = 0;
            }
            if c.map.insert(*a, syms.share()).is_none() {
                c.bytes += bytes;
            }
        }
        evicted
    });
    // Freed after the lock is released (still inside the guard).
    drop(evicted);
    let mut resolved = missing
        .iter()
        .zip(resolved)
        .collect::<HashMap<_, _, FxBuild>>();
    for (a, slot) in addrs.iter().zip(out.iter_mut()) {
        if slot.is_none() {
            *slot = resolved.get(a).map(Symbols::share);
        }
    }
    resolved.clear();
    out.into_iter().map(Option::unwrap_or_default).collect()
}

impl Default for Symbols {
    fn default() -> Self {
        Symbols(Arc::from(Vec::new()))
    }
}

/// What symbolization lacked, per file, since start-up (e.g. a stripped binary): a few lines for
/// the profile's comments. Bounded by the number of mapped files.
static NOTES: Lock<Vec<String>> = Lock::new(&sync::SYMBOL_NOTES_LOCK, Vec::new());

pub(crate) fn note(msg: String) {
    let mut n = NOTES.lock();
    if !n.contains(&msg) && n.len() < 64 {
        n.push(msg);
    }
}

/// What symbolization could not find so far (one line per file), for the profile's comments.
pub(crate) fn notes() -> Vec<String> {
    NOTES.lock().clone()
}

/// Resolves `addrs` (none cached) without `/proc/self/maps` (targets other than Linux, and
/// `--cfg heapsight_portable`): through `backtrace::resolve`, which loads and keeps the debug
/// info itself and takes backtrace's global lock. Unknown addresses get an empty list.
#[cfg(any(not(target_os = "linux"), heapsight_portable))]
fn resolve_uncached(addrs: &[usize]) -> Vec<Symbols> {
    addrs
        .iter()
        .map(|&a| {
            let mut out = Vec::new();
            // `resolve` looks up `a - 1`: a return address points after the call.
            backtrace::resolve(a as *mut core::ffi::c_void, |sym| {
                out.push(Symbol {
                    function: sym
                        .name()
                        .map_or_else(|| String::from("??"), |n| format!("{n:#}")),
                    file: sym.filename().map(|p| p.display().to_string()),
                    line: sym.lineno(),
                });
            });
            Symbols::new(out)
        })
        .collect()
}

/// Resolves `addrs` (none cached) file by file, each file mapped and parsed once for the batch
/// and released at the end. Unknown addresses get an empty list.
#[cfg(all(target_os = "linux", not(heapsight_portable)))]
fn resolve_uncached(addrs: &[usize]) -> Vec<Symbols> {
    let maps = elf::self_mappings();
    let mut out: Vec<Symbols> = vec![Symbols::default(); addrs.len()];
    // Addresses grouped by the mapping that holds them.
    let mut by_map: Vec<Vec<usize>> = vec![Vec::new(); maps.len()];
    for (i, &a) in addrs.iter().enumerate() {
        let a = a as u64;
        if let Some(m) = maps.iter().position(|m| (m.start..m.limit).contains(&a)) {
            by_map[m].push(i);
        }
    }
    for (m, idx) in maps.iter().zip(by_map) {
        if idx.is_empty() || !m.file.starts_with('/') {
            continue;
        }
        let probes: Vec<u64> = idx.iter().map(|&i| addrs[i] as u64).collect();
        let found = resolve_in_file(m, &probes);
        for (i, syms) in idx.into_iter().zip(found) {
            out[i] = Symbols::new(syms);
        }
    }
    give_back_freed_memory();
    out
}

/// Returns the parsed debug info's freed blocks to the system. Without it glibc keeps them in the
/// arena of the thread that symbolized (an HTTP worker's, typically), and the ~12 MB a first
/// dump parses stays resident for good (measured in docs/symbols.md).
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only releases free memory of glibc's arenas, under their locks; it
    // has no preconditions and frees no block in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Symbols of return addresses `probes` in mapping `m`, in order; empty lists for unknowns.
fn resolve_in_file(m: &elf::Mapping, probes: &[u64]) -> Vec<Vec<Symbol>> {
    let mut out = vec![Vec::new(); probes.len()];
    // The file that is mapped, which a deploy may have replaced at this path (see
    // `elf::open_mapped`): another file's symbols would be wrong for every address.
    let map = match elf::open_mapped(m).file {
        Ok(map) => map,
        Err(why) => {
            note(why);
            return out;
        }
    };
    let Ok(file) = object::File::parse(map.bytes()) else {
        note(format!("{}: not an object file; addresses only", m.file));
        return out;
    };
    let has_dwarf = load_dwarf(&file, &m.file).is_some();
    if !has_dwarf {
        let what = if file.symbol_table().is_some() {
            "no debug info: function names from the symbol table, no inlined frames, no file:line"
        } else if file.dynamic_symbol_table().is_some() {
            "stripped: function names from the dynamic symbol table only, no file:line"
        } else {
            "stripped: addresses only"
        };
        note(format!("{}: {what}", m.file));
    }
    // A return address points after the call, possibly at the next line or function.
    let vaddrs: Vec<Option<u64>> = probes
        .iter()
        .map(|&addr| elf::file_offset_to_vaddr(&file, addr - 1 - m.start + m.offset))
        .collect();
    if let Some(d) = load_dwarf(&file, &m.file) {
        let known: Vec<(usize, u64)> = vaddrs
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| (i, v)))
            .collect();
        let only: Vec<u64> = known.iter().map(|k| k.1).collect();
        let found = crate::dwarf::resolve(&d, &only);
        for ((i, _), f) in known.into_iter().zip(found) {
            if let Some(frames) = f {
                out[i] = frames;
            }
        }
    }
    // Built only if some address has no DWARF function.
    let mut symtab: Option<object::SymbolMap<object::SymbolMapName<'_>>> = None;
    for (slot, vaddr) in out.iter_mut().zip(vaddrs) {
        let Some(vaddr) = vaddr else { continue };
        let named = slot.last().is_some_and(|s| s.function != "??");
        if !named {
            let map = symtab.get_or_insert_with(|| file.symbol_map());
            if let Some(sym) = map.containing(vaddr) {
                let function = demangle(sym.name());
                match slot.last_mut() {
                    Some(last) => last.function = function,
                    None => slot.push(Symbol {
                        function,
                        file: None,
                        line: None,
                    }),
                }
            }
        }
    }
    out
}

use crate::dwarf::Reader;

/// The file's DWARF sections, borrowed from the mapping; `None` without `.debug_info`, or when it
/// is compressed (decompressing would allocate the whole section: reported as missing instead).
fn load_dwarf<'a>(file: &object::File<'a>, path: &str) -> Option<gimli::Dwarf<Reader<'a>>> {
    let info = file.section_by_name(".debug_info")?;
    let compressed = |s: &object::Section<'_, '_>| {
        s.compressed_file_range()
            .is_ok_and(|r| r.format != object::CompressionFormat::None)
    };
    if compressed(&info) {
        note(format!(
            "{path}: compressed debug info is not read; names from the symbol table"
        ));
        return None;
    }
    let endian = if file.is_little_endian() {
        gimli::RunTimeEndian::Little
    } else {
        gimli::RunTimeEndian::Big
    };
    let load = |id: gimli::SectionId| -> Result<Reader<'a>, ()> {
        let data = match file.section_by_name(id.name()) {
            Some(s) if !compressed(&s) => s.data().unwrap_or(&[]),
            _ => &[],
        };
        Ok(gimli::EndianSlice::new(data, endian))
    };
    gimli::Dwarf::load(load).ok()
}

/// A symbol name as people read it: Rust names demangled without their `::h0123...` hash, others
/// as they are.
pub(crate) fn demangle(name: &str) -> String {
    match rustc_demangle::try_demangle(name) {
        Ok(d) => format!("{d:#}"),
        Err(_) => name.to_string(),
    }
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
    ALLOCATOR_FRAME_PREFIXES
        .iter()
        .any(|p| function.starts_with(p))
}

/// The names [`is_allocator_frame`] matches, by prefix; the one list, also sent to pprof as
/// [`drop_frames_regex`].
///
/// heapsight's own frames on the allocation path are listed by module, not all of `heapsight::`:
/// the generic wrappers that run the program's code (`<heapsight::tags::Tagged<F>>::poll`,
/// `heapsight::tags::with_tag`, `heapsight::measure::measure`) sit between a call site and its
/// caller, and the code inlined into them is the program's.
const ALLOCATOR_FRAME_PREFIXES: &[&str] = &[
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

/// The regular expression (RE2, matched against whole names) pprof's `drop_frames` gets, for
/// stacks written without symbols and symbolized later by `go tool pprof`: the frames of
/// [`is_allocator_frame`], built from the same list.
pub(crate) fn drop_frames_regex() -> String {
    let mut re = String::from("(");
    for (i, p) in ALLOCATOR_FRAME_PREFIXES.iter().enumerate() {
        if i > 0 {
            re.push('|');
        }
        for c in p.chars() {
            if "\\.+*?()|[]{}^$".contains(c) {
                re.push('\\');
            }
            re.push(c);
        }
        re.push_str(".*");
    }
    re.push(')');
    re
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_frames_regex_lists_every_allocator_prefix() {
        let re = drop_frames_regex();
        let alternatives: Vec<&str> = re[1..re.len() - 1].split('|').collect();
        assert_eq!(alternatives.len(), ALLOCATOR_FRAME_PREFIXES.len());
        for (a, p) in alternatives.iter().zip(ALLOCATOR_FRAME_PREFIXES) {
            // No prefix has a regex metacharacter today, so each is itself followed by `.*`.
            assert_eq!(*a, format!("{p}.*"));
        }
        assert!(
            re.starts_with("(heapsight::alloc::.*|<heapsight::alloc::.*|"),
            "{re}"
        );
    }

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
    fn a_programs_clone_is_its_own_copy() {
        let shared = crate::guard::profiler_scope(|| {
            Symbols::new(vec![Symbol {
                function: "f".into(),
                file: None,
                line: None,
            }])
        });
        // Outside the guard (the program): a fresh list, equal but not shared.
        let own = shared.clone();
        assert_eq!(own, shared);
        assert!(!Arc::ptr_eq(&own.0, &shared.0));
        // Inside the guard (the profiler): the same list.
        let same = crate::guard::profiler_scope(|| shared.clone());
        assert!(Arc::ptr_eq(&same.0, &shared.0));
        crate::guard::profiler_scope(|| drop((same, shared)));
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
        let n = crate::stack::walk_frame_pointers(&mut buf, b).0;
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
