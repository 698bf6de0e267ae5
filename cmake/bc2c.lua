-- Build step: compile one Lua module to LuaJIT bytecode (debug info kept, so tracebacks name
-- lua/tunnel/<file>.lua:<line>) and write it as a static C array.
--   luajit cmake/bc2c.lua <symbol> <source.lua> <out.c>
-- The array is static on purpose: LuaJIT's require also looks for exported luaJIT_BC_*
-- symbols, which would shadow the source tree in TUNNEL_LUA_DEV mode.
local sym, src, out = arg[1], arg[2], arg[3]
local fn = assert(loadfile(src))
local bc = string.dump(fn, false)
local parts = { ("static const unsigned char %s[] = {\n"):format(sym) }
local line = {}
for i = 1, #bc do
  line[#line + 1] = tostring(bc:byte(i))
  if #line == 24 then
    parts[#parts + 1] = table.concat(line, ",") .. ",\n"
    line = {}
  end
end
if #line > 0 then
  parts[#parts + 1] = table.concat(line, ",") .. "\n"
end
parts[#parts + 1] = "};\n"
local f = assert(io.open(out, "wb"))
f:write(table.concat(parts))
f:close()
