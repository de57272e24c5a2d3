//! `/metrics`: the Prometheus text exposition.
use std::fmt::Write as _;

/// Prometheus text exposition of the exact counters and per-tag series.
pub(crate) fn metrics_text() -> String {
    if !crate::thread::is_active() {
        // No series rather than zeros that look like an idle heap.
        return format!(
            "# {}: no heapsight series.\n# HELP heapsight_active Whether heapsight is the global allocator.\n# TYPE heapsight_active gauge\nheapsight_active 0\n",
            crate::stats::NOT_ACTIVE
        );
    }
    let s = crate::stats();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    };
    metric(
        "heapsight_alloc_objects_total",
        "counter",
        "Allocations made (exact).",
        s.alloc_objects,
    );
    metric(
        "heapsight_alloc_bytes_total",
        "counter",
        "Bytes allocated (exact).",
        s.alloc_bytes,
    );
    metric(
        "heapsight_free_objects_total",
        "counter",
        "Blocks freed (exact).",
        s.free_objects,
    );
    metric(
        "heapsight_free_bytes_total",
        "counter",
        "Bytes freed (exact).",
        s.free_bytes,
    );
    metric(
        "heapsight_inuse_objects",
        "gauge",
        "Blocks live now (exact).",
        s.inuse_objects,
    );
    metric(
        "heapsight_inuse_bytes",
        "gauge",
        "Bytes live now (exact).",
        s.inuse_bytes,
    );
    metric(
        "heapsight_peak_inuse_bytes",
        "gauge",
        "Highest live bytes reached.",
        s.peak_inuse_bytes,
    );
    metric(
        "heapsight_sample_rate_bytes",
        "gauge",
        "Mean bytes between samples (0 = off).",
        s.sample_rate,
    );
    metric(
        "heapsight_samples_total",
        "counter",
        "Allocations sampled.",
        s.samples,
    );
    metric(
        "heapsight_profiler_bytes",
        "gauge",
        "Memory held by the profiler itself.",
        s.profiler_bytes,
    );
    #[cfg(feature = "otlp")]
    metric(
        "heapsight_otlp_dropped_profiles_total",
        "counter",
        "OTLP profiles dropped (queue full during an outage, or rejected).",
        crate::otlp::dropped_profiles(),
    );
    let tags = crate::tag_stats();
    if !tags.is_empty() {
        let series: [TagSeries; 4] = [
            (
                "heapsight_tag_alloc_objects_total",
                "counter",
                "Allocations made under the tag (exact).",
                |t| t.alloc_objects,
            ),
            (
                "heapsight_tag_alloc_bytes_total",
                "counter",
                "Bytes allocated under the tag (exact).",
                |t| t.alloc_bytes,
            ),
            (
                "heapsight_tag_inuse_objects",
                "gauge",
                "Live blocks allocated under the tag (sampled estimate).",
                |t| t.inuse_objects,
            ),
            (
                "heapsight_tag_inuse_bytes",
                "gauge",
                "Live bytes allocated under the tag (sampled estimate).",
                |t| t.inuse_bytes,
            ),
        ];
        for (name, kind, help, get) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for t in &tags {
                let _ = writeln!(
                    out,
                    "{name}{{tag=\"{}\"}} {}",
                    escape_label(&t.name),
                    get(t)
                );
            }
        }
    }
    out
}

/// A per-tag Prometheus series: name, type, help text, and the value it reads.
type TagSeries = (
    &'static str,
    &'static str,
    &'static str,
    fn(&crate::TagStats) -> u64,
);

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
