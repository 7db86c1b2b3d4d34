-- probe_blobs.lua: say which CAS blobs are stored whole, refresh their TTL, and optionally
-- return the small ones (FindMissingBlobs, BatchReadBlobs, every read's first step).
-- Non-cluster clients only: its keys span hash slots (a cluster client gets a pipeline).
-- KEYS[i] redbarn:v1:cas:{H}:S   STRING (the blob, S <= chunk size) or HASH (fields c0..c<n-1>)
-- ARGV[1] TTL in ms  ARGV[2] '1' to return the value of a STRING blob, '0' not to
-- ARGV[2+i] S, the size KEYS[i] must hold
-- Returns: per key 0 when missing or incomplete (a STRING of another length, such as a
--   v1 manifest; a HASH lacking a chunk), else the STRING's value (or 1 when ARGV[2] is
--   '0'), or for a HASH its chunk size (the length of c0). Work per key is constant.
local ttl, values, out = ARGV[1], ARGV[2] == '1', {}
for i = 1, #KEYS do
  local key, size, found = KEYS[i], tonumber(ARGV[2 + i]), 0
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'string' then
    if redis.call('STRLEN', key) == size then
      found = values and redis.call('GET', key) or 1
    end
  elseif kind == 'hash' then
    local n = redis.call('HLEN', key)
    local c = redis.call('HSTRLEN', key, 'c0')
    if c > 0 and (n - 1) * c < size and size <= n * c
        and redis.call('HSTRLEN', key, 'c' .. (n - 1)) == size - (n - 1) * c then
      found = c
    end
  end
  if found ~= 0 then redis.call('PEXPIRE', key, ttl) end
  out[i] = found
end
return out
