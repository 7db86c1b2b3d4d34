-- declare_queue.lua: make a platform queue's predeclared size classes exist, with or without
-- workers (bb_scheduler's predeclared_platform_queues). Idempotent: every frontend
-- configured with the queue runs it at start and on its reaper tick.
-- KEYS[1..13] the domain keys in the fixed layout of redbarn.queue.keys.DOMAIN_KEYS:
-- KEYS[1] meta  KEYS[2] workers  KEYS[3] leases  KEYS[4] parked  KEYS[5] tasks
-- KEYS[6] ops  KEYS[7] queued  KEYS[8] pick  KEYS[9] inv  KEYS[10] inflight
-- KEYS[11] drains  KEYS[12] opgc  KEYS[13] opnames
-- ARGV[1] config (see _lib.lua)
-- ARGV[2] the predeclared size classes, 10 digits each, increasing, space separated
-- ARGV[3] worker invocation stickiness limits in ms, outermost level first, space separated
--   ('' = none); kept in meta field stk for L.pick (R34)
-- Returns: {'ok', added} (added: how many of them did not exist before)
local pre = ARGV[2]
if redis.call('HGET', K_META, 'pre') ~= pre then redis.call('HSET', K_META, 'pre', pre) end
local stk = ARGV[3] or ''
if stk == '' then
  redis.call('HDEL', K_META, 'stk')
elseif redis.call('HGET', K_META, 'stk') ~= stk then
  redis.call('HSET', K_META, 'stk', stk)
end
local classes = L.scs()
local have = {}
for _, c in ipairs(classes) do have[c] = true end
local added = 0
for _, c in ipairs(L.words(pre)) do
  if not have[c] then
    classes[#classes + 1] = c
    added = added + 1
  end
  -- A predeclared size class is never due for removal.
  redis.call('HDEL', K_META, 'z' .. c)
end
if added > 0 then
  table.sort(classes)
  redis.call('HSET', K_META, 'scs', table.concat(classes, ' '))
end
return {'ok', L.int(added)}
