-- terminate_workers.lua: mark the workers whose id contains a pattern as terminating (a drain
-- that cannot be removed); they finish their current task and get no new work.
-- KEYS[1..13] the domain keys in the fixed layout of redbarn.queue.keys.DOMAIN_KEYS:
-- KEYS[1] meta  KEYS[2] workers  KEYS[3] leases  KEYS[4] parked  KEYS[5] tasks
-- KEYS[6] ops  KEYS[7] queued  KEYS[8] pick  KEYS[9] inv  KEYS[10] inflight
-- KEYS[11] drains  KEYS[12] opgc  KEYS[13] opnames
-- ARGV[1] config (see _lib.lua)
-- ARGV[2] pattern tokens
-- Returns: {matched, tid1, tid2, ...} (tasks those workers are executing now)
local out = {0}
for _, wk in ipairs(redis.call('ZRANGE', K_LEASES, 0, -1)) do
  local w = L.worker_get(wk)
  if w and L.matches(ARGV[2], w.pairs) then
    out[1] = out[1] + 1
    w.term = '1'
    L.worker_put(wk, w)
    L.unpark(wk, w)
    L.publish(w.h, 'w ' .. CFG.domain .. ' ' .. wk)
    local tid = L.current(wk, w)
    if tid then out[#out + 1] = tid end
  end
end
return out
