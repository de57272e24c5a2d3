//! The workload of `examples/service.rs`, also the state `examples/dump_cost.rs` measures dumps
//! against: string-vector indexes that grow by doubling, rebuilt every round, the newest three
//! kept (about 33 MB of heap).
#![allow(dead_code)] // each example uses part of it

use std::collections::HashMap;

/// One index: 10,000 keys, 200,000 values.
fn build_index(round: usize) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    for i in 0..200_000 {
        m.entry(format!("k{}", i % 10_000))
            .or_default()
            .push(format!("v{round}-{i}"));
    }
    m
}

/// The indexes kept alive.
#[derive(Default)]
pub struct Indexes {
    kept: Vec<HashMap<String, Vec<String>>>,
    rounds: usize,
}

impl Indexes {
    /// Builds the next index and drops the oldest beyond three.
    pub fn round(&mut self) {
        self.kept.push(build_index(self.rounds));
        if self.kept.len() > 3 {
            self.kept.remove(0);
        }
        self.rounds += 1;
    }

    /// Rounds run so far.
    pub fn rounds(&self) -> usize {
        self.rounds
    }
}
