-- remove_drain.lua: remove a drain; parked workers it held become eligible for work again.
-- KEYS[1..13] the domain keys in the fixed layout of redbarn.queue.keys.DOMAIN_KEYS:
-- KEYS[1] meta  KEYS[2] workers  KEYS[3] leases  KEYS[4] parked  KEYS[5] tasks
-- KEYS[6] ops  KEYS[7] queued  KEYS[8] pick  KEYS[9] inv  KEYS[10] inflight
-- KEYS[11] drains  KEYS[12] opgc  KEYS[13] opnames
-- ARGV[1] config (see _lib.lua)
-- ARGV[2] size class (10 digits)  ARGV[3] pattern JSON
-- Returns: {'ok'} | {'none'} (no such size class queue)
local sc = ARGV[2]
local known = false
for _, c in ipairs(L.scs()) do if c == sc then known = true end end
if not known then return {'none'} end
redis.call('HDEL', K_DRAINS, sc .. ' ' .. ARGV[3])
local queued = redis.call('ZRANGEBYLEX', K_QUEUED, '[' .. sc .. ' ', '[' .. sc .. ' ' .. HI, 'LIMIT', 0, 1)[1]
for _, wk in ipairs(redis.call('ZRANGE', K_LEASES, 0, -1)) do
  if L.sc_of(wk) == sc then
    local w = L.worker_get(wk)
    if w and w.h ~= '' and not L.drained(sc, w) and not L.is_parked(wk, w) then
      L.park(wk, w)
      if queued then L.publish(w.h, 'w ' .. CFG.domain .. ' ' .. wk) end
    end
  end
end
return {'ok'}
