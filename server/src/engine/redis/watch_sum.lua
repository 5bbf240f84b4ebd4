-- Shared prelude: the Redis server clock and the watcher sum of a channel.
-- A watcher hash has one field per server process: "count|expiry_ms".
-- Expired or malformed fields are removed while summing.
local function clock_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function watcher_sum(key)
  local now = clock_ms()
  local fields = redis.call('HGETALL', key)
  local sum = 0
  for i = 1, #fields, 2 do
    local v = fields[i + 1]
    local bar = string.find(v, '|', 1, true)
    local count = bar and tonumber(string.sub(v, 1, bar - 1))
    local expiry = bar and tonumber(string.sub(v, bar + 1))
    if count and expiry and expiry > now then
      sum = sum + count
    else
      redis.call('HDEL', key, fields[i])
    end
  end
  return sum
end
