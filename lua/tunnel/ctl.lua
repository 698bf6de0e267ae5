--- The control socket: a REPL inside a live process, reached by `tunnel attach`
-- (see docs/api/tunnel.ctl.md; the wire protocol is in docs/ctl.md).
--
--   local ctl = require "tunnel.ctl"
--   local srv = assert(ctl.listen { name = "web" })   -- $XDG_RUNTIME_DIR/tunnel/web.sock
--   print(srv.path)
--   for _, t in ipairs(ctl.list()) do print(t.name, t.path) end
local uv = require "luv"
local cjson = require("cjson").new()
local repl = require "tunnel.repl"
local log = require "tunnel.log"
local core_host = require "tunnel.core.host"

local M = {}

local clog = log.group("ctl")
local servers = {} -- open servers of this process

--- Protocol version, sent in the hello line.
M.PROTOCOL = 1
--- A request line longer than this is answered with an error and the connection is closed.
M.MAX_REQUEST = 1024 * 1024
--- A client that lets more than this pile up unread in its replies is disconnected.
M.MAX_PENDING_WRITE = 16 * 1024 * 1024

local MODE_DIR, MODE_SOCK = tonumber("700", 8), tonumber("600", 8)

local function host_mod()
  -- tunnel.host holds the shutdown hooks; it is loaded lazily so this module also works in
  -- a state where the CLI has not set things up.
  local ok, h = pcall(require, "tunnel.host")
  return ok and h or nil
end

local function check_opts(opts, allowed, fname)
  if opts == nil then
    return {}
  end
  if type(opts) ~= "table" then
    error(fname .. ": options must be a table", 3)
  end
  for k in pairs(opts) do
    if not allowed[k] then
      error(fname .. ": unknown option '" .. tostring(k) .. "'", 3)
    end
  end
  return opts
end

--- The directory that holds the sockets: $XDG_RUNTIME_DIR/tunnel, else /tmp/tunnel-<uid>.
function M.dir()
  local xdg = os.getenv("XDG_RUNTIME_DIR")
  if xdg and xdg ~= "" then
    return (xdg:gsub("/+$", "")) .. "/tunnel"
  end
  return "/tmp/tunnel-" .. uv.os_get_passwd().uid
end

-- Make sure `dir` exists, is ours and is private. Returns true or nil, message.
local function ensure_dir(dir)
  local st = uv.fs_lstat(dir)
  if not st then
    local ok, err = uv.fs_mkdir(dir, MODE_DIR)
    if not ok and not tostring(err):match("^EEXIST") then
      return nil, string.format("cannot create the control socket directory %s: %s", dir, err)
    end
    st = uv.fs_lstat(dir)
    if not st then
      return nil, "cannot create the control socket directory " .. dir
    end
    if ok then
      uv.fs_chmod(dir, MODE_DIR) -- exactly 0700, whatever the umask
      st = uv.fs_lstat(dir)
    end
  end
  local uid = uv.os_get_passwd().uid
  if st.type ~= "directory" then
    return nil, string.format("refusing to use %s for control sockets: it is a %s, not a "
      .. "directory; remove it or set XDG_RUNTIME_DIR", dir, st.type)
  end
  if st.uid ~= uid then
    return nil, string.format("refusing to use %s for control sockets: it belongs to uid %d, "
      .. "not to you (uid %d); remove it or set XDG_RUNTIME_DIR", dir, st.uid, uid)
  end
  if st.mode % 512 ~= MODE_DIR then
    return nil, string.format("refusing to use %s for control sockets: its permissions are "
      .. "%03o, other users could reach the sockets; run 'chmod 700 %s'", dir,
      st.mode % 512, dir)
  end
  return true
end

--- True when something accepts connections on the socket at `path`. Synchronous: a Unix
-- socket connect() completes (or fails) at once; only its callback waits for the loop.
function M.alive(path)
  local p = uv.new_pipe(false)
  local ok = pcall(p.connect, p, path, function() end)
  local live = ok and p:getpeername() ~= nil
  p:close()
  return live
end

local function default_name()
  local a = rawget(_G, "arg")
  local base = type(a) == "table" and type(a[0]) == "string" and a[0] or "tunnel"
  base = base:gsub("/+$", ""):match("([^/]*)$"):gsub("%.lua$", ""):gsub("[^%w._-]", "_")
  if base == "" or base == "-" then
    base = "tunnel"
  end
  return base .. "-" .. uv.os_getpid()
end

local function check_name(name)
  if type(name) ~= "string" or not name:match("^[%w_][%w._-]*$") then
    return nil, string.format("bad control socket name %s: use letters, digits, '.', '_' and "
      .. "'-' (not starting with '.' or '-')", type(name) == "string" and ("'" .. name .. "'")
      or tostring(name))
  end
  if #name > 64 then
    return nil, "bad control socket name: at most 64 characters"
  end
  return true
end

-- One line of code for the log: control characters escaped, at most ~200 bytes.
local function loggable(code)
  local s = code:gsub("\n", "\\n"):gsub("%c", function(c)
    return string.format("\\%03d", c:byte())
  end)
  if #s > 200 then
    s = s:sub(1, 200) .. string.format("...(%d bytes)", #code)
  end
  return s
end

local function encode(msg)
  return cjson.encode(msg) .. "\n"
end

local Server = {}
Server.__index = Server

function Server:__tostring()
  return "tunnel.ctl server: " .. self.path .. (self.closed and " (closed)" or "")
end

local hello_script
local function hello(self)
  if hello_script == nil then
    local a = rawget(_G, "arg")
    hello_script = type(a) == "table" and type(a[0]) == "string" and a[0] or false
  end
  return encode({
    hello = "tunnel-ctl",
    protocol = M.PROTOCOL,
    pid = uv.os_getpid(),
    name = self.name,
    version = core_host.versions().tunnel,
    script = hello_script or nil,
  })
end

-- Close one connection; `why` (optional) is logged.
local function drop(self, conn, why)
  if conn.closed then
    return
  end
  conn.closed = true
  self.conns[conn] = nil
  if not conn.pipe:is_closing() then
    conn.pipe:close()
  end
  clog.debug("attach #%d closed%s", conn.id, why and (": " .. why) or "")
end

local function send(self, conn, msg, then_close)
  if conn.closed or conn.pipe:is_closing() then
    return
  end
  local ok, data = pcall(encode, msg)
  if not ok then
    data = encode({ id = msg.id, ok = false, error = "reply could not be encoded: " .. data })
  end
  if conn.pipe:get_write_queue_size() > M.MAX_PENDING_WRITE then
    drop(self, conn, "client does not read its replies")
    return
  end
  local wok, werr = pcall(conn.pipe.write, conn.pipe, data, function(err)
    if err then
      drop(self, conn, "write failed: " .. tostring(err))
    elseif then_close then
      drop(self, conn)
    end
  end)
  if not wok or werr == nil then
    drop(self, conn, "write failed")
  end
end

local function handle_request(self, conn, line)
  if line:match("^%s*$") then
    return
  end
  local ok, msg = pcall(cjson.decode, line)
  if not ok or type(msg) ~= "table" then
    send(self, conn, { ok = false, error = "bad request: expected a JSON object such as "
      .. "{\"id\":1,\"code\":\"return 1\"}" })
    return
  end
  local id = msg.id
  local op = msg.op or "eval"
  if op == "ping" then
    send(self, conn, { id = id, ok = true })
    return
  elseif op ~= "eval" then
    send(self, conn, { id = id, ok = false, error = "unknown op '" .. tostring(op)
      .. "' (use eval or ping)" })
    return
  end
  if type(msg.code) ~= "string" then
    send(self, conn, { id = id, ok = false, error = "bad request: 'code' must be a string" })
    return
  end
  local r = conn.session:eval(msg.code)
  if r.incomplete then
    send(self, conn, { id = id, incomplete = true })
    return
  end
  clog.info("attach #%d: %s -> %s", conn.id, loggable(msg.code), r.ok and "ok" or "error")
  if r.ok then
    send(self, conn, { id = id, ok = true, result = r.result, out = r.out,
      exiting = r.exiting or nil })
  else
    send(self, conn, { id = id, ok = false, error = r.error, out = r.out })
  end
end

local function on_data(self, conn, data)
  conn.buf[#conn.buf + 1] = data
  conn.size = conn.size + #data
  if not data:find("\n", 1, true) then
    if conn.size > M.MAX_REQUEST then
      clog.warn("attach #%d: request larger than %d bytes, disconnecting", conn.id,
        M.MAX_REQUEST)
      conn.pipe:read_stop()
      send(self, conn, { ok = false, error = string.format("request too large (limit %d "
        .. "bytes); closing the connection", M.MAX_REQUEST) }, true)
    end
    return
  end
  local text = table.concat(conn.buf)
  conn.buf, conn.size = {}, 0
  local pos = 1
  while not conn.closed do
    local nl = text:find("\n", pos, true)
    if not nl then
      break
    end
    local line = text:sub(pos, nl - 1)
    pos = nl + 1
    if #line > M.MAX_REQUEST then
      conn.pipe:read_stop()
      send(self, conn, { ok = false, error = string.format("request too large (limit %d "
        .. "bytes); closing the connection", M.MAX_REQUEST) }, true)
      return
    end
    handle_request(self, conn, line)
  end
  if pos <= #text then
    conn.buf[1] = text:sub(pos)
    conn.size = #text - pos + 1
  end
end

local function on_connection(self, err)
  if err then
    clog.warn("control socket %s: %s", self.path, tostring(err))
    return
  end
  local pipe = uv.new_pipe(false)
  local ok, aerr = pcall(self.handle.accept, self.handle, pipe)
  if not ok or aerr == nil then
    pipe:close()
    return
  end
  -- Being attached to must never keep a finished process alive.
  pipe:unref()
  self.next_id = self.next_id + 1
  local conn = {
    id = self.next_id,
    pipe = pipe,
    buf = {},
    size = 0,
    session = repl.session({ name = self.name .. " #" .. self.next_id }),
  }
  self.conns[conn] = true
  clog.debug("attach #%d connected to %s", conn.id, self.path)
  local wok, werr = pcall(pipe.write, pipe, hello(self))
  if not wok or werr == nil then
    drop(self, conn, "client left before the hello")
    return
  end
  pipe:read_start(function(rerr, data)
    if rerr then
      drop(self, conn, tostring(rerr))
    elseif not data then
      drop(self, conn)
    else
      -- A bug here must cost this client its connection, never the process its tunnel.
      local dok, derr = pcall(on_data, self, conn, data)
      if not dok then
        clog.error("attach #%d: %s", conn.id, tostring(derr))
        drop(self, conn, "internal error")
      end
    end
  end)
end

--- Listen for `tunnel attach`. opts: name (default <script>-<pid>), dir (default M.dir()).
-- Returns the server object, or nil and a message saying what to do.
function M.listen(opts)
  opts = check_opts(opts, { name = true, dir = true }, "ctl.listen")
  local name = opts.name or default_name()
  local nok, nerr = check_name(name)
  if not nok then
    return nil, nerr
  end
  local dir = opts.dir or M.dir()
  local dok, derr = ensure_dir(dir)
  if not dok then
    return nil, derr
  end
  local path = dir .. "/" .. name .. ".sock"
  if #path > 107 then
    return nil, string.format("control socket path too long (%d bytes, the limit is 107): %s; "
      .. "use a shorter --name or XDG_RUNTIME_DIR", #path, path)
  end

  local handle = uv.new_pipe(false)
  local ok, err = handle:bind(path)
  if not ok and tostring(err):match("^EADDRINUSE") then
    if M.alive(path) then
      handle:close()
      return nil, string.format("a tunnel named '%s' is already running (%s); pick another "
        .. "name with --name", name, path)
    end
    local st = uv.fs_lstat(path)
    if not st or st.type ~= "socket" then
      handle:close()
      return nil, string.format("cannot create control socket %s: something that is not a "
        .. "socket is in the way; remove it", path)
    end
    -- Left behind by a process that died without cleaning up: take it over.
    clog.info("removing stale control socket %s", path)
    uv.fs_unlink(path)
    ok, err = handle:bind(path)
  end
  if not ok then
    handle:close()
    return nil, string.format("cannot create control socket %s: %s", path, tostring(err))
  end
  -- luv has no umask: make the socket owner-only right after bind (the directory is 0700,
  -- so nobody else could reach it in between).
  uv.fs_chmod(path, MODE_SOCK)
  local st = uv.fs_lstat(path)

  local self = setmetatable({
    name = name,
    path = path,
    dir = dir,
    handle = handle,
    ino = st and st.ino,
    conns = {},
    next_id = 0,
    closed = false,
    seq = uv.hrtime(),
  }, Server)

  local lok, lerr = handle:listen(16, function(e)
    on_connection(self, e)
  end)
  if not lok then
    handle:close()
    uv.fs_unlink(path)
    return nil, string.format("cannot listen on control socket %s: %s", path, tostring(lerr))
  end
  handle:unref()

  local h = host_mod()
  if h then
    self.unhook = h.on_shutdown(function()
      self:close()
    end)
  end
  servers[self] = true
  clog.debug("control socket %s (tunnel attach %s)", path, name)
  return self
end

--- The servers this process has open (a list, oldest first).
function M.servers()
  local list = {}
  for srv in pairs(servers) do
    list[#list + 1] = srv
  end
  table.sort(list, function(a, b)
    return a.seq < b.seq
  end)
  return list
end

--- Stop listening, disconnect every client and remove the socket file. Idempotent.
function Server:close()
  if self.closed then
    return
  end
  self.closed = true
  servers[self] = nil
  for conn in pairs(self.conns) do
    drop(self, conn, "server closed")
  end
  if not self.handle:is_closing() then
    self.handle:close()
  end
  -- Remove the file only if it is still ours (a later process may have taken the name).
  local st = uv.fs_lstat(self.path)
  if st and st.ino == self.ino then
    uv.fs_unlink(self.path)
  end
  if self.unhook then
    self.unhook()
    self.unhook = nil
  end
end

--- Number of connected clients.
function Server:clients()
  local n = 0
  for _ in pairs(self.conns) do
    n = n + 1
  end
  return n
end

----------------------------------------------------------------------------------------------
-- Client side (tunnel attach, tests)

local Client = {}
Client.__index = Client

--- Connect to the control socket at `path`. handlers (all optional):
--   on_hello(hello)   the server's greeting (pid, name, version, script)
--   on_reply(reply)   one reply table per request, in order
--   on_close(err)     the connection ended (err is a message, or nil after :close())
-- Returns the client; connection errors arrive through on_close.
function M.connect(path, handlers)
  handlers = check_opts(handlers, { on_hello = true, on_reply = true, on_close = true },
    "ctl.connect")
  local self = setmetatable({ path = path, h = handlers, pipe = uv.new_pipe(false), buf = "",
    next_id = 0, closed = false, hello = nil }, Client)
  local req, err = self.pipe:connect(path, function(cerr)
    if cerr then
      self:_finish(cerr)
      return
    end
    self.pipe:read_start(function(rerr, data)
      if rerr then
        self:_finish(rerr)
      elseif not data then
        self:_finish("closed")
      else
        self:_data(data)
      end
    end)
  end)
  if not req then
    -- Report through the loop like every other connection error, after connect() returned.
    local t = uv.new_timer()
    t:start(0, 0, function()
      t:close()
      self:_finish(err)
    end)
  end
  return self
end

function Client:_finish(err)
  if self.closed then
    return
  end
  self.closed = true
  if not self.pipe:is_closing() then
    self.pipe:close()
  end
  if self.h.on_close then
    self.h.on_close(err)
  end
end

function Client:_data(data)
  self.buf = self.buf .. data
  while not self.closed do
    local nl = self.buf:find("\n", 1, true)
    if not nl then
      return
    end
    local line = self.buf:sub(1, nl - 1)
    self.buf = self.buf:sub(nl + 1)
    local ok, msg = pcall(cjson.decode, line)
    if not ok or type(msg) ~= "table" then
      self:_finish("protocol error: the server sent something that is not JSON")
      return
    end
    if msg.hello then
      self.hello = msg
      if self.h.on_hello then
        self.h.on_hello(msg)
      end
    elseif self.h.on_reply then
      self.h.on_reply(msg)
    end
  end
end

--- Send `code` for evaluation. Returns the request id.
function Client:eval(code)
  self.next_id = self.next_id + 1
  if not self.closed and not self.pipe:is_closing() then
    self.pipe:write(encode({ id = self.next_id, code = code }))
  end
  return self.next_id
end

--- Hang up (on_close is called with nil).
function Client:close()
  self:_finish(nil)
end

----------------------------------------------------------------------------------------------
-- Discovery

local function list_sync(dir)
  local out = {}
  local req = uv.fs_scandir(dir)
  if not req then
    return out
  end
  while true do
    local name, typ = uv.fs_scandir_next(req)
    if not name then
      break
    end
    local base = name:match("^(.+)%.sock$")
    if base and (typ == nil or typ == "socket") then
      local path = dir .. "/" .. name
      if M.alive(path) then
        out[#out + 1] = { name = base, path = path }
      end
    end
  end
  table.sort(out, function(a, b)
    return a.name < b.name
  end)
  return out
end

--- Ask the server at `path` for its hello. cb(hello) or cb(nil, err); gives up after
-- `timeout` ms (default 2000).
function M.query(path, cb, timeout)
  local done = false
  local timer = uv.new_timer()
  local c
  local function finish(h, err)
    if done then
      return
    end
    done = true
    timer:close()
    c:close()
    cb(h, err)
  end
  c = M.connect(path, {
    on_hello = function(h)
      finish(h)
    end,
    on_close = function(err)
      finish(nil, err or "closed")
    end,
  })
  timer:start(timeout or 2000, 0, function()
    finish(nil, "no answer")
  end)
end

--- The live tunnels in `opts.dir` (default M.dir()): a list of { name =, path = }, sorted
-- by name. With `cb`, each entry also gets pid, version and script from the server's hello,
-- and the list is passed to cb(list) instead of returned.
function M.list(opts, cb)
  opts = check_opts(opts, { dir = true }, "ctl.list")
  local list = list_sync(opts.dir or M.dir())
  if not cb then
    return list
  end
  local pending = #list
  if pending == 0 then
    cb(list)
    return
  end
  for _, t in ipairs(list) do
    M.query(t.path, function(h)
      if h then
        t.pid, t.version, t.script = h.pid, h.version, h.script
      end
      pending = pending - 1
      if pending == 0 then
        cb(list)
      end
    end)
  end
end

--- Socket path for an attach target: a path (anything with a '/') or a name in `dir`.
function M.resolve(target, dir)
  if target:find("/", 1, true) then
    return target
  end
  return (dir or M.dir()) .. "/" .. target .. ".sock"
end

return M
