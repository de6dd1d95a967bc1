-- Writes a channel's events with the ids they already have (a restore, or a move from a
-- single node's log). The caller checked the events against the head it read; this checks the
-- head is still that one, so a publish that slipped in between refuses the import instead of
-- interleaving with it.
-- ARGV: prefix, app, channel, expected head seq ('' for none), mark seq, mark ts ('' for none),
--       count, then per event: seq, ts, event, data, user ('+' then the id, or '-' for none).
local prefix, app, channel = ARGV[1], ARGV[2], ARGV[3]
local meta = prefix .. ':meta:' .. app .. ':' .. channel
local stream = prefix .. ':log:' .. app .. ':' .. channel
local head = redis.call('HGET', meta, 'seq')
if (head or '') ~= ARGV[4] then
    return redis.error_reply('IMPORT_RACE the channel changed while importing')
end
local count = tonumber(ARGV[7])
if ARGV[5] ~= '' then
    redis.call('HSET', meta, 'seq', ARGV[5], 'ts', ARGV[6], 'cseq', ARGV[5], 'cts', ARGV[6])
end
local last_seq, last_ts = nil, nil
for i = 0, count - 1 do
    local base = 8 + i * 5
    local fields = {'t', ARGV[base + 1], 'e', ARGV[base + 2], 'd', ARGV[base + 3]}
    if string.sub(ARGV[base + 4], 1, 1) == '+' then
        table.insert(fields, 'u')
        table.insert(fields, string.sub(ARGV[base + 4], 2))
    end
    redis.call('XADD', stream, ARGV[base] .. '-0', unpack(fields))
    last_seq, last_ts = ARGV[base], ARGV[base + 1]
end
if last_seq then
    redis.call('HSET', meta, 'seq', last_seq, 'ts', last_ts)
end
redis.call('SADD', prefix .. ':channels:' .. app, channel)
if redis.call('EXISTS', prefix .. ':epoch') == 0 then
    local t = redis.call('TIME')
    redis.call('SET', prefix .. ':epoch', t[1] .. t[2], 'NX')
end
return 1
