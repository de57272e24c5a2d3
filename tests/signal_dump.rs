//! SIGUSR2 dumps and HEAPSIGHT_DUMP_ON_EXIT, read back with `go tool pprof`.
use std::process::Command;
use std::time::{Duration, Instant};

use heapsight::HeapSight;

#[global_allocator]
static GLOBAL: HeapSight = HeapSight::system();

mod support;

#[inline(never)]
fn signal_test_keeps_blocks() -> Vec<Vec<u8>> {
    (0..1000).map(|i| vec![i as u8; 8192]).collect()
}

fn check_with_go(path: &std::path::Path, needle: &str) {
    if !support::have_tool("go") {
        return;
    }
    let top = support::go_pprof(&["-top", path.to_str().unwrap()]);
    assert!(top.contains(needle), "{top}");
}

/// This process's open descriptors, from /proc/self/fd (the read_dir's own is the same each time).
fn open_fds() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn dump_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter(|e| {
            let comm = e.as_ref().unwrap().path().join("comm");
            std::fs::read_to_string(comm).is_ok_and(|c| c.trim() == "heapsight-dump")
        })
        .count()
}

/// Runs first: a refused signal leaves no thread, no descriptor and no handler behind, and a
/// later install works.
fn failed_install_leaves_nothing_behind() {
    let fds = open_fds();
    for sig in [libc::SIGKILL, libc::SIGSTOP, 100_000] {
        match heapsight::install_dump_signal(sig) {
            Err(heapsight::DumpSignalError::Signal(e)) => {
                assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{sig}: {e}");
                let io: std::io::Error = heapsight::DumpSignalError::Signal(e).into();
                assert!(io.to_string().contains("signal handler"), "{io}");
            }
            other => panic!("install_dump_signal({sig}): {other:?}"),
        }
        // The thread was joined before the error returned: its task is gone or going. Wait
        // for the kernel to reap it (a hang detector, not a timing assertion).
        let start = Instant::now();
        while dump_threads() != 0 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "dump thread left"
            );
            std::thread::yield_now();
        }
        assert_eq!(
            open_fds(),
            fds,
            "descriptors left behind by install_dump_signal({sig})"
        );
    }
}

fn sigusr2_writes_both_files() {
    let dir = std::env::temp_dir().join(format!("heapsight-sig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Read by the dump thread when the signal arrives; no other thread reads the environment now.
    std::env::set_var("HEAPSIGHT_DUMP_DIR", &dir);
    let keep = signal_test_keeps_blocks();
    heapsight::install_dump_signal(libc::SIGUSR2).unwrap();
    assert!(
        matches!(
            heapsight::install_dump_signal(libc::SIGUSR2),
            Err(heapsight::DumpSignalError::AlreadyInstalled)
        ),
        "second install refused"
    );
    // SAFETY: raise(3) on our own process; the handler only writes to a pipe.
    assert_eq!(unsafe { libc::raise(libc::SIGUSR2) }, 0);
    let pb = dir.join(format!("heapsight-{}-0.pb.gz", std::process::id()));
    let txt = dir.join(format!("heapsight-{}-0.txt", std::process::id()));
    // Wait for the background thread (a hang detector, not a timing assertion).
    let start = Instant::now();
    while !(pb.exists() && txt.exists()) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no dump after 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&txt).unwrap();
    assert!(
        text.starts_with("heap profile: "),
        "{}",
        &text[..text.len().min(200)]
    );
    assert!(text.contains("signal_test_keeps_blocks"));
    check_with_go(&pb, "signal_test_keeps_blocks");
    drop(keep);
    let _ = std::fs::remove_dir_all(dir);
}

fn dump_on_exit() {
    let path = std::env::temp_dir().join(format!("heapsight-exit-{}.pb.gz", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let out = Command::new(std::env::current_exe().unwrap())
        .env("HEAPSIGHT_TEST_CHILD", "exit")
        .env("HEAPSIGHT_DUMP_ON_EXIT", &path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("heapsight: wrote heap profile to"),
        "{stderr}"
    );
    assert!(path.exists(), "no profile at exit");
    check_with_go(&path, "signal_test_keeps_blocks");
    let _ = std::fs::remove_file(path);
}

/// `HEAPSIGHT_DUMP_ON_EXIT` at a symlink, a dangling symlink, a FIFO, a directory and a device
/// node: each is refused with one stderr line and left exactly as it was; nothing else is
/// written into the directory.
fn dump_on_exit_refuses_non_regular_targets() {
    use std::os::unix::fs::{symlink, FileTypeExt};
    let dir = support::TempDir::new("exit-targets");
    let victim = dir.join("victim");
    std::fs::write(&victim, b"keep").unwrap();
    symlink(&victim, dir.join("link")).unwrap();
    symlink(dir.join("nowhere"), dir.join("dangling")).unwrap();
    std::fs::create_dir(dir.join("subdir")).unwrap();
    let mk = |name: &str, mode: libc::mode_t, dev: libc::dev_t| {
        let c =
            std::ffi::CString::new(dir.join(name).into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        unsafe { libc::mknod(c.as_ptr(), mode | 0o600, dev) }
    };
    assert_eq!(mk("fifo", libc::S_IFIFO, 0), 0);
    // /dev/null's numbers (1, 3); only root may make one, so without it this target is skipped.
    let device = mk("null", libc::S_IFCHR, libc::makedev(1, 3)) == 0;
    let before: Vec<_> = names(dir.path());
    let mut targets = vec!["link", "dangling", "fifo", "subdir"];
    if device {
        targets.push("null");
    } else {
        eprintln!("SKIPPED: the device-node target (mknod needs root)");
    }
    for name in targets {
        let path = dir.join(name);
        let kind = std::fs::symlink_metadata(&path).unwrap().file_type();
        let out = Command::new(std::env::current_exe().unwrap())
            .env("HEAPSIGHT_TEST_CHILD", "exit")
            .env("HEAPSIGHT_DUMP_ON_EXIT", &path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("heapsight")).collect();
        assert_eq!(lines.len(), 1, "{name}: {stderr}");
        assert!(
            lines[0].contains("refusing to replace it"),
            "{name}: {stderr}"
        );
        assert!(!stderr.contains("wrote heap profile"), "{name}: {stderr}");
        let after = std::fs::symlink_metadata(&path).unwrap().file_type();
        assert_eq!(
            (
                after.is_symlink(),
                after.is_fifo(),
                after.is_dir(),
                after.is_char_device()
            ),
            (
                kind.is_symlink(),
                kind.is_fifo(),
                kind.is_dir(),
                kind.is_char_device()
            ),
            "{name} changed type"
        );
    }
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    assert_eq!(names(dir.path()), before, "files written or removed");
}

fn names(d: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Complete dumps (`.pb.gz` and `.txt` pairs) in `dir`, their bytes, and the highest seq seen.
fn scan_dumps(dir: &std::path::Path) -> (usize, u64, Option<u64>) {
    let (mut pairs, mut bytes, mut max_seq) = (0, 0, None);
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue; // a dump being written
        }
        bytes += e.metadata().map_or(0, |m| m.len());
        if let Some(seq) = name
            .strip_suffix(".txt")
            .and_then(|n| n.rsplit('-').next())
            .and_then(|n| n.parse::<u64>().ok())
        {
            pairs += 1;
            max_seq = max_seq.max(Some(seq));
        }
    }
    (pairs, bytes, max_seq)
}

/// Child: installs the dump signal and sends itself SIGUSR2 every 20 ms until the dump with seq
/// `HEAPSIGHT_TEST_DUMPS` exists, checking the directory's bound after each signal. Prints the
/// signals sent, the elapsed milliseconds and the largest number of dumps seen at once.
fn storm_child() {
    let dir = std::path::PathBuf::from(std::env::var_os("HEAPSIGHT_DUMP_DIR").unwrap());
    let last: u64 = std::env::var("HEAPSIGHT_TEST_DUMPS")
        .unwrap()
        .parse()
        .unwrap();
    let keep = signal_test_keeps_blocks();
    let start = Instant::now();
    heapsight::install_dump_signal(libc::SIGUSR2).unwrap();
    let (mut signals, mut most) = (0u64, 0usize);
    loop {
        // SAFETY: raise(3) on our own process; the handler only writes to a pipe.
        unsafe { libc::raise(libc::SIGUSR2) };
        signals += 1;
        std::thread::sleep(Duration::from_millis(20));
        let (pairs, _, max_seq) = scan_dumps(&dir);
        most = most.max(pairs);
        if max_seq >= Some(last) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "hang: no dump {last}"
        );
    }
    println!("{signals} {} {most}", start.elapsed().as_millis());
    drop(keep);
}

/// A storm of SIGUSR2 (one per 20 ms): dumps are at least `HEAPSIGHT_DUMP_MIN_INTERVAL` apart,
/// at most `HEAPSIGHT_DUMP_KEEP` of them stay on disk (one more while the newest is being
/// rotated in), and with `HEAPSIGHT_DUMP_MAX_BYTES` below one dump only the newest stays.
fn signal_storm_is_bounded() {
    let run = |interval: &str, keep: &str, max_bytes: &str, last: u64| {
        let dir = support::TempDir::new("storm");
        let out = Command::new(std::env::current_exe().unwrap())
            .env("HEAPSIGHT_TEST_CHILD", "storm")
            .env("HEAPSIGHT_DUMP_DIR", dir.path())
            .env("HEAPSIGHT_TEST_DUMPS", last.to_string())
            .env("HEAPSIGHT_DUMP_MIN_INTERVAL", interval)
            .env("HEAPSIGHT_DUMP_KEEP", keep)
            .env("HEAPSIGHT_DUMP_MAX_BYTES", max_bytes)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let v: Vec<u64> = stdout
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        let wrote = stderr
            .lines()
            .filter(|l| l.contains("heapsight: wrote"))
            .count() as u64;
        let (pairs, bytes, max_seq) = scan_dumps(dir.path());
        (
            v[0],
            v[1],
            v[2] as usize,
            wrote,
            pairs,
            bytes,
            max_seq,
            stderr,
        )
    };
    // One dump per second at most, three kept.
    let (signals, ms, most, wrote, pairs, _, max_seq, stderr) = run("1", "3", "1GiB", 5);
    assert!(max_seq >= Some(5), "{stderr}");
    // Dump starts are >= 1 s apart, so in `ms` there can be at most ms/1000 + 1 of them.
    assert!(wrote <= ms / 1000 + 1, "{wrote} dumps in {ms} ms: {stderr}");
    assert!(signals > wrote, "{signals} signals, {wrote} dumps");
    assert!(
        most <= 4 && pairs <= 4,
        "{most} / {pairs} dumps kept at once with keep=3"
    );
    // Bytes: a bound below one dump keeps only the newest (plus the one being written).
    let (_, _, most, _, pairs, bytes, max_seq, stderr) = run("0", "1000", "1", 4);
    assert!(max_seq >= Some(4), "{stderr}");
    assert!(
        most <= 2 && pairs <= 2,
        "{most} / {pairs} dumps kept with max_bytes=1"
    );
    assert!(bytes > 0);
}

fn main() {
    match std::env::var("HEAPSIGHT_TEST_CHILD").as_deref() {
        Ok("storm") => return storm_child(),
        Ok(_) => {
            // Child for `dump_on_exit`: keep blocks live until the end and return normally.
            let keep = signal_test_keeps_blocks();
            std::mem::forget(keep);
            return;
        }
        Err(_) => {}
    }
    support::run(&[
        (
            "failed_install_leaves_nothing_behind",
            failed_install_leaves_nothing_behind,
        ),
        ("sigusr2_writes_both_files", sigusr2_writes_both_files),
        ("dump_on_exit", dump_on_exit),
        (
            "dump_on_exit_refuses_non_regular_targets",
            dump_on_exit_refuses_non_regular_targets,
        ),
        ("signal_storm_is_bounded", signal_storm_is_bounded),
    ]);
}
