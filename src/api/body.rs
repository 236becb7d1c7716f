//! Reading a JSON request body: media type, optional gzip, and the size limit, which applies
//! to the decompressed bytes so a small gzip bomb cannot expand past it.

use std::io::Read;
use std::time::Duration;

use actix_web::HttpRequest;
use actix_web::http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::web::Payload;
use futures_util::StreamExt;

use super::error::ApiError;

/// Reads the body of `req` as UTF-8 JSON text of at most `limit` bytes after decompression,
/// within `deadline` (a client trickling its body is answered 408).
pub async fn read_json(
    req: &HttpRequest,
    mut payload: Payload,
    limit: usize,
    deadline: Duration,
) -> Result<String, ApiError> {
    if !is_json(req) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let gzip = match req.headers().get(CONTENT_ENCODING).map(|v| v.to_str()) {
        None => false,
        Some(Ok(v)) if v.trim().eq_ignore_ascii_case("identity") => false,
        Some(Ok(v))
            if v.trim().eq_ignore_ascii_case("gzip") || v.trim().eq_ignore_ascii_case("x-gzip") =>
        {
            true
        }
        Some(Ok(v)) => return Err(ApiError::UnsupportedEncoding(v.chars().take(64).collect())),
        Some(Err(_)) => return Err(ApiError::UnsupportedEncoding("(not text)".to_owned())),
    };
    // An honest Content-Length lets an oversized plain body be refused before it is read.
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if !gzip && declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }

    // Compressed input is never larger than the limit either: gzip that does not shrink its
    // content is not worth sending.
    let mut raw = Vec::with_capacity(declared.unwrap_or(0).min(limit));
    let read = async {
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::BadRequest(format!("Could not read the request body: {e}"))
            })?;
            if raw.len() + chunk.len() > limit {
                return Err(ApiError::PayloadTooLarge { limit });
            }
            raw.extend_from_slice(&chunk);
        }
        Ok(())
    };
    tokio::time::timeout(deadline, read)
        .await
        .map_err(|_| ApiError::BodyTimeout(deadline))??;

    let mut bytes = if gzip {
        let mut out = Vec::with_capacity((raw.len() * 4).min(limit));
        flate2::read::MultiGzDecoder::new(&raw[..])
            .take(limit as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| ApiError::BadRequest(format!("Invalid gzip body: {e}")))?;
        if out.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        out
    } else {
        raw
    };
    if bytes.starts_with(crate::json::BOM.as_bytes()) {
        bytes.drain(..crate::json::BOM.len());
    }
    String::from_utf8(bytes).map_err(|e| {
        ApiError::InvalidJson(format!(
            "body is not valid UTF-8 at byte {}",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// `application/json`, or a JSON-based type (`application/<name>+json`, RFC 6839), with or
/// without parameters such as `charset=utf-8`.
fn is_json(req: &HttpRequest) -> bool {
    let Some(essence) = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
    else {
        return false;
    };
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    if !kind.eq_ignore_ascii_case("application") {
        return false;
    }
    if subtype.eq_ignore_ascii_case("json") {
        return true;
    }
    // `<name>+json`: a name of at least one character, the suffix in any case.
    let cut = subtype.len().saturating_sub("+json".len());
    cut > 0
        && subtype.is_char_boundary(cut)
        && subtype[cut..].eq_ignore_ascii_case("+json")
        && !subtype[..cut].contains('/')
}
