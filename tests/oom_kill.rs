//! A profile on disk before the OOM kill, against a real memory limit: this test makes its own
//! memory cgroup as a child of the group it runs in (`/proc/self/cgroup`), named with its pid,
//! with a 256 MiB limit, and re-runs itself in it:
//!
//! * `leak`: leaks 32 MiB/s (so the kill comes in ~8 s) with the dump triggers on
//!   (`HEAPSIGHT_DUMP_AT=50%,70%,85%`, a step of 32 MiB) until the kernel kills it. The test
//!   checks the kill (SIGKILL, the group's `oom_kill` count), that profiles were written before
//!   it, and that `go tool pprof -top` on the last one names the leaking function.
//! * `steady`: holds ~50% of the limit and churns for 3 s with `HEAPSIGHT_DUMP_AT=80%,90%`: no
//!   dump may be written. It also checks its own `heapsight::memory()` table: the container's
//!   limit is the 256 MiB set here, heap in use equals the exact counters, and the classes add
//!   up to RSS within 2%.
//!
//! The group is removed afterwards, also when a check fails, after its processes have exited. A
//! machine where the group cannot be made (not root, no memory controller) skips loudly, and fails
//! under `CI`. The allocator is `System` (glibc): the memory table's allocator row reads it.
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use heapsight::HeapSight;

mod support;

#[global_allocator]
static GLOBAL: HeapSight = HeapSight::system();

const LIMIT: u64 = 256 << 20;
const ROLE: &str = "HEAPSIGHT_OOM_TEST_ROLE";

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("leak") => return leaker(),
        Ok("steady") => return steady(),
        _ => {}
    }
    support::watchdog(120, "oom_kill");
    support::run(&[
        ("leak_is_killed_after_profiles_name_it", leak_is_killed),
        (
            "steady_service_at_half_the_limit_triggers_nothing",
            steady_triggers_nothing,
        ),
    ]);
}

// ---------------------------------------------------------------------------------------------
// The children.

/// Waits for the parent's byte on stdin: it has moved this process into the test group.
fn wait_for_go() {
    let mut b = [0u8; 1];
    std::io::stdin().read_exact(&mut b).expect("go byte");
}

/// One MiB leaked, written so it is resident. Not inlined: the profiles must name it.
#[inline(never)]
fn leak_step(kept: &mut Vec<Vec<u8>>) {
    kept.push(vec![0x5a; 1 << 20]);
}

fn leaker() {
    wait_for_go();
    assert!(heapsight::start_dump_triggers_from_env().unwrap());
    let mut kept = Vec::new();
    loop {
        leak_step(&mut kept);
        std::thread::sleep(Duration::from_millis(31));
    }
}

#[inline(never)]
fn steady_block() -> Vec<u8> {
    vec![0x33; 1 << 20]
}

fn steady() {
    wait_for_go();
    assert!(heapsight::start_dump_triggers_from_env().unwrap());
    // ~50% of the limit: 120 blocks of 1 MiB, plus the binary and the runtime.
    let mut held: Vec<Vec<u8>> = (0..120).map(|_| steady_block()).collect();
    let mut rng = support::Rng(7);
    let end = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < end {
        let i = rng.below(held.len() as u64) as usize;
        held[i] = steady_block();
        std::thread::sleep(Duration::from_millis(2));
    }
    let m = heapsight::memory();
    let s = heapsight::stats();
    println!("{m}");
    assert_eq!(m.heap_inuse_bytes, s.inuse_bytes, "quiet process: exact");
    let c = m.container.as_ref().expect("container");
    assert_eq!(c.limit_bytes, Some(LIMIT), "{c:?}");
    let rss = m.process.as_ref().unwrap().rss_bytes;
    let un = m.unexplained_bytes().unwrap();
    assert!(
        un.unsigned_abs() * 50 <= rss,
        "the classes add up to RSS within 2%: unexplained {un} of {rss}\n{m}"
    );
    std::hint::black_box(&held);
}

// ---------------------------------------------------------------------------------------------
// The parent: a cgroup of its own.

/// A child memory cgroup of this process's, removed on drop after its processes are gone.
struct Group {
    dir: PathBuf,
    version: u8,
    child: Option<Child>,
}

impl Group {
    /// Makes `<own group>/heapsight-oom-test-<pid>-<what>` with the limit, or says why not.
    fn new(what: &str) -> Result<Group, String> {
        let (version, own) = heapsight::memory_cgroup().ok_or("no memory cgroup")?;
        let dir = own.join(format!("heapsight-oom-test-{}-{what}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let g = Group {
            dir,
            version,
            child: None,
        };
        let limit = LIMIT.to_string();
        if version == 1 {
            g.write("memory.limit_in_bytes", &limit)?;
            // With swap, the limit of memory plus swap too, so the kernel kills instead of swapping.
            if g.dir.join("memory.memsw.limit_in_bytes").exists() {
                g.write("memory.memsw.limit_in_bytes", &limit)?;
            }
        } else {
            g.write("memory.max", &limit)?;
            if g.dir.join("memory.swap.max").exists() {
                g.write("memory.swap.max", "0")?;
            }
        }
        Ok(g)
    }

    fn write(&self, file: &str, value: &str) -> Result<(), String> {
        std::fs::write(self.dir.join(file), value)
            .map_err(|e| format!("write {value} to {}: {e}", self.dir.join(file).display()))
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }

    /// Runs this test binary in the group with `role` and `env`; the child starts its work only
    /// once it is in the group.
    fn spawn(&mut self, role: &str, env: &[(&str, &Path)], vars: &[(&str, &str)]) -> &mut Child {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.env(ROLE, role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn the child");
        self.write("cgroup.procs", &child.id().to_string())
            .expect("move the child into the group");
        child.stdin.take().unwrap().write_all(b"g").unwrap();
        self.child = Some(child);
        self.child.as_mut().unwrap()
    }

    fn oom_kills(&self) -> u64 {
        let (file, key) = if self.version == 1 {
            ("memory.oom_control", "oom_kill ")
        } else {
            ("memory.events", "oom_kill ")
        };
        self.read(file)
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The group can be removed once no process is in it; the kernel may take a moment to
        // let go of an exited one.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("could not remove {}", self.dir.display());
    }
}

/// The group, or a loud skip (a failure under `CI`).
fn group_or_skip(what: &str) -> Option<Group> {
    match Group::new(what) {
        Ok(g) => Some(g),
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "cannot make a memory cgroup under CI: {e}"
            );
            eprintln!("SKIPPED: cannot make a memory cgroup ({e}); this test did not run");
            None
        }
    }
}

fn dumps(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().is_some_and(|s| s.ends_with(ext)))
        .collect();
    v.sort();
    v
}

fn output(c: Child) -> (std::process::ExitStatus, String, String) {
    let o = c.wait_with_output().unwrap();
    (
        o.status,
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn leak_is_killed() {
    if !support::have_tool("go") {
        return;
    }
    let Some(mut g) = group_or_skip("leak") else {
        return;
    };
    let dir = support::TempDir::new("oom-leak");
    g.spawn(
        "leak",
        &[("HEAPSIGHT_DUMP_DIR", dir.path())],
        &[
            ("HEAPSIGHT_DUMP_AT", "50%,70%,85%"),
            ("HEAPSIGHT_DUMP_STEP", "32MiB"),
            ("HEAPSIGHT_DUMP_MIN_INTERVAL", "1"),
            ("HEAPSIGHT_DUMP_POLL", "50ms"),
            ("HEAPSIGHT_DUMP_KEEP", "4"),
        ],
    );
    let (status, _, err) = output(g.child.take().unwrap());
    eprintln!("{err}");
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "killed by the kernel: {status:?}"
    );
    assert!(
        g.oom_kills() >= 1,
        "the group's OOM kill count: {}",
        g.read("memory.oom_control")
    );
    let pbs = dumps(dir.path(), ".pb.gz");
    let txts = dumps(dir.path(), ".txt");
    // Rotation kept the last 4 of the ~8 written (5 steps of 32 MiB and 3 levels, some at once).
    assert_eq!(pbs.len(), 4, "{pbs:?}\n{err}");
    assert_eq!(txts.len(), 4, "{txts:?}");
    let last = pbs.last().unwrap();
    let top = support::go_pprof(&[
        "-top".as_ref(),
        "-sample_index=inuse_space".as_ref(),
        last.as_os_str(),
    ]);
    println!("{}", top.lines().take(12).collect::<Vec<_>>().join("\n"));
    assert!(
        top.contains("oom_kill::leak_step"),
        "the last profile names the leak:\n{top}"
    );
    let table = std::fs::read_to_string(txts.last().unwrap()).unwrap();
    assert!(table.contains("of limit 256.00 MiB"), "{table}");
    assert!(table.contains("heap in use (exact)"), "{table}");
    // The last dump was the 85% level or a later step: the kill came after it.
    let comments = support::go_pprof(&["-comments".as_ref(), last.as_os_str()]);
    assert!(
        comments.contains("container (cgroup v"),
        "the table as pprof comments:\n{comments}"
    );
}

fn steady_triggers_nothing() {
    let Some(mut g) = group_or_skip("steady") else {
        return;
    };
    let dir = support::TempDir::new("oom-steady");
    g.spawn(
        "steady",
        &[("HEAPSIGHT_DUMP_DIR", dir.path())],
        &[
            ("HEAPSIGHT_DUMP_AT", "80%,90%"),
            ("HEAPSIGHT_DUMP_MIN_INTERVAL", "100ms"),
            ("HEAPSIGHT_DUMP_POLL", "20ms"),
        ],
    );
    let (status, out, err) = output(g.child.take().unwrap());
    println!("{out}");
    assert!(status.success(), "{status:?}\n{out}\n{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(
        left.is_empty(),
        "no dump at 50% of the limit: {left:?}\n{err}"
    );
}
