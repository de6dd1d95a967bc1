-- Reads one channel in a single snapshot: its meta, where the cursor falls in its stream, and up
-- to `limit` events from there. The caller decides `recovered` from what this returns.
--
-- ARGV: prefix, app, channel, mode ('oldest', 'above'), bound ts, bound seq (a number or 'inf'),
-- the cursor's exact id '<seq>-0' to look up ('' for none), the cursor's timestamp, limit.
-- Returns, as strings ('' for absent): epoch, lost_at_ms, in_channel_set ('1'/'0'), head seq,
-- head ts, compacted seq, compacted ts, first seq, first ts, cursor found ('1'/'0'), then per
-- event: seq, ts, event, data, user id ('-' absent, '+' followed by it).

local prefix, app, channel, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local bound_ts, bound_seq = number(ARGV[5]), number(ARGV[6])
local cursor_id, cursor_ts, limit = ARGV[7], ARGV[8], tonumber(ARGV[9])

local name = app .. ':' .. channel
local log, meta_key = prefix .. ':log:' .. name, prefix .. ':meta:' .. name
local epoch = redis.call('GET', prefix .. ':epoch') or ''
local lost_at = redis.call('GET', prefix .. ':lost_at_ms') or ''
local meta = redis.call('HMGET', meta_key, 'seq', 'ts', 'cseq', 'cts')
if not meta[1] then
  local listed = redis.call('SISMEMBER', prefix .. ':channels:' .. app, channel)
  return { epoch, lost_at, tostring(listed), '', '', '', '', '', '', '0' }
end

local first = first_entry(log)
local found = '0'
local start = nil
if mode == 'oldest' then
  start = first and entry_seq(first)
else
  if cursor_id ~= '' then
    local at = redis.call('XRANGE', log, cursor_id, cursor_id)[1]
    if at and entry_field(at, 't') == cursor_ts then
      found = '1'
      start = entry_seq(at) + 1
    end
  end
  if found == '0' then
    start = start_above(log, bound_ts, bound_seq)
  end
end

local result = {
  epoch, lost_at, '1', meta[1], meta[2], meta[3] or '', meta[4] or '',
  first and fmt(entry_seq(first)) or '', first and entry_field(first, 't') or '', found,
}
if start and limit > 0 then
  for _, entry in ipairs(redis.call('XRANGE', log, fmt(start), '+', 'COUNT', limit)) do
    local user_id = entry_field(entry, 'u')
    result[#result + 1] = fmt(entry_seq(entry))
    result[#result + 1] = entry_field(entry, 't')
    result[#result + 1] = entry_field(entry, 'e')
    result[#result + 1] = entry_field(entry, 'd')
    result[#result + 1] = user_id and ('+' .. user_id) or '-'
  end
end
return result
