//! [`memory()`]: where every byte of the process's and the container's memory is, in one table
//! that adds up to the resident set, from the inside out: the heap in use (exact, the counters),
//! the profiler's own memory, what the allocator holds but does not use, thread stacks,
//! file-backed pages, and what no source accounts for ("unexplained", a row of its own), then the
//! container's usage against its limit (cgroup v1 or v2).
//!
//! Owns one piece of state: which allocator is inside [`crate::HeapSight`], detected from its type
//! by the hook's slow path (`std::alloc::System` is malloc) or declared with
//! [`declare_allocator`]. Everything else is read on demand, never on the allocation path.
//!
//! The parsers are pure functions over the kernel's text formats, tested in place against
//! fixtures of both cgroup versions and against this machine's own files.
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Instant;

use crate::guard::profiler_scope;

// ---------------------------------------------------------------------------------------------
// The allocator inside HeapSight: detected from its type, or declared.

/// How the allocator row of [`MemoryReport`] knows which allocator it is reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AllocatorKnown {
    /// From the inner allocator's type, seen by the hook (`std::alloc::System` is malloc).
    Detected,
    /// Declared by the program with [`declare_allocator`].
    Declared,
    /// Neither: heapsight has not served an allocation and nothing was declared.
    Unknown,
}

/// A function that returns the bytes an allocator holds from the system (resident, or mapped
/// and committed), for [`declare_allocator`]; `None` when it cannot tell now.
pub type HeldBytesFn = fn() -> Option<u64>;

/// The inner allocator's `core::any::type_name`, as a `fn() -> &'static str` stored as a word
/// (0 = not seen yet): the hook's slow path stores it once.
static TYPE_NAME_FN: AtomicUsize = AtomicUsize::new(0);
/// What [`declare_allocator`] said, once.
static DECLARED: OnceLock<(&'static str, Option<HeldBytesFn>)> = OnceLock::new();

/// Records the inner allocator's type name function, once; the hook's slow path calls it. A
/// load and a branch after the first call; never allocates, never locks.
#[inline]
pub(crate) fn note_inner_type(name: fn() -> &'static str) {
    if TYPE_NAME_FN.load(Relaxed) == 0 {
        TYPE_NAME_FN.store(name as usize, Relaxed);
    }
}

/// Declares which allocator is inside [`crate::HeapSight`], and optionally how to read what it
/// holds from the system, for the allocator row of [`memory()`]. Wins over what was detected.
/// Once per process: returns `false` (and changes nothing) if something was declared already.
///
/// `HeapSight::system()` needs no declaration (it is detected: glibc is read with `mallinfo2`),
/// For jemalloc, pass a function over tikv-jemalloc-ctl's `stats::resident`; for mimalloc, one
/// over `mi_process_info`'s committed bytes; without one the row says "not
/// available" rather than guess.
pub fn declare_allocator(name: &'static str, held_bytes: Option<HeldBytesFn>) -> bool {
    DECLARED.set((name, held_bytes)).is_ok()
}

fn allocator_name() -> (AllocatorKnown, &'static str) {
    if let Some((name, _)) = DECLARED.get() {
        return (AllocatorKnown::Declared, name);
    }
    match TYPE_NAME_FN.load(Relaxed) {
        0 => (AllocatorKnown::Unknown, ""),
        f => {
            // SAFETY: a non-zero value was stored from a `fn() -> &'static str` by
            // `note_inner_type`, and a `fn` pointer round-trips through `usize` on every
            // supported target.
            let f = unsafe { core::mem::transmute::<usize, fn() -> &'static str>(f) };
            (AllocatorKnown::Detected, f())
        }
    }
}

/// What the allocator holds, as far as it can be read.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AllocatorMemory {
    /// The inner allocator's type name, or the declared name.
    pub name: String,
    /// How `name` is known.
    pub known: AllocatorKnown,
    /// Bytes the allocator holds from the system (in use, free, and its own overhead), or why
    /// this cannot be read.
    pub held_bytes: Result<u64, String>,
    /// Where `held_bytes` comes from (`mallinfo2: arena + hblkhd`, `jemalloc stats.resident`).
    pub source: &'static str,
}

fn read_allocator() -> AllocatorMemory {
    let (known, name) = allocator_name();
    let mut source = "";
    let held = if known == AllocatorKnown::Unknown {
        Err(
            "allocator unknown: heapsight has not served an allocation and none was declared \
             (heapsight::declare_allocator)"
                .to_string(),
        )
    } else if let Some(f) = declared_held_fn().filter(|_| known == AllocatorKnown::Declared) {
        source = "declared function";
        f().ok_or_else(|| "the declared function returned nothing".to_string())
    } else if name == "std::alloc::System" {
        source = "glibc mallinfo2: arena + hblkhd";
        glibc_held()
    } else if name.contains("jemalloc") {
        jemalloc_held()
    } else if name.contains("mimalloc") {
        Err(
            "not available: mimalloc's statistics are not reachable from heapsight; declare them \
             with heapsight::declare_allocator(\"mimalloc\", Some(held_fn))"
                .to_string(),
        )
    } else {
        Err(format!(
            "not available: no reader for {name}; declare one with heapsight::declare_allocator"
        ))
    };
    AllocatorMemory {
        name: name.to_string(),
        known,
        held_bytes: held,
        source,
    }
}

fn declared_held_fn() -> Option<HeldBytesFn> {
    DECLARED.get().and_then(|d| d.1)
}

/// glibc's `struct mallinfo2` (2.33+): ten `size_t` fields.
#[repr(C)]
#[derive(Default)]
struct MallInfo2 {
    arena: usize,
    ordblks: usize,
    smblks: usize,
    hblks: usize,
    hblkhd: usize,
    usmblks: usize,
    fsmblks: usize,
    uordblks: usize,
    fordblks: usize,
    keepcost: usize,
}

/// `arena + hblkhd` from glibc's `mallinfo2`: the bytes of every arena taken from the system
/// (brk and mmapped heaps) plus the chunks mapped one by one. Looked up with `dlsym` so that a
/// glibc older than 2.33 (no `mallinfo2`, and `mallinfo`'s `int`s wrap at 2 GiB) links and says so.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn glibc_held() -> Result<u64, String> {
    // SAFETY: `dlsym` with RTLD_DEFAULT and a NUL-terminated name only looks the symbol up.
    let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"mallinfo2".as_ptr()) };
    if f.is_null() {
        return Err("not available: this glibc has no mallinfo2 (older than 2.33)".to_string());
    }
    // SAFETY: glibc's `mallinfo2` has the signature `struct mallinfo2 mallinfo2(void)`, and
    // `MallInfo2` is that struct's layout (ten `size_t`s).
    let m = unsafe {
        let f: extern "C" fn() -> MallInfo2 = core::mem::transmute(f);
        f()
    };
    Ok((m.arena + m.hblkhd) as u64)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn glibc_held() -> Result<u64, String> {
    Err("not available: the system allocator is not glibc's".to_string())
}

fn jemalloc_held() -> Result<u64, String> {
    Err(
        "not available: heapsight has no jemalloc reader yet; declare one with \
         heapsight::declare_allocator(\"jemalloc\", Some(f)) where f reads tikv-jemalloc-ctl's \
         stats::resident after epoch::advance"
            .to_string(),
    )
}

// ---------------------------------------------------------------------------------------------
// The process: the kernel's RSS counters (/proc/self/status), the maps for the stacks, and
// mincore(2) for the stacks' resident pages. /proc/self/smaps (and smaps_rollup) would say the
// same with PSS, but walk every page table entry of the process: 9 ms at 124 MiB resident and
// 69 ms at 255 MiB under memory pressure (the oom_kill test's first run), against the 1 ms budget.

/// The process's resident memory by kind: `/proc/self/status` (`VmRSS`, `RssAnon`, `RssFile`,
/// `RssShmem`, `VmSwap`), the stacks from `/proc/self/maps` with their resident pages from
/// `mincore(2)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProcessMemory {
    /// Resident set size.
    pub rss_bytes: u64,
    /// Resident anonymous pages (heap, stacks, anonymous mappings).
    pub anon_bytes: u64,
    /// Resident pages of file-backed and shared mappings (code, mapped files, shared memory).
    pub file_bytes: u64,
    /// Swapped-out anonymous pages (not in `rss_bytes`).
    pub swap_bytes: u64,
    /// Resident pages of thread stacks: `[stack]` and the mappings laid out as glibc lays out a
    /// thread stack (a readable-writable anonymous mapping right above a guard of at most 64 KiB).
    pub stack_bytes: u64,
    /// How many stacks `stack_bytes` counts.
    pub stacks: u64,
    /// Mappings read.
    pub mappings: u64,
}

/// Largest guard below a mapping that makes it count as a thread stack. glibc's default guard
/// is one page; a program may ask for more.
const MAX_GUARD: u64 = 64 << 10;

/// Parses `/proc/<pid>/smaps` or `smaps_rollup` text (the oracle of the tests), and
/// `/proc/<pid>/maps` (its header lines: the mappings and the stacks, no sizes).
#[cfg(test)]
pub(crate) fn parse_smaps(text: &str) -> ProcessMemory {
    parse_smaps_ranges(text).0
}

/// [`parse_smaps`], and the address ranges of the stacks.
pub(crate) fn parse_smaps_ranges(text: &str) -> (ProcessMemory, Vec<(u64, u64)>) {
    #[derive(Default, Clone, Copy)]
    struct Map {
        start: u64,
        end: u64,
        anon_path: bool,
        stack: bool,
        guard: bool,
        rw: bool,
        rss: u64,
        anon: u64,
    }
    let mut p = ProcessMemory::default();
    let mut ranges = Vec::new();
    let mut prev: Option<Map> = None;
    let mut cur: Option<Map> = None;
    let mut finish = |m: Map, prev: &Option<Map>, p: &mut ProcessMemory| {
        p.mappings += 1;
        let under_guard = prev.is_some_and(|g| {
            g.guard && g.anon_path && g.end == m.start && g.end - g.start <= MAX_GUARD
        });
        if m.stack || (m.anon_path && m.rw && under_guard) {
            p.stack_bytes += m.rss;
            p.stacks += 1;
            ranges.push((m.start, m.end));
        }
        p.file_bytes += m.rss.saturating_sub(m.anon);
    };
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        let Some(first) = it.next() else { continue };
        if let Some(key) = first.strip_suffix(':') {
            let mut kb =
                || -> u64 { it.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 1024 };
            match key {
                "Rss" => {
                    let v = kb();
                    p.rss_bytes += v;
                    if let Some(m) = cur.as_mut() {
                        m.rss = v;
                    }
                }
                "Anonymous" => {
                    let v = kb();
                    p.anon_bytes += v;
                    if let Some(m) = cur.as_mut() {
                        m.anon = v;
                    }
                }
                "Swap" => p.swap_bytes += kb(),
                _ => {}
            }
            continue;
        }
        // A mapping's header: `start-end perms offset dev inode [path]`.
        let Some((s, e)) = first.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16)) else {
            continue;
        };
        let perms = it.next().unwrap_or("");
        let inode = it.nth(2).unwrap_or("0");
        let path = it.next().unwrap_or("");
        if let Some(m) = cur.take() {
            finish(m, &prev, &mut p);
            prev = Some(m);
        }
        cur = Some(Map {
            start,
            end,
            anon_path: inode == "0" && path.is_empty(),
            stack: path == "[stack]",
            guard: perms.starts_with("---"),
            rw: perms.starts_with("rw"),
            rss: 0,
            anon: 0,
        });
    }
    if let Some(m) = cur.take() {
        finish(m, &prev, &mut p);
    }
    (p, ranges)
}

/// `VmRSS`, `RssAnon`, `RssFile` + `RssShmem` and `VmSwap` of `/proc/<pid>/status`, in bytes.
pub(crate) fn parse_status(text: &str) -> ProcessMemory {
    let mut p = ProcessMemory::default();
    for l in text.lines() {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
            * 1024;
        match k {
            "VmRSS" => p.rss_bytes = v,
            "RssAnon" => p.anon_bytes = v,
            "RssFile" | "RssShmem" => p.file_bytes += v,
            "VmSwap" => p.swap_bytes = v,
            _ => {}
        }
    }
    p
}

/// Resident bytes of `[start, end)` by `mincore(2)`, 4096 pages at a time.
fn resident_bytes(start: u64, end: u64) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    let mut v = [0u8; 4096];
    let mut total = 0;
    let mut a = start;
    while a < end {
        let len = (end - a).min(v.len() as u64 * page);
        let pages = len.div_ceil(page) as usize;
        // SAFETY: `a` is page-aligned (a mapping's start plus whole pages), `v` has room for
        // `pages` entries; mincore only reads the page tables and fails with ENOMEM on a range
        // that is no longer mapped (a thread exited meanwhile), which counts as nothing.
        let rc = unsafe { libc::mincore(a as *mut libc::c_void, len as usize, v.as_mut_ptr()) };
        if rc == 0 {
            total += v[..pages].iter().filter(|&&b| b & 1 != 0).count() as u64 * page;
        }
        a += len;
    }
    total
}

/// The process's figures: the kernel's counters, then the stacks found in the maps.
fn read_process() -> Result<ProcessMemory, String> {
    let status = read_text(Path::new("/proc/self/status")).ok_or("no /proc/self/status")?;
    let maps = read_text(Path::new("/proc/self/maps")).ok_or("no /proc/self/maps")?;
    let mut p = parse_status(&status);
    let (m, ranges) = parse_smaps_ranges(&maps);
    p.stacks = m.stacks;
    p.mappings = m.mappings;
    p.stack_bytes = ranges.iter().map(|&(s, e)| resident_bytes(s, e)).sum();
    Ok(p)
}

// ---------------------------------------------------------------------------------------------
// The container: the memory cgroup of this process, v1 or v2.

/// The memory cgroup the process is in, and its usage against its limits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ContainerMemory {
    /// 1 or 2.
    pub cgroup_version: u8,
    /// The group's directory.
    pub path: PathBuf,
    /// What the kernel charges the group and kills on: `memory.current` (v2),
    /// `memory.usage_in_bytes` (v1). Page cache and kernel memory included.
    pub usage_bytes: u64,
    /// The hard limit in force, the lowest of the group's and its ancestors' (`memory.max`;
    /// v1 `memory.limit_in_bytes` and `hierarchical_memory_limit`); `None` = unlimited.
    pub limit_bytes: Option<u64>,
    /// v2 `memory.high` (throttling starts there); `None` = unlimited or v1.
    pub high_bytes: Option<u64>,
    /// Highest usage recorded by the kernel (`memory.peak`, v1 `memory.max_usage_in_bytes`).
    pub peak_bytes: Option<u64>,
    /// Anonymous memory charged (`memory.stat` `anon`; v1 `total_rss`).
    pub anon_bytes: Option<u64>,
    /// Page cache charged (`memory.stat` `file`; v1 `total_cache`).
    pub file_bytes: Option<u64>,
    /// Kernel memory charged (`memory.stat` `kernel`, or its parts; v1 `memory.kmem.usage_in_bytes`).
    pub kernel_bytes: Option<u64>,
    /// Times the group hit its limit and the OOM killer was invoked (`memory.events` `oom`;
    /// v1 `memory.failcnt` counts every failed charge instead and is not this).
    pub oom_events: Option<u64>,
    /// Processes of the group the OOM killer killed (`oom_kill`, both versions).
    pub oom_kills: Option<u64>,
}

/// One line of `/proc/self/cgroup`: `id:controllers:path`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CgroupLine<'a> {
    pub id: &'a str,
    pub controllers: &'a str,
    pub path: &'a str,
}

pub(crate) fn parse_proc_cgroup(text: &str) -> Vec<CgroupLine<'_>> {
    text.lines()
        .filter_map(|l| {
            let (id, rest) = l.split_once(':')?;
            let (controllers, path) = rest.split_once(':')?;
            Some(CgroupLine {
                id,
                controllers,
                path,
            })
        })
        .collect()
}

/// One line of `/proc/self/mountinfo`, the fields the cgroup lookup needs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Mount<'a> {
    pub root: String,
    pub mount_point: String,
    pub fs_type: &'a str,
    pub super_options: &'a str,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, etc.).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `id parent major:minor root mount_point options [optional fields...] - fs_type source super_options`
pub(crate) fn parse_mountinfo(text: &str) -> Vec<Mount<'_>> {
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mut f = left.split(' ');
            let root = f.nth(3)?;
            let mount_point = f.next()?;
            let mut r = right.split(' ');
            let fs_type = r.next()?;
            let super_options = r.nth(1).unwrap_or("");
            Some(Mount {
                root: unescape(root),
                mount_point: unescape(mount_point),
                fs_type,
                super_options,
            })
        })
        .collect()
}

/// The directory of the memory cgroup a process is in, from its `/proc/<pid>/cgroup` and
/// `/proc/<pid>/mountinfo`: the v1 hierarchy with the `memory` controller if there is one (a
/// hybrid system mounts v2 too, without the memory controller), else the v2 hierarchy.
pub(crate) fn find_memory_cgroup(cgroup: &str, mountinfo: &str) -> Option<(u8, PathBuf)> {
    let lines = parse_proc_cgroup(cgroup);
    let mounts = parse_mountinfo(mountinfo);
    let join = |m: &Mount<'_>, path: &str| -> PathBuf {
        // The group's path is relative to the hierarchy's root; the mount shows the hierarchy
        // from `root` down (a container mounts its own group as its root).
        let rel = if m.root == "/" {
            path
        } else {
            path.strip_prefix(m.root.as_str()).unwrap_or(path)
        };
        let mut p = PathBuf::from(&m.mount_point);
        for c in rel.split('/').filter(|c| !c.is_empty()) {
            p.push(c);
        }
        p
    };
    if let Some(l) = lines
        .iter()
        .find(|l| l.id != "0" && l.controllers.split(',').any(|c| c == "memory"))
    {
        if let Some(m) = mounts
            .iter()
            .find(|m| m.fs_type == "cgroup" && m.super_options.split(',').any(|o| o == "memory"))
        {
            return Some((1, join(m, l.path)));
        }
    }
    let l = lines
        .iter()
        .find(|l| l.id == "0" && l.controllers.is_empty())?;
    let m = mounts.iter().find(|m| m.fs_type == "cgroup2")?;
    Some((2, join(m, l.path)))
}

/// A value of a `key value` file (`memory.stat`, `memory.events`, `memory.oom_control`).
pub(crate) fn kv(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// A limit file: `max` (v2) or v1's "no limit" (`PAGE_COUNTER_MAX` pages, ≥ 2^62) is `None`.
pub(crate) fn parse_limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    t.parse::<u64>().ok().filter(|&v| v < 1 << 62)
}

/// Reads a cgroup's memory files. `dir` is the group's directory, `mount` the hierarchy's mount
/// point (for the ancestors' v2 limits). `read` reads a file as text (tests pass a fixture).
pub(crate) fn read_container(
    version: u8,
    dir: &Path,
    mount: Option<&Path>,
    read: &dyn Fn(&Path) -> Option<String>,
) -> Result<ContainerMemory, String> {
    let num = |name: &str| read(&dir.join(name)).and_then(|t| t.trim().parse::<u64>().ok());
    let mut c = ContainerMemory {
        cgroup_version: version,
        path: dir.to_path_buf(),
        ..Default::default()
    };
    if version == 2 {
        c.usage_bytes =
            num("memory.current").ok_or_else(|| format!("{}: no memory.current", dir.display()))?;
        // The lowest memory.max on the way up to the hierarchy's root is the one in force.
        let mut d = Some(dir);
        while let Some(g) = d {
            if let Some(l) = read(&g.join("memory.max")).and_then(|t| parse_limit(&t)) {
                c.limit_bytes = Some(c.limit_bytes.map_or(l, |x| x.min(l)));
            }
            if Some(g) == mount {
                break;
            }
            d = g
                .parent()
                .filter(|p| mount.is_some_and(|m| p.starts_with(m)));
        }
        c.high_bytes = read(&dir.join("memory.high")).and_then(|t| parse_limit(&t));
        c.peak_bytes = num("memory.peak");
        if let Some(s) = read(&dir.join("memory.stat")) {
            c.anon_bytes = kv(&s, "anon");
            c.file_bytes = kv(&s, "file");
            // `kernel` since 5.18; before, its parts.
            c.kernel_bytes = kv(&s, "kernel").or_else(|| {
                let parts = ["kernel_stack", "pagetables", "sock", "slab", "percpu"];
                let v: Vec<u64> = parts.iter().filter_map(|k| kv(&s, k)).collect();
                (!v.is_empty()).then(|| v.iter().sum())
            });
        }
        if let Some(e) = read(&dir.join("memory.events")) {
            c.oom_events = kv(&e, "oom");
            c.oom_kills = kv(&e, "oom_kill");
        }
    } else {
        c.usage_bytes = num("memory.usage_in_bytes")
            .ok_or_else(|| format!("{}: no memory.usage_in_bytes", dir.display()))?;
        let own = read(&dir.join("memory.limit_in_bytes")).and_then(|t| parse_limit(&t));
        let stat = read(&dir.join("memory.stat")).unwrap_or_default();
        let hier = kv(&stat, "hierarchical_memory_limit").filter(|&v| v < 1 << 62);
        c.limit_bytes = match (own, hier) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        c.peak_bytes = num("memory.max_usage_in_bytes");
        c.anon_bytes = kv(&stat, "total_rss");
        c.file_bytes = kv(&stat, "total_cache");
        c.kernel_bytes = num("memory.kmem.usage_in_bytes");
        if let Some(o) = read(&dir.join("memory.oom_control")) {
            c.oom_kills = kv(&o, "oom_kill");
            c.oom_events = None;
        }
    }
    Ok(c)
}

fn read_text(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

fn read_self_container() -> Result<ContainerMemory, String> {
    let cg = read_text(Path::new("/proc/self/cgroup")).ok_or("no /proc/self/cgroup")?;
    let mi = read_text(Path::new("/proc/self/mountinfo")).ok_or("no /proc/self/mountinfo")?;
    let (v, dir) = find_memory_cgroup(&cg, &mi)
        .ok_or("no memory cgroup (no v1 memory hierarchy or v2 mount for this process)")?;
    let mount = parse_mountinfo(&mi)
        .into_iter()
        .filter(|m| m.fs_type == "cgroup2" && dir.starts_with(&m.mount_point))
        .map(|m| PathBuf::from(m.mount_point))
        .next();
    read_container(v, &dir, mount.as_deref(), &read_text)
}

/// The memory cgroup directory this process is in (v1 or v2) and its version, for tests and
/// tools that make child groups. Not part of the stable API.
#[doc(hidden)]
pub fn memory_cgroup() -> Option<(u8, PathBuf)> {
    let cg = read_text(Path::new("/proc/self/cgroup"))?;
    let mi = read_text(Path::new("/proc/self/mountinfo"))?;
    find_memory_cgroup(&cg, &mi)
}

// ---------------------------------------------------------------------------------------------
// The report.

/// Where the process's and the container's memory is: see [`memory()`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct MemoryReport {
    /// Heap in use: live bytes the program asked for (exact, [`crate::Stats::inuse_bytes`]).
    pub heap_inuse_bytes: u64,
    /// The profiler's own heap ([`crate::Stats::profiler_bytes`]).
    pub profiler_bytes: u64,
    /// The allocator inside heapsight and what it holds.
    pub allocator: AllocatorMemory,
    /// The process's resident memory (`/proc/self/smaps`), or why it could not be read.
    pub process: Result<ProcessMemory, String>,
    /// The container's memory cgroup, or why there is none to read.
    pub container: Result<ContainerMemory, String>,
    /// How long reading all of it took, in nanoseconds.
    pub read_nanos: u64,
}

/// One row of the table that adds up to RSS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryClass {
    /// A short stable name (`heap_inuse`, `allocator_free`, ...), used for metric labels.
    pub name: &'static str,
    /// What the row is, for people.
    pub label: &'static str,
    /// Bytes; `None` when the source is missing (then "unexplained" holds it).
    pub bytes: Option<u64>,
}

impl MemoryReport {
    /// The allocator's bytes not in use by the program or the profiler: free chunks, per-block
    /// overhead and rounding (the allocator's held bytes minus heap in use minus profiler).
    pub fn allocator_free_bytes(&self) -> Option<u64> {
        let held = *self.allocator.held_bytes.as_ref().ok()?;
        Some(held.saturating_sub(self.heap_inuse_bytes + self.profiler_bytes))
    }

    /// The rows that add up to RSS, in table order; the last is "unexplained": RSS minus every
    /// other row (negative when the allocator holds pages that are not resident, e.g. mapped but
    /// never touched). Empty if the process's memory could not be read.
    pub fn classes(&self) -> Vec<MemoryClass> {
        let Ok(p) = &self.process else {
            return Vec::new();
        };
        vec![
            MemoryClass {
                name: "heap_inuse",
                label: "heap in use (exact)",
                bytes: Some(self.heap_inuse_bytes),
            },
            MemoryClass {
                name: "profiler",
                label: "profiler (heapsight's own heap)",
                bytes: Some(self.profiler_bytes),
            },
            MemoryClass {
                name: "allocator_free",
                label: "allocator: held, not in use",
                bytes: self.allocator_free_bytes(),
            },
            MemoryClass {
                name: "stacks",
                label: "thread stacks",
                bytes: Some(p.stack_bytes),
            },
            MemoryClass {
                name: "file",
                label: "file-backed (code, mapped files)",
                bytes: Some(p.file_bytes),
            },
        ]
    }

    /// RSS minus every class: what no source accounts for (other anonymous mappings, allocator
    /// pages that are held but not resident count negative). `None` without process figures.
    pub fn unexplained_bytes(&self) -> Option<i64> {
        let p = self.process.as_ref().ok()?;
        let sum: u64 = self.classes().iter().filter_map(|c| c.bytes).sum();
        Some(p.rss_bytes as i64 - sum as i64)
    }
}

/// Reads where the memory is: heap in use and the profiler (the exact counters), what the
/// allocator holds, the process's resident memory by kind (`/proc/self/smaps`), and the
/// container's usage and limits (the memory cgroup, v1 or v2). The classes add up to RSS, with
/// what no source explains as its own row. Each missing source says why.
///
/// Reads files and asks the allocator; costs well under a millisecond on a process with a few
/// hundred mappings (README "After an OOM kill" has the measurement). Never called by the
/// allocation path. Runs inside the profiler guard, so its own buffers are the profiler's.
pub fn memory() -> MemoryReport {
    profiler_scope(|| {
        let t0 = Instant::now();
        let s = crate::stats::stats();
        let allocator = read_allocator();
        let process = read_process();
        let container = read_self_container();
        MemoryReport {
            heap_inuse_bytes: s.inuse_bytes,
            profiler_bytes: s.profiler_bytes,
            allocator,
            process,
            container,
            read_nanos: t0.elapsed().as_nanos() as u64,
        }
    })
}

/// Bytes in binary units with three significant figures (`1.50 MiB`).
pub(crate) fn human(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

fn signed_human(b: i64) -> String {
    if b < 0 {
        format!("-{}", human(b.unsigned_abs()))
    } else {
        human(b as u64)
    }
}

impl fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "heapsight memory (pid {}, read in {:.3} ms)",
            std::process::id(),
            self.read_nanos as f64 / 1e6
        )?;
        let a = &self.allocator;
        let known = match a.known {
            AllocatorKnown::Detected => "detected",
            AllocatorKnown::Declared => "declared",
            AllocatorKnown::Unknown => "unknown",
        };
        match &self.process {
            Err(e) => {
                writeln!(
                    f,
                    "  heap in use (exact)   {}",
                    human(self.heap_inuse_bytes)
                )?;
                writeln!(f, "  profiler              {}", human(self.profiler_bytes))?;
                writeln!(f, "  process: {e}")?;
            }
            Ok(p) => {
                let pct = |b: i64| {
                    if p.rss_bytes == 0 {
                        String::new()
                    } else {
                        format!("{:5.1}%", b as f64 * 100.0 / p.rss_bytes as f64)
                    }
                };
                for c in self.classes() {
                    let note = match c.name {
                        "allocator_free" => match &a.held_bytes {
                            Ok(h) => {
                                format!("{} {known}, {}: held {}", a.name, a.source, human(*h))
                            }
                            Err(e) => format!("{} {known}: {e}", a.name),
                        },
                        "stacks" => format!("{} stacks", p.stacks),
                        _ => String::new(),
                    };
                    match c.bytes {
                        Some(b) => writeln!(
                            f,
                            "  {:<34} {:>12} {}  {note}",
                            c.label,
                            human(b),
                            pct(b as i64)
                        )?,
                        None => writeln!(f, "  {:<34} {:>12}         {note}", c.label, "n/a")?,
                    }
                }
                let u = self.unexplained_bytes().unwrap_or(0);
                writeln!(
                    f,
                    "  {:<34} {:>12} {}  anonymous memory no source accounts for",
                    "unexplained",
                    signed_human(u),
                    pct(u)
                )?;
                writeln!(
                    f,
                    "  {:<34} {:>12} {}  (anon {}, swap {}; {} mappings)",
                    "= RSS",
                    human(p.rss_bytes),
                    pct(p.rss_bytes as i64),
                    human(p.anon_bytes),
                    human(p.swap_bytes),
                    p.mappings
                )?;
            }
        }
        match &self.container {
            Err(e) => writeln!(f, "container: {e}"),
            Ok(c) => {
                write!(
                    f,
                    "container (cgroup v{} {}): usage {}",
                    c.cgroup_version,
                    c.path.display(),
                    human(c.usage_bytes)
                )?;
                match c.limit_bytes {
                    Some(l) => write!(
                        f,
                        " of limit {} ({:.1}%)",
                        human(l),
                        c.usage_bytes as f64 * 100.0 / l as f64
                    )?,
                    None => write!(f, ", no limit")?,
                }
                if let Some(h) = c.high_bytes {
                    write!(f, ", high {}", human(h))?;
                }
                writeln!(f)?;
                let opt = |v: Option<u64>| v.map_or("n/a".to_string(), human);
                let cnt = |v: Option<u64>| v.map_or("n/a".to_string(), |v| v.to_string());
                writeln!(
                    f,
                    "  anon {}, file (page cache) {}, kernel {}, peak {}; oom events {}, oom kills {}",
                    opt(c.anon_bytes),
                    opt(c.file_bytes),
                    opt(c.kernel_bytes),
                    opt(c.peak_bytes),
                    cnt(c.oom_events),
                    cnt(c.oom_kills)
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/memory")
            .join(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn smaps_classes() {
        let p = parse_smaps(&fixture("smaps"));
        // The fixture: a file mapping (rss 8 kB), [heap] (rss 132 kB anon), a thread stack under a
        // 4 KiB guard (rss 16 kB), an arena's tail guard that is too large to be a stack guard
        // followed by an anonymous mapping (rss 40 kB), and [stack] (rss 12 kB).
        assert_eq!(p.mappings, 8);
        assert_eq!(p.rss_bytes, (8 + 132 + 16 + 40 + 12 + 4) * 1024);
        assert_eq!(p.anon_bytes, (132 + 16 + 40 + 12) * 1024);
        assert_eq!(p.file_bytes, (8 + 4) * 1024);
        assert_eq!(p.stack_bytes, (16 + 12) * 1024);
        assert_eq!(p.stacks, 2);
        assert_eq!(p.swap_bytes, 4 * 1024);
        let (_, ranges) = parse_smaps_ranges(&fixture("smaps"));
        assert_eq!(
            ranges,
            [
                (0x7f0000001000, 0x7f0000201000),
                (0x7ffd00000000, 0x7ffd00021000)
            ]
        );
    }

    #[test]
    fn rollup_is_the_sum_of_smaps_on_this_machine() {
        let rollup = parse_smaps(&std::fs::read_to_string("/proc/self/smaps_rollup").unwrap());
        let full = parse_smaps(&std::fs::read_to_string("/proc/self/smaps").unwrap());
        assert_eq!(rollup.mappings, 1);
        assert!(full.mappings > 10, "{full:?}");
        assert!(
            full.stacks >= 2,
            "the main stack and this test's thread: {full:?}"
        );
        // The two reads are moments apart in a running test binary: close, not equal.
        let close = |a: u64, b: u64| a.abs_diff(b) <= (a.max(b) / 20).max(256 << 10);
        assert!(
            close(rollup.rss_bytes, full.rss_bytes),
            "{rollup:?} {full:?}"
        );
        assert!(
            close(rollup.anon_bytes, full.anon_bytes),
            "{rollup:?} {full:?}"
        );
    }

    #[test]
    fn status_fixture() {
        let p = parse_status(&fixture("status"));
        assert_eq!(p.rss_bytes, 261_004 * 1024);
        assert_eq!(p.anon_bytes, 257_768 * 1024);
        assert_eq!(p.file_bytes, 3_236 * 1024);
        assert_eq!(p.swap_bytes, 0);
    }

    /// The cheap reader (status, maps, mincore) against the page-table walk of smaps, on this
    /// process: the same RSS, anon and stack figures, moments apart.
    #[test]
    fn cheap_reader_agrees_with_smaps_on_this_machine() {
        let hold = vec![7u8; 8 << 20];
        let fast = read_process().unwrap();
        let full = parse_smaps(&std::fs::read_to_string("/proc/self/smaps").unwrap());
        std::hint::black_box(&hold);
        let close = |a: u64, b: u64| a.abs_diff(b) <= (a.max(b) / 20).max(512 << 10);
        assert!(close(fast.rss_bytes, full.rss_bytes), "{fast:?} {full:?}");
        assert!(close(fast.anon_bytes, full.anon_bytes), "{fast:?} {full:?}");
        assert!(
            close(fast.stack_bytes, full.stack_bytes),
            "{fast:?} {full:?}"
        );
        assert!(
            fast.stack_bytes > 0 && fast.stacks == full.stacks,
            "{fast:?} {full:?}"
        );
    }

    #[test]
    fn cgroup_v1_lookup() {
        let (v, dir) = find_memory_cgroup(&fixture("v1.cgroup"), &fixture("v1.mountinfo")).unwrap();
        assert_eq!(v, 1);
        assert_eq!(
            dir,
            Path::new("/sys/fs/cgroup/memory/process_api/2c161958939021ccd8e1cb26e0dad44e")
        );
    }

    #[test]
    fn cgroup_v2_lookup_strips_the_mount_root() {
        let (v, dir) = find_memory_cgroup(&fixture("v2.cgroup"), &fixture("v2.mountinfo")).unwrap();
        assert_eq!(v, 2);
        // The mount's root is /kubepods.slice, the group /kubepods.slice/pod 1/app.
        assert_eq!(dir, Path::new("/sys/fs/cgroup/pod 1/app"));
        assert_eq!(find_memory_cgroup("0::/\n", ""), None);
    }

    fn dir_reader(base: &'static str) -> impl Fn(&Path) -> Option<String> {
        move |p: &Path| {
            let name = p.strip_prefix(base).ok()?.to_str()?.replace('/', "_");
            let name = if name.is_empty() { "root".into() } else { name };
            std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures/memory")
                    .join(format!("{}_{name}", base.rsplit('/').next().unwrap())),
            )
            .ok()
        }
    }

    #[test]
    fn cgroup_v2_files() {
        let read = dir_reader("/cg/v2");
        let c =
            read_container(2, Path::new("/cg/v2/app"), Some(Path::new("/cg/v2")), &read).unwrap();
        assert_eq!(c.usage_bytes, 210_763_776);
        // The group's own memory.max is `max`, its parent's 256 MiB: the parent's is in force.
        assert_eq!(c.limit_bytes, Some(268_435_456));
        assert_eq!(c.high_bytes, Some(241_172_480));
        assert_eq!(c.peak_bytes, Some(268_435_456));
        assert_eq!(c.anon_bytes, Some(200_278_016));
        assert_eq!(c.file_bytes, Some(8_540_160));
        assert_eq!(c.kernel_bytes, Some(1_945_600));
        assert_eq!(c.oom_events, Some(3));
        assert_eq!(c.oom_kills, Some(1));
    }

    #[test]
    fn cgroup_v1_files() {
        let read = dir_reader("/cg/v1");
        let c = read_container(1, Path::new("/cg/v1/app"), None, &read).unwrap();
        assert_eq!(c.usage_bytes, 134_217_728);
        // limit_in_bytes is 512 MiB, an ancestor's 256 MiB (hierarchical_memory_limit) wins.
        assert_eq!(c.limit_bytes, Some(268_435_456));
        assert_eq!(c.anon_bytes, Some(125_829_120));
        assert_eq!(c.file_bytes, Some(4_194_304));
        assert_eq!(c.kernel_bytes, Some(1_048_576));
        assert_eq!(c.oom_kills, Some(2));
        assert_eq!(c.high_bytes, None);
        assert!(read_container(1, Path::new("/cg/v1/none"), None, &read).is_err());
    }

    #[test]
    fn limits_and_values() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("268435456\n"), Some(268_435_456));
        assert_eq!(kv("oom 1\noom_kill 2\n", "oom_kill"), Some(2));
        assert_eq!(kv("oom 1\noom_kill 2\n", "oom"), Some(1));
        assert_eq!(kv("oom_kill_disable 0\n", "oom_kill"), None);
        assert_eq!(unescape("/a\\040b"), "/a b");
    }

    #[test]
    fn this_machines_cgroup_reads() {
        let Some((v, dir)) = memory_cgroup() else {
            eprintln!("SKIPPED: no memory cgroup on this machine");
            assert!(
                std::env::var_os("CI").is_none(),
                "no memory cgroup under CI"
            );
            return;
        };
        let c = read_self_container().unwrap();
        assert_eq!((c.cgroup_version, &c.path), (v, &dir));
        assert!(c.usage_bytes > 0, "{c:?}");
        assert!(c.anon_bytes.is_some() && c.oom_kills.is_some(), "{c:?}");
    }
}
