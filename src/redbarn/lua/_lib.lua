-- _lib.lua: shared helpers, prepended to every transition script when it is loaded.
-- Not a transition itself: it defines locals over the fixed domain KEYS layout that
-- every script receives (see redbarn.queue.keys), the server clock and the records.
-- KEYS[1] meta  KEYS[2] workers  KEYS[3] leases  KEYS[4] parked  KEYS[5] tasks
-- KEYS[6] ops   KEYS[7] queued   KEYS[8] pick    KEYS[9] inv     KEYS[10] inflight
-- KEYS[11] drains  KEYS[12] opgc  KEYS[13] opnames (every operation id, score 0:
-- ListOperations pages them by name with ZRANGEBYLEX)
-- ARGV[1] config: "<domain> <worker_timeout_ms> <busy_ms> <idle_ms> <retention_ms>
--         (idle_ms: how long a park may be held, over all its holds)
--         <max_attempts> <rehand_limit> <pq_timeout_ms> <max_queued> <hint channel prefix>
--         [<caller fid>]"
-- Records are strings of fields joined by \31 (unit separator); see redbarn.queue.codec.

-- Loaded once as a Redis function library (scripts.library_source: every transition is
-- a function of it, so none of this is re-created per call) or, where Redis has no
-- functions, prepended to each script (scripts.script_source). Either way begin() sets
-- the per-call state below from KEYS and ARGV before the transition runs.
-- Library functions are fields of one table (dozens of `local function`s capturing each
-- other cost ~20us to create per call in script mode).
local L = {}
local K_META, K_WORKERS, K_LEASES, K_PARKED, K_TASKS, K_OPS
local K_QUEUED, K_PICK, K_INV, K_INFLIGHT, K_DRAINS, K_OPGC
local K_OPNAMES
local N_DOMAIN_KEYS = 13  -- keys after these belong to the script (enqueue's blob keys)
local S = '\31'
local HI = '\255'

-- Per-call state (begin()). NOW: the server clock in ms; NOW_US the same instant in
-- microseconds: it orders the states of an operation or a worker that this call returns
-- or publishes (calls run one at a time, each over 1us). STAMP: see stamp(). LOCAL: hints
-- for the caller (L.publish). OPS: operation records read (L.op_get). LOST: see L.lose.
-- STK: see L.stk.
local NOW, NOW_US, STAMP, CFG, LOCAL, OPS, LOST, STK

-- "Last started" order of invocations: a per-domain sequence (meta seq, shared with the
-- FIFO order of queued operations), drawn at most once per call, so two starts in the
-- same millisecond still order (least recently started wins ties, R33).
local function stamp()
  if not STAMP then STAMP = redis.call('HINCRBY', K_META, 'seq', 1) end
  return STAMP
end

-- ARGV[1], parsed; kept across calls in function mode (a few distinct strings: one per
-- frontend and domain), dropped whole when it grows past CFG_CACHE.
local CFGS, NCFGS, CFG_CACHE = {}, 0, 256
local function config(text)
  local c = CFGS[text]
  if c then return c end
  local d, a, b, cc, e, f, g, h, i, channel, fid = string.match(text,
    '^(%S+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%S+) ?(%S*)$')
  c = {domain = d, channel_prefix = channel, fid = fid,
       worker_timeout = tonumber(a), busy = tonumber(b), idle = tonumber(cc), retention = tonumber(e),
       max_attempts = tonumber(f), rehand_limit = tonumber(g), pq_timeout = tonumber(h),
       max_queued = tonumber(i)}
  if NCFGS >= CFG_CACHE then CFGS, NCFGS = {}, 0 end
  CFGS[text] = c
  NCFGS = NCFGS + 1
  return c
end

local function begin()
  K_META, K_WORKERS, K_LEASES, K_PARKED, K_TASKS, K_OPS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
  K_QUEUED, K_PICK, K_INV, K_INFLIGHT, K_DRAINS, K_OPGC = KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12]
  K_OPNAMES = KEYS[13]
  local t = redis.call('TIME')
  NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  NOW_US = tonumber(t[1]) * 1000000 + tonumber(t[2])
  STAMP, STK = nil, nil
  CFG = config(ARGV[1])
  LOCAL, OPS, LOST = {}, {}, {}
end

function L.int(n) return string.format('%d', math.floor(n)) end
local PADS = {[15] = '%015d', [16] = '%016d'}
function L.pad(n, w) return string.format(PADS[w], math.floor(n)) end

function L.split(s, sep)
  local out = {}
  local start = 1
  while true do
    local i = string.find(s, sep, start, true)
    if not i then out[#out + 1] = string.sub(s, start); return out end
    out[#out + 1] = string.sub(s, start, i - 1)
    start = i + #sep
  end
end

function L.words(s)
  local out = {}
  for w in string.gmatch(s, '%S+') do out[#out + 1] = w end
  return out
end

-- Hints for the calling frontend itself are not published: they go back in this call's
-- reply (scripts.py appends LOCAL as a last, nested element), saving a pub/sub hop.
function L.publish(fid, msg)
  if fid == nil or fid == '' then return end
  if fid == CFG.fid then
    LOCAL[#LOCAL + 1] = msg
  else
    redis.call('PUBLISH', CFG.channel_prefix .. fid, msg)
  end
end

-- Task field r: how many times the current assignment was re-handed to a worker that
-- never reported on it (0..rehand_limit), or STARTED once the worker reported progress
-- (a later loss is then a lost attempt, not a lost response). See synchronize_worker.lua.
local STARTED = -1

-- Task record: st sc ep n r qt dg fn dk w fb ops. Records are parsed with one
-- string.match (a C call): a Lua split loop costs several times more per record.
local F = '([^\31]*)'
-- (Built without the string library, which a function library cannot use while it loads.)
local function fields(n)
  local re = '^' .. F
  for _ = 2, n do re = re .. '\31' .. F end
  return re .. '$'
end
local TASK_RE = fields(12)
local OP_RE = fields(5)
local OP_RE4 = fields(4)  -- written before tg existed
local WORKER_RE = fields(7)
local WORKER_RE5 = fields(5)  -- written before li, ss

function L.ids(s)
  if s == '' then return {} end
  if not string.find(s, ' ', 1, true) then return {s} end
  return L.words(s)
end

-- With field f ('|a', '|s', ...), also that field of the task (one HMGET): t, value.
function L.task_get(tid, f)
  local v, extra
  if f then
    local both = redis.call('HMGET', K_TASKS, tid, tid .. f)
    v, extra = both[1], both[2]
  else
    v = redis.call('HGET', K_TASKS, tid)
  end
  if not v then return nil end
  local st, sc, ep, n, r, qt, dg, fn, dk, w, fb, ops = string.match(v, TASK_RE)
  return {st = st, sc = sc, ep = tonumber(ep), n = tonumber(n), r = tonumber(r), qt = qt, dg = dg,
          fn = fn, dk = dk, w = w, fb = fb, ops = L.ids(ops)}, extra or nil
end

-- Writes the task record; f1 v1 f2 v2: more fields of the task ('|a', '|r', ...) set in
-- the same HSET.
function L.task_put(tid, t, f1, v1, f2, v2)
  local rec = table.concat({t.st, t.sc, L.int(t.ep), L.int(t.n), L.int(t.r), t.qt, t.dg,
    t.fn, t.dk, t.w, t.fb, table.concat(t.ops, ' ')}, S)
  if f2 then
    redis.call('HSET', K_TASKS, tid, rec, tid .. f1, v1, tid .. f2, v2)
  elseif f1 then
    redis.call('HSET', K_TASKS, tid, rec, tid .. f1, v1)
  else
    redis.call('HSET', K_TASKS, tid, rec)
  end
end

-- Operation record: tid qm path fids tg (tg: the request's target_id; memoised for the duration of one script call)
function L.op_get(opid)
  local o = OPS[opid]
  if o then return o end
  local v = redis.call('HGET', K_OPS, opid)
  if not v then return nil end
  local tid, qm, path, fids, tg = string.match(v, OP_RE)
  if not tid then tid, qm, path, fids = string.match(v, OP_RE4) end
  o = {tid = tid, qm = qm, path = path, fids = fids, tg = tg}
  OPS[opid] = o
  return o
end

function L.op_put(opid, o)
  OPS[opid] = o
  redis.call('HSET', K_OPS, opid, table.concat({o.tid, o.qm, o.path, o.fids, o.tg or ''}, S))
end

-- Worker record: tid ep holder term pairs li ss. li: the invocation path of the task it
-- last completed itself (Buildbarn's lastInvocation, R35: the lowest common ancestor of
-- that task's operations' invocations; the root '' after any other end of a task, and
-- while it executes). ss: per level of worker invocation stickiness, the ms at which it
-- started executing tasks of its current invocation at that level (R34).
function L.worker_get(wk)
  local v = redis.call('HGET', K_WORKERS, wk)
  if not v then return nil end
  local t, ep, h, term, pairs, li, ss = string.match(v, WORKER_RE)
  if not t then t, ep, h, term, pairs = string.match(v, WORKER_RE5) end
  return {t = t, ep = tonumber(ep), h = h, term = term, pairs = pairs, li = li or '', ss = ss or ''}
end

function L.worker_put(wk, w)
  redis.call('HSET', K_WORKERS, wk, table.concat({w.t, L.int(w.ep), w.h, w.term, w.pairs, w.li, w.ss}, S))
end

-- Parked (idle, synchronizing, undrained) workers are members "<sc> <li>/\31<worker-json>"
-- of K_PARKED: the workers attached to invocation N or below it are one lex range,
-- "<sc> N/", with N's own workers first (\31 sorts before any path character).
function L.park_member(wk, w) return string.sub(wk, 1, 11) .. w.li .. '/' .. S .. string.sub(wk, 12) end
function L.park(wk, w) redis.call('ZADD', K_PARKED, 0, L.park_member(wk, w)) end
function L.unpark(wk, w) redis.call('ZREM', K_PARKED, L.park_member(wk, w)) end
function L.is_parked(wk, w) return redis.call('ZSCORE', K_PARKED, L.park_member(wk, w)) ~= false end
function L.parked_wk(member)
  local sep = string.find(member, S, 12, true)
  return string.sub(member, 1, 11) .. string.sub(member, sep + 1)
end

-- The lowest common ancestor of the invocations of a task's operations.
function L.lca(t)
  local lca = nil
  for _, opid in ipairs(t.ops) do
    local o = L.op_get(opid)
    if o then
      if lca == nil then
        lca = o.path
      else
        while lca ~= '' and o.path ~= lca and string.sub(o.path, 1, #lca + 1) ~= lca .. '/' do
          lca = L.parent(lca)
        end
      end
    end
  end
  return lca or ''
end

function L.sc_of(wk) return string.sub(wk, 1, 10) end
function L.json_of(wk) return string.sub(wk, 12) end

-- Record frontend fid as watching operation o (keeps the 4 most recent).
function L.watch(o, fid)
  if fid ~= '' and not string.find(' ' .. o.fids .. ' ', ' ' .. fid .. ' ', 1, true) then
    local l = L.words(o.fids)
    l[#l + 1] = fid
    while #l > 4 do table.remove(l, 1) end
    o.fids = table.concat(l, ' ')
  end
end

function L.op_name(opid) return CFG.domain .. '.' .. opid end

-- Watchers of the task's operations learn its new state from the hint itself, so they
-- need not read it back: "o <name>\31<now_us>\31<stage>\31<worker stages>\31<worker key>
-- \31<result>" (result only once done: "R"..ExecuteResponse or "E<code>\31<message>").
function L.notify_task(t, stages, result)
  local state = S .. L.int(NOW_US) .. S .. t.st .. S .. (stages or '') .. S .. t.w .. S .. (result or '')
  for _, opid in ipairs(t.ops) do
    local o = L.op_get(opid)
    if o then
      for _, fid in ipairs(L.ids(o.fids)) do L.publish(fid, 'o ' .. L.op_name(opid) .. state) end
    end
  end
end

function L.qmember(sc, o, opid) return sc .. ' ' .. o.path .. S .. o.qm .. ' ' .. opid end

-- Invocation nodes. inv field "<sc> <path>" = "x l p k": executing count, last started ms,
-- first queued priority (10-digit encoding, '' = nothing queued), member in L.pick ('' = none).
function L.parent(path) return string.match(path, '^(.*)/[^/]*$') end

function L.node_get(sc, path)
  local v = redis.call('HGET', K_INV, sc .. ' ' .. path)
  if not v then return {x = 0, l = stamp(), p = '', k = ''} end
  -- The pick member (last field) itself contains \31: it is the rest of the record.
  local x, l, p, k = string.match(v, '^([^\31]*)\31([^\31]*)\31([^\31]*)\31(.*)$')
  return {x = tonumber(x), l = tonumber(l), p = p, k = k}
end

function L.node_put(sc, path, n)
  local f = sc .. ' ' .. path
  if n.x <= 0 and n.p == '' and n.k == '' then
    redis.call('HDEL', K_INV, f)
  else
    redis.call('HSET', K_INV, f, table.concat({L.int(n.x), L.int(n.l), n.p, n.k}, S))
  end
end

local LOG2 = 0.69314718055994530942  -- math.log(2); see fields()
function L.score(x, p)
  local prio = tonumber(p) - 2147483648
  return string.format('%015.6f', math.log(x + 1) / LOG2 + prio / 100 + 30000000)
end

-- Walk from a node up to the root: add delta executing workers to each node, recompute
-- its first queued priority and its member in its parent's pick set. With delta == 0 the
-- walk stops at the first node that did not change.
-- same_p: the start node's own queued operations and children are as they were at the
-- last walk through it (only its executing count changes: a task that stops executing),
-- so its first queued priority n.p is still right and need not be read again.
function L.update(sc, path, delta, same_p)
  local child, child_p = nil, nil
  -- The root keeps no record: nothing ranks it, and L.pick() reads its children directly.
  while path ~= '' do
    local n = L.node_get(sc, path)
    if delta ~= 0 then
      n.x = n.x + delta
      if delta > 0 then n.l = stamp() end
    end
    local pre = sc .. ' ' .. path .. S
    local p = ''
    if same_p then
      p = n.p
      same_p = false
    else
      local head = redis.call('ZRANGEBYLEX', K_QUEUED, '[' .. pre, '[' .. pre .. HI, 'LIMIT', 0, 1)
      if head[1] then
        p = string.sub(head[1], #pre + 1, #pre + 10)
      else
        local best = redis.call('ZRANGEBYLEX', K_PICK, '[' .. pre, '[' .. pre .. HI, 'LIMIT', 0, 1)
        if best[1] then
          local c = string.sub(best[1], #pre + 31)
          if c == child then p = child_p else p = L.node_get(sc, c).p end
        end
      end
    end
    local k = ''
    if p ~= '' then
      k = sc .. ' ' .. L.parent(path) .. S .. L.score(n.x, p) .. L.pad(n.l, 15) .. path
    end
    local changed = (p ~= n.p) or (k ~= n.k)
    if k ~= n.k then
      if n.k ~= '' then redis.call('ZREM', K_PICK, n.k) end
      if k ~= '' then redis.call('ZADD', K_PICK, 0, k) end
    end
    n.p = p
    n.k = k
    if changed or delta ~= 0 then L.node_put(sc, path, n) end
    if delta == 0 and not changed then return end
    child, child_p = path, p
    path = L.parent(path)
  end
end

function L.refresh(sc, path) L.update(sc, path, 0) end
-- A task leaving Executing (delta < 0) is not queued: its nodes' queues are unchanged.
function L.add_exec(sc, path, delta) L.update(sc, path, delta, delta < 0) end

function L.enqueue_ops(t)
  for _, opid in ipairs(t.ops) do
    local o = L.op_get(opid)
    redis.call('ZADD', K_QUEUED, 0, L.qmember(t.sc, o, opid))
    L.refresh(t.sc, o.path)
  end
end

function L.dequeue_ops(t)
  for _, opid in ipairs(t.ops) do
    local o = L.op_get(opid)
    redis.call('ZREM', K_QUEUED, L.qmember(t.sc, o, opid))
    L.refresh(t.sc, o.path)
  end
end

function L.exec_ops(t, delta)
  for _, opid in ipairs(t.ops) do
    local o = L.op_get(opid)
    L.add_exec(t.sc, o.path, delta)
  end
end

-- The next queued operation of a size class: walk from the root to the best leaf. A
-- node's own queued operations come before its children's; only with no invocation key
-- extractors (a flat queue) do operations sit at the root itself.
-- With worker w and worker invocation stickiness limits (meta 'stk', ms per level; a
-- predeclared queue's worker_invocation_stickiness_limits), Buildbarn's R34: at each
-- level the child on w's last invocation wins a tie in score while its stickiness has
-- not run out. Returns the operation id and how many levels kept stickiness.
-- The platform queue's stickiness limits (meta stk), read at most once per call.
function L.stk()
  if STK == nil then STK = redis.call('HGET', K_META, 'stk') end
  return STK
end

function L.pick(sc, w)
  local path = ''
  local sticky = w and w.li ~= '' and L.stk()
  local limits, starts, retained = {}, {}, 0
  if sticky then
    limits = L.words(sticky)
    starts = L.words(w.ss)
  end
  while true do
    local pre = sc .. ' ' .. path .. S
    local head = redis.call('ZRANGEBYLEX', K_QUEUED, '[' .. pre, '[' .. pre .. HI, 'LIMIT', 0, 1)
    if head[1] then return string.sub(head[1], #pre + 28), retained end
    local best = redis.call('ZRANGEBYLEX', K_PICK, '[' .. pre, '[' .. pre .. HI, 'LIMIT', 0, 1)
    if not best[1] then return nil, retained end
    local child = string.sub(best[1], #pre + 31)
    local level = retained + 1
    if sticky and limits[level] then
      local rest = string.sub(w.li, #path + 2)
      local sticky_child = rest ~= '' and path .. '/' .. (string.match(rest, '^[^/]*'))
      if sticky_child and sticky_child ~= child and
         tonumber(starts[level] or '0') + tonumber(limits[level]) > NOW then
        local k = L.node_get(sc, sticky_child).k
        if k ~= '' and string.sub(k, #pre + 1, #pre + 15) == string.sub(best[1], #pre + 1, #pre + 15) then
          child = sticky_child
        end
      end
      if sticky_child == child then retained = level else sticky = nil end
    end
    path = child
  end
end

-- Hand task tid (queued) to worker wk. quiet: its watchers learn the new stage from
-- this call's own reply (a new task offered by enqueue_operation), so no hint is sent.
function L.assign(tid, t, wk, w, quiet, retained)
  -- Leave the queue and count as executing in one walk per operation.
  for _, opid in ipairs(t.ops) do
    redis.call('ZREM', K_QUEUED, L.qmember(t.sc, L.op_get(opid), opid))
  end
  L.exec_ops(t, 1)
  t.st = 'x'
  t.ep = t.ep + 1
  t.n = t.n + 1
  t.r = 0
  t.w = wk
  local stages = 's' .. L.int(NOW) .. ' '
  L.task_put(tid, t, '|s', stages)
  w.t = tid
  w.ep = t.ep
  -- Executing: no last invocation (R35). Stickiness restarts now at every level below
  -- the ones the pick retained (R34); kept only when the queue has stickiness limits.
  w.li = ''
  local stk = L.stk()
  if stk then
    local starts = L.words(w.ss)
    for i = 1, #L.words(stk) do
      if i > (retained or 0) or not starts[i] then starts[i] = L.int(NOW) end
    end
    w.ss = table.concat(starts, ' ')
  end
  L.worker_put(wk, w)
  if not quiet then L.notify_task(t, stages) end
end

-- Worker stages of the current assignment, "<stage><ms> ..." in field <tid>|s (stage s =
-- assigned, f r u = fetching inputs, running, uploading outputs as the worker reports
-- them). Streams show them as partial_execution_metadata; a new stage hints watchers.
function L.worker_stage(tid, t, stage)
  local cur = redis.call('HGET', K_TASKS, tid .. '|s') or ''
  if string.find(cur, stage, 1, true) then return end
  local stages = cur .. stage .. L.int(NOW) .. ' '
  redis.call('HSET', K_TASKS, tid .. '|s', stages)
  L.notify_task(t, stages)
end

-- The worker stages of an executing task ('' otherwise).
function L.stages_of(tid, t)
  if t.st ~= 'x' then return '' end
  return redis.call('HGET', K_TASKS, tid .. '|s') or ''
end

-- executing: the task's Executing bytes (field <tid>|a) when the caller has read them.
function L.exec_reply(tid, t, next_ms, executing)
  executing = executing or redis.call('HGET', K_TASKS, tid .. '|a') or ''
  return {'x', tid, L.int(t.ep), t.qt, L.int(next_ms), executing}
end

-- The worker's current task if the assignment is still its own (epoch fence).
function L.current(wk, w)
  if w.t == '' then return nil, nil end
  local t = L.task_get(w.t)
  if t and t.st == 'x' and t.w == wk and t.ep == w.ep then return w.t, t end
  return nil, nil
end

-- Complete a task with result ("R"..ExecuteResponse bytes or "E<code>\31<message>").
function L.complete(tid, t, result)
  if t.st == 'x' then L.exec_ops(t, -1) elseif t.st == 'q' then L.dequeue_ops(t) end
  t.st = 'd'
  L.task_put(tid, t, '|r', result)
  redis.call('HDEL', K_TASKS, tid .. '|a', tid .. '|A', tid .. '|s')
  -- A task that is not done yet owns its dedup entry.
  if t.dk ~= '' then redis.call('HDEL', K_INFLIGHT, t.dk) end
  L.notify_task(t, '', result)
end

function L.delete_task(tid, t)
  if t.dk ~= '' and redis.call('HGET', K_INFLIGHT, t.dk) == tid then redis.call('HDEL', K_INFLIGHT, t.dk) end
  redis.call('HDEL', K_TASKS, tid, tid .. '|a', tid .. '|A', tid .. '|r', tid .. '|s')
end

-- Offer a queued task to a parked idle worker of its size class (direct assignment).
-- The worker leaves the parked state here (what unpark_worker would do), and the hint to
-- the frontend holding its Synchronize carries the whole reply, so that frontend answers
-- without another round trip: "w <domain> <wk>\31<now_us>\31<tid>\31<epoch>\31<queued_ms>
-- \31<next_ms>\31<Executing bytes>".
function L.offer(tid, t, quiet)
  local sc = t.sc
  local function first(node)
    local lo = sc .. ' ' .. node .. '/'
    return redis.call('ZRANGEBYLEX', K_PARKED, '[' .. lo, '[' .. lo .. HI, 'LIMIT', 0, 1)[1]
  end
  -- Buildbarn's R36: walking up from each of the task's invocations, breadth first, the
  -- first node with an idle synchronizing worker on itself or below it gets the task. The
  -- root is reached last, so any parked worker is used; it is asked first, so a size
  -- class with none costs one command.
  local any = first('')
  if not any then return false end
  local member = nil
  local level = {}
  local seen = {}
  for _, opid in ipairs(t.ops) do
    local o = L.op_get(opid)
    if o and o.path ~= '' and not seen[o.path] then seen[o.path] = true; level[#level + 1] = o.path end
  end
  while #level > 0 and not member do
    local up, seen_up = {}, {}
    for _, node in ipairs(level) do
      member = first(node)
      if member then break end
      local p = L.parent(node)
      if p ~= '' and not seen_up[p] then seen_up[p] = true; up[#up + 1] = p end
    end
    level = up
  end
  member = member or any
  redis.call('ZREM', K_PARKED, member)
  local wk = L.parked_wk(member)
  local w = L.worker_get(wk)
  if not w then return false end
  local holder = w.h
  w.h = ''
  redis.call('ZADD', K_LEASES, NOW + CFG.worker_timeout, wk)
  L.assign(tid, t, wk, w, quiet)
  if holder ~= '' then
    local r = L.exec_reply(tid, t, NOW + CFG.busy)
    L.publish(holder, 'w ' .. CFG.domain .. ' ' .. wk .. S .. L.int(NOW_US) .. S ..
      table.concat({r[2], r[3], r[4], r[5], r[6]}, S))
  end
  return true
end

function L.requeue(tid, t)
  if t.st == 'x' then L.exec_ops(t, -1) end
  redis.call('HDEL', K_TASKS, tid .. '|s')
  t.st = 'q'
  t.w = ''
  L.task_put(tid, t)
  if not L.offer(tid, t) then
    L.enqueue_ops(t)
    L.notify_task(t)
  end
end

-- Tasks lost by their workers in this call, for the caller's metrics: "r<sc>" requeued,
-- "f<sc>" failed (attempt budget spent), "q<sc>" failed while queued (queue removed).
-- (LOST, reset by begin())

-- A worker lost its task (lease expired, or it came back without it): requeue it with
-- its original queued time until the attempt budget is spent, then fail it UNAVAILABLE
-- naming the worker and the action.
function L.lose(tid, t, wk)
  if t.n < CFG.max_attempts then
    LOST[#LOST + 1] = 'r' .. t.sc
    L.requeue(tid, t)
  else
    LOST[#LOST + 1] = 'f' .. t.sc
    L.complete(tid, t, 'E14' .. S .. 'Worker ' .. L.json_of(wk) ..
      ' disappeared while task was executing (attempt ' .. L.int(t.n) .. ' of ' ..
      L.int(CFG.max_attempts) .. ', action ' .. t.dg .. ')')
  end
end

-- Drains: field "<sc> <pattern-json>" = "<created_ms>\31<tokens>"; a token is "\30<json pair>\30".
function L.matches(tokens, pairs)
  for tok in string.gmatch(tokens, '[^\30]+') do
    if not string.find(pairs, '\30' .. tok .. '\30', 1, true) then return false end
  end
  return true
end

function L.drained(sc, w)
  if w.term == '1' then return true end
  if redis.call('HLEN', K_DRAINS) == 0 then return false end
  local all = redis.call('HGETALL', K_DRAINS)
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 11) == sc .. ' ' then
      local f = L.split(all[i + 1], S)
      if L.matches(f[2] or '', w.pairs) then return true end
    end
  end
  return false
end

function L.scs()
  return L.words(redis.call('HGET', K_META, 'scs') or '')
end

function L.worker_count(sc)
  return tonumber(redis.call('HGET', K_META, 'w' .. sc) or '0')
end

function L.remove_worker(wk, w)
  redis.call('ZREM', K_LEASES, wk)
  L.unpark(wk, w)
  redis.call('HDEL', K_WORKERS, wk)
  local sc = L.sc_of(wk)
  local left = redis.call('HINCRBY', K_META, 'w' .. sc, -1)
  if left <= 0 then
    redis.call('HSET', K_META, 'w' .. sc, 0)
    redis.call('HSET', K_META, 'z' .. sc, L.int(NOW + CFG.pq_timeout))
  end
end

-- Detach an operation from its task; cancel the task when it was the last one.
function L.detach(opid)
  local o = L.op_get(opid)
  redis.call('ZREM', K_OPGC, opid)
  redis.call('ZREM', K_OPNAMES, opid)
  if not o then return end
  redis.call('HDEL', K_OPS, opid)
  OPS[opid] = nil
  local t = L.task_get(o.tid)
  if not t then return end
  local rest = {}
  for _, id in ipairs(t.ops) do if id ~= opid then rest[#rest + 1] = id end end
  if t.st == 'q' then
    redis.call('ZREM', K_QUEUED, L.qmember(t.sc, o, opid))
    L.refresh(t.sc, o.path)
  elseif t.st == 'x' then
    L.add_exec(t.sc, o.path, -1)
  end
  t.ops = rest
  if #rest == 0 then L.delete_task(o.tid, t) else L.task_put(o.tid, t) end
end
