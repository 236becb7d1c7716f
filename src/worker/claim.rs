//! Taking over entries other consumers left pending too long, and dead-lettering those
//! delivered too often.

use super::Worker;
use crate::redis_pool::RedisError;
use crate::stream::RawEntry;

impl Worker {
    /// Takes over entries pending too long with consumers presumed dead, up to a batch per
    /// partition; those delivered `max_deliveries` times already go to the dead letters instead.
    pub(super) async fn claim(&self) -> Result<Claimed, RedisError> {
        let idle = self.settings.claim_idle.as_millis() as u64;
        let count = self.entries_per_read();
        let mut claimed = Claimed::default();
        for p in 0..self.partition_count() {
            let stale = self.streams.stale(p, idle, count).await?;
            if stale.is_empty() {
                continue;
            }
            claimed.full |= stale.len() >= count;
            let (dead, retry): (Vec<_>, Vec<_>) = stale
                .into_iter()
                .partition(|s| s.deliveries >= u64::from(self.settings.max_deliveries));
            if !dead.is_empty() {
                let ids: Vec<String> = dead.iter().map(|s| s.entry_id.clone()).collect();
                let entries = self.streams.claim(p, idle, &ids).await?;
                for entry in &entries {
                    let deliveries = dead
                        .iter()
                        .find(|s| s.entry_id == entry.entry_id)
                        .map_or(0, |s| s.deliveries);
                    let reason = format!("not stored after {deliveries} deliveries");
                    if self
                        .dead_letter(entry, None, &reason, deliveries)
                        .await
                        .is_none()
                    {
                        return Ok(claimed);
                    }
                }
            }
            let ids: Vec<String> = retry.into_iter().map(|s| s.entry_id).collect();
            let entries = self.streams.claim(p, idle, &ids).await?;
            self.metrics.claims.inc_by(entries.len() as u64);
            claimed.entries.extend(entries);
        }
        if !claimed.entries.is_empty() {
            tracing::info!(
                entries = claimed.entries.len(),
                more = claimed.full,
                "claimed entries from idle consumers"
            );
        }
        Ok(claimed)
    }
}

/// One claim's take.
#[derive(Default)]
pub(super) struct Claimed {
    pub(super) entries: Vec<RawEntry>,
    /// Some partition had a full batch of idle entries: claim again soon.
    pub(super) full: bool,
}
