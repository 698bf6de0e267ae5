-- config_check.lua: validate a tunnel configuration file with tunnel.config, the same checks
-- the real commands run. A valid file is printed in normalised form (defaults filled in,
-- relative paths resolved, aliases folded) as one `key = value` line per setting, with
-- secrets and tokens masked. An invalid file gets every problem listed, each with its
-- file:line:col, and exit status 1.
--
-- Run it:
--   tunnel examples/config_check.lua server.toml
--   tunnel examples/config_check.lua client.toml --complete
--     --complete also requires what a run needs (a server key, tokens, forwards, ...).
local tunnel = require "tunnel"
local config = require "tunnel.config"
local toml = require "tunnel.toml"

local path, complete = nil, false
for _, a in ipairs(arg) do
  if a == "--complete" then
    complete = true
  elseif not path and a:sub(1, 1) ~= "-" then
    path = a
  else
    path = nil
    break
  end
end
if not path then
  io.stderr:write("usage: tunnel examples/config_check.lua FILE.toml [--complete]\n")
  tunnel.exit(2)
end

local cfg, err = config.load(path, { complete = complete })
if not cfg then
  io.stderr:write(err, "\n")
  local n = select(2, err:gsub("\n", "")) + 1
  io.stderr:write(("%s: %d problem(s) found\n"):format(path, n))
  tunnel.exit(1)
end

-- Is the key at `keypath` (a list of names) marked sensitive in the schema?
local function sensitive(keypath)
  local spec = config.schema
  for _, name in ipairs(keypath) do
    if type(name) == "number" then
      spec = spec and spec.of
    else
      local found
      for _, f in ipairs(spec and spec.fields or {}) do
        if f.name == name then
          found = f
          break
        end
      end
      spec = found
    end
    if spec and spec.sensitive then
      return true
    end
  end
  return false
end

local function is_list(v)
  return toml.is_array(v) or (type(v) == "table" and (next(v) == nil or v[1] ~= nil))
end

local function literal(v)
  if type(v) == "string" then
    return ("%q"):format(v)
  elseif type(v) == "cdata" then
    return (tostring(v):gsub("[UL]+$", ""))
  end
  return tostring(v)
end

-- Print `t` as sorted `a.b.c = value` lines; lists of plain values stay on one line.
local function dump(t, keypath)
  local names = {}
  for k in pairs(t) do
    names[#names + 1] = k
  end
  table.sort(names, function(a, b)
    if type(a) == type(b) then
      return a < b -- list indexes in order, names alphabetically
    end
    return type(a) == "number"
  end)
  for _, k in ipairs(names) do
    local v = t[k]
    local kp = { unpack(keypath) }
    kp[#kp + 1] = k
    local label = table.concat(kp, "."):gsub("%.(%d+)", "[%1]")
    if sensitive(kp) then
      print(("%s = <hidden>"):format(label))
    elseif type(v) == "table" and is_list(v) and type(v[1]) ~= "table" then
      local items = {}
      for i, x in ipairs(v) do
        items[i] = literal(x)
      end
      print(("%s = [%s]"):format(label, table.concat(items, ", ")))
    elseif type(v) == "table" then
      dump(v, kp)
    else
      print(("%s = %s"):format(label, literal(v)))
    end
  end
end

print(("# %s is valid (role %s%s%s)"):format(path, tostring(cfg.role or "not set"),
  cfg.mode and (", mode " .. tostring(cfg.mode)) or "", complete and ", complete" or ""))
dump(cfg, {})
