-- Appends a group of events atomically: for each event, in order, bump its channel's sequence,
-- XADD it with the sequence as the stream id, and PUBLISH it on the bus. The `#!lua` line that
-- redis_log.rs puts before this text makes Redis (7.0+) refuse the whole script up front when it
-- is out of memory, instead of failing at a write half-way; every other check happens in pass 1,
-- before the first write, so a script that fails writes nothing.
--
-- ARGV: prefix, now_ms, known epoch ('' for none), idle ttl ms ('0' for none), event count, then
-- per event: app, channel, event, data, user id, except socket (the last two '-' when absent,
-- '+' followed by the value when present).
-- Returns: the epoch, then the sequence and timestamp of each event, all as strings.
--
-- Lua numbers are doubles: exact up to 2^53, and `tostring` prints big ones as 1.7e+15. Every
-- sequence and time is printed with `fmt` and checked against MAX_EXACT.

local FIELDS_PER_EVENT = 6
local MAX_EXACT = 9007199254740991

local prefix = ARGV[1]
local now_ms = tonumber(ARGV[2])
local known_epoch = ARGV[3]
local ttl_ms = tonumber(ARGV[4])
local count = tonumber(ARGV[5])

local function fmt(n)
  return string.format('%.0f', n)
end

local function optional(value)
  if string.sub(value, 1, 1) == '+' then
    return string.sub(value, 2)
  end
  return nil
end

local function check_type(key, wanted)
  local found = redis.call('TYPE', key)['ok']
  if found ~= 'none' and found ~= wanted then
    error('ERR reprise: key ' .. key .. ' holds a ' .. found .. ', not a ' .. wanted)
  end
end

-- Pass 1: read, compute and validate. No writes.

local epoch_key = prefix .. ':epoch'
local lost_key = prefix .. ':lost_at_ms'
local epoch = redis.call('GET', epoch_key)
local lost_at = redis.call('GET', lost_key)
local new_epoch = false
local record_loss = false
if known_epoch ~= '' and epoch ~= known_epoch and not lost_at then
  -- This node saw another epoch: Redis lost its data since (restarted empty, flushed). Every
  -- channel created from now on is seeded above any sequence handed out before.
  lost_at = fmt(now_ms)
  record_loss = true
end
if not epoch then
  local time = redis.call('TIME')
  new_epoch = time[1] .. '.' .. time[2]
  epoch = new_epoch
end

local states = {}
local order = {}
local appended = {}
for i = 0, count - 1 do
  local base = 6 + i * FIELDS_PER_EVENT
  local app, channel = ARGV[base], ARGV[base + 1]
  local name = app .. ':' .. channel
  local state = states[name]
  if not state then
    state = {
      app = app,
      channel = channel,
      log = prefix .. ':log:' .. name,
      meta = prefix .. ':meta:' .. name,
      set = prefix .. ':channels:' .. app,
    }
    check_type(state.log, 'stream')
    check_type(state.meta, 'hash')
    check_type(state.set, 'set')
    local meta = redis.call('HMGET', state.meta, 'seq', 'ts')
    if meta[1] then
      state.seq = tonumber(meta[1])
      state.ts = tonumber(meta[2])
    else
      -- No meta: a new channel, or one whose record is gone (Redis lost it, it expired while
      -- idle, or its stream outlived it). The last three are seeded: their first sequence is
      -- Redis's time in microseconds, above any sequence handed out before, and their
      -- compaction mark covers every cursor from before.
      local expired = redis.call('SISMEMBER', state.set, channel) == 1
      local orphan = redis.call('EXISTS', state.log) == 1
      if lost_at or expired or orphan then
        local time = redis.call('TIME')
        local seed = math.max(tonumber(time[1]) * 1000000 + tonumber(time[2]), now_ms * 1000)
        local mark_ms = now_ms
        if lost_at and not expired and not orphan then
          mark_ms = tonumber(lost_at)
        end
        state.seq = seed - 1
        state.ts = mark_ms
        state.mark = { fmt(seed - 1), fmt(mark_ms) }
      else
        state.seq = 0
        state.ts = 0
      end
    end
    states[name] = state
    order[#order + 1] = state
  end
  if state.seq + 1 > MAX_EXACT then
    error('ERR reprise: channel ' .. name .. ' has run out of sequence numbers')
  end
  state.seq = state.seq + 1
  state.ts = math.max(now_ms, state.ts)
  appended[#appended + 1] = { state = state, base = base, seq = fmt(state.seq), ts = fmt(state.ts) }
end

-- Pass 2: write.

if new_epoch then
  redis.call('SET', epoch_key, new_epoch)
end
if record_loss then
  redis.call('SET', lost_key, lost_at)
end

for _, state in ipairs(order) do
  if state.mark then
    -- An orphaned stream's events are all below the mark: they go.
    redis.call('DEL', state.log)
    redis.call('HSET', state.meta, 'cseq', state.mark[1], 'cts', state.mark[2])
  end
end

local bus = prefix .. ':bus'
local result = { epoch }
for _, item in ipairs(appended) do
  local state, base = item.state, item.base
  local event, data = ARGV[base + 2], ARGV[base + 3]
  local user_id, except = optional(ARGV[base + 4]), optional(ARGV[base + 5])
  if user_id then
    redis.call('XADD', state.log, item.seq .. '-0', 't', item.ts, 'e', event, 'd', data, 'u', user_id)
  else
    redis.call('XADD', state.log, item.seq .. '-0', 't', item.ts, 'e', event, 'd', data)
  end
  redis.call('PUBLISH', bus, cjson.encode({
    k = 'ev', a = state.app, c = state.channel, s = item.seq, t = item.ts,
    e = event, d = data, u = user_id, x = except,
  }))
  result[#result + 1] = item.seq
  result[#result + 1] = item.ts
end

for _, state in ipairs(order) do
  redis.call('HSET', state.meta, 'seq', fmt(state.seq), 'ts', fmt(state.ts))
  redis.call('SADD', state.set, state.channel)
  if ttl_ms > 0 then
    redis.call('PEXPIRE', state.log, ttl_ms)
    redis.call('PEXPIRE', state.meta, ttl_ms)
  end
end

return result
