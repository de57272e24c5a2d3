//! `/debug/pprof/symbol`: the remote symbolization protocol of Go's `net/http/pprof`, which
//! `go tool pprof` uses for a profile fetched over HTTP whose binary it does not have (pprof's
//! `internal/symbolz`).
//!
//! * `GET` with no query answers `num_symbols: 1`: pprof checks it before posting.
//! * `POST` (or `GET` with a query) of `0x…+0x…` addresses answers `num_symbols: 1` then one
//!   `0x… name` line per address it knows, echoing the address as sent. pprof sends its
//!   `Location.address`, which is the captured return address minus 1, and reads one function per
//!   location: the function the code lies in (the outermost of an inlined chain), as the
//!   in-process profile names the frame.
//!
//! With `?symbolize=0` profiles (see [`super::respond`]) a service never loads debug info for a
//! scrape; pprof asks for the names of the few addresses it shows.
use super::Response;
use crate::guard::profiler_scope;
use crate::owned::Owned;

/// Most addresses answered per request (a profile has at most a few tens of thousands of
/// locations; more is not a pprof request).
pub(crate) const MAX_ADDRESSES: usize = 100_000;

/// Addresses as pprof sends them: `+`-separated, each parsed like Go's `strconv.ParseUint(s, 0,
/// 64)` (`0x` hex, leading `0` octal, else decimal). Unparsable and zero words are skipped, as Go
/// does; `None` past [`MAX_ADDRESSES`].
pub(crate) fn parse_addresses(input: &[u8]) -> Option<Vec<u64>> {
    let mut out = Vec::new();
    for word in input.split(|&b| b == b'+') {
        let Ok(w) = core::str::from_utf8(word) else {
            continue;
        };
        let w = w.trim();
        let v = if let Some(h) = w.strip_prefix("0x").or_else(|| w.strip_prefix("0X")) {
            u64::from_str_radix(h, 16)
        } else if w.len() > 1 && w.starts_with('0') {
            u64::from_str_radix(&w[1..], 8)
        } else {
            w.parse()
        };
        if let Ok(v) = v
            .map_err(drop)
            .and_then(|v| if v == 0 { Err(()) } else { Ok(v) })
        {
            if out.len() == MAX_ADDRESSES {
                return None;
            }
            out.push(v);
        }
    }
    Some(out)
}

/// The answer to a symbol request whose addresses are `input` (a POST body or a GET query).
pub(crate) fn answer(input: &[u8]) -> Response {
    let Some(addrs) = parse_addresses(input) else {
        return Response::text(
            400,
            format!("more than {MAX_ADDRESSES} addresses in one request"),
        );
    };
    // Resolved and formatted inside the guard (the profiler's memory), then copied into a body
    // the caller owns, like every response body.
    let text = profiler_scope(|| {
        let ret: Vec<usize> = addrs.iter().map(|&a| a.wrapping_add(1) as usize).collect();
        let syms = crate::symbols::resolve_all(&ret);
        let mut text = String::from("num_symbols: 1\n");
        for (a, s) in addrs.iter().zip(&syms) {
            if let Some(f) = s.last().filter(|f| f.function != "??") {
                use std::fmt::Write as _;
                // The name pprof's shortening leaves readable (it deletes `<...>` groups, which
                // would turn `<alloc::raw_vec::RawVecInner>::finish_grow` into `::finish_grow`),
                // as the in-process profile's `Function.name`.
                let _ = writeln!(text, "{a:#x} {}", crate::profile::display_name(&f.function));
            }
        }
        Owned::new(text)
    });
    Response::new(200, "text/plain; charset=utf-8", text.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_like_go_parse_uint_base_0() {
        assert_eq!(
            parse_addresses(b"0x10+0X1f+017+42+0+junk++0xzz"),
            Some(vec![0x10, 0x1f, 0o17, 42])
        );
        assert_eq!(parse_addresses(b""), Some(vec![]));
        let many = vec!["0x1"; MAX_ADDRESSES + 1].join("+");
        assert_eq!(parse_addresses(many.as_bytes()), None);
    }

    #[inline(never)]
    fn a_named_function() -> usize {
        a_named_function as *const () as usize
    }

    #[test]
    fn answers_the_function_at_each_address() {
        // The entry of a function, sent as pprof would send a location (return address - 1):
        // any byte of the function names it.
        let f = a_named_function() + 1;
        let r = answer(format!("{f:#x}+0x1").as_bytes());
        assert_eq!(r.status, 200);
        let text = String::from_utf8(r.body).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("num_symbols: 1"));
        let line = lines.next().expect("one symbol line");
        assert!(
            line.starts_with(&format!("{f:#x} "))
                && line.ends_with("symbol::tests::a_named_function"),
            "{line}"
        );
        assert_eq!(lines.next(), None, "address 0x1 is not known");
    }
}
