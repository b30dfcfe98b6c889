local function reconcile(key, inst, received)
  local g = redis.call('HGET', key, 'G:' .. inst)
  if g then
    local lost = tonumber(g) - received
    if lost > 0 then
      local l = tonumber(redis.call('HGET', key, 'L:' .. inst) or '0')
      local fix = math.min(lost, l)
      if fix > 0 then
        redis.call('HINCRBY', key, 'L:' .. inst, -fix)
        redis.call('HINCRBY', key, 'calls', -fix)
      end
    end
  end
  redis.call('HSET', key, 'G:' .. inst, received)
end
