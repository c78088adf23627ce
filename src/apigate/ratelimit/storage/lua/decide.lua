-- apigate: check (and charge) several rate limits in one atomic step.
--
-- KEYS[i]  = spec i's key (all keys share one {hash tag}); suffixes used per algorithm:
--            fixed_window   <key>:<idx>                  idx = floor(now / W)
--            sliding_window <key>:<idx>, <key>:<idx-1>
--            sliding_log    <key>:log (zset), <key>:seq (member counter)
--            token_bucket   <key>:tat
-- ARGV     = n, then per spec: algorithm, limit, window_ms, burst, cost, then the mode:
--            0 decide: check all; charge all iff all allow
--            1 peek:   check all; write nothing
--            2 refund: undo a charge of `cost` made moments ago
--            3 reset:  delete every key of every spec (apigate extension, used by reset())
-- Returns  {allowed, then per spec: remaining, reset_ms, retry_after_ms}.
--
-- Time comes from the Redis server (TIME), in ms. Every key written gets its TTL here.
-- `remaining` describes what is charged: after the charge when the request was charged,
-- the untouched state otherwise (deny, peek). retry_after_ms is 0 for a spec that allowed.

local FIXED, SLIDING, LOG, TOKEN = 1, 2, 3, 4
local DECIDE, PEEK, REFUND, RESET = 0, 1, 2, 3

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function win_key(key, idx)
  return key .. ':' .. string.format('%d', idx)
end

local function nonneg(x)
  if x < 0 then return 0 end
  return x
end

-- Each checker returns a table: ok (bool), retry (ms, when not ok), and what its
-- state() / charge() need.

local function check_fixed(s)
  local idx = math.floor(now / s.w)
  local key = win_key(s.key, idx)
  local count = tonumber(redis.call('GET', key) or '0')
  local reset = (idx + 1) * s.w - now
  local ok = count + s.cost <= s.limit
  return {ok = ok, retry = reset, key = key, count = count, reset = reset}
end

local function state_fixed(s, c, charged)
  local used = c.count
  if charged then used = used + s.cost end
  return nonneg(s.limit - used), c.reset
end

local function charge_fixed(s, c)
  redis.call('INCRBY', c.key, s.cost)
  redis.call('PEXPIRE', c.key, c.reset + 1000)
end

-- Smallest t >= 0 with est(now + t) + cost <= limit, assuming no other charge; capped at
-- reset + W (where the current window has fully slid out).
local function sliding_retry(s, prev, curr, elapsed, reset)
  local cap = reset + s.w
  local room = s.limit - s.cost
  if room < 0 then return cap end
  if prev > 0 and room - curr >= 0 then
    return math.ceil((s.w - elapsed) - (room - curr) * s.w / prev)
  end
  if curr == 0 then return reset end
  local into = s.w - room * s.w / curr
  if into < 0 then into = 0 end
  local r = math.ceil(reset + into)
  if r > cap then return cap end
  return r
end

local function check_sliding(s)
  local idx = math.floor(now / s.w)
  local key = win_key(s.key, idx)
  local curr = tonumber(redis.call('GET', key) or '0')
  local prev = tonumber(redis.call('GET', win_key(s.key, idx - 1)) or '0')
  local elapsed = now - idx * s.w
  local est = prev * (s.w - elapsed) / s.w + curr
  local reset = (idx + 1) * s.w - now
  local ok = est + s.cost <= s.limit
  local retry = 0
  if not ok then retry = sliding_retry(s, prev, curr, elapsed, reset) end
  return {ok = ok, retry = retry, key = key, est = est, reset = reset}
end

local function state_sliding(s, c, charged)
  local used = c.est
  if charged then used = used + s.cost end
  return nonneg(math.floor(s.limit - used)), c.reset
end

local function charge_sliding(s, c)
  redis.call('INCRBY', c.key, s.cost)
  redis.call('PEXPIRE', c.key, 2 * s.w + 1000)
end

local function check_log(s)
  local key = s.key .. ':log'
  local floor_ = now - s.w
  local card = redis.call('ZCOUNT', key, '(' .. floor_, '+inf')
  local ok = card + s.cost <= s.limit
  local retry = 0
  if not ok then
    local need = card + s.cost - s.limit
    if need > card then
      retry = s.w
    else
      local oldest = redis.call('ZRANGEBYSCORE', key, '(' .. floor_, '+inf',
        'WITHSCORES', 'LIMIT', need - 1, 1)
      retry = nonneg(tonumber(oldest[2]) + s.w - now)
    end
  end
  return {ok = ok, retry = retry, key = key, card = card}
end

local function state_log(s, c, charged)
  local used = c.card
  local newest
  if charged then
    used = used + s.cost
    newest = now
  elseif c.card > 0 then
    newest = tonumber(redis.call('ZRANGE', c.key, -1, -1, 'WITHSCORES')[2])
  end
  local reset = 0
  if newest then reset = nonneg(newest + s.w - now) end
  return nonneg(s.limit - used), reset
end

local function charge_log(s, c)
  local seq_key = s.key .. ':seq'
  local last = redis.call('INCRBY', seq_key, s.cost)
  redis.call('PEXPIRE', seq_key, s.w + 1000)
  redis.call('ZREMRANGEBYSCORE', c.key, '-inf', now - s.w)
  if s.cost == 0 then return end
  local args = {}
  for i = s.cost - 1, 0, -1 do
    args[#args + 1] = now
    args[#args + 1] = now .. ':' .. (last - i)
  end
  redis.call('ZADD', c.key, unpack(args))
  redis.call('PEXPIRE', c.key, s.w + 1000)
end

local function check_token(s)
  local key = s.key .. ':tat'
  local per = s.w / s.limit
  local tolerance = (s.limit + s.burst) * per
  local tat = tonumber(redis.call('GET', key) or now)
  local base = math.max(tat, now)
  local new_tat = base + s.cost * per
  local ok = new_tat - now <= tolerance
  local retry = 0
  if not ok then retry = math.ceil((new_tat - now) - tolerance) end
  return {ok = ok, retry = retry, key = key, per = per, tolerance = tolerance,
          base = base, new_tat = new_tat}
end

local function state_token(s, c, charged)
  local after = c.base
  if charged then after = c.new_tat end
  local remaining = math.floor((c.tolerance - (after - now)) / c.per)
  return nonneg(remaining), math.ceil(c.base - now)
end

local function charge_token(s, c)
  redis.call('SET', c.key, string.format('%.17g', c.new_tat),
    'PX', math.ceil(c.new_tat - now) + 1000)
end

local CHECK = {[FIXED] = check_fixed, [SLIDING] = check_sliding, [LOG] = check_log,
               [TOKEN] = check_token}
local STATE = {[FIXED] = state_fixed, [SLIDING] = state_sliding, [LOG] = state_log,
               [TOKEN] = state_token}
local CHARGE = {[FIXED] = charge_fixed, [SLIDING] = charge_sliding, [LOG] = charge_log,
                [TOKEN] = charge_token}

local function refund(s)
  if s.alg == FIXED or s.alg == SLIDING then
    local key = win_key(s.key, math.floor(now / s.w))
    local count = tonumber(redis.call('GET', key))
    if count and count >= s.cost then redis.call('DECRBY', key, s.cost) end
  elseif s.alg == LOG then
    redis.call('ZPOPMAX', s.key .. ':log', s.cost)
  else
    local key = s.key .. ':tat'
    local tat = tonumber(redis.call('GET', key))
    if tat then
      tat = tat - s.cost * s.w / s.limit
      if tat <= now then
        redis.call('DEL', key)
      else
        redis.call('SET', key, string.format('%.17g', tat), 'PX', math.ceil(tat - now) + 1000)
      end
    end
  end
end

local function reset(s)
  local idx = math.floor(now / s.w)
  redis.call('DEL', win_key(s.key, idx), win_key(s.key, idx - 1), s.key .. ':log',
    s.key .. ':seq', s.key .. ':tat')
end

local n = tonumber(ARGV[1])
local mode = tonumber(ARGV[2 + 5 * n])
if not n or n < 1 or n ~= #KEYS or #ARGV ~= 2 + 5 * n or not mode or mode < DECIDE
    or mode > RESET then
  return redis.error_reply('ERR apigate decide: bad arguments')
end
local specs = {}
for i = 1, n do
  local b = 1 + 5 * (i - 1)
  local s = {key = KEYS[i], alg = tonumber(ARGV[b + 1]), limit = tonumber(ARGV[b + 2]),
             w = tonumber(ARGV[b + 3]), burst = tonumber(ARGV[b + 4]),
             cost = tonumber(ARGV[b + 5])}
  if not CHECK[s.alg] or not s.limit or s.limit < 1 or not s.w or s.w < 1
      or not s.cost or s.cost < 0 or not s.burst or s.burst < 0 then
    return redis.error_reply('ERR apigate decide: bad spec ' .. i)
  end
  specs[i] = s
end

if mode == RESET then
  for i = 1, n do reset(specs[i]) end
  return {1}
end
if mode == REFUND then
  for i = 1, n do refund(specs[i]) end
  mode = PEEK
end

local checks = {}
local allowed = true
for i = 1, n do
  checks[i] = CHECK[specs[i].alg](specs[i])
  if not checks[i].ok then allowed = false end
end
local charged = allowed and mode == DECIDE
local out = {allowed and 1 or 0}
for i = 1, n do
  local s, c = specs[i], checks[i]
  if charged then CHARGE[s.alg](s, c) end
  local remaining, reset_ms = STATE[s.alg](s, c, charged)
  out[#out + 1] = remaining
  out[#out + 1] = reset_ms
  out[#out + 1] = c.ok and 0 or c.retry
end
return out
