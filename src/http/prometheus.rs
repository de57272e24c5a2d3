//! `/metrics`: the Prometheus text exposition.
use std::fmt::Write as _;

use crate::series::{self, Series};

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
    for m in &series::STATS {
        header(&mut out, m);
        let _ = writeln!(out, "{} {}", m.name, (m.get)(&s));
    }
    #[cfg(feature = "otlp")]
    for m in &series::OTLP {
        header(&mut out, m);
        let _ = writeln!(out, "{} {}", m.name, (m.get)(&()));
    }
    memory_text(&mut out, &crate::memory::memory());
    let tags = crate::tag_stats();
    if !tags.is_empty() {
        for m in &series::TAGS {
            header(&mut out, m);
            for t in &tags {
                let _ = writeln!(
                    out,
                    "{}{{tag=\"{}\"}} {}",
                    m.name,
                    escape_label(&t.name),
                    (m.get)(t)
                );
            }
        }
    }
    out
}

/// The `# HELP` and `# TYPE` lines of a series.
fn header<T>(out: &mut String, m: &Series<T>) {
    let (name, help, kind) = (m.name, m.help, m.kind.name());
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The memory table ([`crate::memory()`]) as gauges, named as Prometheus names bytes:
/// `heapsight_memory_class_bytes{class=...}` for the rows that add up to RSS (`unexplained` may
/// be negative), `heapsight_memory_rss_bytes`, and the container's
/// `heapsight_container_memory_{usage,limit,high}_bytes` and `heapsight_container_oom_kills`
/// when there is a cgroup (a missing source is a missing series, never a zero).
pub(crate) fn memory_text(out: &mut String, m: &crate::MemoryReport) {
    if let Ok(p) = &m.process {
        let _ = writeln!(
            out,
            "# HELP heapsight_memory_class_bytes Resident memory by class; the classes add up to heapsight_memory_rss_bytes (unexplained: what no source accounts for).\n# TYPE heapsight_memory_class_bytes gauge"
        );
        for c in m.classes() {
            if let Some(b) = c.bytes {
                let _ = writeln!(
                    out,
                    "heapsight_memory_class_bytes{{class=\"{}\"}} {b}",
                    c.name
                );
            }
        }
        if let Some(u) = m.unexplained_bytes() {
            let _ = writeln!(
                out,
                "heapsight_memory_class_bytes{{class=\"unexplained\"}} {u}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP heapsight_memory_rss_bytes Resident set size (/proc/self/smaps).\n# TYPE heapsight_memory_rss_bytes gauge\nheapsight_memory_rss_bytes {}",
            p.rss_bytes
        );
    }
    if let Ok(c) = &m.container {
        let gauges = [
            (
                "usage",
                Some(c.usage_bytes),
                "What the kernel charges the memory cgroup and kills on.",
            ),
            (
                "limit",
                c.limit_bytes,
                "The memory cgroup's hard limit in force (absent: unlimited).",
            ),
            (
                "high",
                c.high_bytes,
                "The memory cgroup's memory.high (cgroup v2).",
            ),
        ];
        for (name, v, help) in gauges {
            if let Some(v) = v {
                let _ = writeln!(
                    out,
                    "# HELP heapsight_container_memory_{name}_bytes {help}\n# TYPE heapsight_container_memory_{name}_bytes gauge\nheapsight_container_memory_{name}_bytes {v}"
                );
            }
        }
        if let Some(k) = c.oom_kills {
            let _ = writeln!(
                out,
                "# HELP heapsight_container_oom_kills Processes of the memory cgroup the OOM killer killed.\n# TYPE heapsight_container_oom_kills counter\nheapsight_container_oom_kills {k}"
            );
        }
    }
}

#[cfg(test)]
mod memory_tests {
    #[test]
    fn memory_series_are_well_formed() {
        let mut out = String::new();
        super::memory_text(&mut out, &crate::memory::memory());
        for class in ["heap_inuse", "profiler", "stacks", "file", "unexplained"] {
            assert!(
                out.contains(&format!(
                    "heapsight_memory_class_bytes{{class=\"{class}\"}} "
                )),
                "{out}"
            );
        }
        assert!(out.contains("\nheapsight_memory_rss_bytes "), "{out}");
        for l in out.lines().filter(|l| !l.starts_with('#')) {
            let (name, v) = l.rsplit_once(' ').unwrap();
            assert!(name.starts_with("heapsight_"), "{l}");
            v.parse::<i64>().unwrap_or_else(|e| panic!("{l}: {e}"));
        }
    }
}
