//! The settings: their defaults and limits, the unwinder choice, and reading them from the
//! environment without allocating.
//!
//! The variables are read once, by the first allocation of the process (usually before `main`,
//! when there is one thread), with `libc::getenv`: no `String`, no lock, no re-entry into the
//! allocator. A bad value prints one line on stderr through `write(2)` from a stack buffer and the
//! default stays.
use core::fmt;

/// The most frames kept (leaf-most), Go's `maxProfStackDepth` since Go 1.23 is 128.
pub(crate) const DEFAULT_MAX_DEPTH: usize = 128;
/// Upper bound for `set_max_depth`: the capture buffer lives on the hook's stack.
pub(crate) const MAX_DEPTH_LIMIT: usize = 256;
/// Default cap on distinct stacks (see `sites` for when a table holds more).
pub(crate) const DEFAULT_MAX_SITES: usize = 16_384;

/// Which unwinder samples use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unwinder {
    /// Frame pointers if heapsight was compiled with them, falling back to DWARF per stack.
    Auto,
    /// Always the frame-pointer walk (still falling back to DWARF when the chain is broken).
    FramePointers,
    /// Always `backtrace::trace`.
    Dwarf,
}

/// Why an environment value was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseError {
    /// Empty, or not digits with an optional unit (`abc`, `-1`, `1.5`, `12x`).
    NotANumber,
    /// Does not fit in 64 bits, or above the variable's maximum.
    TooLarge,
    /// Below the variable's minimum.
    TooSmall,
    /// Not one of the accepted words.
    UnknownWord,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParseError::NotANumber => "not a whole number",
            ParseError::TooLarge => "too large",
            ParseError::TooSmall => "too small",
            ParseError::UnknownWord => "not one of the accepted values",
        })
    }
}

impl std::error::Error for ParseError {}

/// Parses a byte count: decimal digits with an optional unit, surrounding spaces ignored. Units
/// are binary and case-insensitive: `B`; `K`, `KB`, `KiB` (1024); `M`, `MB`, `MiB` (1024²); `G`,
/// `GB`, `GiB` (1024³). `KB` means 1024 as in `ulimit` and Go's `GODEBUG` sizes; nothing here
/// is decimal, so `64kb`, `64KiB` and `65536` are the same value.
pub fn parse_bytes(s: &[u8]) -> Result<u64, ParseError> {
    let s = trim(s);
    let digits = s.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 {
        return Err(ParseError::NotANumber);
    }
    let mut n: u64 = 0;
    for &c in &s[..digits] {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add((c - b'0') as u64))
            .ok_or(ParseError::TooLarge)?;
    }
    let unit = trim(&s[digits..]);
    let shift = match unit.len() {
        0 => 0,
        _ => {
            let shift = match unit[0].to_ascii_lowercase() {
                b'k' => 10,
                b'm' => 20,
                b'g' => 30,
                b'b' if unit.len() == 1 => 0,
                _ => return Err(ParseError::NotANumber),
            };
            let rest: &[u8] = &unit[1..];
            if !(rest.is_empty()
                || rest.eq_ignore_ascii_case(b"ib")
                || rest.eq_ignore_ascii_case(b"b"))
            {
                return Err(ParseError::NotANumber);
            }
            shift
        }
    };
    n.checked_mul(1u64 << shift).ok_or(ParseError::TooLarge)
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

/// Parses a plain count (digits only, no unit) within `min..=max`.
pub fn parse_count(s: &[u8], min: u64, max: u64) -> Result<u64, ParseError> {
    let s = trim(s);
    if s.is_empty() || !s.iter().all(|c| c.is_ascii_digit()) {
        return Err(ParseError::NotANumber);
    }
    let n = parse_bytes(s)?;
    if n > max {
        return Err(ParseError::TooLarge);
    }
    if n < min {
        return Err(ParseError::TooSmall);
    }
    Ok(n)
}

/// Parses an unwinder name, case-insensitively, surrounding spaces ignored.
pub(crate) fn parse_unwinder(s: &[u8]) -> Result<Unwinder, ParseError> {
    let s = trim(s);
    let is = |w: &[u8]| s.eq_ignore_ascii_case(w);
    if is(b"auto") {
        Ok(Unwinder::Auto)
    } else if is(b"fp") || is(b"frame-pointers") {
        Ok(Unwinder::FramePointers)
    } else if is(b"dwarf") {
        Ok(Unwinder::Dwarf)
    } else {
        Err(ParseError::UnknownWord)
    }
}

/// What each variable accepts, as its error message says it.
pub(crate) const SAMPLE_RATE_VALUES: &str = "bytes between samples, a whole number with an \
     optional binary unit in any case (B, K/KB/KiB, M/MB/MiB, G/GB/GiB), 0 = off, 1 = every \
     allocation";
pub(crate) const MAX_DEPTH_VALUES: &str = "a whole number of frames from 1 to 256";
pub(crate) const MAX_SITES_VALUES: &str = "a whole number of stacks from 1 to 16777216";
pub(crate) const UNWINDER_VALUES: &str = "auto, fp (or frame-pointers) or dwarf, in any case";
/// Most distinct stacks `HEAPSIGHT_MAX_SITES` may ask for.
pub(crate) const MAX_SITES_LIMIT: u64 = 1 << 24;

/// The start-up settings the environment asks for; `None` = not set, or rejected (with one
/// line on stderr naming the variable, its accepted values and the default kept).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EnvSettings {
    pub sample_rate: Option<u64>,
    pub max_depth: Option<usize>,
    pub max_sites: Option<usize>,
    pub unwinder: Option<Unwinder>,
}

/// Reads and validates `HEAPSIGHT_SAMPLE_RATE`, `HEAPSIGHT_MAX_DEPTH`, `HEAPSIGHT_MAX_SITES` and
/// `HEAPSIGHT_UNWINDER` without allocating.
pub(crate) fn env_settings() -> EnvSettings {
    settings_from(getenv)
}

/// [`env_settings`] over any source of values (tests pass a table).
fn settings_from(get: impl Fn(&'static [u8]) -> Option<&'static [u8]>) -> EnvSettings {
    EnvSettings {
        sample_rate: check(
            "HEAPSIGHT_SAMPLE_RATE",
            get(b"HEAPSIGHT_SAMPLE_RATE\0"),
            parse_bytes,
            SAMPLE_RATE_VALUES,
            &crate::sampler::DEFAULT_RATE,
        ),
        max_depth: check(
            "HEAPSIGHT_MAX_DEPTH",
            get(b"HEAPSIGHT_MAX_DEPTH\0"),
            |v| parse_count(v, 1, MAX_DEPTH_LIMIT as u64).map(|d| d as usize),
            MAX_DEPTH_VALUES,
            &DEFAULT_MAX_DEPTH,
        ),
        max_sites: check(
            "HEAPSIGHT_MAX_SITES",
            get(b"HEAPSIGHT_MAX_SITES\0"),
            |v| parse_count(v, 1, MAX_SITES_LIMIT).map(|d| d as usize),
            MAX_SITES_VALUES,
            &DEFAULT_MAX_SITES,
        ),
        unwinder: check(
            "HEAPSIGHT_UNWINDER",
            get(b"HEAPSIGHT_UNWINDER\0"),
            parse_unwinder,
            UNWINDER_VALUES,
            &"auto",
        ),
    }
}

/// Signal dumps: least seconds between two, dumps kept, bytes kept (see `dump::DumpLimits`).
pub(crate) const DEFAULT_DUMP_MIN_INTERVAL_SECS: u64 = 10;
pub(crate) const DEFAULT_DUMP_KEEP: usize = 10;
pub(crate) const DEFAULT_DUMP_MAX_BYTES: u64 = 256 << 20;
pub(crate) const DUMP_MIN_INTERVAL_VALUES: &str = "a whole number of seconds from 0 to 86400";
pub(crate) const DUMP_KEEP_VALUES: &str = "a whole number of dumps from 1 to 100000";
pub(crate) const DUMP_MAX_BYTES_VALUES: &str =
    "a byte count of at least 1 with an optional binary unit (B, K/KB/KiB, M/MB/MiB, G/GB/GiB)";

/// What `HEAPSIGHT_DUMP_MIN_INTERVAL`, `HEAPSIGHT_DUMP_KEEP` and `HEAPSIGHT_DUMP_MAX_BYTES` ask
/// for; `None` = not set, or rejected with one line on stderr.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DumpSettings {
    pub min_interval_secs: Option<u64>,
    pub keep: Option<usize>,
    pub max_bytes: Option<u64>,
}

/// Reads the dump limits from the environment (when a dump signal is installed).
pub(crate) fn dump_settings() -> DumpSettings {
    dump_settings_from(getenv)
}

fn dump_settings_from(get: impl Fn(&'static [u8]) -> Option<&'static [u8]>) -> DumpSettings {
    DumpSettings {
        min_interval_secs: check(
            "HEAPSIGHT_DUMP_MIN_INTERVAL",
            get(b"HEAPSIGHT_DUMP_MIN_INTERVAL\0"),
            |v| parse_count(v, 0, 86_400),
            DUMP_MIN_INTERVAL_VALUES,
            &format_args!("{DEFAULT_DUMP_MIN_INTERVAL_SECS} s"),
        ),
        keep: check(
            "HEAPSIGHT_DUMP_KEEP",
            get(b"HEAPSIGHT_DUMP_KEEP\0"),
            |v| parse_count(v, 1, 100_000).map(|n| n as usize),
            DUMP_KEEP_VALUES,
            &DEFAULT_DUMP_KEEP,
        ),
        max_bytes: check(
            "HEAPSIGHT_DUMP_MAX_BYTES",
            get(b"HEAPSIGHT_DUMP_MAX_BYTES\0"),
            |v| match parse_bytes(v)? {
                0 => Err(ParseError::TooSmall),
                n => Ok(n),
            },
            DUMP_MAX_BYTES_VALUES,
            &format_args!("{} MiB", DEFAULT_DUMP_MAX_BYTES >> 20),
        ),
    }
}

/// Parses `v` if set; a rejected value is reported on one stderr line and becomes `None`.
fn check<T>(
    var: &str,
    v: Option<&[u8]>,
    parse: impl FnOnce(&[u8]) -> Result<T, ParseError>,
    values: &str,
    default: &dyn fmt::Display,
) -> Option<T> {
    let v = v?;
    parse(v)
        .map_err(|e| complain(var, v, e, values, default))
        .ok()
}

/// The raw bytes of an environment variable, without allocating. `name` must end with a NUL.
pub(crate) fn getenv(name: &'static [u8]) -> Option<&'static [u8]> {
    debug_assert_eq!(name.last(), Some(&0));
    // SAFETY: `name` is NUL-terminated. getenv returns a pointer into the environment block, valid
    // until the variable is changed; we read it at start-up before any thread could change it.
    unsafe {
        let p = libc::getenv(name.as_ptr().cast());
        if p.is_null() {
            None
        } else {
            Some(core::ffi::CStr::from_ptr(p).to_bytes())
        }
    }
}

/// One line for stderr in a fixed buffer, for messages written from inside the allocator.
pub(crate) struct StderrLine {
    buf: [u8; 512],
    len: usize,
}

impl StderrLine {
    pub fn new() -> Self {
        StderrLine {
            buf: [0; 512],
            len: 0,
        }
    }
    /// Writes the line to stderr with `write(2)`, ignoring errors (there is nowhere to report them).
    pub fn emit(mut self) {
        if self.len == self.buf.len() {
            self.len -= 1;
        }
        self.buf[self.len] = b'\n';
        self.len += 1;
        let mut off = 0;
        while off < self.len {
            // SAFETY: the pointer and length describe initialised bytes of `self.buf`.
            let n = unsafe { libc::write(2, self.buf[off..].as_ptr().cast(), self.len - off) };
            if n <= 0 {
                break;
            }
            off += n as usize;
        }
    }
}

impl fmt::Write for StderrLine {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Leave room for the newline; truncate what does not fit.
        let room = self.buf.len() - 1 - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Reports a rejected variable on one stderr line: the value, what is wrong with it, what the
/// variable accepts, and the default kept.
pub(crate) fn complain(
    var: &str,
    value: &[u8],
    err: ParseError,
    values: &str,
    kept: &dyn fmt::Display,
) {
    use fmt::Write;
    let mut l = StderrLine::new();
    let _ = write!(l, "heapsight: ignoring ");
    write_assignment(&mut l, var, value);
    let _ = write!(l, ": {err}; expected {values}; keeping {kept}");
    l.emit();
}

/// `VAR="value"` with at most 64 bytes of the value, anything unprintable escaped.
fn write_assignment(l: &mut impl fmt::Write, var: &str, value: &[u8]) {
    let _ = write!(l, "{var}=\"");
    for &c in value.iter().take(64) {
        if c.is_ascii_graphic() || c == b' ' {
            let _ = l.write_char(c as char);
        } else {
            let _ = write!(l, "\\x{c:02x}");
        }
    }
    let _ = write!(l, "{}\"", if value.len() > 64 { "..." } else { "" });
}

/// Where `HEAPSIGHT_HTTP_ADDR` asks the server to listen.
#[cfg_attr(not(feature = "http"), allow(dead_code))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpAddr {
    /// `host:port` for `TcpListener::bind`.
    pub bind: String,
    /// Given in Go's `:PORT` form: every IPv4 interface, not loopback.
    pub all_interfaces: bool,
}

/// What `HEAPSIGHT_HTTP_ADDR` accepts, as its error message says it.
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) const HTTP_ADDR_VALUES: &str =
    "HOST:PORT with a port from 0 to 65535 (127.0.0.1:6060, localhost:6060, [::1]:6060), or :PORT for all interfaces as in Go";

/// Parses `HEAPSIGHT_HTTP_ADDR`: `HOST:PORT`, `[IPv6]:PORT`, or Go's `:PORT` (all interfaces).
/// Only the form is checked here; whether the host resolves is the bind's business.
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) fn parse_http_addr(s: &str) -> Result<HttpAddr, ParseError> {
    let s = s.trim();
    let (host, port) = match s.rsplit_once(':') {
        Some(hp) => hp,
        None => return Err(ParseError::UnknownWord),
    };
    let port_ok = !port.is_empty()
        && parse_count(port.as_bytes(), 0, u16::MAX as u64).is_ok()
        && port.bytes().all(|c| c.is_ascii_digit());
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner.ends_with(']') && inner.len() > 1
    } else {
        !host.contains(|c: char| c == ':' || c == '[' || c == ']' || c.is_whitespace())
    };
    if !port_ok || !host_ok {
        return Err(ParseError::UnknownWord);
    }
    Ok(if host.is_empty() {
        HttpAddr {
            bind: format!("0.0.0.0:{port}"),
            all_interfaces: true,
        }
    } else {
        HttpAddr {
            bind: s.to_string(),
            all_interfaces: false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes(b"524288"), Ok(524288));
        assert_eq!(parse_bytes(b" 512KiB "), Ok(524288));
        assert_eq!(parse_bytes(b"512k"), Ok(524288));
        assert_eq!(parse_bytes(b"1M"), Ok(1 << 20));
        assert_eq!(parse_bytes(b"2 GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes(b"0"), Ok(0));
        assert_eq!(parse_bytes(b"1"), Ok(1));
        assert_eq!(parse_bytes(b"abc"), Err(ParseError::NotANumber));
        assert_eq!(parse_bytes(b"-1"), Err(ParseError::NotANumber));
        assert_eq!(parse_bytes(b"1.5"), Err(ParseError::NotANumber));
        assert_eq!(parse_bytes(b""), Err(ParseError::NotANumber));
        assert_eq!(parse_bytes(b"12x"), Err(ParseError::NotANumber));
        assert_eq!(
            parse_bytes(b"99999999999999999999999"),
            Err(ParseError::TooLarge)
        );
        assert_eq!(parse_bytes(b"17179869184G"), Err(ParseError::TooLarge));
    }

    #[test]
    fn every_unit_spelling_in_any_case() {
        for unit in ["k", "K", "kb", "KB", "Kb", "kib", "KiB", "KIB", " KiB"] {
            let v = format!("64{unit}");
            assert_eq!(parse_bytes(v.as_bytes()), Ok(65536), "{v}");
        }
        for unit in ["m", "M", "mb", "MB", "mib", "MiB"] {
            let v = format!("1{unit}");
            assert_eq!(parse_bytes(v.as_bytes()), Ok(1 << 20), "{v}");
        }
        for unit in ["g", "GB", "gib", "GiB"] {
            let v = format!("1{unit}");
            assert_eq!(parse_bytes(v.as_bytes()), Ok(1 << 30), "{v}");
        }
        assert_eq!(parse_bytes(b"100b"), Ok(100));
        assert_eq!(parse_bytes(b"100B"), Ok(100));
        for bad in ["64kbb", "64t", "64 k b", "64ki", "64bk", "k64"] {
            assert_eq!(
                parse_bytes(bad.as_bytes()),
                Err(ParseError::NotANumber),
                "{bad}"
            );
        }
    }

    #[test]
    fn unwinder_names_in_any_case() {
        assert_eq!(parse_unwinder(b"FP"), Ok(Unwinder::FramePointers));
        assert_eq!(parse_unwinder(b" Dwarf "), Ok(Unwinder::Dwarf));
        assert_eq!(parse_unwinder(b"AUTO"), Ok(Unwinder::Auto));
        assert_eq!(
            parse_unwinder(b"Frame-Pointers"),
            Ok(Unwinder::FramePointers)
        );
        assert_eq!(parse_unwinder(b"libunwind"), Err(ParseError::UnknownWord));
        assert_eq!(parse_unwinder(b""), Err(ParseError::UnknownWord));
    }

    #[test]
    fn http_addresses() {
        let a = parse_http_addr(":6060").unwrap();
        assert_eq!(a.bind, "0.0.0.0:6060");
        assert!(a.all_interfaces);
        for ok in [
            "127.0.0.1:6060",
            "localhost:0",
            "[::1]:6060",
            "0.0.0.0:65535",
        ] {
            let a = parse_http_addr(ok).unwrap();
            assert_eq!((a.bind.as_str(), a.all_interfaces), (ok, false));
        }
        for bad in [
            "6060", "", ":", "host:", ":65536", ":-1", "::1:6060", "a b:1", "[]:1", ":60x",
        ] {
            assert!(parse_http_addr(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn settings_from_a_table() {
        let s = settings_from(|name| match name {
            b"HEAPSIGHT_SAMPLE_RATE\0" => Some(b"64kb"),
            b"HEAPSIGHT_MAX_DEPTH\0" => Some(b"0"),
            b"HEAPSIGHT_UNWINDER\0" => Some(b"DWARF"),
            _ => None,
        });
        assert_eq!(
            s,
            EnvSettings {
                sample_rate: Some(65536),
                max_depth: None,
                max_sites: None,
                unwinder: Some(Unwinder::Dwarf),
            }
        );
    }

    #[test]
    fn dump_settings_from_a_table() {
        let s = dump_settings_from(|name| match name {
            b"HEAPSIGHT_DUMP_MIN_INTERVAL\0" => Some(b"0"),
            b"HEAPSIGHT_DUMP_KEEP\0" => Some(b"0"),
            b"HEAPSIGHT_DUMP_MAX_BYTES\0" => Some(b"64MiB"),
            _ => None,
        });
        assert_eq!(
            s,
            DumpSettings {
                min_interval_secs: Some(0),
                keep: None,
                max_bytes: Some(64 << 20),
            }
        );
        let s = dump_settings_from(|name| match name {
            b"HEAPSIGHT_DUMP_MIN_INTERVAL\0" => Some(b"1m"),
            b"HEAPSIGHT_DUMP_KEEP\0" => Some(b"3"),
            b"HEAPSIGHT_DUMP_MAX_BYTES\0" => Some(b"0"),
            _ => None,
        });
        assert_eq!(
            s,
            DumpSettings {
                min_interval_secs: None,
                keep: Some(3),
                max_bytes: None,
            }
        );
    }

    #[test]
    fn messages_name_the_range() {
        let mut l = String::new();
        write_assignment(&mut l, "V", b"a\x01");
        assert_eq!(l, "V=\"a\\x01\"");
        for (e, want) in [
            (parse_count(b"0", 1, 256), ParseError::TooSmall),
            (parse_count(b"-1", 1, 256), ParseError::NotANumber),
            (parse_count(b"1000", 1, 256), ParseError::TooLarge),
        ] {
            assert_eq!(e, Err(want));
        }
        assert!(MAX_DEPTH_VALUES.contains(&MAX_DEPTH_LIMIT.to_string()));
        assert!(MAX_SITES_VALUES.contains(&MAX_SITES_LIMIT.to_string()));
    }

    #[test]
    fn counts() {
        assert_eq!(parse_count(b"64", 1, 256), Ok(64));
        assert_eq!(parse_count(b"0", 1, 256), Err(ParseError::TooSmall));
        assert_eq!(parse_count(b"257", 1, 256), Err(ParseError::TooLarge));
        assert_eq!(parse_count(b"1k", 1, 4096), Err(ParseError::NotANumber));
    }

    #[test]
    fn line_truncates_without_panicking() {
        use core::fmt::Write;
        let mut l = StderrLine::new();
        for _ in 0..100 {
            let _ = l.write_str("0123456789");
        }
        assert_eq!(l.len, 511);
    }
}
