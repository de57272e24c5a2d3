//! A minimal protocol-buffers writer: exactly what `profile.proto` needs, nothing more.
//!
//! Why hand-rolled rather than `prost`: the pprof schema is small and frozen (a dozen messages of
//! integers, strings and repeated integers), we only ever *write* it, and Go's runtime does the
//! same in ~150 lines (`runtime/pprof/protobuf.go`). `prost` would add build-time code generation
//! (`prost-build` wants `protoc` at build time, or a vendored generated file to keep in sync) and
//! several dependencies to every program that links this allocator. The writer below is a varint
//! encoder, a field-key encoder and length-delimited nesting; it is tested against a naive oracle
//! and the output is checked with `protoc --decode_raw` and `go tool pprof` in the tests.
//!
//! Wire format reminders: a field key is `(field_number << 3) | wire_type`; wire type 0 is a
//! varint, 2 is length-delimited (strings, nested messages, packed repeated scalars). Integers
//! are base-128 varints, least significant group first, high bit = "more bytes follow". Negative
//! `int64` values take 10 bytes (two's complement as `u64`); pprof never has any.

const VARINT: u64 = 0;
const LEN: u64 = 2;
#[cfg(feature = "otlp")]
const I64: u64 = 1;

/// An append-only protobuf encoder.
#[derive(Default)]
pub(crate) struct Encoder {
    pub buf: Vec<u8>,
}

/// Appends `x` as a base-128 varint.
pub(crate) fn put_varint(buf: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        buf.push(x as u8 | 0x80);
        x >>= 7;
    }
    buf.push(x as u8);
}

impl Encoder {
    fn key(&mut self, field: u32, wire: u64) {
        put_varint(&mut self.buf, (field as u64) << 3 | wire);
    }

    /// A `uint64` field, written even when 0 (proto3 readers treat 0 and absent alike).
    pub fn u64(&mut self, field: u32, x: u64) {
        self.key(field, VARINT);
        put_varint(&mut self.buf, x);
    }

    /// An optional `uint64`/`int64` field: omitted when 0, as proto3 does for defaults.
    pub fn u64_opt(&mut self, field: u32, x: u64) {
        if x != 0 {
            self.u64(field, x);
        }
    }

    /// An `int64` field (two's complement for negatives), omitted when 0.
    pub fn i64_opt(&mut self, field: u32, x: i64) {
        self.u64_opt(field, x as u64);
    }

    /// A `fixed64` field (wire type 1, eight little-endian bytes), omitted when 0.
    #[cfg(feature = "otlp")]
    pub fn fixed64_opt(&mut self, field: u32, x: u64) {
        if x != 0 {
            self.key(field, I64);
            self.buf.extend_from_slice(&x.to_le_bytes());
        }
    }

    /// A `bytes` field, omitted when empty.
    #[cfg(feature = "otlp")]
    pub fn bytes_opt(&mut self, field: u32, b: &[u8]) {
        if !b.is_empty() {
            self.key(field, LEN);
            put_varint(&mut self.buf, b.len() as u64);
            self.buf.extend_from_slice(b);
        }
    }

    /// A `bool` field, omitted when false.
    pub fn bool_opt(&mut self, field: u32, x: bool) {
        self.u64_opt(field, x as u64);
    }

    /// A `string` field (always written: the string table needs its empty entry 0).
    pub fn string(&mut self, field: u32, s: &str) {
        self.key(field, LEN);
        put_varint(&mut self.buf, s.len() as u64);
        self.buf.extend_from_slice(s.as_bytes());
    }

    /// A packed `repeated uint64` / `repeated int64` field (omitted when empty).
    pub fn packed(&mut self, field: u32, xs: impl IntoIterator<Item = u64> + Clone) {
        let len: usize = xs.clone().into_iter().map(varint_len).sum();
        if len == 0 {
            return;
        }
        self.key(field, LEN);
        put_varint(&mut self.buf, len as u64);
        self.buf.reserve(len);
        for x in xs {
            put_varint(&mut self.buf, x);
        }
    }

    /// A nested message: `body` writes its fields, then the key and length are put in front of
    /// them (one `memmove` of the body, which is small: a sample, a location, a function).
    pub fn message(&mut self, field: u32, body: impl FnOnce(&mut Encoder)) {
        let start = self.buf.len();
        body(self);
        let len = self.buf.len() - start;
        let mut head = [0u8; 20];
        let mut n = write_varint(&mut head, (field as u64) << 3 | LEN);
        n += write_varint(&mut head[n..], len as u64);
        self.buf.extend_from_slice(&head[..n]);
        self.buf.copy_within(start..start + len, start + n);
        self.buf[start..start + n].copy_from_slice(&head[..n]);
    }
}

/// Writes `x` as a varint into `out` (at least 10 bytes), returning the length.
fn write_varint(out: &mut [u8], mut x: u64) -> usize {
    let mut i = 0;
    while x >= 0x80 {
        out[i] = x as u8 | 0x80;
        x >>= 7;
        i += 1;
    }
    out[i] = x as u8;
    i + 1
}

/// Bytes a varint takes.
pub(crate) fn varint_len(x: u64) -> usize {
    (64 - (x | 1).leading_zeros() as usize).div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Naive oracle: the varint as base-128 digits computed by repeated division, with the
    /// continuation bit set on all but the last.
    fn oracle(x: u64) -> Vec<u8> {
        let mut digits = Vec::new();
        let mut v = x as u128;
        loop {
            digits.push((v % 128) as u8);
            v /= 128;
            if v == 0 {
                break;
            }
        }
        let n = digits.len();
        for d in &mut digits[..n - 1] {
            *d += 128;
        }
        digits
    }

    /// Naive decoder for round trips.
    fn decode(b: &[u8]) -> (u64, usize) {
        let mut x = 0u128;
        for (i, &byte) in b.iter().enumerate() {
            x += ((byte & 0x7f) as u128) << (7 * i);
            if byte < 0x80 {
                return (x as u64, i + 1);
            }
        }
        panic!("truncated varint")
    }

    #[test]
    fn varints_match_the_oracle() {
        let mut xs = vec![
            0u64,
            1,
            127,
            128,
            255,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            u64::MAX,
            i64::MAX as u64,
        ];
        for s in 0..64 {
            xs.push(1 << s);
            xs.push((1u64 << s) - 1);
            xs.push((1u64 << s).wrapping_add(12345));
        }
        for x in xs {
            let mut b = Vec::new();
            put_varint(&mut b, x);
            assert_eq!(b, oracle(x), "{x}");
            assert_eq!(varint_len(x), b.len(), "{x}");
            assert_eq!(decode(&b), (x, b.len()));
        }
        // The spec's own example: 300 = AC 02.
        let mut b = Vec::new();
        put_varint(&mut b, 300);
        assert_eq!(b, [0xAC, 0x02]);
    }

    #[test]
    fn fields_and_nesting() {
        let mut e = Encoder::default();
        e.u64(1, 150);
        e.u64_opt(2, 0);
        e.string(3, "hi");
        e.message(4, |e| {
            e.packed(1, [3u64, 270, 86942]);
            e.message(2, |e| e.bool_opt(1, true));
        });
        // field 1 varint 150; field 3 "hi"; field 4 { packed 1 [3,270,86942]; 2 { 1: 1 } }
        let want = [
            0x08, 0x96, 0x01, //
            0x1a, 0x02, b'h', b'i', //
            0x22, 0x0c, 0x0a, 0x06, 0x03, 0x8e, 0x02, 0x9e, 0xa7, 0x05, 0x12, 0x02, 0x08, 0x01,
        ];
        assert_eq!(e.buf, want);
        // Negative int64 takes ten bytes.
        let mut e = Encoder::default();
        e.i64_opt(1, -1);
        assert_eq!(e.buf.len(), 11);
    }
}
