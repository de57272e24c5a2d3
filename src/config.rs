//! Start-up configuration from the environment, read without allocating.
//!
//! The variables are read once, by the first allocation of the process (usually before `main`,
//! when there is one thread), with `libc::getenv`: no `String`, no lock, no re-entry into the
//! allocator. A bad value prints one line on stderr through `write(2)` from a stack buffer and the
//! default stays.
use core::fmt;

/// Why an environment value was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseError {
    /// Empty, or not digits with an optional unit (`abc`, `-1`, `1.5`).
    NotANumber,
    /// Does not fit in 64 bits, or above the variable's limit.
    TooLarge,
    /// Not one of the accepted words.
    UnknownWord,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParseError::NotANumber => "not a whole number of bytes (e.g. 524288 or 512KiB)",
            ParseError::TooLarge => "too large",
            ParseError::UnknownWord => "not one of the accepted values",
        })
    }
}

impl std::error::Error for ParseError {}

/// Parses a byte count: decimal digits with an optional binary unit `K`/`KiB`/`M`/`MiB`/`G`/`GiB`
/// (case-insensitive, `KB` accepted as 1024 too), surrounding spaces ignored.
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
    let mult: u64 = match unit.len() {
        0 => 1,
        _ => {
            let shift = match unit[0].to_ascii_lowercase() {
                b'k' => 10,
                b'm' => 20,
                b'g' => 30,
                b'b' if unit.len() == 1 => 0,
                _ => return Err(ParseError::NotANumber),
            };
            let rest: &[u8] = &unit[1..];
            let ok = rest.is_empty()
                || rest.eq_ignore_ascii_case(b"ib")
                || rest.eq_ignore_ascii_case(b"b")
                || shift == 0;
            if !ok {
                return Err(ParseError::NotANumber);
            }
            1u64 << shift
        }
    };
    n.checked_mul(mult).ok_or(ParseError::TooLarge)
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

/// Parses a count with an upper bound (depth, site cap).
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
        return Err(ParseError::NotANumber);
    }
    Ok(n)
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

/// A fixed-capacity line buffer for messages written from inside the allocator.
pub(crate) struct Line {
    buf: [u8; 512],
    len: usize,
}

impl Line {
    pub fn new() -> Self {
        Line {
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

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Leave room for the newline; truncate what does not fit.
        let room = self.buf.len() - 1 - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Reports a rejected variable on one stderr line.
pub(crate) fn complain(var: &str, value: &[u8], err: ParseError, kept: &dyn fmt::Display) {
    use fmt::Write;
    let mut l = Line::new();
    // Show at most 64 bytes of the value, escaping anything unprintable.
    let _ = write!(l, "heapsight: ignoring {var}=\"");
    for &c in value.iter().take(64) {
        if c.is_ascii_graphic() || c == b' ' {
            let _ = l.write_char(c as char);
        } else {
            let _ = write!(l, "\\x{c:02x}");
        }
    }
    let _ = write!(
        l,
        "{}\": {err}; keeping {kept}",
        if value.len() > 64 { "..." } else { "" }
    );
    l.emit();
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
    fn counts() {
        assert_eq!(parse_count(b"64", 1, 256), Ok(64));
        assert_eq!(parse_count(b"0", 1, 256), Err(ParseError::NotANumber));
        assert_eq!(parse_count(b"257", 1, 256), Err(ParseError::TooLarge));
        assert_eq!(parse_count(b"1k", 1, 4096), Err(ParseError::NotANumber));
    }

    #[test]
    fn line_truncates_without_panicking() {
        use core::fmt::Write;
        let mut l = Line::new();
        for _ in 0..100 {
            let _ = l.write_str("0123456789");
        }
        assert_eq!(l.len, 511);
    }
}
