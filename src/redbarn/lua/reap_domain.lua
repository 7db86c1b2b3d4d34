-- reap_domain.lua: expire lost workers (requeue or fail their task), detach operations whose
-- waiters left, and remove size class queues that had no workers for the platform timeout
-- (never a predeclared one: meta field pre, see declare_queue.lua).
-- Idempotent: every frontend runs it on a jittered tick.
-- KEYS[1..13] the domain keys in the fixed layout of redbarn.queue.keys.DOMAIN_KEYS:
-- KEYS[1] meta  KEYS[2] workers  KEYS[3] leases  KEYS[4] parked  KEYS[5] tasks
-- KEYS[6] ops  KEYS[7] queued  KEYS[8] pick  KEYS[9] inv  KEYS[10] inflight
-- KEYS[11] drains  KEYS[12] opgc  KEYS[13] opnames
-- ARGV[1] config (see _lib.lua)
-- ARGV[2] batch size (entries of each kind handled per call)
-- Returns: {workers_expired, operations_detached, queued_failed, more(0|1), gone(0|1), lost}
--   lost: the tasks of lost workers, "r<sc>" requeued | "f<sc>" failed | "q<sc>" failed
--   while queued (its size class queue was removed), joined by spaces (metrics)
local batch = tonumber(ARGV[2])
local nw, no, nq, more = 0, 0, 0, 0
for _, wk in ipairs(redis.call('ZRANGEBYSCORE', K_LEASES, '-inf', NOW, 'LIMIT', 0, batch)) do
  local w = L.worker_get(wk)
  if w then
    local tid, t = L.current(wk, w)
    L.remove_worker(wk, w)
    if tid then L.lose(tid, t, wk) end
  else
    redis.call('ZREM', K_LEASES, wk)
  end
  nw = nw + 1
end
for _, opid in ipairs(redis.call('ZRANGEBYSCORE', K_OPGC, '-inf', NOW, 'LIMIT', 0, batch)) do
  L.detach(opid)
  no = no + 1
end
if nw >= batch or no >= batch then more = 1 end
local keep = {}
local classes = L.scs()
-- Predeclared size classes (declare_queue.lua) are never removed.
local pre = {}
for _, c in ipairs(L.words(redis.call('HGET', K_META, 'pre') or '')) do pre[c] = true end
for _, sc in ipairs(classes) do
  local z = redis.call('HGET', K_META, 'z' .. sc)
  if z and tonumber(z) <= NOW and L.worker_count(sc) == 0 and not pre[sc] then
    local left = false
    while true do
      local m = redis.call('ZRANGEBYLEX', K_QUEUED, '[' .. sc .. ' ', '[' .. sc .. ' ' .. HI, 'LIMIT', 0, 1)
      if not m[1] then break end
      if nq >= batch then left = true; more = 1; break end
      local opid = string.match(m[1], ' (%S+)$')
      local tid = L.op_get(opid).tid
      LOST[#LOST + 1] = 'q' .. sc
      L.complete(tid, L.task_get(tid), 'E14' .. S ..
        'Workers for this instance name, platform and size class disappeared while task was queued')
      nq = nq + 1
    end
    if left then keep[#keep + 1] = sc else redis.call('HDEL', K_META, 'w' .. sc, 'z' .. sc) end
  else
    keep[#keep + 1] = sc
  end
end
local gone = 0
if #keep ~= #classes then
  if #keep > 0 then redis.call('HSET', K_META, 'scs', table.concat(keep, ' ')) else redis.call('HDEL', K_META, 'scs') end
end
if #keep == 0 and redis.call('HLEN', K_OPS) == 0 and redis.call('HLEN', K_TASKS) == 0
   and redis.call('ZCARD', K_LEASES) == 0 then
  redis.call('DEL', K_META, K_INV, K_PICK, K_DRAINS)
  gone = 1
end
return {nw, no, nq, more, gone, table.concat(LOST, ' ')}
