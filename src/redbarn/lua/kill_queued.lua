-- kill_queued.lua: complete every queued operation of a size class queue that has no workers.
-- KEYS[1..13] the domain keys in the fixed layout of redbarn.queue.keys.DOMAIN_KEYS:
-- KEYS[1] meta  KEYS[2] workers  KEYS[3] leases  KEYS[4] parked  KEYS[5] tasks
-- KEYS[6] ops  KEYS[7] queued  KEYS[8] pick  KEYS[9] inv  KEYS[10] inflight
-- KEYS[11] drains  KEYS[12] opgc  KEYS[13] opnames
-- ARGV[1] config (see _lib.lua)
-- ARGV[2] size class (10 digits)  ARGV[3] result ("R" + ExecuteResponse bytes)  ARGV[4] batch
-- Returns: {'ok', killed, more(0|1)} | {'none'} (no such queue) | {'busy'} (it has workers)
local sc, batch = ARGV[2], tonumber(ARGV[4])
local known = false
for _, c in ipairs(L.scs()) do if c == sc then known = true end end
if not known then return {'none'} end
if L.worker_count(sc) > 0 then return {'busy'} end
local n = 0
while true do
  local m = redis.call('ZRANGEBYLEX', K_QUEUED, '[' .. sc .. ' ', '[' .. sc .. ' ' .. HI, 'LIMIT', 0, 1)
  if not m[1] then return {'ok', n, 0} end
  if n >= batch then return {'ok', n, 1} end
  local tid = L.op_get(string.match(m[1], ' (%S+)$')).tid
  L.complete(tid, L.task_get(tid), ARGV[3])
  n = n + 1
end
