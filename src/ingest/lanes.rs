//! Admission calls grouped per api thread and partition.
//!
//! Each api thread sends a partition's requests through its lane: a request that finds the
//! lane idle goes out at once, alone; the requests that arrive while a call is in flight wait,
//! and go together, in arrival order, in the lane's next call. `lua/admit.lua` takes each
//! request of a call in turn exactly as it would alone, so limits, idempotency and the stream's
//! order are what one call per request would give; but a call's fixed costs (the script's
//! dispatch, `TIME`, a tenant's reads and write of the registry and its windows, the round trip
//! and its wake-ups) are paid once for the group. Under light load no request waits; under
//! load the group grows with the time a call takes.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redis::{Arg, Script, Value};
use tokio::sync::oneshot;

use crate::config::Limits;
use crate::keyspace::Keyspace;
use crate::redis_pool::{Redis, RedisError};

/// The most requests one call takes.
const MAX_REQUESTS: usize = 32;
/// The most bytes of arguments one call takes, unless its first request alone is larger: a
/// call holds Redis for about 1.3 ns per byte of its arguments before its first line runs.
const MAX_BYTES: usize = 512 * 1024;

/// How long staged events wait for their call before Redis drops them. They are set in the
/// same pipeline as the call, just before it, so they wait only when the call never runs (its
/// connection died between the two).
const STAGED_TTL_MS: u64 = 60_000;

/// One request's part of a call: its keys and its arguments (see `lua/admit.lua`).
pub(super) struct Part {
    /// The tenant's registry and its windows.
    pub tenant_keys: [Arc<str>; 2],
    /// The request's idempotency record, when it has a key.
    pub record: Option<Arc<str>>,
    /// Every argument but the events, in one buffer.
    pub args: redis::Cmd,
    /// The events (the entry's `b` field); empty when they are staged.
    pub events: Vec<u8>,
    /// A large request's staged events.
    pub staged: Option<Staged>,
}

/// A large request's events, set under a key of their own ahead of the call.
pub(super) struct Staged {
    key: Arc<str>,
    /// `SET key <events> PX ...`; taken into the call's pipeline when it is sent.
    set: redis::Cmd,
}

impl Staged {
    /// The `SET` of the events under `key`, `events` writing them into the command as its next
    /// argument (about `size` bytes): they are written once, where Redis's copy is made from.
    pub fn new(key: Arc<str>, size: usize, events: impl FnOnce(&mut redis::Cmd)) -> Self {
        let mut set = redis::Cmd::with_capacity(5, 32 + key.len() + size);
        set.arg("SET").arg(&*key);
        events(&mut set);
        set.arg("PX").arg(STAGED_TTL_MS);
        Staged { key, set }
    }

    /// What the `SET` sends.
    fn bytes(&self) -> usize {
        self.set
            .args_iter()
            .map(|arg| match arg {
                Arg::Simple(arg) => arg.len(),
                // Never made: the command takes plain values only, no cursor.
                _ => 0,
            })
            .sum()
    }
}

impl Part {
    /// Its keys, in the script's order: only those the request has.
    fn keys(&self) -> impl Iterator<Item = &Arc<str>> {
        self.tenant_keys
            .iter()
            .chain(&self.record)
            .chain(self.staged.as_ref().map(|staged| &staged.key))
    }

    /// Its arguments, the events last.
    fn args(&self) -> impl Iterator<Item = &[u8]> {
        self.args
            .args_iter()
            .filter_map(|arg| match arg {
                Arg::Simple(arg) => Some(arg),
                // Never made: `args` takes plain values only, no cursor.
                _ => None,
            })
            .chain([&self.events[..]])
    }

    /// What it adds to the call: its keys and arguments.
    fn call_bytes(&self) -> usize {
        let keys: usize = self.keys().map(|k| k.len()).sum();
        keys + self.args().map(<[u8]>::len).sum::<usize>()
    }

    /// What it sends: the call's share and any staged events.
    fn bytes(&self) -> usize {
        self.call_bytes() + self.staged.as_ref().map_or(0, Staged::bytes)
    }
}

/// What every call of one [`Lanes`] shares.
struct Common {
    script: Script,
    limits: Limits,
    /// Replicas that must confirm a call's writes before its requests are answered (0: none).
    min_replicas_ack: u32,
}

/// The lanes of one admission: one per thread and partition, made on first use.
pub(super) struct Lanes {
    /// Tells this admission's lanes from another's in the thread's table.
    id: u64,
    common: Arc<Common>,
}

type Answer = Result<Value, RedisError>;

struct Waiting {
    part: Part,
    answer: oneshot::Sender<Answer>,
    /// Its place in the lane's order of arrival.
    ticket: u64,
}

/// A thread's lane of one partition.
#[derive(Default)]
struct Lane {
    /// A call of this lane is in flight, or its driver is about to send one.
    busy: bool,
    queue: VecDeque<Waiting>,
    /// The next arrival's ticket.
    next_ticket: u64,
    /// Requests are taken into calls in arrival order: every ticket below this one was sent
    /// or given up.
    taken: u64,
}

/// A thread's lanes, by admission and partition.
type ThreadLanes = HashMap<(u64, u16), Rc<RefCell<Lane>>>;

thread_local! {
    static LANES: RefCell<ThreadLanes> = RefCell::new(HashMap::new());
}

impl Lanes {
    pub fn new(script: Script, limits: Limits, min_replicas_ack: u32) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Lanes {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            common: Arc::new(Common {
                script,
                limits,
                min_replicas_ack,
            }),
        }
    }

    /// Sends `part` in the next call of `partition`'s lane on this thread; its answer. Within
    /// Redis's deadline from now, waiting included: past it, [`RedisError::Timeout`] if the
    /// request was never sent (it never will be), else [`RedisError::Unconfirmed`].
    pub async fn call(&self, redis: &Redis, partition: u16, part: Part) -> Answer {
        let lane = LANES.with(|lanes| {
            lanes
                .borrow_mut()
                .entry((self.id, partition))
                .or_default()
                .clone()
        });
        let (answer, answered) = oneshot::channel();
        let (ticket, start) = {
            let mut lane = lane.borrow_mut();
            let ticket = lane.next_ticket;
            lane.next_ticket += 1;
            lane.queue.push_back(Waiting {
                part,
                answer,
                ticket,
            });
            (ticket, !std::mem::replace(&mut lane.busy, true))
        };
        let sent = || ticket < lane.borrow().taken;
        if start {
            let driver = Driver {
                lane: lane.clone(),
                common: self.common.clone(),
                redis: redis.clone(),
                stream: Keyspace::stream(partition),
            };
            // On this thread, beside the requests it answers (the api's threads each run a
            // `LocalSet`, as every actix worker does).
            tokio::task::spawn_local(driver.run());
        }
        let deadline = redis.timeout();
        match tokio::time::timeout(deadline, answered).await {
            Ok(Ok(answer)) => answer,
            // The lane's driver ended early (see `Driver::run`).
            Ok(Err(_)) if sent() => Err(RedisError::Unconfirmed(
                "the admission call ended without an answer".into(),
            )),
            Ok(Err(_)) => Err(RedisError::Command(redis::RedisError::from((
                redis::ErrorKind::Io,
                "the admission call stopped before sending the request",
            )))),
            Err(_) if sent() => Err(RedisError::Unconfirmed(format!(
                "did not answer within {deadline:?}"
            ))),
            // Dropping `answered` closes the channel: the driver leaves the request out.
            Err(_) => Err(RedisError::Timeout(deadline)),
        }
    }
}

/// Sends a lane's calls until its queue is empty.
struct Driver {
    lane: Rc<RefCell<Lane>>,
    common: Arc<Common>,
    redis: Redis,
    stream: String,
}

impl Driver {
    async fn run(self) {
        // Should the task end early (it panicked, or its runtime stopped), the lane is freed
        // and its waiting requests are answered with an error, never left waiting.
        let mut guard = Release(Some(&self.lane));
        while let Some(mut group) = self.next_group(&mut guard) {
            let answers = self.send(&mut group).await;
            for (waiting, answer) in group.into_iter().zip(answers) {
                // The request may have gone (its client left): nothing to tell it.
                let _ = waiting.answer.send(answer);
            }
        }
    }

    /// The next requests to send, oldest first, leaving out those no longer waiting (past their
    /// deadline, or their client gone); `None` (and the lane idle) when none waits.
    fn next_group(&self, guard: &mut Release<'_>) -> Option<Vec<Waiting>> {
        let mut state = self.lane.borrow_mut();
        let mut group = Vec::new();
        let mut bytes = 0;
        while let Some(next) = state.queue.front() {
            if next.answer.is_closed() {
                state.queue.pop_front();
                continue;
            }
            let size = next.part.bytes();
            if group.len() == MAX_REQUESTS || (!group.is_empty() && bytes + size > MAX_BYTES) {
                break;
            }
            bytes += size;
            if let Some(waiting) = state.queue.pop_front() {
                state.taken = waiting.ticket + 1;
                group.push(waiting);
            }
        }
        if group.is_empty() {
            state.busy = false;
            guard.0 = None;
            return None;
        }
        Some(group)
    }

    /// One call for `group`: an answer per request, in order. Staged events are set in the
    /// same pipeline, ahead of the call.
    async fn send(&self, group: &mut [Waiting]) -> Vec<Answer> {
        let common = &self.common;
        let mut pipeline = redis::pipe();
        pipeline.ignore_errors();
        for part in group.iter_mut().map(|w| &mut w.part) {
            if let Some(staged) = &mut part.staged {
                pipeline.add_command(std::mem::take(&mut staged.set));
            }
        }
        // Sized once: the call can be hundreds of kilobytes.
        let (mut keys, mut args, mut bytes) = (0, 0, 0);
        for part in group.iter().map(|w| &w.part) {
            keys += part.keys().count();
            args += part.args().count();
            bytes += part.call_bytes();
        }
        let sha = common.script.get_hash();
        let mut call = redis::Cmd::with_capacity(8 + keys + args, 64 + sha.len() + bytes);
        call.arg("EVALSHA").arg(sha).arg(1 + keys).arg(&self.stream);
        for key in group.iter().flat_map(|w| w.part.keys()) {
            call.arg(&**key);
        }
        call.arg(common.limits.event)
            .arg(common.limits.metric)
            .arg(common.limits.state)
            .arg(group.len());
        for arg in group.iter().flat_map(|w| w.part.args()) {
            call.arg(arg);
        }
        pipeline.add_command(call);
        let reply = self
            .redis
            .invoke_pipeline::<Value>(
                &pipeline,
                &common.script,
                &self.stream,
                common.min_replicas_ack,
            )
            .await;
        match reply {
            Ok((not_staged, Value::Array(answers))) if answers.len() == group.len() => {
                // A request whose staged events were not there had nothing written: its answer
                // is why, its `SET`'s own error where it had one (Redis out of memory).
                let mut not_staged = not_staged.into_iter();
                group
                    .iter()
                    .zip(answers)
                    .map(|(waiting, answer)| {
                        let failed = match waiting.part.staged {
                            Some(_) => not_staged.next().flatten(),
                            None => None,
                        };
                        if !is_unstaged(&answer) {
                            return Ok(answer);
                        }
                        Err(RedisError::Command(failed.unwrap_or_else(|| {
                            redis::RedisError::from((
                                redis::ErrorKind::Io,
                                "the request's staged events expired before its admission call ran",
                            ))
                        })))
                    })
                    .collect()
            }
            Ok((_, other)) => {
                let e = RedisError::Command(redis::RedisError::from((
                    redis::ErrorKind::Parse,
                    "unexpected reply from admit.lua",
                    format!("expected {} answers, got {other:?}", group.len()),
                )));
                vec![Err(e); group.len()]
            }
            Err(e) => vec![Err(e); group.len()],
        }
    }
}

/// True for the script's answer to a request whose staged events were not there: nothing of it
/// was written.
fn is_unstaged(answer: &Value) -> bool {
    matches!(answer, Value::BulkString(tag) if tag == b"unstaged")
}

/// Frees a lane whose driver ends without having emptied it.
struct Release<'a>(Option<&'a RefCell<Lane>>);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        if let Some(lane) = self.0 {
            let mut lane = lane.borrow_mut();
            lane.busy = false;
            lane.queue.clear();
        }
    }
}
