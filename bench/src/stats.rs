//! Latency samples and their percentiles, and the pseudo-random choices of the
//! workloads (seeded, so every run asks the same questions).

use std::time::Duration;

/// The latencies of a workload's timed calls.
#[derive(Debug, Default)]
pub struct Latencies {
    samples: Vec<Duration>,
}

impl Latencies {
    pub fn push(&mut self, sample: Duration) {
        self.samples.push(sample);
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// The `q` quantile (0 to 1) in milliseconds, nearest rank.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let mut sorted = self.samples.clone();
        sorted.sort_unstable();
        let last = sorted.len().checked_sub(1)?;
        let rank = ((q * sorted.len() as f64).ceil() as usize)
            .saturating_sub(1)
            .min(last);
        Some(millis(sorted[rank]))
    }

    /// The time all samples took together.
    pub fn total(&self) -> Duration {
        self.samples.iter().sum()
    }

    pub fn max_ms(&self) -> Option<f64> {
        self.samples.iter().max().copied().map(millis)
    }

    pub fn mean_ms(&self) -> Option<f64> {
        let total: Duration = self.samples.iter().sum();
        (!self.samples.is_empty()).then(|| millis(total) / self.samples.len() as f64)
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000.0
}

/// SplitMix64: small, fast and good enough to pick tasks and steps.
pub struct Rng(u64);

impl Rng {
    pub fn seeded(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniformly chosen element of a non-empty slice.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next_u64() % items.len() as u64) as usize]
    }

    /// `count` distinct elements (all of them when there are fewer).
    pub fn sample<T: Copy>(&mut self, items: &[T], count: usize) -> Vec<T> {
        let mut pool = items.to_vec();
        let count = count.min(pool.len());
        for i in 0..count {
            let j = i + (self.next_u64() % (pool.len() - i) as u64) as usize;
            pool.swap(i, j);
        }
        pool.truncate(count);
        pool
    }
}
