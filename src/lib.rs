//! heapsight: an always-on heap profiler for Rust, as your `#[global_allocator]`.
//!
//! It answers the question a service that ran out of memory leaves behind: *which call site holds
//! the memory, and which container grew?* Like Go's heap profiler, it is cheap enough to leave on
//! in production: it samples allocations as a Poisson process over bytes (Go's `MemProfileRate`,
//! 512 KiB by default), captures a stack only for sampled allocations, and reports unbiased
//! per-site estimates in formats the tools you already run read: `go tool pprof`, Pyroscope,
//! Parca, Grafana, inferno. Besides the estimates it keeps exact process-wide counters.
//!
//! # Layers
//!
//! The source is eight layers, bottom first; a module imports only from its own layer or a lower
//! one (`tests/layers.rs` fails on any other import, and on a file with no layer). An allocation
//! enters at the hook and goes down into thread state, then (sampled) into capture and the
//! tables; a dump enters at a transport and goes down through an encoder and the snapshot to
//! the same tables and the counters.
//!
//! ```text
//!  rank layer        files                                    allocation      dump
//!   7   hook         alloc, setup                             enters ──┐
//!   6   transports   dump, http/, otlp/, metrics, series,              │      enters ──┐
//!                    history, tracing, measure, watch                  │               │
//!   5   encoders     profile/                                          │      bytes  ◄─┤
//!   4   snapshot     snapshot, stats, symbols,                         │      copy   ◄─┤
//!                    dwarf, memory                                     │               │
//!   3   tables       sites, tags                              record ◄─┤      read   ◄─┤
//!   2   thread       guard, thread, counters, filter, owned   count  ◄─┤      sum    ◄─┘
//!   1   capture      stack, unwind                            stack  ◄─┘ (sampled)
//!   0   base         sync, config, sampler, clock, elf        (under every layer)
//! ```
//!
//! What each layer's files own:
//!
//! * **base**: `sync` every lock word in its order, the DWARF unwinder's fork gate and the
//!   `fork()` handlers; `config` the settings' defaults and limits (read from the environment
//!   without allocating); `sampler` the sample rate and the exponential draws; `clock` nothing
//!   (the monotonic clock); `elf` nothing (reads ELF files and `/proc/self/maps`).
//! * **capture**: `stack` the unwinder choice and the learned thread entries; it reads a
//!   thread's stack bounds but keeps no thread state, so thread set-up can call it. `unwind` the
//!   DWARF unwinder's module table and caches (built outside the hook, read by it).
//! * **thread**: `guard` the calling thread's state and the reentrancy guard; `thread` a
//!   thread's set-up (its counter slot and countdowns); `counters` the counter slots and the
//!   process-wide peak; `filter` the exact set of live sampled addresses a free checks;
//!   `owned` nothing (`Owned<T>`: memory the profiler owns, dropped inside the guard).
//! * **tables**: `sites` the site table and the live-sample shards; `tags` the tag-name table.
//! * **snapshot**: `snapshot` the trimmed-stack caches and [`HeapProfile`]; `stats` nothing
//!   (sums the counters into [`Stats`]); `symbols` the symbol cache; `dwarf` nothing (reads
//!   DWARF line tables for `symbols`); `memory` the inner allocator's name, detected or declared
//!   (reads the allocator's, the process's and the cgroup's figures into [`MemoryReport`]).
//! * **encoders**: `profile/` nothing: pure functions from a snapshot to bytes (pprof, Go text,
//!   folded stacks, top, delta).
//! * **transports and scopes**: `dump` the signal pipe and dump file numbers; `http/` the
//!   server; `otlp/` the exporter thread; `metrics` the updater thread; `series` nothing (the
//!   one list of metric series `/metrics` and `metrics` publish); `history` the ring of
//!   recorded points; `tracing` the span-to-tag layer's entered spans; `measure` a thread's
//!   open measurement; `watch` the dump-trigger thread's start flag and dump numbers.
//! * **hook**: `alloc` the `GlobalAlloc` impl; `setup` the process activation (fork handlers,
//!   exit dump, unwinder warm-up).
//!
//! # Set-up
//!
//! heapsight is not on crates.io yet: depend on a clone of its repository (or on the repository
//! itself, `heapsight = { git = "<its URL>" }`), with the [features](#crate-features) you want:
//!
//! ```toml
//! [dependencies]
//! heapsight = { path = "../heapsight", features = ["http"] }
//! ```
//!
//! ```
//! #[global_allocator]
//! static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();
//! // or over any inner allocator, still `const`:
//! // static GLOBAL: heapsight::HeapSight<mimalloc::MiMalloc> = heapsight::HeapSight::new(mimalloc::MiMalloc);
//! # fn main() {}
//! ```
//!
//! Build with frame pointers so sampled stacks cost ~0.1 µs instead of ~3 µs (the standard
//! library already has them; this adds them to your code), e.g. in `.cargo/config.toml`:
//!
//! ```toml
//! [build]
//! rustflags = ["-C", "force-frame-pointers=yes"]
//! ```
//!
//! Without them heapsight still works: it unwinds sampled stacks with the DWARF unwinder instead
//! (see [`Unwinder`]). Keep line tables in release builds (`[profile.release] debug = 1`) to get
//! `file:line` in profiles.
//!
//! # Reading the counters
//!
//! [`stats`] is exact, lock-free and allocation-free: every `alloc`, `dealloc`, `realloc` (one
//! free plus one allocation) and `alloc_zeroed` of the process, in `Layout::size()` bytes.
//!
//! ```
//! # #[global_allocator] static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();
//! let s = heapsight::stats();
//! assert_eq!(s.inuse_bytes, s.alloc_bytes - s.free_bytes);
//! println!("{} live objects, {} live bytes, peak {}", s.inuse_objects, s.inuse_bytes, s.peak_inuse_bytes);
//! ```
//!
//! [`measure`] gives the same exact counts for the current thread while a closure runs, and works
//! in parallel `cargo test` threads: `let (v, usage) = heapsight::measure(|| build());`, then
//! [`assert_max_allocs!`] / [`assert_no_alloc!`] in tests.
//!
//! # Heap profiles
//!
//! [`profile`] snapshots the sampled call sites. `examples/quickstart.rs` builds a
//! `HashMap<String, Vec<String>>` with 500,000 appends over 10,000 keys, then prints the
//! heaviest sites by live bytes (the test `docs_output` runs it and checks these lines against
//! the program: the counters, the sites and their lines):
//!
//! ```text
//! $ cargo run --release --example quickstart
//! 520003 live objects, 22243320 live bytes, peak 22243320 bytes
//! top 3 of 3 sites by inuse_space (total 19.00 MiB ±16%, 37 samples; ± one standard error)
//!  inuse_space     ±      % samples      size p50/p99  lifetime p50/p99  site
//!    13.52 MiB  ±19%  71.2%      27          768/1536       164ms/164ms  quickstart::build (quickstart.rs:17)
//!                                                                         <- Vec::push
//!     4.50 MiB  ±33%  23.7%       9             12/12               -/-  quickstart::build (quickstart.rs:17)
//!                                                                         <- format!
//!  1000.35 KiB  ±47%   5.1%       1     802816/802816               -/-  quickstart::build (quickstart.rs:15)
//!                                                                         <- HashMap::entry
//! wrote heap.pb.gz: go tool pprof -top heap.pb.gz
//! ```
//!
//! Each site is the program's frame and what it called that allocated, as the program wrote it:
//! the `Vec<String>`s growing by doubling on `push`, the `format!`ed values, the map's `entry`.
//! Each estimate carries its sample count and one standard error (Poisson sampling: about
//! `1/sqrt(samples)` relative), so the estimated 19.0 MiB ± 16% reads against the exact
//! 21.2 MiB (22,243,320 bytes).
//!
//! The same snapshot goes to files and tools:
//!
//! * [`HeapProfile::write_pprof`]: gzipped pprof in Go's heap layout (`go tool pprof -top heap.pb.gz`,
//!   `-http=:8080`, `-sample_index=alloc_space`, `-tags`); [`HeapProfile::write_pprof_allocs`] opens
//!   on `alloc_space` like Go's `allocs`.
//! * [`HeapProfile::write_text`]: Go's legacy `debug=1` text.
//! * [`HeapProfile::write_folded`] (collapsed stacks for inferno / flamegraph.pl) and, with feature
//!   `flamegraph`, `HeapProfile::write_flamegraph` (SVG).
//! * [`HeapProfile::top`]: the table above. [`HeapProfile::delta`]: what was allocated between two
//!   snapshots. [`peak_profile`]: the live sites at the sampled heap's high-water mark.
//!   [`HeapProfile::distribution`]: a site's size and lifetime quantiles.
//!
//! # Choosing a sample rate
//!
//! [`set_sample_rate`] (or `HEAPSIGHT_SAMPLE_RATE=512KiB` in the environment) sets the mean number
//! of bytes between samples. An allocation of `S` bytes is sampled with probability
//! `p = 1 - exp(-S/rate)` and, if sampled, stands for `1/p` allocations, so every estimate is
//! unbiased whatever the sizes. What the rate buys is precision: a site that allocated `B` bytes has
//! about `B / rate` samples and a relative standard error of about `sqrt(rate / B)`.
//!
//! | rate | samples per GiB allocated | ±1 sd on a site of 100 MiB | cost |
//! |---|---|---|---|
//! | 0 | none (counters only) | – | counters only |
//! | 512 KiB (default, Go's) | 2,048 | ±7% | one stack per 512 KiB allocated |
//! | 64 KiB | 16,384 | ±2.5% | 8× more stacks |
//! | 1 | every allocation | exact | every allocation unwinds: tests and debugging only |
//!
//! Benchmarks of what these cost are in the README (`dev/benches/compare.py`).
//!
//! # Tags
//!
//! Stacks say *where*; tags say *for what*. `let _g = heapsight::tag("cache-rebuild");` labels
//! this thread's allocations while the guard lives, [`with_tag`] runs a closure under a tag, and
//! `fut.tagged("request:/search")` ([`TagFutureExt`]) sets the tag around every poll, so it follows
//! a task across `.await` and worker threads. [`tag_stats`] reports exact allocations per tag and
//! sampled in-use estimates; pprof samples carry the tag as the label `tag`
//! (`go tool pprof -tagfocus=tag=request:/search`). Unsampled frees are not attributed to tags
//! (blocks carry no header saying which tag they belong to).
//!
//! A tag can also be a small set of labels, [`Tag::with_labels`]`(&[("route", "/search"),
//! ("tenant", "free")])`, each pair a pprof label (`go tool pprof -tags`). With feature
//! `tracing`, `tracing::TagLayer` sets the tag from the `tracing` span that is entered (its name
//! or a field such as `http.route`), so a service gets memory per endpoint from the spans it
//! already has.
//!
//! # In a running service
//!
//! * Feature `http`: `http::serve("127.0.0.1:6060")` serves Go's `/debug/pprof/heap`
//!   (`?debug=1`, `?seconds=N`), `/debug/pprof/allocs`, a `/debug/heapsight` page and Prometheus
//!   `/metrics`; `http::respond` mounts the same endpoints in any framework (`dev/examples/axum.rs`).
//!   `go tool pprof http://127.0.0.1:6060/debug/pprof/heap` just works.
//! * Feature `signal`: `heapsight::install_dump_signal(libc::SIGUSR2)` writes
//!   `heapsight-<pid>-<seq>.pb.gz` and `.txt` into `HEAPSIGHT_DUMP_DIR` on each signal.
//! * `HEAPSIGHT_DUMP_ON_EXIT=heap.pb.gz` writes a profile when the program exits normally.
//! * Feature `metrics`: the counters through the `metrics` crate facade.
//!
//! # How it works
//!
//! * **The hook.** Each thread has a `const`-initialised thread-local with no destructor: a byte
//!   countdown to its next sample and a pointer to a counter slot only it writes. An unsampled
//!   allocation subtracts its size from the countdown and adds to its own slot before it calls
//!   the inner allocator; a free checks the low bits of its address (sampled blocks are allocated
//!   at a 4 KiB alignment, so an address with any of them set is not a sample) and adds to its
//!   own slot. No lock, no shared read-modify-write, no allocation, no header on blocks: 21–28
//!   instructions per alloc+free pair over the inner allocator through `__rust_alloc` (callgrind,
//!   README "Overhead"). Readers sum the slots.
//! * **Sampling** (`sampler.rs`). Exponential gaps with mean = rate, as Go's `nextSample`; the
//!   weight of a sample is fixed by the rate its countdown was drawn with, so estimates stay
//!   unbiased across a rate change.
//! * **Stacks** (`stack.rs`). Only for sampled allocations: a bounds-checked frame-pointer walk,
//!   or `backtrace::trace` when the chain is broken (code without frame pointers) or when asked.
//!   Symbolization happens at dump time only, cached.
//! * **Sites** (`sites.rs`). Samples are counted per (stack, tag, size, rate): estimates are
//!   integer counts times `1/p`, so a site whose blocks were all freed shows exactly 0 live. Frees
//!   of sampled blocks take their weight out at once: in-use is live, not as of a collection.
//!   The table is capped (`HEAPSIGHT_MAX_SITES`, default 16,384 stacks): at the cap, stacks with
//!   no live samples are reclaimed and their totals kept; the overflow site takes only what
//!   cannot be reclaimed.
//! * **Reentrancy.** One guard, [`in_profiler`]: everything the profiler allocates goes straight to
//!   the inner allocator, uncounted, and is reported as [`Stats::profiler_bytes`].
//!
//! # Caveats
//!
//! * `peak_inuse_bytes` is taken at flushes (every sampling countdown, after 64 KiB of frees, at
//!   `stats()`), not on every allocation: it can be below the true peak by less than one
//!   countdown per thread (about the rate; 1 MiB at rate 0) and above it by less than 64 KiB per
//!   other thread. `measure()` is exact.
//! * Allocations of a thread whose thread-locals are already destroyed (late in thread exit) are
//!   counted exactly but not sampled.
//! * `fork()` is handled (the child can allocate and profile); see the README's "Guarantees and
//!   limits" for the exact list of what is and is not guaranteed, each with its test.
//!
//! # Environment
//!
//! Read once, at the first allocation, without allocating. A bad value prints one line on stderr
//! naming the variable, what it accepts and the default kept, e.g.
//! `heapsight: ignoring HEAPSIGHT_MAX_DEPTH="0": too small; expected a whole number of frames
//! from 1 to 256; keeping 128`, and the program goes on.
//!
//! | variable | accepts | default |
//! |---|---|---|
//! | `HEAPSIGHT_SAMPLE_RATE` | bytes between samples: digits with an optional unit, 0 = off, 1 = every allocation | 512 KiB |
//! | `HEAPSIGHT_MAX_DEPTH` | frames kept per stack, 1 to 256 | 128 |
//! | `HEAPSIGHT_MAX_SITES` | distinct stacks kept (at the cap, stacks with no live samples are reclaimed), 1 to 16,777,216 | 16,384 |
//! | `HEAPSIGHT_UNWINDER` | `auto`, `fp` (or `frame-pointers`), `dwarf`, in any case | `auto` |
//! | `HEAPSIGHT_DUMP_ON_EXIT` | write a profile there at exit (`.txt`: Go text, else pprof) | off |
//! | `HEAPSIGHT_HTTP_ADDR` | `HOST:PORT`, or Go's `:PORT` for every interface, for `http::serve_from_env` (feature `http`) | – |
//! | `HEAPSIGHT_DUMP_DIR` | directory for signal dumps (feature `signal`) | `.` |
//! | `HEAPSIGHT_DUMP_AT` | memory-trigger levels, `80%` of the container's limit or `1GiB` of RSS, comma-separated ([`start_dump_triggers_from_env`]) | – |
//! | `HEAPSIGHT_DUMP_STEP` | a memory-trigger dump at each new heap high-water mark this far above the last | – |
//! | `HEAPSIGHT_DUMP_POLL` | how often the memory triggers read the levels | 100ms |
//!
//! Units are binary and case-insensitive, and the `B` is optional: `64k`, `64kb`, `64KiB` and
//! `65536` are the same rate, as are `1m`, `1MB` and `1MiB`; `g`/`GB`/`GiB` likewise. Counts
//! (`MAX_DEPTH`, `MAX_SITES`) take plain digits. `HEAPSIGHT_HTTP_ADDR=:6060` listens on every
//! IPv4 interface, as in Go, and prints one line saying so (the default address is loopback); an
//! address that is malformed or cannot be bound prints one line and the program runs without the
//! server.
//!
//! # Crate features
//!
//! All off by default; the allocator, counters, profiles, tags and every file format need none.
//!
//! | feature | adds | brings in |
//! |---|---|---|
//! | `http` | `http`: Go's `/debug/pprof` endpoints, the `/debug/heapsight` page, Prometheus `/metrics`, a small server or `http::respond` for any framework (implies `flamegraph`) | `httparse` |
//! | `flamegraph` | `HeapProfile::write_flamegraph` (SVG) | `inferno` |
//! | `signal` | `install_dump_signal`: dump on `SIGUSR2` (Unix) | – |
//! | `metrics` | `metrics`: the counters through the `metrics` facade | `metrics` |
//! | `otlp` | `otlp::start`: pushes heap profiles to an OpenTelemetry Collector (OTLP profiles over HTTP/protobuf) | `ureq` (no default features) |
//! | `tracing` | `tracing::TagLayer`: memory per `tracing` span (`http.route`, job names) | `tracing-core`, `tracing-subscriber` (no default features) |
//!
//! # Platforms
//!
//! Supported and tested: Linux on x86-64 and aarch64. There, sampled stacks use a frame-pointer
//! walk that reads no memory it has not proven mapped (DWARF as the fallback), and profiles carry
//! the mappings of `/proc/self/maps` with build IDs.
//!
//! Other Unix targets (macOS, the BSDs) build with the portable paths: exact counters,
//! tags, every profile format and the server all work the same; every sampled stack comes from
//! the `backtrace` unwinder (~3 µs instead of ~0.1 µs, at one sample per 512 KiB allocated);
//! profiles carry no mappings and are symbolized in process. These paths are compiled and unit-
//! tested on Linux with `--cfg heapsight_portable` (see `.ci/run`); no other target is tested.
//! Windows and other non-Unix targets are refused at compile time with one message.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(not(unix))]
compile_error!(
    "heapsight supports Linux (x86-64, aarch64) and builds on other Unix targets; this target is \
     not supported (see \"Platforms\" in the crate documentation)"
);

mod alloc;
mod clock;
mod config;
mod counters;
mod dump;
mod dwarf;
mod elf;
mod filter;
mod guard;
pub mod history;
mod measure;
mod memory;
mod owned;
mod profile;
mod sampler;
#[cfg(any(feature = "http", feature = "metrics"))]
mod series;
mod setup;
mod sites;
mod snapshot;
mod stack;
mod stats;
mod symbols;
mod sync;
mod tags;
mod thread;
mod unwind;
mod watch;

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
#[cfg(feature = "otlp")]
#[cfg_attr(docsrs, doc(cfg(feature = "otlp")))]
pub mod otlp;
#[cfg(feature = "tracing")]
#[cfg_attr(docsrs, doc(cfg(feature = "tracing")))]
pub mod tracing;
pub use crate::dump::{dump_to_dir, dump_to_file, DumpLimits};
#[cfg(all(unix, feature = "signal"))]
pub use crate::dump::{install_dump_signal, DumpSignalError};

pub use crate::alloc::HeapSight;
pub use crate::config::{ParseError, Threshold, Unwinder};
pub use crate::measure::{measure, Usage};
pub use crate::memory::{
    declare_allocator, memory, memory_cgroup, AllocatorKnown, AllocatorMemory, ContainerMemory,
    HeldBytesFn, MemoryClass, MemoryReport, ProcessMemory,
};
pub use crate::profile::{Distribution, SampleType, Top, UnknownSampleType};
pub use crate::snapshot::{HeapProfile, Site};
pub use crate::stats::{stats, Stats};
pub use crate::symbols::{Frame, Symbol, Symbols};
pub use crate::tags::{
    tag, tag_stats, try_tag, with_tag, Tag, TagError, TagFutureExt, TagGuard, TagStats, Tagged,
    MAX_LABELS, MAX_LABEL_KEY_LEN, MAX_TAG_LEN, MAX_TAG_NAMES, OVERFLOW_TAG, TAG_KEY,
};
pub use crate::watch::{start_dump_triggers, start_dump_triggers_from_env, DumpTriggers};

/// Go's default `MemProfileRate`, heapsight's default: one sample per 512 KiB allocated.
pub const DEFAULT_SAMPLE_RATE: u64 = sampler::DEFAULT_RATE;

/// Whether heapsight is this program's global allocator: true once an allocation went through
/// [`HeapSight`] (in practice from before `main`). A program that links the crate but installs
/// another `#[global_allocator]` gets `false`, empty profiles and zero counters, and pays nothing
/// at start-up: no constructor, no fork handlers, no thread.
pub fn is_active() -> bool {
    thread::is_active()
}

/// Sets the sampling rate: on average one sample per `bytes` allocated (Go's `MemProfileRate`).
/// 0 turns sampling off, 1 samples every allocation. The default is 512 KiB, or
/// `HEAPSIGHT_SAMPLE_RATE` from the environment.
///
/// The calling thread switches at once; every other thread switches at its next sample, within
/// about one interval of the old rate (1 MiB if it was 0). Samples already taken keep the weight of
/// the rate they were taken at, so estimates stay unbiased across a change.
pub fn set_sample_rate(bytes: u64) {
    setup::set_sample_rate(bytes)
}

/// The sampling rate in force, in bytes.
pub fn sample_rate() -> u64 {
    sampler::rate()
}

/// Seeds the sampling generator, for reproducible profiles (tests, benchmarks). Reseeds the
/// calling thread at once; threads started later derive their seeds from it in start order.
pub fn set_sampling_seed(seed: u64) {
    setup::set_seed(seed)
}

/// Sets how many frames a sampled stack keeps (leaf-most; default 128, at most 256). Also
/// `HEAPSIGHT_MAX_DEPTH`.
pub fn set_max_depth(frames: usize) {
    stack::MAX_DEPTH.store(
        frames.clamp(1, config::MAX_DEPTH_LIMIT),
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// Sets the cap on distinct sampled stacks (default 16,384). At the cap a new stack takes the
/// place of the least recently sampled stack with no live sample (whose totals stay in the
/// profile's frame-less site); only when none can be reclaimed, and the table already holds as
/// many stacks as live samples, does a sample go to the overflow site. Also `HEAPSIGHT_MAX_SITES`.
pub fn set_max_sites(sites: usize) {
    sites::MAX_SITES.store(sites.max(1), std::sync::atomic::Ordering::Relaxed);
}

/// Chooses how sampled stacks are captured (default [`Unwinder::Auto`]). Also
/// `HEAPSIGHT_UNWINDER=auto|fp|dwarf`.
pub fn set_unwinder(u: Unwinder) {
    stack::set_unwinder(u)
}

/// The cap on distinct sampled stacks in force (see [`set_max_sites`]).
pub fn max_sites() -> usize {
    sites::MAX_SITES.load(std::sync::atomic::Ordering::Relaxed)
}

/// The stack depth in force (see [`set_max_depth`]).
pub fn max_depth() -> usize {
    stack::MAX_DEPTH.load(std::sync::atomic::Ordering::Relaxed)
}

/// The unwinder in force (see [`set_unwinder`]).
pub fn unwinder() -> Unwinder {
    stack::unwinder()
}

/// Whether the calling thread is inside heapsight's own code right now (the reentrancy guard is
/// held), i.e. whether an allocation it makes now is the profiler's own. For inner allocators
/// and the reliability tests, which use it to tell the program's calls from the profiler's and to
/// show that the unsampled path never re-enters the allocator. Not part of the stable API.
#[doc(hidden)]
pub fn in_profiler() -> bool {
    guard::in_profiler()
}

/// Runs `f` inside the profiler guard, as heapsight's own code runs (what it allocates is the
/// profiler's own). For the reliability tests of values the program allocated and profiler code
/// drops (`otlp::start` drops the caller's `Config` there). Not part of the stable API.
#[doc(hidden)]
pub fn in_profiler_scope<R>(f: impl FnOnce() -> R) -> R {
    guard::profiler_scope(f)
}

/// Runs `f` while the calling thread holds the site-table lock, the one lock the allocation hook
/// can take. For the reliability test that proves the unsampled path never takes it (it
/// allocates on another thread meanwhile): a sampled allocation, a free of a sampled block or a
/// `profile()` on another thread waits until `f` returns. `f` runs inside the profiler, so what it
/// allocates is the profiler's own. Not part of the stable API.
#[doc(hidden)]
pub fn with_site_lock_held<R>(f: impl FnOnce() -> R) -> R {
    guard::profiler_scope(|| sites::with_lock_held(f))
}

/// Takes a heap profile: every sampled call site with unbiased estimates of allocated and live
/// objects and bytes, stacks symbolized in process (cached). Safe to call from any thread while
/// the program runs; the site lock is held only to copy the table.
pub fn profile() -> HeapProfile {
    snapshot::take(true)
}

/// Like [`profile`] but without symbolizing: frames carry addresses only, for offline
/// symbolization (`go tool pprof BINARY PROFILE`).
pub fn profile_unsymbolized() -> HeapProfile {
    snapshot::take(false)
}

/// The heap at its high-water mark: the sampled call sites live when the *sampled* in-use
/// estimate was highest, with their in-use estimates as of that moment (`alloc_*` as of then
/// too), stacks symbolized now. Answers "what was on the heap at the peak?" after the peak has
/// passed.
///
/// A new peak is captured in the sampled slow path, under the site lock, when a sample lifts the
/// sampled in-use estimate past 1.1 × the previous capture: in O(1) (each bucket keeps its counts
/// as of the capture the first time it changes after it); the unsampled path never sees it. So the captured peak is
/// within about 10% (plus sampling noise) of the highest estimate reached. Size distributions are
/// as of the peak; lifetimes are all those recorded so far. Empty if nothing was sampled yet.
pub fn peak_profile() -> HeapProfile {
    snapshot::take_peak(true)
}

#[doc(hidden)]
pub use crate::sites::bench_snapshot_lock_hold;
/// The mappings and ELF reading heapsight symbolizes with, for the dump-cost benchmarks that run
/// other symbolizers on the same files (`examples/support/dump_measure.rs`). Not part of the
/// stable API.
#[doc(hidden)]
pub mod bench_elf {
    pub use crate::elf::{file_offset_to_vaddr, self_mappings, MappedFile, Mapping};
}
#[doc(hidden)]
pub use crate::sites::table_counts as site_table_counts;

/// The heap over time, as recorded so far by [`history::start`] (the HTTP server starts it):
/// exact counters and per-site estimates every interval, and [`history::History::growing`], the
/// sites whose live bytes keep rising. Empty until something records.
pub fn history() -> history::History {
    history::snapshot()
}
