-- wake_parked.lua: wake one idle worker parked in this shard of a sharded platform queue,
-- because an Execute queued work in another shard where no worker was parked
-- (--queue-shards; see redbarn.queue.keys). The worker leaves the parked set here, so
-- the next wake picks another, and its holder gets a bare hint: the hold ends, unparks
-- and looks for work in the other shards before it answers.
-- KEYS[1..13] the domain keys in the fixed layout of redbarn.queue.keys.DOMAIN_KEYS:
-- KEYS[1] meta  KEYS[2] workers  KEYS[3] leases  KEYS[4] parked  KEYS[5] tasks
-- KEYS[6] ops  KEYS[7] queued  KEYS[8] pick  KEYS[9] inv  KEYS[10] inflight
-- KEYS[11] drains  KEYS[12] opgc  KEYS[13] opnames
-- ARGV[1] config (see _lib.lua)
-- ARGV[2] the size class (10 digits) of the queued work
-- Returns: {'w', worker key} | {'n'} (no worker of that size class is parked here)
local sc = ARGV[2]
local member = redis.call('ZRANGEBYLEX', K_PARKED, '[' .. sc .. ' ', '[' .. sc .. ' ' .. HI, 'LIMIT', 0, 1)[1]
if not member then return {'n'} end
redis.call('ZREM', K_PARKED, member)
local wk = L.parked_wk(member)
local w = L.worker_get(wk)
if not w then return {'n'} end
L.publish(w.h, 'w ' .. CFG.domain .. ' ' .. wk)
return {'w', wk}
