#!lua
-- registry.lua: applies changes to one hash of the registry copy, the newest version winning.
--
-- A registry hash (a tenant's signals, or the API-key index) holds each entry under its own
-- field and, beside it, the version of the registry row it came from under VERSION_PREFIX ..
-- field. A field without a version reads as version -1, older than any row. Slugs and key hashes
-- never start with VERSION_PREFIX, so the two kinds of field never meet, and readers (admit.lua, the api's key lookup)
-- read the entry fields alone, as before versions existed.
--
-- KEYS[1]        the hash
-- ARGV[1]        horizon H: the registry version the caller's snapshot saw (-1: no removals)
-- ARGV[2]        n, the number of entries to apply
-- ARGV[3..]      n triples: field, version, value ('' = the entry is gone: a revoked key)
-- then           fields to remove if their version is H or below (absent from that snapshot)
--
-- Reply: {changed, removed}: entries whose visible value this call changed, and removed.
--
-- Atomic per call: each entry is compared and written in one step, so of two writers racing on
-- one entry the one with the newer version wins, whatever order their calls arrive in. An entry
-- that is gone keeps its version as a tombstone, so an older write cannot bring it back.

local hash = KEYS[1]
local horizon = tonumber(ARGV[1])
local n = tonumber(ARGV[2])

local function version_of(field)
  return tonumber(redis.call('HGET', hash, VERSION_PREFIX .. field)) or -1
end

local changed = 0
local last = 2 + 3 * n
for i = 3, last, 3 do
  local field, version, value = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  if version > version_of(field) then
    local current = redis.call('HGET', hash, field)
    if value == '' then
      if current then changed = changed + 1 end
      redis.call('HDEL', hash, field)
    else
      if current ~= value then changed = changed + 1 end
      redis.call('HSET', hash, field, value)
    end
    redis.call('HSET', hash, VERSION_PREFIX .. field, version)
  end
end

local removed = 0
for i = last + 1, #ARGV do
  local field = ARGV[i]
  if version_of(field) <= horizon then
    removed = removed + redis.call('HDEL', hash, field)
  end
end

return { changed, removed }
