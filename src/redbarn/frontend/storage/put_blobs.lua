-- put_blobs.lua: store many CAS values at once (BatchUpdateBlobs), each with the CAS TTL.
-- Non-cluster clients only, like touch_blobs.lua (its keys span hash slots).
-- KEYS[i] redbarn:v1:cas:{H}:S or :c<N>  STRING   in order: a blob's chunks before its manifest
-- ARGV[1] TTL in ms  ARGV[i+1] the value of KEYS[i]
-- Returns: the number of keys written
local ttl = ARGV[1]
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[i + 1], 'PX', ttl)
end
return #KEYS
