//! Checks that syntactically valid JSON can also be stored and read back by the rest of the
//! pipeline. serde_json accepts three things that PostgreSQL's `jsonb` or the worker cannot hold:
//!
//! - the escape `\u0000` (PostgreSQL text cannot contain NUL),
//! - unpaired UTF-16 surrogate escapes such as `\ud800`,
//! - numbers outside the range of a 64-bit float, such as `1e400`,
//! - nesting deeper than [`MAX_DEPTH`] (serde_json, and so the worker, stops at 128 levels).
//!
//! Catching them at the edge turns a would-be poison event into a clear 400.
//! The scan walks the raw text once and allocates nothing; inside strings it looks only for
//! quotes and escapes, and it reads a number only when it could be out of range.

/// Deepest nesting of arrays and objects accepted in event data.
pub const MAX_DEPTH: usize = 64;

/// Returns why `raw` (already known to be valid JSON) cannot be stored, if it cannot.
pub fn unstorable(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut i = 0;
    let mut depth = 0usize;
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some(format!("nesting deeper than {MAX_DEPTH} levels"));
                }
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'"' => match scan_string(bytes, i + 1) {
                Ok(end) => i = end,
                Err(why) => return Some(why),
            },
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let number = &raw[start..i];
                // Without an exponent, fewer than 309 characters are below 1e308: finite.
                if number.len() < 309 && !number.bytes().any(|b| b == b'e' || b == b'E') {
                    continue;
                }
                match number.parse::<f64>() {
                    Ok(v) if v.is_finite() => {}
                    _ => return Some(format!("number {} is out of range", shorten(number))),
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// Scans a string body from just after its opening quote; returns the index after the
/// closing quote.
fn scan_string(bytes: &[u8], mut i: usize) -> Result<usize, String> {
    // Only quotes and escapes matter: the bytes between them are skipped many at a time.
    while let Some(next) = bytes
        .get(i..)
        .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
    {
        i += next;
        match bytes[i] {
            b'"' => return Ok(i + 1),
            b'\\' if bytes.get(i + 1) == Some(&b'u') => {
                let unit = hex4(bytes, i + 2);
                i += 6;
                match unit {
                    Some(0) => return Err("strings must not contain \\u0000".to_owned()),
                    Some(0xD800..=0xDBFF) => {
                        let low = if bytes.get(i) == Some(&b'\\') && bytes.get(i + 1) == Some(&b'u')
                        {
                            hex4(bytes, i + 2)
                        } else {
                            None
                        };
                        match low {
                            Some(0xDC00..=0xDFFF) => i += 6,
                            _ => {
                                return Err("strings must not contain unpaired surrogate escapes"
                                    .to_owned());
                            }
                        }
                    }
                    Some(0xDC00..=0xDFFF) => {
                        return Err(
                            "strings must not contain unpaired surrogate escapes".to_owned()
                        );
                    }
                    _ => {}
                }
            }
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    Ok(bytes.len())
}

fn hex4(bytes: &[u8], at: usize) -> Option<u32> {
    let digits = bytes.get(at..at + 4)?;
    let s = std::str::from_utf8(digits).ok()?;
    u32::from_str_radix(s, 16).ok()
}

fn shorten(s: &str) -> String {
    if s.len() <= 24 {
        s.to_owned()
    } else {
        format!("{}…", &s[..24])
    }
}

#[cfg(test)]
mod tests {
    use super::unstorable;

    #[test]
    fn ordinary_json_is_storable() {
        for ok in [
            r#"{}"#,
            r#"{"a":[1,-2.5,3e10,true,null],"b":"x\\u0000y","c":"\ud83d\ude00","d":"\"\\"}"#,
            r#"{"n": 1.7976931348623157e308, "é": "ünïcödé"}"#,
            &format!("{}{}", "[".repeat(64), "]".repeat(64)),
            &format!(r#"{{"n":-{}.5,"m":{}}}"#, "9".repeat(300), "9".repeat(308)),
            r#"{"s":"a\"b\\","t":"\\u0000 is text here","u":"x\\"}"#,
            r#"{"[": "{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{"}"#,
        ] {
            assert_eq!(unstorable(ok), None, "{ok}");
        }
    }

    #[test]
    fn values_postgres_or_the_worker_cannot_hold_are_caught() {
        for bad in [
            r#"{"a":"x\u0000"}"#,
            r#"{"\u0000":1}"#,
            r#"{"a":"\ud800"}"#,
            r#"{"a":"\ud800\u0041"}"#,
            r#"{"a":"\udc00"}"#,
            r#"{"a":1e400}"#,
            r#"{"a":-1e400}"#,
            &format!(r#"{{"a":{}}}"#, "9".repeat(309)),
            &format!(r#"{{"a":"{}\\","b":"\u0000"}}"#, "x".repeat(100)),
            &format!("{}{}", "[".repeat(65), "]".repeat(65)),
        ] {
            assert!(unstorable(bad).is_some(), "{bad}");
        }
    }
}
