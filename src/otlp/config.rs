//! The exporter's configuration, and reading it from the standard OpenTelemetry variables.
//!
//! Parsing is pure (a lookup function stands in for the environment) so it is tested in place.
use std::fmt;
use std::time::Duration;

use super::encode::Value;

/// The OTLP/HTTP path of the profiles signal, appended to `OTEL_EXPORTER_OTLP_ENDPOINT` as the
/// OTLP exporter specification says for every signal.
pub const PROFILES_PATH: &str = "/v1development/profiles";

/// Where and how [`start`](super::start) sends heap profiles.
///
/// `Config::new(endpoint)` then set the fields that differ from the defaults.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// The full URL profiles are posted to, e.g. `http://127.0.0.1:4318/v1development/profiles`.
    /// Plain `http://` only: the `otlp` feature carries no TLS stack (send to a local Collector or
    /// agent, which forwards over TLS).
    pub endpoint: String,
    /// Extra request headers (authentication, tenant), e.g. `("X-Scope-OrgID", "team-a")`.
    pub headers: Vec<(String, String)>,
    /// Time limit of each phase of a request: connecting, sending, receiving the response.
    /// Default 10 s (the OTLP default). Host names are resolved by the system resolver, within
    /// its own limits (`/etc/resolv.conf`).
    pub timeout: Duration,
    /// How often a profile is taken and sent. Default 60 s.
    pub interval: Duration,
    /// The resource's `service.name`. Default `unknown_service:<executable name>`, as the
    /// OpenTelemetry SDKs do.
    pub service_name: String,
    /// More resource attributes (`deployment.environment.name`, `service.version`, ...).
    /// `process.pid` and `host.name` are added by the exporter.
    pub resource_attributes: Vec<(String, String)>,
    /// Profiles kept while the endpoint is unreachable; beyond this the oldest is dropped (and
    /// counted). Default 8: eight minutes at the default interval.
    pub max_pending: usize,
}

impl Config {
    /// The defaults, sending to `endpoint` (the full profiles URL).
    pub fn new(endpoint: impl Into<String>) -> Config {
        Config {
            endpoint: endpoint.into(),
            headers: Vec::new(),
            timeout: Duration::from_secs(10),
            interval: Duration::from_secs(60),
            service_name: default_service_name(),
            resource_attributes: Vec::new(),
            max_pending: 8,
        }
    }

    /// Checks the values [`start`](super::start) relies on.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |what: &str, why: String| Err(ConfigError(format!("{what}: {why}")));
        let rest = match self.endpoint.strip_prefix("http://") {
            Some(rest) => rest,
            None if self.endpoint.starts_with("https://") => {
                return bad(
                    "endpoint",
                    format!(
                        "{:?}: https is not supported by this build (no TLS stack); \
                         send to a local Collector over http://",
                        self.endpoint
                    ),
                )
            }
            None => {
                return bad(
                    "endpoint",
                    format!("{:?} is not an http:// URL", self.endpoint),
                )
            }
        };
        if rest.is_empty() || rest.starts_with('/') {
            return bad("endpoint", format!("{:?} has no host", self.endpoint));
        }
        if self.interval.is_zero() {
            return bad("interval", "must be more than 0".into());
        }
        if self.timeout.is_zero() {
            return bad("timeout", "must be more than 0".into());
        }
        if self.max_pending == 0 {
            return bad("max_pending", "must be at least 1".into());
        }
        for (k, v) in &self.headers {
            let token = !k.is_empty()
                && k.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c));
            if !token || v.bytes().any(|c| c < b' ' && c != b'\t' || c == 0x7f) {
                return bad("header", format!("{k:?} is not a valid header"));
            }
        }
        Ok(())
    }

    /// The resource attributes sent with every request: `service.name`, `process.pid`,
    /// `host.name`, the SDK's identity, then the configured ones (which win on a clash).
    pub(crate) fn resource(&self) -> Vec<(String, Value)> {
        let mut r: Vec<(String, Value)> = vec![
            ("service.name".into(), Value::Str(self.service_name.clone())),
            ("process.pid".into(), Value::Int(std::process::id() as i64)),
            ("telemetry.sdk.name".into(), Value::Str("heapsight".into())),
            ("telemetry.sdk.language".into(), Value::Str("rust".into())),
            (
                "telemetry.sdk.version".into(),
                Value::Str(env!("CARGO_PKG_VERSION").into()),
            ),
        ];
        if let Some(h) = host_name() {
            r.push(("host.name".into(), Value::Str(h)));
        }
        for (k, v) in &self.resource_attributes {
            r.retain(|(key, _)| key != k);
            r.push((k.clone(), Value::Str(v.clone())));
        }
        r
    }
}

/// A configuration value the exporter cannot use; the message names the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(pub(crate) String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn default_service_name() -> String {
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    format!("unknown_service:{exe}")
}

fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the pointer and length describe `buf`, a live local array; gethostname writes at
    // most that many bytes and we stop at the first NUL or the end.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let n = buf.iter().position(|&c| c == 0).unwrap_or(buf.len());
    (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Percent-decodes an OTEL list value (`%20` and the like); `None` on a malformed escape.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Parses `key1=value1,key2=value2` (the format of `OTEL_EXPORTER_OTLP_HEADERS` and
/// `OTEL_RESOURCE_ATTRIBUTES`), values percent-decoded, spaces around items ignored.
fn parse_list(var: &str, s: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((k, v)) = item.split_once('=') else {
            return Err(ConfigError(format!(
                "{var}: {item:?} is not key=value (expected key1=value1,key2=value2)"
            )));
        };
        let (k, v) = (k.trim(), v.trim());
        let v = percent_decode(v)
            .ok_or_else(|| ConfigError(format!("{var}: bad percent-encoding in {v:?}")))?;
        if k.is_empty() {
            return Err(ConfigError(format!("{var}: empty key in {item:?}")));
        }
        out.push((k.to_string(), v));
    }
    Ok(out)
}

/// Parses a duration for `HEAPSIGHT_OTLP_INTERVAL`: digits with a unit `ms`, `s` or `m`, or bare
/// digits as seconds.
fn parse_interval(var: &str, s: &str) -> Result<Duration, ConfigError> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let bad = || ConfigError(format!("{var}={s:?}: not a duration (e.g. 60s, 500ms, 5m)"));
    let n: u64 = s[..digits].parse().map_err(|_| bad())?;
    let d = match s[digits..].trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?),
        _ => return Err(bad()),
    };
    if d.is_zero() {
        return Err(bad());
    }
    Ok(d)
}

/// The configuration from the environment, through `get` (so tests need not touch the process
/// environment). `Ok(None)` when no endpoint variable is set: the exporter is opt-in.
///
/// Read: `OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT` (used as is) or `OTEL_EXPORTER_OTLP_ENDPOINT`
/// (plus `/v1development/profiles`); `OTEL_EXPORTER_OTLP[_PROFILES]_HEADERS`;
/// `OTEL_EXPORTER_OTLP[_PROFILES]_TIMEOUT` (milliseconds); `OTEL_EXPORTER_OTLP[_PROFILES]_PROTOCOL`
/// (only `http/protobuf`); `OTEL_SERVICE_NAME`; `OTEL_RESOURCE_ATTRIBUTES`; and heapsight's own
/// `HEAPSIGHT_OTLP_INTERVAL` (`60s`, `500ms`, `5m`).
pub(crate) fn from_lookup(
    get: impl Fn(&str) -> Option<String>,
) -> Result<Option<Config>, ConfigError> {
    let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
    // The signal-specific variable wins over the generic one, as the specification says.
    let pick = |suffix: &str| {
        let specific = format!("OTEL_EXPORTER_OTLP_PROFILES_{suffix}");
        let generic = format!("OTEL_EXPORTER_OTLP_{suffix}");
        get(&specific)
            .map(|v| (specific, v))
            .or_else(|| get(&generic).map(|v| (generic, v)))
    };
    let endpoint = match pick("ENDPOINT") {
        None => return Ok(None),
        Some((var, v)) if var.contains("PROFILES") => (var, v.trim().to_string()),
        Some((var, v)) => {
            // One trailing slash is the base URL's own ("http://c:4318/"); "http://" keeps its.
            let base = v.trim();
            let base = base
                .strip_suffix('/')
                .filter(|b| !b.ends_with('/'))
                .unwrap_or(base);
            (var, format!("{base}{PROFILES_PATH}"))
        }
    };
    let mut c = Config::new(endpoint.1);
    if let Some((var, p)) = pick("PROTOCOL") {
        if p.trim() != "http/protobuf" {
            return Err(ConfigError(format!(
                "{var}={p:?}: only http/protobuf is supported"
            )));
        }
    }
    if let Some((var, h)) = pick("HEADERS") {
        c.headers = parse_list(&var, &h)?;
    }
    if let Some((var, t)) = pick("TIMEOUT") {
        let ms: u64 = t
            .trim()
            .parse()
            .map_err(|_| ConfigError(format!("{var}={t:?}: not a whole number of milliseconds")))?;
        if ms == 0 {
            return Err(ConfigError(format!("{var}={t:?}: must be more than 0")));
        }
        c.timeout = Duration::from_millis(ms);
    }
    if let Some(i) = get("HEAPSIGHT_OTLP_INTERVAL") {
        c.interval = parse_interval("HEAPSIGHT_OTLP_INTERVAL", &i)?;
    }
    if let Some(attrs) = get("OTEL_RESOURCE_ATTRIBUTES") {
        c.resource_attributes = parse_list("OTEL_RESOURCE_ATTRIBUTES", &attrs)?;
        if let Some(i) = c
            .resource_attributes
            .iter()
            .position(|(k, _)| k == "service.name")
        {
            c.service_name = c.resource_attributes.remove(i).1;
        }
    }
    if let Some(name) = get("OTEL_SERVICE_NAME") {
        c.service_name = name.trim().to_string();
    }
    c.validate()
        .map_err(|e| ConfigError(format!("{}: {}", endpoint.0, e.0)))?;
    Ok(Some(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Option<Config>, ConfigError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn off_without_an_endpoint() {
        assert!(env(&[]).unwrap().is_none());
        assert!(env(&[("OTEL_SERVICE_NAME", "x")]).unwrap().is_none());
        assert!(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "  ")])
            .unwrap()
            .is_none());
    }

    #[test]
    fn endpoints_follow_the_specification() {
        let c = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")])
            .unwrap()
            .unwrap();
        assert_eq!(c.endpoint, "http://collector:4318/v1development/profiles");
        let c = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            (
                "OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT",
                "http://b:9999/custom",
            ),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.endpoint, "http://b:9999/custom");
        assert_eq!(c.interval, Duration::from_secs(60));
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert!(c.service_name.starts_with("unknown_service:"));
    }

    #[test]
    fn lists_timeouts_names_and_intervals() {
        let c = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "a=1, X-Scope-OrgID = team%20a ,",
            ),
            ("OTEL_EXPORTER_OTLP_PROFILES_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=from-attrs,deployment.environment.name=prod",
            ),
            ("HEAPSIGHT_OTLP_INTERVAL", "500ms"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            c.headers,
            [
                ("a".to_string(), "1".to_string()),
                ("X-Scope-OrgID".to_string(), "team a".to_string())
            ]
        );
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(c.interval, Duration::from_millis(500));
        assert_eq!(c.service_name, "from-attrs");
        assert_eq!(
            c.resource_attributes,
            [(
                "deployment.environment.name".to_string(),
                "prod".to_string()
            )]
        );
        // OTEL_SERVICE_NAME wins over the attribute.
        let c = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs"),
            ("OTEL_SERVICE_NAME", "svc"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.service_name, "svc");
        let r = c.resource();
        assert_eq!(r[0], ("service.name".into(), Value::Str("svc".into())));
        assert!(r
            .iter()
            .any(|(k, v)| k == "process.pid" && *v == Value::Int(std::process::id() as i64)));
        for (s, d) in [
            ("60", 60_000),
            ("60s", 60_000),
            ("5m", 300_000),
            ("250ms", 250),
        ] {
            assert_eq!(parse_interval("v", s).unwrap(), Duration::from_millis(d));
        }
    }

    #[test]
    fn bad_values_are_named() {
        let cases: [(&[(&str, &str)], &str); 8] = [
            (
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://a:4318")],
                "https is not supported",
            ),
            (
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "a:4318")],
                "not an http:// URL",
            ),
            (&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://")], "has no host"),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ],
                "OTEL_EXPORTER_OTLP_PROTOCOL=\"grpc\": only http/protobuf",
            ),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a"),
                    ("OTEL_EXPORTER_OTLP_HEADERS", "novalue"),
                ],
                "OTEL_EXPORTER_OTLP_HEADERS: \"novalue\" is not key=value",
            ),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a"),
                    ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
                ],
                "OTEL_EXPORTER_OTLP_TIMEOUT=\"10s\": not a whole number",
            ),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a"),
                    ("HEAPSIGHT_OTLP_INTERVAL", "0s"),
                ],
                "HEAPSIGHT_OTLP_INTERVAL=\"0s\": not a duration",
            ),
            (
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a"),
                    ("OTEL_RESOURCE_ATTRIBUTES", "k=%zz"),
                ],
                "OTEL_RESOURCE_ATTRIBUTES: bad percent-encoding",
            ),
        ];
        for (vars, want) in cases {
            let e = env(vars).unwrap_err().to_string();
            assert!(e.contains(want), "{vars:?}: {e:?} lacks {want:?}");
        }
        let mut c = Config::new("http://a:1/p");
        c.headers.push(("bad header".into(), "v".into()));
        assert!(c.validate().is_err());
        c.headers.clear();
        c.max_pending = 0;
        assert!(c.validate().is_err());
    }
}
