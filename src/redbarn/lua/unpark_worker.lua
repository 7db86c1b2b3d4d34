-- unpark_worker.lua: end a parked Synchronize: leave the parked set, return what was assigned.
-- KEYS[1..13] the domain keys in the fixed layout of redbarn.queue.keys.DOMAIN_KEYS:
-- KEYS[1] meta  KEYS[2] workers  KEYS[3] leases  KEYS[4] parked  KEYS[5] tasks
-- KEYS[6] ops  KEYS[7] queued  KEYS[8] pick  KEYS[9] inv  KEYS[10] inflight
-- KEYS[11] drains  KEYS[12] opgc  KEYS[13] opnames
-- ARGV[1] config (see _lib.lua; its last word is the id of the frontend that parked it)
-- ARGV[2] worker key
-- Returns: {'x', tid, epoch, queued_ms, next_ms, Executing bytes} | {'i', next_ms}
local wk, fid = ARGV[2], CFG.fid
local w = L.worker_get(wk)
if not w then return {'i', L.int(NOW)} end
if w.h == fid then
  w.h = ''
  L.unpark(wk, w)
  redis.call('ZADD', K_LEASES, NOW + CFG.worker_timeout, wk)
  L.worker_put(wk, w)
end
local tid, t = L.current(wk, w)
if tid then return L.exec_reply(tid, t, NOW + CFG.busy) end
return {'i', L.int(NOW)}
