//! Shared by the `harness = false` test binaries. Each such binary is its own process with its
//! own `#[global_allocator]`, so the global counters see only that scenario, and it runs without
//! libtest so that no harness thread allocates during the quiet windows in which exact counters
//! are compared. Here: the runner, a watchdog that turns a hang into a loud failure, exact-counter
//! helpers, outside-tool checks and workload helpers.
#![allow(dead_code)]

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

/// Runs checks in order, printing libtest-style `test NAME ... ok|FAILED` lines and a closing
/// `N passed, M failed` line; [`Runner::finish`] exits non-zero if any failed. A check fails by
/// panicking or by returning `Err`. A substring filter may be given as the first non-flag argument
/// (`cargo test --test NAME -- FILTER`).
pub struct Runner {
    passed: usize,
    failed: usize,
    filter: Option<String>,
}

impl Runner {
    pub fn new() -> Self {
        let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
        Runner {
            passed: 0,
            failed: 0,
            filter,
        }
    }

    /// Runs `f` unless filtered out; a panic is a failure.
    pub fn check(&mut self, name: &str, f: impl FnOnce()) {
        self.check_ok(name, || {
            f();
            Ok(())
        })
    }

    /// Runs `f` unless filtered out; a panic or an `Err` is a failure.
    pub fn check_ok(&mut self, name: &str, f: impl FnOnce() -> Result<(), String>) {
        if self.filter.as_deref().is_some_and(|p| !name.contains(p)) {
            return;
        }
        print!("test {name} ... ");
        let _ = std::io::stdout().flush();
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(Ok(())) => {
                println!("ok");
                self.passed += 1;
            }
            Ok(Err(e)) => {
                println!("FAILED\n{e}");
                self.failed += 1;
            }
            Err(_) => {
                println!("FAILED (panicked, see above)");
                self.failed += 1;
            }
        }
    }

    /// Prints the closing line; exits with status 1 if a check failed.
    pub fn finish(self) {
        println!("\n{} passed, {} failed", self.passed, self.failed);
        if self.failed > 0 {
            std::process::exit(1);
        }
    }
}

/// Runs `tests` in order with a [`Runner`].
pub fn run(tests: &[(&str, fn())]) {
    let mut r = Runner::new();
    for (name, f) in tests {
        r.check(name, f);
    }
    r.finish();
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

/// Aborts the process with a message if it is still running after `secs` seconds. This is a hang
/// detector, not a timing assertion: the bound is many times the expected run time, and hitting
/// it means a deadlock (or a livelock), which would otherwise hang CI silently.
///
/// Returns once the watchdog thread is running, so that its start-up allocations do not land in
/// a caller's quiet window.
///
/// Debug builds get three times the bound: the suite is sized for `cargo test --release`, and an
/// unoptimized build runs the same work several times slower.
pub fn watchdog(secs: u64, what: &'static str) {
    let secs = if cfg!(debug_assertions) {
        3 * secs
    } else {
        secs
    };
    static STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            STARTED.store(true, std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(Duration::from_secs(secs));
            let msg = format!("\nWATCHDOG: {what} still running after {secs} s: deadlock?\n");
            // SAFETY: writes initialised bytes of `msg` to stderr.
            unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
            // Where every thread is stuck, for the log (gdb attaches to this process; skipped
            // if gdb is not installed or not permitted).
            let _ = std::process::Command::new("gdb")
                .args(["-batch", "-nx", "-ex", "thread apply all bt", "-p"])
                .arg(std::process::id().to_string())
                .stdout(std::process::Stdio::inherit())
                .stderr(std::process::Stdio::inherit())
                .status();
            std::process::abort();
        })
        .expect("spawn watchdog");
    while !STARTED.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::yield_now();
    }
}

/// The exact counters that must return to a baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exact {
    pub alloc_objects: u64,
    pub alloc_bytes: u64,
    pub free_objects: u64,
    pub free_bytes: u64,
    pub inuse_objects: u64,
    pub inuse_bytes: u64,
}

/// Reads the exact counters, checking `inuse = alloc - free` on the way.
pub fn exact() -> Exact {
    let s = heapsight::stats();
    assert_eq!(s.inuse_objects, s.alloc_objects - s.free_objects, "{s:?}");
    assert_eq!(s.inuse_bytes, s.alloc_bytes - s.free_bytes, "{s:?}");
    Exact {
        alloc_objects: s.alloc_objects,
        alloc_bytes: s.alloc_bytes,
        free_objects: s.free_objects,
        free_bytes: s.free_bytes,
        inuse_objects: s.inuse_objects,
        inuse_bytes: s.inuse_bytes,
    }
}

/// Asserts that live objects and bytes are back at `base` exactly, and that everything allocated
/// since was freed (alloc and free grew by the same amounts). `what` is only formatted on failure
/// (pass `format_args!`, not a `String`, which would itself be live during the check).
pub fn assert_back_to(base: Exact, what: impl std::fmt::Display) {
    let now = exact();
    assert_eq!(
        (now.inuse_objects, now.inuse_bytes),
        (base.inuse_objects, base.inuse_bytes),
        "{what}: in-use drifted from the baseline\nbase {base:?}\nnow  {now:?}"
    );
    assert_eq!(
        now.alloc_objects - base.alloc_objects,
        now.free_objects - base.free_objects,
        "{what}: objects allocated and freed since the baseline differ"
    );
    assert_eq!(
        now.alloc_bytes - base.alloc_bytes,
        now.free_bytes - base.free_bytes,
        "{what}: bytes allocated and freed since the baseline differ"
    );
}

/// Whether any frame of `site` is in a function whose name contains `needle`.
pub fn site_has(site: &heapsight::Site, needle: &str) -> bool {
    site.frames()
        .iter()
        .any(|f| f.symbols.iter().any(|s| s.function.contains(needle)))
}

/// Asserts that no site with a frame in a function named like `needle` has anything in use, and
/// returns how many such sites there are (so callers can check the workload was seen at all).
pub fn assert_sites_freed(p: &heapsight::HeapProfile, needle: &str) -> usize {
    let mut n = 0;
    for s in p.sites().iter().filter(|s| site_has(s, needle)) {
        n += 1;
        assert_eq!(
            (s.inuse_objects, s.inuse_bytes),
            (0, 0),
            "site in {needle} still shows live memory after everything was freed: {s:?}"
        );
    }
    n
}

/// xorshift64: the workloads' own deterministic generator (no allocation, no shared state).
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Re-runs this test binary as a child process with `env` added, so that the variables are in
/// place before the first allocation (heapsight reads them once, at start-up). Returns the
/// child's exit status and captured output.
pub fn rerun_with_env(env: &[(&str, &std::ffi::OsStr)], remove: &[&str]) -> std::process::Output {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = std::process::Command::new(exe);
    for k in remove {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run child")
}

/// Calls `f` at the end of a call chain of `levels` frames that goes through `path_left` or
/// `path_right` at each level as the bits of `bits` say: `2^levels` distinct stacks (distinct
/// return addresses at every level), to fill the site table.
pub fn on_distinct_stack(bits: u64, levels: u32, f: &mut dyn FnMut()) {
    if levels == 0 {
        f()
    } else if bits & 1 == 0 {
        path_left(bits >> 1, levels - 1, f)
    } else {
        path_right(bits >> 1, levels - 1, f)
    }
}

#[inline(never)]
fn path_left(bits: u64, levels: u32, f: &mut dyn FnMut()) {
    on_distinct_stack(bits, levels, f);
    // Not a tail call: this frame stays on the stack.
    std::hint::black_box(bits);
}

#[inline(never)]
fn path_right(bits: u64, levels: u32, f: &mut dyn FnMut()) {
    on_distinct_stack(bits, levels, f);
    std::hint::black_box(levels);
}

/// A directory under the system's temporary directory, removed with everything in it when
/// dropped (also when the test panics): nothing a test writes outlives it.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// Creates `<tmp>/heapsight-<what>-<pid>-<n>`.
    pub fn new(what: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("heapsight-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Headless Chromium as the page tests run it. Its profile (`--user-data-dir`) and screenshots
/// live in a temporary directory removed on drop, pass or fail. (Check [`have_tool`]`("chromium")`
/// first.)
pub struct Chromium {
    dir: TempDir,
}

impl Chromium {
    pub fn new() -> Chromium {
        Chromium {
            dir: TempDir::new("chromium"),
        }
    }

    fn command(&self) -> std::process::Command {
        let mut c = std::process::Command::new("chromium");
        c.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!(
            "--user-data-dir={}",
            self.dir.join("profile").display()
        ));
        c
    }

    /// The page's DOM after load (`--dump-dom`).
    pub fn dom(&self, url: &str) -> String {
        let out = self
            .command()
            .arg("--dump-dom")
            .arg(url)
            .output()
            .expect("run chromium");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A PNG screenshot of the page in a window of `width` x `height`; fails the test, with
    /// Chromium's standard error, if none was written.
    pub fn screenshot(&self, url: &str, width: u32, height: u32) -> std::path::PathBuf {
        let shot = self.dir.join("page.png");
        let out = self
            .command()
            .arg(format!("--screenshot={}", shot.display()))
            .arg(format!("--window-size={width},{height}"))
            .arg(url)
            .output()
            .expect("run chromium");
        assert!(
            shot.exists(),
            "no screenshot: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        shot
    }
}

/// Runs `go tool pprof ARGS...` and returns its standard output; fails the test, with pprof's
/// standard error, if pprof fails. (Check [`have_tool`]`("go")` first.) pprof saves every
/// profile it fetches by URL into `PPROF_TMPDIR` (default `~/pprof`): here that is a temporary
/// directory removed afterwards.
pub fn go_pprof<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let tmp = TempDir::new("pprof-tmp");
    let out = std::process::Command::new("go")
        .args(["tool", "pprof"])
        .args(args)
        .env("PPROF_TMPDIR", tmp.path())
        .output()
        .expect("run go tool pprof");
    assert!(
        out.status.success(),
        "go tool pprof {:?}: {}",
        args.iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The status code of a plain `GET path` against a server on `addr` (a real client, no mocks).
pub fn get_status(addr: std::net::SocketAddr, path: &str) -> u16 {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let head = String::from_utf8_lossy(&raw);
    head.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0)
}
