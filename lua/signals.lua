#!lua flags=no-writes
-- signals.lua: a tenant's signals as the registry copy holds them, with the current window of
-- each, read in one step from the same counters admit.lua raises (self-service: GET /v1/signals).
--
-- KEYS[1]   registry hash of the tenant      sluice:{pNN}:reg:<tenant>
-- KEYS[2]   the tenant's rate-limit windows  sluice:{pNN}:rl:<tenant>
-- ARGV[1]   a slug, or '' for every signal
--
-- Reply: {now_s, then per signal: slug, packed signal, its window count or ''}.
-- Both keys share the tenant's hash tag, so on a Cluster this is one call to one node; it
-- writes nothing and counts against no limit.

local reply = { tonumber(redis.call('TIME')[1]) }

local function add(slug, packed)
  reply[#reply + 1] = slug
  reply[#reply + 1] = packed
  reply[#reply + 1] = redis.call('HGET', KEYS[2], slug) or ''
end

if ARGV[1] ~= '' then
  local packed = redis.call('HGET', KEYS[1], ARGV[1])
  if packed then add(ARGV[1], packed) end
  return reply
end

-- Fields starting with VERSION_PREFIX hold versions (lua/registry.lua), not signals.
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if string.sub(all[i], 1, 1) ~= VERSION_PREFIX then add(all[i], all[i + 1]) end
end
return reply
