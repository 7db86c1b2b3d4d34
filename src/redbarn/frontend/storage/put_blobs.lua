-- put_blobs.lua: store many CAS blobs at once (BatchUpdateBlobs), each with the CAS TTL.
-- Non-cluster clients only, like probe_blobs.lua (its keys span hash slots).
-- KEYS[i] redbarn:v1:cas:{H}:S   STRING when the blob is one value, else HASH c0..c<n-1>
-- ARGV[1] TTL in ms  then per key: n, the number of its values, then those n values
--   (n = 1: the blob itself, stored as a STRING; n > 1: its chunks, stored as a HASH)
-- Returns: the number of keys written
local ttl, p = ARGV[1], 2
for i = 1, #KEYS do
  local key, n = KEYS[i], tonumber(ARGV[p])
  if n == 1 then
    redis.call('SET', key, ARGV[p + 1], 'PX', ttl)
  else
    redis.call('DEL', key)
    for c = 0, n - 1 do
      redis.call('HSET', key, 'c' .. c, ARGV[p + 1 + c])
    end
    redis.call('PEXPIRE', key, ttl)
  end
  p = p + 1 + n
end
return #KEYS
