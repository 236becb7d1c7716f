#!lua
-- admit.lua: resolve, rate-limit and enqueue one request's events in one atomic step; with an
-- Idempotency-Key, record the answer in the same step, or replay the recorded one.
--
-- The shebang line makes Redis (>= 7) refuse the whole script up front when it is out of
-- memory, instead of failing half-way through its writes.
--
-- The script works per request, never per event: the api sends, for each distinct signal of the
-- request, how many events name it and the highest schema version they ask for, plus all the
-- events as one JSON array it has already built. Whatever the batch size and the number of
-- signals, it makes the same few calls: one read of the registry, one of the windows, TIME, one
-- XADD, one write of the windows (and a GET and a SET of the record with a key).
--
-- KEYS[1]        registry hash of the tenant         sluice:{pNN}:reg:<tenant>
-- KEYS[2]        the tenant's partition stream       sluice:{pNN}:events
-- KEYS[3]        the tenant's rate-limit windows     sluice:{pNN}:rl:<tenant>
--                  one field per slug: its window count (keyspace::WindowCount)
-- KEYS[4]        with a key: the idempotency record  sluice:{pNN}:idem:<tenant>:<key>
--
-- ARGV[1]        tenant id
-- ARGV[2..4]     default per-minute limits for types event, metric, state
-- ARGV[5]        how long to keep the idempotency record, ms (0: the request has no key)
-- ARGV[6]        with a key: the request's fingerprint (method, path and body, hashed)
-- ARGV[7]        with a key: when the api received the request, microseconds since the epoch
-- ARGV[8]        S, the number of distinct slugs (in first-seen order)
-- then 3 values per slug s:  the slug, how many events name it, the highest version asked (0 = latest only)
-- ARGV[9+3S]     the events: the entry's b field (src/stream/entry.rs)
--
-- Reply, one of:
--   {"notfound", s, ...}             slugs (by number) unknown or inactive for the tenant
--   {"badversion", s, latest, ...}   slugs some of whose events ask for a version above latest
--   {"conflict"}                     the key was used with a different request; nothing written
--   {"ok", now_s, now_us, reset_s, then per slug: id, type, limit, remaining, latest, admitted}
--       admitted: how many of the slug's events (the first ones, in request order) got in
--       remaining: what the slug's window has left after this request
--   {"replay", now_s, now_us, reset_s, received_us, then per slug as for "ok"}
--       the recorded answer (signals and admitted counts, and the first request's receipt time,
--       from which the api derives the same event ids) with the current windows; nothing
--       written, nothing counted
--
-- When anything is admitted, the request becomes one stream entry (src/stream/entry.rs):
--   ENTRY_TENANT    the tenant
--   ENTRY_SIGNALS   per slug its entry_signal(id, type, latest, admitted), in slug order
--   ENTRY_EVENTS    the events, as the api sent them (rate-limited ones included; the worker
--                   skips them)
--
-- The idempotency record (keyspace::IdempotencyRecord) holds the fingerprint, the receipt time
-- and the entry's signals field: under 200 bytes for a request of one signal, whatever its size.
-- It is written only when at least one event is admitted, so a refused request (404, 400, 429)
-- leaves the key free for a later attempt.
--
-- Field names, separators and layouts come from the prelude src/scripts.rs puts before this
-- line (unpack_signal, read_window, entry_signal, ...), built from the Rust types that own them.
--
-- Atomicity: everything is read and checked before the first write, so a refused request
-- writes nothing; then the entry is XADDed, each slug's counter is raised by exactly the number
-- admitted, and the record is set. Nothing is counted that is not enqueued, nor enqueued that is
-- not counted, nor enqueued without its record.
--
-- Windows are fixed 60-second windows aligned to the UTC minute of Redis's own clock (TIME), so
-- every api replica agrees. The counter hash keeps its window start; a stale window reads as 0.

local tenant = ARGV[1]
local defaults = { event = tonumber(ARGV[2]), metric = tonumber(ARGV[3]), state = tonumber(ARGV[4]) }
local record_ttl = tonumber(ARGV[5])
local fingerprint = ARGV[6]
local received = ARGV[7]
local nslugs = tonumber(ARGV[8])
local events = ARGV[9 + 3 * nslugs]
local record_key = KEYS[4]

local function count(s) return tonumber(ARGV[7 + 3 * s]) end
local function asked(s) return tonumber(ARGV[8 + 3 * s]) end
local slugs = {}
for s = 1, nslugs do slugs[s] = ARGV[6 + 3 * s] end

-- The current window of Redis's clock, and what each slug has used of it.
local function windows()
  local now = redis.call('TIME')
  local now_s = tonumber(now[1])
  local window = now_s - (now_s % 60)
  local used = {}
  local states = redis.call('HMGET', KEYS[3], unpack(slugs))
  for s = 1, nslugs do
    used[s] = 0
    local w, n = read_window(states[s])
    if tonumber(w) == window then
      used[s] = tonumber(n)
    end
  end
  return now, window, used
end

-- 0. A key seen before: replay its answer, or refuse a different request under it.
if record_ttl > 0 then
  local record = redis.call('GET', record_key)
  if record then
    local fp, rec_received, rec_signals = read_record(record)
    if fp ~= fingerprint then
      return { 'conflict' }
    end
    local now, window, used = windows()
    local reply = { 'replay', tonumber(now[1]), tonumber(now[2]), window + 60, rec_received }
    local registry = redis.call('HMGET', KEYS[1], unpack(slugs))
    local s = 0
    for id, typ, latest, admitted in entry_signals(rec_signals) do
      s = s + 1
      -- The limit in force now (the signal may have changed since), for the headers.
      local limit = defaults[typ] or 0
      local packed = registry[s]
      if packed then
        local _, _, _, own = unpack_signal(packed)
        limit = tonumber(own) or limit
      end
      reply[#reply + 1] = id
      reply[#reply + 1] = typ
      reply[#reply + 1] = limit
      reply[#reply + 1] = math.max(limit - (used[s] or 0), 0)
      reply[#reply + 1] = tonumber(latest)
      reply[#reply + 1] = tonumber(admitted)
    end
    return reply
  end
end

-- 1. Resolve every distinct slug.
local signals = {}
local missing = {}
local registry = redis.call('HMGET', KEYS[1], unpack(slugs))
for s = 1, nslugs do
  local packed = registry[s]
  local sig = nil
  if packed then
    local id, typ, active, limit, versions = unpack_signal(packed)
    if id and active == '1' then
      sig = {
        id = id,
        type = typ,
        limit = tonumber(limit) or defaults[typ] or 0,
        latest = tonumber(versions) or 0,
      }
    end
  end
  if sig then
    signals[s] = sig
  else
    missing[#missing + 1] = s
  end
end
if #missing > 0 then
  local reply = { 'notfound' }
  for _, s in ipairs(missing) do reply[#reply + 1] = s end
  return reply
end

-- 2. Check requested schema versions (the api names the events).
local bad = { 'badversion' }
for s = 1, nslugs do
  if asked(s) > signals[s].latest then
    bad[#bad + 1] = s
    bad[#bad + 1] = signals[s].latest
  end
end
if #bad > 1 then
  return bad
end

-- 3. Admit, per slug, the first events its window still has room for.
local now, window, used = windows()
local reset = window + 60
local admitted = {}
local any = false
for s = 1, nslugs do
  admitted[s] = math.min(count(s), math.max(signals[s].limit - used[s], 0))
  any = any or admitted[s] > 0
end

-- 4. Enqueue, count exactly what was enqueued, and with a key record the answer.
local parts = {}
for s = 1, nslugs do
  local sig = signals[s]
  parts[s] = entry_signal(sig.id, sig.type, sig.latest, admitted[s])
end
local described = table.concat(parts, ENTRY_SIGNAL_LIST)
if any then
  redis.call('XADD', KEYS[2], '*', ENTRY_TENANT, tenant, ENTRY_SIGNALS, described, ENTRY_EVENTS, events)
  local counts = {}
  for s = 1, nslugs do
    if admitted[s] > 0 then
      counts[#counts + 1] = slugs[s]
      counts[#counts + 1] = window_value(window, used[s] + admitted[s])
    end
  end
  redis.call('HSET', KEYS[3], unpack(counts))
  -- Every slug's window ends with the minute: the hash outlives the newest by a minute.
  redis.call('EXPIREAT', KEYS[3], reset + 60)
  if record_ttl > 0 then
    redis.call('SET', record_key, record_value(fingerprint, received, described), 'PX', record_ttl)
  end
end

local reply = { 'ok', tonumber(now[1]), tonumber(now[2]), reset }
for s = 1, nslugs do
  local sig = signals[s]
  reply[#reply + 1] = sig.id
  reply[#reply + 1] = sig.type
  reply[#reply + 1] = sig.limit
  reply[#reply + 1] = math.max(sig.limit - used[s] - admitted[s], 0)
  reply[#reply + 1] = sig.latest
  reply[#reply + 1] = admitted[s]
end
return reply
