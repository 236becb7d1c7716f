//! Sends a batch whose events carry nested `data`, reads `GET /v1/signals`, and creates a
//! tenant, a key, a signal and a schema, all through the generated clients' typed calls. Prints
//! what came back as one JSON object. Reads `SLUICE_URL`, `SLUICE_KEY`, `SLUICE_ADMIN_URL` and
//! `SLUICE_ADMIN_TOKEN`.

// Generated code, of which this program uses a part.
#[allow(dead_code, unused_imports)]
mod admin;
#[allow(dead_code, unused_imports)]
mod public;

use std::collections::BTreeMap;

use serde_json::{Value, json};

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

fn fields(value: Value) -> BTreeMap<String, Value> {
    match value {
        Value::Object(map) => map.into_iter().collect(),
        other => panic!("not an object: {other}"),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let api = public::HttpClient::new()
        .with_base_url(var("SLUICE_URL"))
        .with_api_key(var("SLUICE_KEY"));
    let mut event = public::EventInput::new(
        public::Identity {
            id: "acc_rust".into(),
            r#type: "account".into(),
        },
        "page_view".into(),
    );
    event.data = Some(Some(public::Data {
        additional_properties: fields(json!({
            "path": "/pricing",
            "visit": {"tags": ["a", {"deep": [1, 2.5, null, true]}], "count": 3},
        })),
    }));
    event.reference = Some(Some("rust-1".into()));
    let batch = api
        .batch(None::<&str>, public::BatchInput { events: vec![event] })
        .await
        .expect("POST /v1/events/batch");
    let signals = api.list().await.expect("GET /v1/signals");

    let admin = admin::HttpClient::new()
        .with_base_url(var("SLUICE_ADMIN_URL"))
        .with_api_key(var("SLUICE_ADMIN_TOKEN"));
    let tenant = admin
        .create_tenant(admin::NewTenant {
            name: "Generated in Rust".into(),
        })
        .await
        .expect("POST /admin/v1/tenants");
    let tenant_id = serde_json::to_value(&tenant).unwrap()["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = admin
        .create_key(&tenant_id, admin::NewKey::default())
        .await
        .expect("POST /admin/v1/tenants/{id}/keys");
    let signal = admin
        .create_signal(
            &tenant_id,
            admin::NewSignal::new("checkout".into(), admin::SignalType::Metric),
        )
        .await
        .expect("POST /admin/v1/tenants/{id}/signals");
    let schema = admin
        .add_schema(
            &tenant_id,
            "checkout",
            admin::NewSchema {
                schema: admin::JsonSchemaDocument::JSONContent(admin::JSONContent {
                    additional_properties: fields(json!({
                        "type": "object",
                        "required": ["value"],
                        "properties": {"value": {"type": "number"}},
                    })),
                }),
            },
        )
        .await
        .expect("POST /admin/v1/tenants/{id}/signals/{slug}/schemas");
    let out = json!({
        "batch": batch, "signals": signals, "tenant": tenant, "key": key,
        "signal": signal, "schema": schema,
    });
    println!("{out}");
}
