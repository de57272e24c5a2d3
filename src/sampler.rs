//! The sampling decision: a Poisson process over allocated bytes, and the weight of a sample.
//!
//! Pure arithmetic (no allocation) and one shared setting, the rate. The hook keeps, per thread,
//! a countdown of bytes until the next sample; an allocation of `size` bytes is sampled when the
//! countdown falls inside it (`countdown <= size`), after which a fresh gap is drawn with no
//! carry-over.
//!
//! # Why exponential gaps
//!
//! We want every allocated *byte* to be picked independently with a small probability `1/rate`,
//! so that an allocation of `S` bytes is sampled with probability `1 - (1 - 1/rate)^S`
//! ≈ `1 - exp(-S/rate)`, whatever came before it. The gaps between picked bytes of such a process
//! are exponentially distributed with mean `rate`, and the exponential is memoryless: after an
//! unsampled allocation of `S` bytes, the remaining countdown is again exponential with mean `rate`.
//! So drawing a gap `G ~ Exp(rate)` and subtracting allocation sizes until `G` falls inside one
//! samples allocation `i` with probability `p(S_i) = 1 - exp(-S_i/rate)`, independently of the
//! others. This is Go's `nextSample` (runtime/malloc.go) and tcmalloc's `Sampler`.
//!
//! We draw `G` by inversion: if `U` is uniform on (0, 1], `-ln(U) * rate` is `Exp(rate)`. Like
//! Go's `fastexprand` we use 26 random bits, `U = q / 2^26` with `q` uniform in `[1, 2^26]`,
//! which bounds the largest gap to `26 * ln 2 * rate` ≈ 18 × rate. We add 1 so a gap is never
//! 0: the countdown then samples `size` iff `floor(G) + 1 <= size` iff `G < size`, whose probability
//! is exactly `1 - exp(-size/rate)`.
//!
//! # Why per-sample weights
//!
//! An allocation sampled with probability `p` stands for `1/p` allocations (Horvitz–Thompson):
//! summing `1/p(S)` over samples is an unbiased estimate of the allocation count, and `S/p(S)` of
//! the bytes. The weight depends on the size, so it must be applied per sample (or per group of
//! equal sizes) *before* summing: unbiasing an aggregate with its average size is biased whenever
//! sizes differ. It also depends on the rate the countdown was drawn with, which is why the hook
//! remembers that rate and why the site table keys samples by `(stack, size, rate)`.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Go's default `MemProfileRate`: one sample per 512 KiB allocated, on average.
pub const DEFAULT_RATE: u64 = 512 * 1024;

/// The process's sample rate. Threads read it when they draw a countdown, so a change reaches
/// every thread within about one countdown of the old rate (1 MiB if it was 0).
static RATE: AtomicU64 = AtomicU64::new(DEFAULT_RATE);

pub(crate) fn rate() -> u64 {
    RATE.load(Relaxed)
}

pub(crate) fn store_rate(rate: u64) {
    RATE.store(rate, Relaxed)
}

/// The countdown used at rate 0 (sampling off): no sample is taken when it fires, but the thread
/// flushes its counts and picks up a changed rate (see `counters`).
pub(crate) const OFF_INTERVAL: u64 = 1 << 20;

/// Largest mean gap we draw with, so `18 × mean` stays far from `u64` overflow.
const MAX_MEAN: u64 = 1 << 56;

/// xorshift64*: a fast, statistically adequate generator for sampling gaps (not for secrets).
#[inline]
pub(crate) fn next_u64(state: &mut u64) -> u64 {
    let mut x = *state;
    if x == 0 {
        x = 0x9E37_79B9_7F4A_7C15;
    }
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// SplitMix64 finaliser: spreads a seed (thread number, time) into a well-mixed state.
pub(crate) fn mix_seed(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    let z = z ^ (z >> 31);
    if z == 0 {
        1
    } else {
        z
    }
}

/// Bytes until the next sample for a thread sampling at `rate` (see the module docs).
/// Rate 1 samples every allocation; rate 0 returns [`OFF_INTERVAL`].
pub(crate) fn next_gap(rng: &mut u64, rate: u64) -> u64 {
    match rate {
        0 => OFF_INTERVAL,
        1 => 1,
        _ => {
            let mean = rate.min(MAX_MEAN) as f64;
            // q uniform in [1, 2^26]: the top 26 bits of the generator, plus one.
            let q = (next_u64(rng) >> 38) + 1;
            let u = q as f64 / (1u64 << 26) as f64;
            (-u.ln() * mean) as u64 + 1
        }
    }
}

/// Probability that an allocation of `size` bytes is sampled at `rate`.
pub(crate) fn probability(size: u64, rate: u64) -> f64 {
    if rate <= 1 {
        return 1.0;
    }
    // -expm1(-x) = 1 - e^-x without cancellation for small x (size << rate).
    -(-(size as f64) / rate as f64).exp_m1()
}

/// How many allocations one sample of `size` bytes taken at `rate` stands for: `1 / p`.
/// Exactly 1 at rate 1 (Go does not scale rate-1 profiles either). Size 0 allocations are only
/// ever sampled at rate 1 or when a countdown is fresh; they get weight 1.
pub(crate) fn weight(size: u64, rate: u64) -> f64 {
    let p = probability(size, rate);
    if p <= 0.0 {
        1.0
    } else {
        1.0 / p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_exponential_with_the_rate_as_mean() {
        // Mean and the fraction above the mean of 200k draws, against Exp(rate): mean has
        // sd = rate / sqrt(n); P(G > rate) = e^-1 has sd = sqrt(p(1-p)/n). Bounds at 5 sd.
        let mut rng = mix_seed(7);
        let rate = 512 * 1024;
        let n = 200_000;
        let (mut sum, mut above) = (0f64, 0u32);
        for _ in 0..n {
            let g = next_gap(&mut rng, rate);
            assert!(g >= 1);
            sum += g as f64;
            above += (g > rate) as u32;
        }
        let mean = sum / n as f64;
        let sd = rate as f64 / (n as f64).sqrt();
        assert!((mean - rate as f64).abs() < 5.0 * sd, "mean {mean}");
        let p = (-1f64).exp();
        let frac = above as f64 / n as f64;
        assert!(
            (frac - p).abs() < 5.0 * (p * (1.0 - p) / n as f64).sqrt(),
            "frac {frac}"
        );
    }

    #[test]
    fn rate_one_and_zero() {
        let mut rng = 1;
        assert_eq!(next_gap(&mut rng, 1), 1);
        assert_eq!(next_gap(&mut rng, 0), OFF_INTERVAL);
        assert_eq!(weight(8, 1), 1.0);
        assert_eq!(weight(0, 1), 1.0);
    }

    #[test]
    fn weight_matches_go_scale_heap_sample() {
        // Go: scale = 1 / (1 - exp(-avg/rate)).
        for (size, rate) in [
            (16u64, 524288u64),
            (4096, 524288),
            (1 << 20, 524288),
            (10, 100),
        ] {
            let go = 1.0 / (1.0 - (-(size as f64) / rate as f64).exp());
            assert!((weight(size, rate) - go).abs() / go < 1e-9, "{size} {rate}");
        }
    }

    #[test]
    fn countdown_samples_each_size_with_probability_p() {
        // Simulate the hook's countdown over a stream of one size and compare the sampled
        // fraction with p(size) = 1 - exp(-size/rate). Binomial sd = sqrt(p(1-p)/n); 5 sd bound.
        for size in [64u64, 4096, 100_000] {
            let rate = 65536;
            let mut rng = mix_seed(size);
            let mut countdown = next_gap(&mut rng, rate);
            let n = 400_000u64;
            let mut hits = 0u64;
            for _ in 0..n {
                if countdown <= size {
                    hits += 1;
                    countdown = next_gap(&mut rng, rate);
                } else {
                    countdown -= size;
                }
            }
            let p = probability(size, rate);
            let frac = hits as f64 / n as f64;
            let sd = (p * (1.0 - p) / n as f64).sqrt();
            assert!(
                (frac - p).abs() < 5.0 * sd + 1e-9,
                "size {size}: {frac} vs {p}"
            );
        }
    }
}
