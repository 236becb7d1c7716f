//! One batch, from stream entries to stored rows: decode, validate, store in one transaction
//! (or event by event when PostgreSQL refuses the batch), dead-letter what can never be stored,
//! then acknowledge.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::Worker;
use super::sink::{self, Record};
use crate::keyspace::Keyspace;
use crate::stream::dead_letters;
use crate::stream::{RawEntry, StreamEntry};

impl Worker {
    /// Stores one batch of entries and acknowledges them: every event of an entry is stored
    /// (or dead-lettered alone) before the entry is acknowledged. Returns early only on
    /// shutdown while a dependency is down, leaving the entries pending for another worker.
    pub(super) async fn process(&self, entries: Vec<RawEntry>) {
        let timer = Instant::now();
        let Some(batch) = self.decode(entries).await else {
            return;
        };
        let Some(records) = self.validate(batch.events, &batch.held).await else {
            return;
        };
        if !self.store(&records, &batch.origins, &batch.held).await {
            return;
        }
        if let Err(e) = self.streams.ack(&batch.held).await {
            // Stored but still pending: a later claim redelivers them and the insert is a no-op.
            tracing::warn!(error = %e, "acknowledging failed; entries will be claimed again");
        }
        self.metrics
            .batch_duration
            .observe(timer.elapsed().as_secs_f64());
        if !batch.held.is_empty() {
            let per_entry = records
                .len()
                .div_ceil(batch.held.len())
                .clamp(1, crate::domain::MAX_BATCH);
            self.events_per_entry
                .store(per_entry as u32, Ordering::Relaxed);
        }
    }

    /// The events of `entries`, each with where it came from; what cannot be read is
    /// dead-lettered on the way. `None` on shutdown during an outage.
    async fn decode(&self, entries: Vec<RawEntry>) -> Option<Decoded> {
        let mut batch = Decoded {
            events: Vec::with_capacity(entries.len()),
            origins: Vec::with_capacity(entries.len()),
            held: Vec::with_capacity(entries.len()),
        };
        let mut unreadable = Vec::new();
        for raw in entries {
            let events = match StreamEntry::decode_all(|f| raw.field(f)) {
                Ok(events) => events,
                Err(reason) => {
                    // An entry that cannot even be read will never be storable.
                    let reason = format!("unreadable entry: {reason}");
                    self.dead_letter(&raw, None, &reason, 1).await?;
                    continue;
                }
            };
            for event in events {
                let origin = Origin {
                    entry: batch.held.len(),
                    position: event.position,
                    alone: event.alone,
                };
                match event.event {
                    Ok(entry) => {
                        batch.events.push(entry);
                        batch.origins.push(origin);
                    }
                    Err(reason) => unreadable.push((origin, reason.to_string())),
                }
            }
            batch.held.push(raw);
        }
        for (origin, reason) in &unreadable {
            let reason = format!("unreadable event: {reason}");
            let raw = &batch.held[origin.entry];
            self.dead_letter(raw, origin.one_event(), &reason, 1)
                .await?;
        }
        Some(batch)
    }

    /// Each event checked against its schema version (loading the schemas not seen yet).
    /// `None` on shutdown during an outage.
    async fn validate(&self, events: Vec<StreamEntry>, held: &[RawEntry]) -> Option<Vec<Record>> {
        let entries = &events;
        self.retry("loading schemas", held, move || async move {
            let mut validator = self.validator.lock().await;
            Ok(validator.load_missing(self.sink.pool(), entries).await?)
        })
        .await?;
        let validator = self.validator.lock().await;
        Some(events.into_iter().map(|e| validator.check(e)).collect())
    }

    /// Stores `records` in one transaction, or one by one when PostgreSQL refuses the batch.
    /// False on shutdown during an outage.
    async fn store(&self, records: &[Record], origins: &[Origin], held: &[RawEntry]) -> bool {
        let stored = self
            .retry_sink("storing a batch", held, move || self.sink.store(records))
            .await;
        match stored {
            None => false,
            Some(Ok(stored)) => {
                self.count(&stored);
                true
            }
            Some(Err(reason)) => {
                tracing::warn!(%reason, events = records.len(), "batch refused; storing its events one by one");
                for (record, origin) in records.iter().zip(origins) {
                    if !self.store_alone(record, &held[origin.entry], origin).await {
                        return false;
                    }
                }
                true
            }
        }
    }

    /// Stores one event of a refused batch: as it is, else as invalid with its data kept as
    /// text, else in the dead letters. False on shutdown during an outage.
    async fn store_alone(&self, record: &Record, raw: &RawEntry, origin: &Origin) -> bool {
        let Some(result) = self
            .retry_sink("storing an event", std::slice::from_ref(raw), move || {
                self.sink.store(std::slice::from_ref(record))
            })
            .await
        else {
            return false;
        };
        let reason = match result {
            Ok(stored) => {
                self.count(&stored);
                return true;
            }
            Err(reason) => reason,
        };
        let Some(result) = self
            .retry_sink("storing a refused event", std::slice::from_ref(raw), || {
                self.sink.store_refused(record, reason.as_str())
            })
            .await
        else {
            return false;
        };
        match result {
            Ok(stored) => {
                self.count(&stored);
                true
            }
            Err(again) => self
                .dead_letter(
                    raw,
                    origin.one_event(),
                    &format!("{reason}; then {again}"),
                    1,
                )
                .await
                .is_some(),
        }
    }

    /// Records an entry, or one event of it, in `dead_letters` and the dead stream; a whole
    /// entry is then acknowledged. `None` on shutdown during an outage.
    pub(super) async fn dead_letter(
        &self,
        raw: &RawEntry,
        event: Option<dead_letters::OneEvent<'_>>,
        reason: &str,
        deliveries: u64,
    ) -> Option<()> {
        let reason = reason.replace('\0', "\u{fffd}");
        let reason_ref = &reason;
        let event = &event;
        self.retry(
            "recording a dead letter",
            std::slice::from_ref(raw),
            move || async move {
                let one = event.as_ref().map(|e| dead_letters::OneEvent {
                    position: e.position,
                    fields: e.fields,
                });
                Ok(dead_letters::record(
                    self.sink.pool(),
                    &self.streams,
                    raw,
                    one,
                    reason_ref,
                    deliveries,
                )
                .await?)
            },
        )
        .await?;
        self.metrics.dead_letters.inc();
        let stream = Keyspace::stream(raw.partition);
        let position = event.as_ref().map(|e| e.position);
        tracing::warn!(entry = %raw.entry_id, ?position, %stream, %reason, "moved to dead letters");
        Some(())
    }

    fn count(&self, stored: &sink::Stored) {
        self.metrics
            .events_stored
            .with_label_values(&["processed"])
            .inc_by(stored.processed);
        self.metrics
            .events_stored
            .with_label_values(&["invalid"])
            .inc_by(stored.invalid);
        self.metrics.events_duplicate.inc_by(stored.duplicates);
        self.metrics.postgres_up.set(1);
    }
}

/// Where a decoded event came from.
struct Origin {
    /// Its entry, by index in the batch's entries.
    entry: usize,
    /// Its place in that entry.
    position: usize,
    /// Its fields as a one-event entry; `None` when the entry is that one event.
    alone: Option<[(&'static str, String); 2]>,
}

impl Origin {
    /// The event alone, for a dead letter of just it; `None`: the whole entry.
    fn one_event(&self) -> Option<dead_letters::OneEvent<'_>> {
        self.alone.as_ref().map(|fields| dead_letters::OneEvent {
            position: self.position,
            fields,
        })
    }
}

/// A batch's events as decoded.
struct Decoded {
    events: Vec<StreamEntry>,
    /// Where each event came from: its entry (in `held`) and its place in it.
    origins: Vec<Origin>,
    /// The entries read, to acknowledge once their events are stored.
    held: Vec<RawEntry>,
}
