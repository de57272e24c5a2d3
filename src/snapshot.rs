//! From the site table to a [`HeapProfile`]: copy under the lock, then everything else outside it.
//!
//! `profile()` copies the buckets and shares the interned stacks (a few hundred microseconds for
//! 10,000 sites, under the spin lock), releases the lock, then symbolizes, trims the allocator
//! frames, merges stacks that become equal after trimming, and computes the estimates. Encoders
//! work from the result and never touch the lock.
use std::collections::HashMap;
use std::sync::Arc;

use crate::guard::profiler_scope;
use crate::sampler;
use crate::sites::{self, FxBuild, OVERFLOW_STACK};
use crate::symbols::{self, Frame, Symbol};
use crate::Stats;

/// Unbiased estimates for one record: raw sample counts times `1 / p(size, rate)`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Estimates {
    pub alloc_objects: f64,
    pub alloc_bytes: f64,
    pub inuse_objects: f64,
    pub inuse_bytes: f64,
}

impl Estimates {
    fn add(&mut self, o: &Estimates) {
        self.alloc_objects += o.alloc_objects;
        self.alloc_bytes += o.alloc_bytes;
        self.inuse_objects += o.inuse_objects;
        self.inuse_bytes += o.inuse_bytes;
    }
}

/// One sampled bucket: all samples of one stack, tag, size and rate. `size == 0 && rate == 0`
/// marks the overflow bucket of mixed sizes.
#[derive(Clone, Debug)]
pub(crate) struct Record {
    /// Index into `HeapProfile::stacks`.
    pub stack: usize,
    pub tag: u32,
    pub size: u64,
    pub rate: u64,
    /// Raw samples taken, and of those freed.
    pub allocs: u64,
    pub frees: u64,
    pub est: Estimates,
}

/// A snapshot of the sampled heap: per call site, unbiased estimates of what was allocated and
/// what is still live, with symbolized stacks. Returned by [`crate::profile`].
pub struct HeapProfile {
    pub(crate) time_nanos: i64,
    pub(crate) rate: u64,
    pub(crate) stats: Stats,
    /// Trimmed, deduplicated stacks, leaf first. `stacks[0]` is the overflow pseudo-site.
    pub(crate) stacks: Vec<Arc<[Frame]>>,
    pub(crate) records: Vec<Record>,
    sites: Vec<Site>,
    pub(crate) symbolized: bool,
    pub(crate) live_samples: usize,
    pub(crate) overflow_samples: u64,
    pub(crate) symbol_cache_bytes: usize,
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
}

impl Site {
    /// The stack, leaf first, allocator frames trimmed. Empty for the overflow pseudo-site.
    pub fn frames(&self) -> &[Frame] {
        &self.frames
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
}

impl Drop for HeapProfile {
    fn drop(&mut self) {
        // Everything in here was allocated inside the profiler guard; free it there too, so the
        // program's counters never see the profiler's memory come or go.
        profiler_scope(|| {
            drop(core::mem::take(&mut self.stacks));
            drop(core::mem::take(&mut self.records));
            drop(core::mem::take(&mut self.sites));
        })
    }
}

pub(crate) fn estimates(size: u64, rate: u64, allocs: u64, frees: u64) -> Estimates {
    let w = sampler::weight(size, rate);
    let live = allocs.saturating_sub(frees) as f64;
    Estimates {
        alloc_objects: allocs as f64 * w,
        alloc_bytes: allocs as f64 * w * size as f64,
        inuse_objects: live * w,
        inuse_bytes: live * w * size as f64,
    }
}

/// Takes a profile. `symbolize: false` keeps raw addresses (no trimming: the pprof encoder then
/// tells pprof which frames to drop once it has symbolized them offline).
pub(crate) fn take(symbolize: bool) -> HeapProfile {
    let stats = crate::stats();
    profiler_scope(|| {
        let raw = sites::snapshot();
        // Resolve every distinct address once (outside the site lock).
        let mut symbols_of: HashMap<usize, Arc<[Symbol]>, FxBuild> = HashMap::default();
        if symbolize {
            let mut addrs: Vec<usize> = raw.stacks.iter().flat_map(|s| s.iter().copied()).collect();
            addrs.sort_unstable();
            addrs.dedup();
            let resolved = symbols::resolve_all(&addrs);
            symbols_of.extend(addrs.into_iter().zip(resolved));
        }
        let empty: Arc<[Symbol]> = Arc::from(Vec::new());
        // Trim and dedupe stacks: raw stack id -> profile stack index.
        let mut index: HashMap<Vec<usize>, usize, FxBuild> = HashMap::default();
        let mut stacks: Vec<Arc<[Frame]>> = vec![Arc::from(Vec::new())];
        let max_depth = crate::alloc::MAX_DEPTH.load(std::sync::atomic::Ordering::Relaxed);
        let remap: Vec<usize> = raw
            .stacks
            .iter()
            .enumerate()
            .map(|(id, s)| {
                if id as u32 == OVERFLOW_STACK {
                    return 0;
                }
                let mut frames: Vec<Frame> = s
                    .iter()
                    .map(|&a| Frame { address: a, symbols: symbols_of.get(&a).cloned().unwrap_or_else(|| empty.clone()) })
                    .collect();
                if symbolize {
                    trim_allocator_frames(&mut frames);
                }
                frames.truncate(max_depth);
                let key: Vec<usize> = frames.iter().map(|f| f.address).collect();
                *index.entry(key).or_insert_with(|| {
                    stacks.push(frames.into());
                    stacks.len() - 1
                })
            })
            .collect();
        let mut records: Vec<Record> = raw
            .buckets
            .iter()
            .map(|b| Record {
                stack: remap[b.key.stack as usize],
                tag: b.key.tag,
                size: b.key.size,
                rate: b.key.rate,
                allocs: b.allocs,
                frees: b.frees,
                est: estimates(b.key.size, b.key.rate, b.allocs, b.frees),
            })
            .collect();
        if raw.mixed.samples > 0 {
            records.push(Record {
                stack: 0,
                tag: 0,
                size: 0,
                rate: 0,
                allocs: raw.mixed.samples,
                frees: raw.mixed.frees,
                est: Estimates {
                    alloc_objects: raw.mixed.alloc_objects,
                    alloc_bytes: raw.mixed.alloc_bytes,
                    inuse_objects: raw.mixed.inuse_objects(),
                    inuse_bytes: raw.mixed.inuse_bytes(),
                },
            });
        }
        // Sites: records merged per stack.
        let mut per_stack: Vec<(Estimates, u64)> = vec![(Estimates::default(), 0); stacks.len()];
        let mut used = vec![false; stacks.len()];
        for r in &records {
            per_stack[r.stack].0.add(&r.est);
            per_stack[r.stack].1 += r.allocs;
            used[r.stack] = true;
        }
        let mut site_list: Vec<Site> = per_stack
            .iter()
            .enumerate()
            .filter(|(i, _)| used[*i])
            .map(|(i, (e, n))| Site {
                alloc_objects: e.alloc_objects.round() as u64,
                alloc_bytes: e.alloc_bytes.round() as u64,
                inuse_objects: e.inuse_objects.round() as u64,
                inuse_bytes: e.inuse_bytes.round() as u64,
                samples: *n,
                frames: stacks[i].clone(),
                overflow: i == 0,
            })
            .collect();
        site_list.sort_by(|a, b| b.inuse_bytes.cmp(&a.inuse_bytes).then(b.alloc_bytes.cmp(&a.alloc_bytes)));
        records.sort_by(|a, b| b.est.inuse_bytes.total_cmp(&a.est.inuse_bytes));
        HeapProfile {
            time_nanos: unix_nanos(),
            rate: crate::sample_rate(),
            stats,
            stacks,
            records,
            sites: site_list,
            symbolized: symbolize,
            live_samples: raw.live_samples,
            overflow_samples: raw.overflow_samples,
            symbol_cache_bytes: if symbolize { symbols::cache_bytes() } else { 0 },
        }
    })
}

/// Drops the leaf-side frames that belong to the allocator (see `symbols::is_allocator_frame`),
/// symbol by symbol so that an inlined growth function sharing a return address with
/// `alloc::alloc::realloc` is kept. Looks no further than the entry frames captured for this.
fn trim_allocator_frames(frames: &mut Vec<Frame>) {
    let window = frames.len().min(crate::stack::ENTRY_FRAMES + 8);
    // Position (frame, symbol index counted innermost first) of the last allocator symbol.
    let mut cut: Option<(usize, usize)> = None;
    for (i, f) in frames[..window].iter().enumerate() {
        for (j, s) in f.symbols.iter().enumerate() {
            if symbols::is_allocator_frame(&s.function) {
                cut = Some((i, j));
            }
        }
    }
    let Some((i, j)) = cut else { return };
    let keep_in_frame: Vec<Symbol> = frames[i].symbols[j + 1..].to_vec();
    if keep_in_frame.is_empty() {
        frames.drain(..=i);
    } else {
        frames[i].symbols = keep_in_frame.into();
        frames.drain(..i);
    }
}

fn unix_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(addr: usize, names: &[&str]) -> Frame {
        Frame {
            address: addr,
            symbols: names
                .iter()
                .map(|n| Symbol { function: n.to_string(), file: None, line: None })
                .collect::<Vec<_>>()
                .into(),
        }
    }

    #[test]
    fn trims_entry_frames_and_keeps_growth_frames() {
        let mut f = vec![
            frame(1, &["heapsight::alloc::take_sample"]),
            frame(2, &["<heapsight::alloc::HeapSight<A> as core::alloc::global::GlobalAlloc>::realloc", "__rust_realloc"]),
            frame(3, &["alloc::alloc::realloc", "alloc::raw_vec::finish_grow"]),
            frame(4, &["alloc::raw_vec::RawVec<T,A>::grow_one"]),
            frame(5, &["app::build"]),
        ];
        trim_allocator_frames(&mut f);
        let names: Vec<_> = f.iter().map(|f| f.function().unwrap().to_string()).collect();
        assert_eq!(names, ["alloc::raw_vec::finish_grow", "alloc::raw_vec::RawVec<T,A>::grow_one", "app::build"]);
        assert_eq!(f[0].address, 3);
        assert_eq!(f[0].symbols.len(), 1);
    }

    #[test]
    fn unbiased_estimates_per_bucket() {
        // One sample of 1 MiB at 512 KiB: p = 1 - e^-2.
        let e = estimates(1 << 20, 1 << 19, 1, 0);
        let w = 1.0 / (1.0 - (-2f64).exp());
        assert!((e.alloc_objects - w).abs() < 1e-12);
        assert!((e.inuse_bytes - w * (1 << 20) as f64).abs() < 1e-6);
        let freed = estimates(1 << 20, 1 << 19, 3, 3);
        assert_eq!(freed.inuse_objects, 0.0);
        assert_eq!(freed.inuse_bytes, 0.0);
    }
}
