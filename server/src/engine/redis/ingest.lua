-- One ingest batch of one device, atomically.
--
-- KEYS[1] trail   ZSET, all scores 0, members "<seq:020>|<StoredFix JSON>"
--                 (zero-padded seqs sort lexicographically = numerically,
--                 exact for every u64)
-- KEYS[2] latest  STRING StoredFix JSON, PX online ttl
-- KEYS[3] devices ZSET device -> last ingest ms (bounded, oldest forgotten)
-- KEYS[4] seen    ZSET (score 0) of the starts "<seq:020>" of the runs of
--                 consecutive seqs this device sent recently
-- KEYS[5] span    HASH run start -> run end (absent for a run of one seq),
--                 plus "n" (seqs in all runs) and "f" (floor: at or below it
--                 everything counts as seen)
-- KEYS[6] watchers HASH of the driver's tracking channel
-- ARGV[1] device id, ARGV[2] now ms, ARGV[3] online ttl ms,
-- ARGV[4] trail length, ARGV[5] dedup window, ARGV[6] data ttl ms,
-- ARGV[7] max devices per driver, ARGV[8] key prefix of per-device keys,
-- ARGV[9] pub/sub channel of the driver, ARGV[10] index (1-based) of the fix
-- whose live frame ARGV[11] is (0: none), ARGV[12] the publish command
-- (PUBLISH, or SPUBLISH on a cluster: the channel shares the driver's slot),
-- then per fix (in seq order): ts, trail member.
--
-- The dedup window holds the last `dedup window` seqs (by seq order) like
-- the memory engine, stored as runs: a device counting up one by one costs
-- one run (a few hundred bytes) instead of one entry per seq.
--
-- When the fix that became latest is the one ARGV[11] was built for, the
-- frame is published here, in the same atomic step that made it latest, so
-- live frames of a driver leave in the order its latest position changed.
--
-- Returns {accepted, index of the fix that became latest (1-based, 0 for
-- none), watchers, 1 if published here else 0, 1 if the latest replaced
-- was live else 0, its fix ts (0 when none)}.
local device = ARGV[1]
local now = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local trail_len = tonumber(ARGV[4])
local cap = math.max(tonumber(ARGV[5]), 1)
local data_ttl = tonumber(ARGV[6])
local max_devices = math.max(tonumber(ARGV[7]), 1)
local prefix = ARGV[8]
local live_channel = ARGV[9]
local live_index = tonumber(ARGV[10])
local live_frame = ARGV[11]
local publish = ARGV[12]
local FIRST = 13

if not redis.call('ZSCORE', KEYS[3], device) then
  local n = redis.call('ZCARD', KEYS[3])
  if n >= max_devices then
    local old = redis.call('ZPOPMIN', KEYS[3], n - max_devices + 1)
    for i = 1, #old, 2 do
      redis.call('DEL', prefix .. 'seen:' .. old[i], prefix .. 'span:' .. old[i])
    end
  end
end
redis.call('ZADD', KEYS[3], now, device)
redis.call('PEXPIRE', KEYS[3], data_ttl)

-- Exact arithmetic on 20-digit seq strings for small steps (|k| < 1e15):
-- the last 15 digits fit a Lua number exactly, the first 5 take the carry.
local function add(s, k)
  local p = tonumber(string.sub(s, 1, 5))
  local q = tonumber(string.sub(s, 6)) + k
  if q >= 1e15 then
    q, p = q - 1e15, p + 1
  elseif q < 0 then
    q, p = q + 1e15, p - 1
  end
  return string.format('%05d%015d', p, q)
end
-- a - b for a >= b whose difference is small.
local function diff(a, b)
  return (tonumber(string.sub(a, 1, 5)) - tonumber(string.sub(b, 1, 5))) * 1e15
    + tonumber(string.sub(a, 6)) - tonumber(string.sub(b, 6))
end

local seen, span = KEYS[4], KEYS[5]
local meta = redis.call('HMGET', span, 'f', 'n')
local floor = meta[1]
local count = tonumber(meta[2]) or 0

-- The run the batch is extending: [cur_lo, cur_hi] (cur_hi written back
-- lazily), cur_nx the start of the next run above it (or nil).
local cur_lo, cur_hi, cur_nx, dirty = nil, nil, nil, false
local function set_end(lo, hi)
  if lo == hi then
    redis.call('HDEL', span, lo)
  else
    redis.call('HSET', span, lo, hi)
  end
end
local function flush()
  if dirty then
    set_end(cur_lo, cur_hi)
    dirty = false
  end
end
local function first_start_above(s)
  return redis.call('ZRANGEBYLEX', seen, '(' .. s, '+', 'LIMIT', 0, 1)[1]
end

local accepted = 0
local members = {}
local newest, newest_ts = 0, nil
for i = FIRST, #ARGV, 2 do
  local ts = tonumber(ARGV[i])
  local member = ARGV[i + 1]
  local seq = string.sub(member, 1, 20)
  local new = false
  if not (floor and seq <= floor) then
    local lo, hi, nx
    if cur_lo and seq > cur_hi and (not cur_nx or seq < cur_nx) then
      -- In the gap right above the current run (the in-order fast path).
      lo, hi, nx = cur_lo, cur_hi, cur_nx
    else
      flush()
      cur_lo = nil
      lo = redis.call('ZREVRANGEBYLEX', seen, '[' .. seq, '-', 'LIMIT', 0, 1)[1]
      hi = lo and (redis.call('HGET', span, lo) or lo)
      if not (lo and hi and seq <= hi) then
        nx = first_start_above(seq)
      end
    end
    if not (lo and hi and seq <= hi) then
      new = true
      if lo and hi and seq == add(hi, 1) then
        if cur_lo ~= lo then
          flush()
        end
        cur_lo, cur_hi = lo, seq
      else
        flush()
        redis.call('ZADD', seen, 0, seq)
        cur_lo, cur_hi = seq, seq
      end
      dirty = true
      cur_nx = nx
      if cur_nx and add(cur_hi, 1) == cur_nx then
        -- The run now touches the next one: merge them.
        local nhi = redis.call('HGET', span, cur_nx) or cur_nx
        redis.call('ZREM', seen, cur_nx)
        redis.call('HDEL', span, cur_nx)
        cur_hi = nhi
        cur_nx = first_start_above(nhi)
      end
    end
  end
  if new then
    count = count + 1
    accepted = accepted + 1
    members[#members + 1] = member
    if newest_ts == nil or ts >= newest_ts then
      newest, newest_ts = i, ts
    end
  end
end
flush()

-- Forget the oldest seqs beyond the window once per batch; the highest
-- forgotten one becomes the floor. For a batch in seq order this equals
-- trimming after every insert (as the memory engine does): a seq popped
-- mid-batch is never above the fix being inserted, so no later fix of the
-- batch could fall at or below it.
if count > cap then
  local excess = count - cap
  while excess > 0 do
    local lo = redis.call('ZRANGE', seen, 0, 0)[1]
    if not lo then
      break
    end
    local hi = redis.call('HGET', span, lo) or lo
    local len = diff(hi, lo) + 1
    redis.call('ZREM', seen, lo)
    redis.call('HDEL', span, lo)
    if len <= excess then
      floor = hi
      excess = excess - len
    else
      local nlo = add(lo, excess)
      redis.call('ZADD', seen, 0, nlo)
      set_end(nlo, hi)
      floor = add(nlo, -1)
      excess = 0
    end
  end
  count = cap
end
if floor then
  redis.call('HSET', span, 'f', floor, 'n', count)
else
  redis.call('HSET', span, 'n', count)
end
redis.call('PEXPIRE', seen, data_ttl)
redis.call('PEXPIRE', span, data_ttl)

-- Trail: ZADD in chunks (Lua's unpack has a stack limit).
local chunk = {}
for j = 1, #members do
  chunk[#chunk + 1] = 0
  chunk[#chunk + 1] = members[j]
  if #chunk >= 512 or j == #members then
    redis.call('ZADD', KEYS[1], unpack(chunk))
    chunk = {}
  end
end

local new_latest = 0
local published = 0
local had_previous, previous_ts = 0, 0
if accepted > 0 then
  local n = redis.call('ZCARD', KEYS[1])
  if n > trail_len then
    redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - trail_len - 1)
  end
  redis.call('PEXPIRE', KEYS[1], data_ttl)

  local replace = true
  local cur_ts = nil
  local cur = redis.call('GET', KEYS[2])
  if cur then
    local ok, c = pcall(cjson.decode, cur)
    if ok and type(c) == 'table' and type(c.fix) == 'table'
        and tonumber(c.fix.ts) and tonumber(c.received_ms) then
      local live = now - tonumber(c.received_ms) <= ttl
      replace = (not live) or (newest_ts >= tonumber(c.fix.ts))
      if live then
        cur_ts = tonumber(c.fix.ts)
      end
    end
  end
  if replace then
    if cur_ts then
      had_previous, previous_ts = 1, cur_ts
    end
    redis.call('SET', KEYS[2], string.sub(ARGV[newest + 1], 22), 'PX', ttl)
    new_latest = (newest - FIRST) / 2 + 1
    if new_latest == live_index then
      redis.call(publish, live_channel, live_frame)
      published = 1
    end
  end
end

return {accepted, new_latest, watcher_sum(KEYS[6]), published, had_previous, previous_ts}
