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
