//! Real workloads shared by every `benches/wl_*.rs` binary (one binary per global allocator, since
//! a process has exactly one). `benches/workloads.py` runs them all and prints the table.
//!
//! Command line of every binary:
//!
//! ```text
//! wl_X json|syn|seed ITERS     prepare the input, then run ITERS iterations of the workload
//! wl_X axum REQUESTS           an axum JSON service on 127.0.0.1 (2 worker threads) and, in the
//!                              same process, one keep-alive client sending REQUESTS requests
//! wl_X serve PORT SECONDS      the same service alone, for `wrk`; exits after SECONDS
//! wl_X body                    print the request body the client and the wrk script send
//! wl_X inputs                  print the inputs (file names, sizes) and exit
//! ```
//!
//! Each run prints one line `elapsed_ns=N` for its measured loop (input preparation excluded).
//! Under callgrind the instruction count per iteration (or per request) is the slope between two
//! runs with different ITERS, so everything outside the loop (start-up, input generation, the
//! runtime's threads) cancels.
//!
//! Inputs:
//! * `json`: three documents with the shape and size of json-benchmark's `canada.json` (a GeoJSON
//!   polygon: 111,126 full-precision
//!   floats in 55,563 coordinate pairs), `citm_catalog.json` (a catalogue of
//!   events and performances, mostly integers, short strings and indentation) and `twitter.json`
//!   (100 statuses with nested user and entity objects, half of them retweets that embed the
//!   original status, Japanese text, indented). They are
//!   generated here from a fixed seed rather than downloaded: no package registry ships the files,
//!   and generated documents make the benchmark self-contained. Each iteration parses each one into
//!   a `serde_json::Value` and writes it back to a `String` (json-benchmark's DOM parse and
//!   stringify).
//! * `syn`: six large Rust sources from the cargo registry's unpacked crates (syn's own expression,
//!   item and generated visitor code, serde_json, regex-syntax, hashbrown); each iteration parses
//!   each into a `syn::File` and prints it back (`ToTokens` to a `String`). The registry is searched
//!   for any version of each crate, and the largest source of the crate is used when the listed
//!   file is missing, so the list survives version changes; `inputs` prints what was picked.
//! * `seed`: `HashMap<String, Vec<String>>`, 500k appends over 10k keys, built and dropped
//!   (`kernels/nested.rs`, the same code as the README's demo).
//! * `axum`: POST `/orders` with a 1 KB JSON order; the handler deserializes it, computes the
//!   lines and total, and answers a JSON receipt (axum's `Json` extractor and response).
use std::hint::black_box;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[path = "../kernels/nested.rs"]
mod nested;

pub fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let num = |i: usize, default: u64| arg(i).parse::<u64>().unwrap_or(default);
    match arg(0) {
        "json" => {
            let docs = json_inputs();
            timed(num(1, 1), || json_iteration(&docs));
        }
        "syn" => {
            let sources = syn_inputs().into_iter().map(|(_, s)| s).collect::<Vec<_>>();
            timed(num(1, 1), || syn_iteration(&sources));
        }
        "seed" => timed(num(1, 1), || {
            black_box(nested::build_unsized(500_000, 10_000));
        }),
        "axum" => axum_in_process(num(1, 1000)),
        "serve" => serve(num(1, 3000) as u16, num(2, 60)),
        "body" => print!("{}", order_body()),
        "inputs" => {
            for (name, doc) in json_inputs() {
                println!("json {name}: {} bytes", doc.len());
            }
            for (path, src) in syn_inputs() {
                let ok = match syn::parse_file(&src) {
                    Ok(_) => "parses".to_string(),
                    Err(e) => format!("DOES NOT PARSE: {e}"),
                };
                println!("syn {}: {} bytes, {ok}", path.display(), src.len());
            }
        }
        other => {
            eprintln!(
                "unknown workload {other:?}: json|syn|seed ITERS, axum REQUESTS, serve PORT SECONDS, body, inputs"
            );
            std::process::exit(2);
        }
    }
}

fn timed(iters: u64, mut f: impl FnMut()) {
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    println!("elapsed_ns={}", t.elapsed().as_nanos());
}

// ---- json ------------------------------------------------------------------------------------

/// A small deterministic generator (xorshift64*), so the documents are the same in every run and
/// every binary.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn word(&mut self, min: usize, max: usize) -> String {
        let len = min + self.below((max - min + 1) as u64) as usize;
        (0..len)
            .map(|_| (b'a' + self.below(26) as u8) as char)
            .collect()
    }
}

fn json_inputs() -> Vec<(&'static str, String)> {
    use serde_json::{json, Map, Value};
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);

    // canada: one Polygon feature, 480 rings, 55,563 [lon, lat] pairs in all, a random walk.
    let mut rings = Vec::new();
    let mut left = 55_563usize;
    for i in 0..480 {
        let n = if i == 479 {
            left
        } else {
            (left / (480 - i)).max(4)
        };
        left -= n;
        let (mut lon, mut lat) = (-141.0 + 89.0 * r.unit(), 41.0 + 42.0 * r.unit());
        let ring: Vec<Value> = (0..n)
            .map(|_| {
                lon += (r.unit() - 0.5) * 0.02;
                lat += (r.unit() - 0.5) * 0.02;
                json!([lon, lat])
            })
            .collect();
        rings.push(Value::Array(ring));
    }
    let canada = json!({
        "type": "FeatureCollection",
        "features": [{
            "type": "Feature",
            "properties": {"name": "Canada"},
            "geometry": {"type": "Polygon", "coordinates": rings}
        }]
    });

    // citm_catalog: name tables keyed by numeric ids, 184 events, 243 performances with prices
    // and seat categories; indented like the original.
    let names = |r: &mut Rng, n: usize, base: u64| {
        let mut m = Map::new();
        for i in 0..n {
            m.insert((base + i as u64).to_string(), Value::String(r.word(6, 24)));
        }
        Value::Object(m)
    };
    let mut events = Map::new();
    for i in 0..184u64 {
        let id = 138_586_341 + i * 17;
        let topics: Vec<u64> = (0..1 + r.below(3))
            .map(|_| 324_846_099 + r.below(40))
            .collect();
        let subtopics: Vec<u64> = (0..2 + r.below(4))
            .map(|_| 337_184_262 + r.below(60))
            .collect();
        events.insert(
            id.to_string(),
            json!({
                "description": null, "id": id,
                "logo": if r.below(3) == 0 { Value::Null } else { Value::String(format!("/images/UE0AAAAACEKo6QAAAAVDSVRN-{}", r.word(4, 8))) },
                "name": r.word(8, 40), "subTopicIds": subtopics, "subjectCode": null,
                "subtitle": null, "topicIds": topics
            }),
        );
    }
    let performances: Vec<Value> = (0..243u64)
        .map(|i| {
            let cats = 2 + r.below(8);
            let prices: Vec<Value> = (0..cats)
                .map(|c| json!({"amount": 9_500 + r.below(80) * 500, "audienceSubCategoryId": 337_100_890, "seatCategoryId": 338_937_271 + c}))
                .collect();
            let seats: Vec<Value> = (0..cats)
                .map(|c| {
                    let areas: Vec<Value> = (0..3 + r.below(12))
                        .map(|a| json!({"areaId": 205_705_993 + a, "blockIds": []}))
                        .collect();
                    json!({"areas": areas, "seatCategoryId": 338_937_271 + c})
                })
                .collect();
            json!({
                "eventId": 138_586_341 + r.below(184) * 17, "id": 339_887_544 + i,
                "logo": null, "name": null, "prices": prices, "seatCategories": seats,
                "seatMapImage": null, "start": 1_372_616_000_000u64 + i * 86_400_000,
                "venueCode": "PLEYEL_PLEYEL"
            })
        })
        .collect();
    let mut topic_subtopics = Map::new();
    for i in 0..32u64 {
        let v: Vec<u64> = (0..1 + r.below(6))
            .map(|_| 337_184_262 + r.below(60))
            .collect();
        topic_subtopics.insert((324_846_099 + i).to_string(), json!(v));
    }
    let citm = json!({
        "areaNames": names(&mut r, 17, 205_705_993),
        "audienceSubCategoryNames": names(&mut r, 1, 337_100_890),
        "blockNames": {},
        "events": events,
        "performances": performances,
        "seatCategoryNames": names(&mut r, 64, 338_937_235),
        "subTopicNames": names(&mut r, 19, 337_184_262),
        "subjectNames": {},
        "topicNames": names(&mut r, 4, 324_846_099),
        "topicSubTopics": topic_subtopics,
        "venueNames": {"PLEYEL_PLEYEL": "Salle Pleyel"}
    });

    // twitter: 100 statuses, Japanese text and names, nested user and entities; indented.
    const JA: [&str; 8] = [
        "一番を目指して",
        "今日は",
        "ありがとう",
        "東京",
        "ラーメン",
        "フォロー",
        "よろしく",
        "楽しい",
    ];
    let ja =
        |r: &mut Rng, n: usize| -> String { (0..n).map(|_| JA[r.below(8) as usize]).collect() };
    let status = |r: &mut Rng, i: u64| -> Value {
        let id = 505_874_924_095_815_681u64 + i * 1_013;
        let user = json!({
            "id": 1_186_275_104u64 + r.below(1_000_000), "id_str": (1_186_275_104u64 + i).to_string(),
            "name": ja(r, 2), "screen_name": r.word(5, 15), "location": ja(r, 1),
            "description": ja(r, 8), "url": null,
            "entities": {"description": {"urls": []}},
            "protected": false, "followers_count": r.below(5000), "friends_count": r.below(5000),
            "listed_count": r.below(50), "created_at": "Sun Feb 16 16:56:22 +0000 2014",
            "favourites_count": r.below(900), "utc_offset": null, "time_zone": null,
            "geo_enabled": false, "verified": false, "statuses_count": r.below(20000),
            "lang": "ja", "contributors_enabled": false, "is_translator": false,
            "profile_background_color": "C0DEED",
            "profile_background_image_url": "http://abs.twimg.com/images/themes/theme1/bg.png",
            "profile_image_url": format!("http://pbs.twimg.com/profile_images/{}/{}_normal.jpeg", r.below(1 << 40), r.word(8, 8)),
            "profile_link_color": "0084B4", "profile_sidebar_border_color": "C0DEED",
            "profile_use_background_image": true, "default_profile": true,
            "default_profile_image": false, "following": false, "follow_request_sent": false,
            "notifications": false
        });
        let mentions: Vec<Value> = (0..r.below(3))
                .map(|_| json!({"screen_name": r.word(5, 12), "name": ja(r, 2), "id": r.below(1 << 31), "indices": [0, 12]}))
                .collect();
        let hashtags: Vec<Value> = (0..r.below(3))
            .map(|_| json!({"text": ja(r, 1), "indices": [20, 26]}))
            .collect();
        json!({
            "metadata": {"result_type": "recent", "iso_language_code": "ja"},
            "created_at": "Sun Aug 31 00:29:15 +0000 2014", "id": id, "id_str": id.to_string(),
            "text": format!("@{} {}", r.word(5, 12), ja(r, 12)),
            "source": "<a href=\"http://twitter.com/download/iphone\" rel=\"nofollow\">Twitter for iPhone</a>",
            "truncated": false, "in_reply_to_status_id": null, "in_reply_to_user_id": null,
            "user": user, "geo": null, "coordinates": null, "place": null, "contributors": null,
            "retweet_count": r.below(100), "favorite_count": r.below(100),
            "entities": {"hashtags": hashtags, "symbols": [], "urls": [], "user_mentions": mentions},
            "favorited": false, "retweeted": false, "lang": "ja"
        })
    };
    let statuses: Vec<Value> = (0..100u64)
        .map(|i| {
            let mut s = status(&mut r, i);
            if i % 2 == 0 {
                s["retweeted_status"] = status(&mut r, 1000 + i);
            }
            s
        })
        .collect();
    let twitter = json!({
        "statuses": statuses,
        "search_metadata": {"completed_in": 0.087, "max_id": 505_874_924_095_815_681u64,
            "query": "%E4%B8%80", "count": 100, "since_id": 0}
    });

    vec![
        ("canada", serde_json::to_string(&canada).unwrap()),
        ("citm_catalog", serde_json::to_string_pretty(&citm).unwrap()),
        ("twitter", serde_json::to_string_pretty(&twitter).unwrap()),
    ]
}

#[inline(never)]
fn json_iteration(docs: &[(&str, String)]) {
    for (_, text) in docs {
        let v: serde_json::Value = serde_json::from_str(text).expect("generated JSON parses");
        let out = serde_json::to_string(&v).expect("a Value serializes");
        black_box(out.len());
    }
}

// ---- syn -------------------------------------------------------------------------------------

/// (crate name prefix, preferred file inside the crate). When the file is missing in the version
/// found, the crate's largest `.rs` file under `src/` is used instead.
const SYN_SOURCES: [(&str, &str); 6] = [
    ("syn", "src/expr.rs"),
    ("syn", "src/item.rs"),
    ("syn", "src/gen/visit_mut.rs"),
    ("serde_json", "src/de.rs"),
    ("regex-syntax", "src/ast/parse.rs"),
    ("hashbrown", "src/map.rs"),
];

fn registry_roots() -> Vec<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_default();
    let mut roots: Vec<PathBuf> = std::fs::read_dir(home.join("registry/src"))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    roots.sort();
    roots
}

/// The newest unpacked version of `krate` whose major version parses with this syn (2.x for syn).
fn crate_dir(krate: &str) -> Option<PathBuf> {
    let mut found: Vec<(Vec<u64>, PathBuf)> = Vec::new();
    for root in registry_roots() {
        for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(ver) = name.strip_prefix(&format!("{krate}-")) else {
                continue;
            };
            let Ok(v) = ver
                .split('.')
                .map(str::parse::<u64>)
                .collect::<Result<Vec<_>, _>>()
            else {
                continue; // another crate with this prefix, or a pre-release
            };
            if krate == "syn" && v.first() != Some(&2) {
                continue; // the version this benchmark links: its own sources are valid syn 2 input
            }
            found.push((v, e.path()));
        }
    }
    found.sort();
    found.pop().map(|(_, p)| p)
}

fn largest_rs(dir: &Path, skip: &[PathBuf]) -> Option<PathBuf> {
    let mut best: Option<(u64, PathBuf)> = None;
    let mut stack = vec![dir.join("src")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") && !skip.contains(&p) {
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                if best
                    .as_ref()
                    .is_none_or(|(l, bp)| len > *l || (len == *l && p < *bp))
                {
                    best = Some((len, p));
                }
            }
        }
    }
    best.map(|(_, p)| p)
}

fn syn_inputs() -> Vec<(PathBuf, String)> {
    let mut picked: Vec<PathBuf> = Vec::new();
    for (krate, file) in SYN_SOURCES {
        let Some(dir) = crate_dir(krate) else {
            eprintln!("syn workload: no unpacked `{krate}` in the cargo registry (build this package first)");
            std::process::exit(2);
        };
        let preferred = dir.join(file);
        let path = if preferred.is_file() && !picked.contains(&preferred) {
            preferred
        } else {
            largest_rs(&dir, &picked).expect("a crate with Rust sources")
        };
        picked.push(path);
    }
    picked
        .into_iter()
        .map(|p| {
            let s = std::fs::read_to_string(&p).expect("readable source");
            (p, s)
        })
        .collect()
}

#[inline(never)]
fn syn_iteration(sources: &[String]) {
    use quote::ToTokens;
    for s in sources {
        // `inputs` names a file that does not parse; here only the workload's cost matters.
        let file = syn::parse_file(s).expect("a source that syn parses (see `inputs`)");
        let printed = file.to_token_stream().to_string();
        black_box(printed.len());
    }
}

// ---- axum ------------------------------------------------------------------------------------

#[derive(serde::Deserialize)]
struct Item {
    sku: String,
    qty: u32,
    price_cents: u64,
}

#[derive(serde::Deserialize)]
struct Order {
    customer: String,
    items: Vec<Item>,
    note: Option<String>,
}

#[derive(serde::Serialize)]
struct Line {
    sku: String,
    qty: u32,
    subtotal_cents: u64,
}

#[derive(serde::Serialize)]
struct Receipt {
    customer: String,
    lines: Vec<Line>,
    total_cents: u64,
    note: Option<String>,
}

async fn orders(axum::Json(order): axum::Json<Order>) -> axum::Json<Receipt> {
    let lines: Vec<Line> = order
        .items
        .into_iter()
        .map(|i| Line {
            subtotal_cents: i.price_cents * u64::from(i.qty),
            sku: i.sku,
            qty: i.qty,
        })
        .collect();
    axum::Json(Receipt {
        total_cents: lines.iter().map(|l| l.subtotal_cents).sum(),
        customer: order.customer,
        lines,
        note: order.note.map(|n| n.to_uppercase()),
    })
}

fn order_body() -> String {
    let items: Vec<String> = (0..12)
        .map(|i| {
            format!(
                r#"{{"sku":"SKU-{:05}-BLUE-XL","qty":{},"price_cents":{}}}"#,
                1000 + i * 37,
                1 + i % 4,
                499 + i * 100
            )
        })
        .collect();
    format!(
        r#"{{"customer":"customer-000042@example.com","items":[{}],"note":"leave at the door, ring twice"}}"#,
        items.join(",")
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn app() -> axum::Router {
    axum::Router::new().route("/orders", axum::routing::post(orders))
}

fn serve(port: u16, seconds: u64) {
    let rt = runtime();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind 127.0.0.1");
        println!("listening on {}", listener.local_addr().unwrap());
        let serve = axum::serve(listener, app());
        // Bounded: a benchmark run never leaves a server behind.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(seconds), serve).await;
    });
}

/// The service and a blocking keep-alive client in one process: `requests` POSTs one after the
/// other on one connection. The client reuses its buffers, so its own allocations are few.
fn axum_in_process(requests: u64) {
    let rt = runtime();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind 127.0.0.1");
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        let _ = axum::serve(listener, app()).await;
    });
    let body = order_body();
    let request = format!(
        "POST /orders HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        body
    );
    let mut conn = TcpStream::connect(addr).expect("connect");
    conn.set_nodelay(true).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let t = Instant::now();
    for _ in 0..requests {
        conn.write_all(request.as_bytes()).expect("send");
        read_response(&mut conn, &mut buf);
    }
    println!("elapsed_ns={}", t.elapsed().as_nanos());
    drop(conn);
    rt.shutdown_background();
}

/// Reads one HTTP/1.1 response with a Content-Length body into `buf`; panics on anything else
/// (the benchmark's own server only answers 200 with a JSON body).
fn read_response(conn: &mut TcpStream, buf: &mut [u8]) {
    let mut have = 0;
    loop {
        let n = conn.read(&mut buf[have..]).expect("read");
        assert!(n > 0, "server closed the connection");
        have += n;
        if let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).expect("ASCII headers");
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("content-length");
            while have < end + 4 + len {
                let n = conn.read(&mut buf[have..]).expect("read");
                assert!(n > 0, "server closed the connection");
                have += n;
            }
            return;
        }
    }
}
