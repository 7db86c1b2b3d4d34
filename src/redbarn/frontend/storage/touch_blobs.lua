-- touch_blobs.lua: refresh the TTL of many blobs at once and say which exist (FindMissingBlobs).
-- Lives beside the CAS store, not in redbarn/lua: it is no scheduler transition, and its keys
-- span many hash slots, so RedisBlobStore only uses it on a non-cluster client (a cluster
-- client gets the equivalent pipeline of PEXPIREs).
-- KEYS[...] per blob: its main key, then its chunk keys (redbarn:v1:cas:{H}:S[:c<N>])
-- ARGV[1] TTL in ms  ARGV[2..] per blob: the number of keys it contributed to KEYS
-- Returns: per blob 1 (main key and every chunk present, TTLs refreshed) or 0
local ttl = ARGV[1]
local out, k = {}, 1
for b = 2, #ARGV do
  local n = tonumber(ARGV[b])
  local present = 1
  for i = k, k + n - 1 do
    if redis.call('PEXPIRE', KEYS[i], ttl) == 0 then present = 0 end
  end
  out[b - 1] = present
  k = k + n
end
return out
