-- apigate: check (and charge) several rate limits in one atomic step.
--
-- KEYS[i]  = spec i's key (all keys share one {hash tag}); suffixes used per algorithm:
--            fixed_window   <key>:<idx>                  idx = floor(now / W)
--            sliding_window <key>:<idx>, <key>:<idx-1>
--            sliding_log    <key>:log (zset; member "<now>:<n>" with n zero-padded)
--            token_bucket   <key>:tat (float ms, "%.17g")
-- ARGV     = n, then per spec: algorithm (1..4), limit, window_ms, burst, cost, then the mode:
--            0 decide: check all; charge all iff all allow
--            1 peek:   check all; write nothing
--            2 refund: undo a charge of `cost` made moments ago, then answer as peek; one more
--                      argument follows the mode: the time of the charge (what mode 4
--                      answered; 0: unknown), so a window that rolled over in between is not
--                      the one refunded and a log loses the charge's own entries
--            3 reset:  delete every key of every spec, then answer as peek (apigate
--                      extension, used by reset())
--            4 decide, stamped: as 0, and the group's reply ends with the time it was decided
--                      at (apigate extension, for the refunds of a decision across slots)
--            5 joined: k decisions of this one spec (fixed_window or sliding_window; k follows
--                      the mode), decided one after another: the first n that fit are charged
--                      and n (0..k) stands in the reply where `allowed` does; remaining is
--                      after those n charges, retry_after_ms is for a request of `cost` after
--                      them (0 when n = k). Any other spec answers -1 (apigate extension: a
--                      batch's decisions of one hot key cost one group)
-- Returns  {allowed, then per spec: remaining, reset_ms, retry_after_ms}.
-- Batches (apigate extension): several such groups may follow each other, KEYS and ARGV
-- concatenated in the same order; the reply is the groups' replies concatenated. Each group
-- is checked and charged on its own, as if it were a call of its own. A group whose spec is
-- invalid answers allowed = -1 (and zeros) without touching the others.
--
-- Time comes from the Redis server (TIME), in ms. Every key written gets its TTL in the same
-- command (SET PX) or right after it in this script (ZADD + PEXPIRE, INCRBY + PEXPIRE). `remaining` describes
-- what is charged: after the charge when the request was charged, the untouched state
-- otherwise (deny, peek). retry_after_ms is 0 for a spec that allowed.
-- The script body runs on every call, so it avoids closures and redis.call()s it can spare:
-- each redis.call costs about as much as the rest of the script.

local FIXED, SLIDING, LOG, TOKEN = 1, 2, 3, 4
local DECIDE, PEEK, REFUND, RESET, STAMPED, JOINED = 0, 1, 2, 3, 4, 5

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function win_key(key, idx)
  return key .. ':' .. string.format('%d', idx)
end

-- A spec's numbers (tonumber'd, nil when not a number) are usable.
local function valid(alg, limit, w, burst, cost)
  return alg and alg >= FIXED and alg <= TOKEN and limit and limit >= 1 and w and w >= 1
    and burst and burst >= 0 and cost and cost >= 0
end

-- Smallest t >= 0 with est(now + t) + cost <= limit for a sliding window, assuming no other
-- charge; capped at reset + W (where the current window has fully slid out).
local function sliding_retry(limit, w, cost, prev, curr, elapsed, reset)
  local cap = reset + w
  local room = limit - cost
  if room < 0 then return cap end
  if prev > 0 and room - curr >= 0 then
    return math.ceil((w - elapsed) - (room - curr) * w / prev)
  end
  if curr == 0 then return reset end
  local into = w - room * w / curr
  if into < 0 then into = 0 end
  return math.min(math.ceil(reset + into), cap)
end

-- GCRA for a charge of `cost` on the bucket at `tkey`: allowed, then the theoretical arrival
-- time before (`base`, never in the past) and after the charge, one token's interval and the
-- tolerance, all in ms.
local function gcra(tkey, limit, w, burst, cost)
  local per = w / limit
  local tolerance = (limit + burst) * per
  local tat = tonumber(redis.call('GET', tkey) or now)
  local base = math.max(tat, now)
  local new_tat = base + cost * per
  -- tat is epoch ms as a double (about 2e-4 ms of precision): without the slack a full
  -- bucket could refuse its last token when (limit + burst) * per rounds up.
  return new_tat - now <= tolerance + 0.001, base, new_tat, per, tolerance
end

-- `at` is the charge's time (0: unknown, taken as now): a window that rolled over since gets
-- the charge back, and a log loses entries of that very millisecond.
local function refund(key, alg, limit, w, cost, at)
  if alg == FIXED or alg == SLIDING then
    local wkey = win_key(key, math.floor((at > 0 and at or now) / w))  -- the window charged
    local count = tonumber(redis.call('GET', wkey))
    if count and count >= cost then redis.call('DECRBY', wkey, cost) end
  elseif alg == LOG then
    local lkey = key .. ':log'
    if cost > 0 and at > 0 then
      local charged = redis.call('ZRANGEBYSCORE', lkey, at, at, 'LIMIT', 0, cost)
      if #charged > 0 then redis.call('ZREM', lkey, unpack(charged)) end
    elseif cost > 0 then
      redis.call('ZPOPMAX', lkey, cost)
    end
  else
    local tkey = key .. ':tat'
    local tat = tonumber(redis.call('GET', tkey))
    if tat then
      tat = tat - cost * w / limit
      if tat <= now then
        redis.call('DEL', tkey)
      else
        redis.call('SET', tkey, string.format('%.17g', tat), 'PX', math.ceil(tat - now) + 1000)
      end
    end
  end
end

-- One group: specs at KEYS[k0 + i] and ARGV[a0 + 1 + 5 * (i - 1) ...]; appends to `out`.
local function decide(k0, a0, n, mode, out, at)
  local stamped = mode == STAMPED
  if stamped then mode = DECIDE end
  local specs = {}
  for i = 1, n do
    local b = a0 + 5 * (i - 1)
    local alg, limit, w = tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
    local burst, cost = tonumber(ARGV[b + 5]), tonumber(ARGV[b + 6])
    if not valid(alg, limit, w, burst, cost) then
      specs = nil
      break
    end
    specs[i] = {KEYS[k0 + i], alg, limit, w, burst, cost}
  end
  if not specs then
    out[#out + 1] = -1
    for _ = 1, 3 * n do out[#out + 1] = 0 end
    if stamped then out[#out + 1] = now end
    return
  end
  for i = 1, n do
    local key, alg, limit, w, _, cost = unpack(specs[i])
    if mode == RESET then
      local idx = math.floor(now / w)
      redis.call('DEL', win_key(key, idx), win_key(key, idx - 1), key .. ':log', key .. ':tat')
    elseif mode == REFUND then
      refund(key, alg, limit, w, cost, at)
    end
  end
  if mode == RESET or mode == REFUND then mode = PEEK end

  -- Check every spec. Each check row holds: ok, retry, remaining uncharged / charged,
  -- reset uncharged / charged, and the write that charges it (key, value, ttl).
  local rows = {}
  local allowed = true
  for i = 1, n do
    local key, alg, limit, w, burst, cost = unpack(specs[i])
    local r
    if alg == FIXED then
      local idx = math.floor(now / w)
      local wkey = win_key(key, idx)
      local count = tonumber(redis.call('GET', wkey) or '0')
      local reset = (idx + 1) * w - now
      r = {count + cost <= limit, reset, limit - count, limit - count - cost, reset, reset,
           wkey, count + cost, reset + 1000}
    elseif alg == SLIDING then
      local idx = math.floor(now / w)
      local wkey = win_key(key, idx)
      local got = redis.call('MGET', wkey, win_key(key, idx - 1))
      local curr, prev = tonumber(got[1] or '0'), tonumber(got[2] or '0')
      local elapsed = now - idx * w
      local est = prev * (w - elapsed) / w + curr
      local reset = (idx + 1) * w - now
      local ok = est + cost <= limit
      local retry = 0
      if not ok then retry = sliding_retry(limit, w, cost, prev, curr, elapsed, reset) end
      r = {ok, retry, math.floor(limit - est), math.floor(limit - est - cost), reset, reset,
           wkey, curr + cost, 2 * w + 1000}
    elseif alg == LOG then
      local lkey = key .. ':log'
      local card = redis.call('ZCOUNT', lkey, '(' .. (now - w), '+inf')
      local ok = card + cost <= limit
      local retry = 0
      if not ok then
        local need = card + cost - limit
        if need > card then
          retry = w
        else
          local oldest = redis.call('ZRANGEBYSCORE', lkey, '(' .. (now - w), '+inf',
            'WITHSCORES', 'LIMIT', need - 1, 1)
          retry = math.max(tonumber(oldest[2]) + w - now, 0)
        end
      end
      r = {ok, retry, limit - card, limit - card - cost, nil, w, lkey, card, w + 1000}
    else
      local tkey = key .. ':tat'
      local ok, base, new_tat, per, tolerance = gcra(tkey, limit, w, burst, cost)
      local retry = 0
      if not ok then retry = math.ceil((new_tat - now) - tolerance) end
      local reset = math.ceil(base - now)
      r = {ok, retry, math.floor((tolerance - (base - now)) / per),
           math.floor((tolerance - (new_tat - now)) / per), reset, reset,
           tkey, string.format('%.17g', new_tat), math.ceil(new_tat - now) + 1000}
    end
    if not r[1] then allowed = false end
    rows[i] = r
  end

  -- Charge (only if every spec allowed and this is a decision) and answer.
  local charged = allowed and mode == DECIDE
  out[#out + 1] = allowed and 1 or 0
  for i = 1, n do
    local r, alg, cost = rows[i], specs[i][2], specs[i][6]
    local remaining, reset
    if charged then
      remaining, reset = r[4], r[6]
      if alg ~= LOG then
        redis.call('SET', r[7], r[8], 'PX', r[9])
      elseif cost > 0 then
        redis.call('ZREMRANGEBYSCORE', r[7], '-inf', now - specs[i][4])
        local args = {}
        for k = 1, cost do
          args[2 * k - 1] = now
          args[2 * k] = string.format('%d:%09d', now, r[8] + k)
        end
        redis.call('ZADD', r[7], unpack(args))
        redis.call('PEXPIRE', r[7], r[9])
      end
    else
      remaining, reset = r[3], r[5]
      if alg == LOG then
        reset = 0
        if r[8] > 0 then
          local newest = redis.call('ZRANGE', r[7], -1, -1, 'WITHSCORES')
          reset = math.max(tonumber(newest[2]) + specs[i][4] - now, 0)
        end
      end
    end
    out[#out + 1] = math.max(remaining, 0)
    out[#out + 1] = reset
    out[#out + 1] = r[1] and 0 or r[2]
  end
  if stamped then out[#out + 1] = now end
end

-- The common group (one spec, a decision; or k of them on a window counter) without the
-- tables of decide(). The window counters are charged with INCRBY (the TTL set when INCRBY
-- created the key) and what did not fit taken back; the bucket is read, then written only if
-- it allows. Returns false for a sliding_log spec or a bad one (decide() answers those).
local function decide_one(key, alg, limit, w, burst, cost, out, o, k)
  if alg == LOG or not valid(alg, limit, w, burst, cost) or (k > 1 and alg == TOKEN) then
    return false
  end
  if alg == TOKEN then
    local tkey = key .. ':tat'
    local ok, base, new_tat, per, tolerance = gcra(tkey, limit, w, burst, cost)
    if ok then
      redis.call('SET', tkey, string.format('%.17g', new_tat), 'PX', math.ceil(new_tat - now) + 1000)
      out[o], out[o + 1] = 1, math.max(math.floor((tolerance - (new_tat - now)) / per), 0)
      out[o + 2], out[o + 3] = math.ceil(base - now), 0  -- reset: from tat before the charge
    else
      out[o], out[o + 1] = 0, math.max(math.floor((tolerance - (base - now)) / per), 0)
      out[o + 2], out[o + 3] = math.ceil(base - now), math.ceil((new_tat - now) - tolerance)
    end
    return true
  end
  local idx = math.floor(now / w)
  local wkey = win_key(key, idx)
  local reset = (idx + 1) * w - now
  local total = k * cost
  if alg == FIXED then
    local count = redis.call('INCRBY', wkey, total)
    if count == total then redis.call('PEXPIRE', wkey, reset + 1000) end
    if count <= limit then
      out[o], out[o + 1], out[o + 2], out[o + 3] = k, limit - count, reset, 0
    else
      local before, n = count - total, 0  -- n: how many fit one after another
      if cost > 0 and limit > before then n = math.floor((limit - before) / cost) end
      redis.call('DECRBY', wkey, (k - n) * cost)
      local curr = before + n * cost
      out[o], out[o + 1], out[o + 2], out[o + 3] = n, math.max(limit - curr, 0), reset, reset
    end
    return true
  end
  local prev = tonumber(redis.call('GET', win_key(key, idx - 1)) or '0')
  local elapsed = now - idx * w
  local est = prev * (w - elapsed) / w
  local count = redis.call('INCRBY', wkey, total)
  if count == total then redis.call('PEXPIRE', wkey, 2 * w + 1000) end
  if est + count <= limit then
    out[o], out[o + 1], out[o + 2], out[o + 3] = k, math.max(math.floor(limit - est - count), 0),
      reset, 0
  else
    local before, n = count - total, 0
    if cost > 0 then
      -- The same test as a lone decision's (est + count <= limit), so that float rounding
      -- in the division cannot let one more or one fewer through.
      n = math.max(math.min(math.floor((limit - est - before) / cost), k - 1), 0)
      while n > 0 and est + (before + n * cost) > limit do n = n - 1 end
      while n < k - 1 and est + (before + (n + 1) * cost) <= limit do n = n + 1 end
    end
    redis.call('DECRBY', wkey, (k - n) * cost)
    local curr = before + n * cost
    out[o], out[o + 1], out[o + 2] = n, math.max(math.floor(limit - est - curr), 0), reset
    out[o + 3] = sliding_retry(limit, w, cost, prev, curr, elapsed, reset)
  end
  return true
end

-- The groups, one after the other.
local out = {}
local k0, a0, nargs = 0, 0, #ARGV
while a0 < nargs do
  local n = tonumber(ARGV[a0 + 1])
  local mode = n and tonumber(ARGV[a0 + 2 + 5 * n])
  if not n or n < 1 or k0 + n > #KEYS or a0 + 2 + 5 * n > nargs or not mode or mode < DECIDE
      or mode > JOINED then
    return redis.error_reply('ERR apigate decide: bad arguments')
  end
  local used = 2 + 5 * n
  local at, k = 0, 1
  if mode == REFUND or mode == JOINED then  -- the charge's time, or k, follows the mode
    local extra = tonumber(ARGV[a0 + used + 1])
    if not extra or extra < 0 or (mode == JOINED and (n ~= 1 or extra < 1
        or extra ~= math.floor(extra))) then
      return redis.error_reply('ERR apigate decide: bad arguments')
    end
    if mode == REFUND then at = extra else k = extra end
    used = used + 1
  end
  if not (n == 1 and (mode == DECIDE or mode == JOINED) and decide_one(KEYS[k0 + 1],
      tonumber(ARGV[a0 + 2]), tonumber(ARGV[a0 + 3]), tonumber(ARGV[a0 + 4]),
      tonumber(ARGV[a0 + 5]), tonumber(ARGV[a0 + 6]), out, #out + 1, k)) then
    if mode == JOINED then  -- a spec that cannot be joined: refused
      local o = #out + 1
      out[o], out[o + 1], out[o + 2], out[o + 3] = -1, 0, 0, 0
    else
      decide(k0, a0, n, mode, out, at)
    end
  end
  k0, a0 = k0 + n, a0 + used
end
if k0 ~= #KEYS or #out == 0 then
  return redis.error_reply('ERR apigate decide: bad arguments')
end
return out
