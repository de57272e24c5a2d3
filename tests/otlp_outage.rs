//! The OTLP exporter through an outage of a real OpenTelemetry Collector: the Collector is
//! killed mid-run and started again on the same port. Export resumes, the queue stays within
//! `max_pending` (oldest dropped and counted, also in /metrics), the outage costs one line on
//! stderr when it starts and one when it ends, and the program's exact counters do not move.
use std::io::{Read, Seek};
use std::time::Duration;

use heapsight::HeapSight;

#[global_allocator]
static GLOBAL: HeapSight = HeapSight::system();

#[path = "support/otlp.rs"]
mod otlp_support;
mod support;

use otlp_support::{resolve, Collector, TempDir};

#[inline(never)]
fn otlp_outage_keeps() -> Vec<Vec<u8>> {
    (0..100).map(|i| vec![i as u8; 4096]).collect()
}

/// Stderr redirected into a file while it lives (the exporter's log lines go there).
struct CapturedStderr {
    file: std::fs::File,
    saved: i32,
}

impl CapturedStderr {
    fn start(path: &std::path::Path) -> CapturedStderr {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: dup/dup2 on descriptors this process owns (2 and the open file); restored in
        // `stop`.
        let saved = unsafe { libc::dup(2) };
        assert!(saved >= 0);
        assert!(unsafe { libc::dup2(file.as_raw_fd(), 2) } >= 0);
        CapturedStderr { file, saved }
    }

    fn stop(mut self) -> String {
        // SAFETY: puts back the descriptor saved by `start`, then closes the copy.
        unsafe {
            libc::dup2(self.saved, 2);
            libc::close(self.saved);
        }
        let mut s = String::new();
        self.file.rewind().unwrap();
        self.file.read_to_string(&mut s).unwrap();
        s
    }
}

fn export_resumes_after_the_collector_restarts() {
    let Some(bin) = otlp_support::collector_binary() else {
        return;
    };
    let dir = TempDir::new("otlp_outage");
    let port = otlp_support::free_port();
    let first = Collector::start(&bin, &dir.0, port, "before");
    // Every allocation sampled: a profile with no samples at all is a request the Collector
    // accepts and then drops (its exporter helper skips empty batches), so the file would stay
    // empty.
    heapsight::set_sample_rate(1);
    let keep = otlp_outage_keeps();

    let mut config = heapsight::otlp::Config::new(format!(
        "http://127.0.0.1:{port}{}",
        heapsight::otlp::PROFILES_PATH
    ));
    config.interval = Duration::from_millis(200);
    config.max_pending = 3;
    config.service_name = "otlp-outage-test".into();
    let log = CapturedStderr::start(&dir.0.join("stderr.txt"));
    let exporter = heapsight::otlp::start(config).expect("valid config");
    let wait = |what: &str, done: &dyn Fn(&heapsight::otlp::ExporterStats) -> bool| loop {
        let s = exporter.stats();
        assert!(s.pending <= 3, "{what}: queue beyond max_pending: {s:?}");
        if done(&s) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    wait("up", &|s| s.sent >= 2);
    first.wait_for(2);

    // Outage: long enough for the queue to fill and drop (8 collections, 3 kept).
    first.kill();
    let quiet = support::exact();
    let at_kill = exporter.stats();
    let during = wait("down", &|s| {
        s.collected >= at_kill.collected + 8 && s.failed_attempts >= 2
    });
    assert_eq!(
        quiet,
        support::exact(),
        "the outage changed the program's counters"
    );
    assert!(during.dropped >= 1, "{during:?}");
    assert_eq!(during.pending, 3, "{during:?}");
    // Bounded: three pending requests of a profile with a handful of sites.
    assert!(
        during.pending_bytes < 3 * 256 * 1024,
        "pending bytes {}",
        during.pending_bytes
    );
    #[cfg(feature = "http")]
    {
        let m = heapsight::http::respond("/metrics");
        let text = String::from_utf8_lossy(&m.body).into_owned();
        let line = text
            .lines()
            .find(|l| l.starts_with("heapsight_otlp_dropped_profiles_total "))
            .expect("the dropped-profiles line in /metrics");
        let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(n >= during.dropped, "{line} vs {during:?}");
    }

    // The Collector comes back on the same port: the queue drains and new profiles arrive.
    let second = Collector::start(&bin, &dir.0, port, "after");
    let quiet = support::exact();
    let resumed = wait("resumed", &|s| s.sent >= during.sent + 4 && s.pending == 0);
    assert_eq!(
        quiet,
        support::exact(),
        "resuming changed the program's counters"
    );
    let got = second.wait_for(4);
    exporter.shutdown();
    let text = log.stop();
    second.kill();

    assert!(heapsight::otlp::dropped_profiles() >= resumed.dropped);
    for b in &got {
        let r = resolve(b);
        assert_eq!(r.resource["service.name"], "otlp-outage-test");
        assert_eq!(r.profiles.len(), 4);
    }
    // The profiles queued during the outage arrive, oldest first after the drops: their
    // timestamps increase.
    let times: Vec<u64> = got
        .iter()
        .map(|b| resolve(b).profiles[0].time_unix_nano)
        .collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    println!("\n  during the outage: {during:?}\n  after it: {resumed:?}\n  the exporter's stderr:\n{text}");
    let failing = text.matches("failing (").count();
    let resumed_lines = text.matches("resumed after").count();
    assert_eq!(
        (failing, resumed_lines),
        (1, 1),
        "one line when the outage starts, one when it ends; stderr was:\n{text}"
    );
    assert!(
        text.lines().count() <= 2,
        "nothing else on stderr (one line per outage, not per attempt):\n{text}"
    );
    drop(keep);
}

fn main() {
    support::watchdog(600, "otlp_outage");
    support::run(&[(
        "export_resumes_after_the_collector_restarts",
        export_resumes_after_the_collector_restarts,
    )]);
}
