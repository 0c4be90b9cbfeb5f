-- Shared by the guard scripts (prepended when they are loaded).

-- a > b for decimal integer strings of any length (Lua numbers are doubles:
-- epoch ms beyond 2^53 would compare wrongly as numbers)
local function greater(a, b)
  local neg_a, neg_b = a:sub(1, 1) == '-', b:sub(1, 1) == '-'
  if neg_a ~= neg_b then return neg_b end
  local da = neg_a and a:sub(2) or a
  local db = neg_b and b:sub(2) or b
  if da == db then return false end
  local bigger
  if #da ~= #db then bigger = #da > #db else bigger = da > db end
  if neg_a then return not bigger end
  return bigger
end
