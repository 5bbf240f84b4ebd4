-- One ingest batch of one device, atomically.
--
-- KEYS[1] trail   ZSET, all scores 0, members "<seq:020>|<StoredFix JSON>"
--                 (zero-padded seqs sort lexicographically = numerically,
--                 exact for every u64)
-- KEYS[2] latest  STRING StoredFix JSON, PX online ttl
-- KEYS[3] devices ZSET device -> last ingest ms (bounded, oldest forgotten)
-- KEYS[4] seen    ZSET of this device's recent seqs (score 0, "<seq:020>")
-- KEYS[5] floor   STRING "<seq:020>": at or below it everything counts as seen
-- KEYS[6] watchers HASH of the driver's tracking channel
-- ARGV[1] device id, ARGV[2] now ms, ARGV[3] online ttl ms,
-- ARGV[4] trail length, ARGV[5] dedup window, ARGV[6] data ttl ms,
-- ARGV[7] max devices per driver, ARGV[8] key prefix of per-device keys,
-- then per fix (in seq order): ts, trail member.
--
-- Returns {accepted, index of the fix that became latest (1-based, 0 for
-- none), watchers}.
local device = ARGV[1]
local now = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local trail_len = tonumber(ARGV[4])
local cap = math.max(tonumber(ARGV[5]), 1)
local data_ttl = tonumber(ARGV[6])
local max_devices = math.max(tonumber(ARGV[7]), 1)
local prefix = ARGV[8]

if not redis.call('ZSCORE', KEYS[3], device) then
  local n = redis.call('ZCARD', KEYS[3])
  if n >= max_devices then
    local old = redis.call('ZPOPMIN', KEYS[3], n - max_devices + 1)
    for i = 1, #old, 2 do
      redis.call('DEL', prefix .. 'seen:' .. old[i], prefix .. 'floor:' .. old[i])
    end
  end
end
redis.call('ZADD', KEYS[3], now, device)
redis.call('PEXPIRE', KEYS[3], data_ttl)

local floor = redis.call('GET', KEYS[5])
local accepted = 0
local members = {}
local newest, newest_ts = 0, nil
for i = 9, #ARGV, 2 do
  local ts = tonumber(ARGV[i])
  local member = ARGV[i + 1]
  local seq = string.sub(member, 1, 20)
  if not (floor and seq <= floor) and redis.call('ZADD', KEYS[4], 'NX', 0, seq) == 1 then
    accepted = accepted + 1
    members[#members + 1] = member
    if newest_ts == nil or ts >= newest_ts then
      newest, newest_ts = i, ts
    end
  end
end
-- Forget the oldest seqs beyond the window once per batch; the highest
-- forgotten one becomes the floor. For a batch in seq order this equals
-- trimming after every insert (as the memory engine does): a seq popped
-- mid-batch is never above the fix being inserted, so no later fix of the
-- batch could fall at or below it.
if accepted > 0 then
  local n = redis.call('ZCARD', KEYS[4])
  if n > cap then
    local popped = redis.call('ZPOPMIN', KEYS[4], n - cap)
    floor = popped[#popped - 1]
    redis.call('SET', KEYS[5], floor, 'PX', data_ttl)
  elseif floor then
    redis.call('PEXPIRE', KEYS[5], data_ttl)
  end
end
redis.call('PEXPIRE', KEYS[4], data_ttl)

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
if accepted > 0 then
  local n = redis.call('ZCARD', KEYS[1])
  if n > trail_len then
    redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - trail_len - 1)
  end
  redis.call('PEXPIRE', KEYS[1], data_ttl)

  local replace = true
  local cur = redis.call('GET', KEYS[2])
  if cur then
    local ok, c = pcall(cjson.decode, cur)
    if ok and type(c) == 'table' and type(c.fix) == 'table'
        and tonumber(c.fix.ts) and tonumber(c.received_ms) then
      replace = (now - tonumber(c.received_ms) > ttl) or (newest_ts >= tonumber(c.fix.ts))
    end
  end
  if replace then
    redis.call('SET', KEYS[2], string.sub(ARGV[newest + 1], 22), 'PX', ttl)
    new_latest = (newest - 9) / 2 + 1
  end
end

return {accepted, new_latest, watcher_sum(KEYS[6])}
