local key = KEYS[1]
local limit, want, inst = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local ttl, expire_at = tonumber(ARGV[5]), tonumber(ARGV[6])
local received, q = tonumber(ARGV[7]), tonumber(ARGV[8])
-- grants are numbered per instance and key; one that arrives after a later script of its
-- instance (it waited in a connection while the instance moved on) is not applied
if q <= tonumber(redis.call('HGET', key, 'Q:' .. inst) or '0') then return {-1, 0} end
redis.call('HSET', key, 'Q:' .. inst, q)
reconcile(key, inst, received)
-- lease expiry on Redis's clock, so instances with skewed clocks agree
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- reclaim the leases of other instances whose leases expired (they died or lost Redis); the
-- caller's own are settled by the caller
local h = redis.call('HGETALL', key)
for i = 1, #h, 2 do
  local f = h[i]
  if string.sub(f, 1, 2) == 'E:' and f ~= 'E:' .. inst and tonumber(h[i + 1]) < now then
    local other = string.sub(f, 3)
    local l = tonumber(redis.call('HGET', key, 'L:' .. other) or '0')
    if l > 0 then redis.call('HINCRBY', key, 'calls', -l) end
    redis.call('HDEL', key, 'L:' .. other, 'G:' .. other, f)
  end
end
local taken = tonumber(redis.call('HGET', key, 'calls') or '0')
local remaining = limit - taken
if remaining <= 0 then return {0, taken} end
local grant = math.min(want, math.max(1, math.floor(remaining / 16)), remaining)
redis.call('HINCRBY', key, 'calls', grant)
redis.call('HINCRBY', key, 'L:' .. inst, grant)
redis.call('HINCRBY', key, 'G:' .. inst, grant)
redis.call('HSET', key, 'E:' .. inst, now + ttl)
redis.call('PEXPIREAT', key, expire_at)
return {grant, taken + grant}
