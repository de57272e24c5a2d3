//! Per-site distributions: allocation sizes and lifetimes, as pre-sized `hdrhistogram`s.
//!
//! Built at dump time, outside the hook and outside the site lock, from data the snapshot already
//! has:
//!
//! * **Sizes** come from the buckets: every bucket is one exact size, so the site's size
//!   distribution is each size weighted by its *estimated* allocation count. Weighting by the
//!   estimate, not by raw samples, matters: a block is sampled with probability growing with its
//!   size, so raw samples over-represent large allocations.
//! * **Lifetimes** (allocation to free) come from the per-stack half-octave bins the site table
//!   fills when a sampled block is freed (see `sites::LIFE_BINS`). Each bin is recorded at its
//!   geometric midpoint, so quantiles are good to about ±20%. These are raw sampled blocks: within
//!   a site whose sizes vary, larger blocks are over-represented.
//!
//! The histograms are created with `Histogram::new_with_bounds` and auto-resize off, so recording
//! never allocates; they live only as long as the [`Distribution`] (the profiler's own memory,
//! freed inside the guard).
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::owned::Owned;
use crate::sites::{life_bin_low, LIFE_BINS};
use crate::snapshot::HeapProfile;

/// Largest trackable size or lifetime (ns): 2^48 (256 TiB, 78 hours).
const HIGH: u64 = 1 << 48;
/// Two significant digits: values within 1%; about 40 KiB of counters per histogram.
const SIGFIG: u8 = 2;

/// Size and lifetime distributions of one site, from [`HeapProfile::distribution`].
pub struct Distribution {
    /// `(sizes, lifetimes)`, built inside the profiler guard.
    h: Owned<(Histogram<u64>, Histogram<u64>)>,
}

impl Distribution {
    /// The allocation size at quantile `q` (0..=1) of the site's allocations, `None` if unknown
    /// (no estimated allocations, or only the mixed-size overflow bucket).
    pub fn size_quantile(&self, q: f64) -> Option<u64> {
        let s = &self.h.0;
        // The bucket's lowest value: exact for powers of two and for sizes below 256.
        (!s.is_empty()).then(|| s.lowest_equivalent(s.value_at_quantile(q)))
    }

    /// The lifetime (allocation to free) at quantile `q` of the site's freed sampled blocks,
    /// `None` if none was freed yet.
    pub fn lifetime_quantile(&self, q: f64) -> Option<Duration> {
        let l = &self.h.1;
        (!l.is_empty()).then(|| Duration::from_nanos(l.median_equivalent(l.value_at_quantile(q))))
    }

    /// How many freed sampled blocks the lifetimes are based on.
    pub fn freed_samples(&self) -> u64 {
        self.h.1.len()
    }
}

fn histogram() -> Histogram<u64> {
    let mut h = Histogram::new_with_bounds(1, HIGH, SIGFIG).expect("valid constant bounds");
    h.auto(false);
    h
}

/// The representative value of lifetime bin `b`: the geometric midpoint of its bounds.
fn bin_mid(b: usize) -> u64 {
    let lo = life_bin_low(b) as f64;
    let hi = if b + 1 < LIFE_BINS {
        life_bin_low(b + 1) as f64
    } else {
        lo * 4.0 / 3.0
    };
    (lo * hi).sqrt() as u64
}

/// The distributions of profile stack `stack`. Must run inside the profiler guard.
pub(crate) fn of_stack(p: &HeapProfile, stack: usize) -> Distribution {
    of_stacks(p, &[stack])
}

/// The distributions of several profile stacks together. Must run inside the profiler guard.
pub(crate) fn of_stacks(p: &HeapProfile, stacks: &[usize]) -> Distribution {
    let mut sizes = histogram();
    let mut lifetimes = histogram();
    for r in p
        .buckets
        .iter()
        .filter(|r| stacks.contains(&r.stack) && r.size > 0)
    {
        let n = r.est.alloc_objects.round() as u64;
        // Sizes beyond HIGH are clamped to it (cannot happen on a 48-bit address space).
        let _ = sizes.record_n(r.size.clamp(1, HIGH), n);
    }
    for &stack in stacks {
        if let Some(row) = p.lifetime_row(stack) {
            for (b, &n) in row.iter().enumerate() {
                if n > 0 {
                    let _ = lifetimes.record_n(bin_mid(b).clamp(1, HIGH), n as u64);
                }
            }
        }
    }
    Distribution {
        h: Owned::new((sizes, lifetimes)),
    }
}

/// `value` or `-`, for tables.
pub(crate) fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// A duration in the largest unit that keeps it above 1, or `-`.
pub(crate) fn opt_duration(v: Option<Duration>) -> String {
    v.map_or_else(|| "-".to_string(), human_duration)
}

pub(crate) fn human_duration(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    let (v, unit) = if ns < 1e3 {
        (ns, "ns")
    } else if ns < 1e6 {
        (ns / 1e3, "us")
    } else if ns < 1e9 {
        (ns / 1e6, "ms")
    } else if ns < 60e9 {
        (ns / 1e9, "s")
    } else if ns < 3600e9 {
        (ns / 60e9, "min")
    } else {
        (ns / 3600e9, "h")
    };
    if v < 10.0 {
        format!("{v:.1}{unit}")
    } else {
        format!("{v:.0}{unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sites::life_bin;

    #[test]
    fn lifetime_bins_round_trip_and_midpoints_stay_inside() {
        // Naive oracle for the bin bounds: the bin of x is the largest b with low(b) <= x.
        let lows: Vec<u64> = (0..LIFE_BINS).map(life_bin_low).collect();
        assert!(lows.windows(2).all(|w| w[0] < w[1]));
        for x in [
            300u64,
            384,
            511,
            512,
            767,
            768,
            1000,
            1_000_000,
            123_456_789,
            3_600_000_000_000,
            1 << 60,
        ] {
            let want = lows.iter().rposition(|&l| l <= x).unwrap_or(0);
            assert_eq!(life_bin(x), want, "{x}");
        }
        for b in 0..LIFE_BINS {
            assert_eq!(life_bin(life_bin_low(b)), b);
            let m = bin_mid(b);
            assert_eq!(life_bin(m), b, "midpoint of bin {b}");
        }
    }

    #[test]
    fn histograms_are_presized_and_do_not_grow() {
        let mut h = histogram();
        let before = h.distinct_values();
        h.record_n(HIGH, 3).unwrap();
        assert!(
            h.record(HIGH * 4).is_err(),
            "out of range must fail, not resize"
        );
        assert_eq!(h.distinct_values(), before);
    }
}
