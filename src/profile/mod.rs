//! Encoders: pure functions from a [`HeapProfile`] snapshot to bytes that existing tools read.
//!
//! | method | format | read by |
//! |---|---|---|
//! | [`HeapProfile::write_pprof`] | gzipped `perftools.profiles.Profile`, Go's heap layout | `go tool pprof`, Pyroscope, Parca, Grafana |
//! | [`HeapProfile::write_pprof_allocs`] | the same, `default_sample_type = alloc_space` (Go's `allocs`) | same |
//! | [`HeapProfile::write_text`] | Go's legacy `debug=1` heap text | `go tool pprof`, humans |
//! | [`HeapProfile::write_folded`] | collapsed stacks, one `a;b;c value` line per site | `inferno-flamegraph`, `flamegraph.pl`, speedscope |
//! | `HeapProfile::write_flamegraph` (feature `flamegraph`) | SVG | a browser |
//! | [`HeapProfile::top`] | a table of the heaviest sites | humans |
//!
//! The encoders never take the site lock: they read the snapshot only. Everything they allocate
//! is allocated inside the profiler guard (the profiler's own memory, uncounted). The output is
//! built in a buffer inside the guard and handed to the caller's writer *outside* it, so a writer
//! that allocates (a `Vec<u8>`, a `BufWriter`) allocates as the program, and its later frees
//! match allocations that were counted.
use std::io::{self, Write};

use crate::guard::profiler_scope;
use crate::owned::Owned;
use crate::sites::{Bucket, Estimates};
use crate::snapshot::HeapProfile;

mod delta;
mod dist;
mod folded;
#[cfg(test)]
mod golden_tests;
pub(crate) mod maps;
mod pprof;
pub(crate) mod program;
pub(crate) mod proto;
mod text;
mod top;

pub use dist::Distribution;
#[cfg(feature = "otlp")]
pub(crate) use folded::SampleFrames;
#[cfg(any(feature = "otlp", feature = "http"))]
pub(crate) use pprof::display_name;
pub use top::Top;
#[cfg(feature = "http")]
pub(crate) use top::{name_site, Bytes};

/// Which of the four values of a heap profile to show (pprof's `-sample_index`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SampleType {
    /// Objects allocated since start-up (`alloc_objects`).
    AllocObjects,
    /// Bytes allocated since start-up (`alloc_space`).
    AllocSpace,
    /// Objects live now (`inuse_objects`).
    InuseObjects,
    /// Bytes live now (`inuse_space`, what pprof shows by default).
    InuseSpace,
}

impl SampleType {
    /// All four, in the order of a Go heap profile's `sample_type`.
    pub const ALL: [SampleType; 4] = [
        SampleType::AllocObjects,
        SampleType::AllocSpace,
        SampleType::InuseObjects,
        SampleType::InuseSpace,
    ];

    /// pprof's name: `alloc_objects`, `alloc_space`, `inuse_objects`, `inuse_space`.
    pub fn name(self) -> &'static str {
        match self {
            SampleType::AllocObjects => "alloc_objects",
            SampleType::AllocSpace => "alloc_space",
            SampleType::InuseObjects => "inuse_objects",
            SampleType::InuseSpace => "inuse_space",
        }
    }

    /// pprof's unit: `count` or `bytes`.
    pub fn unit(self) -> &'static str {
        match self {
            SampleType::AllocObjects | SampleType::InuseObjects => "count",
            SampleType::AllocSpace | SampleType::InuseSpace => "bytes",
        }
    }

    pub(crate) fn of(self, e: &Estimates) -> f64 {
        match self {
            SampleType::AllocObjects => e.alloc_objects,
            SampleType::AllocSpace => e.alloc_bytes,
            SampleType::InuseObjects => e.inuse_objects,
            SampleType::InuseSpace => e.inuse_bytes,
        }
    }

    /// The samples behind a bucket's estimate of this type: all its samples for `alloc_*`, the
    /// live ones for `inuse_*`.
    pub(crate) fn samples_of(self, r: &Bucket) -> u64 {
        match self {
            SampleType::AllocObjects | SampleType::AllocSpace => r.allocs,
            SampleType::InuseObjects | SampleType::InuseSpace => r.allocs - r.frees.min(r.allocs),
        }
    }

    /// The variance of a bucket's estimate of this type, estimated from its own samples.
    ///
    /// A bucket has one size `s` and one rate `R`, so each of its blocks is sampled alone with
    /// probability `p = 1 - exp(-s/R)`, and each of its `n` samples stands for the same `w = E/n`
    /// (`E` the estimate). Of `N` blocks, `n ~ Binomial(N, p)`, so `Var(E) = w² N p (1 - p)`, and
    /// `n` estimates `N p` without bias: `Var(E) ≈ n w² (1 - p) = E² (1 - p) / n`. For small blocks
    /// (`p` small) that is the Poisson `E²/n`, a relative error of `1/√n`; a block larger than the
    /// rate several times over is sampled every time and its estimate is exact. The overflow
    /// bucket mixes sizes: `E²/n`, the Poisson bound.
    pub(crate) fn variance_of(self, r: &Bucket) -> f64 {
        let n = self.samples_of(r);
        let e = self.of(&r.est);
        if n == 0 || e == 0.0 {
            return 0.0;
        }
        let q = if r.size > 0 && r.rate > 0 {
            (-(r.size as f64) / r.rate as f64).exp()
        } else {
            1.0
        };
        e * e * q / n as f64
    }
}

impl core::fmt::Display for SampleType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// A sample type name that is not one of the four.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownSampleType;

impl core::fmt::Display for UnknownSampleType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(
            "not a heap sample type (alloc_objects, alloc_space, inuse_objects, inuse_space)",
        )
    }
}

impl std::error::Error for UnknownSampleType {}

impl core::str::FromStr for SampleType {
    type Err = UnknownSampleType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SampleType::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or(UnknownSampleType)
    }
}

/// Runs `encode` inside the profiler guard into a buffer of the profiler's own, and writes the
/// buffer to `w` outside the guard (see the module docs for why).
fn encode_then_write(
    mut w: impl Write,
    encode: impl FnOnce(&mut Vec<u8>) -> io::Result<()>,
) -> io::Result<()> {
    let buf = profiler_scope(|| {
        let mut buf = Owned::new(Vec::new());
        encode(&mut buf).map(|()| buf)
    })?;
    w.write_all(&buf).and_then(|()| w.flush())
}

impl HeapProfile {
    /// Writes the profile as Go's `heap` profile: a gzip-compressed `perftools.profiles.Profile`
    /// with the four sample types `alloc_objects/count, alloc_space/bytes, inuse_objects/count,
    /// inuse_space/bytes`, values already unbiased, a numeric `bytes` label with the allocation
    /// size per sample, and the process's mappings with build IDs. `go tool pprof` opens it on
    /// `inuse_space`.
    ///
    /// The whole output is built in memory first (the profiler's own memory), then written.
    pub fn write_pprof(&self, w: impl Write) -> io::Result<()> {
        encode_then_write(w, |buf| {
            pprof::write_gzipped(self, None, &maps::read_self(), buf)
        })
    }

    /// The same data as [`write_pprof`](Self::write_pprof) with `default_sample_type =
    /// alloc_space`, as Go's `allocs` profile: pprof opens it on bytes allocated since start-up.
    pub fn write_pprof_allocs(&self, w: impl Write) -> io::Result<()> {
        encode_then_write(w, |buf| {
            pprof::write_gzipped(self, Some(SampleType::AllocSpace), &maps::read_self(), buf)
        })
    }

    /// Writes Go's legacy `debug=1` heap text: `heap profile: I: IB [A: AB] @ heap/<2*rate>`, one
    /// line of raw sample counts per (stack, size) with `#` frame lines, a trailer with the exact
    /// counters and per-site size and lifetime quantiles, and the memory map (so `go tool pprof
    /// heap.txt` can find the binary). See `profile/text.rs` for how buckets taken at another
    /// rate than the header's are written.
    pub fn write_text(&self, w: impl Write) -> io::Result<()> {
        encode_then_write(w, |buf| text::write(self, Some(&maps::read_self()), buf))
    }

    /// Writes collapsed stacks (`root;...;leaf value`, one line per site, values of `ty`,
    /// unbiased and rounded; zero lines omitted), the input of `inferno-flamegraph` and
    /// `flamegraph.pl`.
    pub fn write_folded(&self, w: impl Write, ty: SampleType) -> io::Result<()> {
        encode_then_write(w, |buf| folded::write(self, ty, buf))
    }

    /// Renders the folded stacks of `ty` as an SVG flamegraph with `inferno`.
    #[cfg(feature = "flamegraph")]
    #[cfg_attr(docsrs, doc(cfg(feature = "flamegraph")))]
    pub fn write_flamegraph(&self, w: impl Write, ty: SampleType) -> io::Result<()> {
        encode_then_write(w, |buf| folded::write_flamegraph(self, ty, buf))
    }

    /// The `n` heaviest sites by `ty`, as a table (`Display`): value, share, allocation size and
    /// lifetime quantiles, the first frame of the program and the growth frame under it.
    pub fn top(&self, n: usize, ty: SampleType) -> Top {
        profiler_scope(|| top::build(self, n, ty))
    }

    /// What happened between `earlier` and this profile: `alloc_*` count what was allocated in
    /// between, `inuse_*` what is live as of this (the later) profile, and lifetimes are those of
    /// the blocks freed in between. Records are matched by stack addresses, tag, size and rate,
    /// so take both profiles the same way (both symbolized, or both not). This is what Go's
    /// `/debug/pprof/heap?seconds=N` serves.
    pub fn delta(&self, earlier: &HeapProfile) -> HeapProfile {
        profiler_scope(|| delta::delta(self, earlier))
    }

    /// The size and lifetime distributions of one site of this profile.
    pub fn distribution(&self, site: &crate::Site) -> Distribution {
        profiler_scope(|| dist::of_stack(self, site.stack))
    }
}
