-- Tidings: publish one update on the Redis bus (wire format v1). Atomic.
-- A service in any language may run this script itself (EVAL / EVALSHA): it then publishes
-- exactly as `POST /.well-known/mercure` on an instance would. See docs/wire-format.md.
--
-- KEYS: none (every key is under the prefix; single Redis, not Redis Cluster)
-- ARGV[1]  the cluster's key prefix (`redis-prefix`, default "tidings")
-- ARGV[2]  the message: wire-format v1 JSON
-- ARGV[3]  publish time, microseconds since the Unix epoch (0: unknown)
-- ARGV[4]  the update's id, the same as the message's "id" ("" when the message has none)
-- Returns {position, receivers}: the update's position (its stream entry id, or "0-<n>"
-- without history) and how many messages Redis sent to instances for it.
-- Idempotent by id: when ARGV[4] names an update published within `history-id-ttl` seconds,
-- nothing is stored or sent again and the first one's position is returned with 0 receivers
-- (so a publisher may retry a publish whose answer it did not get, with the same id) — unless
-- the stream still holds that update and its topics differ: then the error
-- 'ERR tidings: id conflict' (an id taken on other topics is not silently dropped: a
-- publisher of one topic could otherwise suppress another's updates by taking their ids).
local p = ARGV[1]
local ok, message = pcall(cjson.decode, ARGV[2])
if not ok or type(message) ~= 'table' or type(message.topics) ~= 'table' or #message.topics == 0 then
  return redis.error_reply('ERR tidings: the message is not a wire-format message with a non-empty "topics" array')
end
for _, topic in ipairs(message.topics) do
  if type(topic) ~= 'string' then
    return redis.error_reply('ERR tidings: every topic must be a string')
  end
end
local config = redis.call('HMGET', p .. ':config', 'history-size', 'history-id-ttl', 'history-ttl')
local size = tonumber(config[1]) or 1000
local ttl = tonumber(config[2]) or 86400
local age = tonumber(config[3]) or 0
-- The same topics, in any order (repeats do not count): a retry's.
local function same(a, b)
  local function set(topics)
    local s, n = {}, 0
    for _, topic in ipairs(topics) do
      if not s[topic] then
        s[topic] = true
        n = n + 1
      end
    end
    return s, n
  end
  local sa, na = set(a.topics)
  local sb, nb = set(b.topics)
  if na ~= nb then
    return false
  end
  for topic in pairs(sa) do
    if not sb[topic] then
      return false
    end
  end
  return true
end
if ARGV[4] ~= '' then
  local first = redis.call('GET', p .. ':id:' .. ARGV[4])
  if first then
    if size > 0 then
      local entry = redis.call('XRANGE', p .. ':stream', first, first)[1]
      if entry then
        local fields = entry[2]
        for i = 1, #fields, 2 do
          if fields[i] == 'u' then
            local read, stored = pcall(cjson.decode, fields[i + 1])
            if read and type(stored) == 'table' and type(stored.topics) == 'table' and not same(stored, message) then
              return redis.error_reply('ERR tidings: id conflict: the id names an update on other topics')
            end
          end
        end
      end
    end
    return {first, 0}
  end
end
local position
if size > 0 then
  position = redis.call('XADD', p .. ':stream', 'MAXLEN', '~', size, '*', 'u', ARGV[2], 't', ARGV[3])
  local oldest
  if age > 0 then
    -- Entries older than history-ttl go too (whole nodes at a time: `~`).
    local now = redis.call('TIME')
    oldest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - age * 1000
    redis.call('XTRIM', p .. ':stream', 'MINID', '~', oldest)
  end
  -- Each topic's own history, <prefix>:h:<topic>, at the same position, trimmed the same
  -- way: a subscriber of exact topics resumes by reading only them. An idle topic's history
  -- goes once the stream no longer holds anything of it.
  local keep = 2 * ((age > 0) and age or ttl) + 60
  local indexed = {}
  for _, topic in ipairs(message.topics) do
    if not indexed[topic] then
      indexed[topic] = true
      local key = p .. ':h:' .. topic
      local added = redis.pcall('XADD', key, 'MAXLEN', '~', size, position, 'u', ARGV[2], 't', ARGV[3])
      if type(added) == 'table' and added.err then
        if string.find(added.err, 'smaller', 1, true) then
          -- Positions went backwards (Redis lost the stream and its clock is behind the
          -- topic's newest entry): that history is stale; start it again.
          redis.call('DEL', key)
          redis.call('XADD', key, 'MAXLEN', '~', size, position, 'u', ARGV[2], 't', ARGV[3])
        else
          -- Not a stream (written by something else): the update is stored and sent all the
          -- same; only a resume of exact topics would not find it there.
          redis.log(redis.LOG_WARNING, 'tidings: cannot index ' .. key .. ': ' .. added.err)
        end
      end
      if oldest then
        redis.call('XTRIM', key, 'MINID', '~', oldest)
      end
      redis.call('EXPIRE', key, keep)
    end
  end
else
  position = '0-' .. redis.call('INCR', p .. ':seq')
end
local id = ARGV[4]
if id == '' then
  id = 'urn:tidings:' .. position
end
redis.call('SET', p .. ':id:' .. id, position, 'EX', ttl)
redis.call('SET', p .. ':newest', id)
-- Broadcast routing listens on <prefix>:all, interest routing on <prefix>:t:<topic> (or on
-- <prefix>:all while it needs everything): an instance hears each update at least once, and
-- a channel nobody listens to costs nothing.
local payload = position .. ' ' .. ARGV[3] .. ' ' .. ARGV[2]
local receivers = redis.call('PUBLISH', p .. ':all', payload)
local seen = {}
for _, topic in ipairs(message.topics) do
  if not seen[topic] then
    seen[topic] = true
    receivers = receivers + redis.call('PUBLISH', p .. ':t:' .. topic, payload)
  end
end
return {position, receivers}
