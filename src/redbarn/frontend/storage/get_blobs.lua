-- get_blobs.lua: read many CAS main keys at once, refreshing the TTL of those present.
-- Non-cluster clients only, like touch_blobs.lua (its keys span hash slots).
-- KEYS[i] redbarn:v1:cas:{H}:S   STRING  the blob itself, or a chunked blob's manifest
-- ARGV[1] TTL in ms
-- Returns: per key its value, or nil when absent
local ttl, out = ARGV[1], {}
for i = 1, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if v then redis.call('PEXPIRE', KEYS[i], ttl) end
  out[i] = v
end
return out
