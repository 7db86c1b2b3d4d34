-- stage_upload.lua: persist one chunk of a ByteStream upload, unless another stream moved it.
-- Both keys share the blob's hash tag, so this runs on a cluster client too.
-- KEYS[1] redbarn:v1:upload:{H}:S:U   HASH  chunks c<N> and `committed` (bytes staged)
-- ARGV[1] committed as this stream last saw it  ARGV[2] committed after this chunk
-- ARGV[3] upload TTL in ms  ARGV[4] the chunk's field (c<N>)  ARGV[5] its bytes (a whole
--   chunk, or the part received so far of the chunk at ARGV[1] rounded down)
-- Returns: {1, committed} when staged, {0, committed found} when another stream wrote
--   to the upload or it expired
local current = tonumber(redis.call('HGET', KEYS[1], 'committed') or '0')
if current ~= tonumber(ARGV[1]) then return {0, current} end
redis.call('HSET', KEYS[1], ARGV[4], ARGV[5], 'committed', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, tonumber(ARGV[2])}
