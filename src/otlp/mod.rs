//! Push: heap profiles to an OpenTelemetry Collector (or any OTLP profiles endpoint) every
//! interval, over OTLP/HTTP protobuf (feature `otlp`).
//!
//! ```no_run
//! # #[global_allocator] static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();
//! // From OTEL_EXPORTER_OTLP_ENDPOINT & co. (off when no endpoint is set):
//! let _exporter = heapsight::otlp::start_from_env();
//! // Or explicitly:
//! let mut config = heapsight::otlp::Config::new("http://127.0.0.1:4318/v1development/profiles");
//! config.service_name = "checkout".into();
//! let exporter = heapsight::otlp::start(config).expect("valid configuration");
//! ```
//!
//! Each interval the exporter thread takes a profile and sends one request with four profiles:
//! `inuse_space`/`inuse_objects` as of now, and `alloc_space`/`alloc_objects` of the interval
//! ([`HeapProfile::delta`](crate::HeapProfile::delta) against the previous one). See
//! `encode.rs` for the wire layout, and docs/service.md for Collector and Pyroscope settings.
//!
//! # Failure behaviour
//!
//! * The thread runs inside the profiler guard for its whole life: what it allocates (snapshots,
//!   the request, the HTTP client) is the profiler's own memory, never the program's, and
//!   allocation never waits on its network or encoding work: it holds the site lock only while
//!   copying the table for its snapshot, as any `profile()` call does, and none the hook takes
//!   while it symbolizes, encodes or sends.
//! * An unreachable or failing endpoint prints one line when the outage starts and one when it
//!   ends, never one per attempt. Attempts back off (1 s doubling to at most the interval, and
//!   at most 5 minutes). Profiles taken meanwhile queue up to [`Config::max_pending`]; beyond
//!   that the oldest is dropped and counted (`heapsight_otlp_dropped_profiles_total` in
//!   `/metrics`, [`ExporterStats::dropped`]). A request the endpoint rejects as malformed (4xx
//!   other than 408/429) is dropped at once: sending it again cannot succeed.
//! * A bad configuration value is an error naming it ([`start`]), or one line on stderr and no
//!   exporter ([`start_from_env`]).
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::guard::profiler_scope;
use crate::snapshot::{self, HeapProfile};

mod config;
mod encode;

pub use config::{Config, ConfigError, PROFILES_PATH};

/// Profiles dropped by every exporter of the process (queue full or rejected), for `/metrics`.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Profiles dropped so far by the exporters of this process: the oldest pending ones when the
/// queue was full during an outage, and those the endpoint rejected.
pub fn dropped_profiles() -> u64 {
    DROPPED.load(Relaxed)
}

/// Counters of one exporter. Read with [`Exporter::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExporterStats {
    /// Profiles taken (one per interval).
    pub collected: u64,
    /// Requests the endpoint accepted (2xx).
    pub sent: u64,
    /// Requests that failed (connection error, timeout, non-2xx), retries included.
    pub failed_attempts: u64,
    /// Profiles dropped: queue full during an outage, or rejected by the endpoint.
    pub dropped: u64,
    /// Profiles waiting to be sent now.
    pub pending: usize,
    /// Bytes of those pending requests.
    pub pending_bytes: usize,
}

/// State shared by the exporter thread and its handle.
struct Shared {
    stop: Mutex<bool>,
    wake: Condvar,
    collected: AtomicU64,
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    pending: AtomicUsize,
    pending_bytes: AtomicUsize,
    ready: Mutex<bool>,
    ready_cv: Condvar,
}

/// A running exporter. Dropping it leaves the exporter running for the life of the process;
/// [`Exporter::shutdown`] stops it.
pub struct Exporter {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Exporter {
    /// This exporter's counters. Lock-free and allocation-free.
    pub fn stats(&self) -> ExporterStats {
        let s = &self.shared;
        ExporterStats {
            collected: s.collected.load(Relaxed),
            sent: s.sent.load(Relaxed),
            failed_attempts: s.failed.load(Relaxed),
            dropped: s.dropped.load(Relaxed),
            pending: s.pending.load(Relaxed),
            pending_bytes: s.pending_bytes.load(Relaxed),
        }
    }

    /// Stops the exporter thread (after the request in flight, if any, within the timeout) and
    /// joins it. Pending profiles are not sent.
    pub fn shutdown(mut self) {
        *lock(&self.shared.stop) = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere; the flag inside is still meaningful.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the exporter thread. Returns once the thread has taken its first (baseline) profile,
/// so what `start` itself allocated is behind the caller, and the first interval's allocations
/// are those made after this returns.
pub fn start(config: Config) -> Result<Exporter, ConfigError> {
    config.validate()?;
    let shared = Arc::new(Shared {
        stop: Mutex::new(false),
        wake: Condvar::new(),
        collected: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        pending: AtomicUsize::new(0),
        pending_bytes: AtomicUsize::new(0),
        ready: Mutex::new(false),
        ready_cv: Condvar::new(),
    });
    let s = shared.clone();
    let thread = thread::Builder::new()
        .name("heapsight-otlp".into())
        .spawn(move || profiler_scope(|| run(config, &s)))
        .map_err(|e| ConfigError(format!("could not start the exporter thread: {e}")))?;
    let mut ready = lock(&shared.ready);
    while !*ready {
        // A thread that died before its baseline (it cannot, short of a bug) must not leave
        // the caller waiting forever.
        if thread.is_finished() {
            return Err(ConfigError(
                "the exporter thread exited while starting".into(),
            ));
        }
        ready = shared
            .ready_cv
            .wait_timeout(ready, Duration::from_millis(50))
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    drop(ready);
    Ok(Exporter {
        shared,
        thread: Some(thread),
    })
}

/// Starts the exporter from the standard OpenTelemetry environment variables (see
/// [`Config`] and docs/service.md): `None` when no endpoint variable is set, or when a value is
/// bad, which prints one line naming it on stderr.
pub fn start_from_env() -> Option<Exporter> {
    let parsed = profiler_scope(|| config::from_lookup(|k| std::env::var(k).ok()));
    match parsed.and_then(|c| c.map(start).transpose()) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("heapsight: OTLP profiles exporter off: {e}");
            None
        }
    }
}

/// Longest wait between two attempts during an outage.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The outcome of one request.
enum Sent {
    Ok,
    /// Worth retrying: connection refused, timeout, 408/429/5xx.
    Retry(String),
    /// The endpoint refused this request for good (other 4xx).
    Rejected(String),
}

fn post(agent: &ureq::Agent, c: &Config, body: &[u8]) -> Sent {
    let mut req = agent
        .post(&c.endpoint)
        .header("Content-Type", "application/x-protobuf");
    for (k, v) in &c.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    match req.send(body) {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            // Read the (small) body so the connection can be reused.
            let _ = resp.body_mut().read_to_vec();
            match status {
                200..=299 => Sent::Ok,
                408 | 429 | 500..=599 => Sent::Retry(format!("HTTP {status}")),
                _ => Sent::Rejected(format!("HTTP {status}")),
            }
        }
        Err(e) => Sent::Retry(e.to_string()),
    }
}

/// The exporter thread, inside the profiler guard.
fn run(config: Config, s: &Shared) {
    // The timeout bounds each phase (connect, send, receive) rather than the whole call: with a
    // whole-call or resolve timeout, ureq resolves the host name on a helper thread it spawns
    // per request, whose allocations (outside this thread's guard) would count as the program's.
    // Name resolution thus runs here, bounded by the system resolver's own limits.
    let t = Some(config.timeout);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(t)
        .timeout_send_request(t)
        .timeout_send_body(t)
        .timeout_recv_response(t)
        .timeout_recv_body(t)
        .http_status_as_error(false)
        .user_agent(concat!("heapsight/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let resource = config.resource();
    let mut prev: HeapProfile = snapshot::take(true);
    *lock(&s.ready) = true;
    s.ready_cv.notify_all();

    let mut queue: VecDeque<Vec<u8>> = VecDeque::new();
    let mut next_collect = Instant::now() + config.interval;
    let mut backoff = Duration::ZERO;
    let mut retry_at = Instant::now();
    // Set while the endpoint is failing: the first error and the attempts since.
    let mut outage: Option<(String, u64)> = None;
    let mut seq = 0u64;
    loop {
        // Wait for the next collection or retry, or for shutdown.
        {
            let mut stop = lock(&s.stop);
            loop {
                if *stop {
                    return;
                }
                let now = Instant::now();
                let due = if queue.is_empty() {
                    next_collect
                } else {
                    next_collect.min(retry_at)
                };
                if now >= due {
                    break;
                }
                stop = s
                    .wake
                    .wait_timeout(stop, due - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        let now = Instant::now();
        if now >= next_collect {
            let cur = snapshot::take(true);
            let allocs = cur.delta(&prev);
            let maps = crate::profile::maps::read_self();
            seq += 1;
            let meta = encode::Meta {
                resource: &resource,
                mappings: &maps,
                seq,
            };
            queue.push_back(encode::request(&cur, &allocs, &meta));
            prev = cur;
            s.collected.fetch_add(1, Relaxed);
            while queue.len() > config.max_pending {
                queue.pop_front();
                s.dropped.fetch_add(1, Relaxed);
                DROPPED.fetch_add(1, Relaxed);
            }
            // Keep the schedule; after a long stall (suspend), restart it from now.
            next_collect += config.interval;
            if next_collect <= now {
                next_collect = now + config.interval;
            }
        }
        // Send what is queued, oldest first, while the endpoint takes it.
        while Instant::now() >= retry_at {
            let Some(body) = queue.front() else { break };
            match post(&agent, &config, body) {
                Sent::Ok => {
                    queue.pop_front();
                    s.sent.fetch_add(1, Relaxed);
                    backoff = Duration::ZERO;
                    if let Some((_, attempts)) = outage.take() {
                        eprintln!(
                            "heapsight: OTLP profiles export to {} resumed after {attempts} failed attempt(s); {} profile(s) dropped so far",
                            config.endpoint,
                            s.dropped.load(Relaxed)
                        );
                    }
                }
                Sent::Rejected(why) => {
                    queue.pop_front();
                    s.failed.fetch_add(1, Relaxed);
                    s.dropped.fetch_add(1, Relaxed);
                    DROPPED.fetch_add(1, Relaxed);
                    match &mut outage {
                        Some((_, n)) => *n += 1,
                        None => {
                            eprintln!(
                                "heapsight: OTLP profiles endpoint {} rejected a profile ({why}); dropping it",
                                config.endpoint
                            );
                            outage = Some((why, 1));
                        }
                    }
                }
                Sent::Retry(why) => {
                    s.failed.fetch_add(1, Relaxed);
                    match &mut outage {
                        Some((_, n)) => *n += 1,
                        None => {
                            eprintln!(
                                "heapsight: OTLP profiles export to {} failing ({why}); retrying with back-off, keeping at most {} profile(s)",
                                config.endpoint, config.max_pending
                            );
                            outage = Some((why, 1));
                        }
                    }
                    backoff = (backoff * 2)
                        .max(Duration::from_secs(1))
                        .min(config.interval.max(Duration::from_secs(1)))
                        .min(MAX_BACKOFF);
                    retry_at = Instant::now() + backoff;
                }
            }
        }
        s.pending.store(queue.len(), Relaxed);
        s.pending_bytes
            .store(queue.iter().map(Vec::len).sum(), Relaxed);
    }
}
