return {tonumber(redis.call('GET', KEYS[3]) or '0'), redis.call('HGETALL', KEYS[1]),
  redis.call('HGETALL', KEYS[2])}
