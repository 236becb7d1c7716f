#!lua
-- admit.lua: resolve, rate-limit and enqueue one request's events in one atomic step; with an
-- Idempotency-Key, record the answer in the same step, or replay the recorded one.
--
-- The shebang line makes Redis (>= 7) refuse the whole script up front when it is out of
-- memory, instead of failing half-way through its writes.
--
-- KEYS[1]        registry hash of the tenant         sluice:{pNN}:reg:<tenant>
-- KEYS[2]        the tenant's partition stream       sluice:{pNN}:events
-- KEYS[2+s]      rate-limit hash of distinct slug s  sluice:{pNN}:rl:<tenant>:<slug>   (s = 1..S)
-- KEYS[3+S]      with a key: the idempotency record  sluice:{pNN}:idem:<tenant>:<key>
--
-- ARGV[1]        tenant id
-- ARGV[2..4]     default per-minute limits for types event, metric, state
-- ARGV[5]        how long to keep the idempotency record, ms (0: the request has no key)
-- ARGV[6]        with a key: the request's fingerprint (method, path and body, hashed)
-- ARGV[7]        with a key: when the api received the request, microseconds since the epoch
-- ARGV[8]        S, the number of distinct slugs (in first-seen order)
-- ARGV[9..8+S]   the slugs
-- then 3 values per event, in request order:
--                slug number s, requested schema version (0 = latest), event JSON (with its id)
--
-- Reply, one of:
--   {"notfound", s, ...}             slugs (by number) unknown or inactive for the tenant
--   {"badversion", e, v, n, ...}     event e (1-based) asked for version v; its signal has n
--   {"conflict"}                     the key was used with a different request; nothing written
--   {"ok", now_s, now_us, reset_s, admitted, then per slug: id, type, limit, remaining, latest}
--       admitted: one character per event, "1" admitted or "0" rate limited
--       remaining: what the slug's window has left after this request
--   {"replay", now_s, now_us, reset_s, admitted, received_us, then per slug as for "ok"}
--       the recorded answer (admitted, the signals' ids, types and latest versions, and the
--       first request's receipt time, from which the api derives the same event ids) with the
--       current windows; nothing written, nothing counted
--
-- Each admitted event becomes one stream entry of two fields, few so that XADD stays cheap:
--   m   "<tenant>|<signal id>|<signal type>|<resolved schema version, 0 = none>"
--   e   the event JSON built by the api
--
-- The idempotency record is one string, "<fingerprint>|<received_us>|<admitted>|<signals>",
-- signals being "<id>,<type>,<latest>" per slug joined by ";": about 200 bytes for 100 events of
-- one signal. It is written only when at least one event is admitted, so a refused request (404,
-- 400, 429) leaves the key free for a later attempt.
--
-- Atomicity: everything is read and checked before the first write, so a refused request
-- writes nothing; then each admitted event is XADDed and its slug's counter is raised by exactly
-- the number XADDed, and the record is set. Nothing is counted that is not enqueued, nor
-- enqueued that is not counted, nor enqueued without its record.
--
-- Windows are fixed 60-second windows aligned to the UTC minute of Redis's own clock (TIME), so
-- every api replica agrees. The counter hash keeps its window start; a stale window reads as 0.

local tenant = ARGV[1]
local defaults = { event = tonumber(ARGV[2]), metric = tonumber(ARGV[3]), state = tonumber(ARGV[4]) }
local record_ttl = tonumber(ARGV[5])
local fingerprint = ARGV[6]
local received = ARGV[7]
local nslugs = tonumber(ARGV[8])
local first_slug = 9
local first_event = first_slug + nslugs
local record_key = KEYS[3 + nslugs]

-- The current window of Redis's clock, and what each slug has used of it.
local function windows()
  local now = redis.call('TIME')
  local now_s = tonumber(now[1])
  local window = now_s - (now_s % 60)
  local used = {}
  for s = 1, nslugs do
    local state = redis.call('HMGET', KEYS[2 + s], 'w', 'n')
    used[s] = 0
    if tonumber(state[1]) == window then
      used[s] = tonumber(state[2]) or 0
    end
  end
  return now, window, used
end

-- 0. A key seen before: replay its answer, or refuse a different request under it.
if record_ttl > 0 then
  local record = redis.call('GET', record_key)
  if record then
    local fp, rec_received, rec_flags, rec_signals =
      string.match(record, '^([^|]*)|([^|]*)|([^|]*)|(.*)$')
    if fp ~= fingerprint then
      return { 'conflict' }
    end
    local now, window, used = windows()
    local reply = { 'replay', tonumber(now[1]), tonumber(now[2]), window + 60, rec_flags, rec_received }
    local s = 0
    for id, typ, latest in string.gmatch(rec_signals, '([^,;]*),([^,;]*),([^,;]*)') do
      s = s + 1
      -- The limit in force now (the signal may have changed since), for the headers.
      local limit = defaults[typ] or 0
      local packed = redis.call('HGET', KEYS[1], ARGV[first_slug - 1 + s])
      if packed then
        limit = tonumber(string.match(packed, '^[^|]*|[^|]*|[^|]*|([^|]*)|')) or limit
      end
      reply[#reply + 1] = id
      reply[#reply + 1] = typ
      reply[#reply + 1] = limit
      reply[#reply + 1] = math.max(limit - (used[s] or 0), 0)
      reply[#reply + 1] = tonumber(latest)
    end
    return reply
  end
end

-- 1. Resolve every distinct slug.
local signals = {}
local missing = {}
for s = 1, nslugs do
  local packed = redis.call('HGET', KEYS[1], ARGV[first_slug - 1 + s])
  local sig = nil
  if packed then
    local id, typ, active, limit, versions = string.match(packed, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
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

-- 2. Check requested schema versions.
local bad = { 'badversion' }
local e = 0
for i = first_event, #ARGV, 3 do
  e = e + 1
  local v = tonumber(ARGV[i + 1])
  if v > 0 then
    local sig = signals[tonumber(ARGV[i])]
    if v > sig.latest then
      bad[#bad + 1] = e
      bad[#bad + 1] = v
      bad[#bad + 1] = sig.latest
    end
  end
end
if #bad > 1 then
  return bad
end

-- 3. Read the current windows.
local now, window, used_of = windows()
local now_s = tonumber(now[1])
local reset = window + 60
local remaining = {}
local admitted_of = {}
for s = 1, nslugs do
  remaining[s] = math.max(signals[s].limit - used_of[s], 0)
  admitted_of[s] = 0
end

-- 4. Admit in request order until each slug's window is full; enqueue what is admitted.
local flags = {}
local metas = {}
for i = first_event, #ARGV, 3 do
  local s = tonumber(ARGV[i])
  if remaining[s] > 0 then
    local v = ARGV[i + 1]
    local key = ARGV[i] .. ':' .. v
    local meta = metas[key]
    if not meta then
      local sig = signals[s]
      if v == '0' then v = sig.latest end
      meta = tenant .. '|' .. sig.id .. '|' .. sig.type .. '|' .. v
      metas[key] = meta
    end
    redis.call('XADD', KEYS[2], '*', 'm', meta, 'e', ARGV[i + 2])
    remaining[s] = remaining[s] - 1
    admitted_of[s] = admitted_of[s] + 1
    flags[#flags + 1] = '1'
  else
    flags[#flags + 1] = '0'
  end
end

-- 5. Count exactly what was enqueued; with a key, record the answer.
local any = false
for s = 1, nslugs do
  if admitted_of[s] > 0 then
    any = true
    redis.call('HSET', KEYS[2 + s], 'w', window, 'n', used_of[s] + admitted_of[s])
    redis.call('EXPIREAT', KEYS[2 + s], reset + 60)
  end
end
if record_ttl > 0 and any then
  local parts = {}
  for s = 1, nslugs do
    parts[s] = signals[s].id .. ',' .. signals[s].type .. ',' .. signals[s].latest
  end
  local record = fingerprint .. '|' .. received .. '|' .. table.concat(flags) .. '|' .. table.concat(parts, ';')
  redis.call('SET', record_key, record, 'PX', record_ttl)
end

local reply = { 'ok', now_s, tonumber(now[2]), reset, table.concat(flags) }
for s = 1, nslugs do
  local sig = signals[s]
  reply[#reply + 1] = sig.id
  reply[#reply + 1] = sig.type
  reply[#reply + 1] = sig.limit
  reply[#reply + 1] = remaining[s]
  reply[#reply + 1] = sig.latest
end
return reply
