//! Dumps to files without code changes: at exit (`HEAPSIGHT_DUMP_ON_EXIT=path`) and, with feature
//! `signal`, whenever the process receives SIGUSR2 (or another signal of your choice).
//!
//! The signal handler does one async-signal-safe thing: it writes a byte to a pipe (keeping
//! `errno`). A background
//! thread, started by [`install_dump_signal`], reads the pipe and does the dumping (profiling,
//! encoding, file IO) inside the profiler guard. Nothing but `write(2)` ever runs in the handler.
//!
//! Every file is written by [`write_file_safely`]: the service's disk is not the requester's to
//! rearrange, so a dump never follows a symlink, never replaces anything but a regular file, and
//! a reader never sees half a profile. Signal dumps are rate-limited and rotated
//! ([`DumpLimits`], [`dump_rotated`]): a signal storm costs at most `keep` dumps and `max_bytes`.
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
#[cfg(all(unix, feature = "signal", test))]
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::guard::profiler_scope;

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Writes `heapsight-<pid>-<seq>.pb.gz` (gzipped pprof) and `heapsight-<pid>-<seq>.txt` (Go's
/// debug=1 text) into `dir` and returns both paths. Each file is written as
/// [`dump_to_file`] writes one (never through a symlink, never over a non-regular file); nothing
/// is rotated.
pub fn dump_to_dir(dir: impl AsRef<Path>) -> io::Result<(PathBuf, PathBuf)> {
    dump_pair(dir.as_ref(), &own_prefix())
}

/// `heapsight-<pid>-`: the names this process's signal dumps start with.
fn own_prefix() -> String {
    format!("heapsight-{}-", std::process::id())
}

/// One snapshot written as `<prefix><seq>.pb.gz` and `<prefix><seq>.txt` in `dir`.
fn dump_pair(dir: &Path, prefix: &str) -> io::Result<(PathBuf, PathBuf)> {
    profiler_scope(|| {
        let seq = SEQ.fetch_add(1, Relaxed);
        let pb = dir.join(format!("{prefix}{seq}.pb.gz"));
        let txt = dir.join(format!("{prefix}{seq}.txt"));
        let p = crate::snapshot::take(true);
        write_file_safely(&pb, |w| p.write_pprof(w))?;
        write_file_safely(&txt, |w| p.write_text(w))?;
        Ok((pb, txt))
    })
}

/// Writes a profile to `path`: Go's debug=1 text if the name ends in `.txt`, else gzipped pprof.
/// The file is written under a temporary name next to `path`, created exclusively
/// (`O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600), synced and renamed over `path`: a symlink, FIFO,
/// device or directory at `path` is refused with an error saying what it is, never replaced or
/// written through.
pub fn dump_to_file(path: impl AsRef<Path>) -> io::Result<()> {
    profiler_scope(|| {
        let path = path.as_ref();
        // Checked before the snapshot too, so that a refused target costs no profile.
        check_target(path)?;
        let p = crate::snapshot::take(true);
        if path.extension().is_some_and(|e| e == "txt") {
            write_file_safely(path, |w| p.write_text(w))
        } else {
            write_file_safely(path, |w| p.write_pprof(w))
        }
    })
}

/// Refuses a target that exists and is not a regular file (a symlink is refused whatever it
/// points to: `lstat`, not `stat`). A missing target is fine.
fn check_target(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => Ok(()),
        Ok(m) => {
            let t = m.file_type();
            let what = if t.is_symlink() {
                "a symlink"
            } else if t.is_dir() {
                "a directory"
            } else if t.is_fifo() {
                "a FIFO"
            } else if t.is_char_device() || t.is_block_device() {
                "a device"
            } else if t.is_socket() {
                "a socket"
            } else {
                "not a regular file"
            };
            Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} is {what}: refusing to replace it (dumps only replace regular files)",
                    path.display()
                ),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
}

/// Writes `path` so that it cannot be turned against the service:
///
/// * the target is checked with `lstat` before anything is written and again just before the
///   rename: if it exists and is not a regular file (a symlink, FIFO, device, directory,
///   socket), nothing is written and the error says what it is;
/// * the bytes go to a new temporary file next to the target (`.<name>.<pid>.<n>.tmp`, same
///   directory so the rename is atomic), created with `O_CREAT|O_EXCL|O_NOFOLLOW` and mode 0600:
///   an existing file or symlink at that name is an error, never opened;
/// * the temporary file is synced, then renamed over the target, so a reader sees the old file
///   or the whole new one, never half a profile. On any error the temporary file is removed.
///
/// `write` gets a buffered writer; its error is returned as is. This is the one way heapsight
/// writes a file (at-exit, signal and memory-trigger dumps).
pub(crate) fn write_file_safely(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> io::Result<()> {
    static TMP_SEQ: AtomicU64 = AtomicU64::new(0);
    check_target(path)?;
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file name", path.display()),
        )
    })?;
    let tmp = path.with_file_name(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        TMP_SEQ.fetch_add(1, Relaxed)
    ));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", tmp.display())))?;
    let result = (|| {
        let mut w = BufWriter::new(file);
        write(&mut w)?;
        w.flush()?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        // The target may have been replaced since the first check: check again as late as
        // possible (rename(2) itself never follows a symlink at the target, it would replace it).
        check_target(path)?;
        std::fs::rename(&tmp, path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// How often, how many and how large signal-triggered dumps may be: a storm of signals costs at
/// most `keep` dumps on disk and `max_bytes` (the newest dump is kept even if it alone is
/// larger), and one dump per `min_interval`. Read from the environment by
/// `install_dump_signal`; only this process's files (`heapsight-<pid>-<seq>.*`) are rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DumpLimits {
    /// Least time between two dumps; signals in between are merged into one dump at its end.
    /// `HEAPSIGHT_DUMP_MIN_INTERVAL` (seconds), default 10 s.
    pub min_interval: Duration,
    /// Most dumps (a `.pb.gz` and a `.txt` each) kept in the directory; older ones are removed.
    /// `HEAPSIGHT_DUMP_KEEP`, default 10.
    pub keep: usize,
    /// Most bytes the kept dumps may take together. `HEAPSIGHT_DUMP_MAX_BYTES`, default 256 MiB.
    pub max_bytes: u64,
}

impl Default for DumpLimits {
    fn default() -> Self {
        DumpLimits {
            min_interval: Duration::from_secs(crate::config::DEFAULT_DUMP_MIN_INTERVAL_SECS),
            keep: crate::config::DEFAULT_DUMP_KEEP,
            max_bytes: crate::config::DEFAULT_DUMP_MAX_BYTES,
        }
    }
}

impl DumpLimits {
    /// The defaults, with what `HEAPSIGHT_DUMP_MIN_INTERVAL`, `HEAPSIGHT_DUMP_KEEP` and
    /// `HEAPSIGHT_DUMP_MAX_BYTES` set instead (a bad value prints one line and keeps the default).
    pub fn from_env() -> DumpLimits {
        let s = crate::config::dump_settings();
        let d = DumpLimits::default();
        DumpLimits {
            min_interval: s
                .min_interval_secs
                .map_or(d.min_interval, Duration::from_secs),
            keep: s.keep.unwrap_or(d.keep),
            max_bytes: s.max_bytes.unwrap_or(d.max_bytes),
        }
    }
}

/// Writes one dump into `dir` as `<prefix><seq>.pb.gz` and `<prefix><seq>.txt` (both through
/// [`write_file_safely`]), then removes this prefix's oldest dumps beyond `limits.keep` and
/// `limits.max_bytes` ([`rotate`]). `prefix` names the dump series (`heapsight-<pid>-` for the
/// signal dumps). The rate limit is the caller's (see `min_interval`).
#[cfg_attr(not(feature = "signal"), allow(dead_code))]
pub(crate) fn dump_rotated(
    dir: &Path,
    prefix: &str,
    limits: &DumpLimits,
) -> io::Result<(PathBuf, PathBuf)> {
    let written = dump_pair(dir, prefix)?;
    rotate(dir, prefix, limits)?;
    Ok(written)
}

/// Removes the oldest dumps of the series `prefix` in `dir` (files named `<prefix><seq>.<ext>`,
/// regular files only; `seq` orders them) until at most `limits.keep` dumps and
/// `limits.max_bytes` bytes remain; the newest dump is never removed. Returns the number of
/// files removed. Anything else in the directory is left alone.
#[cfg_attr(not(feature = "signal"), allow(dead_code))]
pub(crate) fn rotate(dir: &Path, prefix: &str, limits: &DumpLimits) -> io::Result<usize> {
    // (seq, bytes, paths) per dump.
    let mut dumps: Vec<(u64, u64, Vec<PathBuf>)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (Ok(seq), Some(ext)) = (
            rest[..digits].parse::<u64>(),
            rest[digits..].strip_prefix('.'),
        ) else {
            continue;
        };
        if ext.is_empty() || ext.ends_with(".tmp") {
            continue;
        }
        // `DirEntry::metadata` does not follow symlinks: only regular files are counted or removed.
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.file_type().is_file() {
            continue;
        }
        match dumps.iter_mut().find(|d| d.0 == seq) {
            Some(d) => {
                d.1 += meta.len();
                d.2.push(entry.path());
            }
            None => dumps.push((seq, meta.len(), vec![entry.path()])),
        }
    }
    dumps.sort_by_key(|d| std::cmp::Reverse(d.0));
    // Newest first: keep while within both bounds, then remove everything older (the kept
    // dumps are always the latest ones, without holes).
    let (mut kept_bytes, mut cut, mut removed) = (0u64, false, 0);
    for (i, (_, bytes, paths)) in dumps.iter().enumerate() {
        kept_bytes = kept_bytes.saturating_add(*bytes);
        cut |= i > 0 && (i >= limits.keep || kept_bytes > limits.max_bytes);
        if cut {
            for p in paths {
                if std::fs::remove_file(p).is_ok() {
                    removed += 1;
                }
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Dir(PathBuf);
    impl Dir {
        fn new(what: &str) -> Dir {
            let d = std::env::temp_dir().join(format!(
                "heapsight-dump-{what}-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Relaxed)
            ));
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_and_replaces_regular_files_only() {
        let d = Dir::new("safe");
        let target = d.0.join("p.txt");
        write_file_safely(&target, |w| w.write_all(b"one")).unwrap();
        write_file_safely(&target, |w| w.write_all(b"two")).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"two");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A symlink (to a file we own) is refused, and the file it points to is untouched.
        let victim = d.0.join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let link = d.0.join("link.pb.gz");
        symlink(&victim, &link).unwrap();
        let e = write_file_safely(&link, |w| w.write_all(b"x")).unwrap_err();
        assert!(e.to_string().contains("is a symlink"), "{e}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        // A dangling symlink too (it would otherwise create its target).
        let dangling = d.0.join("dangling");
        symlink(d.0.join("nowhere"), &dangling).unwrap();
        assert!(write_file_safely(&dangling, |w| w.write_all(b"x")).is_err());
        assert!(!d.0.join("nowhere").exists());
        // A FIFO: refused without opening it (opening would block).
        let fifo = d.0.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = write_file_safely(&fifo, |w| w.write_all(b"x")).unwrap_err();
        assert!(e.to_string().contains("is a FIFO"), "{e}");
        // A directory.
        let e = write_file_safely(&d.0, |w| w.write_all(b"x")).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        // The writer's error is returned and leaves no temporary file.
        let e = write_file_safely(&d.0.join("failed"), |_| Err(io::Error::other("boom")));
        assert_eq!(e.unwrap_err().to_string(), "boom");
        assert_eq!(
            names(&d.0),
            ["dangling", "fifo", "link.pb.gz", "p.txt", "victim"]
        );
    }

    #[test]
    fn the_target_replaced_by_a_symlink_while_writing_is_refused() {
        let d = Dir::new("race");
        let target = d.0.join("t.pb.gz");
        let victim = d.0.join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let e = write_file_safely(&target, |w| {
            symlink(&victim, &target)?;
            w.write_all(b"x")
        })
        .unwrap_err();
        assert!(e.to_string().contains("is a symlink"), "{e}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(names(&d.0), ["t.pb.gz", "victim"]);
    }

    #[test]
    fn rotation_keeps_the_newest_within_count_and_bytes() {
        let d = Dir::new("rotate");
        let put = |name: &str, n: usize| std::fs::write(d.0.join(name), vec![0u8; n]).unwrap();
        for seq in 0..6 {
            put(&format!("heapsight-7-{seq}.pb.gz"), 100);
            put(&format!("heapsight-7-{seq}.txt"), 50);
        }
        // Not ours: another process, another name, a symlink with our pattern.
        put("heapsight-8-0.pb.gz", 100);
        put("notes.txt", 10);
        symlink("/etc/passwd", d.0.join("heapsight-7-99.txt")).unwrap();
        let limits = |keep, max_bytes| DumpLimits {
            min_interval: Duration::ZERO,
            keep,
            max_bytes,
        };
        // Seq order is numeric (10 > 9), not by name.
        put("heapsight-7-10.pb.gz", 100);
        assert_eq!(
            rotate(&d.0, "heapsight-7-", &limits(4, 1 << 20)).unwrap(),
            6
        );
        assert_eq!(
            names(&d.0),
            [
                "heapsight-7-10.pb.gz",
                "heapsight-7-3.pb.gz",
                "heapsight-7-3.txt",
                "heapsight-7-4.pb.gz",
                "heapsight-7-4.txt",
                "heapsight-7-5.pb.gz",
                "heapsight-7-5.txt",
                "heapsight-7-99.txt",
                "heapsight-8-0.pb.gz",
                "notes.txt"
            ]
        );
        // Bytes: 100 + 150 fit in 260, the next dump does not, so it and older ones go.
        assert_eq!(rotate(&d.0, "heapsight-7-", &limits(10, 260)).unwrap(), 4);
        // The newest stays even when it alone is over the bound.
        assert_eq!(rotate(&d.0, "heapsight-7-", &limits(10, 1)).unwrap(), 2);
        assert_eq!(
            names(&d.0),
            [
                "heapsight-7-10.pb.gz",
                "heapsight-7-99.txt",
                "heapsight-8-0.pb.gz",
                "notes.txt"
            ]
        );
    }
}

/// Registered with `atexit` by the first allocation when `HEAPSIGHT_DUMP_ON_EXIT` is set.
pub(crate) extern "C" fn dump_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        let Some(path) = std::env::var_os("HEAPSIGHT_DUMP_ON_EXIT") else {
            return;
        };
        match dump_to_file(&path) {
            Ok(()) => eprintln!(
                "heapsight: wrote heap profile to {}",
                Path::new(&path).display()
            ),
            Err(e) => eprintln!(
                "heapsight: HEAPSIGHT_DUMP_ON_EXIT={}: {e}",
                Path::new(&path).display()
            ),
        }
    });
}

/// Why [`install_dump_signal`] failed. Nothing of the attempt is left behind: no thread, no
/// descriptor, no handler; a later call can try again.
#[cfg(all(unix, feature = "signal"))]
#[cfg_attr(docsrs, doc(cfg(feature = "signal")))]
#[derive(Debug)]
#[non_exhaustive]
pub enum DumpSignalError {
    /// A dump signal is already installed (one per process).
    AlreadyInstalled,
    /// The wake-up pipe could not be created.
    Pipe(io::Error),
    /// The dump thread could not be started.
    Thread(io::Error),
    /// `sigaction` refused the signal (e.g. `SIGKILL`, `SIGSTOP`, or a number out of range).
    Signal(io::Error),
}

#[cfg(all(unix, feature = "signal"))]
impl std::fmt::Display for DumpSignalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DumpSignalError::AlreadyInstalled => write!(f, "a dump signal is already installed"),
            DumpSignalError::Pipe(e) => write!(f, "cannot create the dump pipe: {e}"),
            DumpSignalError::Thread(e) => write!(f, "cannot start the dump thread: {e}"),
            DumpSignalError::Signal(e) => write!(f, "cannot install the signal handler: {e}"),
        }
    }
}

#[cfg(all(unix, feature = "signal"))]
impl std::error::Error for DumpSignalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DumpSignalError::AlreadyInstalled => None,
            DumpSignalError::Pipe(e) | DumpSignalError::Thread(e) | DumpSignalError::Signal(e) => {
                Some(e)
            }
        }
    }
}

#[cfg(all(unix, feature = "signal"))]
impl From<DumpSignalError> for io::Error {
    fn from(e: DumpSignalError) -> io::Error {
        let kind = match &e {
            DumpSignalError::AlreadyInstalled => io::ErrorKind::AlreadyExists,
            DumpSignalError::Pipe(e) | DumpSignalError::Thread(e) | DumpSignalError::Signal(e) => {
                e.kind()
            }
        };
        io::Error::new(kind, e)
    }
}

#[cfg(all(unix, feature = "signal"))]
mod signal {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicI32};

    static INSTALLED: AtomicBool = AtomicBool::new(false);
    static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);

    /// This thread's `errno`, where the platform names its location.
    fn errno_location() -> Option<*mut libc::c_int> {
        // SAFETY: these functions have no preconditions and return this thread's errno, valid
        // while the thread lives.
        #[cfg(any(target_os = "linux", target_os = "android"))]
        return Some(unsafe { libc::__errno_location() });
        #[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
        return Some(unsafe { libc::__error() });
        #[allow(unreachable_code)]
        None
    }

    extern "C" fn on_signal(_: libc::c_int) {
        // The handler may interrupt code between a failing call and its read of errno; a failed
        // write below (a full pipe: dumps already pending) would overwrite it, so it is restored.
        let errno = errno_location();
        // SAFETY: a pointer from `errno_location`, this thread's errno.
        let saved = errno.map(|e| unsafe { *e });
        let fd = PIPE_WRITE.load(Relaxed);
        if fd >= 0 {
            let b = 1u8;
            // SAFETY: write(2) is async-signal-safe; the buffer is a live local byte. A full pipe
            // drops the byte, which is fine: a dump is pending anyway.
            unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
        }
        if let (Some(e), Some(v)) = (errno, saved) {
            // SAFETY: as above.
            unsafe { *e = v };
        }
    }

    /// Dumps a profile into `HEAPSIGHT_DUMP_DIR` (default: the working directory) each time the
    /// process receives `signum` (e.g. `libc::SIGUSR2`), printing the paths on stderr: at most
    /// one dump per `HEAPSIGHT_DUMP_MIN_INTERVAL`, the last `HEAPSIGHT_DUMP_KEEP` dumps kept
    /// within `HEAPSIGHT_DUMP_MAX_BYTES` ([`DumpLimits`]; the directory and limits are read
    /// here, once). Each file is written next to its name under a temporary name created exclusively
    /// (`O_EXCL|O_NOFOLLOW`) and renamed; a symlink or other non-regular file at a dump's name
    /// is refused, never replaced. The dump
    /// runs on a background thread, never in the signal handler, which only writes a byte to a
    /// pipe (and keeps `errno`). Call once; a second call fails with
    /// [`DumpSignalError::AlreadyInstalled`]. On failure nothing is left behind (no thread, no
    /// descriptor, no handler). The error converts into `io::Error` for `?`.
    pub fn install_dump_signal(signum: libc::c_int) -> Result<(), DumpSignalError> {
        if INSTALLED.swap(true, Relaxed) {
            return Err(DumpSignalError::AlreadyInstalled);
        }
        let r = install(signum);
        if r.is_err() {
            INSTALLED.store(false, Relaxed);
        }
        r
    }

    fn install(signum: libc::c_int) -> Result<(), DumpSignalError> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(DumpSignalError::Pipe(io::Error::last_os_error()));
        }
        let (read_fd, write_fd) = (fds[0], fds[1]);
        // The reader blocks: clear O_NONBLOCK on the read end only.
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(read_fd, libc::F_SETFL, 0) };
        PIPE_WRITE.store(write_fd, Relaxed);
        // The profiler's memory: allocated in the guard here, freed in it by the thread.
        let (dir, limits) = profiler_scope(|| {
            let dir = std::env::var_os("HEAPSIGHT_DUMP_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."));
            (dir, DumpLimits::from_env())
        });
        let spawned = std::thread::Builder::new()
            .name("heapsight-dump".into())
            .spawn(move || {
                profiler_scope(|| dump_loop(read_fd, dir, limits));
                // SAFETY: the read end is this thread's; nothing else uses it.
                unsafe { libc::close(read_fd) };
            });
        let thread = match spawned {
            Ok(t) => t,
            Err(e) => {
                PIPE_WRITE.store(-1, Relaxed);
                // SAFETY: both descriptors were created above and are owned here (the thread
                // that would have owned the read end was not started).
                unsafe {
                    libc::close(read_fd);
                    libc::close(write_fd);
                }
                return Err(DumpSignalError::Thread(e));
            }
        };
        // SAFETY: `sa` is fully initialised (zeroed, then the handler and flags set); the handler
        // is async-signal-safe (one write(2), errno kept).
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(signum, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            // No handler was installed, so nothing writes to the pipe: closing the write end
            // ends the thread (it reads end-of-file), which closes the read end.
            PIPE_WRITE.store(-1, Relaxed);
            // SAFETY: the write end is ours; the handler that would use it was not installed.
            unsafe { libc::close(write_fd) };
            let _ = thread.join();
            return Err(DumpSignalError::Signal(e));
        }
        Ok(())
    }

    /// The dump thread: one dump per wake-up, at most one per `min_interval` (signals that
    /// arrive in between are merged into the next dump), rotated; until the pipe's write end is
    /// closed. The limits and the directory are read once, when the signal is installed.
    fn dump_loop(read_fd: libc::c_int, dir: PathBuf, limits: DumpLimits) {
        let prefix = own_prefix();
        let mut last: Option<std::time::Instant> = None;
        loop {
            let mut b = [0u8; 64];
            // SAFETY: reads into a live local buffer of the stated length.
            let n = unsafe { libc::read(read_fd, b.as_mut_ptr().cast(), b.len()) };
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if n <= 0 {
                return;
            }
            if let Some(wait) = last.map(|t| limits.min_interval.saturating_sub(t.elapsed())) {
                if !wait.is_zero() {
                    std::thread::sleep(wait);
                }
            }
            // Everything that arrived until now is served by this one dump.
            if !drain(read_fd) {
                return;
            }
            last = Some(std::time::Instant::now());
            match dump_rotated(&dir, &prefix, &limits) {
                Ok((pb, txt)) => {
                    eprintln!("heapsight: wrote {} and {}", pb.display(), txt.display())
                }
                Err(e) => eprintln!("heapsight: could not dump into {}: {e}", dir.display()),
            }
        }
    }

    /// Reads whatever is in the pipe without waiting; false if its write end is closed.
    fn drain(read_fd: libc::c_int) -> bool {
        loop {
            let mut p = libc::pollfd {
                fd: read_fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd, zero timeout.
            if unsafe { libc::poll(&mut p, 1, 0) } <= 0 || p.revents & libc::POLLIN == 0 {
                return p.revents & libc::POLLHUP == 0;
            }
            let mut b = [0u8; 4096];
            // SAFETY: reads into a live local buffer of the stated length; poll said readable.
            if unsafe { libc::read(read_fd, b.as_mut_ptr().cast(), b.len()) } <= 0 {
                return false;
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn handler_keeps_errno_when_its_write_fails() {
            let mut fds = [0 as libc::c_int; 2];
            // SAFETY: `fds` has room for two descriptors.
            assert_eq!(
                unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) },
                0
            );
            // Fill the pipe, so the handler's write fails with EAGAIN.
            let chunk = [0u8; 4096];
            // SAFETY: writes from a live buffer of the stated length to our pipe.
            while unsafe { libc::write(fds[1], chunk.as_ptr().cast(), chunk.len()) } > 0 {}
            // SAFETY: as above, one byte at a time until it is really full.
            while unsafe { libc::write(fds[1], chunk.as_ptr().cast(), 1) } > 0 {}
            assert!(
                !INSTALLED.swap(true, SeqCst),
                "no other test installs a dump signal"
            );
            PIPE_WRITE.store(fds[1], SeqCst);
            // SAFETY: this thread's errno.
            unsafe { *libc::__errno_location() = libc::EDOM };
            on_signal(libc::SIGUSR2);
            // SAFETY: as above.
            let after = unsafe { *libc::__errno_location() };
            PIPE_WRITE.store(-1, SeqCst);
            INSTALLED.store(false, SeqCst);
            // SAFETY: the descriptors made above.
            unsafe {
                libc::close(fds[0]);
                libc::close(fds[1]);
            }
            assert_eq!(
                after,
                libc::EDOM,
                "the handler's failed write changed errno"
            );
        }
    }
}

#[cfg(all(unix, feature = "signal"))]
#[cfg_attr(docsrs, doc(cfg(feature = "signal")))]
pub use signal::install_dump_signal;
