//! The partition streams: the one contract between the api, which admits events into them, and
//! the worker, which drains them into PostgreSQL. Everything about them lives here.
//!
//! - [`entry`]: the entry format, one entry per admitted request. The api builds the events
//!   field ([`entry::events_field`]), staging a large one under a key of its own;
//!   `lua/admit.lua` adds the tenant and what it admitted; the worker and the tests read entries
//!   back (staged events first put back in their entry, [`group`]) with
//!   [`entry::StreamEntry::decode_all`] and nothing else (which also reads the one-event layout
//!   of earlier versions and of dead letters).
//! - [`group`]: the consumer group `sluice` over every partition stream: reading, claiming from
//!   consumers presumed dead, acknowledging, trimming below what the group still needs, and the
//!   per-partition figures the worker publishes.
//! - [`dead_letters`]: entries that can never be stored: recorded in `dead_letters` and the
//!   partition's dead stream, listed and replayed by operators.
//!
//! The keys are named in [`crate::keyspace`].

pub mod dead_letters;
pub mod entry;
pub mod group;

pub use entry::{Meta, StreamEntry, StreamEvent, event_id_of};
pub use group::{Consumer, RawEntry};
