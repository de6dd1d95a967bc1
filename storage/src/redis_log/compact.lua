-- Compacts one channel: finds the last entry that a rule removes (the rules remove a prefix),
-- raises the compaction mark in meta to it, then trims the stream up to it. One script, so no
-- reader sees the events gone without the mark raised.
--
-- ARGV: prefix, app, channel, keep_last, older_than_ms, before ts, before seq (each '' when the
-- rule is not set; before seq may be 'inf').
-- Returns: how many events were removed, as a string.

local prefix, app, channel = ARGV[1], ARGV[2], ARGV[3]
local keep_last, older_than = ARGV[4], ARGV[5]
local before_ts, before_seq = ARGV[6], ARGV[7]

local name = app .. ':' .. channel
local log, meta_key = prefix .. ':log:' .. name, prefix .. ':meta:' .. name
local meta = redis.call('HMGET', meta_key, 'seq', 'cseq', 'cts')
if not meta[1] then
  return '0'
end
local head_seq = tonumber(meta[1])
local first, last = first_entry(log), last_entry(log)
if not first then
  return '0'
end

local goes = function(entry)
  local seq, ts = entry_seq(entry), entry_ts(entry)
  if keep_last ~= '' and seq <= head_seq - number(keep_last) then
    return true
  end
  if older_than ~= '' and ts < number(older_than) then
    return true
  end
  if before_ts ~= '' then
    local bts, bseq = number(before_ts), number(before_seq)
    if ts < bts or (ts == bts and seq < bseq) then
      return true
    end
  end
  return false
end
local stays = function(entry)
  return not goes(entry)
end

local cut
if goes(last) then
  cut = last
elseif goes(first) then
  local first_kept = bisect(log, entry_seq(first), entry_seq(last), stays)
  cut = redis.call('XREVRANGE', log, fmt(first_kept - 1), '-', 'COUNT', 1)[1]
else
  return '0'
end

local cut_seq, cut_ts = entry_seq(cut), entry_ts(cut)
local old_seq, old_ts = tonumber(meta[2] or '0'), tonumber(meta[3] or '0')
if cut_ts > old_ts or (cut_ts == old_ts and cut_seq > old_seq) then
  redis.call('HSET', meta_key, 'cseq', fmt(cut_seq), 'cts', fmt(cut_ts))
end
return tostring(redis.call('XTRIM', log, 'MINID', fmt(cut_seq + 1)))
