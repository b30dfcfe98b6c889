if tonumber(redis.call('GET', KEYS[3]) or '0') < tonumber(ARGV[5]) then return {-1, 0, {}, {}} end
local op, a, b = ARGV[1], ARGV[2], ARGV[3]
local changed = 0
if op == 'status' then
  if redis.call('HGET', KEYS[1], a) ~= b then
    redis.call('HSET', KEYS[1], a, b)
    changed = 1
  end
elseif op == 'revoke' then
  if redis.call('HGET', KEYS[2], a) ~= b then
    redis.call('HSET', KEYS[2], a, b)
    changed = 1
  end
else
  changed = redis.call('HDEL', KEYS[1], a) + redis.call('HDEL', KEYS[2], a)
end
local v = tonumber(redis.call('GET', KEYS[3]) or '0')
if changed > 0 then
  v = redis.call('INCR', KEYS[3])
  redis.call('PUBLISH', ARGV[4], v)
end
return {v, changed, redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2])}
