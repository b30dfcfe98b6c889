local v = tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[3]) or '0') >= v then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
local i = 4
for _ = 1, tonumber(ARGV[3]) do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i + 1 <= #ARGV do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
redis.call('SET', KEYS[3], v)
redis.call('PUBLISH', ARGV[2], v)
return 1
