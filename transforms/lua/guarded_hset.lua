-- Guarded write of one entity's features into its hash (default layout).
-- KEYS[1]: the entity hash, e.g. features:user:42
-- ARGV[1]: key TTL in ms (0: none); then groups of 4: field, value, as_of_ms, final (1/0).
-- A field is written only if its as_of is newer than the stored one, or equal
-- and the write changes something without downgrading: a final value replaces
-- a speculative one, a late repair replaces a final one, a speculative one never
-- replaces a final one, and an identical write (a replay) is a no-op.
-- Returns the number of fields not written.

-- greater(a, b) comes from common.lua.

local key = KEYS[1]
local ttl = tonumber(ARGV[1])
local now = redis.call('TIME')
local updated = now[1] .. string.format('%03d', math.floor(tonumber(now[2]) / 1000))
local rejected = 0
for i = 2, #ARGV, 4 do
  local field, value, as_of, final = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local stored = redis.call('HMGET', key, field .. ':as_of', field .. ':final', field)
  local accept
  if not stored[1] or greater(as_of, stored[1]) then
    accept = true
  elseif as_of == stored[1] then
    -- same as_of: never final -> speculative; otherwise only a real change
    -- (a finalization or a repaired value), so a replay rewrites nothing
    accept = not (stored[2] == '1' and final ~= '1')
      and (final ~= stored[2] or value ~= stored[3])
  else
    accept = false
  end
  if accept then
    redis.call('HSET', key, field, value, field .. ':as_of', as_of,
      field .. ':final', final, field .. ':updated_at', updated)
  else
    rejected = rejected + 1
  end
end
if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
return rejected
