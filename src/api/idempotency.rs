//! The `Idempotency-Key` request header of the ingest endpoints, as the IETF httpapi draft "The
//! Idempotency-Key HTTP Header Field" and Stripe's API define it: sent once, 1–255 visible ASCII
//! characters, optionally as a structured-field string (`"…"`, quotes removed, `\"` and `\\`
//! unescaped). Anything else is a 400 naming the header.

use actix_web::HttpRequest;

use super::error::ApiError;

pub const HEADER: &str = "Idempotency-Key";
/// The answer header of a replayed request.
pub const REPLAYED: &str = "Idempotent-Replayed";
const MAX_LEN: usize = 255;

/// The request's key, if it sent one.
pub fn key_of(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let mut values = req.headers().get_all(HEADER);
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(invalid("must be sent once"));
    }
    parse(value.as_bytes()).map(Some)
}

fn parse(raw: &[u8]) -> Result<String, ApiError> {
    let raw = raw.trim_ascii();
    let key = match raw {
        [b'"', inner @ .., b'"'] => unquote(inner)?,
        [b'"', ..] => return Err(invalid("is a malformed quoted string")),
        _ => raw.to_vec(),
    };
    if key.is_empty() || key.len() > MAX_LEN || !key.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(invalid("must be 1 to 255 visible ASCII characters"));
    }
    // Only visible ASCII is left, so this cannot fail.
    String::from_utf8(key).map_err(|_| invalid("must be 1 to 255 visible ASCII characters"))
}

/// The content of a structured-field string: `\"` and `\\` are escapes, any other backslash or
/// a bare quote makes it malformed.
fn unquote(inner: &[u8]) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::with_capacity(inner.len());
    let mut bytes = inner.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some(&e @ (b'"' | b'\\')) => out.push(e),
                _ => return Err(invalid("is a malformed quoted string")),
            },
            b'"' => return Err(invalid("is a malformed quoted string")),
            _ => out.push(b),
        }
    }
    Ok(out)
}

fn invalid(why: &str) -> ApiError {
    ApiError::BadRequest(format!("{HEADER} {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_quoted_keys_are_read_as_the_draft_writes_them() {
        assert_eq!(parse(b"abc-123").unwrap(), "abc-123");
        assert_eq!(parse(b"\"abc-123\"").unwrap(), "abc-123");
        assert_eq!(parse(b"\"a\\\"b\\\\c\"").unwrap(), "a\"b\\c");
        assert_eq!(parse(&[b'k'; 255]).unwrap().len(), 255);
        for bad in [
            &b""[..],
            b"\"\"",
            b"has space",
            b"\"has space\"",
            b"caf\xc3\xa9",
            b"tab\there",
            b"\"unterminated",
            b"\"bad\\escape\"",
            b"\"in\"side\"",
            &[b'k'; 256],
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
