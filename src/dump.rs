//! Dumps to files without code changes: at exit (`HEAPSIGHT_DUMP_ON_EXIT=path`) and, with feature
//! `signal`, whenever the process receives SIGUSR2 (or another signal of your choice).
//!
//! The signal handler does one async-signal-safe thing: it writes a byte to a pipe. A background
//! thread, started by [`install_dump_signal`], reads the pipe and does the dumping (profiling,
//! encoding, file IO) inside the profiler guard. Nothing but `write(2)` ever runs in the handler.
use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
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
        let p = crate::profile();
        write_file(&pb, |w| p.write_pprof(w))?;
        write_file(&txt, |w| p.write_text(w))?;
        Ok((pb, txt))
    })
}

/// Writes a profile to `path`: Go's debug=1 text if the name ends in `.txt`, else gzipped pprof.
pub fn dump_to_file(path: impl AsRef<Path>) -> io::Result<()> {
    profiler_scope(|| {
        let path = path.as_ref();
        let p = crate::profile();
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

#[cfg(all(unix, feature = "signal"))]
mod signal {
    use super::*;
    use std::sync::atomic::AtomicI32;

    static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);

    extern "C" fn on_signal(_: libc::c_int) {
        let fd = PIPE_WRITE.load(Relaxed);
        if fd >= 0 {
            let b = 1u8;
            // SAFETY: write(2) is async-signal-safe; the buffer is a live local byte. A full pipe
            // (dumps already pending) drops the byte, which is fine.
            unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
        }
    }

    /// Dumps a profile into `HEAPSIGHT_DUMP_DIR` (default: the working directory) each time the
    /// process receives `signum` (e.g. `libc::SIGUSR2`), printing the paths on stderr. The dump
    /// runs on a background thread, never in the signal handler. Call once; a second call fails.
    pub fn install_dump_signal(signum: libc::c_int) -> io::Result<()> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let (read_fd, write_fd) = (fds[0], fds[1]);
        if PIPE_WRITE
            .compare_exchange(-1, write_fd, Relaxed, Relaxed)
            .is_err()
        {
            // SAFETY: both descriptors were just created and are owned here.
            unsafe {
                libc::close(read_fd);
                libc::close(write_fd);
            }
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a dump signal is already installed",
            ));
        }
        // The reader blocks: clear O_NONBLOCK on the read end only.
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(read_fd, libc::F_SETFL, 0) };
        std::thread::Builder::new()
            .name("heapsight-dump".into())
            .spawn(move || loop {
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
            })?;
        // SAFETY: `sa` is fully initialised (zeroed, then the handler and flags set); the handler
        // is async-signal-safe (one write(2)).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(signum, &sa, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

#[cfg(all(unix, feature = "signal"))]
#[cfg_attr(docsrs, doc(cfg(feature = "signal")))]
pub use signal::install_dump_signal;
