-- queue_stats.lua: what one platform queue holds, per size class, for the metrics gauges.
-- A read, not a transition: it changes nothing, so it lives apart from the transition
-- scripts (src/redbarn/lua/*.lua) and needs none of _lib.lua. One call per platform
-- queue and scrape period; its cost is O(workers + the queued operations it scans).
-- KEYS[1..13] the domain keys in the fixed layout of redbarn.queue.keys.DOMAIN_KEYS; read:
-- KEYS[1] meta  KEYS[2] workers  KEYS[5] tasks  KEYS[6] ops  KEYS[7] queued  KEYS[11] drains
-- ARGV[1] most queued operations scanned per size class for the oldest one
-- Returns: {now_ms, {sc, queued, executing_ops, workers, executing, idle, drained,
--   oldest_queued_ms (0 = none), scanned_all (0|1)}...}
local K_META, K_WORKERS, K_TASKS, K_OPS, K_QUEUED, K_DRAINS = KEYS[1], KEYS[2], KEYS[5], KEYS[6], KEYS[7], KEYS[11]
local scan = tonumber(ARGV[1])
local S = '\31'
local F = '([^\31]*)'
local t0 = redis.call('TIME')
local now = tonumber(t0[1]) * 1000 + math.floor(tonumber(t0[2]) / 1000)

local stats, order = {}, {}
local function entry(sc)
  local e = stats[sc]
  if not e then
    e = {queued = 0, xops = 0, workers = 0, executing = 0, idle = 0, drained = 0}
    stats[sc] = e
    order[#order + 1] = sc
  end
  return e
end
for sc in string.gmatch(redis.call('HGET', K_META, 'scs') or '', '%S+') do entry(sc) end

-- Drains by size class: lists of worker-id tokens ("\30<json pair>\30"), as L.drained reads them.
local drains = {}
local d = redis.call('HGETALL', K_DRAINS)
for i = 1, #d, 2 do
  local sc = string.sub(d[i], 1, 10)
  local tokens = string.match(d[i + 1], '^[^\31]*\31(.*)$') or ''
  drains[sc] = drains[sc] or {}
  drains[sc][#drains[sc] + 1] = tokens
end
local function drained(sc, term, pairs)
  if term == '1' then return true end
  for _, tokens in ipairs(drains[sc] or {}) do
    local all = true
    for tok in string.gmatch(tokens, '[^\30]+') do
      if not string.find(pairs, '\30' .. tok .. '\30', 1, true) then all = false; break end
    end
    if all then return true end
  end
  return false
end

-- Workers: executing (its assignment is still its own, the epoch fence of L.current),
-- else drained, else idle.
local w = redis.call('HGETALL', K_WORKERS)
for i = 1, #w, 2 do
  local wk = w[i]
  local sc = string.sub(wk, 1, 10)
  local e = entry(sc)
  -- worker record fields: tid ep holder term pairs [li ss] (redbarn.queue.codec)
  local tid, ep, _, term, pairs = string.match(w[i + 1], '^' .. F .. S .. F .. S .. F .. S .. F .. S .. F)
  e.workers = e.workers + 1
  local busy = false
  if tid and tid ~= '' then
    local rec = redis.call('HGET', K_TASKS, tid)
    if rec then
      -- task record fields: st sc ep n r qt dg fn dk w fb ops (redbarn.queue.codec)
      local f = {}
      for v in string.gmatch(rec .. S, '([^\31]*)\31') do f[#f + 1] = v end
      if f[1] == 'x' and f[10] == wk and f[3] == ep then
        busy = true
        local n = 0
        for _ in string.gmatch(f[12] or '', '%S+') do n = n + 1 end
        e.xops = e.xops + n
      end
    end
  end
  if busy then
    e.executing = e.executing + 1
  elseif drained(sc, term, pairs or '') then
    e.drained = e.drained + 1
  else
    e.idle = e.idle + 1
  end
end

local out = {now}
table.sort(order)
for _, sc in ipairs(order) do
  local e = stats[sc]
  local lo, hi = '[' .. sc .. ' ', '[' .. sc .. ' \255'
  e.queued = redis.call('ZLEXCOUNT', K_QUEUED, lo, hi)
  -- The oldest queued operation is the one with the smallest order stamp (the 16 digits
  -- after the priority in each member); its task holds the queued time.
  local oldest, all = 0, 1
  if e.queued > 0 then
    local best_seq, best_op = nil, nil
    for _, m in ipairs(redis.call('ZRANGEBYLEX', K_QUEUED, lo, hi, 'LIMIT', 0, scan)) do
      local seq, opid = string.match(m, '\31%d%d%d%d%d%d%d%d%d%d(%d+) (%S+)$')
      if seq and (not best_seq or seq < best_seq) then best_seq, best_op = seq, opid end
    end
    if e.queued > scan then all = 0 end
    local op = best_op and redis.call('HGET', K_OPS, best_op)
    local tid = op and string.match(op, '^([^\31]*)')
    local rec = tid and redis.call('HGET', K_TASKS, tid)
    if rec then
      local f = {}
      for v in string.gmatch(rec .. S, '([^\31]*)\31') do f[#f + 1] = v end
      oldest = tonumber(f[6]) or 0
    end
  end
  out[#out + 1] = {tonumber(sc), e.queued, e.xops, e.workers, e.executing, e.idle, e.drained, oldest, all}
end
return out
