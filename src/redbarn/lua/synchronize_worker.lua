-- synchronize_worker.lua: record a worker's report, hand it its next action (or park it).
-- KEYS[1..13] the domain keys in the fixed layout of redbarn.queue.keys.DOMAIN_KEYS:
-- KEYS[1] meta  KEYS[2] workers  KEYS[3] leases  KEYS[4] parked  KEYS[5] tasks
-- KEYS[6] ops  KEYS[7] queued  KEYS[8] pick  KEYS[9] inv  KEYS[10] inflight
-- KEYS[11] drains  KEYS[12] opgc  KEYS[13] opnames
-- ARGV[1] config (see _lib.lua; its last word, the caller's frontend id, holds the call)
-- ARGV[2] worker key "<sc> <worker-json>"  ARGV[3] worker id tokens
-- ARGV[4] report: 'i' idle | 'p<stage>' progress (stage s f r u: started, fetching inputs,
--         running, uploading outputs) | 'c' completed  ARGV[5] reported digest "hash-size"
-- ARGV[6] result "R"+ExecuteResponse bytes (completed)  ARGV[7] '1' if the completion failed
-- ARGV[8] '1' if prefer_being_idle
-- ARGV[9] the id of a frontend known to be gone ('' if none): a Synchronize it held is over
-- ARGV[10] mode (sharded platform queues, --queue-shards): '' as usual; 'n' take work or
--   leave (an idle worker looking for work in a shard other than its home: with nothing
--   to take, its record here is removed and it is answered idle); 'l' leave (after the
--   report the worker's record here is removed and it is answered idle: the completion
--   of work taken from another shard, which sends it home, or its home record while it
--   runs work taken from another shard)
-- Returns: {'x', tid, epoch, queued_ms, next_ms, Executing bytes, report, lost}
--   | {'c', next_ms, report, lost} | {'i', next_ms, report, lost}
--   | {'p', park_deadline_ms, now_us, report, lost}
--   | {'b', holder_fid} (same worker already synchronizing, held by that frontend)
--   | {'e', message} (refused: a size class its predeclared platform queue cannot have)
--   report: what became of a completion report: 'd' the task completed, 'f' it failed on
--   a smaller size class and was requeued on the largest, 'l' late (the worker no longer
--   held the assignment: discarded), '' no completion reported. lost: tasks this worker
--   lost by coming back without them ("r<sc>" requeued, "f<sc>" failed; see L.lose).
--   report and lost feed the caller's metrics.
local wk, fid, kind, dg, failed, prefer = ARGV[2], CFG.fid, string.sub(ARGV[4], 1, 1), ARGV[5], ARGV[7], ARGV[8]
local gone = ARGV[9] or ''
local mode = ARGV[10] or ''
local substage = string.sub(ARGV[4], 2, 2)
local sc = L.sc_of(wk)
local w = L.worker_get(wk)
local dirty = false -- the worker record must be written back
if not w then
  -- A predeclared platform queue (meta pre, see declare_queue.lua) takes workers of its
  -- size classes and of smaller ones, never of a larger one: its largest size class
  -- retries what fails on the others (Buildbarn's R18).
  local pre = L.words(redis.call('HGET', K_META, 'pre') or '')
  if #pre > 0 then
    local max = pre[#pre]
    if sc > max then
      return {'e', 'Worker provided size class ' .. L.int(tonumber(sc)) ..
        ', which exceeds the predeclared maximum of ' .. L.int(tonumber(max))}
    end
    if tonumber(max) > 0 and tonumber(sc) < 1 then
      return {'e', 'Worker did not provide a size class, even though this platform queue uses them'}
    end
  end
  dirty = true
  w = {t = '', ep = 0, h = '', term = '0', pairs = ARGV[3], li = '', ss = ''}
  local classes = L.scs()
  local known = false
  for _, c in ipairs(classes) do if c == sc then known = true end end
  if not known then
    classes[#classes + 1] = sc
    table.sort(classes)
    redis.call('HSET', K_META, 'scs', table.concat(classes, ' '))
  end
  redis.call('HINCRBY', K_META, 'w' .. sc, 1)
  redis.call('HDEL', K_META, 'z' .. sc)
elseif w.h ~= '' then
  local dl = redis.call('ZSCORE', K_LEASES, wk)
  if dl and tonumber(dl) > NOW and (gone == '' or w.h ~= gone) then
    -- Held: by a Synchronize of a worker with the same ID (R38), or by a frontend that
    -- answered this worker idle and keeps its park for its next call (a warm hold) while
    -- that call came here. Ask the holder to let go of a park it is not holding.
    L.publish(w.h, 'r ' .. CFG.domain .. ' ' .. wk)
    return {'b', w.h}
  end
  w.h = ''
  dirty = true
  L.unpark(wk, w)
end
redis.call('ZADD', K_LEASES, NOW + CFG.worker_timeout, wk)
local tid, t = L.current(wk, w)
if not tid and w.t ~= '' then
  w.t = ''
  dirty = true
end

local function next_task(block)
  if mode == 'l' then L.remove_worker(wk, w); return {'i', L.int(NOW)} end
  if prefer == '1' then L.worker_put(wk, w); return {'i', L.int(NOW)} end
  local is_drained = L.drained(sc, w)
  if not is_drained then
    local opid, retained = L.pick(sc, w)
    if opid then
      local ntid = L.op_get(opid).tid
      local nt, executing = L.task_get(ntid, '|a')
      L.assign(ntid, nt, wk, w, false, retained)
      return L.exec_reply(ntid, nt, NOW + CFG.busy, executing or '')
    end
  end
  if mode == 'n' then L.remove_worker(wk, w); return {'i', L.int(NOW)} end  -- nothing here after all
  if not block then L.worker_put(wk, w); return {'i', L.int(NOW)} end
  w.h = fid
  L.worker_put(wk, w)
  if not is_drained then L.park(wk, w) end
  local dl = NOW + CFG.idle + CFG.worker_timeout
  redis.call('ZADD', K_LEASES, dl, wk)
  return {'p', L.int(dl), L.int(NOW_US)}
end

local function current_or_next(block)
  if tid and t.r == STARTED then
    -- The worker had reported progress on this assignment and now reports idle or
    -- another action: it lost it (restarted, crashed). That is a lost attempt, as if
    -- its lease had expired, not a lost response to re-hand (a poison action that
    -- kills its worker must not get rehand_limit more victims).
    L.lose(tid, t, wk)
    w.t = ''
    tid = nil
  end
  if tid and t.n >= CFG.max_attempts then
    -- Re-hands count against the attempt budget too: a worker that dies before its
    -- first report and is restarted at once must not get rehand_limit more runs.
    L.lose(tid, t, wk)
    w.t = ''
    tid = nil
  end
  if tid then
    if t.r < CFG.rehand_limit then
      t.r = t.r + 1
      t.n = t.n + 1
      L.task_put(tid, t)
      L.worker_put(wk, w)
      return L.exec_reply(tid, t, NOW + CFG.busy)
    end
    L.complete(tid, t, 'E13' .. S .. 'Attempted to execute task ' .. L.int(t.r + 1) ..
      ' times, but it never completed. This task may cause worker ' .. L.json_of(wk) .. ' to crash.')
    w.t = ''
  end
  return next_task(block)
end

local report = ''
local function finish(reply)
  reply[#reply + 1] = report
  reply[#reply + 1] = table.concat(LOST, ' ')
  return reply
end

if kind == 'p' then
  if tid and t.dg == dg then
    if t.r ~= STARTED then t.r = STARTED; L.task_put(tid, t) end  -- see current_or_next
    if substage ~= '' then L.worker_stage(tid, t, substage) end
    if dirty then L.worker_put(wk, w) end
    return finish({'c', L.int(NOW + CFG.busy)})
  end
  return finish(current_or_next(false))
elseif kind == 'c' then
  if tid and t.dg == dg then
    local classes = (failed == '1' and t.fb == '0') and L.scs() or {}
    local largest = classes[#classes]
    if #classes > 1 and t.sc ~= largest then
      -- Fallback analyzer: a failure on a smaller size class runs once more on the largest.
      L.exec_ops(t, -1)  -- on its old size class, before it moves
      -- The analyzer's shorter timeout was for the smaller class: rerun with the action's.
      local full = redis.call('HGET', K_TASKS, tid .. '|A')
      if full then
        redis.call('HSET', K_TASKS, tid .. '|a', full)
        redis.call('HDEL', K_TASKS, tid .. '|A')
      end
      t.sc = largest
      t.fb = '1'
      t.st = 'q'
      t.n = 0
      L.requeue(tid, t)
      report = 'f'
    else
      -- Completed by the worker itself: it stays attached to the task's invocation
      -- (the lowest common ancestor of its operations'), Buildbarn's R35.
      w.li = L.lca(t)
      L.complete(tid, t, ARGV[6])
      report = 'd'
    end
    w.t = ''
    tid = nil
    return finish(next_task(true))
  end
  report = 'l'
  return finish(current_or_next(true))
end
return finish(current_or_next(true))
