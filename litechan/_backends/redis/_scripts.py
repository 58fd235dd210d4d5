"""The Lua scripts of the Redis backend.

Every script touches the keys of ONE hash slot: the lite topics of a parent are grouped into slot
partitions whose keys share a hash tag (``{ns:l:PARENT:P.S}``, see ``_slots``), and a script call
carries the work of one partition; an ordered topic's partition keeps its stream, meta hash,
per-group state, pending deliveries, redelivery queue, dead letters and dedupe records under
``{ns:o:TOPIC:P}``. Work that spans slots (membership of a group) is done with separate commands.
Notes to another process go out from inside the script: lite notes on a channel of the
partition's own slot (SPUBLISH on Redis 7), ordered ones with PUBLISH.

Ordered offsets are stream ids ``0-OFFSET``: reading from an offset is an XRANGE, and the first
retained offset is ``last - XLEN + 1``. An entry another program added with an id that fits the
sequence takes an offset (it is dead-lettered when read); one that does not fit stops writes to
that stream with a ``LITECHAN_FOREIGN_ID`` error instead of corrupting offsets. A lite topic is a
list: an offset is a place in it, counted from the first retained offset.

Ordered owner tokens are ``CHANNEL|MEMBER|GENERATION|NAME``: the channel to notify, the member and
its ownership generation (fencing, G4), and the consumer's name for stats; their notes are
``|``-separated. Lite owner tokens are ``MEMBER|GENERATION|NAME``, and lite notes are msgpack.

Any script's reply can be lost in a cut, after it ran; the client then runs it again. Each one is
therefore idempotent (subscribe, acks, leases, release, recover), at-least-once by contract
(publish, send: a send with a dedupe id finds its own first copy), or recovered by its caller
(fetch: ``ORDERED_RECOVER`` hands out again what a lost fetch took).

Flags (Redis 7, see ``Script``): publish and send are refused by a full server before they
write; everything that only keeps litechan's own bookkeeping is ``allow-oom``, so consumers
drain a full server; the lite fetch is ``no-writes``.
"""

from __future__ import annotations

from typing import Final

from ._client import Script

__all__ = [
    "LITE_COMMIT",
    "LITE_FETCH",
    "LITE_KEEP",
    "LITE_PUBLISH",
    "LITE_SUBSCRIBE",
    "LITE_UNSUBSCRIBE",
    "NAMESPACE",
    "ORDERED_ACK",
    "ORDERED_CLAIM",
    "ORDERED_FETCH",
    "ORDERED_HEARTBEAT",
    "ORDERED_NACK",
    "ORDERED_REJECT",
    "ORDERED_RECOVER",
    "ORDERED_RELEASE",
    "ORDERED_RENEW",
    "ORDERED_SEND",
    "SCRIPTS",
    "SPEC",
]

# Notifies every owner recorded in meta (fields o:GROUP) with NOTE .. '|' .. member|gen .. rest.
_NOTIFY: Final = """
local function notify(meta, kind, rest)
  local fields = redis.call('HGETALL', meta)
  for i = 1, #fields, 2 do
    local f = fields[i]
    if string.sub(f, 1, 2) == 'o:' then
      local ch, member, gen = string.match(fields[i + 1], '^([^|]*)|([^|]*)|([^|]*)|')
      if ch then
        redis.call('PUBLISH', ch, kind .. '|' .. member .. '|' .. gen .. '|' .. rest)
      end
    end
  end
end
"""

# Declares a topic's settings: KEYS[1] the namespace's hash of settings, ARGV[1] the topic's field,
# ARGV[2] its settings, stored if none are. Returns the stored settings. Allowed when the server
# is full: it writes at most once per topic.
SPEC: Final = Script(
    "spec",
    """
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
return redis.call('HGET', KEYS[1], ARGV[1])
""",
    flags="allow-oom",
)

# -- lite topics (layout 2) -----------------------------------------------------------------------
#
# A parent's lite topics are spread over slot partitions (``_slots``); every key of a partition
# shares its hash tag. A lite topic is a list of messages ``{TAG}:d:TOPIC`` (each element the
# msgpack ``[payload, headers, published_at]`` the client encoded; its offset is its place) and a
# hash ``{TAG}:m:TOPIC``: ``e`` epoch (16 characters), ``f`` first retained offset (the last is
# ``f + LLEN - 1``), ``x`` when the TTL was last refreshed; per group G: ``o:G`` owner token
# (``MEMBER|GENERATION|NAME``), ``p:G`` the owner's note address, ``c:G`` committed offset,
# ``a:G`` acks above it; and ``p``, every owner's note address joined, which is all a publish
# reads of the owners. Every value stays short, so the hash keeps Redis' compact encoding.
# While a topic is owned, its owner commits into a key of its own, ``{TAG}:c:TOPIC:MEMBER:GEN``
# (value ``COMMITTED`` or ``COMMITTED|ACKED,ACKED...``) with the topic's TTL: an ack is one SET
# of an existing key, and whoever takes the topic over folds that key into c:G and a:G and
# deletes it, which fences the old owner (G4).
#
# A note address is the msgpack start of the owner's records, ``['D', member, generation``
# (encoded by the client at subscribe time); a member id starts with its broker's id (12
# characters), and the broker's note channel in the partition is ``{TAG}:n:BROKER``. Notes go
# out with SPUBLISH on Redis 7 (sharded: a script may publish only in its own slot, which a
# cluster needs) and PUBLISH on 6.2 (``@PUBLISH@``). A note is a msgpack array of records:
# ``['D', member, generation, epoch, first offset, [body, ...]]`` (one per topic and call) and
# ``['R', member, generation]`` (the topic was taken over); a member knows which topic each of
# its generations owns.

# Helpers: the msgpack header of an array of n elements; msgpack uint of an offset; where the
# note address starting at `pos` of `p` ends; the note channel of the broker of the address
# starting at `pos` of `p`, in the partition of `key`.
_NOTE_HELPERS: Final = r"""
local function array_header(n)
  if n < 16 then return string.char(144 + n) end
  if n < 65536 then return '\220' .. struct.pack('>I2', n) end
  return '\221' .. struct.pack('>I4', n)
end
local function uint(n)
  if n < 4294967296 then return '\206' .. struct.pack('>I4', n) end
  return '\207' .. struct.pack('>I4I4', math.floor(n / 4294967296), n % 4294967296)
end
local function address_end(p, pos)
  local last = pos + string.byte(p, pos + 3) - 157
  local b = string.byte(p, last + 1)
  if b < 128 then return last + 1 end
  if b == 204 then return last + 2 end
  if b == 205 then return last + 3 end
  if b == 206 then return last + 5 end
  return last + 9
end
local function channel(key, p, pos)
  return string.match(key, '^(.-}):') .. ':n:' .. string.sub(p, pos + 4, pos + 15)
end
"""

# An owner's commit key (``{TAG}:c:TOPIC:MEMBER:GENERATION``, from the topic's meta key and
# the owner's token); a commit key's value folded into the group's fields c:G and a:G, and the
# key deleted (its owner can no longer commit: G4).
_COMMIT_KEYS: Final = r"""
local function commit_key(meta, token)
  local tag, topic = string.match(meta, '^(.-}):m:(.*)$')
  local member, gen = string.match(token, '^([^|]*)|([^|]*)|')
  return tag .. ':c:' .. topic .. ':' .. member .. ':' .. gen
end
local function fold(meta, g, key)
  local value = redis.call('GET', key)
  if value then
    local c, a = string.match(value, '^([^|]*)|?(.*)$')
    redis.call('HSET', meta, 'c:' .. g, c)
    if a ~= '' then
      redis.call('HSET', meta, 'a:' .. g, a)
    else
      redis.call('HDEL', meta, 'a:' .. g)
    end
    redis.call('DEL', key)
  end
end
"""

# `p` rebuilt from the p:G fields.
_OWNERS_CHANGED: Final = r"""
local function owners_changed(meta)
  local fields = redis.call('HGETALL', meta)
  local parts = {}
  for i = 1, #fields, 2 do
    if string.sub(fields[i], 1, 2) == 'p:' then parts[#parts + 1] = fields[i + 1] end
  end
  if #parts > 0 then
    redis.call('HSET', meta, 'p', table.concat(parts))
  else
    redis.call('HDEL', meta, 'p')
  end
end
"""

# KEYS: meta and list of each topic of the call (2 per topic, one partition).
# ARGV: ttl_ms, max_len, epoch seed (12 characters), then per topic: count, and `count` message
# bodies. Appends every message, trims to max_len, and sends each owner's broker
# one note for the whole call (one record per topic). The keys' TTL is set to 1.1 x ttl and
# refreshed only once ttl/10 has passed since it last was (field x): a topic is deleted between
# ttl and 1.1 x ttl after its last publish, and a burst of publishes costs no PEXPIRE. Elements
# another program pushed take offsets (they are skipped when read). Returns the offsets, in
# argument order.
LITE_PUBLISH: Final = Script(
    "lite_publish",
    _NOTE_HELPERS
    + _COMMIT_KEYS
    + r"""
local ttl, maxlen, seed = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local slack = math.floor(ttl / 10)
local out, notes, sizes, counts, channels = {}, {}, {}, {}, {}
local a = 4
for t = 1, #KEYS / 2 do
  local meta, data = KEYS[2 * t - 1], KEYS[2 * t]
  local c = tonumber(ARGV[a])
  local state = redis.call('HMGET', meta, 'e', 'f', 'x', 'p')
  local e, f, x, p = state[1], state[2], state[3], state[4]
  local fresh = not e
  if fresh then
    e, f = seed .. string.format('%04x', t % 65536), 1
  else
    f = tonumber(f)
  end
  local len
  for i = 0, c - 1, 1000 do
    len = redis.call('RPUSH', data, unpack(ARGV, a + 1 + i, a + math.min(i + 1000, c)))
  end
  local n = f + len - 1
  local first = n - c + 1
  if len > maxlen then
    redis.call('LTRIM', data, len - maxlen, -1)
    f = n - maxlen + 1
    redis.call('HSET', meta, 'f', f)
  end
  if fresh or now - tonumber(x) > slack then
    redis.call('HSET', meta, 'e', e, 'f', f, 'x', now)
    redis.call('PEXPIRE', meta, ttl + slack)
    redis.call('PEXPIRE', data, ttl + slack)
    if p then  -- owners' commit keys live as long as the topic
      local fields = redis.call('HGETALL', meta)
      for i = 1, #fields, 2 do
        if string.sub(fields[i], 1, 2) == 'o:' then
          redis.call('PEXPIRE', commit_key(meta, fields[i + 1]), ttl + slack)
        end
      end
    end
  end
  for i = 0, c - 1 do out[#out + 1] = first + i end
  if p then
    local tail
    if c < 16 and first < 4294967296 then
      tail = '\176' .. e .. struct.pack('>BI4B', 206, first, 144 + c)
    else
      tail = '\176' .. e .. uint(first) .. array_header(c)
    end
    local pos = 1
    while pos <= #p do
      local stop = address_end(p, pos)
      local broker = string.sub(p, pos + 4, pos + 15)
      local parts = notes[broker]
      if not parts then
        parts = {''}  -- [1]: the array header, once the count is known
        notes[broker], sizes[broker], counts[broker] = parts, 1, 0
        channels[broker] = channel(KEYS[1], p, pos)
      end
      local k = sizes[broker]
      if pos == 1 and stop == #p then
        parts[k + 1] = p  -- one owner, the common case: no copy
      else
        parts[k + 1] = string.sub(p, pos, stop)
      end
      parts[k + 2] = tail
      for i = 1, c do parts[k + 2 + i] = ARGV[a + i] end
      sizes[broker], counts[broker] = k + 2 + c, counts[broker] + 1
      pos = stop + 1
    end
  end
  a = a + 1 + c
end
for broker, parts in pairs(notes) do
  parts[1] = array_header(counts[broker])
  redis.call('@PUBLISH@', channels[broker], table.concat(parts))
end
return out
""",
    flags="",
    stores_messages=True,
)

# KEYS: meta, list, the subscriber's commit key. ARGV: group, token, start ('committed'|
# 'earliest'|'latest'|offset), ttl_ms, note address. Takes ownership for
# the group: the previous owner's commits are folded into the group's and its commit key
# deleted (so it can commit nothing more, G4), and it gets a note. The new owner's commit key
# starts at the group's position and lives as long as the topic. Returns {epoch or '',
# next_offset, last_offset, pttl_ms, offsets acked above next_offset - 1 (csv)}. The hash is
# read once and written once or twice (every redis.call costs about 1 µs).
LITE_SUBSCRIBE: Final = Script(
    "lite_subscribe",
    _NOTE_HELPERS
    + _COMMIT_KEYS
    + r"""
local meta, data, mine = KEYS[1], KEYS[2], KEYS[3]
local g, token, start = ARGV[1], ARGV[2], ARGV[3]
local og, pg, cg, ag = 'o:' .. g, 'p:' .. g, 'c:' .. g, 'a:' .. g
-- One pass over the hash (a Lua table of it costs more than the HGETALL): this group's
-- fields, and the other groups' note addresses, to which ours is added (field p).
local fields = redis.call('HGETALL', meta)
local prev, address, c, a, e, f
local parts = {}
for i = 1, #fields, 2 do
  local k, v = fields[i], fields[i + 1]
  if k == og then prev = v
  elseif k == pg then address = v
  elseif k == cg then c = v
  elseif k == ag then a = v
  elseif k == 'e' then e = v
  elseif k == 'f' then f = v
  elseif string.sub(k, 1, 2) == 'p:' then parts[#parts + 1] = v
  end
end
parts[#parts + 1] = ARGV[5]
local stored_c, stored_a = c, a
if prev and prev ~= token then
  local key = commit_key(meta, prev)
  local value = redis.call('GET', key)
  if value then  -- the previous owner's commits become the group's
    c, a = string.match(value, '^([^|]*)|?(.*)$')
    redis.call('DEL', key)
  end
  if address then
    local record = '\147\161R' .. string.sub(address, 4)
    redis.call('@PUBLISH@', channel(meta, address, 1), '\145' .. record)
  end
end
local n, nxt, acked, pttl = 0, nil, '', nil
if not e then
  -- No such lite topic yet: the subscription waits for the first publish. It expires like a
  -- topic unless its subscriber refreshes it (a crashed subscriber leaves nothing behind).
  nxt = tonumber(start) or 1
else
  local first = tonumber(f)
  n = first + redis.call('LLEN', data) - 1
  if start == 'committed' then
    if not c then c = '' end
    if c == '' then nxt = first else nxt = tonumber(c) + 1 end
    acked = a or ''
  else
    if start == 'earliest' then
      nxt = first
    elseif start == 'latest' then
      nxt = n + 1
    else
      nxt = tonumber(start)
    end
    c, a = tostring(nxt - 1), ''
  end
end
local put = {og, token, pg, ARGV[5], 'p', table.concat(parts)}
if c and c ~= stored_c then put[#put + 1] = cg; put[#put + 1] = c end
if a and a ~= '' and a ~= stored_a then put[#put + 1] = ag; put[#put + 1] = a end
redis.call('HSET', meta, unpack(put))
if a == '' and stored_a then redis.call('HDEL', meta, ag) end
if not e then
  redis.call('PEXPIRE', meta, ARGV[4])
  redis.call('SET', mine, nxt - 1, 'PX', ARGV[4])
  return {'', nxt, 0, tonumber(ARGV[4]), ''}
end
pttl = redis.call('PTTL', meta)
local value = tostring(nxt - 1)
if acked ~= '' then value = value .. '|' .. acked end
if pttl > 0 then
  redis.call('SET', mine, value, 'PX', pttl)
else
  redis.call('SET', mine, value)
end
return {e, nxt, n, pttl, acked}
""",
    flags="allow-oom",
)

# KEYS: meta, the subscriber's commit key. ARGV: group, token. Gives up ownership if still held
# (its commits folded into the group's).
LITE_UNSUBSCRIBE: Final = Script(
    "lite_unsubscribe",
    """
local meta, mine, g, token = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local og, pg, ag = 'o:' .. g, 'p:' .. g, 'a:' .. g
local fields = redis.call('HGETALL', meta)
local owner, a
local parts = {}
for i = 1, #fields, 2 do
  local k = fields[i]
  if k == og then owner = fields[i + 1]
  elseif k == ag then a = fields[i + 1]
  elseif k ~= pg and string.sub(k, 1, 2) == 'p:' then parts[#parts + 1] = fields[i + 1]
  end
end
if owner == token then
  local put, gone = {}, {og, pg}
  local value = redis.call('GET', mine)
  if value then  -- its commits become the group's
    local c, acked = string.match(value, '^([^|]*)|?(.*)$')
    put[#put + 1] = 'c:' .. g; put[#put + 1] = c
    if acked ~= '' then
      put[#put + 1] = ag; put[#put + 1] = acked
    elseif a then
      gone[#gone + 1] = ag
    end
  end
  if #parts > 0 then
    put[#put + 1] = 'p'; put[#put + 1] = table.concat(parts)
  else
    gone[#gone + 1] = 'p'
  end
  if #put > 0 then redis.call('HSET', meta, unpack(put)) end
  redis.call('HDEL', meta, unpack(gone))
end
redis.call('DEL', mine)
return 1
""",
    flags="allow-oom",
)

# KEYS: meta, list, the subscriber's commit key. ARGV: group, token, ttl_ms, known epoch (''
# if none yet), note address. Checks a subscription and renews one that waits for its topic's
# first publish. Returns {owned(1|0), epoch, pttl, last offset}.
LITE_KEEP: Final = Script(
    "lite_keep",
    _OWNERS_CHANGED
    + """
local meta, data, mine, g, token = KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2]
local o, e, f = unpack(redis.call('HMGET', meta, 'o:' .. g, 'e', 'f'))
if not e and ARGV[4] == '' and (not o or o == token) then
  if not o then
    redis.call('HSET', meta, 'o:' .. g, token, 'p:' .. g, ARGV[5])
    owners_changed(meta)
  end
  redis.call('PEXPIRE', meta, ARGV[3])
  if redis.call('PEXPIRE', mine, ARGV[3]) == 0 then
    redis.call('SET', mine, 0, 'PX', ARGV[3])
  end
  return {1, '', redis.call('PTTL', meta), 0}
end
local n = 0
if e then n = tonumber(f) + redis.call('LLEN', data) - 1 end
return {o == token and 1 or 0, e or '', redis.call('PTTL', meta), n}
""",
    flags="allow-oom",
)

# KEYS: meta, list. ARGV: group, token, from, max. Returns {'R', epoch} when the token no
# longer owns the topic, else {epoch, last, first, elements from `from` on}.
LITE_FETCH: Final = Script(
    "lite_fetch",
    """
local meta, data, g = KEYS[1], KEYS[2], ARGV[1]
local o, e, f = unpack(redis.call('HMGET', meta, 'o:' .. g, 'e', 'f'))
if o ~= ARGV[2] then return {'R', e or ''} end
if not e then return {'', 0, 1, {}} end
local first = tonumber(f)
local n = first + redis.call('LLEN', data) - 1
local from = math.max(tonumber(ARGV[3]), first)
local elements = {}
if from <= n then
  local last = math.min(n, from + tonumber(ARGV[4]) - 1)
  elements = redis.call('LRANGE', data, from - first, last - first)
end
return {e, n, first, elements}
""",
    flags="no-writes",
)

# KEYS: commit keys of one partition. ARGV: their new values (``COMMITTED`` or
# ``COMMITTED|ACKED,ACKED...``, the acks above the watermark). An owner computes its commits
# itself (it alone acks its topic); a key exists only while its owner owns the topic, so a
# takeover or an expiry fences it (G4). A script only to be allowed on a full server (a plain
# SET is refused there). Returns 1 per key written, 0 per key fenced. When records were
# settled unread (their deadline passed), KEYS ends with the partition's expiry counter (a
# hash: group -> count) and ARGV with the group and one count per commit key; the counts of
# the keys written are added.
LITE_COMMIT: Final = Script(
    "lite_commit",
    """
local n = #KEYS
local counted = #ARGV > n
if counted then n = n - 1 end
local out = {}
local expired = 0
for i = 1, n do
  if redis.call('SET', KEYS[i], ARGV[i], 'XX', 'KEEPTTL') then
    out[i] = 1
    if counted then expired = expired + tonumber(ARGV[n + 1 + i]) end
  else
    out[i] = 0
  end
end
if expired > 0 then
  redis.call('HINCRBY', KEYS[n + 1], ARGV[n + 1], expired)
end
return out
""",
    flags="allow-oom",
)

# KEYS: the namespace's world marker and layout marker (one hash tag). ARGV: a new world
# marker, this version's layout. Records the layout of a new namespace. Returns
# {layout, world marker}.
NAMESPACE: Final = Script(
    "namespace",
    """
local layout = redis.call('GET', KEYS[2])
if not layout then
  redis.call('SET', KEYS[2], ARGV[2])
  layout = ARGV[2]
end
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return {layout, redis.call('GET', KEYS[1])}
""",
    flags="allow-oom",
)

# -- ordered topics ------------------------------------------------------------------------------

# KEYS: stream, meta, then the dedupe key of each message that has a dedupe id, in order.
# ARGV: max_len, partition, then per message: window_ms (0: no dedupe id), body.
# Appends every message of a batch to one partition at the next offsets (meta field n), skipping
# past foreign entries that took ids in our sequence, and wakes the owner of the partition in
# every group once. Returns per message {offset, duplicate(0|1)}, or {0, error} when the
# stream's last id is past every offset (a foreign entry was added with a time-based id: no
# id of ours can follow it until the stream's last id is set back with XSETID, G12).
ORDERED_SEND: Final = Script(
    "ordered_send",
    _NOTIFY
    + """
local stream, meta, maxlen = KEYS[1], KEYS[2], ARGV[1]
local n = tonumber(redis.call('HGET', meta, 'n') or '0')
local start = n
local out, d, broken = {}, 3, nil
for i = 3, #ARGV, 2 do
  local window = tonumber(ARGV[i])
  local dd, known
  if window > 0 then
    dd, d = KEYS[d], d + 1
    known = redis.call('GET', dd)
  end
  if known then
    out[#out + 1] = {tonumber(known), 1}
  elseif broken then
    out[#out + 1] = {0, broken}
  else
    local ok = redis.pcall('XADD', stream, 'MAXLEN', maxlen, '0-' .. (n + 1), 'b', ARGV[i + 1])
    if type(ok) == 'table' and ok.err then
      local info, last = redis.call('XINFO', 'STREAM', stream), nil
      for f = 1, #info, 2 do
        if info[f] == 'last-generated-id' then last = info[f + 1] end
      end
      local ms, seq = string.match(last, '^(%d+)-(%d+)$')
      if ms ~= '0' then
        broken = 'LITECHAN_FOREIGN_ID ' .. last
      else
        n = tonumber(seq)
        redis.call('XADD', stream, 'MAXLEN', maxlen, '0-' .. (n + 1), 'b', ARGV[i + 1])
      end
    end
    if broken then
      out[#out + 1] = {0, broken}
    else
      n = n + 1
      if dd then redis.call('SET', dd, n, 'PX', window) end
      out[#out + 1] = {n, 0}
    end
  end
end
if n ~= start then
  redis.call('HSET', meta, 'n', n)
  notify(meta, 'W', ARGV[2] .. '|' .. n)
end
return out
""",
    flags="",
    stores_messages=True,
)

# KEYS: members zset, rebalance channel name (not a key: passed as ARGV). ARGV: token,
# lease_ms, leaving(0|1), channel. Registers (or removes) a member and drops expired ones.
# Returns the live members' tokens, sorted.
ORDERED_HEARTBEAT: Final = Script(
    "ordered_heartbeat",
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local members = KEYS[1]
local before = redis.call('ZCARD', members)
if ARGV[3] == '1' then
  redis.call('ZREM', members, ARGV[1])
else
  redis.call('ZADD', members, now + tonumber(ARGV[2]), ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', members, '-inf', now)
local live = redis.call('ZRANGE', members, 0, -1)
table.sort(live)
if #live ~= before or ARGV[3] == '1' then
  redis.call('PUBLISH', ARGV[4], 'B')
end
return live
""",
    flags="allow-oom",
)

# KEYS: stream, meta, group hash, pending hash, redo list. ARGV: group, token, lease_ms.
# Takes a partition that is free or whose owner's lease ran out. Returns {1, generation} or
# {0, current owner}.
ORDERED_CLAIM: Final = Script(
    "ordered_claim",
    """
local stream, meta, gk, pending, redo = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local own, lease, gen = unpack(redis.call('HMGET', gk, 'own', 'lease', 'gen'))
if own and own ~= '' and own ~= ARGV[2] and tonumber(lease) > now then
  return {0, own}
end
if not gen then
  local n = tonumber(redis.call('HGET', meta, 'n')) or 0
  redis.call('HSET', gk, 'cur', n - redis.call('XLEN', stream) + 1)
end
gen = redis.call('HINCRBY', gk, 'gen', 1)
redis.call('HSET', gk, 'own', ARGV[2], 'lease', now + tonumber(ARGV[3]))
redis.call('HSET', meta, 'o:' .. ARGV[1], ARGV[2])
-- What the previous owners did not settle is redelivered first, in offset order.
redis.call('DEL', redo)
local offsets = redis.call('HKEYS', pending)
if #offsets > 0 then
  local sorted = {}
  for i, off in ipairs(offsets) do sorted[i] = tonumber(off) end
  table.sort(sorted)
  for i = 1, #sorted, 1000 do
    redis.call('RPUSH', redo, unpack(sorted, i, math.min(i + 999, #sorted)))
  end
end
return {1, gen}
""",
    flags="allow-oom",
)

# KEYS: group hash. ARGV: token, generation, lease_ms. Returns 1 when still the owner.
ORDERED_RENEW: Final = Script(
    "ordered_renew",
    """
local own, gen = unpack(redis.call('HMGET', KEYS[1], 'own', 'gen'))
if own ~= ARGV[1] or gen ~= ARGV[2] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'lease', now + tonumber(ARGV[3]))
return 1
""",
    flags="allow-oom",
)

# KEYS: stream, meta, group hash, pending hash, redo list. ARGV: token, generation, max.
# Returns {'F'} when fenced, else {trimmed, entries...} where entries are flat triples
# (offset, deliveries, body or false when the entry is gone).
ORDERED_FETCH: Final = Script(
    "ordered_fetch",
    """
local stream, meta, gk, pending, redo = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local own, gen, cur = unpack(redis.call('HMGET', gk, 'own', 'gen', 'cur'))
if own ~= ARGV[1] or gen ~= ARGV[2] then return {'F'} end
local max = tonumber(ARGV[3])
local n = tonumber(redis.call('HGET', meta, 'n')) or 0
local first = n - redis.call('XLEN', stream) + 1
local out = {0}
local count = 0
while count < max do
  local off = redis.call('LPOP', redo)
  if not off then break end
  local seen = redis.call('HGET', pending, off)
  if seen then
    if tonumber(off) < first then
      redis.call('HDEL', pending, off)
      out[1] = out[1] + 1
    else
      local d = tonumber(seen) + 1
      local e = redis.call('XRANGE', stream, '0-' .. off, '0-' .. off)
      redis.call('HSET', pending, off, d)
      out[#out + 1] = tonumber(off)
      out[#out + 1] = d
      out[#out + 1] = e[1] and e[1][2] or false
      count = count + 1
    end
  end
end
cur = tonumber(cur)
if cur < first then
  out[1] = out[1] + first - cur
  cur = first
end
if count < max and cur <= n then
  local entries = redis.call('XRANGE', stream, '0-' .. cur, '0-' .. n, 'COUNT', max - count)
  local marks = {}
  for _, e in ipairs(entries) do
    local off = tonumber(string.match(e[1], '-(%d+)$'))
    marks[#marks + 1] = off
    marks[#marks + 1] = 1
    out[#out + 1] = off
    out[#out + 1] = 1
    out[#out + 1] = e[2]
    cur = off + 1
  end
  for i = 1, #marks, 1000 do  -- one HSET per 500 entries
    redis.call('HSET', pending, unpack(marks, i, math.min(i + 999, #marks)))
  end
  redis.call('HSET', gk, 'cur', cur)
end
return out
""",
    flags="allow-oom",
)

# KEYS: group hash, pending hash. ARGV: token, generation, the number E of expired offsets,
# E expired offsets, then acked offsets. Settles the offsets; the expired ones that were still
# pending are counted in the group hash's field 'expired'.
ORDERED_ACK: Final = Script(
    "ordered_ack",
    """
local own, gen = unpack(redis.call('HMGET', KEYS[1], 'own', 'gen'))
if own ~= ARGV[1] or gen ~= ARGV[2] then return 0 end
local acked = 4 + tonumber(ARGV[3])
local expired = 0
for i = 4, acked - 1, 1000 do
  expired = expired + redis.call('HDEL', KEYS[2], unpack(ARGV, i, math.min(i + 999, acked - 1)))
end
if expired > 0 then
  redis.call('HINCRBY', KEYS[1], 'expired', expired)
end
for i = acked, #ARGV, 1000 do
  redis.call('HDEL', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
return 1
""",
    flags="allow-oom",
)

# KEYS: group hash, pending hash. ARGV: token, generation, offset, deliveries.
ORDERED_NACK: Final = Script(
    "ordered_nack",
    """
local own, gen = unpack(redis.call('HMGET', KEYS[1], 'own', 'gen'))
if own ~= ARGV[1] or gen ~= ARGV[2] then return 0 end
if redis.call('HEXISTS', KEYS[2], ARGV[3]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
end
return 1
""",
    flags="allow-oom",
)

# KEYS: group hash, pending hash, dead-letter stream. ARGV: token, generation, offset,
# dead-letter body, max dead letters. Moves an entry to the dead letters (fenced).
ORDERED_REJECT: Final = Script(
    "ordered_reject",
    """
local own, gen = unpack(redis.call('HMGET', KEYS[1], 'own', 'gen'))
if own ~= ARGV[1] or gen ~= ARGV[2] then return 0 end
if redis.call('HDEL', KEYS[2], ARGV[3]) == 0 then return 0 end
redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[5], '*', 'b', ARGV[4])
return 1
""",
    flags="allow-oom",
)

# KEYS: group hash, pending hash, redo list, meta. ARGV: group, token, generation ('' for
# whatever generation the token holds: a claim whose reply never came), channel, then (offset,
# deliveries) pairs of entries fetched but never handed to the application.
ORDERED_RELEASE: Final = Script(
    "ordered_release",
    """
local gk, pending, redo, meta = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local own, gen = unpack(redis.call('HMGET', gk, 'own', 'gen'))
if own ~= ARGV[2] or (ARGV[3] ~= '' and gen ~= ARGV[3]) then return 0 end
for i = 5, #ARGV, 2 do
  if redis.call('HEXISTS', pending, ARGV[i]) == 1 then
    redis.call('HSET', pending, ARGV[i], ARGV[i + 1])
  end
end
redis.call('HSET', gk, 'own', '', 'lease', 0)
redis.call('DEL', redo)
if redis.call('HGET', meta, 'o:' .. ARGV[1]) == ARGV[2] then
  redis.call('HDEL', meta, 'o:' .. ARGV[1])
end
redis.call('PUBLISH', ARGV[4], 'B')
return 1
""",
    flags="allow-oom",
)

# KEYS: group hash, pending hash, redo list. ARGV: token, generation, then the offsets the
# member holds (handed out, not settled). Makes the redo list every other pending offset, in
# offset order: what a fetch whose reply was lost took goes out again (G3). Idempotent.
# Returns the length of the redo list, or -1 when fenced.
ORDERED_RECOVER: Final = Script(
    "ordered_recover",
    """
local own, gen = unpack(redis.call('HMGET', KEYS[1], 'own', 'gen'))
if own ~= ARGV[1] or gen ~= ARGV[2] then return -1 end
local held = {}
for i = 3, #ARGV do held[ARGV[i]] = true end
local redo = {}
for _, off in ipairs(redis.call('HKEYS', KEYS[2])) do
  if not held[off] then redo[#redo + 1] = tonumber(off) end
end
table.sort(redo)
redis.call('DEL', KEYS[3])
for i = 1, #redo, 1000 do
  redis.call('RPUSH', KEYS[3], unpack(redo, i, math.min(i + 999, #redo)))
end
return #redo
""",
    flags="allow-oom",
)

SCRIPTS: Final = (
    SPEC,
    NAMESPACE,
    LITE_PUBLISH,
    LITE_SUBSCRIBE,
    LITE_UNSUBSCRIBE,
    LITE_KEEP,
    LITE_FETCH,
    LITE_COMMIT,
    ORDERED_SEND,
    ORDERED_HEARTBEAT,
    ORDERED_CLAIM,
    ORDERED_RENEW,
    ORDERED_FETCH,
    ORDERED_ACK,
    ORDERED_NACK,
    ORDERED_REJECT,
    ORDERED_RELEASE,
    ORDERED_RECOVER,
)
