//! "Why did my service run out of memory? Which map, which growth?" — the questions three Go
//! articles ask about Go maps, answered for Rust with heapsight.
//!
//!     cargo run --release --example nested_maps --features flamegraph
//!
//! 1. `HashMap<String, Vec<String>>`, 500,000 appends over 10,000 keys (three rebuilds, as a
//!    service rebuilding an index would): no pre-allocation, then `with_capacity` on the map, then
//!    also reserving each vector, then reusing map, vectors and key buffer from a pool.
//! 2. Maps of maps: `HashMap<String, HashMap<String, HashMap<u64, ()>>>` vs a flat map with a
//!    tuple key vs a sorted `Vec` with an interned-name index: objects and bytes per entry.
//! 3. How many bytes does a `HashMap<u64, String>` of 1,000 entries use? Measured, then derived
//!    from hashbrown's layout.
//!
//! Every number comes from heapsight's exact counters (`heapsight::stats()` before and after).
//! The peak is process-wide, so each scenario runs in a fresh child process (this program
//! re-executes itself with the scenario's name): its peak is the scenario's own. The sites come
//! from the sampled profile, at a 4 KiB sampling rate so that a workload of a few tens of MB gets
//! thousands of samples (the default 512 KiB is meant for long-running services).
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "../dev/benches/kernels/nested.rs"]
mod nested;

#[global_allocator]
static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();

const APPENDS: usize = 500_000;
const KEYS: usize = 10_000;
const ROUNDS: usize = 3;
const DEMO_RATE: u64 = 4096;

/// What the exact counters say a piece of code did: deltas of `heapsight::stats()`, and the
/// process peak above the in-use bytes at the start.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    alloc_objects: u64,
    alloc_bytes: u64,
    inuse_objects: i64,
    inuse_bytes: i64,
    peak: u64,
}

impl Counts {
    fn between(a: &heapsight::Stats, b: &heapsight::Stats) -> Counts {
        Counts {
            alloc_objects: b.alloc_objects - a.alloc_objects,
            alloc_bytes: b.alloc_bytes - a.alloc_bytes,
            inuse_objects: b.inuse_objects as i64 - a.inuse_objects as i64,
            inuse_bytes: b.inuse_bytes as i64 - a.inuse_bytes as i64,
            peak: b.peak_inuse_bytes.saturating_sub(a.inuse_bytes),
        }
    }

    /// One line a parent process can parse back (`@@ name a b c d e`).
    fn encode(&self, name: &str) -> String {
        format!(
            "@@ {name} {} {} {} {} {}",
            self.alloc_objects, self.alloc_bytes, self.inuse_objects, self.inuse_bytes, self.peak
        )
    }

    fn decode(line: &str) -> Option<(String, Counts)> {
        let mut it = line.strip_prefix("@@ ")?.split_whitespace();
        let name = it.next()?.to_string();
        let mut n = || it.next()?.parse::<i64>().ok();
        Some((
            name,
            Counts {
                alloc_objects: n()? as u64,
                alloc_bytes: n()? as u64,
                inuse_objects: n()?,
                inuse_bytes: n()?,
                peak: n()? as u64,
            },
        ))
    }
}

/// Runs `f`, keeps what it returns alive while the counters and the profile are read, and prints
/// the scenario's counter line (for the parent) and its top sites.
fn measure<T>(name: &str, f: impl FnOnce() -> T) -> Counts {
    let before = heapsight::stats();
    let kept = f();
    let after = heapsight::stats();
    let c = Counts::between(&before, &after);
    println!("{}", c.encode(name));
    let profile = heapsight::profile();
    print_sites(&profile, 5);
    write_outputs(&out_dir().join(name), &profile);
    drop(kept);
    c
}

// ---------------------------------------------------------------------------------------------
// Scenario 1: HashMap<String, Vec<String>>, 500k appends over 10k keys, rebuilt three times.

fn s1_none() -> HashMap<String, Vec<String>> {
    for _ in 1..ROUNDS {
        drop(nested::build_unsized(APPENDS, KEYS));
    }
    nested::build_unsized(APPENDS, KEYS)
}

#[inline(never)]
fn build_map_capacity(vec_capacity: usize) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::with_capacity(KEYS);
    for i in 0..APPENDS {
        m.entry(format!("k{}", i % KEYS))
            .or_insert_with(|| Vec::with_capacity(vec_capacity))
            .push(format!("v{i}"));
    }
    m
}

fn s1_map_capacity() -> HashMap<String, Vec<String>> {
    for _ in 1..ROUNDS {
        drop(build_map_capacity(0));
    }
    build_map_capacity(0)
}

fn s1_reserve_vectors() -> HashMap<String, Vec<String>> {
    for _ in 1..ROUNDS {
        drop(build_map_capacity(APPENDS / KEYS));
    }
    build_map_capacity(APPENDS / KEYS)
}

/// Vectors (with their capacity) and the map come back from the previous round; the key is
/// formatted into one reused buffer and only copied when a key is new.
#[inline(never)]
fn build_pooled(
    m: &mut HashMap<String, Vec<String>>,
    pool: &mut Vec<Vec<String>>,
    key: &mut String,
) {
    for (_, mut v) in m.drain() {
        v.clear();
        pool.push(v);
    }
    for i in 0..APPENDS {
        key.clear();
        let _ = write!(key, "k{}", i % KEYS);
        let value = format!("v{i}");
        match m.get_mut(key.as_str()) {
            Some(v) => v.push(value),
            None => {
                let mut v = pool
                    .pop()
                    .unwrap_or_else(|| Vec::with_capacity(APPENDS / KEYS));
                v.push(value);
                m.insert(key.clone(), v);
            }
        }
    }
}

fn s1_pool() -> (HashMap<String, Vec<String>>, Vec<Vec<String>>) {
    let mut m = HashMap::with_capacity(KEYS);
    let mut pool = Vec::with_capacity(KEYS);
    let mut key = String::with_capacity(16);
    for _ in 0..ROUNDS {
        build_pooled(&mut m, &mut pool, &mut key);
    }
    (m, pool)
}

// ---------------------------------------------------------------------------------------------
// Scenario 2: maps of maps. 100 users x 100 repositories x 10 commits = 100,000 entries.

const USERS: u64 = 100;
const REPOS: u64 = 100;
const COMMITS: u64 = 10;
const ENTRIES: u64 = USERS * REPOS * COMMITS;

fn entries() -> impl Iterator<Item = (u64, u64, u64)> {
    (0..USERS)
        .flat_map(|u| (0..REPOS).flat_map(move |r| (0..COMMITS).map(move |c| (u, r, c * 7919 + u))))
}

type ThreeLevel = HashMap<String, HashMap<String, HashMap<u64, ()>>>;

#[inline(never)]
fn s2_nested() -> ThreeLevel {
    let mut m: ThreeLevel = HashMap::new();
    for (u, r, c) in entries() {
        m.entry(format!("user{u}"))
            .or_default()
            .entry(format!("repo{r}"))
            .or_default()
            .insert(c, ());
    }
    m
}

#[inline(never)]
fn s2_flat() -> HashMap<(String, String, u64), ()> {
    let mut m = HashMap::new();
    for (u, r, c) in entries() {
        m.insert((format!("user{u}"), format!("repo{r}"), c), ());
    }
    m
}

/// Names interned once (`names` + `index`), entries as `(user id, repo id, commit)` in one
/// sorted `Vec`, looked up by binary search.
struct Sorted {
    names: Vec<String>,
    index: HashMap<String, u32>,
    rows: Vec<(u32, u32, u64)>,
}

#[inline(never)]
fn s2_sorted() -> Sorted {
    let mut s = Sorted {
        names: Vec::new(),
        index: HashMap::new(),
        rows: Vec::new(),
    };
    let intern = |s: &mut Sorted, name: String| -> u32 {
        if let Some(&id) = s.index.get(&name) {
            return id;
        }
        let id = s.names.len() as u32;
        s.names.push(name.clone());
        s.index.insert(name, id);
        id
    };
    for (u, r, c) in entries() {
        let u = intern(&mut s, format!("user{u}"));
        let r = intern(&mut s, format!("repo{r}"));
        s.rows.push((u, r, c));
    }
    s.rows.sort_unstable();
    s
}

// ---------------------------------------------------------------------------------------------
// Scenario 3: a HashMap<u64, String> of 1,000 entries, each value 16 bytes.

#[inline(never)]
fn s3_map() -> HashMap<u64, String> {
    let mut m = HashMap::new();
    for i in 0..1000u64 {
        m.insert(i, "x".repeat(16));
    }
    m
}

/// hashbrown (the `HashMap` of std) as of Rust 1.80+: the layout the measured bytes should match.
mod hashbrown_layout {
    /// Control bytes are read 16 at a time with SSE2 (x86-64); other targets use 8 or 4.
    pub const GROUP_WIDTH: usize = if cfg!(all(target_arch = "x86_64", target_feature = "sse2")) {
        16
    } else {
        8
    };

    /// Items a table of `buckets` holds before it must grow: all but one below 8 buckets, else 7/8.
    pub fn capacity(buckets: usize) -> usize {
        if buckets < 8 {
            buckets - 1
        } else {
            buckets / 8 * 7
        }
    }

    /// Buckets for a requested capacity: the smallest power of two with `cap <= 7/8 * buckets`.
    pub fn buckets_for(cap: usize) -> usize {
        if cap < 8 {
            return if cap < 4 { 4 } else { 8 };
        }
        (cap * 8 / 7).next_power_of_two()
    }

    /// One allocation per table: `buckets` slots of `T` (rounded up to the control alignment),
    /// then one control byte per bucket plus `GROUP_WIDTH` mirrored ones, so a 16-byte group
    /// load at any bucket stays in bounds.
    pub fn table_bytes(buckets: usize, size: usize, align: usize) -> usize {
        let ctrl_align = align.max(GROUP_WIDTH);
        let ctrl_offset = (size * buckets + ctrl_align - 1) & !(ctrl_align - 1);
        ctrl_offset + buckets + GROUP_WIDTH
    }

    /// The tables an insert-only map passes through on its way to `n` items: it starts empty (no
    /// allocation), gets `buckets_for(1)` on the first insert, and when full grows to
    /// `buckets_for(max(items + 1, capacity + 1))` (hashbrown's `reserve_rehash`).
    pub fn growth(n: usize) -> Vec<usize> {
        let mut tables = vec![];
        let mut buckets = 0;
        for items in 0..n {
            let cap = if buckets == 0 { 0 } else { capacity(buckets) };
            if items == cap {
                buckets = buckets_for((items + 1).max(cap + 1));
                tables.push(buckets);
            }
        }
        tables
    }
}

fn s3_explain(c: &Counts) {
    use hashbrown_layout::*;
    let size = std::mem::size_of::<(u64, String)>();
    let align = std::mem::align_of::<(u64, String)>();
    let tables = growth(1000);
    let last = *tables.last().unwrap();
    let table = table_bytes(last, size, align);
    let strings = 1000 * 16;
    println!();
    println!(
        "  Derivation from hashbrown's layout (entry (u64, String) = {size} bytes, align {align}):"
    );
    println!(
        "    1,000 items need capacity >= 1,000: {} buckets hold only {} (7/8), so {} buckets (load {:.0}%)",
        last / 2,
        capacity(last / 2),
        last,
        100.0 * 1000.0 / last as f64
    );
    println!(
        "    table = {last} x {size} B slots + {last} control bytes + {GROUP_WIDTH} mirrored = {table} B (one allocation)"
    );
    println!("    values = 1,000 Strings x 16 B of heap each = {strings} B (1,000 allocations; the 24-byte String headers are in the slots)");
    let expected_live = table + strings;
    println!(
        "    expected live: {} objects, {} B        measured: {} objects, {} B   {}",
        1001,
        expected_live,
        c.inuse_objects,
        c.inuse_bytes,
        if c.inuse_objects == 1001 && c.inuse_bytes == expected_live as i64 {
            "(match)"
        } else {
            "(DIFFERENT)"
        }
    );
    let prev = table_bytes(tables[tables.len() - 2], size, align);
    let at_resize = capacity(tables[tables.len() - 2]) + 1;
    // The value of insert #897 is built before `insert` finds the table full: 897 values live.
    let expected_peak = prev + table + at_resize * 16;
    println!(
        "    peak: during the last resize (insert #{at_resize}) the old table ({prev} B), the new one and {at_resize} values are live: {expected_peak} B; measured {}   {}",
        c.peak,
        if c.peak == expected_peak as u64 { "(match)" } else { "(DIFFERENT)" }
    );
    let grown: usize = tables.iter().map(|&b| table_bytes(b, size, align)).sum();
    println!(
        "    growth: tables of {:?} buckets = {} allocations, {} B allocated in all; measured {} allocations, {} B   {}",
        tables,
        tables.len(),
        grown + strings,
        c.alloc_objects - 1000,
        c.alloc_bytes,
        if c.alloc_objects as usize == tables.len() + 1000 && c.alloc_bytes as usize == grown + strings {
            "(match)"
        } else {
            "(DIFFERENT)"
        }
    );
    println!(
        "    per entry: {:.1} B live for 8 B of key and 16 B of text; HashMap::with_capacity(1000) would still take {} buckets",
        c.inuse_bytes as f64 / 1000.0,
        buckets_for(1000)
    );
}

// ---------------------------------------------------------------------------------------------
// Printing.

fn print_counts_header() {
    println!(
        "  {:<34} {:>13} {:>14} {:>13} {:>14} {:>14}",
        "variant", "alloc_objects", "alloc_bytes", "inuse_objects", "inuse_bytes", "peak"
    );
}

fn print_counts(label: &str, c: &Counts) {
    println!(
        "  {:<34} {:>13} {:>14} {:>13} {:>14} {:>14}",
        label,
        group(c.alloc_objects as i64),
        group(c.alloc_bytes as i64),
        group(c.inuse_objects),
        group(c.inuse_bytes),
        group(c.peak as i64)
    );
}

fn group(n: i64) -> String {
    let s = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn mb(n: u64) -> String {
    format!("{:.1} MB", n as f64 / 1e6)
}

/// Growth frames: where a container decides to get a bigger buffer.
const GROWTH: &[&str] = &["finish_grow", "reserve_rehash", "format_inner"];

/// The top sites by bytes allocated, estimated from the samples. A site is shown as its growth
/// frame (the innermost of `finish_grow`, hashbrown's `reserve_rehash`, `format_inner`; else the
/// leaf), the library function this program called, and the first frame of this program. Stacks
/// that differ only further out (the same line reached from different callers) are added up.
fn print_sites(p: &heapsight::HeapProfile, n: usize) {
    // (growth, callee, user frame) -> (alloc_bytes, alloc_objects, inuse_bytes)
    let mut rows: Vec<((String, String, String), [u64; 3])> = Vec::new();
    for s in p.sites() {
        let syms: Vec<&heapsight::Symbol> =
            s.frames().iter().flat_map(|f| f.symbols.iter()).collect();
        let Some(user) = syms
            .iter()
            .position(|s| s.function.starts_with("nested_maps::"))
        else {
            continue; // start-up and runtime allocations, not the scenario's
        };
        let growth = syms[..user]
            .iter()
            .find(|s| GROWTH.iter().any(|g| s.function.contains(g)))
            .or(syms.first())
            .map_or(String::new(), |s| short(&s.function));
        let callee = if user > 0 {
            short(&syms[user - 1].function)
        } else {
            String::new()
        };
        let u = syms[user];
        let user = match u.line {
            Some(l) => format!("{}:{l}", u.function.trim_start_matches("nested_maps::")),
            None => u.function.trim_start_matches("nested_maps::").to_string(),
        };
        let key = (growth, callee, user);
        let v = [s.alloc_bytes, s.alloc_objects, s.inuse_bytes];
        match rows.iter_mut().find(|r| r.0 == key) {
            Some(r) => (0..3).for_each(|i| r.1[i] += v[i]),
            None => rows.push((key, v)),
        }
    }
    rows.sort_by(|a, b| b.1[0].cmp(&a.1[0]));
    println!(
        "    top sites by bytes allocated (estimates from samples every {} B on average):",
        p.sample_rate()
    );
    println!(
        "    {:>12} {:>11} {:>12}  growth frame .. function called <- this program",
        "alloc_bytes", "alloc_objs", "inuse_bytes"
    );
    for ((growth, callee, user), v) in rows.iter().take(n) {
        let path = if callee.is_empty() || callee == growth {
            growth.clone()
        } else {
            format!("{growth} .. {callee}")
        };
        println!(
            "    {:>12} {:>11} {:>12}  {path} <- {user}",
            group(v[0] as i64),
            group(v[1] as i64),
            group(v[2] as i64)
        );
    }
}

/// `alloc::raw_vec::RawVecInner<A>::finish_grow` -> `RawVecInner::finish_grow`: generic
/// arguments dropped, the last two path segments kept.
fn short(f: &str) -> String {
    // `<T as Trait>::f` stays as it is; `<alloc::raw_vec::RawVecInner<A>>::f` loses its brackets.
    if f.starts_with('<') && f.contains(" as ") {
        return f.to_string();
    }
    let f = f.strip_prefix('<').unwrap_or(f);
    let mut plain = String::new();
    let mut depth = 0;
    for ch in f.chars() {
        match ch {
            '<' => depth += 1,
            '>' if depth == 0 => {}
            '>' => depth -= 1,
            _ if depth == 0 => plain.push(ch),
            _ => {}
        }
    }
    let parts: Vec<&str> = plain.rsplitn(3, "::").collect();
    match parts.len() {
        3 | 2 => format!("{}::{}", parts[1], parts[0]),
        _ => plain,
    }
}

/// Where each scenario's files go: `heapsight-out/nested_maps/<scenario>/` under the working
/// directory (or `HEAPSIGHT_DEMO_DIR`).
fn out_dir() -> PathBuf {
    std::env::var_os("HEAPSIGHT_DEMO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("heapsight-out").join("nested_maps"))
}

/// Writes one scenario's profile as files: gzipped pprof, Go's debug=1 text and (with feature
/// `flamegraph`) an SVG of the live bytes. A failure is reported, not fatal: the tables above
/// are the demo's main output.
fn write_outputs(dir: &Path, profile: &heapsight::HeapProfile) {
    let written = (|| -> std::io::Result<()> {
        use std::fs::File;
        std::fs::create_dir_all(dir)?;
        profile.write_pprof(File::create(dir.join("heap.pb.gz"))?)?;
        profile.write_text(File::create(dir.join("heap.txt"))?)?;
        #[cfg(feature = "flamegraph")]
        profile.write_flamegraph(
            File::create(dir.join("heap.svg"))?,
            heapsight::SampleType::InuseSpace,
        )?;
        Ok(())
    })();
    if let Err(e) = written {
        eprintln!("could not write the profiles into {}: {e}", dir.display());
    }
}

// ---------------------------------------------------------------------------------------------

const SCENARIOS: &[(&str, &str)] = &[
    ("1-none", "no pre-allocation"),
    ("1-map-capacity", "HashMap::with_capacity(10_000)"),
    ("1-reserve-vectors", "+ Vec::with_capacity(50) per key"),
    ("1-pool", "+ map, vectors, key buffer reused"),
    (
        "2-nested",
        "HashMap<String, HashMap<String, HashMap<u64, ()>>>",
    ),
    ("2-flat", "HashMap<(String, String, u64), ()>"),
    ("2-sorted", "sorted Vec<(u32, u32, u64)> + name index"),
    ("3-map", "HashMap<u64, String>, 1,000 entries"),
];

/// Child: runs one scenario.
fn child(name: &str) {
    heapsight::set_sample_rate(DEMO_RATE);
    match name {
        "1-none" => drop(measure(name, s1_none)),
        "1-map-capacity" => drop(measure(name, s1_map_capacity)),
        "1-reserve-vectors" => drop(measure(name, s1_reserve_vectors)),
        "1-pool" => drop(measure(name, s1_pool)),
        "2-nested" => drop(measure(name, s2_nested)),
        "2-flat" => drop(measure(name, s2_flat)),
        "2-sorted" => drop(measure(name, s2_sorted)),
        "3-map" => drop(measure(name, s3_map)),
        _ => {
            eprintln!("unknown scenario {name}");
            std::process::exit(2);
        }
    }
}

/// Parent: runs every scenario in its own process, shows its sites, collects its counters.
fn run(name: &str) -> Counts {
    let out = Command::new(std::env::current_exe().expect("current_exe"))
        .arg(name)
        .output()
        .expect("re-run this example for one scenario");
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        panic!("scenario {name} failed");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut counts = None;
    for line in text.lines() {
        match Counts::decode(line) {
            Some((_, c)) => counts = Some(c),
            None => println!("{line}"),
        }
    }
    counts.expect("the scenario printed its counters")
}

fn main() {
    if let Some(name) = std::env::args().nth(1) {
        return child(&name);
    }
    let t = std::time::Instant::now();
    let mut results: HashMap<&str, Counts> = HashMap::new();
    let mut section = "";
    for (name, label) in SCENARIOS {
        let s = &name[..1];
        if s != section {
            section = s;
            println!();
            match s {
                "1" => println!("== 1. HashMap<String, Vec<String>>: {APPENDS} appends over {KEYS} keys, built {ROUNDS} times"),
                "2" => println!("== 2. Maps of maps: {ENTRIES} (user, repo, commit) entries"),
                _ => println!("== 3. How many bytes does a HashMap<u64, String> of 1,000 entries use?"),
            }
        }
        println!();
        println!("  -- {name}: {label}");
        let c = run(name);
        print_counts_header();
        print_counts(label, &c);
        results.insert(name, c);
    }

    println!();
    println!("== Summary 1 (the article's \"1.2 GB -> 320 MB -> 180 MB\" table, measured here)");
    print_counts_header();
    let none = results["1-none"];
    for (name, label) in &SCENARIOS[..4] {
        print_counts(label, &results[name]);
    }
    println!();
    println!(
        "  {:<34} {:>12} {:>8} {:>16} {:>8} {:>14}",
        "", "peak", "vs none", "total allocated", "vs none", "allocations"
    );
    for (name, label) in &SCENARIOS[..4] {
        let c = results[name];
        let pct = |a: u64, b: u64| 100.0 * (a as f64 / b as f64 - 1.0);
        println!(
            "  {:<34} {:>12} {:>7.0}% {:>16} {:>7.0}% {:>14}",
            label,
            mb(c.peak),
            pct(c.peak, none.peak),
            mb(c.alloc_bytes),
            pct(c.alloc_bytes, none.alloc_bytes),
            group(c.alloc_objects as i64)
        );
    }

    println!();
    println!("== Summary 2: cost per entry (live, after building)");
    println!(
        "  {:<52} {:>16} {:>16}",
        "layout", "objects/entry", "bytes/entry"
    );
    for (name, label) in &SCENARIOS[4..7] {
        let c = results[name];
        println!(
            "  {:<52} {:>16.3} {:>16.1}",
            label,
            c.inuse_objects as f64 / ENTRIES as f64,
            c.inuse_bytes as f64 / ENTRIES as f64
        );
    }

    println!();
    println!("== Summary 3");
    print_counts_header();
    print_counts(SCENARIOS[7].1, &results["3-map"]);
    s3_explain(&results["3-map"]);

    println!();
    println!(
        "(exact counters from heapsight::stats(); sites from heapsight::profile(); {:.1} s)",
        t.elapsed().as_secs_f64()
    );
    let dir = out_dir();
    println!();
    println!(
        "Profiles of each scenario: {}/<scenario>/heap.pb.gz, heap.txt{}",
        dir.display(),
        if cfg!(feature = "flamegraph") {
            ", heap.svg"
        } else {
            " (add --features flamegraph for heap.svg)"
        }
    );
    println!(
        "Open one with:  go tool pprof -http=:8080 {}",
        dir.join("1-none").join("heap.pb.gz").display()
    );
}
