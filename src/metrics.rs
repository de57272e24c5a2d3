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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};

    use super::*;

    /// Notes the names described and registered, and of which kind.
    #[derive(Default)]
    struct Names {
        described: Mutex<BTreeSet<(String, Kind)>>,
        registered: Mutex<BTreeSet<(String, Kind)>>,
    }

    impl metrics::Recorder for Names {
        fn describe_counter(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
            let name = (key.as_str().to_string(), Kind::Counter);
            self.described.lock().unwrap().insert(name);
        }
        fn describe_gauge(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
            let name = (key.as_str().to_string(), Kind::Gauge);
            self.described.lock().unwrap().insert(name);
        }
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {
            unreachable!("heapsight publishes no histogram")
        }
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let name = (key.name().to_string(), Kind::Counter);
            self.registered.lock().unwrap().insert(name);
            Counter::noop()
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            let name = (key.name().to_string(), Kind::Gauge);
            self.registered.lock().unwrap().insert(name);
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            unreachable!("heapsight publishes no histogram")
        }
    }

    #[test]
    fn publishes_the_series_of_the_metrics_endpoint() {
        let rec = Names::default();
        metrics::with_local_recorder(&rec, publish_metrics);
        fn listed<T>(list: &[Series<T>]) -> BTreeSet<(String, Kind)> {
            list.iter().map(|m| (m.name.to_string(), m.kind)).collect()
        }
        let stats = listed(&series::STATS);
        let mut all = stats.clone();
        all.extend(listed(&series::TAGS));
        #[cfg(feature = "otlp")]
        all.extend(listed(&series::OTLP));
        let registered = rec.registered.into_inner().unwrap();
        assert!(registered.is_superset(&stats), "{registered:?}");
        assert!(registered.is_subset(&all), "{registered:?}");
        assert_eq!(rec.described.into_inner().unwrap(), all);
    }
}
