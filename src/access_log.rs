//! The access log (`OUTRIGGER_ACCESS_LOG=off|stdout|<file>`): one JSON line per request, written
//! by a thread of its own so that a request only hands its record over; and W3C trace context
//! (`OUTRIGGER_TRACEPARENT=forward|start`).
//!
//! A line: `time` (RFC 3339, when the request started), `service`, `method`, `path`, `status`,
//! `node` (the last node tried, `ip:port`), `attempts`, `duration_ms` (until the answer's last
//! byte was handed on), `upstream_ms` (until the node's answer head arrived), `bytes_in` (the
//! request's Content-Length, when it has one), `bytes_out` (body bytes sent to the app),
//! `error` (the `x-outrigger-error` cause), `trace_id` (from `traceparent`).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use http::HeaderValue;

/// Where access log lines go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Target {
    #[default]
    /// No access log (the default).
    Off,
    /// Standard output.
    Stdout,
    /// A file, appended to.
    File(std::path::PathBuf),
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "off" | "" => Ok(Target::Off),
            "stdout" => Ok(Target::Stdout),
            path if path.starts_with('/') || path.starts_with('.') => Ok(Target::File(path.into())),
            _ => Err("off, stdout or a file path (absolute, or starting with ./)".into()),
        }
    }
}

impl Target {
    /// Whether the log can be written: a file is opened for appending (and created) now, so
    /// that a path that cannot be used is reported with the other settings.
    ///
    /// Errors: why the file cannot be opened.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Target::File(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map(drop)
                .map_err(|e| format!("a file Outrigger can append to ({e})")),
            _ => Ok(()),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Off => f.write_str("off"),
            Target::Stdout => f.write_str("stdout"),
            Target::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// What a request's line holds, filled as it goes.
#[derive(Debug)]
pub struct Record {
    pub(crate) time: SystemTime,
    pub(crate) started: Instant,
    pub(crate) service: Option<String>,
    pub(crate) method: http::Method,
    pub(crate) path: String,
    pub(crate) status: u16,
    pub(crate) node: Option<SocketAddr>,
    pub(crate) attempts: u32,
    pub(crate) upstream: Option<Duration>,
    pub(crate) bytes_in: Option<u64>,
    pub(crate) bytes_out: u64,
    pub(crate) error: Option<String>,
    pub(crate) trace_id: Option<String>,
    /// When the answer's last byte was handed on (set by [`emit`]).
    pub(crate) ended: Option<Instant>,
}

/// A line as it is written: a struct serialised straight to text, without building a map.
#[derive(serde::Serialize)]
struct Line<'a> {
    time: String,
    service: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    status: u16,
    node: Option<SocketAddr>,
    attempts: u32,
    duration_ms: f64,
    upstream_ms: Option<f64>,
    bytes_in: Option<u64>,
    bytes_out: u64,
    error: Option<&'a str>,
    trace_id: Option<&'a str>,
}

impl Record {
    fn write_to(&self, out: &mut impl Write) {
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        let line = Line {
            time: humantime::format_rfc3339_millis(self.time).to_string(),
            service: self.service.as_deref(),
            method: self.method.as_str(),
            path: &self.path,
            status: self.status,
            node: self.node,
            attempts: self.attempts,
            duration_ms: ms(self
                .ended
                .unwrap_or(self.started)
                .duration_since(self.started)),
            upstream_ms: self.upstream.map(ms),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            error: self.error.as_deref(),
            trace_id: self.trace_id.as_deref(),
        };
        let _ = serde_json::to_writer(&mut *out, &line);
        let _ = out.write_all(b"\n");
    }
}

impl Record {
    /// A record of `req`, begun as it arrives (its service is set once routed).
    pub fn begin<B>(req: &http::Request<B>, started: Instant) -> Box<Record> {
        Box::new(Record {
            time: SystemTime::now(),
            started,
            service: None,
            method: req.method().clone(),
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
            status: 0,
            node: None,
            attempts: 0,
            upstream: None,
            bytes_in: req
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
            bytes_out: 0,
            error: None,
            trace_id: req.headers().get("traceparent").and_then(trace_id),
            ended: None,
        })
    }
}

/// The node and attempts behind a response, carried in its extensions while the access log is
/// on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Trail {
    pub(crate) node: SocketAddr,
    pub(crate) attempts: u32,
}

struct Log {
    tx: Mutex<Sender<Record>>,
}

static LOG: OnceLock<Log> = OnceLock::new();
static START_TRACES: OnceLock<bool> = OnceLock::new();

/// Whether requests are logged: one atomic load, the only cost of the access log when off.
#[inline]
pub fn enabled() -> bool {
    LOG.get().is_some()
}

/// Whether Outrigger starts a trace (`traceparent`) for a request that has none.
#[inline]
pub fn starts_traces() -> bool {
    START_TRACES.get().copied().unwrap_or(false)
}

/// Sets the access log up once: starts the writer thread for `target` (nothing for `Off`),
/// and whether traces are started.
///
/// Errors: the file cannot be opened for appending, or the thread cannot start.
pub fn install(target: &Target, start_traces: bool) -> std::io::Result<()> {
    let _ = START_TRACES.set(start_traces);
    let out: Box<dyn Write + Send> = match target {
        Target::Off => return Ok(()),
        Target::Stdout => Box::new(std::io::stdout()),
        Target::File(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("outrigger-access-log".into())
        .spawn(move || write_lines(rx, out))?;
    let _ = LOG.set(Log { tx: Mutex::new(tx) });
    Ok(())
}

/// Hands a finished record to the writer thread.
pub fn emit(mut record: Record) {
    record.ended = Some(Instant::now());
    if let Some(log) = LOG.get() {
        if let Ok(tx) = log.tx.lock() {
            let _ = tx.send(record);
        }
    }
}

/// Writes records as they come, flushing whenever none is waiting.
fn write_lines(rx: Receiver<Record>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::new(out);
    while let Ok(record) = rx.recv() {
        record.write_to(&mut out);
        while let Ok(more) = rx.try_recv() {
            more.write_to(&mut out);
        }
        let _ = out.flush();
    }
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if it is one.
pub fn trace_id(traceparent: &HeaderValue) -> Option<String> {
    let text = traceparent.to_str().ok()?;
    let mut parts = text.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0');
    valid.then(|| trace.to_string())
}

/// A new `traceparent` starting a trace (random trace and parent ids, sampled).
pub fn new_traceparent() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let trace: u128 = rand::random::<u128>().max(1);
    let parent: u64 = rand::random::<u64>().max(1);
    // `00-` + 32 + `-` + 16 + `-01`: 55 bytes, written in place.
    let mut text = *b"00-00000000000000000000000000000000-0000000000000000-01";
    for i in 0..32 {
        text[3 + i] = HEX[((trace >> (124 - 4 * i)) & 0xf) as usize];
    }
    for i in 0..16 {
        text[36 + i] = HEX[((parent >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| {
        HeaderValue::from_static("00-00000000000000000000000000000001-0000000000000001-01")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_read_and_made_as_w3c_says() {
        let good =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(
            trace_id(&good).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "garbage",
        ] {
            assert_eq!(trace_id(&HeaderValue::from_static(bad)), None, "{bad}");
        }
        let made = new_traceparent();
        assert!(trace_id(&made).is_some(), "{made:?}");
        assert_ne!(made, new_traceparent());
    }

    #[test]
    fn targets_parse() {
        assert_eq!("off".parse(), Ok(Target::Off));
        assert_eq!("stdout".parse(), Ok(Target::Stdout));
        assert_eq!(
            "/var/log/a.log".parse(),
            Ok(Target::File("/var/log/a.log".into()))
        );
        assert!("syslog".parse::<Target>().is_err());
    }
}
