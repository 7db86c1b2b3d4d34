-- kill_operation.lua: complete an operation's task (and so every deduplicated operation) with
-- the caller's status; its worker goes idle on its next report.
-- KEYS[1..13] the domain keys in the fixed layout of redbarn.queue.keys.DOMAIN_KEYS:
-- KEYS[1] meta  KEYS[2] workers  KEYS[3] leases  KEYS[4] parked  KEYS[5] tasks
-- KEYS[6] ops  KEYS[7] queued  KEYS[8] pick  KEYS[9] inv  KEYS[10] inflight
-- KEYS[11] drains  KEYS[12] opgc  KEYS[13] opnames
-- ARGV[1] config (see _lib.lua)
-- ARGV[2] operation id  ARGV[3] result ("R" + ExecuteResponse bytes)
-- Returns: {'ok', size class} (killed) | {'done'} (already completed) | {'none'}
local o = L.op_get(ARGV[2])
if not o then return {'none'} end
local t = L.task_get(o.tid)
if not t then return {'none'} end
if t.st == 'd' then return {'done'} end
L.complete(o.tid, t, ARGV[3])
return {'ok', t.sc}
