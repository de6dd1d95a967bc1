-- Shared by read.lua and compact.lua (prepended to each): finding entries in a channel's stream.
-- A stream entry's id is "<seq>-0"; its field `t` is the event's timestamp in ms. Within a
-- channel, sequence and time grow together, so "(t, seq) is above a bound" holds on a suffix of
-- the stream and its negation on a prefix: both are found by bisection, O(log n) lookups.

local function fmt(n)
  return string.format('%.0f', n)
end

-- 'inf' stands for a bound above every sequence (an id whose middle bits are not zero sorts
-- after each of ours with the same time).
local function number(text)
  if text == 'inf' then
    return math.huge
  end
  return tonumber(text)
end

local function entry_seq(entry)
  return tonumber(string.match(entry[1], '^(%d+)'))
end

local function entry_field(entry, name)
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == name then
      return fields[i + 1]
    end
  end
  return nil
end

local function entry_ts(entry)
  return tonumber(entry_field(entry, 't'))
end

local function first_entry(log)
  return redis.call('XRANGE', log, '-', '+', 'COUNT', 1)[1]
end

local function last_entry(log)
  return redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)[1]
end

-- The smallest sequence s in [first, last] such that `holds` is true of the first entry at or
-- after s, given that it is false at `first` and true at `last` (so it holds on a suffix).
local function bisect(log, first, last, holds)
  local lo, hi = first, last
  while hi - lo > 1 do
    local mid = math.floor((lo + hi) / 2)
    local entry = redis.call('XRANGE', log, fmt(mid), '+', 'COUNT', 1)[1]
    if holds(entry) then
      hi = mid
    else
      lo = mid
    end
  end
  return hi
end

-- The sequence at which the entries whose (t, seq) is above (ts, seq) start; nil if none is.
local function start_above(log, ts, seq)
  local above = function(entry)
    local t = entry_ts(entry)
    return t > ts or (t == ts and entry_seq(entry) > seq)
  end
  local first, last = first_entry(log), last_entry(log)
  if not first or not above(last) then
    return nil
  end
  if above(first) then
    return entry_seq(first)
  end
  return bisect(log, entry_seq(first), entry_seq(last), above)
end
