//! The metric series heapsight publishes, listed once: the Prometheus text of `/metrics`
//! (`http::prometheus`) and the `metrics` facade (`crate::metrics`) both walk these lists, so
//! the two always carry the same names, types and values.
use crate::{Stats, TagStats};

/// Prometheus metric type.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) enum Kind {
    /// A total since start-up.
    Counter,
    /// A value now.
    Gauge,
}

impl Kind {
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// One series: its name, type, help text, and how to read it from `T`.
pub(crate) struct Series<T> {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub get: fn(&T) -> u64,
}

const fn series<T>(
    name: &'static str,
    kind: Kind,
    help: &'static str,
    get: fn(&T) -> u64,
) -> Series<T> {
    Series {
        name,
        kind,
        help,
        get,
    }
}

/// The process-wide series, read from [`crate::stats`].
pub(crate) const STATS: [Series<Stats>; 14] = [
    series(
        "heapsight_alloc_objects_total",
        Kind::Counter,
        "Allocations made (exact).",
        |s| s.alloc_objects,
    ),
    series(
        "heapsight_alloc_bytes_total",
        Kind::Counter,
        "Bytes allocated (exact).",
        |s| s.alloc_bytes,
    ),
    series(
        "heapsight_free_objects_total",
        Kind::Counter,
        "Blocks freed (exact).",
        |s| s.free_objects,
    ),
    series(
        "heapsight_free_bytes_total",
        Kind::Counter,
        "Bytes freed (exact).",
        |s| s.free_bytes,
    ),
    series(
        "heapsight_inuse_objects",
        Kind::Gauge,
        "Blocks live now (exact).",
        |s| s.inuse_objects,
    ),
    series(
        "heapsight_inuse_bytes",
        Kind::Gauge,
        "Bytes live now (exact).",
        |s| s.inuse_bytes,
    ),
    series(
        "heapsight_peak_inuse_bytes",
        Kind::Gauge,
        "Highest live bytes reached.",
        |s| s.peak_inuse_bytes,
    ),
    series(
        "heapsight_sample_rate_bytes",
        Kind::Gauge,
        "Mean bytes between samples (0 = off).",
        |s| s.sample_rate,
    ),
    series(
        "heapsight_samples_total",
        Kind::Counter,
        "Allocations sampled.",
        |s| s.samples,
    ),
    series(
        "heapsight_profiler_bytes",
        Kind::Gauge,
        "Memory held by the profiler itself.",
        |s| s.profiler_bytes,
    ),
    series(
        "heapsight_tag_names_refused_total",
        Kind::Counter,
        "Tag interning refused because the tag table was full, each attempt (allocations then count under <overflow>).",
        |s| s.tag_names_refused,
    ),
    series(
        "heapsight_sample_padding_bytes",
        Kind::Gauge,
        "Alignment asked of the inner allocator for live sampled blocks (estimated padding; not in profiler_bytes).",
        |s| s.sample_padding_bytes,
    ),
    series(
        "heapsight_lost_samples_total",
        Kind::Counter,
        "Samples dropped because the profiler could not allocate memory to record them.",
        |s| s.lost_samples,
    ),
    series(
        "heapsight_unattributed_samples_total",
        Kind::Counter,
        "Samples counted in the frame-less site because the site table could not allocate room for their stack.",
        |s| s.unattributed_samples,
    ),
];

/// The OTLP exporter's series (feature `otlp`), read from the exporter itself.
#[cfg(feature = "otlp")]
pub(crate) const OTLP: [Series<()>; 1] = [series(
    "heapsight_otlp_dropped_profiles_total",
    Kind::Counter,
    "OTLP profiles dropped (queue full during an outage, or rejected).",
    |_| crate::otlp::dropped_profiles(),
)];

/// The per-tag series, one value per tag (label `tag`), read from [`crate::tag_stats`].
pub(crate) const TAGS: [Series<TagStats>; 4] = [
    series(
        "heapsight_tag_alloc_objects_total",
        Kind::Counter,
        "Allocations made under the tag (exact).",
        |t| t.alloc_objects,
    ),
    series(
        "heapsight_tag_alloc_bytes_total",
        Kind::Counter,
        "Bytes allocated under the tag (exact).",
        |t| t.alloc_bytes,
    ),
    series(
        "heapsight_tag_inuse_objects",
        Kind::Gauge,
        "Live blocks allocated under the tag (sampled estimate).",
        |t| t.inuse_objects,
    ),
    series(
        "heapsight_tag_inuse_bytes",
        Kind::Gauge,
        "Live bytes allocated under the tag (sampled estimate).",
        |t| t.inuse_bytes,
    ),
];
