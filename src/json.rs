//! JSON text written straight into a buffer (a `Vec`, or a Redis command's next argument), for
//! the texts written per event or per request:
//! the entry's events field (`stream::entry::events_field`), the ingest answers
//! (`api::events`) and JSON log lines (`telemetry`).
//!
//! serde_json's serializer writes every string, keys and ids included, through its escaping
//! loop, one byte and one small copy at a time: at 100 events per request that was a fifth of
//! the api's instructions (bench/history.md, run 16). Here the fixed parts of an object are
//! written as one literal each, and a string is copied whole when it holds nothing to escape
//! (the usual case); one that does goes through serde_json's own escaping, so the bytes are
//! always the ones serde_json writes. The tests of the callers hold each text to serde's.

use bytes::BufMut;
use uuid::Uuid;

/// U+FEFF, the byte order mark some tools write before UTF-8 text (PowerShell 5's `Out-File
/// -Encoding utf8`). RFC 8259 lets a parser ignore it before JSON, and every JSON input of
/// Sluice does: request bodies, and the files `sluice-admin` reads.
pub const BOM: &str = "\u{FEFF}";

/// Appends `s` as a JSON string, escaped exactly as serde_json escapes it.
pub fn string(out: &mut impl BufMut, s: &str) {
    if needs_escape(s.as_bytes()) {
        serde_json::to_writer(out.writer(), s).expect("a string always serializes");
    } else {
        out.put_u8(b'"');
        out.put_slice(s.as_bytes());
        out.put_u8(b'"');
    }
}

/// Appends `s` as a JSON string, or `null`.
pub fn optional_string(out: &mut impl BufMut, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.put_slice(b"null"),
    }
}

/// Appends `n`, or `null`.
pub fn optional_number(out: &mut impl BufMut, n: Option<u32>) {
    match n {
        Some(n) => number(out, n),
        None => out.put_slice(b"null"),
    }
}

/// Appends `b`.
pub fn boolean(out: &mut impl BufMut, b: bool) {
    out.put_slice(if b { b"true" } else { b"false" });
}

/// Appends an array of `items`, each written by `write`.
pub fn array<T, B: BufMut>(
    out: &mut B,
    items: impl IntoIterator<Item = T>,
    mut write: impl FnMut(&mut B, T),
) {
    out.put_u8(b'[');
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        write(out, item);
    }
    out.put_u8(b']');
}

/// Appends the integer `n`.
pub fn number(out: &mut impl BufMut, n: impl itoa::Integer) {
    out.put_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends `n` as serde_json writes an `f64`: the shortest text that reads back as `n`, and
/// `null` for a NaN or an infinity.
pub fn float(out: &mut impl BufMut, n: f64) {
    serde_json::to_writer(out.writer(), &n).expect("a number always serializes");
}

/// Appends `id` as serde writes a [`Uuid`]: a hyphenated, lower-case string.
pub fn uuid(out: &mut impl BufMut, id: &Uuid) {
    let mut text = [0u8; 38];
    text[0] = b'"';
    id.hyphenated().encode_lower(&mut text[1..37]);
    text[37] = b'"';
    out.put_slice(&text);
}

/// Whether a JSON string of these bytes holds anything JSON escapes: a control character, a
/// quote or a backslash. Every byte is looked at (no early exit), which the compiler turns into
/// a few wide comparisons per step.
fn needs_escape(bytes: &[u8]) -> bool {
    bytes.iter().fold(false, |found, &b| {
        found | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_the_bytes_serde_json_writes() {
        let mut tricky: Vec<String> = [
            "",
            "plain",
            "quote \" inside",
            "back\\slash",
            "tab\tnew\nline\r",
            "\u{7f} del and \u{1f} unit separator",
            "ünïcödé 😀 ✓",
            "</script>",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        tricky.extend((0u8..0x80).map(|b| format!("a{}b", b as char)));
        for s in &tricky {
            let mut out = Vec::new();
            string(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn numbers_booleans_arrays_ids_and_nulls_are_the_bytes_serde_json_writes() {
        for n in [None, Some(0), Some(7), Some(u32::MAX)] {
            let mut out = Vec::new();
            optional_number(&mut out, n);
            assert_eq!(out, serde_json::to_vec(&n).unwrap());
        }
        for s in [None, Some("r-1")] {
            let mut out = Vec::new();
            optional_string(&mut out, s);
            assert_eq!(out, serde_json::to_vec(&s).unwrap());
        }
        for b in [true, false] {
            let mut out = Vec::new();
            boolean(&mut out, b);
            assert_eq!(out, serde_json::to_vec(&b).unwrap());
        }
        for items in [vec![], vec![1], vec![1, 2, 3]] {
            let mut out = Vec::new();
            array(&mut out, &items, |out, n| number(out, *n));
            assert_eq!(out, serde_json::to_vec(&items).unwrap());
        }
        for n in [i64::MIN, -1, 0, 42, i64::MAX] {
            let mut out = Vec::new();
            number(&mut out, n);
            assert_eq!(out, serde_json::to_vec(&n).unwrap());
        }
        for n in [
            0.0,
            -0.0,
            0.1,
            1.0,
            0.10106399999999999,
            1e300,
            -2.5e-300,
            f64::NAN,
            f64::INFINITY,
        ] {
            let mut out = Vec::new();
            float(&mut out, n);
            assert_eq!(out, serde_json::to_vec(&n).unwrap());
        }
        let id = Uuid::now_v7();
        let mut out = Vec::new();
        uuid(&mut out, &id);
        assert_eq!(out, serde_json::to_vec(&id).unwrap());
    }
}
