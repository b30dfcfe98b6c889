local key = KEYS[1]
local inst, seq = ARGV[1], tonumber(ARGV[2])
local ttl, expire_at = tonumber(ARGV[4]), tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease_used, lease_returned = tonumber(ARGV[6]), tonumber(ARGV[7])
local direct, bytes = tonumber(ARGV[8]), tonumber(ARGV[9])
local limit, blimit, overage = tonumber(ARGV[10]), tonumber(ARGV[11]), ARGV[12] == '1'
if ARGV[13] ~= '' then
  -- no grant of this instance was in flight when this was sent: the ones numbered up to
  -- ARGV[14] were answered or given up on, and none of them may be applied after this. A
  -- settlement that arrives after a later grant (it waited in a connection) knows too little
  -- to correct anything
  local q = tonumber(ARGV[14])
  if q >= tonumber(redis.call('HGET', key, 'Q:' .. inst) or '0') then
    redis.call('HSET', key, 'Q:' .. inst, q)
    reconcile(key, inst, tonumber(ARGV[13]))
  end
end
local applied = tonumber(redis.call('HGET', key, 'S:' .. inst) or '0')
if seq > applied then
  -- the day's counts (KEYS[2], fields <day>:calls and <day>:bytes), credited to the batch's
  -- day; a refund stops at zero
  local served = lease_used + direct
  for field, n in pairs({calls = served, bytes = bytes}) do
    if n ~= 0 then
      local f = ARGV[15] .. ':' .. field
      if redis.call('HINCRBY', KEYS[2], f, n) < 0 then redis.call('HSET', KEYS[2], f, 0) end
    end
  end
  redis.call('PEXPIREAT', KEYS[2], expire_at)
  local l = tonumber(redis.call('HGET', key, 'L:' .. inst) or '0')
  local settled = math.min(l, lease_used + lease_returned)
  -- leases that expired and were reclaimed meanwhile are already out of `calls`: what was
  -- served from them is added back as a direct count
  local unreclaimed_used = math.min(lease_used, l)
  direct = direct + (lease_used - unreclaimed_used)
  local returned = math.min(lease_returned, l - unreclaimed_used)
  if settled > 0 then redis.call('HINCRBY', key, 'L:' .. inst, -settled) end
  if returned > 0 then redis.call('HINCRBY', key, 'calls', -returned) end
  if direct ~= 0 then
    local before = tonumber(redis.call('HGET', key, 'calls') or '0')
    local after = redis.call('HINCRBY', key, 'calls', direct)
    if overage and direct > 0 then
      local over = after - math.max(limit, before)
      if over > 0 then redis.call('HINCRBY', key, 'calls_overage', over) end
    end
  end
  if bytes ~= 0 then
    local before = tonumber(redis.call('HGET', key, 'bytes') or '0')
    local after = redis.call('HINCRBY', key, 'bytes', bytes)
    if overage and bytes > 0 then
      local over = after - math.max(blimit, before)
      if over > 0 then redis.call('HINCRBY', key, 'bytes_overage', over) end
    end
  end
  redis.call('HSET', key, 'S:' .. inst, seq)
end
local l = tonumber(redis.call('HGET', key, 'L:' .. inst) or '0')
if l > 0 then
  redis.call('HSET', key, 'E:' .. inst, now + ttl)
else
  -- nothing leased: the grant count starts again from the instance's at its next grant (the
  -- fence `Q:` stays, even after the last settlement, so a late grant is never applied)
  redis.call('HDEL', key, 'L:' .. inst, 'E:' .. inst, 'G:' .. inst)
end
redis.call('PEXPIREAT', key, expire_at)
local v = redis.call('HMGET', key, 'calls', 'bytes', 'calls_overage', 'bytes_overage')
local function n(x) return math.max(0, tonumber(x or '0')) end
return {n(v[1]), n(v[2]), n(v[3]), n(v[4]), l}
