//! What the main loop does next, decided by a pure function of what it has seen, so that the
//! policy is tested without Redis: this consumer's own pending entries first (after a restart
//! under the same name), then new entries; every `claim_every`, entries other consumers left
//! idle; and while claims come back full, claims and non-blocking reads of new entries take
//! turns, so a crashed worker's backlog drains at full speed without starving new entries.

use std::time::{Duration, Instant};

/// One step of the main loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Re-read this consumer's own unacknowledged entries.
    OwnPending,
    /// Claim entries other consumers left idle.
    Claim,
    /// Read new entries, waiting for some to arrive or not.
    New { block: bool },
}

/// What a step that reached Redis brought back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Read {
    /// How many entries.
    pub found: usize,
    /// A claim only: some partition had a full batch of idle entries.
    pub full: bool,
}

/// What the loop has seen, as far as choosing the next step goes.
#[derive(Clone, Debug)]
pub struct Schedule {
    claim_every: Duration,
    /// Own unacknowledged entries may remain: true until a read of them finds none.
    own_pending: bool,
    /// The last claim came back full: more is waiting to be claimed.
    claim_backlog: bool,
    /// The previous step was a claim.
    claimed_last: bool,
    last_claim: Instant,
}

impl Schedule {
    /// A loop starting at `now`; the first claim comes `claim_every` later.
    pub fn new(claim_every: Duration, now: Instant) -> Self {
        Schedule {
            claim_every,
            own_pending: true,
            claim_backlog: false,
            claimed_last: false,
            last_claim: now,
        }
    }

    /// The step to take at `now`.
    pub fn next_step(&self, now: Instant) -> Step {
        if self.own_pending {
            Step::OwnPending
        } else if (self.claim_backlog && !self.claimed_last)
            || now.duration_since(self.last_claim) >= self.claim_every
        {
            Step::Claim
        } else {
            // With a claim backlog, a read that finds nothing new returns at once.
            Step::New {
                block: !self.claim_backlog,
            }
        }
    }

    /// `step`, chosen at `at`, is done: `read` is what it brought back, `None` when it failed.
    /// A failed claim counts as a claim all the same, so an outage is not a claim loop.
    pub fn record(&mut self, step: Step, at: Instant, read: Option<Read>) {
        self.claimed_last = step == Step::Claim;
        if step == Step::Claim {
            self.last_claim = at;
        }
        let Some(read) = read else {
            return;
        };
        if step == Step::Claim {
            self.claim_backlog = read.full;
        }
        if step == Step::OwnPending && read.found == 0 {
            self.own_pending = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_secs(10);

    fn read(found: usize) -> Option<Read> {
        Some(Read { found, full: false })
    }

    #[test]
    fn own_pending_entries_come_first_until_none_are_left() {
        let t0 = Instant::now();
        let mut s = Schedule::new(EVERY, t0);
        assert_eq!(s.next_step(t0), Step::OwnPending);
        s.record(Step::OwnPending, t0, None);
        assert_eq!(
            s.next_step(t0),
            Step::OwnPending,
            "a failed read proves nothing"
        );
        s.record(Step::OwnPending, t0, read(5));
        assert_eq!(s.next_step(t0), Step::OwnPending);
        s.record(Step::OwnPending, t0, read(0));
        assert_eq!(s.next_step(t0), Step::New { block: true });
    }

    #[test]
    fn claims_come_every_claim_every_between_blocking_reads() {
        let t0 = Instant::now();
        let mut s = Schedule::new(EVERY, t0);
        s.record(Step::OwnPending, t0, read(0));
        let before = t0 + EVERY - Duration::from_millis(1);
        assert_eq!(s.next_step(before), Step::New { block: true });
        s.record(Step::New { block: true }, before, read(3));
        let due = t0 + EVERY;
        assert_eq!(s.next_step(due), Step::Claim);
        s.record(Step::Claim, due, read(0));
        assert_eq!(s.next_step(due + EVERY / 2), Step::New { block: true });
        assert_eq!(s.next_step(due + EVERY), Step::Claim);
    }

    #[test]
    fn a_full_claim_alternates_with_non_blocking_reads_until_one_is_not_full() {
        let t0 = Instant::now();
        let mut s = Schedule::new(EVERY, t0);
        s.record(Step::OwnPending, t0, read(0));
        let due = t0 + EVERY;
        let full = Some(Read {
            found: 100,
            full: true,
        });
        s.record(Step::Claim, due, full);
        assert_eq!(s.next_step(due), Step::New { block: false });
        s.record(Step::New { block: false }, due, read(0));
        assert_eq!(
            s.next_step(due),
            Step::Claim,
            "the backlog is claimed at once"
        );
        s.record(Step::Claim, due, read(40));
        assert_eq!(s.next_step(due), Step::New { block: true });
    }

    #[test]
    fn a_failed_claim_waits_for_the_next_cycle() {
        let t0 = Instant::now();
        let mut s = Schedule::new(EVERY, t0);
        s.record(Step::OwnPending, t0, read(0));
        let due = t0 + EVERY;
        s.record(Step::Claim, due, None);
        assert_eq!(s.next_step(due), Step::New { block: true });
        assert_eq!(s.next_step(due + EVERY), Step::Claim);
    }
}
