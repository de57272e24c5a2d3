//! Dumps to files without code changes: at exit (`HEAPSIGHT_DUMP_ON_EXIT=path`) and, with feature
//! `signal`, whenever the process receives SIGUSR2 (or another signal of your choice).
//!
//! The signal handler does one async-signal-safe thing: it writes a byte to a pipe (keeping
//! `errno`). A background
//! thread, started by [`install_dump_signal`], reads the pipe and does the dumping (profiling,
//! encoding, file IO) inside the profiler guard. Nothing but `write(2)` ever runs in the handler.
use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
#[cfg(all(unix, feature = "signal", test))]
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::guard::profiler_scope;

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Writes `heapsight-<pid>-<seq>.pb.gz` (gzipped pprof) and `heapsight-<pid>-<seq>.txt` (Go's
/// debug=1 text) into `dir` and returns both paths.
pub fn dump_to_dir(dir: impl AsRef<Path>) -> io::Result<(PathBuf, PathBuf)> {
    profiler_scope(|| {
        let dir = dir.as_ref();
        let seq = SEQ.fetch_add(1, Relaxed);
        let stem = format!("heapsight-{}-{seq}", std::process::id());
        let pb = dir.join(format!("{stem}.pb.gz"));
        let txt = dir.join(format!("{stem}.txt"));
        let p = crate::snapshot::take(true);
        write_file(&pb, |w| p.write_pprof(w))?;
        write_file(&txt, |w| p.write_text(w))?;
        Ok((pb, txt))
    })
}

/// Writes a profile to `path`: Go's debug=1 text if the name ends in `.txt`, else gzipped pprof.
pub fn dump_to_file(path: impl AsRef<Path>) -> io::Result<()> {
    profiler_scope(|| {
        let path = path.as_ref();
        let p = crate::snapshot::take(true);
        if path.extension().is_some_and(|e| e == "txt") {
            write_file(path, |w| p.write_text(w))
        } else {
            write_file(path, |w| p.write_pprof(w))
        }
    })
}

/// Writes through a temporary name and renames, so a reader never sees half a profile.
fn write_file(
    path: &Path,
    f: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let mut w = BufWriter::new(File::create(&tmp)?);
    f(&mut w)?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
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
    /// process receives `signum` (e.g. `libc::SIGUSR2`), printing the paths on stderr. The dump
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
        let spawned = std::thread::Builder::new()
            .name("heapsight-dump".into())
            .spawn(move || {
                dump_loop(read_fd);
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

    /// The dump thread: one dump per wake-up, until the pipe's write end is closed.
    fn dump_loop(read_fd: libc::c_int) {
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
            let dir = std::env::var_os("HEAPSIGHT_DUMP_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."));
            match dump_to_dir(&dir) {
                Ok((pb, txt)) => {
                    eprintln!("heapsight: wrote {} and {}", pb.display(), txt.display())
                }
                Err(e) => eprintln!("heapsight: could not dump into {}: {e}", dir.display()),
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
