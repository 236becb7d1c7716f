//! Integration tests: the api, the admission script and `sluice-admin` against real Redis and
//! PostgreSQL processes started by `support`.

mod admin;
mod admin_api;
mod cluster;
mod errors;
mod faults;
mod formats;
mod generators;
mod hostile;
mod idempotency;
mod ingest;
mod layout;
mod limits;
mod memory;
mod openapi;
mod ops;
mod reads;
mod reconnect;
mod recovery;
mod registry;
mod sdk;
mod selfservice;
mod staged;
mod support;
mod tls;
mod worker;
