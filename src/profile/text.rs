//! Go's legacy `debug=1` heap text (`runtime/pprof/pprof.go` `writeHeapInternal`), which
//! google/pprof parses in `profile/legacy_profile.go` (`parseHeap`).
//!
//! ```text
//! heap profile: 2: 8192 [2: 8193] @ heap/1048576
//! 2: 8192 [2: 8192] @ 0x55d0c1a0 0x55d0c2b4
//! #    0x55d0c19f    app::build    src/main.rs:12
//! ```
//!
//! (the separators on `#` lines are tabs, as Go writes them).
//!
//! # Raw counts, and how pprof unbiases them
//!
//! Unlike the proto format, the text format carries *raw sample counts*: pprof reads the rate from
//! the header (`heap/N` means rate N/2: early C++ heap profilers wrote twice the rate, so Go
//! does too) and unbiases each line itself, as `scaleHeapSample`: with `avg = bytes / count`, both
//! numbers are multiplied by `1 / (1 - exp(-avg / rate))`, then truncated to integers.
//!
//! So for each line we write the counts `c` and `c × size` for which pprof's scaling gives back our
//! estimate `E` (objects): `c = E × p(size, R)` with `p = 1 - exp(-size/R)`, rounded. For a bucket
//! sampled at the header rate `R`, `E = n / p(size, R)` and this is exactly the raw count `n`:
//! pprof then computes the same unbiased value we do (up to its truncation). Records taken at
//! another rate (the rate changed at run time) get the count that stands for the same estimate at
//! rate `R`; it is rounded to an integer, so pprof's value for that line can differ from ours by
//! up to half a sample's weight (and a nonzero estimate is written as at least one sample). The
//! header uses the rate most samples were taken at, so as many lines as possible are exact. The
//! overflow bucket of mixed sizes uses its average size.
//!
//! In-use and allocated counts are converted separately (`i: ib [a: ab]`). Lines are per
//! (stack, size) like Go's buckets: buckets that differ only in tag or rate are merged first.
//! The header totals are sums of the raw counts, and, as Go does, `AB` is written as `AB + 1`
//! when it equals `IB` so that pprof does not mistake the profile for a two-column one.
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, Write};

use super::dist;
use super::maps::Mapping;
use super::top::Plus;
use super::SampleType;
use crate::sites::{Estimates, FxBuild};
use crate::snapshot::HeapProfile;

/// Sites listed with their size and lifetime quantiles in the trailer.
const TRAILER_SITES: usize = 20;

/// Raw counts `(count, bytes)` that pprof's `scaleHeapSample` at `rate` turns into `objects`
/// objects of `avg` bytes each (see the module docs).
pub(crate) fn raw_counts(objects: f64, avg: f64, rate: u64) -> (u64, u64) {
    if objects <= 0.0 || avg <= 0.0 {
        return (0, 0);
    }
    let p = if rate <= 1 {
        1.0
    } else {
        -(-avg / rate as f64).exp_m1()
    };
    let c = (objects * p).round().max(1.0);
    (c as u64, (c * avg).round() as u64)
}

/// The rate most raw samples were taken at (ties: the larger rate), or the profile's rate.
fn header_rate(p: &HeapProfile) -> u64 {
    let mut by_rate: HashMap<u64, u64, FxBuild> = HashMap::default();
    for r in p.buckets.iter().filter(|r| r.rate > 0) {
        *by_rate.entry(r.rate).or_default() += r.allocs;
    }
    by_rate
        .into_iter()
        .max_by_key(|&(rate, n)| (n, rate))
        .map_or(p.rate, |(rate, _)| rate)
}

/// One output line: Go's bucket, keyed by stack and size (ours merged over tag and rate), with its
/// raw counts.
struct GoBucket {
    stack: usize,
    inuse: (u64, u64),
    alloc: (u64, u64),
}

pub(crate) fn write(
    p: &HeapProfile,
    maps: Option<&[Mapping]>,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let rate = header_rate(p);
    // Merge buckets per (stack, size), in first-seen order (buckets are sorted by in-use bytes).
    let mut index: HashMap<(usize, u64), usize, FxBuild> = HashMap::default();
    let mut merged: Vec<((usize, u64), Estimates)> = Vec::new();
    for r in &p.buckets {
        let i = *index.entry((r.stack, r.size)).or_insert_with(|| {
            merged.push(((r.stack, r.size), Estimates::default()));
            merged.len() - 1
        });
        merged[i].1.add(&r.est);
    }
    let mut lines: Vec<GoBucket> = merged
        .iter()
        .map(|&((stack, size), e)| {
            let avg = |objects: f64, bytes: f64| {
                if size > 0 {
                    size as f64
                } else {
                    bytes / objects.max(1e-300)
                }
            };
            GoBucket {
                stack,
                inuse: raw_counts(e.inuse_objects, avg(e.inuse_objects, e.inuse_bytes), rate),
                alloc: raw_counts(e.alloc_objects, avg(e.alloc_objects, e.alloc_bytes), rate),
            }
        })
        .collect();
    // Go sorts by in-use bytes; then allocated bytes, for a stable order.
    lines.sort_by(|a, b| b.inuse.1.cmp(&a.inuse.1).then(b.alloc.1.cmp(&a.alloc.1)));

    let sum = |f: fn(&GoBucket) -> u64| lines.iter().map(f).sum::<u64>();
    let (i, ib, a, mut ab) = (
        sum(|l| l.inuse.0),
        sum(|l| l.inuse.1),
        sum(|l| l.alloc.0),
        sum(|l| l.alloc.1),
    );
    if ab == ib {
        ab += 1;
    }
    let mut s = String::new();
    let views = super::folded::SampleFrames::new(p);
    let _ = writeln!(s, "heap profile: {i}: {ib} [{a}: {ab}] @ heap/{}", 2 * rate);
    for l in &lines {
        let _ = write!(
            s,
            "{}: {} [{}: {}] @",
            l.inuse.0, l.inuse.1, l.alloc.0, l.alloc.1
        );
        // The program view, as pprof's: the overflow pseudo-site keeps no address.
        let frames: &[crate::symbols::Frame] = if l.stack == 0 {
            &[]
        } else {
            views.of(p, l.stack)
        };
        for f in frames.iter() {
            let _ = write!(s, " {:#x}", f.address);
        }
        s.push('\n');
        for f in frames.iter() {
            let pc = f.address.wrapping_sub(1);
            if f.symbols.is_empty() {
                let _ = writeln!(s, "#\t{pc:#x}");
            }
            for sym in f.symbols.iter() {
                let _ = write!(s, "#\t{pc:#x}\t{}", sym.function);
                if let Some(file) = &sym.file {
                    let _ = write!(s, "\t{file}:{}", sym.line.unwrap_or(0));
                }
                s.push('\n');
            }
        }
        s.push('\n');
    }
    write_trailer(p, rate, &mut s);
    out.write_all(s.as_bytes())?;
    if let Some(maps) = maps {
        // The gperftools sentinel: pprof reads the memory map after it and can then find the
        // binary and symbolize the addresses (Go's text has no map, so pprof cannot).
        let mut m = String::from("\nMAPPED_LIBRARIES:\n");
        super::maps::write_proc_maps(maps, &mut m);
        out.write_all(m.as_bytes())?;
    }
    Ok(())
}

fn write_trailer(p: &HeapProfile, rate: u64, s: &mut String) {
    let st = p.stats;
    let _ = writeln!(s, "\n# heapsight.Stats (exact counters at the snapshot)");
    for (k, v) in [
        ("AllocObjects", st.alloc_objects),
        ("AllocBytes", st.alloc_bytes),
        ("FreeObjects", st.free_objects),
        ("FreeBytes", st.free_bytes),
        ("InuseObjects", st.inuse_objects),
        ("InuseBytes", st.inuse_bytes),
        ("PeakInuseBytes", st.peak_inuse_bytes),
        ("SampleRate", st.sample_rate),
        ("HeaderRate", rate),
        ("Samples", st.samples),
        ("LiveSamples", p.live_samples as u64),
        ("OverflowSamples", p.overflow_samples),
        ("ProfilerBytes", st.profiler_bytes),
        ("SymbolCacheBytes", p.symbol_cache_bytes as u64),
        ("ThreadSlots", st.thread_slots),
        ("DwarfCaptures", st.dwarf_captures),
    ] {
        let _ = writeln!(s, "# {k} = {v}");
    }
    for n in &p.symbol_notes {
        let _ = writeln!(s, "# Symbolization: {n}");
    }
    for n in p.notes.iter() {
        let _ = writeln!(s, "# {n}");
    }
    let _ = writeln!(
        s,
        "#\n# heapsight.Sites (top {TRAILER_SITES} by in-use bytes; allocation sizes weighted by \
         estimated count; lifetimes of freed sampled blocks, +-20%; estimates +- one standard \
         error from the samples)"
    );
    let sigma = |ty: SampleType| -> Vec<f64> {
        let mut v = vec![0f64; p.stacks.len()];
        for r in p.buckets.iter() {
            v[r.stack] += ty.variance_of(r);
        }
        v.into_iter().map(f64::sqrt).collect()
    };
    let (inuse_sigma, alloc_sigma) = (sigma(SampleType::InuseSpace), sigma(SampleType::AllocSpace));
    for site in p.sites().iter().take(TRAILER_SITES) {
        let d = dist::of_stack(p, site.stack);
        let leaf = site.frames().first();
        // Named like `top` does: the first program frame, else the leaf.
        let (user, _) = super::top::name_site(site.frames());
        let name = match (&user, site.overflow) {
            (_, true) => super::folded::OVERFLOW_NAME,
            (Some(u), _) => u.function.as_str(),
            (None, _) => leaf.and_then(|f| f.function()).unwrap_or("?"),
        };
        let _ = writeln!(
            s,
            "# {:#x} {}: inuse_space {} {} alloc_space {} {} samples {} size p50 {} p99 {} lifetime p50 {} p99 {} (n={})",
            leaf.map_or(0, |f| f.address),
            name,
            site.inuse_bytes,
            Plus(site.inuse_bytes as f64, inuse_sigma[site.stack]),
            site.alloc_bytes,
            Plus(site.alloc_bytes as f64, alloc_sigma[site.stack]),
            site.samples,
            dist::opt(d.size_quantile(0.5)),
            dist::opt(d.size_quantile(0.99)),
            dist::opt_duration(d.lifetime_quantile(0.5)),
            dist::opt_duration(d.lifetime_quantile(0.99)),
            d.freed_samples(),
        );
        drop(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler;

    /// pprof's `scaleHeapSample`, transcribed from google/pprof `legacy_profile.go`.
    fn pprof_scale(count: i64, size: i64, rate: i64) -> (i64, i64) {
        if count == 0 || size == 0 {
            return (0, 0);
        }
        if rate <= 1 {
            return (count, size);
        }
        let avg = size as f64 / count as f64;
        let scale = 1.0 / (1.0 - (-avg / rate as f64).exp());
        ((count as f64 * scale) as i64, (size as f64 * scale) as i64)
    }

    #[test]
    fn raw_counts_at_the_header_rate_are_the_sample_counts() {
        for (n, size, rate) in [
            (1u64, 4096u64, 524288u64),
            (17, 1024, 524288),
            (3, 1 << 20, 524288),
            (500, 24, 4096),
        ] {
            let est = n as f64 * sampler::weight(size, rate);
            assert_eq!(
                raw_counts(est, size as f64, rate),
                (n, n * size),
                "{n} x {size} @ {rate}"
            );
            // and pprof turns them back into our estimate (it truncates; we round).
            let (c, b) = pprof_scale(n as i64, (n * size) as i64, rate as i64);
            assert!((c as f64 - est).abs() <= 1.0, "{c} vs {est}");
            assert!((b as f64 - est * size as f64).abs() <= size as f64, "{b}");
        }
    }

    #[test]
    fn other_rates_are_converted_to_the_same_estimate() {
        // 40 samples of 512 B at rate 64 KiB, written under a 512 KiB header.
        let est = 40.0 * sampler::weight(512, 65536);
        let (c, b) = raw_counts(est, 512.0, 524288);
        let (o, _) = pprof_scale(c as i64, b as i64, 524288);
        // Within one sample's weight at the header rate.
        assert!(
            (o as f64 - est).abs() <= sampler::weight(512, 524288),
            "{o} vs {est}"
        );
        // Rate 1 or 0 headers: pprof does not scale, so the counts are the estimates.
        assert_eq!(raw_counts(12.4, 8.0, 1), (12, 96));
        assert_eq!(raw_counts(12.4, 8.0, 0), (12, 96));
        assert_eq!(raw_counts(0.0, 8.0, 1), (0, 0));
        // A tiny nonzero estimate keeps its line.
        assert_eq!(raw_counts(0.2, 8.0, 1), (1, 8));
    }
}
