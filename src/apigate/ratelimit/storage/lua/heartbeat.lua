-- apigate: record that an instance is alive and count the live ones.
-- KEYS[1] = <prefix>:instances (zset: member = instance id, score = expiry, Redis time in ms)
-- ARGV    = instance_id, ttl_ms
-- Returns the number of instances whose expiry is in the future (this one included).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
if not ttl or ttl < 1 then
  return redis.error_reply('ERR apigate heartbeat: bad ttl_ms')
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], tonumber(last[2]) - now + 1000)
return redis.call('ZCARD', KEYS[1])
