#!lua
-- admit.lua: resolve, rate-limit and enqueue one request's events in one atomic step.
--
-- The shebang line makes Redis (>= 7) refuse the whole script up front when it is out of
-- memory, instead of failing half-way through its writes.
--
-- KEYS[1]        registry hash of the tenant         sluice:{pNN}:reg:<tenant>
-- KEYS[2]        the tenant's partition stream       sluice:{pNN}:events
-- KEYS[2+s]      rate-limit hash of distinct slug s  sluice:{pNN}:rl:<tenant>:<slug>   (s = 1..S)
--
-- ARGV[1]        tenant id
-- ARGV[2..4]     default per-minute limits for types event, metric, state
-- ARGV[5]        S, the number of distinct slugs (in first-seen order)
-- ARGV[6..5+S]   the slugs
-- then 3 values per event, in request order:
--                slug number s, requested schema version (0 = latest), event JSON (with its id)
--
-- Reply, one of:
--   {"notfound", s, ...}             slugs (by number) unknown or inactive for the tenant
--   {"badversion", e, v, n, ...}     event e (1-based) asked for version v; its signal has n
--   {"ok", now_s, now_us, reset_s, admitted, then per slug: id, type, limit, remaining, latest}
--       admitted: one character per event, "1" admitted or "0" rate limited
--       remaining: what the slug's window has left after this request
--
-- Each admitted event becomes one stream entry of two fields, few so that XADD stays cheap:
--   m   "<tenant>|<signal id>|<signal type>|<resolved schema version, 0 = none>"
--   e   the event JSON built by the api
--
-- Atomicity: everything is read and checked before the first write, so a refused request
-- writes nothing; then each admitted event is XADDed and its slug's counter is raised by exactly
-- the number XADDed. Nothing is counted that is not enqueued, nor enqueued that is not counted.
--
-- Windows are fixed 60-second windows aligned to the UTC minute of Redis's own clock (TIME), so
-- every api replica agrees. The counter hash keeps its window start; a stale window reads as 0.

local tenant = ARGV[1]
local defaults = { event = tonumber(ARGV[2]), metric = tonumber(ARGV[3]), state = tonumber(ARGV[4]) }
local nslugs = tonumber(ARGV[5])
local first_event = 6 + nslugs

-- 1. Resolve every distinct slug.
local signals = {}
local missing = {}
for s = 1, nslugs do
  local packed = redis.call('HGET', KEYS[1], ARGV[5 + s])
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
local now = redis.call('TIME')
local now_s = tonumber(now[1])
local window = now_s - (now_s % 60)
local reset = window + 60
local used_of = {}
local remaining = {}
local admitted_of = {}
for s = 1, nslugs do
  local state = redis.call('HMGET', KEYS[2 + s], 'w', 'n')
  local used = 0
  if tonumber(state[1]) == window then
    used = tonumber(state[2]) or 0
  end
  used_of[s] = used
  remaining[s] = math.max(signals[s].limit - used, 0)
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

-- 5. Count exactly what was enqueued.
for s = 1, nslugs do
  if admitted_of[s] > 0 then
    redis.call('HSET', KEYS[2 + s], 'w', window, 'n', used_of[s] + admitted_of[s])
    redis.call('EXPIREAT', KEYS[2 + s], reset + 60)
  end
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
