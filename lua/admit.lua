#!lua
-- admit.lua: resolve, rate-limit and enqueue the events of one or more requests of one
-- partition in one atomic step, each request in turn as if it had been called alone; with an
-- Idempotency-Key, record a request's answer in the same step, or replay the recorded one.
--
-- The shebang line makes Redis (>= 7) refuse the whole script up front when it is out of
-- memory, instead of failing half-way through its writes.
--
-- The script works per request, never per event: the api sends, for each distinct signal of a
-- request, how many events name it and the highest schema version they ask for, plus all the
-- events as one JSON array it has already built. Whatever the batch size and the number of
-- signals, a request costs the same few calls; the requests of one call share TIME, and each
-- tenant's reads of the registry and the windows, and its write of the windows.
--
-- The api groups requests (src/ingest/lanes.rs): while a call of a partition is in flight on
-- an api thread, the requests that arrive there wait and go together in the next call.
--
-- KEYS[1]        the partition's stream              sluice:{pNN}:events
-- then per request, in order, only the keys it has:
--   the tenant's registry hash                       sluice:{pNN}:reg:<tenant>
--   the tenant's rate-limit windows                  sluice:{pNN}:rl:<tenant>
--     one field per slug: its window count (keyspace::WindowCount)
--   with an Idempotency-Key: its record              sluice:{pNN}:idem:<tenant>:<key>
--   a large request's staged events                  sluice:{pNN}:staged:<id>
--
-- ARGV[1..3]     default per-minute limits for types event, metric, state
-- ARGV[4]        N, the number of requests
-- then per request, in order:
--   tenant id
--   how long to keep the idempotency record, ms (0: the request has no key)
--   with a key only: the request's fingerprint (method, path and body, hashed), then when the
--     api received the request, microseconds since the epoch
--   S, the number of distinct slugs (in first-seen order)
--   then 3 values per slug: the slug, how many events name it, the highest version asked
--     (0 = latest only)
--   the events: the entry's b field (src/stream/entry.rs); '' when they are staged
-- A request passes only what it has: every argument and key costs Redis work before the
-- script's first line (bench/history.md, run 15).
--
-- A large request's events are not an argument: each byte of a script's arguments costs Redis
-- about 1.3 ns before the script's first line runs (bench/history.md, run 10). The api sets them
-- under the request's staged key, with a short expiry, in the same pipeline just before this
-- call. The script then writes the entry with the key in place of the events, and keeps the key
-- for good (PERSIST); a request that enqueues nothing has its key deleted. The script never reads
-- the events: it only checks that the key exists before it counts anything.
--
-- Reply: one answer per request, in order, each one text of parts joined by ANSWER_SEP
-- (ingest::ANSWER_SEP): one bulk string is cheaper for Redis to send and for the api to read
-- than an array of values (bench/history.md, run 14). Each one of:
--   notfound s ...                   slugs (by number) unknown or inactive for the tenant
--   badversion s latest ...          slugs some of whose events ask for a version above latest
--   conflict                         the key was used with a different request; nothing written
--   unstaged                         the request's staged events are gone (expired before the
--                                    call ran); nothing written
--   ok now_s now_us reset_s signals limit remaining ...
--       signals: the entry's s field (entry_signal per slug: id, type, latest, admitted), then
--       per slug its limit and what its window has left after this request
--       admitted: how many of the slug's events (the first ones, in request order) got in
--   replay now_s now_us reset_s received_us signals limit remaining ...
--       the recorded answer (signals and admitted counts, and the first request's receipt time,
--       from which the api derives the same event ids) with the current windows; nothing
--       written, nothing counted
--
-- When anything is admitted, a request becomes one stream entry (src/stream/entry.rs):
--   ENTRY_TENANT    the tenant
--   ENTRY_SIGNALS   per slug its entry_signal(id, type, latest, admitted), in slug order
--   ENTRY_EVENTS    the events, as the api sent them (rate-limited ones included; the worker
--                   skips them); or, for staged events, ENTRY_STAGED: the key holding them
--
-- The idempotency record (keyspace::IdempotencyRecord) holds the fingerprint, the receipt time
-- and the entry's signals field: under 200 bytes for a request of one signal, whatever its size.
-- It is written only when at least one event is admitted, so a refused request (404, 400, 429)
-- leaves the key free for a later attempt. A later request of the same call with the same key
-- sees the record an earlier one is writing.
--
-- Field names, separators and layouts come from the prelude src/scripts.rs puts before this
-- line (unpack_signal, read_window, entry_signal, ...), built from the Rust types that own them.
--
-- Atomicity: every request is read and decided before the first write, so a refused request
-- writes nothing; then each admitted request's entry is XADDed in request order, each slug's
-- counter is raised by exactly the number admitted, and the records are set. Nothing is counted
-- that is not enqueued, nor enqueued that is not counted, nor enqueued without its record.
--
-- Windows are fixed 60-second windows aligned to the UTC minute of Redis's own clock (TIME), so
-- every api replica agrees. The counter hash keeps its window start; a stale window reads as 0.
--
-- Cost: the script runs once per call for up to 32 requests, so what it does per request is
-- kept to the few table reads each decision needs: it makes no table per request (the
-- requests of a call fill the same ones), converts each distinct number text once per call
-- (`numbers`: glibc's strtod costs more than most of a request's Lua), formats a signal's
-- version once per call, and formats what a request leaves in a window with `%d` (a number
-- joined with `..` goes through glibc's `%.14g`) (bench/history.md, runs 12 and 15).

-- Each distinct number text of the arguments as a number, converted once per call.
local numbers = setmetatable({}, { __index = function(t, s)
  local v = tonumber(s)
  t[s] = v
  return v
end })

local defaults = { event = tonumber(ARGV[1]), metric = tonumber(ARGV[2]), state = tonumber(ARGV[3]) }
local default_texts = { event = ARGV[1], metric = ARGV[2], state = ARGV[3] }
local requests = tonumber(ARGV[4])

-- Redis's clock, read once per call, and the window it falls in; `now_parts`: an answer's
-- now_s, now_us and reset_s.
local now_s, window, now_parts
local function clock()
  if not now_s then
    local now = redis.call('TIME')
    now_s = tonumber(now[1])
    window = now_s - (now_s % 60)
    now_parts = now[1] .. ANSWER_SEP .. now[2] .. ANSWER_SEP .. (window + 60)
  end
end

-- Fields of a hash read once per call: cache[key][field], `convert`ed from what HMGET gave
-- (false for a missing field) and the key; fields[1..n] are the ones wanted.
local function cached(cache, key, fields, n, convert)
  local known = cache[key]
  if not known then
    known = {}
    cache[key] = known
  end
  local missing
  for i = 1, n do
    local f = fields[i]
    if known[f] == nil then
      missing = missing or {}
      missing[#missing + 1] = f
    end
  end
  if missing then
    local got = redis.call('HMGET', key, unpack(missing))
    for i, f in ipairs(missing) do known[f] = convert(got[i], key) end
  end
  return known
end

-- A registry entry as a signal; false when the slug has none, or its entry is not one.
local function signal_of(packed)
  if not packed then return false end
  local id, typ, active, limit, versions = unpack_signal(packed)
  if not id then return false end
  local own_limit, latest = tonumber(limit), tonumber(versions) or 0
  return {
    id = id,
    type = typ,
    active = active == '1',
    own_limit = own_limit,
    limit = own_limit or defaults[typ] or 0,
    limit_text = own_limit and limit or default_texts[typ] or '0',
    latest = latest,
    latest_text = tostring(latest),
    -- The last part of an entry's s field made for the signal, and its admitted count: the
    -- requests of a call mostly admit the same count of a signal.
    part = false,
    part_admitted = false,
  }
end

-- The signal's part of an entry's s field, with `admitted` of its events admitted.
local function part_of(sig, admitted)
  if sig.part_admitted ~= admitted then
    sig.part = entry_signal(sig.id, sig.type, sig.latest_text, admitted)
    sig.part_admitted = admitted
  end
  return sig.part
end
local registries = {}  -- registries[key][slug]: the signal (signal_of), or false
local counts = {}      -- counts[key][slug]: what the slug has used of the window, this call included
local current = {}     -- current[key]: true when a slug of the windows hash was written this window
local raised = {}      -- raised[key][slug]: true when the call admitted events of the slug
local records = {}     -- records[key]: { value, ttl } of a record this call writes
local entries = {}     -- the entries to add, in request order: 4 values each (tenant, s, field, value)
local staged = {}      -- the staged keys of the call's requests
local kept = {}        -- kept[key]: true for a staged key an entry names

-- A slug's count in the current window (of the windows hash `key`): 0 when its window is stale
-- or it has none.
local function in_window(value, key)
  local w, n = read_window(value)
  if tonumber(w) == window then
    current[key] = true
    return tonumber(n)
  end
  return 0
end

local function used_by(key, slugs, n)
  clock()
  return cached(counts, key, slugs, n, in_window)
end

-- What is left of a window, as text.
local function left_text(limit, used)
  local left = limit - used
  return left > 0 and string.format('%d', left) or '0'
end

-- Tables every request of the call fills again, read only up to the request's own count (a
-- table made per request costs Redis more than most of the request's decisions:
-- bench/history.md, run 15): the request's slugs, the parts of its s field, the parts of its
-- answer.
local slugs, parts, answer = {}, {}, {}

-- One request: its arguments from ARGV[at], its keys from KEYS[first]. Returns its answer and
-- where the next request's arguments and keys start.
local function admit(at, first)
  local registry_key, windows_key = KEYS[first], KEYS[first + 1]
  local next_key = first + 2
  local tenant = ARGV[at]
  local record_ttl = numbers[ARGV[at + 1]]
  local record_key, fingerprint, received
  if record_ttl > 0 then
    record_key, fingerprint, received = KEYS[next_key], ARGV[at + 2], ARGV[at + 3]
    next_key = next_key + 1
    at = at + 4
  else
    at = at + 2
  end
  -- Slug s's arguments: ARGV[at + 3 * s - 2] (the slug), the next one (how many events name
  -- it), and the one after (the highest version asked).
  local nslugs = numbers[ARGV[at]]
  for s = 1, nslugs do
    slugs[s] = ARGV[at + 3 * s - 2]
  end
  local events = ARGV[at + 3 * nslugs + 1]
  local next_at = at + 3 * nslugs + 2
  -- False unless the request's events are staged.
  local staged_key = events == '' and KEYS[next_key]
  if staged_key then
    staged[#staged + 1] = staged_key
    next_key = next_key + 1
  end

  -- 0. A key seen before: replay its answer, or refuse a different request under it.
  if record_ttl > 0 then
    local record = (records[record_key] or {})[1] or redis.call('GET', record_key)
    if record then
      local fp, rec_received, rec_signals = read_record(record)
      if fp ~= fingerprint then
        return 'conflict', next_at, next_key
      end
      local used = used_by(windows_key, slugs, nslugs)
      local registry = cached(registries, registry_key, slugs, nslugs, signal_of)
      local reply = { 'replay', now_parts, rec_received, rec_signals }
      local s = 0
      for _, typ in entry_signals(rec_signals) do
        s = s + 1
        -- The limit in force now (the signal may have changed since), for the headers.
        local limit, limit_text = defaults[typ] or 0, default_texts[typ] or '0'
        local slug = s <= nslugs and slugs[s]
        local now_sig = slug and registry[slug]
        if now_sig and now_sig.own_limit then
          limit, limit_text = now_sig.own_limit, now_sig.limit_text
        end
        reply[2 * s + 3], reply[2 * s + 4] = limit_text, left_text(limit, (slug and used[slug]) or 0)
      end
      return table.concat(reply, ANSWER_SEP), next_at, next_key
    end
  end

  -- 1. Resolve every distinct slug.
  local missing
  local registry = cached(registries, registry_key, slugs, nslugs, signal_of)
  for s = 1, nslugs do
    local sig = registry[slugs[s]]
    if not (sig and sig.active) then
      missing = missing or { 'notfound' }
      missing[#missing + 1] = s
    end
  end
  if missing then
    return table.concat(missing, ANSWER_SEP), next_at, next_key
  end

  -- 2. Check requested schema versions (the api names the events).
  local bad
  for s = 1, nslugs do
    local latest = registry[slugs[s]].latest
    if numbers[ARGV[at + 3 * s]] > latest then
      bad = bad or { 'badversion' }
      bad[#bad + 1] = s
      bad[#bad + 1] = latest
    end
  end
  if bad then
    return table.concat(bad, ANSWER_SEP), next_at, next_key
  end

  -- 3. Admit, per slug, the first events its window still has room for; staged events must
  -- still be there.
  if staged_key and redis.call('EXISTS', staged_key) == 0 then
    return 'unstaged', next_at, next_key
  end
  local used = used_by(windows_key, slugs, nslugs)
  local any = false
  for s = 1, nslugs do
    local slug = slugs[s]
    local sig, before = registry[slug], used[slug]
    local room = sig.limit - before
    local count_text = ARGV[at + 3 * s - 1]
    local count = numbers[count_text]
    local admitted = count
    if room < count then admitted = room > 0 and room or 0 end
    -- All of the slug's events in (the usual case): the count as the api wrote it.
    parts[s] = part_of(sig, admitted == count and count_text or admitted)
    if admitted > 0 then
      any = true
      used[slug] = before + admitted
      local slugs_raised = raised[windows_key]
      if not slugs_raised then
        slugs_raised = {}
        raised[windows_key] = slugs_raised
      end
      slugs_raised[slug] = true
    end
    answer[2 + 2 * s], answer[3 + 2 * s] = sig.limit_text, left_text(sig.limit, used[slug])
  end
  local described = nslugs == 1 and parts[1] or table.concat(parts, ENTRY_SIGNAL_LIST, 1, nslugs)
  answer[1], answer[2], answer[3] = 'ok', now_parts, described
  local reply = table.concat(answer, ANSWER_SEP, 1, 3 + 2 * nslugs)

  -- 4. What to write once every request is decided: the entry, and with a key the record.
  if any then
    local n = #entries
    entries[n + 1], entries[n + 2] = tenant, described
    if staged_key then
      entries[n + 3], entries[n + 4] = ENTRY_STAGED, staged_key
      kept[staged_key] = true
    else
      entries[n + 3], entries[n + 4] = ENTRY_EVENTS, events
    end
    if record_ttl > 0 then
      records[record_key] = { record_value(fingerprint, received, described), record_ttl }
    end
  end
  return reply, next_at, next_key
end

local answers = {}
local at, first = 5, 2
for r = 1, requests do
  answers[r], at, first = admit(at, first)
end

-- Enqueue, count exactly what was enqueued, and record the answers.
for i = 1, #entries, 4 do
  redis.call('XADD', KEYS[1], '*', ENTRY_TENANT, entries[i], ENTRY_SIGNALS, entries[i + 1],
    entries[i + 2], entries[i + 3])
end
-- Staged events an entry names are kept until the worker has them; the others are dropped.
local dropped = {}
for _, key in ipairs(staged) do
  if kept[key] then
    redis.call('PERSIST', key)
  else
    dropped[#dropped + 1] = key
  end
end
if #dropped > 0 then
  redis.call('DEL', unpack(dropped))
end
for key, slugs in pairs(raised) do
  local fields = {}
  for slug in pairs(slugs) do
    fields[#fields + 1] = slug
    fields[#fields + 1] = window_value(window, counts[key][slug])
  end
  redis.call('HSET', key, unpack(fields))
  -- Every slug's window ends with the minute: the hash outlives the newest by a minute. A hash
  -- written earlier in this window has that expiry already (this script set it).
  if not current[key] then
    redis.call('EXPIREAT', key, window + 120)
  end
end
for key, record in pairs(records) do
  redis.call('SET', key, record[1], 'PX', record[2])
end
return answers
