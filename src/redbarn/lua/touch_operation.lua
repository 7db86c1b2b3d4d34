-- touch_operation.lua: a waiter's lease on an operation (attach and keep-alive), and its view.
-- KEYS[1..13] the domain keys in the fixed layout of redbarn.queue.keys.DOMAIN_KEYS:
-- KEYS[1] meta  KEYS[2] workers  KEYS[3] leases  KEYS[4] parked  KEYS[5] tasks
-- KEYS[6] ops  KEYS[7] queued  KEYS[8] pick  KEYS[9] inv  KEYS[10] inflight
-- KEYS[11] drains  KEYS[12] opgc  KEYS[13] opnames
-- ARGV[1] config (see _lib.lua)
-- ARGV[2] operation id  ARGV[3] frontend id ('' = read only: no lease, no watch)
-- Returns: {'none'} | {'op', stage, queued_ms, digest, digest_fn, result, sc, qm, path, tid,
--   worker, now_ms, gc_deadline_ms, worker_stages, now_us}
local opid, fid = ARGV[2], ARGV[3]
local o = L.op_get(opid)
if not o then return {'none'} end
local t = L.task_get(o.tid)
if not t then return {'none'} end
if fid ~= '' then
  local before = o.fids
  L.watch(o, fid)
  if o.fids ~= before then L.op_put(opid, o) end
  redis.call('ZADD', K_OPGC, NOW + CFG.retention, opid)
end
local res = ''
if t.st == 'd' then res = redis.call('HGET', K_TASKS, o.tid .. '|r') or '' end
local gc = redis.call('ZSCORE', K_OPGC, opid) or ''
local stages = L.stages_of(o.tid, t)
return {'op', t.st, t.qt, t.dg, t.fn, res, t.sc, o.qm, o.path, o.tid, t.w, L.int(NOW), gc, stages,
  L.int(NOW_US)}
