//! The admin HTTP API, on its own listener (`SLUICE__ADMIN__BIND`): every registry task of
//! `sluice-admin` except migrations, for operators and their automation.
//!
//! Every request needs an admin token (`sluice-admin admin-token create`), checked against
//! PostgreSQL before anything else is read, so a revoked token stops at once. Every change goes
//! through [`Registry`], the same code as the CLI, so the registry copy's guarantees hold for
//! both. Answers use the contract's shapes: `{"success": true, "data": ...}` (lists add
//! `next_cursor`), errors `{"success": false, "error": "..."}`.

use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpResponse, web};
use deadpool_postgres::Pool;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::auth::Bearer;
use super::error::ApiError;
use crate::config::Limits;
use crate::domain::{KeyId, Label, PageLimit, PerMinute, SignalType, Slug, TenantId, TenantName};
use crate::keyspace::Keyspace;
use crate::redis_pool::Redis;
use crate::registry::admin_tokens::AdminTokens;
use crate::registry::listing::{KeyInfo, Page, PageRequest, SchemaVersion};
use crate::registry::{Registry, Signal, SignalChange, SyncCounts, Tenant};
use crate::stream::dead_letters::{self, DeadLetter, Replayed};

/// What the admin handlers share.
pub struct AdminState {
    registry: Registry,
    tokens: AdminTokens,
    pg: Pool,
    redis: Redis,
    keyspace: Keyspace,
    limits: Limits,
    /// How long a request body may take to arrive (`SLUICE__API__BODY_TIMEOUT_MS`).
    body_timeout: Duration,
}

impl AdminState {
    pub fn new(
        pg: Pool,
        redis: Redis,
        keyspace: Keyspace,
        limits: Limits,
        body_timeout: Duration,
    ) -> Self {
        AdminState {
            registry: Registry::new(pg.clone(), redis.clone(), keyspace),
            tokens: AdminTokens::new(pg.clone()),
            pg,
            redis,
            keyspace,
            limits,
            body_timeout,
        }
    }

    fn signal(&self, s: Signal) -> SignalView {
        SignalView::new(s, &self.limits)
    }
}

/// Refuses every admin request without a valid admin token, before its body is read.
pub async fn authorize(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let state = req
        .app_data::<web::Data<AdminState>>()
        .cloned()
        .expect("the admin app holds its state");
    let refused = match super::auth::bearer_token(req.request()) {
        Bearer::Missing => Some(ApiError::MissingAdminToken),
        Bearer::Ambiguous => Some(ApiError::InvalidAdminToken),
        Bearer::Token(token) => match state.tokens.verify(token).await {
            Ok(Some(_)) => None,
            Ok(None) => Some(ApiError::InvalidAdminToken),
            Err(e) => Some(e.into()),
        },
    };
    match refused {
        Some(error) => Ok(req.error_response(error)),
        None => Ok(next.call(req).await?.map_into_boxed_body()),
    }
}

/// A request body: a JSON object read into `T`, by the ingest API's rules for a body (media
/// type, gzip, byte order mark, UTF-8, its deadline), at most [`Body::LIMIT`] bytes. Serde would
/// also read a struct from a JSON array of its fields; the admin API takes objects only.
pub struct Body<T>(T);

impl<T> Body<T> {
    /// Admin bodies are small: a signal with its schema is the largest.
    pub const LIMIT: usize = 1 << 20;
}

impl<T> std::ops::Deref for Body<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: serde::de::DeserializeOwned + 'static> actix_web::FromRequest for Body<T> {
    type Error = actix_web::Error;
    type Future = futures_util::future::LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(
        req: &actix_web::HttpRequest,
        payload: &mut actix_web::dev::Payload,
    ) -> Self::Future {
        let req = req.clone();
        let payload = web::Payload::from_request(&req, payload);
        Box::pin(async move {
            let payload = payload.await?;
            let deadline = req
                .app_data::<web::Data<AdminState>>()
                .expect("the admin app holds its state")
                .body_timeout;
            let text = super::body::read_json(&req, payload, Self::LIMIT, deadline).await?;
            let value: Value =
                serde_json::from_str(&text).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
            if !value.is_object() {
                return Err(ApiError::BadRequest("the body must be a JSON object".into()).into());
            }
            T::deserialize(value)
                .map(Body)
                .map_err(|e| ApiError::BadRequest(format!("Invalid request body: {e}")).into())
        })
    }
}

/// Where a list page starts and how long it is.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page, 1-1000.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, default = 100)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page.
    #[param(min_length = 1, max_length = 300, pattern = "^[^\\u0000]*$")]
    cursor: Option<String>,
}

/// A page of schema versions: the cursor is a version number.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct VersionPageQuery {
    /// Items per page, 1-1000.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, default = 100)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,9}$")]
    cursor: Option<String>,
}

/// A page's length: 100 unless asked, 1 to [`PageLimit::MAX`] (the same refusal, naming
/// `limit`, whatever the text).
fn page_limit(limit: Option<&str>) -> Result<PageLimit, ApiError> {
    PageLimit::parse(limit, 100).map_err(ApiError::BadRequest)
}

/// A page of `limit` items after `cursor`, which must be text a list could have returned.
fn page(limit: Option<&str>, cursor: Option<String>) -> Result<PageRequest, ApiError> {
    PageRequest::new(page_limit(limit)?, cursor).map_err(ApiError::BadRequest)
}

impl PageQuery {
    fn page(&self) -> Result<PageRequest, ApiError> {
        page(self.limit.as_deref(), self.cursor.clone())
    }
}

/// `{"success": true, "data": ...}`.
#[derive(Serialize, ToSchema)]
pub struct One<T: ToSchema> {
    /// Always true.
    success: bool,
    data: T,
}

/// One page of a list.
#[derive(Serialize, ToSchema)]
pub struct List<T: ToSchema> {
    /// Always true.
    success: bool,
    data: Vec<T>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

fn one<T: ToSchema + Serialize>(status: actix_web::http::StatusCode, data: T) -> HttpResponse {
    HttpResponse::build(status).json(One {
        success: true,
        data,
    })
}

fn ok<T: ToSchema + Serialize>(data: T) -> HttpResponse {
    one(actix_web::http::StatusCode::OK, data)
}

fn created<T: ToSchema + Serialize>(data: T) -> HttpResponse {
    one(actix_web::http::StatusCode::CREATED, data)
}

fn list<T: ToSchema + Serialize, U>(page: Page<U>, view: impl FnMut(U) -> T) -> HttpResponse {
    HttpResponse::Ok().json(List {
        success: true,
        data: page.items.into_iter().map(view).collect(),
        next_cursor: page.next,
    })
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"id": "ten_AbCdEfGh12345678", "name": "Acme", "partition": 7, "stream": "sluice:{p07}:events"}))]
pub struct TenantView {
    id: String,
    name: String,
    /// The Redis partition the tenant's events queue in.
    partition: u16,
    /// The stream key of that partition.
    stream: String,
}

impl TenantView {
    /// A tenant, with where its events queue: as the admin API and `sluice-admin` show it.
    pub fn new(t: Tenant, keyspace: Keyspace) -> Self {
        let partition = keyspace.partition_of(&t.id);
        TenantView {
            id: t.id,
            name: t.name,
            partition,
            stream: Keyspace::stream(partition),
        }
    }
}

impl AdminState {
    fn tenant(&self, t: Tenant) -> TenantView {
        TenantView::new(t, self.keyspace)
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "Acme"}))]
pub struct NewTenant {
    /// 1-200 characters, not all blank (Unicode White_Space), no NUL; kept without surrounding
    /// blanks.
    #[schema(inline)]
    name: TenantName,
}

/// Creates a tenant.
#[utoipa::path(post, path = "/admin/v1/tenants", tag = "tenants", request_body = NewTenant,
    responses((status = 201, description = "Created", body = One<TenantView>)))]
pub async fn create_tenant(
    state: web::Data<AdminState>,
    body: Body<NewTenant>,
) -> Result<HttpResponse, ApiError> {
    let tenant = state.registry.create_tenant(&body.name).await?;
    Ok(created(state.tenant(tenant)))
}

/// Lists tenants by id.
#[utoipa::path(get, path = "/admin/v1/tenants", tag = "tenants", params(PageQuery),
    responses((status = 200, description = "A page of tenants", body = List<TenantView>)))]
pub async fn list_tenants(
    state: web::Data<AdminState>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = state.registry.tenants(&query.page()?).await?;
    Ok(list(page, |t| state.tenant(t)))
}

/// Shows a tenant, with where its events queue in Redis.
#[utoipa::path(get, path = "/admin/v1/tenants/{tenant_id}", tag = "tenants", params(TenantPath),
    responses((status = 200, description = "The tenant", body = One<TenantView>)))]
pub async fn get_tenant(
    state: web::Data<AdminState>,
    path: web::Path<TenantPath>,
) -> Result<HttpResponse, ApiError> {
    let tenant = state.registry.tenant(&path.tenant_id).await?;
    Ok(ok(state.tenant(tenant)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TenantPath {
    /// `ten_` and 16 letters or digits.
    #[param(inline)]
    tenant_id: TenantId,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SignalPath {
    /// `ten_` and 16 letters or digits.
    #[param(inline)]
    tenant_id: TenantId,
    /// The signal's slug.
    #[param(inline)]
    slug: Slug,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SchemaPath {
    /// `ten_` and 16 letters or digits.
    #[param(inline)]
    tenant_id: TenantId,
    /// The signal's slug.
    #[param(inline)]
    slug: Slug,
    /// A schema version, from 1.
    #[param(value_type = u32, minimum = 1, maximum = 2147483647)]
    version: String,
}

impl SchemaPath {
    /// The version the path names: a 400 naming the rule for anything but 1 to `i32::MAX`.
    fn version(&self) -> Result<u32, ApiError> {
        self.version
            .parse::<i64>()
            .ok()
            .and_then(crate::domain::SchemaVersion::number)
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "schema version must be a whole number from 1 to {}, not {:?}",
                    i32::MAX,
                    self.version
                ))
            })
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct KeyPath {
    /// `key_` and 16 letters or digits.
    #[param(inline)]
    key_id: KeyId,
}

/// An API key: never its secret.
#[derive(Serialize, ToSchema)]
pub struct KeyView {
    #[schema(example = "key_0123456789abcdef")]
    id: String,
    tenant_id: String,
    name: Option<String>,
    #[schema(format = DateTime)]
    created_at: String,
    /// Null while the key works.
    #[schema(format = DateTime)]
    revoked_at: Option<String>,
}

impl From<KeyInfo> for KeyView {
    fn from(k: KeyInfo) -> Self {
        KeyView {
            id: k.id,
            tenant_id: k.tenant_id,
            name: k.name,
            created_at: k.created_at,
            revoked_at: k.revoked_at,
        }
    }
}

/// A new API key with its secret: shown this once, stored only as a hash.
#[derive(Serialize, ToSchema)]
pub struct NewKeyView {
    id: String,
    tenant_id: String,
    name: Option<String>,
    /// The secret, for `Authorization: Bearer`.
    #[schema(example = "sk_3f9a…")]
    key: String,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "production"}))]
pub struct NewKey {
    /// A label for operators, at most 200 characters.
    #[schema(inline)]
    name: Option<Label>,
}

/// Creates an API key for a tenant.
#[utoipa::path(post, path = "/admin/v1/tenants/{tenant_id}/keys", tag = "keys", params(TenantPath),
    request_body = NewKey,
    responses((status = 201, description = "Created; `key` is shown only now", body = One<NewKeyView>)))]
pub async fn create_key(
    state: web::Data<AdminState>,
    path: web::Path<TenantPath>,
    body: Body<NewKey>,
) -> Result<HttpResponse, ApiError> {
    let (id, key) = state
        .registry
        .create_key(&path.tenant_id, body.name.as_ref())
        .await?;
    Ok(created(NewKeyView {
        id: id.to_string(),
        tenant_id: path.tenant_id.to_string(),
        name: body.name.as_ref().and_then(Label::get).map(str::to_owned),
        key: key.expose().to_owned(),
    }))
}

/// Lists a tenant's API keys, revoked ones included.
#[utoipa::path(get, path = "/admin/v1/tenants/{tenant_id}/keys", tag = "keys",
    params(TenantPath, PageQuery),
    responses((status = 200, description = "A page of keys", body = List<KeyView>)))]
pub async fn list_keys(
    state: web::Data<AdminState>,
    path: web::Path<TenantPath>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = state.registry.keys(&path.tenant_id, &query.page()?).await?;
    Ok(list(page, KeyView::from))
}

/// Revokes an API key: every api replica refuses it within 5 seconds. Revoking a revoked key
/// again changes nothing and answers the same.
#[utoipa::path(delete, path = "/admin/v1/keys/{key_id}", tag = "keys", params(KeyPath),
    responses((status = 200, description = "Revoked", body = One<KeyView>)))]
pub async fn revoke_key(
    state: web::Data<AdminState>,
    path: web::Path<KeyPath>,
) -> Result<HttpResponse, ApiError> {
    Ok(ok(KeyView::from(
        state.registry.revoke_key(&path.key_id).await?,
    )))
}

/// A signal as operators see it.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"id": "sig_bFyqj0qg", "tenant_id": "ten_AbCdEfGh12345678", "slug": "page_view",
    "name": "Page view", "type": "event", "active": true, "limit": 100, "default_limit": true,
    "schema_versions": [1]}))]
pub struct SignalView {
    id: String,
    tenant_id: String,
    slug: String,
    name: String,
    #[serde(rename = "type")]
    signal_type: SignalType,
    active: bool,
    /// Events per minute in force.
    limit: u32,
    /// Whether `limit` is the configured default for the type (the signal has none of its own).
    default_limit: bool,
    /// Schema versions, oldest first.
    schema_versions: Vec<u32>,
}

impl SignalView {
    /// A signal with the limit in force (its own, or `limits`' default for its type): as the
    /// admin API and `sluice-admin` show it.
    pub fn new(s: Signal, limits: &Limits) -> Self {
        SignalView {
            limit: s.limit.unwrap_or_else(|| limits.for_type(s.signal_type)),
            default_limit: s.limit.is_none(),
            schema_versions: (1..=s.schema_versions).collect(),
            id: s.id,
            tenant_id: s.tenant_id,
            slug: s.slug,
            name: s.name,
            signal_type: s.signal_type,
            active: s.active,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"slug": "page_view", "type": "event", "name": "Page view", "limit": 500}))]
pub struct NewSignal {
    /// 1-64 characters of a-z, 0-9, `_` and `-`, starting with a letter or digit.
    #[schema(inline)]
    slug: Slug,
    #[serde(rename = "type")]
    signal_type: SignalType,
    /// Default: the slug.
    #[schema(inline)]
    name: Option<Label>,
    /// Events per minute; default: the configured limit for the type.
    #[schema(inline)]
    limit: Option<PerMinute>,
}

/// Registers a signal.
#[utoipa::path(post, path = "/admin/v1/tenants/{tenant_id}/signals", tag = "signals",
    params(TenantPath), request_body = NewSignal,
    responses((status = 201, description = "Created", body = One<SignalView>),
        (status = 409, description = "The tenant has a signal with this slug", body = super::error::Body)))]
pub async fn create_signal(
    state: web::Data<AdminState>,
    path: web::Path<TenantPath>,
    body: Body<NewSignal>,
) -> Result<HttpResponse, ApiError> {
    let signal = state
        .registry
        .create_signal(
            &path.tenant_id,
            &body.slug,
            body.signal_type,
            body.name.as_ref(),
            body.limit,
        )
        .await?;
    Ok(created(state.signal(signal)))
}

/// Lists a tenant's signals by slug.
#[utoipa::path(get, path = "/admin/v1/tenants/{tenant_id}/signals", tag = "signals",
    params(TenantPath, PageQuery),
    responses((status = 200, description = "A page of signals", body = List<SignalView>)))]
pub async fn list_signals(
    state: web::Data<AdminState>,
    path: web::Path<TenantPath>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = state
        .registry
        .signals(&path.tenant_id, &query.page()?)
        .await?;
    Ok(list(page, |s| state.signal(s)))
}

/// Shows a signal.
#[utoipa::path(get, path = "/admin/v1/tenants/{tenant_id}/signals/{slug}", tag = "signals",
    params(SignalPath),
    responses((status = 200, description = "The signal", body = One<SignalView>)))]
pub async fn get_signal(
    state: web::Data<AdminState>,
    path: web::Path<SignalPath>,
) -> Result<HttpResponse, ApiError> {
    let signal = state.registry.signal(&path.tenant_id, &path.slug).await?;
    Ok(ok(state.signal(signal)))
}

/// A change to a signal: the fields given are set, the others stay.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"active": false}))]
pub struct SignalPatch {
    /// False: the signal refuses events (404 on ingest) until set true again.
    active: Option<bool>,
    /// Events per minute; null: back to the configured default for the type.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<PerMinute>, inline)]
    limit: Option<Option<PerMinute>>,
}

/// A field that is present (even as null) is `Some`; an absent one stays `None` by default.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Changes a signal: `{"active": false}`, `{"limit": 500}`, `{"limit": null}`. Setting what is
/// already set answers the same, so a retry is harmless.
#[utoipa::path(patch, path = "/admin/v1/tenants/{tenant_id}/signals/{slug}", tag = "signals",
    params(SignalPath), request_body = SignalPatch,
    responses((status = 200, description = "The signal as changed", body = One<SignalView>)))]
pub async fn patch_signal(
    state: web::Data<AdminState>,
    path: web::Path<SignalPath>,
    body: Body<SignalPatch>,
) -> Result<HttpResponse, ApiError> {
    let change = SignalChange {
        active: body.active,
        limit: body.limit,
    };
    let signal = state
        .registry
        .update_signal(&path.tenant_id, &path.slug, &change)
        .await?;
    Ok(ok(state.signal(signal)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"limit": 500}))]
pub struct LimitBody {
    /// Events per minute; null: the configured default for the type.
    #[serde(deserialize_with = "Option::deserialize")]
    #[schema(required = true, inline)]
    limit: Option<PerMinute>,
}

/// Sets a signal's limit (idempotent: the same request twice leaves the same state).
#[utoipa::path(put, path = "/admin/v1/tenants/{tenant_id}/signals/{slug}/limit", tag = "signals",
    params(SignalPath), request_body = LimitBody,
    responses((status = 200, description = "The signal with its new limit", body = One<SignalView>)))]
pub async fn put_limit(
    state: web::Data<AdminState>,
    path: web::Path<SignalPath>,
    body: Body<LimitBody>,
) -> Result<HttpResponse, ApiError> {
    let change = SignalChange {
        active: None,
        limit: Some(body.limit),
    };
    let signal = state
        .registry
        .update_signal(&path.tenant_id, &path.slug, &change)
        .await?;
    Ok(ok(state.signal(signal)))
}

/// One schema version of a signal.
#[derive(Serialize, ToSchema)]
pub struct SchemaView {
    signal_id: String,
    version: u32,
    /// The JSON Schema events of this version are checked against.
    #[schema(value_type = super::schemas::JsonSchemaDocument)]
    schema: Value,
    #[schema(format = DateTime)]
    created_at: String,
}

impl From<SchemaVersion> for SchemaView {
    fn from(v: SchemaVersion) -> Self {
        SchemaView {
            signal_id: v.signal_id,
            version: v.version,
            schema: v.schema,
            created_at: v.created_at,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"schema": {"type": "object", "required": ["value"],
    "properties": {"value": {"type": "number"}}}}))]
pub struct NewSchema {
    /// A JSON Schema document (an object, or true/false) that PostgreSQL can store.
    #[schema(value_type = super::schemas::JsonSchemaDocument)]
    schema: Value,
}

/// Adds the next schema version of a signal.
#[utoipa::path(post, path = "/admin/v1/tenants/{tenant_id}/signals/{slug}/schemas", tag = "schemas",
    params(SignalPath), request_body = NewSchema,
    responses((status = 201, description = "The new version", body = One<SchemaView>)))]
pub async fn add_schema(
    state: web::Data<AdminState>,
    path: web::Path<SignalPath>,
    body: Body<NewSchema>,
) -> Result<HttpResponse, ApiError> {
    let (_, added) = state
        .registry
        .add_schema(&path.tenant_id, &path.slug, &body.schema)
        .await?;
    Ok(created(SchemaView::from(added)))
}

/// Lists a signal's schema versions, oldest first.
#[utoipa::path(get, path = "/admin/v1/tenants/{tenant_id}/signals/{slug}/schemas", tag = "schemas",
    params(SignalPath, VersionPageQuery),
    responses((status = 200, description = "A page of schema versions", body = List<SchemaView>)))]
pub async fn list_schemas(
    state: web::Data<AdminState>,
    path: web::Path<SignalPath>,
    query: web::Query<VersionPageQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let page = page(query.limit.as_deref(), query.cursor)?;
    let page = state
        .registry
        .schemas(&path.tenant_id, &path.slug, &page)
        .await?;
    Ok(list(page, SchemaView::from))
}

/// Shows one schema version.
#[utoipa::path(get, path = "/admin/v1/tenants/{tenant_id}/signals/{slug}/schemas/{version}",
    tag = "schemas", params(SchemaPath),
    responses((status = 200, description = "The schema version", body = One<SchemaView>)))]
pub async fn get_schema(
    state: web::Data<AdminState>,
    path: web::Path<SchemaPath>,
) -> Result<HttpResponse, ApiError> {
    let version = state
        .registry
        .schema(&path.tenant_id, &path.slug, path.version()?)
        .await?;
    Ok(ok(SchemaView::from(version)))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterQuery {
    /// Include dead letters already replayed.
    #[param(value_type = Option<bool>)]
    all: Option<String>,
    /// Items per page, 1-1000.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, default = 100)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    cursor: Option<String>,
}

/// Lists dead letters, newest first (those not replayed yet, unless `all`).
#[utoipa::path(get, path = "/admin/v1/dead-letters", tag = "dead letters", params(DeadLetterQuery),
    responses((status = 200, description = "A page of dead letters", body = List<DeadLetter>)))]
pub async fn list_dead_letters(
    state: web::Data<AdminState>,
    query: web::Query<DeadLetterQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = page_limit(query.limit.as_deref())?.get();
    let before = query
        .cursor
        .as_deref()
        .map(str::parse::<dead_letters::Cursor>)
        .transpose()
        .map_err(ApiError::BadRequest)?;
    let all = match query.all.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "all must be true or false, not {other:?}"
            )));
        }
    };
    let found = dead_letters::list(&state.pg, all, before, limit).await?;
    Ok(HttpResponse::Ok().json(List {
        success: true,
        data: found.items,
        next_cursor: found.next.map(|id| id.to_string()),
    }))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"id": 12}))]
pub struct ReplayRequest {
    /// One dead letter; without it, every one not replayed yet.
    #[serde(default, deserialize_with = "whole")]
    #[schema(minimum = 1)]
    id: Option<i64>,
}

/// An optional whole number, however written (`12`, `12.0`: JSON Schema's `integer`).
fn whole<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    crate::domain::whole_number(&n)
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom(format!("{n} is not a whole number in range")))
}

#[derive(Serialize, ToSchema)]
pub struct ReplayView {
    /// How many went back on their streams.
    replayed: usize,
    entries: Vec<Replayed>,
}

/// Puts dead letters back on their streams: one by id, or every one not replayed yet. Replaying
/// an event that was stored meanwhile stores nothing twice.
#[utoipa::path(post, path = "/admin/v1/dead-letters/replay", tag = "dead letters",
    request_body = ReplayRequest,
    responses((status = 200, description = "What was replayed", body = One<ReplayView>),
        (status = 404, description = "No dead letter has this id", body = super::error::Body),
        (status = 409, description = "The dead letter cannot go back on a stream (the message says why)",
            body = super::error::Body)))]
pub async fn replay_dead_letters(
    state: web::Data<AdminState>,
    body: Body<ReplayRequest>,
) -> Result<HttpResponse, ApiError> {
    let entries = dead_letters::replay(&state.pg, &state.redis, &state.keyspace, body.id).await?;
    Ok(ok(ReplayView {
        replayed: entries.len(),
        entries,
    }))
}

/// Rebuilds the Redis registry copy from PostgreSQL (what the worker does on its own every
/// reconcile interval); answers what it copied and repaired.
#[utoipa::path(post, path = "/admin/v1/sync", tag = "registry",
    responses((status = 200, description = "Copied", body = One<SyncCounts>)))]
pub async fn sync(state: web::Data<AdminState>) -> Result<HttpResponse, ApiError> {
    Ok(ok(state.registry.sync().await?))
}
