//! The OpenAPI 3.1 documents, assembled from the handlers' own annotations and types: one for
//! the public listener (ingest, self-service, reads, operations), one for the admin listener.
//! Each is served at `GET /openapi.json` on its listener; the worker's document is `ops`'s own.
//!
//! This module imports the handlers and nothing imports it back: the schemas of what the API
//! reads by hand live in the leaf `schemas`. The test command's schemathesis run checks the
//! parsers against them from both sides (valid documents accepted, invalid refused). The
//! responses every operation of a kind shares (401, 503, and 400/404/413/415 where a request
//! has parameters or a body) are added by [`CommonResponses`] from what the operation declares.

use std::sync::OnceLock;

use actix_web::HttpResponse;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{Schema, SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, OpenApi as Document, RefOr, Response, ResponseBuilder,
};
use utoipa::{Modify, OpenApi};

use super::error::Body as ErrorBody;
use super::schemas::{BatchInput, Data, EventInput, Identity, Version};
use super::{admin, events, reads, signals};
use crate::domain::FieldError;
use crate::ops;

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

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = ops::TAG,
    responses((status = 200, description = "OpenAPI 3.1", body = Object)))]
pub async fn public_document() -> HttpResponse {
    static DOC: OnceLock<String> = OnceLock::new();
    ops::serve_document(DOC.get_or_init(|| public().to_json().expect("the document serializes")))
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = ops::TAG, security(()),
    responses((status = 200, description = "OpenAPI 3.1", body = Object)))]
pub async fn admin_document() -> HttpResponse {
    static DOC: OnceLock<String> = OnceLock::new();
    ops::serve_document(DOC.get_or_init(|| admin().to_json().expect("the document serializes")))
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
    /// Decides by what the operation declares: its tag (operations endpoints take no credential
    /// and read no store; ingest answers carry the rate-limit headers), its parameters, its body.
    fn add(&self, op: &mut Operation) {
        let tagged = |op: &Operation, tag: &str| {
            op.tags
                .as_ref()
                .is_some_and(|tags| tags.iter().any(|t| t == tag))
        };
        if tagged(op, ops::TAG) {
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
        let names_a_resource = op
            .parameters
            .iter()
            .flatten()
            .any(|p| matches!(p.parameter_in, utoipa::openapi::path::ParameterIn::Path));
        if names_a_resource {
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
        if tagged(op, events::TAG) {
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
        for item in doc.paths.paths.values_mut() {
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
                self.add(op);
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
