-- Records this process's local subscriber count of several channels.
-- KEYS[i] = watcher hash of channel i; ARGV[1] = instance id,
-- ARGV[2] = ttl ms, ARGV[2 + i] = count of channel i (0 removes the field).
local now = clock_ms()
local ttl = tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  local count = tonumber(ARGV[2 + i])
  if count and count > 0 then
    redis.call('HSET', key, ARGV[1], string.format('%d|%d', count, now + ttl))
    redis.call('PEXPIRE', key, ttl)
  else
    redis.call('HDEL', key, ARGV[1])
  end
end
return #KEYS
