//! Feature `metrics`: publishes the counters through the `metrics` crate facade, so an existing
//! recorder (e.g. `metrics-exporter-prometheus`) shows them without the `http` feature.
//!
//! A background thread copies [`crate::stats`] and [`crate::tag_stats`] into the recorder every
//! `interval`. Its few allocations per update (metric keys) are counted like any other thread's.
use std::io;
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Copies the current counters into the installed `metrics` recorder once. Counters use
/// `absolute` (they are totals since start-up), the rest are gauges. Same names as `/metrics`.
pub fn publish_metrics() {
    let s = crate::stats();
    metrics::counter!("heapsight_alloc_objects_total").absolute(s.alloc_objects);
    metrics::counter!("heapsight_alloc_bytes_total").absolute(s.alloc_bytes);
    metrics::counter!("heapsight_free_objects_total").absolute(s.free_objects);
    metrics::counter!("heapsight_free_bytes_total").absolute(s.free_bytes);
    metrics::gauge!("heapsight_inuse_objects").set(s.inuse_objects as f64);
    metrics::gauge!("heapsight_inuse_bytes").set(s.inuse_bytes as f64);
    metrics::gauge!("heapsight_peak_inuse_bytes").set(s.peak_inuse_bytes as f64);
    metrics::gauge!("heapsight_sample_rate_bytes").set(s.sample_rate as f64);
    metrics::gauge!("heapsight_profiler_bytes").set(s.profiler_bytes as f64);
    for t in crate::tag_stats() {
        let tag = t.name.clone();
        metrics::counter!("heapsight_tag_alloc_objects_total", "tag" => tag.clone())
            .absolute(t.alloc_objects);
        metrics::counter!("heapsight_tag_alloc_bytes_total", "tag" => tag.clone())
            .absolute(t.alloc_bytes);
        metrics::gauge!("heapsight_tag_inuse_objects", "tag" => tag.clone())
            .set(t.inuse_objects as f64);
        metrics::gauge!("heapsight_tag_inuse_bytes", "tag" => tag).set(t.inuse_bytes as f64);
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
