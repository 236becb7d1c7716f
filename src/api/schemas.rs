//! The schemas of what the API reads by hand: the ingest bodies (`domain::event` parses them,
//! for speed and for its exact error messages), the `Idempotency-Key` header, and free-form JSON
//! (`data`, schema documents). A leaf: handlers name these in their annotations, and the
//! documents (`openapi`) collect them; this module imports neither.

use utoipa::openapi::RefOr;
use utoipa::{IntoParams, ToSchema};

use crate::domain::{IdentityId, IdentityType};

/// An event as clients send it.
#[derive(ToSchema)]
#[allow(dead_code)] // described, not built: `domain::event` parses the body
#[schema(example = json!({"signal": "page_view", "identity": {"type": "account", "id": "acc_42"},
    "data": {"path": "/pricing"}, "timestamp": "2026-11-26T10:14:03Z", "reference": "evt-001"}))]
pub struct EventInput {
    /// The slug of an active signal of the key's tenant.
    #[schema(min_length = 1, max_length = 64)]
    signal: String,
    /// A schema version (positive integer) or `"latest"` (the default).
    #[schema(value_type = Option<Version>)]
    version: (),
    identity: Identity,
    /// Any JSON object that can be stored; default `{}`.
    #[schema(value_type = Option<Data>)]
    data: (),
    /// RFC 3339 with an offset, in years 1 to 9999 once in UTC (so not 0001-01-01 with a
    /// positive offset, nor 9999-12-31 with a negative one); a leap second (`23:59:60`) is the
    /// start of the next second, so not 9999-12-31T23:59:60Z either. Default: the time of
    /// receipt.
    #[schema(
        value_type = Option<String>,
        format = DateTime,
        pattern = r"^(?!0000)(?!0001-01-01T[^+]*\+)(?!9999-12-31T[^Zz+]*-)(?!9999-12-31T23:59:60[^+]*(?:[Zz]|\+00:00)$)"
    )]
    timestamp: (),
    /// Echoed back in the answer; at most 256 characters.
    #[schema(value_type = Option<String>, max_length = 256, pattern = "^[^\\u0000]*$")]
    reference: (),
}

/// What the server refuses in free-form JSON, for the descriptions (`domain::json_guard`).
const STORABLE: &str = "The server refuses (400) what PostgreSQL could not store: a NUL \
    character (`\\u0000`) in any string or key, a number beyond a 64-bit float, or nesting deeper \
    than 64 levels.";

/// A JSON object of any shape, described as generators take it: `{"type": "object",
/// "additionalProperties": true}`. (A precise recursive schema of what can be stored made the
/// common client generators drop the type, and with it every event's `data`.)
pub fn free_form_object(description: impl Into<String>) -> utoipa::openapi::schema::ObjectBuilder {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(
            AdditionalProperties::<utoipa::openapi::schema::Schema>::FreeForm(true),
        ))
        .description(Some(description))
}

/// An event's `data`: any JSON object that can be stored.
pub struct Data;

impl utoipa::PartialSchema for Data {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        free_form_object(format!("Any JSON object; default `{{}}`. {STORABLE}")).into()
    }
}

impl ToSchema for Data {}

/// A JSON Schema document as a signal's schema.
pub struct JsonSchemaDocument;

impl utoipa::PartialSchema for JsonSchemaDocument {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AnyOfBuilder, ObjectBuilder, Type};
        AnyOfBuilder::new()
            .item(free_form_object("A JSON Schema document".to_owned()))
            .item(ObjectBuilder::new().schema_type(Type::Boolean))
            .description(Some(format!(
                "A JSON Schema (draft 2020-12 and earlier), or true/false; it must itself be a \
                 valid schema. {STORABLE}"
            )))
            .into()
    }
}

impl ToSchema for JsonSchemaDocument {}

/// A schema version: a positive integer, or `"latest"`.
pub struct Version;

impl utoipa::PartialSchema for Version {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1))
                    .maximum(Some(i32::MAX)),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["latest"])),
            )
            .description(Some("A schema version number, or `latest`"))
            .into()
    }
}

impl ToSchema for Version {}

/// The CRM object an event is about.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Identity {
    /// `account`, `contact`, `deal`, `lead`, or a custom type of 1-64 characters of a-z, 0-9,
    /// `_` and `-`.
    #[serde(rename = "type")]
    #[schema(value_type = IdentityType, inline)]
    kind: String,
    /// The object's id in the CRM, 1-256 characters.
    #[schema(value_type = IdentityId, inline)]
    id: String,
}

/// The ingest endpoints' `Idempotency-Key` header.
#[derive(IntoParams)]
#[allow(dead_code)]
#[into_params(names("Idempotency-Key"), parameter_in = Header)]
pub struct IdempotencyKey(
    /// Makes a retry safe: a request repeated with the same key within 24 hours (by default)
    /// answers what the first answered, with the same event ids, and stores nothing again.
    /// 1-255 visible ASCII characters, or the same as a structured-field string (`"..."`, with
    /// `\"` and `\\` as escapes).
    #[param(
        min_length = 1,
        max_length = 512,
        pattern = r#"^([!#-~][!-~]{0,254}|"([!#-\[\]-~]|\\["\\]){1,255}")$"#
    )]
    Option<String>,
);

/// `POST /v1/events/batch`'s body.
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(example = json!({"events": [
    {"signal": "page_view", "identity": {"type": "account", "id": "acc_123"},
     "data": {"path": "/pricing"}, "reference": "evt-001"},
    {"signal": "mrr", "identity": {"type": "account", "id": "acc_123"},
     "data": {"value": 499.0}, "reference": "evt-002"}]}))]
pub struct BatchInput {
    /// 1 to 100 events.
    #[schema(min_items = 1, max_items = 100)]
    events: Vec<EventInput>,
}
