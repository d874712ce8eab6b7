"""The Lua scripts of the Redis store: each is one atomic step on ONE hash slot.

Every script names all the keys it touches in KEYS (Redis Cluster routes on them; the ``#!lua``
shebang makes Redis refuse undeclared or cross-slot keys and refuse a writing script up front when
it is out of memory, so a script either ran entirely or not at all). Times arrive as ``repr(float)``
strings from the injected clock and are stored verbatim, so they round-trip exactly; scripts use
``tonumber`` only to compare. Redis key expiries are bookkeeping, computed relative to the caller's
``now`` (never the Redis clock) so that logic and TTL agree on what time it is.

Task keys (hash tag ``{task_id}``):
  task   hash   rec (orjson), st (TaskState), tn (Taint), exp, ret (retain_until), ag (agent),
                e (ended_at), why (end reason), pend (a "task" revocation event still to publish)
  creds  hash   jti suffix -> flag byte ("0" live, "1" consumed) + u16 target index + packed record
  live   zset   jti suffix -> expires_at in ms, rounded up (unconsumed credentials; pruned of
                expired ones on mint). Integer scores take 6 bytes less than fractional ones.
  tg     list   interned (server, tool) pairs, orjson-encoded; a credential stores the index
  kids   set    ids of sub-tasks
Agent keys (hash tag ``{agent:<id>}``): quota hash (expiry bucket -> live credentials).

Migrating slots (Redis Cluster resharding): while a slot migrates, Redis runs a multi-key command
only where ALL its keys exist (the source, or the destination after ASK) and answers TRYAGAIN when
one is missing, and a script cannot create a key on the source. So every key a task script
declares exists from the task's creation until its expiry: CREATE makes each set key with a
SENTINEL member ("-" in creds, kids and ap; "-" scored +inf in live and apl; "-" at index 0 of
tg) and all of them share the task's TTL. Readers skip the sentinel (no jti, task id, approval
suffix or target is "-"), counts exclude the +inf score, and END empties live without deleting
it. CREATE itself declares only the (new, hence missing) task key and writes the others
undeclared: that runs on the slot's owner, or on the destination after ASK.
"""

from __future__ import annotations

SENTINEL = "-"

# KEYS: task, creds, live, tg, kids
# ARGV: field, packed record (without flag and target index), expires_at, now, per-task limit,
#       target (orjson [server, tool]), expires_at in ms (rounded up), now in ms,
#       the taint the credential was decided at ("" = any)
# -> {"OK", retain_until} | {"NOTFOUND"} | {"ENDED", state} | {"QUOTA", live} | {"DUP"}
#    | {"TARGETS"} | {"TAINT", taint}          (OK also carries the task's 'ac' and 'cr')
MINT = """#!lua
local t = redis.call('HMGET', KEYS[1], 'st', 'exp', 'ret', 'tn', 'ac', 'cr')
if not t[1] then return {'NOTFOUND'} end
if t[1] ~= '1' then return {'ENDED', t[1]} end
local now = tonumber(ARGV[4])
if now >= tonumber(t[2]) then return {'ENDED', '4'} end
if ARGV[9] ~= '' and tonumber(t[4]) > tonumber(ARGV[9]) then return {'TAINT', t[4]} end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[8])
local n = redis.call('ZCOUNT', KEYS[3], '-inf', '(+inf')
if n >= tonumber(ARGV[5]) then return {'QUOTA', n} end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return {'DUP'} end
local idx = redis.call('LPOS', KEYS[4], ARGV[6])
if not idx then
  idx = redis.call('LLEN', KEYS[4])
  if idx > 65535 then return {'TARGETS'} end
  redis.call('RPUSH', KEYS[4], ARGV[6])
end
redis.call('HSET', KEYS[2], ARGV[1], '0' .. struct.pack('<H', idx) .. ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[7], ARGV[1])
local ret = t[3]
if tonumber(ARGV[3]) > tonumber(ret) then
  ret = ARGV[3]
  redis.call('HSET', KEYS[1], 'ret', ret)
end
local ttl = math.max(1000, math.ceil((tonumber(ret) - now) * 1000))
for i = 1, 5 do redis.call('PEXPIRE', KEYS[i], ttl) end
return {'OK', ret, t[5] or '', t[6] or '0'}
"""

# KEYS: task, creds, live, tg          ARGV: field
# -> {1 (OK), agent, packed record, target, delegation chain} | {2 (REPLAYED)} | {3 (REVOKED)}
#    | {4 (UNKNOWN)}    (ConsumeResult values)
CONSUME = """#!lua
local v = redis.call('HGET', KEYS[2], ARGV[1])
if not v then return {4} end
local t = redis.call('HMGET', KEYS[1], 'st', 'ag', 'ac')
if not t[1] then return {4} end
if t[1] ~= '1' then return {3} end
if string.sub(v, 1, 1) == '1' then return {2} end
redis.call('HSET', KEYS[2], ARGV[1], '1' .. string.sub(v, 2))
redis.call('ZREM', KEYS[3], ARGV[1])
local idx = struct.unpack('<H', v, 2)
local target = redis.call('LINDEX', KEYS[4], idx) or ''
return {1, t[2], v, target, t[3] or ''}
"""

# The kill switches (broker.core.blocks): one hash, field F = kind "\n" subject ->
# orjson [blocked, until, reason, by, created_at]; "F:" .. F -> floor; "K:" .. F -> keep_until
# (0: never). KEYS: blocks     ARGV: F, value, floor, keep_until, now
# Floors only rise; a keep_until of 0 wins, else the later one. Forgets records kept past now.
# -> {floor, keep_until} as stored
BLOCK_PUT = """#!lua
local f = ARGV[1]
local o = redis.call('HMGET', KEYS[1], 'F:' .. f, 'K:' .. f)
local floor, keep = ARGV[3], ARGV[4]
if o[1] and tonumber(o[1]) > tonumber(floor) then floor = o[1] end
if keep ~= '0' and o[2] and tonumber(o[2]) > tonumber(keep) then keep = o[2] end
redis.call('HSET', KEYS[1], f, ARGV[2], 'F:' .. f, floor, 'K:' .. f, keep)
local all = redis.call('HGETALL', KEYS[1])
local now = tonumber(ARGV[5])
for i = 1, #all, 2 do
  local name = all[i]
  if string.sub(name, 1, 2) == 'K:' and all[i + 1] ~= '0' and tonumber(all[i + 1]) < now then
    local base = string.sub(name, 3)
    redis.call('HDEL', KEYS[1], base, 'F:' .. base, name)
  end
end
return {floor, keep}
"""

# The per-agent quota is a hash of expiry buckets: field = a bucket's end (whole seconds, a
# multiple of the bucket width), value = how many of the agent's live credentials expire in it.
# Its size depends on the longest TTL, not on the number of credentials. Releases never take a
# bucket below zero (a bucket already dropped as expired stays dropped).
_RELEASE_FN = """
local function release(key, from)
  for i = from, #ARGV do
    local c = tonumber(redis.call('HGET', key, ARGV[i]) or '0')
    if c > 1 then redis.call('HINCRBY', key, ARGV[i], -1)
    elseif c == 1 then redis.call('HDEL', key, ARGV[i]) end
  end
end
"""

# KEYS: agent quota hash
# ARGV: now, per-agent limit, bucket of the new credential, released buckets...
# -> {1, live after} | {0, live}
RESERVE = (
    "#!lua"
    + _RELEASE_FN
    + """
release(KEYS[1], 4)
local now = tonumber(ARGV[1])
local all = redis.call('HGETALL', KEYS[1])
local n = 0
for i = 1, #all, 2 do
  if tonumber(all[i]) <= now then redis.call('HDEL', KEYS[1], all[i])
  else n = n + tonumber(all[i + 1]) end
end
if n >= tonumber(ARGV[2]) then return {0, n} end
redis.call('HINCRBY', KEYS[1], ARGV[3], 1)
local ttl = math.max(1000, math.ceil((tonumber(ARGV[3]) - now) * 1000))
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return {1, n + 1}
"""
)

# KEYS: agent quota hash     ARGV: buckets to release (one per credential)
RELEASE = "#!lua" + _RELEASE_FN + "\nrelease(KEYS[1], 1)\nreturn 1\n"

# A per-agent cap (live tasks, pending approvals): a zset member -> expiry ms on the agent's slot,
# reserved before the record is written on its task's slot and released when it ends (or at its
# expiry: a lost release fails closed). KEYS: zset    ARGV: member, expiry ms, now ms, limit
# -> {1, count} reserved (or already held) | {0, count} full
CAP_RESERVE = """#!lua
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return {1, redis.call('ZCARD', KEYS[1])} end
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[4]) then return {0, n} end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local ttl = math.max(1000, math.ceil(tonumber(ARGV[2]) - tonumber(ARGV[3])))
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return {1, n + 1}
"""

# KEYS: task     ARGV: rec, state, taint, expires_at, retain_until, agent, ended_at, reason, ttl ms,
#                      delegation chain (agents joined by newlines), created_at
# Also makes the task's set keys (creds, live, tg, kids, ap, apl: same prefix as KEYS[1], not
# declared, see the module docstring) with their sentinel and the task's TTL.
# -> 1 created | 0 exists
CREATE = """#!lua
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'rec', ARGV[1], 'st', ARGV[2], 'tn', ARGV[3], 'exp', ARGV[4],
           'ret', ARGV[5], 'ag', ARGV[6], 'ac', ARGV[10], 'cr', ARGV[11])
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'e', ARGV[7], 'why', ARGV[8]) end
redis.call('PEXPIRE', KEYS[1], ARGV[9])
local p = string.sub(KEYS[1], 1, -5)
redis.call('HSET', p .. 'creds', '-', '')
redis.call('ZADD', p .. 'live', '+inf', '-')
redis.call('RPUSH', p .. 'tg', '-')
redis.call('SADD', p .. 'kids', '-')
redis.call('HSET', p .. 'ap', '-', '')
redis.call('ZADD', p .. 'apl', '+inf', '-')
for _, k in ipairs({'creds', 'live', 'tg', 'kids', 'ap', 'apl'}) do
  redis.call('PEXPIRE', p .. k, ARGV[9])
end
return 1
"""

# KEYS: parent task, parent kids      ARGV: child id, child's created_at
# -> {"OK"} | {"NOTFOUND"} | {"ENDED", state}
ADOPT = """#!lua
local t = redis.call('HMGET', KEYS[1], 'st', 'exp')
if not t[1] then return {'NOTFOUND'} end
if t[1] ~= '1' then return {'ENDED', t[1]} end
if tonumber(ARGV[2]) >= tonumber(t[2]) then return {'ENDED', '4'} end
redis.call('SADD', KEYS[2], ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
return {'OK'}
"""

# KEYS: task, live, kids       ARGV: state, now, reason
# -> {-1} unknown
#  | {1, agent, kids, {suffix, expires ms, ...}}   ended now ("pend" set: event to publish); the
#                                                  unconsumed credentials, some maybe expired
#  | {0, agent, kids, {}, pending, ended_at, reason}        had already ended
END = """#!lua
local t = redis.call('HMGET', KEYS[1], 'st', 'ag', 'pend', 'e', 'why')
if not t[1] then return {-1} end
local kids = redis.call('SMEMBERS', KEYS[3])
if t[1] ~= '1' then
  return {0, t[2], kids, {}, t[3] and 1 or 0, t[4] or '0', t[5] or ''}
end
redis.call('HSET', KEYS[1], 'st', ARGV[1], 'e', ARGV[2], 'why', ARGV[3], 'pend', '1')
local live = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(+inf', 'WITHSCORES')
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(+inf')
return {1, t[2], kids, live}
"""

# KEYS: task     ARGV: taint      -> the resulting taint, or -1 if the task is unknown
TAINT = """#!lua
local cur = redis.call('HGET', KEYS[1], 'tn')
if not cur then return -1 end
if tonumber(ARGV[1]) > tonumber(cur) then
  redis.call('HSET', KEYS[1], 'tn', ARGV[1])
  return tonumber(ARGV[1])
end
return tonumber(cur)
"""

# KEYS: task, creds, tg      ARGV: field      -> nil | {packed, target, agent}
GET_CRED = """#!lua flags=no-writes
local v = redis.call('HGET', KEYS[2], ARGV[1])
if not v then return nil end
local idx = struct.unpack('<H', v, 2)
return {v, redis.call('LINDEX', KEYS[3], idx), redis.call('HGET', KEYS[1], 'ag') or ''}
"""

# KEYS: task, creds, tg      -> {flat field/value list, targets, agent}
LIST_CREDS = """#!lua flags=no-writes
return {redis.call('HGETALL', KEYS[2]), redis.call('LRANGE', KEYS[3], 0, -1),
        redis.call('HGET', KEYS[1], 'ag') or ''}
"""

# Index keys live as long as their longest-lived entry (the TTL only ever grows), so a quiet
# broker's indexes go away with its last retained task.
_EXTEND_FN = """
local function extend(key, upto, now)
  local ttl = math.ceil((tonumber(upto) - tonumber(now)) * 1000)
  if ttl > 0 and redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
"""

# An index of task ids: KEYS: by_created zset, by_retain zset
# ARGV: task id, created_at, retain_until, now
# Adds the task (retain only ever grows) and forgets at most 100 entries retained past ``now``.
INDEX_TASK = (
    "#!lua"
    + _EXTEND_FN
    + """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[2], 'GT', ARGV[3], ARGV[1])
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[4], 'LIMIT', 0, 100)
if #old > 0 then
  redis.call('ZREM', KEYS[1], unpack(old))
  redis.call('ZREM', KEYS[2], unpack(old))
end
for i = 1, 2 do extend(KEYS[i], ARGV[3], ARGV[4]) end
return #old
"""
)

# A one-key index (per server: task -> retain; live tasks: task -> expires_at; approvals):
# KEYS: zset     ARGV: member, score (a time), now
INDEX_SERVER = (
    "#!lua"
    + _EXTEND_FN
    + """
redis.call('ZADD', KEYS[1], 'GT', ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
extend(KEYS[1], ARGV[2], ARGV[3])
return 1
"""
)

# The revocation feed: KEYS: stream     ARGV: max events, window ms, field, value, ...
# Appends one event, drops those older than the window (by their ids: Redis's own clock, in ms)
# and lets a quiet stream expire after the window. -> the event's id (the cursor)
FEED_PUBLISH = """#!lua
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 3))
local at = tonumber(string.match(id, '^(%d+)'))
redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%d', at - tonumber(ARGV[2])))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return id
"""

# -- approvals (broker.core.approvals) -------------------------------------------------------------
# Task keys (hash tag {task_id}), beside the others:
#   ap    hash   SFX -> static record (orjson); SFX:s state; SFX:x expires_at; SFX:b binding;
#                SFX:d decision (orjson [decided_by, reason, decided_at]); SFX:u used_at;
#                b:BINDING -> SFX of the latest approval for that call (finds a pending duplicate)
#   apl   zset   pending SFX -> expires_at ms (the per-task cap on pending approvals)
# SFX is the random half of the approval id (its task half is the hash tag).
# A record is read as HMGET ap SFX SFX:s SFX:d SFX:u.

# KEYS: task, ap, apl
# ARGV: sfx, static record, binding, expires_at, now, max pending, expires ms, now ms
# -> {"OK"} | {"EXISTS", sfx, rec, state, decision, used} | {"NOTFOUND"} | {"ENDED", state}
#    | {"QUOTA", pending} | {"DUP"}
APPROVAL_CREATE = """#!lua
local t = redis.call('HMGET', KEYS[1], 'st', 'exp')
if not t[1] then return {'NOTFOUND'} end
if t[1] ~= '1' then return {'ENDED', t[1]} end
local now = tonumber(ARGV[5])
if now >= tonumber(t[2]) then return {'ENDED', '4'} end
local old = redis.call('HGET', KEYS[2], 'b:' .. ARGV[3])
if old then
  local o = redis.call('HMGET', KEYS[2], old, old .. ':s', old .. ':d', old .. ':u', old .. ':x')
  if o[2] == '1' and now < tonumber(o[5]) then return {'EXISTS', old, o[1], o[2], o[3], o[4]} end
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[8])
local n = redis.call('ZCOUNT', KEYS[3], '-inf', '(+inf')
if n >= tonumber(ARGV[6]) then return {'QUOTA', n} end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return {'DUP'} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2], ARGV[1] .. ':s', '1', ARGV[1] .. ':x', ARGV[4],
           ARGV[1] .. ':b', ARGV[3], 'b:' .. ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[7], ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then
  for i = 2, 3 do
    if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
  end
end
return {'OK'}
"""

# KEYS: ap, apl      ARGV: sfx, new state (2 approved, 3 denied), decision, now
# -> {1, rec, state, decision, used} decided now | {0, rec, state, decision, used} unchanged
#  | {0} unknown
APPROVAL_DECIDE = """#!lua
local s = ARGV[1]
local r = redis.call('HMGET', KEYS[1], s, s .. ':s', s .. ':d', s .. ':u', s .. ':x')
if not r[1] then return {0} end
if r[2] ~= '1' or tonumber(ARGV[4]) >= tonumber(r[5]) then return {0, r[1], r[2], r[3], r[4]} end
redis.call('HSET', KEYS[1], s .. ':s', ARGV[2], s .. ':d', ARGV[3])
redis.call('ZREM', KEYS[2], s)
return {1, r[1], ARGV[2], ARGV[3], r[4]}
"""

# KEYS: ap      ARGV: sfx, binding, now
# -> {1, rec, "4", decision, used_at} used now | {0, rec, state, decision, used} unchanged
#  | {0} unknown
APPROVAL_CONSUME = """#!lua
local s = ARGV[1]
local r = redis.call('HMGET', KEYS[1], s, s .. ':s', s .. ':d', s .. ':u', s .. ':x', s .. ':b')
if not r[1] then return {0} end
if r[2] ~= '2' or r[6] ~= ARGV[2] or tonumber(ARGV[3]) >= tonumber(r[5]) then
  return {0, r[1], r[2], r[3], r[4]}
end
redis.call('HSET', KEYS[1], s .. ':s', '4', s .. ':u', ARGV[3])
return {1, r[1], '4', r[3], ARGV[3]}
"""
