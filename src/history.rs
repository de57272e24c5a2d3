//! The heap over time: a bounded ring of recorded points, the sites that keep growing, and the
//! difference between now and a recorded point.
//!
//! # What is recorded
//!
//! Every interval (default [`DEFAULT_INTERVAL`]) a point: the exact counters ([`crate::Stats`]) and,
//! for the [`SITES_PER_POINT`] sites with the most live bytes, their four estimates (live and
//! allocated, objects and bytes); every other site is summed into one "other" entry, so the totals
//! of a point are whole. Sites are interned once (a key of 4 bytes per entry; the stack itself is
//! the profile's, shared with the stack cache), and only sites with something live are kept by
//! name. The ring holds `window / interval + 1` points (default one hour of 10 s points: 361).
//!
//! # Memory bound
//!
//! A point is [`POINT_BYTES`] plus [`ENTRY_BYTES`] per kept site, so the ring holds at most
//! `points × (POINT_BYTES + SITES_PER_POINT × ENTRY_BYTES)` plus the key table (one slot per
//! site kept by some point in the ring, at most `points × SITES_PER_POINT`, [`KEY_BYTES`] each).
//! Default window, 64-bit: 361 × (200 + 64 × 40) B = 973 KiB for the points, whatever the heap
//! does; the key table adds 52 B per distinct site the ring names: a few KiB while the top sites
//! are stable, at most 361 × 64 × 52 B = 1.15 MiB if they all changed at every interval. All of it
//! is allocated inside the profiler guard, so it is in [`crate::Stats::profiler_bytes`].
//! [`History::bytes`] reports what the ring holds now.
//!
//! # Cost
//!
//! Recording a point is one [`crate::profile`] (symbolized through the caches: after the first
//! point only new stacks are resolved) plus interning the kept sites; it runs on the recorder's
//! own thread, inside the profiler guard, and takes the site lock only for the profile's copy.
//! The measured cost per point with N sites is in docs/benches.md.
//!
//! # Growing sites
//!
//! See [`History::growing`]: a site is reported when its live bytes rise steadily over the
//! window, by three tests that a burst, a step or sampling noise does not pass together.
use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::guard::profiler_scope;
use crate::owned::Owned;
use crate::sites::{Bucket, Estimates, FxBuild};
use crate::snapshot::{AddrKey, HeapProfile};
use crate::symbols::{Frame, Symbol};
use crate::sync::{self, Lock};
use crate::Stats;

/// Time between two recorded points, by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// How far back the history reaches, by default.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);
/// Sites kept by name in each point (by live bytes); the rest are summed into one entry.
pub const SITES_PER_POINT: usize = 64;
/// Points a site needs in the window before [`History::growing`] may report it.
pub const MIN_POINTS: usize = 8;
/// Bytes of one point without its sites (the counters, times, the "other" entry, ring slot).
pub const POINT_BYTES: usize = core::mem::size_of::<Point>()
    + 2 * core::mem::size_of::<usize>()
    + core::mem::size_of::<Arc<Point>>();
/// Bytes of one kept site in one point.
pub const ENTRY_BYTES: usize = core::mem::size_of::<Entry>();
/// Bytes of one interned site in the key table (slot, count, index entry).
pub const KEY_BYTES: usize =
    core::mem::size_of::<Option<Arc<[Frame]>>>() + 4 + core::mem::size_of::<(AddrKey, u32)>() + 8;
/// Most points a ring may hold, whatever the window and interval asked for.
pub const MAX_POINTS: usize = 100_000;
/// Points the trend tests look at (evenly thinned beyond this): the tests are quadratic.
const MAX_TREND_POINTS: usize = 120;

/// The four values of a site at one point (estimates, rounded).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Values {
    inuse_bytes: u64,
    inuse_objects: u64,
    alloc_bytes: u64,
    alloc_objects: u64,
}

impl Values {
    fn add(&mut self, o: &Values) {
        self.inuse_bytes += o.inuse_bytes;
        self.inuse_objects += o.inuse_objects;
        self.alloc_bytes += o.alloc_bytes;
        self.alloc_objects += o.alloc_objects;
    }
    fn is_zero(&self) -> bool {
        *self == Values::default()
    }
}

struct Entry {
    key: u32,
    v: Values,
}

struct Point {
    /// Time since the first point recorded in this process.
    at: Duration,
    unix_nanos: i64,
    stats: Stats,
    /// Some site with live bytes was summed into `other`: a site missing from `sites` is then
    /// unknown (below the cut) rather than zero.
    truncated: bool,
    /// Sorted by key.
    sites: Box<[Entry]>,
    /// Read by the `?since=` comparison (feature `http`).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    other: Values,
}

/// Interned sites, reference-counted by the points that name them, so the table only holds what
/// the ring still uses.
#[derive(Default)]
struct Keys {
    frames: Vec<Option<Arc<[Frame]>>>,
    refs: Vec<u32>,
    free: Vec<u32>,
    index: HashMap<AddrKey, u32, FxBuild>,
}

impl Keys {
    fn intern(&mut self, frames: &Arc<[Frame]>) -> u32 {
        if let Some(&k) = self.index.get(&AddrKey(frames.clone())) {
            self.refs[k as usize] += 1;
            return k;
        }
        let k = match self.free.pop() {
            Some(k) => {
                self.frames[k as usize] = Some(frames.clone());
                self.refs[k as usize] = 1;
                k
            }
            None => {
                self.frames.push(Some(frames.clone()));
                self.refs.push(1);
                (self.frames.len() - 1) as u32
            }
        };
        self.index.insert(AddrKey(frames.clone()), k);
        k
    }

    fn release(&mut self, k: u32) {
        let r = &mut self.refs[k as usize];
        *r -= 1;
        if *r == 0 {
            if let Some(f) = self.frames[k as usize].take() {
                self.index.remove(&AddrKey(f));
            }
            self.free.push(k);
        }
    }
}

struct Ring {
    interval: Duration,
    cap: usize,
    points: VecDeque<Arc<Point>>,
    keys: Keys,
}

impl Ring {
    fn new(interval: Duration, window: Duration) -> Ring {
        Ring {
            interval,
            cap: capacity(interval, window),
            points: VecDeque::new(),
            keys: Keys::default(),
        }
    }

    fn evict_to(&mut self, cap: usize) {
        while self.points.len() > cap {
            if let Some(old) = self.points.pop_front() {
                for e in old.sites.iter() {
                    self.keys.release(e.key);
                }
            }
        }
    }

    fn bytes(&self) -> usize {
        let entries: usize = self.points.iter().map(|p| p.sites.len()).sum();
        self.points.len() * POINT_BYTES + entries * ENTRY_BYTES + self.keys.frames.len() * KEY_BYTES
    }
}

fn capacity(interval: Duration, window: Duration) -> usize {
    let i = interval.as_nanos().max(1);
    let n = window.as_nanos().div_ceil(i) + 1;
    (n.min(MAX_POINTS as u128) as usize).max(2)
}

/// The ring. Taken only by the recorder (to push a point) and by readers (to copy `Arc`s), never
/// in the allocation hook, never while another heapsight lock is held; every holder is inside the
/// profiler guard.
static RING: Lock<Option<Ring>> = Lock::new(&sync::HISTORY_RING_LOCK, None);
/// The fork generation the recorder thread was started in, plus one; 0 if never. A forked child
/// has none of its parent's threads, so there [`start`] may start a recorder again (the points
/// recorded before the fork are kept).
static RECORDER_STARTED_IN: AtomicU64 = AtomicU64::new(0);

/// What [`RECORDER_STARTED_IN`] holds for a recorder started in this process.
fn this_generation() -> u64 {
    sync::fork_generation() + 1
}

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Starts recording: a background thread records a point now and every `interval` after,
/// keeping `window` of history (at most [`MAX_POINTS`] points). The HTTP server (`http::serve`,
/// feature `http`) calls it with the defaults. Only the first call starts a thread; a
/// later one returns `Ok(false)` and changes nothing.
///
/// Returns once the thread runs inside the profiler guard, so what std allocates to start it is
/// behind the caller. The thread lives as long as the process.
pub fn start(interval: Duration, window: Duration) -> io::Result<bool> {
    let generation = this_generation();
    if RECORDER_STARTED_IN.swap(generation, Ordering::SeqCst) == generation {
        return Ok(false);
    }
    let interval = interval.max(Duration::from_millis(1));
    profiler_scope(|| {
        let mut g = RING.lock();
        match g.as_mut() {
            Some(r) => {
                r.interval = interval;
                r.cap = capacity(interval, window);
                r.evict_to(r.cap);
            }
            None => *g = Some(Ring::new(interval, window)),
        }
    });
    // A static, not an `Arc` shared with the thread: the program allocates here, and a block it
    // allocated must not be freed inside the guard (the free would go uncounted).
    static READY: AtomicBool = AtomicBool::new(false);
    READY.store(false, Ordering::SeqCst);
    // Spawned outside the guard, like the HTTP workers (see `http`): std's per-thread bookkeeping
    // is then the program's, allocated and (never, the thread does not exit) freed as such.
    let spawned = thread::Builder::new()
        .name("heapsight-history".into())
        .spawn(move || {
            profiler_scope(|| {
                READY.store(true, Ordering::Release);
                let mut next = Instant::now();
                loop {
                    record_now();
                    next += interval;
                    let now = Instant::now();
                    if next > now {
                        thread::sleep(next - now);
                    } else {
                        // Fell behind (a slow point or a suspended process): skip, do not burst.
                        next = now;
                    }
                }
            })
        });
    if let Err(e) = spawned {
        RECORDER_STARTED_IN.store(0, Ordering::SeqCst);
        return Err(e);
    }
    while !READY.load(Ordering::Acquire) {
        thread::sleep(Duration::from_millis(1));
    }
    Ok(true)
}

/// Whether the recorder thread has been started.
pub fn is_recording() -> bool {
    RECORDER_STARTED_IN.load(Ordering::Relaxed) == this_generation()
}

/// Records one point now (what the recorder thread does every interval). For tests that drive
/// the history step by step; not part of the stable API.
#[doc(hidden)]
pub fn record_now() {
    profiler_scope(|| {
        // The time of the counters, which the profile reads first.
        let at = EPOCH.get_or_init(Instant::now).elapsed();
        let p = crate::snapshot::take(true);
        // Intern under the lock (a hash lookup per kept site), build the point's entries first.
        let mut kept: Vec<(&Arc<[Frame]>, Values)> = Vec::with_capacity(SITES_PER_POINT);
        let mut other = Values::default();
        let mut truncated = false;
        for s in p.sites() {
            let v = Values {
                inuse_bytes: s.inuse_bytes,
                inuse_objects: s.inuse_objects,
                alloc_bytes: s.alloc_bytes,
                alloc_objects: s.alloc_objects,
            };
            if v.is_zero() {
                continue;
            }
            // Sites are sorted by live bytes: the first ones with something live are the top.
            if s.inuse_bytes > 0 && kept.len() < SITES_PER_POINT {
                kept.push((&p.stacks[s.stack], v));
            } else {
                truncated |= s.inuse_bytes > 0;
                other.add(&v);
            }
        }
        let mut g = RING.lock();
        let ring = g.get_or_insert_with(|| Ring::new(DEFAULT_INTERVAL, DEFAULT_WINDOW));
        let mut sites: Vec<Entry> = kept
            .iter()
            .map(|(f, v)| Entry {
                key: ring.keys.intern(f),
                v: *v,
            })
            .collect();
        sites.sort_unstable_by_key(|e| e.key);
        ring.points.push_back(Arc::new(Point {
            at,
            unix_nanos: p.time_nanos(),
            stats: p.stats(),
            truncated,
            sites: sites.into_boxed_slice(),
            other,
        }));
        let cap = ring.cap;
        ring.evict_to(cap);
    })
}

/// Runs `f` while the calling thread holds the history's lock (for the fork test: a child forked
/// meanwhile must not inherit it held). Not part of the stable API.
#[doc(hidden)]
pub fn with_lock_held<R>(f: impl FnOnce() -> R) -> R {
    profiler_scope(|| {
        let _g = RING.lock();
        f()
    })
}

/// Empties the history and sets its window in points (tests that run several scenarios in one
/// process). Not part of the stable API.
#[doc(hidden)]
pub fn reset(interval: Duration, window: Duration) {
    profiler_scope(|| {
        let old = RING
            .lock()
            .replace(Ring::new(interval.max(Duration::from_millis(1)), window));
        drop(old);
    })
}

/// A copy of the recorded history, from [`crate::history()`]. The points are shared with the ring
/// (a copy costs a few pointers per point), so keeping one does not stop the recorder.
pub struct History {
    interval: Duration,
    cap: usize,
    /// Copied inside the profiler guard.
    points: Owned<Vec<Arc<Point>>>,
    frames: Owned<Vec<Option<Arc<[Frame]>>>>,
    bytes: usize,
}

/// The history recorded so far (empty if nothing was recorded: see [`start`]).
pub(crate) fn snapshot() -> History {
    profiler_scope(|| {
        let g = RING.lock();
        match g.as_ref() {
            Some(r) => History {
                interval: r.interval,
                cap: r.cap,
                points: Owned::new(r.points.iter().cloned().collect()),
                frames: Owned::new(r.keys.frames.clone()),
                bytes: r.bytes(),
            },
            None => History {
                interval: DEFAULT_INTERVAL,
                cap: capacity(DEFAULT_INTERVAL, DEFAULT_WINDOW),
                points: Owned::default(),
                frames: Owned::default(),
                bytes: 0,
            },
        }
    })
}

/// One recorded point: when, and the exact counters then.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct HistoryPoint {
    /// Time since the first point this process recorded (monotonic).
    pub elapsed: Duration,
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub unix_nanos: i64,
    /// The exact counters at that point.
    pub stats: Stats,
}

/// A site whose live bytes keep rising over the window, from [`History::growing`].
#[derive(Debug)]
#[non_exhaustive]
pub struct GrowingSite<'a> {
    frames: &'a [Frame],
    /// Growth of its live bytes (Theil–Sen slope over the window), bytes per minute.
    pub bytes_per_minute: f64,
    /// One standard error of `bytes_per_minute` from sampling: that of the difference between
    /// the first and last points' estimates over the time between them (a bound: the slope uses
    /// every pair). Sites are listed by `bytes_per_minute − 2 × this`, so a growth that sampling
    /// could explain never ranks above one it could not.
    pub bytes_per_minute_error: f64,
    /// Strength of the trend: the Mann–Kendall statistic in standard deviations (only pairs of
    /// points further apart than their sampling error count). Reported sites have at least 3.
    pub z: f64,
    /// Live bytes (estimate) at the latest point.
    pub inuse_bytes: u64,
    /// One standard error of `inuse_bytes`: `√(rate × inuse_bytes)` (each sampled block of a
    /// size well under the rate stands for about `rate` bytes, and the count is Poisson).
    pub inuse_error: f64,
    /// `(seconds before the latest point, live bytes)` for each point the trend used, oldest
    /// first: the sparkline.
    pub series: Vec<(f64, u64)>,
    /// `Some` when the site is reported because the heap's *exact* live bytes rise (see
    /// [`History::heap_trend`]) and this site's samples are the ones that accumulate, although
    /// its own samples are too few for its own trend test (a slow leak at the default rate).
    /// The site's estimates above stay its own, unscaled; this is the whole heap's exact trend,
    /// its own number.
    pub heap_trend: Option<HeapTrend>,
}

/// The trend of the heap's exact live bytes ([`crate::Stats::inuse_bytes`] at each point), from
/// [`History::heap_trend`].
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct HeapTrend {
    /// Theil–Sen slope of the exact live bytes, bytes per minute.
    pub bytes_per_minute: f64,
    /// Its standard error from the series' own noise (the points' scatter about the trend).
    pub bytes_per_minute_error: f64,
    /// Mann–Kendall statistic in standard deviations; a reported trend has at least 3.
    pub z: f64,
}

impl GrowingSite<'_> {
    /// The site's stack, leaf first, allocator frames trimmed (as in [`crate::Site::frames`]).
    pub fn frames(&self) -> &[Frame] {
        self.frames
    }
}

impl History {
    /// Points recorded, oldest first.
    pub fn points(&self) -> impl ExactSizeIterator<Item = HistoryPoint> + '_ {
        self.points.iter().map(|p| HistoryPoint {
            elapsed: p.at,
            unix_nanos: p.unix_nanos,
            stats: p.stats,
        })
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The recording interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Most points kept (the window divided by the interval, plus one).
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Bytes the ring held when this copy was taken (points, kept sites, key table); part of
    /// [`crate::Stats::profiler_bytes`].
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The sites whose live bytes keep rising over the window, fastest first.
    ///
    /// A site is reported when, over the points it was recorded in (at least [`MIN_POINTS`]):
    ///
    /// 1. its Theil–Sen slope (the median of the slopes between every pair of points) is
    ///    positive: a few outlying points, such as a burst, do not move a median;
    /// 2. a Mann–Kendall test says the rise is a trend (z ≥ 3), where a pair of points counts as
    ///    up or down only if they differ by more than twice their sampling error: at rate `R` a
    ///    live-bytes estimate `y` has a standard deviation of about `sqrt(R × y)` (less for
    ///    blocks larger than `R`, which are always sampled), so pairs within that are ties;
    /// 3. it rose through the whole window: the median of each third of its points exceeds the
    ///    one before by more than twice their sampling error. A burst that came and went, or a
    ///    step (a cache filled once), fails this: one of the thirds does not rise.
    ///
    /// How soon: the Mann–Kendall test alone needs about 9 points of steady rise, and the thirds
    /// test needs the rise per third to stand out of the noise. A leak of `2 × R` bytes per
    /// interval starting from nothing (4 KiB blocks) was reported after 11 intervals (median) and
    /// at most 18, in 200 simulated runs at each of 512 KiB and 64 KiB, where no churning,
    /// bursting or filled-once site was ever reported (`cargo test --lib history`); a faster leak
    /// is found sooner, a slower one later. A site missing from a point (below the
    /// [`SITES_PER_POINT`] cut) is skipped at that point.
    ///
    /// A slower leak has too few samples for these tests (100 KiB per 10 s at 512 KiB: about
    /// six in five minutes). So when no site passes them but the heap's *exact* live bytes rise
    /// ([`History::heap_trend`]: exact counters, no sampling error), the rise is credited to the
    /// site whose samples accumulate most: whose estimate never fell over the window and whose
    /// rise has a Mann–Kendall z of at least 2 (equal values tied). It is reported with its own
    /// estimates, unscaled, and the heap's trend in [`GrowingSite::heap_trend`]. The exact
    /// trend decides whether anything grows, the samples only which site: a churning or
    /// bursting heap has no exact trend, and no site is named. In a simulated service at the
    /// default settings (50 MiB of churning pools, requests in flight), such a leak was named
    /// within 5 minutes in 297 of 300 runs (median 19 points), and no site in 300 churn and 300 burst runs of 10 minutes (`cargo test
    /// --lib history::tests::slow_leak`).
    pub fn growing(&self) -> Vec<GrowingSite<'_>> {
        let Some(last) = self.points.last() else {
            return Vec::new();
        };
        let trends: Owned<Vec<Found>> = profiler_scope(|| {
            let mut out = Vec::new();
            // Sites not reported on their own: (key, Mann–Kendall z of their estimates, series).
            let mut rest: Vec<(u32, f64, Series)> = Vec::new();
            for e in last.sites.iter() {
                let mut t = Vec::new();
                let mut y = Vec::new();
                let mut a = Vec::new();
                let mut r = Vec::new();
                for p in &self.points {
                    let (v, al) = match p.sites.binary_search_by_key(&e.key, |x| x.key) {
                        Ok(i) => (
                            p.sites[i].v.inuse_bytes as f64,
                            p.sites[i].v.alloc_bytes as f64,
                        ),
                        // Nothing live then; what it had allocated was summed into "other".
                        Err(_) if !p.truncated => (0.0, f64::NAN),
                        Err(_) => continue,
                    };
                    t.push(p.at.as_secs_f64());
                    y.push(v);
                    a.push(al);
                    r.push(p.stats.sample_rate as f64);
                }
                thin(&mut t, &mut y, &mut a, &mut r, MAX_TREND_POINTS);
                let end = last.at.as_secs_f64();
                let series: Series = t
                    .iter()
                    .zip(&y)
                    .map(|(t, y)| (end - t, *y as u64))
                    .collect();
                match trend(&t, &y, &a, &r) {
                    Some(tr) => out.push((e.key, tr, series, None)),
                    None => rest.push((e.key, accumulation_z(&y), series)),
                }
            }
            // A slow leak: too few samples for its own trend, but the exact live bytes rise.
            if out.is_empty() {
                if let Some(heap) = self.heap_trend() {
                    let z: Vec<f64> = rest.iter().map(|c| c.1).collect();
                    if let Some(i) = attribute(&z) {
                        let (key, _, series) = rest.swap_remove(i);
                        let t: Vec<f64> = series.iter().map(|s| end_secs(last) - s.0).collect();
                        let y: Vec<f64> = series.iter().map(|s| s.1 as f64).collect();
                        let n = y.len();
                        let slope = theil_sen(&t, &y);
                        let slope_sd = pair_sd(
                            y[0],
                            y[n - 1],
                            f64::NAN,
                            f64::NAN,
                            last.stats.sample_rate as f64,
                        ) / (t[n - 1] - t[0]).max(f64::MIN_POSITIVE);
                        let tr = Trend {
                            slope,
                            slope_sd,
                            z: z[i],
                        };
                        out.push((key, tr, series, Some(heap)));
                    }
                }
            }
            Owned::new(out)
        });
        // The result is the caller's: built outside the guard, like any of its allocations.
        let mut out: Vec<GrowingSite<'_>> = Vec::with_capacity(trends.len());
        for (key, tr, series, heap) in &trends {
            let Some(Some(frames)) = self.frames.get(*key as usize) else {
                continue;
            };
            let inuse_bytes = series.last().map_or(0, |s| s.1);
            out.push(GrowingSite {
                frames,
                bytes_per_minute: tr.slope * 60.0,
                bytes_per_minute_error: tr.slope_sd * 60.0,
                z: tr.z,
                inuse_bytes,
                inuse_error: (last.stats.sample_rate as f64 * inuse_bytes as f64).sqrt(),
                series: series.clone(),
                heap_trend: *heap,
            });
        }
        let low = |g: &GrowingSite<'_>| g.bytes_per_minute - 2.0 * g.bytes_per_minute_error;
        out.sort_by(|a, b| low(b).total_cmp(&low(a)));
        out
    }

    /// The trend of the heap's exact live bytes over the window, when it is a significant rise
    /// (`None` otherwise, or below [`MIN_POINTS`] points): see `exact_trend`. This is the
    /// page's chart put to a test; [`History::growing`] names a site as soon as it is `Some`.
    pub fn heap_trend(&self) -> Option<HeapTrend> {
        let mut t: Vec<f64> = self.points.iter().map(|p| p.at.as_secs_f64()).collect();
        let mut y: Vec<f64> = self
            .points
            .iter()
            .map(|p| p.stats.inuse_bytes as f64)
            .collect();
        let (mut a, mut r) = (y.clone(), y.clone());
        thin(&mut t, &mut y, &mut a, &mut r, MAX_TREND_POINTS);
        exact_trend(&t, &y).map(|tr| HeapTrend {
            bytes_per_minute: tr.slope * 60.0,
            bytes_per_minute_error: tr.slope_sd * 60.0,
            z: tr.z,
        })
    }

    /// The point nearest `age` before `now` (both since the first point), if any was recorded.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    fn point_at(&self, now: Duration, age: Duration) -> Option<&Arc<Point>> {
        let target = now.saturating_sub(age);
        self.points.iter().min_by_key(|p| p.at.abs_diff(target))
    }
}

/// `(seconds before the latest point, live bytes)`, oldest first.
type Series = Vec<(f64, u64)>;
/// A site `growing()` reports: its key, trend, series, and the heap's trend if credited with it.
type Found = (u32, Trend, Series, Option<HeapTrend>);

/// A trend verdict: the slope (bytes per second) and the Mann–Kendall z.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Trend {
    pub slope: f64,
    /// Sampling standard error of `slope` (see `GrowingSite::bytes_per_minute_error`).
    pub slope_sd: f64,
    pub z: f64,
}

/// Pairs closer than this many sampling standard deviations are ties.
const PAIR_SD: f64 = 2.0;
/// Thirds must rise by more than this many sampling standard deviations.
const THIRD_SD: f64 = 1.5;
/// Mann–Kendall z a reported trend needs (one-sided p ≈ 0.0013 for independent points).
const MIN_Z: f64 = 3.0;

/// Sampling standard deviation of `y_b − y_a`, the difference of a site's live-bytes estimates at
/// an earlier point `a` and a later point `b`, taken at rates up to `r`. `aa`, `ab` are the
/// site's allocated-bytes estimates (NaN if unknown).
///
/// Samples live at both points cancel in the difference: only the blocks that came or went in
/// between add error, about `r` per byte of them (a block of `s < r` bytes is sampled with
/// probability ≈ `s/r` and then weighs ≈ `r`). New blocks are at most the bytes allocated in
/// between, `ab − aa`; freed ones at most that plus `y_a − y_b`. So the variance is at most
/// `r × (2(ab − aa) + y_a − y_b)`, and never more than `r × (y_a + y_b)` (all blocks replaced).
/// Those bounds are themselves estimates; below one sample's worth they are raised to it (`r²`),
/// so differences of one or two samples stay ties. Rate 1 is exact; rate 0 has no estimates.
fn pair_sd(ya: f64, yb: f64, aa: f64, ab: f64, r: f64) -> f64 {
    if r <= 1.0 {
        return 1.0;
    }
    let replaced = ya.max(0.0) + yb.max(0.0);
    let turnover = if aa.is_finite() && ab.is_finite() {
        (2.0 * (ab - aa).max(0.0) + ya - yb).max(r).min(replaced)
    } else {
        replaced
    };
    (r * turnover).sqrt().max(1.0)
}

/// Keeps at most `max` points, evenly spread, always the last.
fn thin(t: &mut Vec<f64>, y: &mut Vec<f64>, a: &mut Vec<f64>, r: &mut Vec<f64>, max: usize) {
    let n = t.len();
    if n <= max {
        return;
    }
    let pick: Vec<usize> = (0..max)
        .map(|i| (n - 1) - (max - 1 - i) * (n - 1) / (max - 1))
        .collect();
    for v in [t, y, a, r] {
        let kept: Vec<f64> = pick.iter().map(|&i| v[i]).collect();
        *v = kept;
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_unstable_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The three tests of [`History::growing`] on one series: times `t` (seconds, increasing), live
/// bytes `y`, allocated bytes `a` (NaN where unknown), sample rates `r`. `Some` only for a
/// growing series.
pub(crate) fn trend(t: &[f64], y: &[f64], a: &[f64], r: &[f64]) -> Option<Trend> {
    let n = t.len();
    if n < MIN_POINTS {
        return None;
    }
    // The thirds first: linear, and what most steady sites fail.
    // Each third's median above the previous one's, beyond sampling error.
    let third = n / 3;
    let mut m = [0.0; 3];
    let mut ma = [0.0; 3];
    let mut rate = [0.0f64; 3];
    for k in 0..3 {
        let (lo, hi) = (k * third, if k == 2 { n } else { (k + 1) * third });
        m[k] = median(&mut y[lo..hi].to_vec());
        ma[k] = if a[lo..hi].iter().all(|x| x.is_finite()) {
            median(&mut a[lo..hi].to_vec())
        } else {
            f64::NAN
        };
        rate[k] = r[lo..hi].iter().copied().fold(0.0, f64::max);
    }
    for k in 1..3 {
        let sd = pair_sd(m[k - 1], m[k], ma[k - 1], ma[k], rate[k - 1].max(rate[k]));
        if m[k] - m[k - 1] <= THIRD_SD * sd {
            return None;
        }
    }
    // Mann–Kendall over pairs that differ by more than their sampling error.
    let mut s = 0i64;
    let mut slopes = Vec::with_capacity(n * (n - 1) / 2);
    for i in 0..n {
        for j in i + 1..n {
            let d = y[j] - y[i];
            if d.abs() > PAIR_SD * pair_sd(y[i], y[j], a[i], a[j], r[i].max(r[j])) {
                s += d.signum() as i64;
            }
            let dt = t[j] - t[i];
            if dt > 0.0 {
                slopes.push(d / dt);
            }
        }
    }
    let nf = n as f64;
    let var = nf * (nf - 1.0) * (2.0 * nf + 5.0) / 18.0;
    let z = if s > 0 {
        (s - 1) as f64 / var.sqrt()
    } else {
        0.0
    };
    if z < MIN_Z || slopes.is_empty() {
        return None;
    }
    let slope = median(&mut slopes);
    if slope <= 0.0 {
        return None;
    }
    let slope_sd = pair_sd(
        y[0],
        y[n - 1],
        a[0],
        a[n - 1],
        r.iter().copied().fold(0.0, f64::max),
    ) / (t[n - 1] - t[0]).max(f64::MIN_POSITIVE);
    Some(Trend { slope, slope_sd, z })
}

fn end_secs(p: &Point) -> f64 {
    p.at.as_secs_f64()
}

/// Median of the slopes between every pair of points.
fn theil_sen(t: &[f64], y: &[f64]) -> f64 {
    let mut slopes = Vec::with_capacity(t.len() * t.len().saturating_sub(1) / 2);
    for i in 0..t.len() {
        for j in i + 1..t.len() {
            if t[j] > t[i] {
                slopes.push((y[j] - y[i]) / (t[j] - t[i]));
            }
        }
    }
    if slopes.is_empty() {
        0.0
    } else {
        median(&mut slopes)
    }
}

/// Mann–Kendall z of a series, equal values tied: `(S − 1) / sd(S)`, 0 unless `S > 0`.
fn mann_kendall_z(y: &[f64]) -> f64 {
    let n = y.len();
    let mut s = 0i64;
    for i in 0..n {
        for j in i + 1..n {
            s += (y[j] - y[i]).partial_cmp(&0.0).map_or(0, |o| o as i64);
        }
    }
    let nf = n as f64;
    let var = nf * (nf - 1.0) * (2.0 * nf + 5.0) / 18.0;
    if s > 0 && var > 0.0 {
        (s - 1) as f64 / var.sqrt()
    } else {
        0.0
    }
}

/// Thirds of an exact series must rise by this many standard errors of their medians.
const EXACT_THIRD_SD: f64 = 1.5;

/// The trend test on an exact series (the heap's live bytes, no sampling error): Mann–Kendall
/// z ≥ [`MIN_Z`] with only equal values tied, a positive Theil–Sen slope, and each third's
/// median above the previous one's by [`EXACT_THIRD_SD`] standard errors, the noise measured on
/// the series itself: `σ` from the median absolute deviation of successive differences (which a
/// steady trend only shifts), a third's median having a standard error of `1.2533 σ / √(n/3)`.
/// A burst that came and went, or one at the very end, fails the thirds, as for sites; the
/// churn of a steady service is noise that Mann–Kendall does not take for a trend. `slope_sd`
/// is the least-squares standard error `σ / √Σ(t − t̄)²`.
pub(crate) fn exact_trend(t: &[f64], y: &[f64]) -> Option<Trend> {
    let n = t.len();
    if n < MIN_POINTS {
        return None;
    }
    let mut d: Vec<f64> = y.windows(2).map(|w| w[1] - w[0]).collect();
    let md = median(&mut d.clone());
    let mut dev: Vec<f64> = d.iter_mut().map(|x| (*x - md).abs()).collect();
    // For independent noise σ, successive differences have σ√2; MAD × 1.4826 estimates an sd.
    // At least one byte, so an exact staircase without noise still has a scale.
    let sigma = (1.4826 * median(&mut dev) / std::f64::consts::SQRT_2).max(1.0);
    let third = n / 3;
    let mut m = [0.0; 3];
    for (k, mk) in m.iter_mut().enumerate() {
        let (lo, hi) = (k * third, if k == 2 { n } else { (k + 1) * third });
        *mk = median(&mut y[lo..hi].to_vec());
    }
    let se = 1.2533 * sigma / (third as f64).sqrt();
    for k in 1..3 {
        if m[k] - m[k - 1] <= EXACT_THIRD_SD * std::f64::consts::SQRT_2 * se {
            return None;
        }
    }
    let z = mann_kendall_z(y);
    if z < MIN_Z {
        return None;
    }
    let slope = theil_sen(t, y);
    if slope <= 0.0 {
        return None;
    }
    let tm = t.iter().sum::<f64>() / n as f64;
    let sxx: f64 = t.iter().map(|x| (x - tm).powi(2)).sum();
    Some(Trend {
        slope,
        slope_sd: sigma / sxx.sqrt().max(f64::MIN_POSITIVE),
        z,
    })
}

/// Mann–Kendall z a site's estimates need to be credited with the heap's exact rise.
const ATTRIBUTE_Z: f64 = 2.0;

/// How strongly a site's live samples accumulate: the Mann–Kendall z of its live-bytes
/// estimates, equal values tied, and 0 if the estimate ever fell. A leaking site keeps every
/// sample it got, so its estimate is a staircase that never steps down, and nearly every pair of
/// points on different steps is in order: one sample that stayed through the middle of 30
/// points is already z ≈ 4. A churning site loses samples as its blocks are freed: its estimate
/// steps down somewhere as soon as it holds a few samples, and its z is about N(0, 1) anyway.
fn accumulation_z(y: &[f64]) -> f64 {
    if y.len() < MIN_POINTS || y.windows(2).any(|w| w[1] < w[0]) {
        return 0.0;
    }
    mann_kendall_z(y)
}

/// Which site, of those with accumulation scores `z`, the heap's exact rise is credited to: the
/// one whose samples accumulate most, if that is at least [`ATTRIBUTE_Z`]. Called only when the
/// exact trend is significant, so it chooses among sites; it does not decide whether there is
/// a leak.
fn attribute(z: &[f64]) -> Option<usize> {
    let (i, best) = z.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1))?;
    (*best >= ATTRIBUTE_Z).then_some(i)
}

/// `profile now − the point nearest age ago`: the profile of now, plus for every site recorded at
/// that point a record of its values then, negated. Sites summed into that point's "other" entry
/// are one negative record on a pseudo-frame, so the totals are exactly the differences. `None`
/// if nothing was recorded.
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) fn since(age: Duration) -> Option<HeapProfile> {
    let h = snapshot();
    profiler_scope(|| {
        let now_at = EPOCH.get_or_init(Instant::now).elapsed();
        let then = h.point_at(now_at, age)?.clone();
        let mut p = crate::snapshot::take(true);
        let mut by_addr: HashMap<AddrKey, usize, FxBuild> = p
            .stacks
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, s)| (AddrKey(s.clone()), i))
            .collect();
        let neg = |v: &Values| Estimates {
            alloc_objects: -(v.alloc_objects as f64),
            alloc_bytes: -(v.alloc_bytes as f64),
            inuse_objects: -(v.inuse_objects as f64),
            inuse_bytes: -(v.inuse_bytes as f64),
        };
        for e in then.sites.iter() {
            let Some(Some(frames)) = h.frames.get(e.key as usize) else {
                continue;
            };
            let stack = if frames.is_empty() {
                0
            } else {
                *by_addr.entry(AddrKey(frames.clone())).or_insert_with(|| {
                    p.stacks.push(frames.clone());
                    p.stacks.len() - 1
                })
            };
            p.buckets.push(Bucket {
                stack,
                tag: 0,
                size: 0,
                rate: 0,
                allocs: 0,
                frees: 0,
                est: neg(&e.v),
            });
        }
        if !then.other.is_zero() {
            p.stacks.push(Arc::from(vec![Frame {
                // Not 0 (the overflow pseudo-location) and in no mapping.
                address: 1,
                symbols: crate::symbols::Symbols::new(vec![Symbol {
                    function: format!(
                        "heapsight: sites below the top {SITES_PER_POINT} at the earlier point"
                    ),
                    file: None,
                    line: None,
                }]),
            }]));
            p.buckets.push(Bucket {
                stack: p.stacks.len() - 1,
                tag: 0,
                size: 0,
                rate: 0,
                allocs: 0,
                frees: 0,
                est: neg(&then.other),
            });
        }
        p.duration_nanos = p.time_nanos.saturating_sub(then.unix_nanos).max(0);
        p.assemble();
        Some(p)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64* for the simulated sampler.
    struct Rng(u64);
    impl Rng {
        fn unit(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545F4914F6CDD1D) >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// A site simulated block by block with heapsight's sampling rule (a block of `size` is
    /// sampled with probability `1 - exp(-size/rate)` and then stands for `1/p` blocks): its
    /// live-bytes estimate after each interval. `live_blocks(i)` says which blocks (by id) are
    /// live after interval `i`; each id's sampling coin is thrown once, when first seen.
    fn simulate(
        rng: &mut Rng,
        rate: f64,
        size: f64,
        intervals: usize,
        live: impl Fn(usize) -> std::ops::Range<u64>,
    ) -> Series {
        let p = 1.0 - (-size / rate).exp();
        let w = size / p;
        let mut sampled: HashMap<u64, bool> = HashMap::new();
        let mut out = Series::default();
        for i in 0..intervals {
            let live = live(i)
                .filter(|id| *sampled.entry(*id).or_insert_with(|| rng.unit() < p))
                .count() as f64;
            out.y.push(live * w);
            out.a
                .push(sampled.values().filter(|s| **s).count() as f64 * w);
        }
        out
    }

    #[derive(Default, Debug)]
    struct Series {
        y: Vec<f64>,
        a: Vec<f64>,
    }

    fn verdict(s: &Series, k: usize, rate: f64) -> Option<Trend> {
        let t: Vec<f64> = (0..k).map(|i| i as f64 * 10.0).collect();
        let r = vec![rate; k];
        trend(&t, &s.y[..k], &s.a[..k], &r)
    }

    const KIB: f64 = 1024.0;

    /// Over many seeds and both rates: a leak of 2 × rate per interval (4 KiB blocks) is found
    /// within 20 intervals; churning, bursting, stepping and steady sites never are.
    #[test]
    fn leak_found_and_noise_not() {
        for rate in [512.0 * KIB, 64.0 * KIB] {
            let per = (2.0 * rate / (4.0 * KIB)) as u64; // blocks per interval: 2 × rate bytes
            let mut detected_by = Vec::new();
            // Theil–Sen slope over the 30 points, relative to the truth.
            let mut slopes = Vec::new();
            for seed in 1..=200u64 {
                let mut rng = Rng(seed * 0x9E3779B97F4A7C15);
                let n = 30;
                let leak = simulate(&mut rng, rate, 4.0 * KIB, n, |i| 0..per * (i as u64 + 1));
                let first = (MIN_POINTS..=n).find(|&k| verdict(&leak, k, rate).is_some());
                detected_by.push(first.unwrap_or(usize::MAX));
                if let Some(tr) = verdict(&leak, n, rate) {
                    slopes.push(tr.slope * 10.0 / (per as f64 * 4.0 * KIB));
                }
                // Steady pool of 4 MiB replaced at a quarter per interval.
                let pool = (4.0 * 1024.0 * KIB / (4.0 * KIB)) as u64;
                let churn = simulate(&mut rng, rate, 4.0 * KIB, n, |i| {
                    let start = i as u64 * pool / 4;
                    start..start + pool
                });
                // A burst of 16 MiB during intervals 10..13 and again at the very end.
                let burst = simulate(&mut rng, rate, 4.0 * KIB, n, |i| {
                    if (10..13).contains(&i) || i >= n - 3 {
                        1_000_000..1_000_000 + 4096
                    } else {
                        0..64
                    }
                });
                // A cache that fills over the first 4 intervals and then stays: growth while it
                // fills, so it is checked once the filling is in the oldest third of the window.
                let step = simulate(&mut rng, rate, 4.0 * KIB, n, |i| {
                    0..(i.min(3) as u64 + 1) * 800
                });
                for (name, y, from) in [
                    ("churn", &churn, MIN_POINTS),
                    ("burst", &burst, MIN_POINTS),
                    ("step", &step, 12),
                ] {
                    for k in from..=n {
                        assert!(
                            verdict(y, k, rate).is_none(),
                            "{name} reported at rate {rate}, seed {seed}, {k} points: {:?}",
                            &y.y[..k]
                        );
                    }
                }
            }
            let mean = slopes.iter().sum::<f64>() / slopes.len() as f64;
            let sd = (slopes.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / slopes.len() as f64)
                .sqrt();
            println!(
                "rate {rate}: slope / truth = {mean:.3} ± {sd:.3} over {} runs",
                slopes.len()
            );
            assert!((mean - 1.0).abs() < 0.05, "slope biased: {mean}");
            detected_by.sort_unstable();
            let (median, worst) = (
                detected_by[detected_by.len() / 2],
                *detected_by.last().unwrap(),
            );
            println!(
                "rate {rate}: leak reported after {median} intervals (median), {worst} at most"
            );
            assert!(
                worst <= 20,
                "leak found only after {worst} intervals at rate {rate}"
            );
        }
    }

    /// A service simulated at the default settings (512 KiB, 10 s points): a slow leak of
    /// 100 KiB per 10 s (1 KiB blocks), 50 MiB of pools churning in four sites (block sizes
    /// spread around 256 B, 4 KiB, 16 KiB and 64 KiB, replaced between a quarter and twice per
    /// interval), requests in flight (0 to 1 MiB of fresh 16 KiB blocks at each point) and,
    /// in burst runs, 16 MiB held during points 10..13 and the last three. Every block is
    /// sampled by heapsight's rule (probability `1 − exp(−size/rate)`, weight `size/p`), the
    /// points carry the exact live bytes, and [`History::growing`] itself decides.
    struct Service {
        seed: u64,
        leak: bool,
        burst: bool,
    }

    const RATE: f64 = 512.0 * KIB;
    /// (mean block size, pool bytes, pool fraction replaced per interval)
    const POOLS: [(f64, f64, f64); 4] = [
        (256.0, 12.5 * 1024.0 * KIB, 0.5),
        (4.0 * KIB, 12.5 * 1024.0 * KIB, 1.0),
        (16.0 * KIB, 12.5 * 1024.0 * KIB, 0.25),
        (64.0 * KIB, 12.5 * 1024.0 * KIB, 2.0),
    ];
    const LEAK_SITE: u32 = 0;

    fn mix(mut x: u64) -> u64 {
        x = x.wrapping_add(0x9E3779B97F4A7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D049BB133111EB);
        x ^ (x >> 31)
    }
    fn unit(x: u64) -> f64 {
        (mix(x) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Block `id` of site `site`: (exact size, estimate if sampled else 0).
    fn block(seed: u64, site: u64, id: u64, mean: f64) -> (f64, f64) {
        let h = seed.wrapping_mul(0x100000001B3) ^ (site << 48) ^ id;
        let size = (mean * (0.5 + unit(h))).round().max(1.0);
        let p = 1.0 - (-size / RATE).exp();
        (
            size,
            if unit(h ^ 0x5555_5555) < p {
                size / p
            } else {
                0.0
            },
        )
    }

    /// Prefix sums of exact and estimated bytes of a site's first `n` blocks.
    fn prefix(seed: u64, site: u64, n: u64, mean: f64) -> (Vec<f64>, Vec<f64>) {
        let (mut x, mut e) = (vec![0.0], vec![0.0]);
        for id in 0..n {
            let (s, w) = block(seed, site, id, mean);
            x.push(x.last().unwrap() + s);
            e.push(e.last().unwrap() + w);
        }
        (x, e)
    }

    /// The live id range of a site at interval `i`.
    type LiveRange = Box<dyn Fn(usize) -> (u64, u64)>;

    impl Service {
        /// The points of `n` intervals.
        fn points(&self, n: usize) -> Vec<Arc<Point>> {
            let seed = self.seed;
            // Site: (key, mean size, live id range at interval i, all ids ever allocated).
            let mut sites: Vec<(u32, f64, LiveRange)> = Vec::new();
            if self.leak {
                sites.push((LEAK_SITE, KIB, Box::new(|i| (0, 100 * (i as u64 + 1)))));
            }
            for (k, &(mean, bytes, frac)) in POOLS.iter().enumerate() {
                let pool = (bytes / mean) as u64;
                let step = (frac * pool as f64) as u64;
                sites.push((
                    1 + k as u32,
                    mean,
                    Box::new(move |i| (i as u64 * step, i as u64 * step + pool)),
                ));
            }
            // Requests in flight: fresh blocks each point, 0..1 MiB of them.
            sites.push((
                5,
                16.0 * KIB,
                Box::new(move |i| {
                    let k = (unit(seed ^ 0xAAAA ^ i as u64) * 64.0) as u64;
                    (i as u64 * 1000, i as u64 * 1000 + k)
                }),
            ));
            if self.burst {
                sites.push((
                    6,
                    64.0 * KIB,
                    Box::new(move |i| {
                        if (10..13).contains(&i) || i >= n - 3 {
                            (i as u64 * 256, i as u64 * 256 + 256)
                        } else {
                            (0, 0)
                        }
                    }),
                ));
            }
            let sums: Vec<(Vec<f64>, Vec<f64>)> = sites
                .iter()
                .map(|(key, mean, live)| prefix(seed, *key as u64, live(n - 1).1 + 1, *mean))
                .collect();
            (0..n)
                .map(|i| {
                    let mut stats = Stats {
                        sample_rate: RATE as u64,
                        ..Stats::default()
                    };
                    let mut entries = Vec::new();
                    for ((key, _, live), (x, e)) in sites.iter().zip(&sums) {
                        let (lo, hi) = live(i);
                        let (lo, hi) = (lo as usize, hi as usize);
                        stats.inuse_bytes += (x[hi] - x[lo]) as u64;
                        let v = Values {
                            inuse_bytes: (e[hi] - e[lo]).round() as u64,
                            alloc_bytes: e[hi].round() as u64,
                            ..Values::default()
                        };
                        if v.inuse_bytes > 0 {
                            entries.push(Entry { key: *key, v });
                        }
                    }
                    Arc::new(Point {
                        at: Duration::from_secs(10 * i as u64),
                        unix_nanos: 0,
                        stats,
                        truncated: false,
                        sites: entries.into_boxed_slice(),
                        other: Values::default(),
                    })
                })
                .collect()
        }
    }

    fn sim_history(points: &[Arc<Point>]) -> History {
        let frames = (0..8)
            .map(|k| {
                Some(Arc::from(vec![Frame {
                    address: 0x1000 + k,
                    symbols: crate::symbols::Symbols::new(Vec::new()),
                }]))
            })
            .collect();
        History {
            interval: DEFAULT_INTERVAL,
            cap: capacity(DEFAULT_INTERVAL, DEFAULT_WINDOW),
            points: Owned::new(points.to_vec()),
            frames: Owned::new(frames),
            bytes: 0,
        }
    }

    /// The keys `growing()` reports, and the heap trend, after each point from the first.
    fn reports(points: &[Arc<Point>]) -> Vec<(Vec<usize>, bool)> {
        (1..=points.len())
            .map(|k| {
                let h = sim_history(&points[..k]);
                let keys = h
                    .growing()
                    .iter()
                    .map(|g| g.frames()[0].address - 0x1000)
                    .collect();
                (keys, h.heap_trend().is_some())
            })
            .collect()
    }

    /// Intervals in five minutes at the default interval.
    const FIVE_MINUTES: usize = 30;

    /// The slow leak at the default settings: named within five minutes in at least 99 % of
    /// 300 runs (the runs it is not are those where not one of its ~6 blocks' worth of bytes
    /// was sampled: probability e^−6 ≈ 0.25 %), no other site ever named instead; no site
    /// named in 300 churn and 300 burst runs over ten minutes. And the list agrees with the
    /// heap trend: whenever the exact trend is significant, a site is named.
    #[test]
    fn slow_leak_found_at_default_rate() {
        let runs = 300u64;
        let mut found = Vec::new();
        let mut trend_at = Vec::new();
        let (mut unnamed, mut heap_points) = (0, 0);
        for seed in 1..=runs {
            let pts = Service {
                seed,
                leak: true,
                burst: false,
            }
            .points(FIVE_MINUTES);
            let r = reports(&pts);
            for (k, (keys, heap)) in r.iter().enumerate() {
                assert!(
                    keys.iter().all(|&s| s == LEAK_SITE as usize),
                    "seed {seed}, point {k}: churn reported {keys:?}"
                );
                // The exact trend can be significant before the leak has any sample to name it
                // by (900 KiB leaked at 9 points: no sample with probability e^−1.8): counted.
                if *heap && keys.is_empty() {
                    unnamed += 1;
                }
                heap_points += *heap as usize;
            }
            found.push(
                r.iter()
                    .position(|(k, _)| !k.is_empty())
                    .map_or(usize::MAX, |k| k + 1),
            );
            trend_at.push(r.iter().position(|(_, h)| *h).map_or(usize::MAX, |k| k + 1));
        }
        for (leak, burst) in [(false, false), (false, true)] {
            // Points where the exact trend alone was (wrongly) significant: no site is named
            // then, since no site's samples accumulate.
            let mut false_trend = 0;
            for seed in 1..=runs {
                let pts = Service {
                    seed: seed + 10_000,
                    leak,
                    burst,
                }
                .points(2 * FIVE_MINUTES);
                for (k, (keys, heap)) in reports(&pts).iter().enumerate() {
                    assert!(
                        keys.is_empty(),
                        "burst {burst}, seed {seed}, point {k}: reported {keys:?}"
                    );
                    false_trend += *heap as usize;
                }
            }
            println!(
                "{} runs: no site named; exact trend significant at {false_trend} of {} points",
                if burst { "burst" } else { "churn" },
                runs as usize * 2 * FIVE_MINUTES
            );
        }
        let within = found.iter().filter(|&&k| k <= FIVE_MINUTES).count();
        found.sort_unstable();
        trend_at.sort_unstable();
        println!(
            "slow leak at 512 KiB: named within 5 min in {within}/{runs} runs; points to name it: median {}, 90th pct {}; exact trend significant after median {} points; {unnamed} of {heap_points} points with a significant trend named no site",
            found[found.len() / 2],
            found[found.len() * 9 / 10],
            trend_at[trend_at.len() / 2],
        );
        assert!(within as f64 >= 0.99 * runs as f64, "{within}/{runs}");
    }

    #[test]
    fn exact_series() {
        let up: Vec<f64> = (0..10).map(|i| i as f64 * 1000.0).collect();
        let up = Series {
            a: up.clone(),
            y: up,
        };
        let tr = verdict(&up, 10, 1.0).unwrap();
        assert!((tr.slope - 100.0).abs() < 1e-9, "{tr:?}");
        assert!(verdict(&up, MIN_POINTS - 1, 1.0).is_none());
        let flat = Series {
            y: vec![5000.0; 20],
            a: vec![5000.0; 20],
        };
        assert!(verdict(&flat, 20, 1.0).is_none());
        let down = Series {
            y: up.y.iter().rev().copied().collect(),
            a: vec![9000.0; 10],
        };
        assert!(verdict(&down, 10, 1.0).is_none());
    }

    #[test]
    fn thinning_keeps_ends_and_order() {
        let mut t: Vec<f64> = (0..1000).map(f64::from).collect();
        let mut y = t.clone();
        let mut a = t.clone();
        let mut r = t.clone();
        thin(&mut t, &mut y, &mut a, &mut r, 120);
        assert_eq!(t.len(), 120);
        assert_eq!((t[0], t[119]), (0.0, 999.0));
        assert!(t.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn capacity_of_default_window() {
        assert_eq!(capacity(DEFAULT_INTERVAL, DEFAULT_WINDOW), 361);
        assert_eq!(
            capacity(Duration::from_nanos(1), Duration::from_secs(1 << 40)),
            MAX_POINTS
        );
    }
}
