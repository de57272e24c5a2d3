//! From the site table to a [`HeapProfile`]: copy under the lock, then everything else outside it.
//!
//! `profile()` copies the buckets and shares the interned stacks (a few hundred microseconds for
//! 10,000 sites, under the site lock), releases the lock, then symbolizes, trims the allocator
//! frames, merges stacks that become equal after trimming, and computes the estimates. Encoders
//! work from the result and never touch the lock.
//!
//! A bucket has two forms on its way out, each for a reason: the table's slot (its chain, peak
//! and generation fields are the table's business) and [`sites::Bucket`], copied once under the
//! lock and then kept: renumbered to the profile's stacks and estimated in place, it is what every
//! encoder reads. [`Site`], the public per-stack sum of buckets, is a summary, not a copy.
use std::collections::HashMap;
use std::sync::Arc;

use crate::guard::profiler_scope;
use crate::owned::Owned;
use crate::sites::{self, Bucket, Estimates, Frames, FxBuild, OVERFLOW_STACK};
use crate::symbols::{self, Frame, Symbol, Symbols};
use crate::sync::{self, Locks};
use crate::Stats;

/// A snapshot of the sampled heap: per call site, unbiased estimates of what was allocated and
/// what is still live, with symbolized stacks. Returned by [`crate::profile`].
pub struct HeapProfile {
    pub(crate) time_nanos: i64,
    /// Nonzero for a [`HeapProfile::delta`]: the time between the two snapshots.
    pub(crate) duration_nanos: i64,
    pub(crate) rate: u64,
    pub(crate) stats: Stats,
    /// Trimmed, deduplicated stacks, leaf first. `stacks[0]` is the overflow pseudo-site.
    pub(crate) stacks: Owned<Vec<Arc<[Frame]>>>,
    /// The table's buckets, `stack` an index into `stacks`, heaviest in-use bytes first; the
    /// overflow bucket is one of them.
    pub(crate) buckets: Owned<Vec<Bucket>>,
    pub(crate) sites: Owned<Vec<Site>>,
    pub(crate) symbolized: bool,
    pub(crate) live_samples: usize,
    pub(crate) overflow_samples: u64,
    pub(crate) symbol_cache_bytes: usize,
    /// What symbolization lacked (e.g. a stripped binary), one line per file; written as pprof
    /// comments and in the text trailer.
    pub(crate) symbol_notes: Owned<Vec<String>>,
    /// Lines every pprof file and text trailer of this profile carries (the memory table of a
    /// triggered dump), after the symbolization notes.
    pub(crate) notes: Owned<Vec<String>>,
    /// Tag names by tag id (0 = untagged); filled by the tagging API, empty until then.
    pub(crate) tag_names: Owned<Vec<String>>,
    /// Each tag's key/value labels by tag id, sorted by key (see `tags`); may be shorter than
    /// `tag_names`, and a tag without an entry is the single label `tag` = its name.
    pub(crate) tag_labels: Owned<Vec<Vec<(String, String)>>>,
    /// Lifetime bins of freed samples, one row per entry of `stacks` (see `sites::LIFE_BINS`).
    /// Sorted by stack; only stacks with freed samples have a row.
    pub(crate) lifetimes: Owned<Vec<(usize, sites::LifeRow)>>,
    /// Sites split by (stack, tag); empty when no bucket carries a tag (then `sites` is the split).
    pub(crate) sites_by_tag: Owned<Vec<Site>>,
}

/// One call site: a distinct (trimmed) stack, with the four estimates Go's heap profile has.
///
/// Borrowed from its [`HeapProfile`] (not `Clone`): the profile's memory is the profiler's own and
/// is freed with it, uncounted.
#[derive(Debug)]
#[non_exhaustive]
pub struct Site {
    /// Estimated allocations made at this site since start-up.
    pub alloc_objects: u64,
    /// Estimated bytes allocated at this site since start-up.
    pub alloc_bytes: u64,
    /// Estimated blocks from this site still live now.
    pub inuse_objects: u64,
    /// Estimated bytes from this site still live now.
    pub inuse_bytes: u64,
    /// Raw samples behind the estimates (a rough measure of their precision: the relative
    /// standard error of a count estimate is about `1/sqrt(samples)`).
    pub samples: u64,
    frames: Arc<[Frame]>,
    /// True for the pseudo-site that collects samples once the site cap is reached.
    pub overflow: bool,
    /// Index into `HeapProfile::stacks`.
    pub(crate) stack: usize,
    tag: Option<Arc<str>>,
}

impl Site {
    /// The stack, leaf first, allocator frames trimmed. Empty for the overflow pseudo-site.
    pub fn frames(&self) -> &[Frame] {
        &self.frames
    }

    /// The tag these samples were taken under, for sites from [`HeapProfile::sites_by_tag`];
    /// `None` for untagged samples and for the per-stack sites of [`HeapProfile::sites`] (which
    /// add up every tag).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }
}

impl HeapProfile {
    /// Call sites, heaviest in-use bytes first.
    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    /// The sample rate in force when the profile was taken (bytes; 0 = off).
    pub fn sample_rate(&self) -> u64 {
        self.rate
    }

    /// The exact counters at the time of the snapshot.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Sampled blocks live at the time of the snapshot.
    pub fn live_samples(&self) -> usize {
        self.live_samples
    }

    /// Samples that went to the overflow site because the site cap was reached.
    pub fn overflow_samples(&self) -> u64 {
        self.overflow_samples
    }

    /// Bytes held by the process-wide symbol cache after this snapshot.
    pub fn symbol_cache_bytes(&self) -> usize {
        self.symbol_cache_bytes
    }

    /// Wall-clock time of the snapshot, nanoseconds since the Unix epoch.
    pub fn time_nanos(&self) -> i64 {
        self.time_nanos
    }

    /// The lifetime row of profile stack `stack`, if any of its samples was freed.
    pub(crate) fn lifetime_row(&self, stack: usize) -> Option<&sites::LifeRow> {
        self.lifetimes
            .binary_search_by_key(&stack, |r| r.0)
            .ok()
            .map(|i| &self.lifetimes[i].1)
    }

    /// Call sites split by tag: one entry per (stack, tag) pair, [`Site::tag`] set, heaviest
    /// in-use bytes first. The same as [`Self::sites`] when no sample carries a tag.
    pub fn sites_by_tag(&self) -> &[Site] {
        if self.sites_by_tag.is_empty() {
            &self.sites
        } else {
            &self.sites_by_tag
        }
    }

    /// The name of a tag id, if the tagging API named it (0 is untagged and has none).
    pub(crate) fn tag_name(&self, id: u32) -> Option<&str> {
        if id == 0 {
            return None;
        }
        self.tag_names.get(id as usize).map(String::as_str)
    }
}

/// Takes a profile. `symbolize: false` keeps raw addresses (no trimming: the pprof encoder then
/// tells pprof which frames to drop once it has symbolized them offline).
pub(crate) fn take(symbolize: bool) -> HeapProfile {
    let stats = crate::stats();
    profiler_scope(|| {
        let raw = sites::copy();
        build(raw, symbolize, stats, unix_nanos())
    })
}

/// The profile as of the sampled-heap high-water mark (see `sites::Peak`), or an empty profile
/// if nothing was sampled yet.
pub(crate) fn take_peak(symbolize: bool) -> HeapProfile {
    let stats = crate::stats();
    profiler_scope(|| match sites::copy_at_peak() {
        Some((raw, _inuse, at_ns)) => {
            // The capture has a monotonic time stamp; place it on the wall clock.
            let ago = crate::clock::now_ns().saturating_sub(at_ns) as i64;
            build(raw, symbolize, stats, unix_nanos() - ago)
        }
        None => build(sites::TableCopy::default(), symbolize, stats, unix_nanos()),
    })
}

/// Everything after the lock: symbolize, trim, merge stacks, estimate, build sites.
fn build(raw: sites::TableCopy, symbolize: bool, stats: Stats, time_nanos: i64) -> HeapProfile {
    let (stacks, remap, cache_bytes) = trimmed_stacks(&raw.stacks, symbolize);
    // Lifetime rows follow the stacks they belong to (summed where trimming merged stacks).
    let lifetimes = merge_rows(
        raw.lifetimes
            .iter()
            .map(|(id, row)| (remap[*id as usize], row)),
    );
    // The table's copies become the profile's buckets: renumbered, estimated, in place.
    let mut buckets = raw.buckets;
    for b in &mut buckets {
        b.stack = remap[b.stack];
        b.est = sites::estimates(b.size, b.rate, b.allocs, b.frees);
    }
    if raw.overflow_sums.samples > 0 {
        buckets.push(raw.overflow_sums.bucket());
    }
    let mut p = HeapProfile {
        time_nanos,
        duration_nanos: 0,
        rate: crate::sampler::rate(),
        stats,
        stacks: stacks.into(),
        buckets: buckets.into(),
        sites: Owned::default(),
        symbolized: symbolize,
        live_samples: raw.live_samples,
        overflow_samples: raw.overflow_samples,
        symbol_cache_bytes: if symbolize { symbols::cache_bytes() } else { 0 } + cache_bytes,
        symbol_notes: if symbolize {
            symbols::notes()
        } else {
            Vec::new()
        }
        .into(),
        notes: Owned::default(),
        tag_names: Owned::new(crate::tags::names().iter().map(|n| n.to_string()).collect()),
        tag_labels: crate::tags::label_sets(),
        lifetimes: lifetimes.into(),
        sites_by_tag: Owned::default(),
    };
    p.assemble();
    p
}

impl HeapProfile {
    /// Adds lines written as pprof comments and in the text trailer, after what symbolization
    /// lacked (the memory table of a triggered dump). Inside the guard: the vector is the
    /// profiler's.
    pub(crate) fn add_notes(&mut self, lines: impl Iterator<Item = String>) {
        crate::guard::profiler_scope(|| self.notes.extend(lines));
    }

    /// Derives `sites` from `buckets` (merged per stack) and puts both in display order. Must
    /// run inside the profiler guard (it replaces the profiler's own vectors).
    pub(crate) fn assemble(&mut self) {
        let names: Vec<Arc<str>> = self
            .tag_names
            .iter()
            .map(|n| Arc::from(n.as_str()))
            .collect();
        let sites = merge_sites(&self.buckets, &self.stacks, None);
        let by_tag = if self.buckets.iter().any(|r| r.tag != 0) {
            merge_sites(&self.buckets, &self.stacks, Some(&names))
        } else {
            Vec::new()
        };
        self.buckets.sort_by(|a, b| {
            b.est
                .inuse_bytes
                .total_cmp(&a.est.inuse_bytes)
                .then(b.est.alloc_bytes.total_cmp(&a.est.alloc_bytes))
        });
        *self.sites = sites;
        *self.sites_by_tag = by_tag;
    }
}

/// Merges buckets into sites: per stack, or per (stack, tag) when `names` is given (the tag
/// names, index = id). Heaviest in-use bytes first; ties in stack order.
fn merge_sites(
    buckets: &[Bucket],
    stacks: &[Arc<[Frame]>],
    names: Option<&[Arc<str>]>,
) -> Vec<Site> {
    let mut merged: HashMap<(usize, u32), (Estimates, u64), FxBuild> = HashMap::default();
    for r in buckets {
        let tag = if names.is_some() { r.tag } else { 0 };
        let e = merged.entry((r.stack, tag)).or_default();
        e.0.add(&r.est);
        e.1 += r.allocs;
    }
    // Key order first, so ties below keep stack order whatever the hash order was.
    let mut merged: Vec<_> = merged.into_iter().collect();
    merged.sort_unstable_by_key(|(k, _)| *k);
    let mut sites: Vec<Site> = merged
        .into_iter()
        .map(|((stack, tag), (e, n))| Site {
            alloc_objects: e.alloc_objects.round() as u64,
            alloc_bytes: e.alloc_bytes.round() as u64,
            inuse_objects: e.inuse_objects.round() as u64,
            inuse_bytes: e.inuse_bytes.round() as u64,
            samples: n,
            frames: stacks[stack].clone(),
            overflow: stack == 0,
            stack,
            tag: match (tag, names) {
                (0, _) | (_, None) => None,
                (t, Some(names)) => names.get(t as usize).cloned(),
            },
        })
        .collect();
    sites.sort_by(|a, b| {
        b.inuse_bytes
            .cmp(&a.inuse_bytes)
            .then(b.alloc_bytes.cmp(&a.alloc_bytes))
    });
    sites
}

/// Sparse lifetime rows keyed by profile stack, sorted, rows of the same stack summed.
pub(crate) fn merge_rows<'a>(
    rows: impl Iterator<Item = (usize, &'a sites::LifeRow)>,
) -> Vec<(usize, sites::LifeRow)> {
    let mut out: Vec<(usize, sites::LifeRow)> = rows.map(|(s, r)| (s, *r)).collect();
    out.sort_unstable_by_key(|r| r.0);
    out.dedup_by(|later, kept| {
        if later.0 != kept.0 {
            return false;
        }
        for (k, l) in kept.1.iter_mut().zip(later.1.iter()) {
            *k = k.saturating_add(*l);
        }
        true
    });
    out
}

/// Trimmed, symbolized stacks by raw stack, kept across profiles.
///
/// A raw stack is immutable while interned, so each is symbolized, trimmed and canonicalized once
/// while it stays in the table; a profile then finds it by the address of its shared frames
/// (`Frames`) in O(1). The entry keeps a clone of that `Arc`, so the address cannot be
/// reused by another stack while the entry exists: a stack id the table reclaimed and gave to new
/// frames comes with a new `Arc`, hence a new entry. After each profile the entries of stacks no
/// longer in the table are dropped, and the canonical stacks nothing refers to any more, so the
/// cache follows the table (bounded by it) however many stacks come and go over weeks. This is
/// what keeps a dump of 10,000 sites to milliseconds once the symbols are cached (the first dump
/// pays the symbolization). Memory: one `Arc<[Frame]>` per distinct trimmed stack (shared with
/// every profile that shows it) and a few words per raw stack; counted in
/// `HeapProfile::symbol_cache_bytes`.
struct StackCache {
    max_depth: usize,
    /// Raw frames' address -> its entry.
    by_raw: HashMap<usize, RawEntry, FxBuild>,
    canon: std::collections::HashSet<AddrKey, FxBuild>,
    /// Profiles built with this cache.
    round: u64,
    bytes: usize,
}

struct RawEntry {
    /// The raw frames, kept alive so that their address is not reused while the entry exists.
    _frames: Frames,
    /// The canonical trimmed stack.
    canon: Arc<[Frame]>,
    /// The last profile that saw these frames in the table.
    round: u64,
}

/// A trimmed stack compared by the addresses it keeps (a partially trimmed leaf frame is a
/// function of its address, so addresses identify the stack).
#[derive(Clone)]
pub(crate) struct AddrKey(pub(crate) Arc<[Frame]>);

impl PartialEq for AddrKey {
    fn eq(&self, o: &Self) -> bool {
        self.0.len() == o.0.len()
            && self
                .0
                .iter()
                .zip(o.0.iter())
                .all(|(a, b)| a.address == b.address)
    }
}
impl Eq for AddrKey {}
impl std::hash::Hash for AddrKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write_usize(self.0.len());
        for f in self.0.iter() {
            h.write_usize(f.address);
        }
    }
}

/// One cache for symbolized, one for raw-address profiles. Locks taken only at dump time, and
/// held across `fork()` by the fork handlers (see `sync`), like the symbol cache: a child forked while another thread builds a profile must not inherit them held.
static STACK_CACHES: Locks<Option<StackCache>, 2> =
    Locks::new(&sync::STACK_CACHE_LOCKS, [None, None]);

/// Bytes a cache entry for a raw stack costs beyond its canonical stack (hash-table entry).
const RAW_ENTRY_BYTES: usize = 48;

fn canon_bytes(c: &AddrKey) -> usize {
    64 + c.0.len() * core::mem::size_of::<Frame>()
}

/// Profile stacks (index 0 = the frame-less site) for the raw stacks of a snapshot, the map from
/// raw stack id to profile stack index, and the stack cache's size. Must run inside the profiler
/// guard. The stack-cache lock (never a site lock) is taken to see what is new and to add it,
/// never while symbolizing (a `fork()` waits on it): the new stacks' addresses are resolved with
/// the lock released, then it is taken again; two dumps racing may both resolve the same
/// addresses, and the second one's work is dropped.
fn trimmed_stacks(
    raw: &[Option<Frames>],
    symbolize: bool,
) -> (Vec<Arc<[Frame]>>, Vec<usize>, usize) {
    let max_depth = crate::stack::MAX_DEPTH.load(std::sync::atomic::Ordering::Relaxed);
    let key = |s: &Frames| s.as_ptr() as usize;
    let mut resolved: HashMap<usize, Resolved, FxBuild> = HashMap::default();
    let mut guard = loop {
        let mut guard = STACK_CACHES.lock(symbolize as usize);
        if guard.as_ref().is_some_and(|c| c.max_depth != max_depth) {
            *guard = None;
        }
        let cache = guard.get_or_insert_with(|| StackCache {
            max_depth,
            by_raw: HashMap::default(),
            canon: Default::default(),
            round: 0,
            bytes: 0,
        });
        let new: Vec<Frames> = raw
            .iter()
            .skip(1)
            .flatten()
            .filter(|s| !cache.by_raw.contains_key(&key(s)))
            .cloned()
            .collect();
        let unresolved = symbolize
            && new
                .iter()
                .flat_map(|s| s.iter())
                .any(|a| !resolved.contains_key(a));
        if !unresolved {
            cache.round += 1;
            if !new.is_empty() {
                add_stacks(cache, &new, symbolize, &resolved);
            }
            break guard;
        }
        drop(guard);
        resolve_addresses(&new, &mut resolved);
    };
    let Some(cache) = guard.as_mut() else {
        return (vec![Arc::from(Vec::new())], vec![0; raw.len()], 0);
    };
    let round = cache.round;
    let mut stacks: Vec<Arc<[Frame]>> = vec![Arc::from(Vec::new())];
    // Canonical stack (by address) -> profile index.
    let mut local: HashMap<usize, usize, FxBuild> = HashMap::default();
    let remap = raw
        .iter()
        .enumerate()
        .map(|(id, s)| {
            let s = match s {
                Some(s) if id as u32 != OVERFLOW_STACK => s,
                _ => return 0,
            };
            let Some(e) = cache.by_raw.get_mut(&key(s)) else {
                return 0;
            };
            e.round = round;
            let c = &e.canon;
            *local.entry(c.as_ptr() as usize).or_insert_with(|| {
                stacks.push(c.clone());
                stacks.len() - 1
            })
        })
        .collect();
    // Drop what the table no longer holds: raw stacks not in this snapshot, then canonical
    // stacks only the cache refers to. (Skipped while the cache holds nothing stale, which is
    // every profile of a table that reclaimed nothing.)
    if cache.by_raw.len() > raw.iter().skip(1).flatten().count() {
        cache.by_raw.retain(|_, e| e.round == round);
        cache.canon.retain(|c| Arc::strong_count(&c.0) > 1);
        cache.bytes = cache.canon.iter().map(canon_bytes).sum::<usize>()
            + cache.by_raw.len() * RAW_ENTRY_BYTES;
    }
    (stacks, remap, cache.bytes)
}

/// An address's symbols and the index of its last allocator symbol.
type Resolved = (Symbols, Option<usize>);

/// Symbolizes every distinct address of `stacks` not yet in `resolved`, noting for each where its
/// allocator symbols end (`last_allocator_symbol`), so trimming a stack is a scan of integers.
/// Takes no stack-cache lock.
fn resolve_addresses(stacks: &[Frames], resolved: &mut HashMap<usize, Resolved, FxBuild>) {
    let mut seen: std::collections::HashSet<usize, FxBuild> = Default::default();
    let addrs: Vec<usize> = stacks
        .iter()
        .flat_map(|s| s.iter().copied())
        .filter(|a| !resolved.contains_key(a) && seen.insert(*a))
        .collect();
    drop(seen);
    let syms = symbols::resolve_all(&addrs);
    resolved.extend(addrs.into_iter().zip(syms).map(|(a, syms)| {
        let cut = last_allocator_symbol(&syms);
        (a, (syms, cut))
    }));
}

/// Trims and canonicalizes `new` raw stacks, not yet in `cache`; with `symbolize`, the symbols
/// of their addresses are in `symbols_of`.
fn add_stacks(
    cache: &mut StackCache,
    new: &[Frames],
    symbolize: bool,
    symbols_of: &HashMap<usize, Resolved, FxBuild>,
) {
    let empty = Symbols::default();
    for s in new {
        let (start, partial) = if symbolize {
            trim_point(s, |a| {
                symbols_of.get(&a).and_then(|x| x.1.map(|j| (j, x.0.len())))
            })
        } else {
            (0, None)
        };
        let end = s.len().min(start + cache.max_depth);
        let mut frames: Vec<Frame> = s[start..end]
            .iter()
            .map(|&a| Frame {
                address: a,
                symbols: symbols_of
                    .get(&a)
                    .map_or_else(|| empty.share(), |x| x.0.share()),
            })
            .collect();
        if let (Some(j), Some(f)) = (partial, frames.first_mut()) {
            f.symbols = Symbols::new(f.symbols[j + 1..].to_vec());
        }
        let key = AddrKey(frames.into());
        let c = match cache.canon.get(&key) {
            Some(c) => c.0.clone(),
            None => {
                cache.bytes += canon_bytes(&key);
                let c = key.0.clone();
                cache.canon.insert(key);
                c
            }
        };
        let entry = RawEntry {
            _frames: s.clone(),
            canon: c,
            round: cache.round,
        };
        cache.by_raw.insert(s.as_ptr() as usize, entry);
        cache.bytes += RAW_ENTRY_BYTES;
    }
}

/// Index of the innermost-last allocator symbol of one frame (see `symbols::is_allocator_frame`).
fn last_allocator_symbol(syms: &[Symbol]) -> Option<usize> {
    syms.iter()
        .rposition(|s| symbols::is_allocator_frame(&s.function))
}

/// Where the program's part of a stack starts once the leaf-side allocator frames are dropped,
/// symbol by symbol so that an inlined growth function sharing a return address with
/// `alloc::alloc::realloc` is kept. Looks no further than the entry frames captured for this.
/// `cut_of(address)` gives `(last allocator symbol index, symbol count)` of a frame. Returns the
/// first kept frame and, if that frame keeps only its symbols after index `j`, `Some(j)`.
fn trim_point(
    addrs: &[usize],
    cut_of: impl Fn(usize) -> Option<(usize, usize)>,
) -> (usize, Option<usize>) {
    let window = addrs.len().min(crate::stack::ENTRY_FRAMES + 8);
    // The last frame in the window with an allocator symbol, and that symbol's position.
    let cut = addrs[..window]
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, &a)| cut_of(a).map(|c| (i, c)));
    match cut {
        None => (0, None),
        Some((i, (j, n))) if j + 1 == n => (i + 1, None),
        Some((i, (j, _))) => (i, Some(j)),
    }
}

/// [`trim_point`] applied to a stack of symbolized frames.
#[cfg(test)]
fn trim_allocator_frames(frames: &mut Vec<Frame>) {
    let addrs: Vec<usize> = (0..frames.len()).collect();
    let (start, partial) = trim_point(&addrs, |i| {
        last_allocator_symbol(&frames[i].symbols).map(|j| (j, frames[i].symbols.len()))
    });
    frames.drain(..start);
    if let Some(j) = partial {
        frames[0].symbols = Symbols::new(frames[0].symbols[j + 1..].to_vec());
    }
}

fn unix_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// A frame at `addr` whose (inlined first) functions are `names`, for tests of the layers above.
#[cfg(test)]
pub(crate) fn frame(addr: usize, names: &[&str]) -> Frame {
    Frame {
        address: addr,
        symbols: Symbols::new(
            names
                .iter()
                .map(|n| Symbol {
                    function: n.to_string(),
                    file: None,
                    line: None,
                })
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_entry_frames_and_keeps_growth_frames() {
        let mut f = vec![
            frame(1, &["heapsight::alloc::take_sample"]),
            frame(
                2,
                &[
                    "<heapsight::alloc::HeapSight<A> as core::alloc::global::GlobalAlloc>::realloc",
                    "__rust_realloc",
                ],
            ),
            frame(3, &["alloc::alloc::realloc", "alloc::raw_vec::finish_grow"]),
            frame(4, &["alloc::raw_vec::RawVec<T,A>::grow_one"]),
            frame(5, &["app::build"]),
        ];
        trim_allocator_frames(&mut f);
        let names: Vec<_> = f
            .iter()
            .map(|f| f.function().unwrap().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "alloc::raw_vec::finish_grow",
                "alloc::raw_vec::RawVec<T,A>::grow_one",
                "app::build"
            ]
        );
        assert_eq!(f[0].address, 3);
        assert_eq!(f[0].symbols.len(), 1);
    }
}
