//! `measure()` resets the thread's peak tracking (`high_water`) for its own scope; the
//! process-wide `Stats::peak_inuse_bytes` must not lose a peak that only `high_water` knew.
//! Needs a quiet process for exact global counters: no harness, one thread.
use std::hint::black_box;

#[global_allocator]
static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();

/// A peak reached on this thread between two resyncs is only in its `high_water`; a measure
/// starting afterwards must fold it into the global peak before resetting it.
fn peak_before_a_measure_is_kept() -> Result<(), String> {
    // Rate 0: the countdown (and with it the resync) comes only every 1 MiB, so the 512 KiB
    // block below is allocated and freed with no resync in between.
    heapsight::set_sample_rate(0);
    let s0 = heapsight::stats(); // resyncs this thread: high_water = own net now
    let block = black_box(vec![0u8; 512 * 1024]);
    drop(block);
    let ((), u) = heapsight::measure(|| ());
    let s1 = heapsight::stats();
    let want = s0.inuse_bytes + 512 * 1024;
    if s1.peak_inuse_bytes < want {
        return Err(format!(
            "peak {} < in-use before {} + 512 KiB = {want}",
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
