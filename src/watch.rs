//! A profile on disk before the OOM kill: a background thread that watches the container's
//! usage against its limit, the resident set and the heap's high-water mark, and writes a heap
//! profile and the memory table ([`crate::memory()`]) to a directory when a trigger fires.
//!
//! Owns the watcher's start flag and the dump sequence number. The thread polls (default every
//! 100 ms) with two small file reads and [`crate::stats()`], inside the profiler guard, and never
//! touches the allocation path. The decision is [`Triggers`], a pure state machine over readings.
//!
//! The triggers, as in gperftools (`HEAP_PROFILE_INUSE_INTERVAL`, `HEAP_PROFILE_TIME_INTERVAL`)
//! and jemalloc (`opt.prof_gdump`, a dump at each new high-water mark):
//!
//! * a fraction of the container's limit (`80%`): the cgroup's usage, what the kernel kills on;
//!   fires once when crossed, again only after usage fell below 90% of it;
//! * an absolute resident-set size (`1GiB`), the same way;
//! * each new high-water mark of the heap in use (exact counters) at least `step` above the last
//!   dumped one (start-up growth counts: the first fires at `step`);
//! * at most one dump per `min_interval`: a trigger that fires sooner waits, still armed.
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::time::{Duration, Instant};

use crate::config::{self, Threshold};
use crate::dump::{rotate, write_file_safely, DumpLimits};
use crate::guard::profiler_scope;
use crate::memory::human;

/// When and where to write a profile before the kernel kills the process: see
/// [`start_dump_triggers`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct DumpTriggers {
    /// Levels that fire a dump (`HEAPSIGHT_DUMP_AT=80%,1GiB`).
    pub at: Vec<Threshold>,
    /// A dump at each new high-water mark of the heap in use this far above the last dumped one
    /// (`HEAPSIGHT_DUMP_STEP=64MiB`).
    pub step: Option<u64>,
    /// At most one dump per this interval (`HEAPSIGHT_DUMP_MIN_INTERVAL`, default 10 s).
    pub min_interval: Duration,
    /// How often the levels are read (`HEAPSIGHT_DUMP_POLL`, default 100 ms).
    pub poll: Duration,
    /// Where dumps go (`HEAPSIGHT_DUMP_DIR`, default the working directory).
    pub dir: PathBuf,
    /// Dumps kept in `dir`, newest first (`HEAPSIGHT_DUMP_KEEP`, default 8).
    pub keep: usize,
    /// Bytes of dumps kept in `dir` (`HEAPSIGHT_DUMP_MAX_BYTES`, default 64 MiB); the newest dump
    /// is always kept.
    pub max_bytes: u64,
}

impl Default for DumpTriggers {
    fn default() -> Self {
        DumpTriggers {
            at: Vec::new(),
            step: None,
            min_interval: Duration::from_secs(10),
            poll: Duration::from_millis(100),
            dir: PathBuf::from("."),
            keep: 8,
            max_bytes: 64 << 20,
        }
    }
}

impl DumpTriggers {
    /// No trigger yet, the defaults otherwise; add triggers with [`at`](Self::at) and
    /// [`step`](Self::step).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DumpTriggers {
            dir: dir.into(),
            ..Default::default()
        }
    }
    /// Adds a level.
    pub fn at(mut self, t: Threshold) -> Self {
        self.at.push(t);
        self
    }
    /// Sets the high-water step.
    pub fn step(mut self, bytes: u64) -> Self {
        self.step = Some(bytes.max(1));
        self
    }
    /// Sets the minimum interval between dumps.
    pub fn min_interval(mut self, d: Duration) -> Self {
        self.min_interval = d;
        self
    }
    /// Sets the polling period.
    pub fn poll(mut self, d: Duration) -> Self {
        self.poll = d.max(Duration::from_millis(1));
        self
    }
    /// Sets how many dumps and bytes are kept.
    pub fn keep(mut self, dumps: usize, max_bytes: u64) -> Self {
        self.keep = dumps.max(1);
        self.max_bytes = max_bytes;
        self
    }

    /// The triggers the environment asks for, or `None` when neither `HEAPSIGHT_DUMP_AT` nor
    /// `HEAPSIGHT_DUMP_STEP` is set (or both were rejected). A bad value prints one line on
    /// stderr and is ignored, as for the other variables.
    pub fn from_env() -> Option<Self> {
        Self::from_source(|k| std::env::var(k).ok())
    }

    fn from_source(get: impl Fn(&str) -> Option<String>) -> Option<Self> {
        fn check<T>(
            get: &dyn Fn(&str) -> Option<String>,
            var: &str,
            parse: impl FnOnce(&[u8]) -> Result<T, config::ParseError>,
            values: &str,
            kept: &dyn std::fmt::Display,
        ) -> Option<T> {
            let v = get(var)?;
            parse(v.as_bytes())
                .map_err(|e| config::complain(var, v.as_bytes(), e, values, kept))
                .ok()
        }
        let mut t = DumpTriggers::default();
        if let Some(at) = check(
            &get,
            "HEAPSIGHT_DUMP_AT",
            config::parse_thresholds,
            config::DUMP_AT_VALUES,
            &"no level",
        ) {
            t.at = at;
        }
        t.step = check(
            &get,
            "HEAPSIGHT_DUMP_STEP",
            |v| {
                config::parse_bytes(v).and_then(|b| {
                    if b == 0 {
                        Err(config::ParseError::TooSmall)
                    } else {
                        Ok(b)
                    }
                })
            },
            "a size with an optional binary unit (64MiB), not 0",
            &"no step",
        );
        if t.at.is_empty() && t.step.is_none() {
            return None;
        }
        if let Some(d) = check(
            &get,
            "HEAPSIGHT_DUMP_MIN_INTERVAL",
            config::parse_duration,
            config::DURATION_VALUES,
            &"10s",
        ) {
            t.min_interval = d;
        }
        if let Some(d) = check(
            &get,
            "HEAPSIGHT_DUMP_POLL",
            config::parse_duration,
            config::DURATION_VALUES,
            &"100ms",
        ) {
            t.poll = d;
        }
        if let Some(n) = check(
            &get,
            "HEAPSIGHT_DUMP_KEEP",
            |v| config::parse_count(v, 1, 100_000),
            "a whole number of dumps from 1 to 100000",
            &8,
        ) {
            t.keep = n as usize;
        }
        if let Some(b) = check(
            &get,
            "HEAPSIGHT_DUMP_MAX_BYTES",
            config::parse_bytes,
            config::SAMPLE_RATE_VALUES,
            &"64MiB",
        ) {
            t.max_bytes = b;
        }
        if let Some(d) = get("HEAPSIGHT_DUMP_DIR").filter(|d| !d.is_empty()) {
            t.dir = PathBuf::from(d);
        }
        Some(t)
    }
}

/// One reading of the levels the triggers compare.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Reading {
    /// The cgroup's usage and limit, when there is a limit.
    pub usage: Option<u64>,
    pub limit: Option<u64>,
    pub rss: u64,
    pub heap: u64,
}

/// The triggers' state: which levels are armed, the last dumped high-water mark, the last dump.
#[derive(Debug)]
pub(crate) struct Triggers {
    armed: Vec<bool>,
    mark: u64,
    last_dump: Option<Duration>,
}

impl Triggers {
    pub(crate) fn new(cfg: &DumpTriggers) -> Self {
        Triggers {
            armed: vec![true; cfg.at.len()],
            mark: 0,
            last_dump: None,
        }
    }

    /// Whether to dump now (`now`: time since any fixed start), and why. A dump disarms every
    /// level it covers and raises the high-water mark to the heap now.
    pub(crate) fn check(
        &mut self,
        cfg: &DumpTriggers,
        r: Reading,
        now: Duration,
    ) -> Option<String> {
        let mut why = Vec::new();
        let mut fired = Vec::new();
        for (i, t) in cfg.at.iter().enumerate() {
            let (value, level, what) = match *t {
                Threshold::OfLimit(f) => match (r.usage, r.limit) {
                    (Some(u), Some(l)) => (u as f64, f * l as f64, "container usage"),
                    _ => continue,
                },
                Threshold::Rss(b) => (r.rss as f64, b as f64, "rss"),
            };
            if value < 0.9 * level {
                self.armed[i] = true;
            } else if self.armed[i] && value >= level {
                fired.push(i);
                why.push(match *t {
                    Threshold::OfLimit(f) => format!(
                        "{what} {} is {:.1}% of the limit {} (trigger {}%)",
                        human(value as u64),
                        value * 100.0 / r.limit.unwrap_or(1) as f64,
                        human(r.limit.unwrap_or(0)),
                        f * 100.0
                    ),
                    Threshold::Rss(b) => {
                        format!("{what} {} (trigger {})", human(value as u64), human(b))
                    }
                });
            }
        }
        let step = cfg
            .step
            .is_some_and(|s| r.heap >= self.mark.saturating_add(s));
        if step {
            why.push(format!(
                "heap in use {}, a new high-water mark (step {})",
                human(r.heap),
                human(cfg.step.unwrap_or(0))
            ));
        }
        if why.is_empty() {
            return None;
        }
        if self
            .last_dump
            .is_some_and(|t| now.saturating_sub(t) < cfg.min_interval)
        {
            return None;
        }
        for i in fired {
            self.armed[i] = false;
        }
        self.mark = self.mark.max(r.heap);
        self.last_dump = Some(now);
        Some(why.join("; "))
    }
}

static STARTED: AtomicBool = AtomicBool::new(false);
static SEQ: AtomicU64 = AtomicU64::new(0);

/// Starts the background thread that writes a heap profile (`heapsight-oom-<pid>-<seq>.pb.gz`,
/// gzipped pprof with the memory table as comments) and the memory table
/// (`heapsight-oom-<pid>-<seq>.txt`) into `t.dir` when a trigger fires, keeping the last
/// `t.keep` dumps and at most `t.max_bytes` of them. One watcher per process: a second call
/// fails with `AlreadyExists`. The thread does not survive `fork()`.
pub fn start_dump_triggers(t: DumpTriggers) -> io::Result<()> {
    if t.at.is_empty() && t.step.is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no trigger set",
        ));
    }
    if STARTED.swap(true, AcqRel) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the dump triggers are already running",
        ));
    }
    let spawned = std::thread::Builder::new()
        .name("heapsight-watch".into())
        .spawn(move || profiler_scope(|| watch(t)));
    if let Err(e) = spawned {
        STARTED.store(false, Release);
        return Err(e);
    }
    Ok(())
}

/// [`start_dump_triggers`] with [`DumpTriggers::from_env`]; `Ok(false)` when the environment
/// sets no trigger.
pub fn start_dump_triggers_from_env() -> io::Result<bool> {
    match DumpTriggers::from_env() {
        None => Ok(false),
        Some(t) => start_dump_triggers(t).map(|()| true),
    }
}

/// Reads a small file holding one number into a stack buffer: no allocation per poll.
fn read_u64(path: &Path) -> Option<u64> {
    let mut b = [0u8; 64];
    let n = File::open(path).ok()?.read(&mut b).ok()?;
    let s = core::str::from_utf8(&b[..n]).ok()?;
    crate::memory::parse_limit(s)
}

/// Resident pages × page size from `/proc/self/statm` (no page-table walk, unlike smaps).
fn read_rss() -> u64 {
    let mut b = [0u8; 128];
    let Ok(n) = File::open("/proc/self/statm").and_then(|mut f| f.read(&mut b)) else {
        return 0;
    };
    let pages = core::str::from_utf8(&b[..n])
        .ok()
        .and_then(|s| s.split_ascii_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

fn watch(cfg: DumpTriggers) {
    // The group's usage and limit files, found once (a process does not change groups here).
    let group = crate::memory::memory_cgroup();
    let (usage_file, limit_files): (Option<PathBuf>, Vec<PathBuf>) = match &group {
        Some((1, d)) => (
            Some(d.join("memory.usage_in_bytes")),
            vec![d.join("memory.limit_in_bytes")],
        ),
        Some((_, d)) => (
            Some(d.join("memory.current")),
            d.ancestors()
                .take_while(|a| a.join("memory.max").exists())
                .map(|a| a.join("memory.max"))
                .collect(),
        ),
        None => (None, Vec::new()),
    };
    if cfg.at.iter().any(|t| matches!(t, Threshold::OfLimit(_))) {
        let limit = limit_files.iter().filter_map(|f| read_u64(f)).min();
        if limit.is_none() {
            eprintln!(
                "heapsight: HEAPSIGHT_DUMP_AT: no container memory limit found ({}); the percentage triggers stay idle",
                group.as_ref().map_or("no memory cgroup".to_string(), |g| g.1.display().to_string())
            );
        }
    }
    let mut state = Triggers::new(&cfg);
    let t0 = Instant::now();
    loop {
        std::thread::sleep(cfg.poll);
        let r = Reading {
            usage: usage_file.as_deref().and_then(read_u64),
            limit: limit_files.iter().filter_map(|f| read_u64(f)).min(),
            rss: read_rss(),
            heap: crate::stats::stats().inuse_bytes,
        };
        if let Some(why) = state.check(&cfg, r, t0.elapsed()) {
            match dump(&cfg, &why) {
                Ok(p) => eprintln!("heapsight: {why}: wrote {}", p.display()),
                Err(e) => eprintln!(
                    "heapsight: {why}: could not dump into {}: {e}",
                    cfg.dir.display()
                ),
            }
        }
    }
}

/// The prefix of the watcher's files (`heapsight-oom-<pid>-<seq>`); rotation (`dump::rotate`)
/// only touches this process's regular files with it.
const PREFIX: &str = "heapsight-oom-";

/// Writes one dump: the profile first (what names the growing site), then the table.
fn dump(cfg: &DumpTriggers, why: &str) -> io::Result<PathBuf> {
    let seq = SEQ.fetch_add(1, Relaxed);
    let prefix = format!("{PREFIX}{}-", std::process::id());
    let stem = format!("{prefix}{seq:06}");
    let mem = crate::memory::memory();
    let table = format!("heapsight dump: {why}\n{mem}");
    let mut p = crate::snapshot::take(true);
    p.add_notes(table.lines().map(str::to_string));
    let mut pb = Vec::new();
    p.write_pprof(&mut pb)?;
    let pb_path = cfg.dir.join(format!("{stem}.pb.gz"));
    write_file_safely(&pb_path, |w| w.write_all(&pb))?;
    write_file_safely(&cfg.dir.join(format!("{stem}.txt")), |w| {
        w.write_all(table.as_bytes())
    })?;
    // This process's series only: the dumps a killed predecessor left are never rotated away.
    let limits = DumpLimits {
        min_interval: cfg.min_interval,
        keep: cfg.keep,
        max_bytes: cfg.max_bytes,
    };
    rotate(&cfg.dir, &prefix, &limits)?;
    Ok(pb_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DumpTriggers {
        DumpTriggers::new("/unused")
            .at(Threshold::OfLimit(0.8))
            .at(Threshold::Rss(300 << 20))
            .step(32 << 20)
            .min_interval(Duration::from_secs(1))
    }

    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    const MIB: u64 = 1 << 20;

    fn reading(usage: u64, rss: u64, heap: u64) -> Reading {
        Reading {
            usage: Some(usage * MIB),
            limit: Some(256 * MIB),
            rss: rss * MIB,
            heap: heap * MIB,
        }
    }

    #[test]
    fn a_steady_service_at_half_its_limit_triggers_nothing() {
        let c = DumpTriggers::new("/unused")
            .at(Threshold::OfLimit(0.8))
            .at(Threshold::OfLimit(0.9));
        let mut t = Triggers::new(&c);
        for i in 0..10_000 {
            // 50% of the limit, give or take the churn.
            let u = 128 + (i % 7);
            assert_eq!(t.check(&c, reading(u, u, u - 10), at(i * 100)), None);
        }
    }

    #[test]
    fn a_leak_fires_each_trigger_once() {
        let c = cfg();
        let mut t = Triggers::new(&c);
        let mut fired = Vec::new();
        // 16 MiB/s from 0, polled every 100 ms, to the kill at 256 MiB.
        for i in 0..160 {
            let mib = i * 16 / 10;
            if let Some(why) = t.check(&c, reading(mib, mib, mib), at(i * 100)) {
                fired.push((mib, why));
            }
        }
        let steps: Vec<u64> = fired.iter().map(|f| f.0).collect();
        // The step at 32, 64.. (each ≥ 1 s apart: 16 MiB/s makes each 2 s), 80% of 256 = 204.8.
        assert_eq!(steps, [32, 64, 96, 128, 160, 192, 208, 240], "{fired:?}");
        assert!(fired[6].1.contains("% of the limit"), "{fired:?}");
        assert!(fired[0].1.contains("high-water"), "{fired:?}");
    }

    #[test]
    fn the_interval_delays_and_keeps_a_trigger_armed() {
        let c = cfg().min_interval(Duration::from_secs(10));
        let mut t = Triggers::new(&c);
        assert!(t.check(&c, reading(40, 40, 40), at(0)).is_some());
        // 80% crossed 1 s later: within the interval, so not now, but still armed.
        assert_eq!(t.check(&c, reading(210, 210, 41), at(1000)), None);
        let why = t.check(&c, reading(210, 210, 41), at(10_000)).unwrap();
        assert!(why.contains("trigger 80%"), "{why}");
        // Fired once: no more while above; re-armed below 90% of the level, fires again above.
        assert_eq!(t.check(&c, reading(220, 220, 41), at(30_000)), None);
        assert_eq!(t.check(&c, reading(150, 150, 41), at(40_000)), None);
        assert!(t.check(&c, reading(210, 210, 41), at(50_000)).is_some());
    }

    #[test]
    fn rss_level_and_no_limit() {
        let c = cfg();
        let mut t = Triggers::new(&c);
        let r = Reading {
            usage: None,
            limit: None,
            rss: 301 * MIB,
            heap: 0,
        };
        let why = t.check(&c, r, at(0)).unwrap();
        assert!(why.starts_with("rss 301.00 MiB"), "{why}");
    }

    #[test]
    fn environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|p| p.0 == k).map(|p| p.1.to_string())
        };
        assert_eq!(DumpTriggers::from_source(env(&[])), None);
        assert_eq!(
            DumpTriggers::from_source(env(&[("HEAPSIGHT_DUMP_AT", "x")])),
            None
        );
        let t = DumpTriggers::from_source(env(&[
            ("HEAPSIGHT_DUMP_AT", "80%,1GiB"),
            ("HEAPSIGHT_DUMP_STEP", "64MiB"),
            ("HEAPSIGHT_DUMP_MIN_INTERVAL", "2s"),
            ("HEAPSIGHT_DUMP_POLL", "50ms"),
            ("HEAPSIGHT_DUMP_KEEP", "3"),
            ("HEAPSIGHT_DUMP_MAX_BYTES", "1MiB"),
            ("HEAPSIGHT_DUMP_DIR", "/tmp/x"),
        ]))
        .unwrap();
        assert_eq!(
            t,
            DumpTriggers {
                at: vec![Threshold::OfLimit(0.8), Threshold::Rss(1 << 30)],
                step: Some(64 << 20),
                min_interval: Duration::from_secs(2),
                poll: Duration::from_millis(50),
                dir: PathBuf::from("/tmp/x"),
                keep: 3,
                max_bytes: 1 << 20,
            }
        );
    }
}
