-- commit_upload.lua: make a checked ByteStream upload the CAS blob, with no copy of its chunks.
-- Both keys share the blob's hash tag, so this runs on a cluster client too.
-- KEYS[1] redbarn:v1:upload:{H}:S:U   HASH  staged chunks c<N> and `committed`
-- KEYS[2] redbarn:v1:cas:{H}:S        the blob's key
-- ARGV[1] committed as this stream last saw it  ARGV[2] CAS TTL in ms
-- ARGV[3] 'string' (the blob fits one chunk: ARGV[5] is all of it, SET as a STRING) or
--   'hash' (the upload hash, plus its last chunk ARGV[5] under field ARGV[4], is RENAMEd
--   to the CAS key after dropping `committed`)
-- Returns: {1} when committed, {0, committed found} when another stream wrote to the
--   upload or it expired (nothing is changed then)
local current = tonumber(redis.call('HGET', KEYS[1], 'committed') or '0')
if current ~= tonumber(ARGV[1]) then return {0, current} end
if ARGV[3] == 'string' then
  redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[2])
  redis.call('DEL', KEYS[1])
  return {1}
end
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0} end
redis.call('HSET', KEYS[1], ARGV[4], ARGV[5])
redis.call('HDEL', KEYS[1], 'committed')
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return {1}
