-- Guarded write in the compatibility layout: HSET <seed_key> <entity_id> <json>.
-- KEYS[1]: the shared hash, e.g. user_features
-- ARGV[1]: entity id; then groups of 4: field, value (a JSON literal), as_of_ms, final.
-- The JSON document holds the features plus "_meta": {field: {"as_of": "...", "final": "1"}}.
-- Same guard rule as guarded_hset.lua. Returns the number of fields not written.

-- greater(a, b) comes from common.lua.

-- cjson.encode keeps 14 significant digits; %.17g round-trips every double.
local function encode(v)
  local t = type(v)
  if t == 'number' then
    if v == math.floor(v) and math.abs(v) < 1e15 then return string.format('%d', v) end
    return string.format('%.17g', v)
  elseif t == 'table' then
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys)
    local parts = {}
    for _, k in ipairs(keys) do parts[#parts + 1] = cjson.encode(k) .. ':' .. encode(v[k]) end
    return '{' .. table.concat(parts, ',') .. '}'
  end
  return cjson.encode(v)
end

local raw = redis.call('HGET', KEYS[1], ARGV[1])
local doc = raw and cjson.decode(raw) or {}
local meta = doc['_meta'] or {}
local rejected = 0
for i = 2, #ARGV, 4 do
  local field, value, as_of, final = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local stored = meta[field]
  local decoded = cjson.decode(value)
  local accept
  if not stored or greater(as_of, stored['as_of']) then
    accept = true
  elseif as_of == stored['as_of'] then
    accept = not (stored['final'] == '1' and final ~= '1')
      and (final ~= stored['final'] or encode(decoded) ~= encode(doc[field]))
  else
    accept = false
  end
  if accept then
    doc[field] = decoded
    meta[field] = {as_of = as_of, final = final}
  else
    rejected = rejected + 1
  end
end
doc['_meta'] = meta
redis.call('HSET', KEYS[1], ARGV[1], encode(doc))
return rejected
