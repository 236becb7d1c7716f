//! Logging setup shared by the binaries.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::BufWriter;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::{LookupSpan, SpanRef};

use crate::config::{LogFormat, LogSettings};
use crate::json;
use crate::stream::entry;

/// The log lines not yet written: they are written when this is dropped, so a binary holds it
/// until it exits.
#[must_use = "dropping it stops the log writer"]
pub struct Logs(#[allow(dead_code)] WorkerGuard);

/// Installs a `tracing` subscriber writing to stderr, filtered by `SLUICE__LOG__LEVEL`
/// (or `RUST_LOG` when set), as text or JSON lines by `SLUICE__LOG__FORMAT`.
///
/// Lines are written by a thread of their own, in one write for all the lines waiting, so that
/// the request threads make no system call per log line (the api logs one per request). Nothing
/// is dropped: when that thread falls behind by more than its queue, logging waits for it.
///
/// Text lines are plain, without terminal colours wherever they go: `tracing-subscriber` built
/// with colour support runs every part of every line through its styling code even with colours
/// off, about 3% of the api's instructions per request (bench/history.md, run 14).
///
/// What is never logged: API keys (only key ids and tenant ids appear) and event data.
pub fn init(settings: &LogSettings) -> Logs {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(&settings.level));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("sluice-log")
        .finish(BufWriter::with_capacity(64 * 1024, std::io::stderr()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    let _ = match settings.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .try_init(),
    };
    Logs(guard)
}

/// JSON log lines, byte for byte what `tracing-subscriber`'s JSON format writes with the event's
/// fields flattened into the line and the current span and the span list shown
/// (`.json().flatten_event(true).with_current_span(true)`), written straight into one buffer.
/// That format builds serde maps for every line and parses each span's recorded fields back
/// from JSON twice per line (once for `span`, once for `spans`): with the api's line per
/// request, the line and its span cost a 1-event request 38k instructions, 16.5k now, 17k in
/// text (bench/history.md, run 17).
///
/// A span's fields are recorded once, when it is made, by `tracing-subscriber`'s own
/// [`JsonFields`]: one JSON object, keys sorted, which is copied into each line as it is.
pub struct JsonLines;

thread_local! {
    /// The line being written, and a Debug value's text: kept from line to line.
    static LINE: RefCell<(Vec<u8>, String)> = const { RefCell::new((Vec::new(), String::new())) };
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        LINE.with(|line| match line.try_borrow_mut() {
            Ok(mut buffers) => {
                let (out, scratch) = &mut *buffers;
                let written = json_line(ctx, &mut writer, event, out, scratch);
                // A rare long line does not keep its buffer for good.
                if out.capacity() > 64 * 1024 {
                    *out = Vec::new();
                }
                if scratch.capacity() > 64 * 1024 {
                    *scratch = String::new();
                }
                written
            }
            // A value's Debug that logs, while its own line is being written.
            Err(_) => json_line(ctx, &mut writer, event, &mut Vec::new(), &mut String::new()),
        })
    }
}

fn json_line<S, N>(
    ctx: &FmtContext<'_, S, N>,
    writer: &mut Writer<'_>,
    event: &Event<'_>,
    out: &mut Vec<u8>,
    scratch: &mut String,
) -> fmt::Result
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    out.clear();
    out.extend_from_slice(b"{\"timestamp\":\"");
    now(out);
    out.extend_from_slice(b"\",\"level\":\"");
    out.extend_from_slice(event.metadata().level().as_str().as_bytes());
    out.push(b'"');
    event.record(&mut EventFields { out, scratch });
    let current = event
        .parent()
        .and_then(|id| ctx.span(id))
        .or_else(|| ctx.lookup_current());
    if let Some(span) = current {
        out.extend_from_slice(b",\"span\":");
        span_object::<S, N>(out, &span);
        out.extend_from_slice(b",\"spans\":");
        match ctx.lookup_current() {
            Some(leaf) => json::array(out, leaf.scope().from_root(), |out, span| {
                span_object::<S, N>(out, &span)
            }),
            None => out.extend_from_slice(b"[]"),
        }
    }
    out.push(b'}');
    writer.write_str(std::str::from_utf8(out).map_err(|_| fmt::Error)?)?;
    writer.write_char('\n')
}

/// A span as an object: its recorded fields, then its name.
fn span_object<S, N>(out: &mut Vec<u8>, span: &SpanRef<'_, S>)
where
    S: for<'a> LookupSpan<'a>,
    N: 'static,
{
    out.push(b'{');
    let extensions = span.extensions();
    let fields = extensions
        .get::<FormattedFields<N>>()
        .map_or("", |f| f.fields.as_str());
    match fields.strip_prefix('{').and_then(|f| f.strip_suffix('}')) {
        Some("") => {}
        Some(inner) => {
            out.extend_from_slice(inner.as_bytes());
            out.push(b',');
        }
        // Not an object (no field formatter but `JsonFields` makes one): said as the JSON
        // format says it.
        None => {
            let why = match serde_json::from_str::<serde_json::Value>(fields) {
                Ok(value) => {
                    out.extend_from_slice(b"\"field\":");
                    serde_json::to_writer(&mut *out, &value)
                        .map_err(|_| ())
                        .ok();
                    out.push(b',');
                    "field was no a valid object".to_owned()
                }
                Err(e) => e.to_string(),
            };
            out.extend_from_slice(b"\"field_error\":");
            json::string(out, &why);
            out.push(b',');
        }
    }
    out.extend_from_slice(b"\"name\":");
    json::string(out, span.metadata().name());
    out.push(b'}');
}

/// The time now as `tracing-subscriber`'s `SystemTime` writes it, `2026-11-28T14:46:24.132964Z`:
/// the text stream entries give a time ([`entry::timestamp`]), where `SystemTime` goes through
/// `write!` for every part (half of its 2.3k instructions a line saved).
fn now(out: &mut Vec<u8>) {
    out.extend_from_slice(entry::timestamp(chrono::Utc::now()).as_bytes());
}

/// An event's fields, each as `,"name":value`, in the event's order.
struct EventFields<'a> {
    out: &'a mut Vec<u8>,
    scratch: &'a mut String,
}

impl EventFields<'_> {
    fn name(&mut self, field: &Field) {
        self.out.push(b',');
        json::string(self.out, field.name());
        self.out.push(b':');
    }
}

impl Visit for EventFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.name(field);
        json::string(self.out, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.name(field);
        json::number(self.out, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.name(field);
        json::number(self.out, value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.name(field);
        json::float(self.out, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.name(field);
        json::boolean(self.out, value);
    }

    /// The message, `%` and `?` values, and whatever has no method of its own above: its
    /// Debug text, as a string.
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.name(field);
        self.scratch.clear();
        let _ = write!(self.scratch, "{value:?}");
        json::string(self.out, self.scratch);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

    use super::*;

    /// Every line `emit` logs, through `json_lines` (ours) or through tracing-subscriber's own
    /// JSON format as `init` used to set it up, with the timestamps cut out.
    fn lines(ours: bool, emit: impl Fn()) -> Vec<String> {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let writer = move || Sink(sink.clone());
        let builder = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(writer)
            .with_target(false);
        if ours {
            let subscriber = builder
                .fmt_fields(JsonFields::new())
                .event_format(JsonLines)
                .finish();
            tracing::subscriber::with_default(subscriber, emit);
        } else {
            let subscriber = builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .finish();
            tracing::subscriber::with_default(subscriber, emit);
        }
        let text = String::from_utf8(buffer.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| {
                let rest = line
                    .strip_prefix("{\"timestamp\":\"")
                    .and_then(|l| l.split_once('"'))
                    .map(|(time, rest)| {
                        assert_eq!(time.len(), "2026-11-28T14:46:24.132964Z".len(), "{line}");
                        rest
                    })
                    .unwrap_or_else(|| panic!("no timestamp first: {line}"));
                rest.to_owned()
            })
            .collect()
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[derive(Debug)]
    #[allow(dead_code)]
    struct Shape {
        name: &'static str,
        sides: u8,
    }

    fn emit() {
        let weird = "quote \" backslash \\ newline \n tab \t bell \u{7} del \u{7f} é 日本 🎉";
        tracing::info!("no span, no fields");
        tracing::warn!(addr = "127.0.0.1:8080", partitions = 16u64, "listening");
        tracing::error!(
            error = %std::io::Error::other(weird),
            count = -3i64,
            ok = true,
            ratio = 0.10106399999999999,
            nan = f64::NAN,
            big = u64::MAX,
            wide = 1u128 << 100,
            shape = ?Shape { name: weird, sides: 3 },
            text = weird,
            "answering 503: {}", weird
        );
        let request =
            tracing::info_span!("request", request_id = %"01a2229f-2294-77c1-a9fb-c63e061b7994");
        let _entered = request.enter();
        tracing::info!(
            method = %"POST",
            route = %"/v1/events/batch",
            status = 200u16,
            latency_ms = 0.986228,
            tenant = "ten_axkdv0d4EMdtgbRC",
            "request"
        );
        let inner = tracing::debug_span!(
            "call",
            zeta = 1u64,
            alpha = weird,
            mid = ?Some(2.5),
            flag = false
        );
        inner.in_scope(|| {
            tracing::trace!(r#type = "event", "nested");
            let empty = tracing::info_span!("empty");
            empty.in_scope(|| tracing::info!("in an empty span"));
            tracing::info!(parent: &request, "explicit parent, inside another span");
        });
        let later = tracing::info_span!("later", tenant = tracing::field::Empty, step = 1u64);
        later.record("tenant", "ten_1");
        later.in_scope(|| tracing::info!("fields recorded after the span was made"));
        later.record("step", 2u64);
        later.record("tenant", weird);
        later.in_scope(|| tracing::info!("fields recorded again"));
        let values = tracing::info_span!(
            "values",
            nan = f64::NAN,
            ratio = -0.25,
            negative = -7i64,
            bytes = &b"\x00ab"[..],
            wide = 1u128 << 100,
            r#type = ?"debug",
            shown = %weird,
            error = &std::io::Error::other("gone") as &(dyn std::error::Error + 'static),
        );
        values.record("late", "unknown fields are not recorded");
        values.in_scope(|| tracing::warn!("every kind of span value"));
        drop(_entered);
        tracing::info!(parent: &request, "explicit parent, no current span");
    }

    #[test]
    fn times_are_written_as_tracing_subscriber_writes_them() {
        let cases = [
            (0, 0, "1970-01-01T00:00:00.000000Z"),
            (951_868_799, 999_999_000, "2000-02-29T23:59:59.999999Z"),
            (1_795_875_984, 132_964_000, "2026-11-28T14:26:24.132964Z"),
            (253_402_300_799, 999_999_999, "9999-12-31T23:59:59.999999Z"),
        ];
        for (secs, nanos, expected) in cases {
            let t = chrono::DateTime::from_timestamp(secs, nanos).unwrap();
            assert_eq!(entry::timestamp(t), expected);
        }

        // Now, both ways: the same layout, and the same time (within a minute, whatever the
        // clock does meanwhile).
        let ours = || {
            let mut out = Vec::new();
            now(&mut out);
            String::from_utf8(out).unwrap()
        };
        let before = ours();
        let mut theirs = String::new();
        SystemTime
            .format_time(&mut Writer::new(&mut theirs))
            .unwrap();
        let after = ours();
        let at = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap().timestamp();
        assert!((at(&theirs) - at(&before)).abs() < 60, "{before} {theirs}");
        assert!((at(&theirs) - at(&after)).abs() < 60, "{theirs} {after}");
        let layout = |t: &str| t.replace(|c: char| c.is_ascii_digit(), "0");
        assert_eq!(layout(&before), layout(&theirs));
        assert_eq!(layout(&after), layout(&theirs));
    }

    /// Span fields recorded by another formatter than `JsonFields` (not a JSON object) are
    /// said as `tracing-subscriber` says them, in a line that is still JSON.
    #[test]
    fn span_fields_that_are_not_an_object_are_reported_in_valid_json() {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || Sink(sink.clone()))
            .fmt_fields(tracing_subscriber::fmt::format::DefaultFields::new())
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            // The text formatter writes a lone message as it is: here, a JSON number.
            tracing::info_span!("number", message = 5).in_scope(|| tracing::info!("a"));
            tracing::info_span!("text", answer = 42).in_scope(|| tracing::info!("b"));
        });
        let text = String::from_utf8(buffer.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["span"]["field"], 5, "{text}");
        assert_eq!(
            lines[0]["span"]["field_error"],
            "field was no a valid object"
        );
        assert_eq!(lines[0]["span"]["name"], "number");
        assert!(lines[1]["span"]["field_error"].is_string(), "{text}");
        assert_eq!(lines[1]["span"]["name"], "text");
    }

    #[test]
    fn json_lines_are_the_text_tracing_subscriber_writes() {
        let ours = lines(true, emit);
        let theirs = lines(false, emit);
        assert_eq!(ours.len(), 11, "{ours:#?}");
        for (ours, theirs) in ours.iter().zip(&theirs) {
            assert_eq!(ours, theirs);
        }
        assert_eq!(ours.len(), theirs.len());
    }
}
