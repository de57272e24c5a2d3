//! `measure()` tracks its own exact peak through the slow path; the process-wide
//! `Stats::peak_inuse_bytes` (taken at flushes) keeps its bound around and inside a scope.
//! Needs a quiet process for exact global counters: no harness, one thread.
use std::hint::black_box;

#[global_allocator]
static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();

/// The countdown at rate 0 (`sampler::OFF_INTERVAL`): a thread flushes at least this often, so
/// the global peak is at most this much below the true one on a single thread.
const OFF_INTERVAL: u64 = 1 << 20;

/// A peak reached on this thread between two flushes, then a measure: the global peak stays
/// within one countdown of it, and the (empty) measure sees none of it.
fn peak_before_a_measure_is_kept() -> Result<(), String> {
    heapsight::set_sample_rate(0);
    let s0 = heapsight::stats(); // flushes this thread
    let block = black_box(vec![0u8; 1536 * 1024]);
    drop(block);
    let ((), u) = heapsight::measure(|| ());
    let s1 = heapsight::stats();
    let want = s0.inuse_bytes + 1536 * 1024 - OFF_INTERVAL;
    if s1.peak_inuse_bytes < want {
        return Err(format!(
            "peak {} < in-use before {} + 1.5 MiB - 1 MiB = {want}",
            s1.peak_inuse_bytes, s0.inuse_bytes
        ));
    }
    if u.peak_bytes != 0 {
        return Err(format!("empty measure saw a peak: {u:?}"));
    }
    Ok(())
}

/// A peak reached inside a measure is in the global peak too.
fn peak_inside_a_measure_is_global() -> Result<(), String> {
    heapsight::set_sample_rate(0);
    let s0 = heapsight::stats();
    let (_, u) = heapsight::measure(|| black_box(vec![0u8; 3 << 20]).len());
    let s1 = heapsight::stats();
    if u.peak_bytes != 3 << 20 {
        return Err(format!("measure peak {} != 3 MiB", u.peak_bytes));
    }
    let want = s0.inuse_bytes + (3 << 20);
    if s1.peak_inuse_bytes < want {
        return Err(format!("global peak {} < {want}", s1.peak_inuse_bytes));
    }
    Ok(())
}

mod support;

fn main() {
    let mut r = support::Runner::new();
    r.check_ok(
        "peak_before_a_measure_is_kept",
        peak_before_a_measure_is_kept,
    );
    r.check_ok(
        "peak_inside_a_measure_is_global",
        peak_inside_a_measure_is_global,
    );
    r.finish();
}
