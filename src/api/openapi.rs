//! The OpenAPI 3.1 documents, generated from the handlers' own annotations and types: one for
//! the public listener (ingest, self-service, operations), one for the admin listener. Each is
//! served at `GET /openapi.json` on its listener.
//!
//! The ingest request bodies are parsed by hand (`domain::event`, for speed and for its exact
//! error messages), so their schemas are described here; the test command's schemathesis run
//! checks the parser against them from both sides (valid documents accepted, invalid refused).
//! The responses every operation of a kind shares (401, 503, and 400/404/413/415 where a request
//! has parameters or a body) are added by [`CommonResponses`] from what the operation takes.

use std::sync::OnceLock;

use actix_web::HttpResponse;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{Schema, SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, OpenApi as Document, RefOr, Response, ResponseBuilder,
};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use super::error::Body as ErrorBody;
use super::{admin, events, reads, signals};
use crate::domain::{FieldError, IdentityId, IdentityType};
use crate::ops;

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
    /// RFC 3339 with an offset, in year 1 or later once in UTC (so not 0001-01-01 with a
    /// positive offset); default: the time of receipt.
    #[schema(value_type = Option<String>, format = DateTime, pattern = r"^(?!0000)(?!0001-01-01T[^+]*\+)")]
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
fn free_form_object(description: String) -> utoipa::openapi::schema::ObjectBuilder {
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

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sluice ingest API",
        description = "Send CRM signals: events are checked against the tenant's registered \
                       signals, rate limited per signal, acknowledged at once with an id and status \
                       `pending`, then stored exactly once. Errors share one shape: \
                       `{\"success\": false, \"error\": \"...\"}`."
    ),
    paths(events::batch, events::single, signals::list, signals::one, reads::event,
        reads::events, reads::identity_states, reads::rollups, ops::livez, ops::readyz,
        ops::metrics, public_document),
    components(schemas(ErrorBody, FieldError, EventInput, Identity, Version, Data, BatchInput)),
    modifiers(&PublicSecurity, &PUBLIC_RESPONSES, &PlainFields),
    tags((name = "ingest", description = "Send events"),
        (name = "self-service", description = "Your signals and their rate-limit windows"),
        (name = "reads", description = "What became of your events: each one's status, lists by \
            signal, status, identity and time, identities' latest states, metrics' rollups"),
        (name = "operations", description = "Health, metrics and this document")),
)]
struct PublicDoc;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sluice admin API",
        description = "Operate Sluice over HTTP: tenants, API keys, signals, schemas, dead letters \
                       and the registry copy. Every request needs an admin token \
                       (`sluice-admin admin-token create`) as `Authorization: Bearer sat_...`."
    ),
    paths(admin::create_tenant, admin::list_tenants, admin::get_tenant, admin::create_key,
        admin::list_keys, admin::revoke_key, admin::create_signal, admin::list_signals,
        admin::get_signal, admin::patch_signal, admin::put_limit, admin::add_schema,
        admin::list_schemas, admin::get_schema, admin::list_dead_letters,
        admin::replay_dead_letters, admin::sync, admin_document),
    components(schemas(ErrorBody)),
    modifiers(&AdminSecurity, &ADMIN_RESPONSES, &PlainFields),
)]
struct AdminDoc;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sluice worker",
        description = "The worker's operations listener (`SLUICE__WORKER__METRICS_BIND`): health, \
                       metrics and this document."
    ),
    paths(ops::livez, ops::readyz, ops::metrics, operations_document)
)]
struct OperationsDoc;

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1", body = Object)))]
pub async fn operations_document() -> HttpResponse {
    static DOC: OnceLock<String> = OnceLock::new();
    serve(DOC.get_or_init(|| {
        let mut doc = OperationsDoc::openapi();
        doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
        doc.to_json().expect("the document serializes")
    }))
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1", body = Object)))]
pub async fn public_document() -> HttpResponse {
    static DOC: OnceLock<String> = OnceLock::new();
    serve(DOC.get_or_init(|| public().to_json().expect("the document serializes")))
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "OpenAPI 3.1", body = Object)))]
pub async fn admin_document() -> HttpResponse {
    static DOC: OnceLock<String> = OnceLock::new();
    serve(DOC.get_or_init(|| admin().to_json().expect("the document serializes")))
}

/// Answers a document built once per process (held in a static, so never copied).
fn serve(doc: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(doc)
}

/// The public listener's document.
pub fn public() -> Document {
    let mut doc = PublicDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

/// The admin listener's document.
pub fn admin() -> Document {
    let mut doc = AdminDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

fn bearer(doc: &mut Document, name: &str, format: &str, what: &str) {
    let scheme = HttpBuilder::new()
        .scheme(HttpAuthScheme::Bearer)
        .bearer_format(format)
        .description(Some(what))
        .build();
    doc.components
        .get_or_insert_with(Default::default)
        .add_security_scheme(name, SecurityScheme::Http(scheme));
}

/// A body field of a rule type (`domain::text`) comes out of the derive as a `oneOf` of the
/// rule's schema, carrying the field's description, and of `null` when the field is optional.
/// This writes each such field as the one schema it stands for (`"type": ["string", "null"]`),
/// the shape client generators read best.
struct PlainFields;

impl Modify for PlainFields {
    fn modify(&self, doc: &mut Document) {
        let Some(components) = doc.components.as_mut() else {
            return;
        };
        for schema in components.schemas.values_mut() {
            if let RefOr::T(Schema::Object(object)) = schema {
                object.properties.values_mut().for_each(plain_field);
            }
        }
    }
}

fn plain_field(field: &mut RefOr<Schema>) {
    let RefOr::T(Schema::OneOf(one_of)) = field else {
        return;
    };
    let null = |s: &&RefOr<Schema>| matches!(s, RefOr::T(Schema::Object(o)) if o.schema_type == SchemaType::Type(Type::Null));
    let nullable = one_of.items.iter().any(|s| null(&s));
    let rest: Vec<_> = one_of.items.iter().filter(|s| !null(s)).collect();
    let [RefOr::T(Schema::Object(rule))] = rest.as_slice() else {
        return;
    };
    let mut plain = rule.clone();
    if nullable && let SchemaType::Type(t) = plain.schema_type {
        plain.schema_type = SchemaType::from_iter([t, Type::Null]);
    }
    plain.description = one_of.description.clone().or(plain.description);
    *field = RefOr::T(Schema::Object(plain));
}

struct PublicSecurity;

impl Modify for PublicSecurity {
    fn modify(&self, doc: &mut Document) {
        bearer(
            doc,
            "api_key",
            "sk_…",
            "An API key of the tenant (`sluice-admin key create` or `POST /admin/v1/tenants/{tenant_id}/keys`).",
        );
    }
}

struct AdminSecurity;

impl Modify for AdminSecurity {
    fn modify(&self, doc: &mut Document) {
        bearer(
            doc,
            "admin_token",
            "sat_…",
            "An admin token (`sluice-admin admin-token create`).",
        );
        let requirement = utoipa::openapi::security::SecurityRequirement::new(
            "admin_token",
            Vec::<String>::new(),
        );
        doc.security = Some(vec![requirement]);
    }
}

/// Adds the answers an operation can give because of what it takes, where it does not say them
/// itself: 401 when it needs a credential, 400 for parameters or a body, 404 for a path naming a
/// resource, 413/415 for a body, 503 when it reads a store.
struct CommonResponses {
    /// The security scheme of authenticated operations.
    bearer: &'static str,
    /// What the credential is called in the messages.
    who: &'static str,
}

const PUBLIC_RESPONSES: CommonResponses = CommonResponses {
    bearer: "api_key",
    who: "API key",
};

const ADMIN_RESPONSES: CommonResponses = CommonResponses {
    bearer: "admin_token",
    who: "admin token",
};

fn error(description: &str, headers: &[(&str, &str)]) -> RefOr<Response> {
    let mut response = ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                "Error",
            ))))
            .build(),
    );
    for (name, about) in headers {
        let schema = utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .build();
        response = response.header(
            *name,
            HeaderBuilder::new()
                .schema(schema)
                .description(Some(*about))
                .build(),
        );
    }
    RefOr::T(response.build())
}

impl CommonResponses {
    fn add(&self, path: &str, op: &mut Operation) {
        let public =
            path == "/openapi.json" || path == "/livez" || path == "/readyz" || path == "/metrics";
        if public {
            return;
        }
        let responses = &mut op.responses.responses;
        let mut add = |status: &str, response: RefOr<Response>| {
            responses.entry(status.to_owned()).or_insert(response);
        };
        let missing = if self.bearer == "api_key" {
            "Missing API key"
        } else {
            "Missing admin token"
        };
        add(
            "401",
            error(
                &format!("`{missing}` or `Invalid {}`", self.who),
                &[("WWW-Authenticate", "`Bearer`")],
            ),
        );
        let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
        if has_params || op.request_body.is_some() {
            add(
                "400",
                error("The request is not valid (the message says what)", &[]),
            );
        }
        if path.contains('{') {
            add("404", error("What the path names does not exist", &[]));
        }
        if op.request_body.is_some() {
            add("413", error("The body is larger than the limit", &[]));
            add("415", error("The body is not `application/json`", &[]));
        }
        add(
            "503",
            error(
                "A store (Redis or PostgreSQL) did not answer in time, or (ingest) the backlog of \
                 events not yet stored fills Redis's memory; retry after `Retry-After`",
                &[("Retry-After", "Seconds to wait before retrying")],
            ),
        );
        if path.starts_with("/v1/events") {
            for status in ["200", "429"] {
                if let Some(RefOr::T(response)) = op.responses.responses.get_mut(status) {
                    add_rate_limit_headers(response);
                }
            }
        }
        if op.security.is_none() && self.bearer == "api_key" {
            op.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
                self.bearer,
                Vec::<String>::new(),
            )]);
        }
    }
}

/// The `X-RateLimit-*` headers of every 200 and 429 from the ingest endpoints.
fn add_rate_limit_headers(response: &mut Response) {
    let integer = || {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Integer)
            .minimum(Some(0))
            .build()
    };
    for (name, about, schema) in [
        (
            "X-RateLimit-Limit",
            "The highest limit among the request's signals",
            integer(),
        ),
        (
            "X-RateLimit-Remaining",
            "The lowest remaining count among them, after this request",
            integer(),
        ),
        (
            "X-RateLimit-Reset",
            "When the current window ends, ISO 8601 UTC, e.g. `2026-11-26T10:15:00Z`",
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                    utoipa::openapi::KnownFormat::DateTime,
                )))
                .build(),
        ),
    ] {
        response.headers.insert(
            name.to_owned(),
            HeaderBuilder::new()
                .schema(schema)
                .description(Some(about))
                .build(),
        );
    }
}

impl Modify for CommonResponses {
    fn modify(&self, doc: &mut Document) {
        for (path, item) in doc.paths.paths.iter_mut() {
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                self.add(path, op);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_openapi_3_1_and_keep_to_their_listener() {
        let public = serde_json::to_value(public()).unwrap();
        assert_eq!(public["openapi"], "3.1.0");
        let paths = public["paths"].as_object().unwrap();
        assert!(paths.contains_key("/v1/events/batch"));
        assert!(paths.contains_key("/v1/signals/{slug}"));
        assert!(paths.keys().all(|p| !p.starts_with("/admin")), "{paths:?}");

        let admin = serde_json::to_value(admin()).unwrap();
        let paths = admin["paths"].as_object().unwrap();
        assert!(paths.contains_key("/admin/v1/tenants/{tenant_id}/signals/{slug}"));
        assert!(paths.keys().all(|p| !p.starts_with("/v1")), "{paths:?}");
        // Every admin operation can answer 401 and 503 in the error shape.
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                if path == "/openapi.json" {
                    continue;
                }
                for status in ["401", "503"] {
                    assert!(
                        op["responses"].get(status).is_some(),
                        "{method} {path} lacks {status}"
                    );
                }
            }
        }
    }
}
