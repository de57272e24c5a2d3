//! The OTLP profiles encoder: two snapshots (in-use now, allocations of the interval) to one
//! `ExportProfilesServiceRequest` of `opentelemetry/proto/collector/profiles/v1development`.
//!
//! The schema is the one the Collector v0.165 / pdata v1.71 accepts (`go.opentelemetry.io/proto/
//! slim/otlp/profiles/v1development` v0.4.1, OTLP proto v1.9+): one `ProfilesDictionary` per
//! request shared by every profile in it (strings, mappings, locations, functions, stacks,
//! attributes; entry 0 of each table is its zero value), and one `sample_type` per `Profile`. A
//! Go-style heap profile therefore becomes four profiles under one scope, with Go's names, which
//! is what Pyroscope files as `memory:inuse_space:bytes:space:bytes` and so on:
//!
//! | profile | values | time / duration |
//! |---|---|---|
//! | `inuse_space/bytes`, `inuse_objects/count` | live now (the snapshot) | snapshot time, 0 |
//! | `alloc_space/bytes`, `alloc_objects/count` | allocated during the interval (`delta`) | interval start, its length |
//!
//! `period_type = space/bytes`, `period` = the sample rate. Values are the unbiased estimates
//! rounded per sample, as in the pprof output. Each sample carries the attributes `bytes` (the
//! allocation size, unit `bytes`) and, when tagged, `tag`; each mapping carries its GNU build ID
//! as `process.executable.build_id.gnu` (the semantic-conventions key), so a backend can
//! symbolize; locations carry both the address and the names heapsight resolved.
//!
//! Field numbers are written next to each message, copied from the `.proto` files.
use std::collections::HashMap;

use crate::profile::maps::Mapping;
use crate::profile::proto::Encoder;
use crate::profile::{display_name, SampleFrames, SampleType};
use crate::sites::FxBuild;
use crate::snapshot::HeapProfile;
use crate::symbols::Frame;

/// A resource or attribute value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Str(String),
    Int(i64),
}

/// Everything that goes into a request besides the two profiles.
pub(crate) struct Meta<'a> {
    pub resource: &'a [(String, Value)],
    pub mappings: &'a [Mapping],
    /// Distinguishes the profiles of one process: mixed into each `profile_id`.
    pub seq: u64,
}

/// Interned dictionary tables. Index 0 of each is the zero value, as the format requires.
struct Dict {
    strings: Vec<String>,
    string_ix: HashMap<String, i32, FxBuild>,
    /// (name, system name, file) string indices.
    functions: Vec<(i32, i32, i32)>,
    function_ix: HashMap<(i32, i32, i32), i32, FxBuild>,
    locations: Vec<Location>,
    location_ix: HashMap<(usize, usize), i32, FxBuild>,
    stacks: Vec<Vec<i32>>,
    stack_ix: HashMap<Vec<i32>, i32, FxBuild>,
    /// (key, value, unit) with strings interned.
    attributes: Vec<(i32, AttrValue, i32)>,
    attribute_ix: HashMap<(i32, AttrValue, i32), i32, FxBuild>,
    /// Mappings actually used, by index into `Meta::mappings`, in table order (from 1).
    mappings_used: Vec<usize>,
    mapping_ix: HashMap<usize, i32, FxBuild>,
}

/// A location: (mapping index, address, lines of (function index, line)).
type Location = (i32, u64, Vec<(i32, i64)>);

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum AttrValue {
    Str(i32),
    Int(i64),
}

impl Dict {
    fn new() -> Self {
        let mut d = Dict {
            strings: Vec::new(),
            string_ix: HashMap::default(),
            functions: vec![(0, 0, 0)],
            function_ix: HashMap::default(),
            locations: vec![(0, 0, Vec::new())],
            location_ix: HashMap::default(),
            stacks: vec![Vec::new()],
            stack_ix: HashMap::default(),
            attributes: vec![(0, AttrValue::Int(0), 0)],
            attribute_ix: HashMap::default(),
            mappings_used: Vec::new(),
            mapping_ix: HashMap::default(),
        };
        d.string("");
        d
    }

    fn string(&mut self, s: &str) -> i32 {
        if let Some(&i) = self.string_ix.get(s) {
            return i;
        }
        let i = self.strings.len() as i32;
        self.strings.push(s.to_string());
        self.string_ix.insert(s.to_string(), i);
        i
    }

    fn attribute(&mut self, key: &str, value: &Value, unit: &str) -> i32 {
        let k = self.string(key);
        let v = match value {
            Value::Str(s) => AttrValue::Str(self.string(s)),
            Value::Int(x) => AttrValue::Int(*x),
        };
        let u = if unit.is_empty() {
            0
        } else {
            self.string(unit)
        };
        let next = self.attributes.len() as i32;
        *self.attribute_ix.entry((k, v, u)).or_insert_with(|| {
            self.attributes.push((k, v, u));
            next
        })
    }

    fn mapping(&mut self, mappings: &[Mapping], addr: u64) -> i32 {
        let Some(m) = mappings
            .iter()
            .position(|m| m.start <= addr && addr < m.limit)
        else {
            return 0;
        };
        let next = self.mappings_used.len() as i32 + 1;
        *self.mapping_ix.entry(m).or_insert_with(|| {
            self.mappings_used.push(m);
            next
        })
    }

    fn location(&mut self, mappings: &[Mapping], f: &Frame) -> i32 {
        if let Some(&i) = self.location_ix.get(&(f.address, f.symbols.len())) {
            return i;
        }
        // The call instruction, not the return address (0 for the overflow pseudo-location).
        let addr = (f.address as u64).saturating_sub(1);
        let mapping = self.mapping(mappings, addr);
        let mut lines = Vec::with_capacity(f.symbols.len());
        for s in f.symbols.iter().filter(|s| s.function != "??") {
            let key = (
                self.string(&display_name(&s.function)),
                self.string(&s.function),
                s.file.as_deref().map_or(0, |file| self.string(file)),
            );
            let next = self.functions.len() as i32;
            let fid = *self.function_ix.entry(key).or_insert_with(|| {
                self.functions.push(key);
                next
            });
            lines.push((fid, s.line.unwrap_or(0) as i64));
        }
        let i = self.locations.len() as i32;
        self.locations.push((mapping, addr, lines));
        self.location_ix.insert((f.address, f.symbols.len()), i);
        i
    }

    fn stack(&mut self, locations: Vec<i32>) -> i32 {
        if let Some(&i) = self.stack_ix.get(&locations) {
            return i;
        }
        let i = self.stacks.len() as i32;
        self.stacks.push(locations.clone());
        self.stack_ix.insert(locations, i);
        i
    }
}

/// One encoded `Sample`: (stack index, attribute indices, value).
type Sample = (i32, Vec<i32>, i64);

/// The samples of `p` for the two sample types `types`, zero values left out.
fn samples(p: &HeapProfile, types: [SampleType; 2], meta: &Meta, d: &mut Dict) -> [Vec<Sample>; 2] {
    let frames = SampleFrames::new(p);
    let mut out = [Vec::new(), Vec::new()];
    for r in &p.buckets {
        let values = types.map(|t| t.of(&r.est).round() as i64);
        if values == [0, 0] {
            continue;
        }
        let locs = frames
            .of(p, r.stack)
            .iter()
            .map(|f| d.location(meta.mappings, f))
            .collect();
        let stack = d.stack(locs);
        let size = r.label_size();
        let mut attrs = vec![d.attribute("bytes", &Value::Int(size), "bytes")];
        if let Some(tag) = p.tag_name(r.tag) {
            attrs.push(d.attribute("tag", &Value::Str(tag.to_string()), ""));
        }
        for (i, v) in values.into_iter().enumerate() {
            if v != 0 {
                out[i].push((stack, attrs.clone(), v));
            }
        }
    }
    out
}

/// A 16-byte profile id, never all zero: a hash of the time, the process id and the sequence.
fn profile_id(time_nanos: i64, seq: u64, kind: u64) -> [u8; 16] {
    let mix = |mut x: u64| {
        // splitmix64's finalizer.
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    };
    let a = mix(time_nanos as u64 ^ (std::process::id() as u64) << 32);
    let b = mix(a ^ seq.wrapping_mul(4) ^ kind) | 1;
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&a.to_le_bytes());
    id[8..].copy_from_slice(&b.to_le_bytes());
    id
}

fn any_value(e: &mut Encoder, v: &Value) {
    // AnyValue { string_value = 1, bool_value = 2, int_value = 3, ... }.
    match v {
        Value::Str(s) => e.string(1, s),
        Value::Int(x) => e.u64(3, *x as u64),
    }
}

/// The request body: `ExportProfilesServiceRequest { resource_profiles = 1, dictionary = 2 }`.
pub(crate) fn request(inuse: &HeapProfile, allocs: &HeapProfile, meta: &Meta) -> Vec<u8> {
    let mut d = Dict::new();
    let [inuse_space, inuse_objects] = samples(
        inuse,
        [SampleType::InuseSpace, SampleType::InuseObjects],
        meta,
        &mut d,
    );
    let [alloc_space, alloc_objects] = samples(
        allocs,
        [SampleType::AllocSpace, SampleType::AllocObjects],
        meta,
        &mut d,
    );
    let build_id_key = "process.executable.build_id.gnu";
    let mapping_attrs: Vec<i32> = d
        .mappings_used
        .clone()
        .into_iter()
        .map(|m| {
            let id = &meta.mappings[m].build_id;
            if id.is_empty() {
                0
            } else {
                d.attribute(build_id_key, &Value::Str(id.clone()), "")
            }
        })
        .collect();
    let mapping_files: Vec<i32> = d
        .mappings_used
        .clone()
        .into_iter()
        .map(|m| d.string(&meta.mappings[m].file))
        .collect();
    let period_type = (d.string("space"), d.string("bytes"));
    let types: Vec<(i32, i32)> = [
        SampleType::InuseSpace,
        SampleType::InuseObjects,
        SampleType::AllocSpace,
        SampleType::AllocObjects,
    ]
    .iter()
    .map(|t| (d.string(t.name()), d.string(t.unit())))
    .collect();

    let mut e = Encoder::default();
    // ResourceProfiles = 1 { resource = 1, scope_profiles = 2 }.
    e.message(1, |e| {
        // Resource { attributes = 1 }: KeyValue { key = 1, value = 2 }.
        e.message(1, |e| {
            for (k, v) in meta.resource {
                e.message(1, |e| {
                    e.string(1, k);
                    e.message(2, |e| any_value(e, v));
                });
            }
        });
        // ScopeProfiles { scope = 1, profiles = 2 }; InstrumentationScope { name = 1, version = 2 }.
        e.message(2, |e| {
            e.message(1, |e| {
                e.string(1, "heapsight");
                e.string(2, env!("CARGO_PKG_VERSION"));
            });
            let profiles: [(&HeapProfile, &Vec<Sample>); 4] = [
                (inuse, &inuse_space),
                (inuse, &inuse_objects),
                (allocs, &alloc_space),
                (allocs, &alloc_objects),
            ];
            for (kind, ((p, samples), ty)) in profiles.iter().zip(&types).enumerate() {
                // Profile { sample_type = 1, samples = 2, time_unix_nano = 3 (fixed64),
                // duration_nano = 4, period_type = 5, period = 6, profile_id = 7 }.
                e.message(2, |e| {
                    e.message(1, |e| {
                        e.u64_opt(1, ty.0 as u64);
                        e.u64_opt(2, ty.1 as u64);
                    });
                    for (stack, attrs, value) in samples.iter() {
                        // Sample { stack_index = 1, attribute_indices = 2, values = 4 }.
                        e.message(2, |e| {
                            e.u64_opt(1, *stack as u64);
                            e.packed(2, attrs.iter().map(|&a| a as u64));
                            e.packed(4, [*value as u64]);
                        });
                    }
                    // A delta's time is its start; a snapshot's its own instant.
                    let start = p.time_nanos - p.duration_nanos;
                    e.fixed64_opt(3, start.max(0) as u64);
                    e.u64_opt(4, p.duration_nanos.max(0) as u64);
                    e.message(5, |e| {
                        e.u64_opt(1, period_type.0 as u64);
                        e.u64_opt(2, period_type.1 as u64);
                    });
                    e.i64_opt(6, p.rate as i64);
                    e.bytes_opt(7, &profile_id(p.time_nanos, meta.seq, kind as u64));
                });
            }
        });
    });
    // ProfilesDictionary { mapping_table = 1, location_table = 2, function_table = 3,
    // link_table = 4, string_table = 5, attribute_table = 6, stack_table = 7 }.
    e.message(2, |e| {
        // Mapping { memory_start = 1, memory_limit = 2, file_offset = 3, filename_strindex = 4,
        // attribute_indices = 5 }; entry 0 is empty.
        e.message(1, |_| {});
        for (i, &m) in d.mappings_used.iter().enumerate() {
            let m = &meta.mappings[m];
            e.message(1, |e| {
                e.u64_opt(1, m.start);
                e.u64_opt(2, m.limit);
                e.u64_opt(3, m.offset);
                e.u64_opt(4, mapping_files[i] as u64);
                if mapping_attrs[i] != 0 {
                    e.packed(5, [mapping_attrs[i] as u64]);
                }
            });
        }
        // Location { mapping_index = 1, address = 2, lines = 3 }; Line { function_index = 1,
        // line = 2 }.
        for (mapping, addr, lines) in &d.locations {
            e.message(2, |e| {
                e.u64_opt(1, *mapping as u64);
                e.u64_opt(2, *addr);
                for (f, line) in lines {
                    e.message(3, |e| {
                        e.u64_opt(1, *f as u64);
                        e.i64_opt(2, *line);
                    });
                }
            });
        }
        // Function { name_strindex = 1, system_name_strindex = 2, filename_strindex = 3 }.
        for (name, system, file) in &d.functions {
            e.message(3, |e| {
                e.u64_opt(1, *name as u64);
                e.u64_opt(2, *system as u64);
                e.u64_opt(3, *file as u64);
            });
        }
        // Link { trace_id = 1, span_id = 2 }: only the zero entry, with full-length zero ids.
        e.message(4, |e| {
            e.bytes_opt(1, &[0; 16]);
            e.bytes_opt(2, &[0; 8]);
        });
        for s in &d.strings {
            e.string(5, s);
        }
        // KeyValueAndUnit { key_strindex = 1, value = 2, unit_strindex = 3 }.
        e.message(6, |_| {});
        for (k, v, u) in &d.attributes[1..] {
            e.message(6, |e| {
                e.u64_opt(1, *k as u64);
                e.message(2, |e| match v {
                    AttrValue::Str(s) => e.string(1, &d.strings[*s as usize]),
                    AttrValue::Int(x) => e.u64(3, *x as u64),
                });
                e.u64_opt(3, *u as u64);
            });
        }
        // Stack { location_indices = 1 }.
        for s in &d.stacks {
            e.message(7, |e| e.packed(1, s.iter().map(|&l| l as u64)));
        }
    });
    e.buf
}
