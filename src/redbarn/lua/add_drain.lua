-- add_drain.lua: drain the workers of a size class queue whose id contains a pattern.
-- KEYS[1..13] the domain keys in the fixed layout of redbarn.queue.keys.DOMAIN_KEYS:
-- KEYS[1] meta  KEYS[2] workers  KEYS[3] leases  KEYS[4] parked  KEYS[5] tasks
-- KEYS[6] ops  KEYS[7] queued  KEYS[8] pick  KEYS[9] inv  KEYS[10] inflight
-- KEYS[11] drains  KEYS[12] opgc  KEYS[13] opnames
-- ARGV[1] config (see _lib.lua)
-- ARGV[2] size class (10 digits)  ARGV[3] pattern JSON  ARGV[4] pattern tokens
-- Returns: {'ok'} | {'none'} (no such size class queue)
local sc, tokens = ARGV[2], ARGV[4]
local known = false
for _, c in ipairs(L.scs()) do if c == sc then known = true end end
if not known then return {'none'} end
redis.call('HSET', K_DRAINS, sc .. ' ' .. ARGV[3], L.int(NOW) .. S .. tokens)
-- Parked workers that are now drained stay parked but can no longer receive work.
for _, member in ipairs(redis.call('ZRANGEBYLEX', K_PARKED, '[' .. sc .. ' ', '[' .. sc .. ' ' .. HI)) do
  local w = L.worker_get(L.parked_wk(member))
  if w and L.matches(tokens, w.pairs) then redis.call('ZREM', K_PARKED, member) end
end
return {'ok'}
