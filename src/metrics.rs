//! Feature `metrics`: publishes the counters through the `metrics` crate facade, so an existing
//! recorder (e.g. `metrics-exporter-prometheus`) shows them without the `http` feature.
//!
//! A background thread copies [`crate::stats`] and [`crate::tag_stats`] into the recorder every
//! `interval`. Its few allocations per update (metric keys) are counted like any other thread's.
use std::io;
use std::sync::Once;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::series::{self, Kind, Series};

/// Copies the current counters into the installed `metrics` recorder once. Counters use
/// `absolute` (they are totals since start-up), the rest are gauges. The same series as
/// `/metrics` (one list: `series`).
pub fn publish_metrics() {
    static DESCRIBED: Once = Once::new();
    DESCRIBED.call_once(|| {
        series::STATS.iter().for_each(describe);
        series::TAGS.iter().for_each(describe);
        #[cfg(feature = "otlp")]
        series::OTLP.iter().for_each(describe);
    });
    let s = crate::stats();
    for m in &series::STATS {
        publish(m, &s, Vec::new());
    }
    #[cfg(feature = "otlp")]
    for m in &series::OTLP {
        publish(m, &(), Vec::new());
    }
    for t in crate::tag_stats() {
        for m in &series::TAGS {
            publish(m, &t, vec![metrics::Label::new("tag", t.name.clone())]);
        }
    }
}

/// Gives the recorder the series' help text (once: recorders keep it).
fn describe<T>(m: &Series<T>) {
    match m.kind {
        Kind::Counter => metrics::describe_counter!(m.name, m.help),
        Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
    }
}

fn publish<T>(m: &Series<T>, from: &T, labels: Vec<metrics::Label>) {
    let v = (m.get)(from);
    match m.kind {
        Kind::Counter => metrics::counter!(m.name, labels).absolute(v),
        Kind::Gauge => metrics::gauge!(m.name, labels).set(v as f64),
    }
}

/// Starts the background updater: [`publish_metrics`] every `interval` (at least 10 ms), for the
/// life of the process.
pub fn spawn_metrics_updater(interval: Duration) -> io::Result<JoinHandle<()>> {
    let interval = interval.max(Duration::from_millis(10));
    thread::Builder::new()
        .name("heapsight-metrics".into())
        .spawn(move || loop {
            publish_metrics();
            thread::sleep(interval);
        })
}
