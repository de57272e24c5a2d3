//! Profiles heapsight wrote, read by the real clients: `go tool pprof` and `protoc`.
//!
//! One global-allocator scenario, `harness = false` (the checks share one process and run in
//! order). The program: `keep_live` keeps 20,000 × 4 KiB blocks live, `churn` allocates and frees
//! 200,000 × 512 B, at the default 512 KiB rate with a fixed seed. Bounds are 4 σ of the sampling
//! model: a site with N allocations of size S at rate R is sampled with p = 1 - exp(-S/R) per
//! allocation, its count estimate has σ = sqrt(N (1-p) / p) and its bytes estimate S × that.
//! Prints `test <name> ... ok` per check, exits non-zero on any failure, and prints
//! `SKIPPED: <tool> not installed` (without failing) for checks whose tool is missing.
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;

use heapsight::{HeapProfile, SampleType};

#[global_allocator]
static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();

const RATE: u64 = 512 * 1024;
const LIVE_N: u64 = 20_000;
const LIVE_SIZE: u64 = 4096;
const CHURN_N: u64 = 200_000;
const CHURN_SIZE: u64 = 512;

#[inline(never)]
fn keep_live(out: &mut Vec<Vec<u8>>) {
    for _ in 0..LIVE_N {
        let v: Vec<u8> = Vec::with_capacity(LIVE_SIZE as usize);
        out.push(black_box(v));
    }
}

#[inline(never)]
fn churn(n: u64) {
    for _ in 0..n {
        let v: Vec<u8> = Vec::with_capacity(CHURN_SIZE as usize);
        black_box(&v);
    }
}

#[inline(never)]
fn churn_later(n: u64) {
    for _ in 0..n {
        let v: Vec<u8> = Vec::with_capacity(CHURN_SIZE as usize);
        black_box(&v);
    }
}

#[inline(never)]
fn peak_builder(n: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(black_box(Vec::<u8>::with_capacity(LIVE_SIZE as usize)));
    }
    out
}

/// σ of the bytes estimate for `n` allocations of `size` bytes at `rate`.
fn sd_bytes(n: u64, size: u64, rate: u64) -> f64 {
    let p = 1.0 - (-(size as f64) / rate as f64).exp();
    size as f64 * (n as f64 * (1.0 - p) / p).sqrt()
}

fn within(what: &str, got: f64, truth: f64, sd: f64) -> Result<(), String> {
    if (got - truth).abs() <= 4.0 * sd {
        Ok(())
    } else {
        Err(format!(
            "{what}: {got} is not within 4 sd ({sd:.0}) of {truth}"
        ))
    }
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(stdout)
}

/// `go tool pprof -top -cum` with exact byte units; returns the cumulative value of the line of
/// function `func` (last path segment).
fn pprof_cum(file: &Path, index: &str, func: &str) -> Result<f64, String> {
    let out = run(Command::new("go")
        .args([
            "tool",
            "pprof",
            "-top",
            "-cum",
            "-nodecount=1000",
            "-unit=byte",
            &format!("-sample_index={index}"),
        ])
        .arg(file))?;
    for line in out.lines() {
        // flat flat% sum% cum cum% name...
        let cols: Vec<&str> = line.split_whitespace().collect();
        // Names are full paths from our symbols (`profiles_go::churn`) and DWARF short names
        // when pprof symbolized itself (`churn`).
        let name = cols.get(5..).map(|c| c.join(" ")).unwrap_or_default();
        if name == func || name.ends_with(&format!("::{func}")) {
            let v = cols[3].trim_end_matches('B');
            return v
                .parse::<f64>()
                .map_err(|e| format!("cum {:?} in {line:?}: {e}", cols[3]));
        }
    }
    Err(format!(
        "{func} not in `go tool pprof -top -cum -sample_index={index}`:\n{out}"
    ))
}

/// Sums a `HeapProfile`'s sites whose stack contains `func`.
fn site_sum(p: &HeapProfile, func: &str, f: impl Fn(&heapsight::Site) -> u64) -> u64 {
    p.sites()
        .iter()
        .filter(|s| {
            s.frames()
                .iter()
                .any(|fr| fr.symbols.iter().any(|sy| sy.function.contains(func)))
        })
        .map(f)
        .sum()
}

mod support;

fn main() {
    heapsight::set_sample_rate(RATE);
    heapsight::set_sampling_seed(42);
    let dir: PathBuf =
        std::env::temp_dir().join(format!("heapsight-profiles-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut t = support::Runner::new();

    let mut live: Vec<Vec<u8>> = Vec::with_capacity(LIVE_N as usize);
    keep_live(&mut live);
    churn(CHURN_N);
    let p = heapsight::profile();

    let pb = dir.join("heap.pb.gz");
    let allocs_pb = dir.join("allocs.pb.gz");
    let txt = dir.join("heap.txt");
    let mut bytes = Vec::new();
    p.write_pprof(&mut bytes).unwrap();
    std::fs::write(&pb, &bytes).unwrap();
    p.write_pprof_allocs(std::fs::File::create(&allocs_pb).unwrap())
        .unwrap();
    p.write_text(std::fs::File::create(&txt).unwrap()).unwrap();

    let live_bytes = (LIVE_N * LIVE_SIZE) as f64;
    let live_sd = sd_bytes(LIVE_N, LIVE_SIZE, RATE);
    let churn_bytes = (CHURN_N * CHURN_SIZE) as f64;
    let churn_sd = sd_bytes(CHURN_N, CHURN_SIZE, RATE);

    t.check_ok("profile_estimates_within_4_sd", || {
        within(
            "keep_live inuse",
            site_sum(&p, "keep_live", |s| s.inuse_bytes) as f64,
            live_bytes,
            live_sd,
        )?;
        within(
            "churn alloc",
            site_sum(&p, "profiles_go::churn", |s| s.alloc_bytes) as f64,
            churn_bytes,
            churn_sd,
        )?;
        let churn_inuse = site_sum(&p, "profiles_go::churn", |s| s.inuse_bytes);
        if churn_inuse != 0 {
            return Err(format!(
                "churn frees everything, in-use estimate {churn_inuse}"
            ));
        }
        Ok(())
    });

    t.check_ok("writing_into_a_vec_does_not_drift_the_counters", || {
        let before = heapsight::stats();
        let mut v = Vec::new();
        p.write_pprof(&mut v).map_err(|e| e.to_string())?;
        p.write_text(&mut v).map_err(|e| e.to_string())?;
        drop(black_box(v));
        let after = heapsight::stats();
        if (before.inuse_bytes, before.inuse_objects) != (after.inuse_bytes, after.inuse_objects) {
            return Err(format!("in-use moved: {before:?} -> {after:?}"));
        }
        Ok(())
    });

    let go = support::have_tool("go");
    t.check_ok("go_tool_pprof_raw_parses_proto_and_text", || {
        if !go {
            return Ok(());
        }
        // pprof marks the default sample type with [dflt]: none for heap (it picks the last,
        // inuse_space), alloc_space for allocs.
        let types = "alloc_objects/count alloc_space/bytes inuse_objects/count inuse_space/bytes";
        let allocs_types =
            "alloc_objects/count alloc_space/bytes[dflt] inuse_objects/count inuse_space/bytes";
        for (f, t) in [(&pb, types), (&allocs_pb, allocs_types), (&txt, types)] {
            let raw = run(Command::new("go").args(["tool", "pprof", "-raw"]).arg(f))?;
            for want in ["PeriodType: space bytes", &format!("Period: {RATE}"), t] {
                if !raw.contains(want) {
                    return Err(format!("{}: no {want:?} in -raw:\n{raw}", f.display()));
                }
            }
        }
        Ok(())
    });

    t.check_ok("go_tool_pprof_top_finds_the_functions_within_4_sd", || {
        if !go {
            return Ok(());
        }
        within(
            "pprof inuse_space keep_live",
            pprof_cum(&pb, "inuse_space", "keep_live")?,
            live_bytes,
            live_sd,
        )?;
        within(
            "pprof alloc_space churn",
            pprof_cum(&pb, "alloc_space", "churn")?,
            churn_bytes,
            churn_sd,
        )?;
        within(
            "pprof allocs keep_live alloc",
            pprof_cum(&allocs_pb, "alloc_space", "keep_live")?,
            live_bytes,
            live_sd,
        )?;
        // The proto carries our estimates unchanged.
        let ours = site_sum(&p, "keep_live", |s| s.inuse_bytes) as f64;
        let theirs = pprof_cum(&pb, "inuse_space", "keep_live")?;
        if (ours - theirs).abs() > 2.0 {
            return Err(format!(
                "pprof shows {theirs} for keep_live, the profile says {ours}"
            ));
        }
        Ok(())
    });

    t.check_ok(
        "go_tool_pprof_unbiases_the_text_format_to_our_estimates",
        || {
            if !go {
                return Ok(());
            }
            // pprof symbolizes the text profile itself from the MAPPED_LIBRARIES section (this test
            // binary), and unbiases the raw counts at the header rate: it must land on our estimates
            // (up to its truncation of each line).
            for (index, func) in [("inuse_space", "keep_live"), ("alloc_space", "churn")] {
                let theirs = pprof_cum(&txt, index, func)?;
                let ours = match index {
                    "inuse_space" => site_sum(&p, func, |s| s.inuse_bytes),
                    _ => site_sum(&p, func, |s| s.alloc_bytes),
                } as f64;
                let lines = p.sites().len() as f64;
                if (ours - theirs).abs() > (1.0 + lines) * 4096.0 {
                    return Err(format!(
                        "{index} {func}: pprof text {theirs} vs ours {ours}"
                    ));
                }
            }
            Ok(())
        },
    );

    t.check_ok(
        "go_tool_pprof_symbolizes_an_unsymbolized_profile_offline",
        || {
            if !go {
                return Ok(());
            }
            // Addresses and mappings only: pprof finds this test binary through the mapping,
            // symbolizes it, and drops heapsight's own frames through `drop_frames`.
            let raw = heapsight::profile_unsymbolized();
            let f = dir.join("unsymbolized.pb.gz");
            raw.write_pprof(std::fs::File::create(&f).unwrap())
                .map_err(|e| e.to_string())?;
            within(
                "offline keep_live",
                pprof_cum(&f, "inuse_space", "keep_live")?,
                live_bytes,
                live_sd,
            )?;
            let traces = run(Command::new("go")
                .args(["tool", "pprof", "-traces"])
                .arg(&f))?;
            for internal in ["take_sample", "capture"] {
                if traces
                    .lines()
                    .any(|l| l.split_whitespace().last() == Some(internal))
                {
                    return Err(format!(
                        "heapsight's {internal} frame was not dropped:\n{traces}"
                    ));
                }
            }
            Ok(())
        },
    );

    t.check_ok("go_tool_pprof_traces_show_bytes_labels", || {
        if !go {
            return Ok(());
        }
        let out = run(Command::new("go")
            .args(["tool", "pprof", "-traces"])
            .arg(&pb))?;
        for want in ["bytes:  4kB", "keep_live"] {
            if !out.contains(want) {
                return Err(format!("no {want:?} in -traces:\n{out}"));
            }
        }
        let out = run(Command::new("go")
            .args(["tool", "pprof", "-traces", "-sample_index=alloc_space"])
            .arg(&pb))?;
        if !out.contains("bytes:  512B") {
            return Err(format!("no 512B label in -traces:\n{out}"));
        }
        Ok(())
    });

    t.check_ok("protoc_decode_raw_reads_the_message", || {
        if !support::have_tool("protoc") {
            return Ok(());
        }
        let mut gz = flate2::read::GzDecoder::new(&bytes[..]);
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut gz, &mut raw).map_err(|e| e.to_string())?;
        let rawf = dir.join("heap.pb");
        std::fs::write(&rawf, &raw).unwrap();
        let out = run(Command::new("sh")
            .arg("-c")
            .arg(format!("protoc --decode_raw < {}", rawf.display())))?;
        for st in [
            "alloc_objects",
            "alloc_space",
            "inuse_objects",
            "inuse_space",
        ] {
            if !out.contains(&format!("6: \"{st}\"")) {
                return Err(format!("no sample type {st} in the string table:\n{out}"));
            }
        }
        // string_table[0] is "": the first field-6 entry.
        let first = out.lines().find(|l| l.starts_with("6: ")).unwrap_or("");
        if first != "6: \"\"" {
            return Err(format!("string_table[0] is {first:?}"));
        }
        Ok(())
    });

    t.check_ok("top_names_the_known_functions", || {
        let top = p.top(5, SampleType::InuseSpace);
        let text = top.to_string();
        print!("{text}");
        if !top
            .user_function(0)
            .is_some_and(|f| f.contains("keep_live"))
        {
            return Err(format!("first in-use row is not keep_live:\n{text}"));
        }
        let top = p.top(5, SampleType::AllocSpace);
        let text = top.to_string();
        print!("{text}");
        if !(0..top.len()).any(|i| {
            top.user_function(i)
                .is_some_and(|f| f.contains("profiles_go::churn"))
        }) {
            return Err(format!("churn is not in the alloc_space top:\n{text}"));
        }
        Ok(())
    });

    t.check_ok("delta_counts_only_what_was_allocated_in_between", || {
        churn_later(CHURN_N / 2);
        let later = heapsight::profile();
        let d = later.delta(&p);
        within(
            "delta churn_later alloc",
            site_sum(&d, "churn_later", |s| s.alloc_bytes) as f64,
            churn_bytes / 2.0,
            sd_bytes(CHURN_N / 2, CHURN_SIZE, RATE),
        )?;
        let old_churn = site_sum(&d, "profiles_go::churn::", |s| s.alloc_bytes)
            + site_sum(&d, "profiles_go::churn (", |s| s.alloc_bytes);
        let old_churn_fn = d
            .sites()
            .iter()
            .filter(|s| {
                s.frames()
                    .iter()
                    .any(|f| f.function() == Some("profiles_go::churn"))
            })
            .map(|s| s.alloc_bytes)
            .sum::<u64>();
        if old_churn + old_churn_fn != 0 {
            return Err(format!(
                "churn allocated nothing in between, delta says {}",
                old_churn + old_churn_fn
            ));
        }
        // In-use is the later profile's: keep_live's blocks are still there.
        let a = site_sum(&d, "keep_live", |s| s.inuse_bytes);
        let b = site_sum(&later, "keep_live", |s| s.inuse_bytes);
        if a != b || site_sum(&d, "keep_live", |s| s.alloc_bytes) != 0 {
            return Err(format!(
                "keep_live in delta: inuse {a} (later {b}), alloc {}",
                site_sum(&d, "keep_live", |s| s.alloc_bytes)
            ));
        }
        let mut v = Vec::new();
        d.write_pprof(&mut v).map_err(|e| e.to_string())?;
        if go {
            let f = dir.join("delta.pb.gz");
            std::fs::write(&f, &v).unwrap();
            within(
                "pprof delta churn_later",
                pprof_cum(&f, "alloc_space", "churn_later")?,
                churn_bytes / 2.0,
                sd_bytes(CHURN_N / 2, CHURN_SIZE, RATE),
            )?;
        }
        Ok(())
    });

    t.check_ok("peak_profile_holds_the_transient_high_water_mark", || {
        const PEAK_N: u64 = 30_000;
        let big = peak_builder(PEAK_N as usize);
        drop(black_box(big));
        let now = heapsight::profile();
        if site_sum(&now, "peak_builder", |s| s.inuse_bytes) != 0 {
            return Err("peak_builder's blocks are freed but still in use".into());
        }
        let peak = heapsight::peak_profile();
        let at_peak = site_sum(&peak, "peak_builder", |s| s.inuse_bytes) as f64;
        let truth = (PEAK_N * LIVE_SIZE) as f64;
        let sd = sd_bytes(PEAK_N, LIVE_SIZE, RATE);
        // The capture is taken each time the sampled in-use passes 1.1 x the last one: the
        // highest capture is within a factor 1.1 of the highest estimate, which also holds
        // keep_live's ~82 MB. So peak_builder's share at the capture is at least
        // (total / 1.1 - keep_live).
        let low = (truth + live_bytes) / 1.1 - live_bytes - 4.0 * sd;
        if !(low..=truth + 4.0 * sd).contains(&at_peak) {
            return Err(format!(
                "peak_builder at the peak: {at_peak}, expected {low:.0}..={:.0}",
                truth + 4.0 * sd
            ));
        }
        let kept = site_sum(&peak, "keep_live", |s| s.inuse_bytes) as f64;
        within("keep_live at the peak", kept, live_bytes, live_sd)?;
        let mut v = Vec::new();
        peak.write_pprof(&mut v).map_err(|e| e.to_string())?;
        if go {
            let f = dir.join("peak.pb.gz");
            std::fs::write(&f, &v).unwrap();
            let shown = pprof_cum(&f, "inuse_space", "peak_builder")?;
            if (shown - at_peak).abs() > 2.0 {
                return Err(format!(
                    "pprof shows {shown} for peak_builder, the peak profile says {at_peak}"
                ));
            }
        }
        Ok(())
    });

    t.check_ok("lifetimes_reach_the_distributions", || {
        let p = heapsight::profile();
        let site = p
            .sites()
            .iter()
            .find(|s| {
                s.frames()
                    .iter()
                    .any(|f| f.function() == Some("profiles_go::churn"))
            })
            .ok_or("no churn site")?;
        let d = p.distribution(site);
        if d.freed_samples() != site.samples {
            return Err(format!(
                "churn freed all {} samples, lifetimes counted {}",
                site.samples,
                d.freed_samples()
            ));
        }
        if d.size_quantile(0.5) != Some(CHURN_SIZE) || d.size_quantile(0.99) != Some(CHURN_SIZE) {
            return Err(format!(
                "sizes {:?} {:?}",
                d.size_quantile(0.5),
                d.size_quantile(0.99)
            ));
        }
        // Freed right after allocation: well under a millisecond.
        let p99 = d.lifetime_quantile(0.99).ok_or("no lifetime")?;
        if p99 > std::time::Duration::from_millis(1) {
            return Err(format!("churn lifetime p99 {p99:?}"));
        }
        let site = p
            .sites()
            .iter()
            .find(|s| {
                s.frames()
                    .iter()
                    .any(|f| f.function() == Some("profiles_go::keep_live"))
            })
            .ok_or("no keep_live site")?;
        if p.distribution(site).freed_samples() != 0 {
            return Err("keep_live freed nothing".into());
        }
        Ok(())
    });

    drop(live);
    let _ = std::fs::remove_dir_all(&dir);
    t.finish();
}
