std = "luajit"
max_line_length = 100
codes = true

files["spec"] = { std = "+busted" }
files["examples"] = { globals = { "arg" } }
exclude_files = { "build", "build-*", ".rocks", "build.luarocks" }
