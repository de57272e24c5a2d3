//! A minimal runner for `harness = false` test binaries, which need the process to themselves:
//! the default harness runs tests on several threads, which would break exact global counters.
#![allow(dead_code)]

/// Runs each test in turn on the main thread, prints libtest-style lines, exits 1 on failure.
pub fn run(tests: &[(&str, fn())]) {
    let mut failed = 0;
    for (name, f) in tests {
        let r = std::panic::catch_unwind(f);
        match r {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    println!("{} passed, {} failed", tests.len() - failed, failed);
    if failed > 0 {
        std::process::exit(1);
    }
}

/// Sum of the four estimates over the sites whose stack contains a function named like `needle`.
pub fn site_totals(p: &heapsight::HeapProfile, needle: &str) -> [f64; 5] {
    let mut t = [0f64; 5];
    for s in p.sites() {
        if s.frames()
            .iter()
            .any(|f| f.symbols.iter().any(|sym| sym.function.contains(needle)))
        {
            t[0] += s.alloc_objects as f64;
            t[1] += s.alloc_bytes as f64;
            t[2] += s.inuse_objects as f64;
            t[3] += s.inuse_bytes as f64;
            t[4] += s.samples as f64;
        }
    }
    t
}

/// Whether an outside tool is on PATH. When it is not, says so loudly and returns false so the
/// test can skip; under CI (`CI` set) a missing tool is a failure, since `.ci/run` installs it.
pub fn have_tool(tool: &str) -> bool {
    let found = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("{tool} is not installed, and CI must run every test (.ci/run installs it)");
        }
        eprintln!("SKIPPED: {tool} not installed; this test did not run");
    }
    found
}
