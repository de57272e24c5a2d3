//! The OTLP profiles exporter against a real OpenTelemetry Collector (v0.165, built from the Go
//! module proxy by .ci/build-collector.sh): two intervals are exported, and what the Collector
//! received (read back from its file exporter) has the resource attributes, the four heap sample
//! types, build IDs, tags, and per-site values equal to heapsight's own profile of the same
//! moment. Every allocation is sampled (rate 1) and the workload's blocks are large enough that
//! each sample weighs exactly 1, so the comparison is exact.
use std::time::Duration;

use heapsight::HeapSight;

#[global_allocator]
static GLOBAL: HeapSight = HeapSight::system();

#[path = "support/otlp.rs"]
mod otlp_support;
mod support;

use otlp_support::{own_by_site, resolve, Collector, TempDir};

#[inline(never)]
fn otlp_test_keeps_first() -> Vec<Vec<u8>> {
    (0..300).map(|i| vec![i as u8; 1000]).collect()
}

#[inline(never)]
fn otlp_test_keeps_second() -> Vec<Vec<u64>> {
    (0..200).map(|i| vec![i as u64; 64]).collect()
}

#[inline(never)]
fn otlp_test_churns() {
    for i in 0..500 {
        std::hint::black_box(vec![i as u8; 2000]);
    }
}

/// Waits (sleeping, allocation-free) until the exporter has sent `n` requests.
fn wait_sent(e: &heapsight::otlp::Exporter, n: u64) {
    while e.stats().sent < n {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn only_workload(
    m: std::collections::HashMap<(Vec<String>, String), i64>,
) -> std::collections::BTreeMap<(Vec<String>, String), i64> {
    m.into_iter()
        .filter(|((stack, _), _)| stack.iter().any(|f| f.contains("otlp_test_")))
        .collect()
}

fn two_intervals_match_heapsights_own_profile() {
    let Some(bin) = otlp_support::collector_binary() else {
        return;
    };
    let dir = TempDir::new("otlp_collector");
    let port = otlp_support::free_port();
    let collector = Collector::start(&bin, &dir.0, port, "collector");

    heapsight::set_sample_rate(1);
    let mut config = heapsight::otlp::Config::new(format!(
        "http://127.0.0.1:{port}{}",
        heapsight::otlp::PROFILES_PATH
    ));
    config.interval = Duration::from_secs(1);
    config.service_name = "otlp-collector-test".into();
    config.resource_attributes = vec![("deployment.environment.name".into(), "ci".into())];
    let exporter = heapsight::otlp::start(config).expect("valid config");
    // The exporter's baseline: nothing allocates between it and this snapshot.
    let p0 = heapsight::profile();

    // Interval 1: a tagged workload that stays live, and churn that is freed.
    let first = heapsight::with_tag("otlp-first", otlp_test_keeps_first);
    otlp_test_churns();
    assert_eq!(
        exporter.stats().collected,
        0,
        "the workload overlapped the first collection: it must finish within the 1 s interval"
    );
    wait_sent(&exporter, 1);
    let p1 = heapsight::profile();
    // Interval 2.
    let second = otlp_test_keeps_second();
    assert_eq!(
        exporter.stats().collected,
        1,
        "the workload overlapped the second collection"
    );
    let quiet = support::exact();
    wait_sent(&exporter, 2);
    let p2 = heapsight::profile();
    // The exporter's own work (snapshot, encoding, HTTP) is not the program's.
    let after = support::exact();
    assert_eq!(quiet, after, "exporting changed the program's counters");
    exporter.shutdown();

    let got = collector.wait_for(2);
    collector.kill();
    let reqs: Vec<_> = got.iter().map(|b| resolve(b)).collect();
    for (i, r) in reqs.iter().enumerate() {
        let res = &r.resource;
        assert_eq!(res["service.name"], "otlp-collector-test", "{res:?}");
        assert_eq!(res["process.pid"], std::process::id().to_string());
        assert!(!res["host.name"].is_empty());
        assert_eq!(res["deployment.environment.name"], "ci");
        assert_eq!(res["telemetry.sdk.name"], "heapsight");
        assert_eq!(r.scope_name, "heapsight");
        let types: Vec<_> = r
            .profiles
            .iter()
            .map(|p| (p.sample_type.0.as_str(), p.sample_type.1.as_str()))
            .collect();
        assert_eq!(
            types,
            [
                ("inuse_space", "bytes"),
                ("inuse_objects", "count"),
                ("alloc_space", "bytes"),
                ("alloc_objects", "count")
            ],
            "request {i}"
        );
        for p in &r.profiles {
            assert_eq!(
                (p.period_type.0.as_str(), p.period_type.1.as_str(), p.period),
                ("space", "bytes", 1)
            );
            assert!(p.time_unix_nano > 1_600_000_000_000_000_000);
        }
        // Allocation profiles cover their interval.
        assert!(r.profiles[2].duration_nano > 0);
        // The test binary's mapping is there with its GNU build ID (Rust on Linux links one).
        let exe = std::env::current_exe().unwrap();
        let exe = std::fs::canonicalize(exe).unwrap();
        assert!(
            r.mappings
                .iter()
                .any(|(f, id)| std::path::Path::new(f) == exe && id.len() >= 16),
            "no build ID for {}: {:?}",
            exe.display(),
            r.mappings
        );
    }

    // In-use per site equals heapsight's own profile at the same moment, both intervals.
    for (r, p) in [(&reqs[0], &p1), (&reqs[1], &p2)] {
        let space = only_workload(r.profiles[0].by_site());
        let objects = only_workload(r.profiles[1].by_site());
        assert_eq!(space, only_workload(own_by_site(p, |s| s.inuse_bytes)));
        assert_eq!(objects, only_workload(own_by_site(p, |s| s.inuse_objects)));
        assert!(!space.is_empty());
    }
    // Allocations are those of each interval: the deltas of heapsight's own profiles.
    for (r, later, earlier) in [(&reqs[0], &p1, &p0), (&reqs[1], &p2, &p1)] {
        let d = later.delta(earlier);
        let space = only_workload(r.profiles[2].by_site());
        let objects = only_workload(r.profiles[3].by_site());
        assert_eq!(space, only_workload(own_by_site(&d, |s| s.alloc_bytes)));
        assert_eq!(objects, only_workload(own_by_site(&d, |s| s.alloc_objects)));
    }
    // Interval 1 allocated the tagged blocks and the churn; interval 2 only the second blocks.
    let first_alloc = only_workload(reqs[0].profiles[2].by_site());
    let tagged: i64 = first_alloc
        .iter()
        .filter(|((_, tag), _)| tag == "otlp-first")
        .map(|(_, v)| v)
        .sum();
    assert!(tagged >= 300 * 1000, "tagged bytes {tagged}");
    assert!(first_alloc
        .keys()
        .any(|(stack, _)| stack.iter().any(|f| f.contains("otlp_test_churns"))));
    let second_alloc = only_workload(reqs[1].profiles[2].by_site());
    assert!(second_alloc
        .keys()
        .all(|(stack, _)| !stack.iter().any(|f| f.contains("otlp_test_keeps_first"))));
    assert!(second_alloc
        .keys()
        .any(|(stack, _)| stack.iter().any(|f| f.contains("otlp_test_keeps_second"))));
    drop((first, second));
}

fn a_bad_configuration_starts_nothing() {
    for endpoint in [
        "https://127.0.0.1:4318/v1development/profiles",
        "127.0.0.1:4318",
        "http://",
    ] {
        let e = heapsight::otlp::start(heapsight::otlp::Config::new(endpoint));
        assert!(e.is_err(), "{endpoint}");
    }
}

fn main() {
    support::watchdog(600, "otlp_collector");
    support::run(&[
        (
            "two_intervals_match_heapsights_own_profile",
            two_intervals_match_heapsights_own_profile,
        ),
        (
            "a_bad_configuration_starts_nothing",
            a_bad_configuration_starts_nothing,
        ),
    ]);
}
