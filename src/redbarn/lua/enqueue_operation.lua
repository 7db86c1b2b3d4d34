-- enqueue_operation.lua: create (or join, by in-flight dedup) an operation; hand it to a
-- parked idle worker of its size class, else queue it under its invocation.
-- KEYS[1..13] the domain's keys in the fixed layout of redbarn.queue.keys.DOMAIN_KEYS
-- KEYS[1] meta  KEYS[2] workers  KEYS[3] leases  KEYS[4] parked  KEYS[5] tasks
-- KEYS[6] ops  KEYS[7] queued  KEYS[8] pick  KEYS[9] inv  KEYS[10] inflight
-- KEYS[11] drains  KEYS[12] opgc  KEYS[13] opnames
-- ARGV[1] config  ARGV[2] new operation id  ARGV[3] dedup key ('' = do_not_cache)
-- ARGV[4] invocation path  ARGV[5] priority (10-digit, +2^31)  ARGV[6] Executing bytes
-- ARGV[7] digest "hash-size"  ARGV[8] digest function number
-- ARGV[9] the request's RequestMetadata.target_id (kept on the operation for OperationState)
-- ARGV[10] initial size class (10-digit) chosen by the caller's size class analyzer; '' =
--   the smallest size class that has workers, else the smallest one. A class the platform
--   queue does not have is taken as the smallest one it has that is at least as large.
-- ARGV[11] the Executing bytes for the largest size class ('' = ARGV[6]'s): the analyzer
--   gave a smaller class a shorter timeout, and a failure there reruns with the action's
--   own (stored as <tid>|A until the fallback swaps it in)
-- ARGV[12] TTL in ms of blobs that must exist first ('' = none: the caller checked them)
-- ARGV[13..] per such blob, how many of KEYS[14..] are its keys (the Redis CAS gives one: its
--   CAS key, a STRING or a HASH of chunks that LRU evicts whole).
--   Only a caller whose CAS lives in this same non-cluster Redis passes them; each is
--   touched (TTL refreshed) and any missing one stops the enqueue.
-- Returns: {'op', opid, stage('q'|'x'), queued_ms, sc, prio+seq, worker, now_ms, gc_deadline_ms, now_us,
--   worker_stages, dedup}  dedup: '' a new task, 's' joined the same invocation's
--   operation, 'o' a new operation of another invocation's task (metrics)
--   | {'nodomain'} | {'full'} | {'missing', i...} (1-based indices of the missing blobs)
local opid, dk, path, prio, target = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[9]
local fid = CFG.fid  -- the caller's frontend: it watches the operation

if ARGV[12] ~= '' then
  local missing, k = {'missing'}, N_DOMAIN_KEYS + 1
  for b = 13, #ARGV do
    local present = true
    for i = k, k + tonumber(ARGV[b]) - 1 do
      if redis.call('PEXPIRE', KEYS[i], ARGV[12]) == 0 then present = false end
    end
    if not present then missing[#missing + 1] = L.int(b - 12) end
    k = k + tonumber(ARGV[b])
  end
  if #missing > 1 then return missing end
end

if dk ~= '' then
  local tid = redis.call('HGET', K_INFLIGHT, dk)
  local t = tid and L.task_get(tid)
  if t and t.st ~= 'd' then
    for _, id in ipairs(t.ops) do
      local o = L.op_get(id)
      if o and o.path == path then
        L.watch(o, fid)
        L.op_put(id, o)
        redis.call('ZADD', K_OPGC, NOW + CFG.retention, id)
        return {'op', id, t.st, t.qt, t.sc, o.qm, t.w, L.int(NOW), L.int(NOW + CFG.retention), L.int(NOW_US),
                L.stages_of(tid, t), 's'}
      end
    end
    local seq = stamp()
    local o = {tid = tid, qm = prio .. L.pad(seq, 16), path = path, fids = '', tg = target}
    L.watch(o, fid)
    L.op_put(opid, o)
    redis.call('ZADD', K_OPGC, NOW + CFG.retention, opid)
    redis.call('ZADD', K_OPNAMES, 0, opid)
    t.ops[#t.ops + 1] = opid
    L.task_put(tid, t)
    if t.st == 'q' then
      redis.call('ZADD', K_QUEUED, 0, L.qmember(t.sc, o, opid))
      L.refresh(t.sc, path)
    else
      L.add_exec(t.sc, path, 1)
    end
    return {'op', opid, t.st, t.qt, t.sc, o.qm, t.w, L.int(NOW), L.int(NOW + CFG.retention), L.int(NOW_US),
            L.stages_of(tid, t), 'o'}
  end
end

-- New work goes to the analyzer's size class, else to the smallest size class that has
-- workers, else to the smallest one.
local classes = L.scs()
if #classes == 0 then return {'nodomain'} end
local sc = classes[1]
if ARGV[10] ~= '' then
  sc = classes[#classes]
  for _, c in ipairs(classes) do
    if c >= ARGV[10] then sc = c; break end
  end
else
  for _, c in ipairs(classes) do
    if L.worker_count(c) > 0 then sc = c; break end
  end
end
if redis.call('ZCARD', K_QUEUED) >= CFG.max_queued then return {'full'} end

-- The task id is this call's stamp: the per-domain sequence is unique, and it is never
-- below the old task counter (meta tseq, which every enqueue drew alongside it), so ids
-- of tasks written before cannot repeat.
local seq = stamp()
local tid = 't' .. L.int(seq)
local t = {st = 'q', sc = sc, ep = 0, n = 0, r = 0, qt = L.int(NOW), dg = ARGV[7], fn = ARGV[8],
           dk = dk, w = '', fb = '0', ops = {opid}}
local o = {tid = tid, qm = prio .. L.pad(seq, 16), path = path, fids = '', tg = target}
L.watch(o, fid)
L.op_put(opid, o)
redis.call('ZADD', K_OPGC, NOW + CFG.retention, opid)
redis.call('ZADD', K_OPNAMES, 0, opid)
if ARGV[11] ~= '' and sc ~= classes[#classes] then
  L.task_put(tid, t, '|a', ARGV[6], '|A', ARGV[11])
else
  L.task_put(tid, t, '|a', ARGV[11] ~= '' and ARGV[11] or ARGV[6])
end
if dk ~= '' then redis.call('HSET', K_INFLIGHT, dk, tid) end
-- quiet: the caller (the operation's only watcher so far) learns the stage from the reply.
if L.offer(tid, t, true) then
  return {'op', opid, 'x', t.qt, sc, o.qm, t.w, L.int(NOW), L.int(NOW + CFG.retention), L.int(NOW_US),
          L.stages_of(tid, t), ''}
end
redis.call('ZADD', K_QUEUED, 0, L.qmember(sc, o, opid))
L.refresh(sc, path)
return {'op', opid, 'q', t.qt, sc, o.qm, '', L.int(NOW), L.int(NOW + CFG.retention), L.int(NOW_US), '', ''}
