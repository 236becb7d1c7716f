//! The Lua scripts (`lua/*.lua`) as Redis runs them: each script's text after a prelude built
//! here from the Rust types that own the formats it shares — stream field names, separators,
//! the packed signal's layout. A script never spells one of them itself; it calls the prelude's
//! functions, so a format changes in one place, and the Rust unit tests of that type cover it.

use redis::Script;

use crate::ingest::ANSWER_SEP;
use crate::keyspace::{IdempotencyRecord, PackedSignal, VERSION_PREFIX, WindowCount};
use crate::stream::entry::{EVENTS, EntrySignal, SIGNALS, STAGED, TENANT};

/// `source` (whose first line is its `#!lua` shebang, which must stay first) with the prelude
/// after that line.
pub fn build(source: &str) -> String {
    let (shebang, body) = source
        .split_once('\n')
        .filter(|(first, _)| first.starts_with("#!lua"))
        .expect("every script starts with its #!lua line");
    format!("{shebang}\n{}{body}", prelude())
}

/// A [`Script`] of `source` with the prelude.
pub fn script(source: &str) -> Script {
    Script::new(&build(source))
}

/// The separator `c` as a Lua pattern item: escaped with `%` unless a letter or digit.
fn item(c: char) -> String {
    if c.is_ascii_alphanumeric() {
        c.to_string()
    } else {
        format!("%{c}")
    }
}

/// A Lua pattern capturing `n` parts between separators `sep` (each possibly empty).
fn parts(n: usize, sep: char) -> String {
    let part = format!("([^{}]*)", item(sep));
    format!("^{}$", vec![part; n].join(&item(sep)))
}

/// Lua source defining the shared names and functions.
pub fn prelude() -> String {
    let packed = parts(5, PackedSignal::SEP);
    let (signal_sep, list_sep) = (EntrySignal::SEP, EntrySignal::LIST_SEP);
    let one_signal = format!(
        "([^{s}{l}]*){s}([^{s}{l}]*){s}([^{s}{l}]*){s}([^{s}{l}]*)",
        s = item(signal_sep),
        l = item(list_sep)
    );
    let window = format!("^(%d+){}(%d+)$", item(WindowCount::SEP));
    let rec = item(IdempotencyRecord::SEP);
    let record = format!("^([^{rec}]*){rec}([^{rec}]*){rec}(.*)$");
    let rec_sep = IdempotencyRecord::SEP;
    let window_sep = WindowCount::SEP;
    format!(
        r#"-- Formats shared with the Rust code, from the types that own them (src/scripts.rs).
-- Stream entry fields (stream::entry).
local ENTRY_TENANT, ENTRY_SIGNALS, ENTRY_EVENTS = '{TENANT}', '{SIGNALS}', '{EVENTS}'
local ENTRY_STAGED = '{STAGED}'
-- Registry hashes keep each entry's version under this prefix (keyspace::VERSION_PREFIX).
local VERSION_PREFIX = '{VERSION_PREFIX}'
-- A packed signal (keyspace::PackedSignal): id, type, active, limit, schema versions.
local function unpack_signal(packed)
  return string.match(packed, '{packed}')
end
-- A slug's window (keyspace::WindowCount): start, admitted; nils when it is not one.
local function read_window(value)
  return string.match(value or '', '{window}')
end
local function window_value(start, admitted)
  return start .. '{window_sep}' .. admitted
end
-- One signal of an entry's s field (stream::entry::EntrySignal), and a whole field's signals.
local function entry_signal(id, typ, latest, admitted)
  return id .. '{signal_sep}' .. typ .. '{signal_sep}' .. latest .. '{signal_sep}' .. admitted
end
local ENTRY_SIGNAL_LIST = '{list_sep}'
local function entry_signals(field)
  return string.gmatch(field, '{one_signal}')
end
-- The recorded answer to a keyed request (keyspace::IdempotencyRecord).
local function record_value(fingerprint, received, signals)
  return fingerprint .. '{rec_sep}' .. received .. '{rec_sep}' .. signals
end
local function read_record(record)
  return string.match(record, '{record}')
end
-- Between the parts of the admission script's answer to a request (ingest::ANSWER_SEP).
local ANSWER_SEP = '{ANSWER_SEP}'
-- (end of the shared formats)
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_escape_punctuation_and_keep_empty_parts() {
        assert_eq!(parts(2, '|'), "^([^%|]*)%|([^%|]*)$");
        assert_eq!(item('a'), "a");
    }

    #[test]
    fn the_shebang_stays_first() {
        let built = build("#!lua flags=no-writes\nreturn 1\n");
        assert!(built.starts_with("#!lua flags=no-writes\n-- Formats shared"));
        assert!(built.ends_with("-- (end of the shared formats)\nreturn 1\n"));
    }
}
