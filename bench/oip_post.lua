-- wrk script: POST one fixed inference body to the URL on every request.
-- Set by the harness (bench/load.py, bench/shadow.py, bench/deploy.py), so the
-- harness and wrk send the same bytes:
--   BENCH_BODY_FILE  path of the body (binary bodies: environment variables cannot hold NUL bytes)
--   BENCH_BODY       the body itself, when it is text (used when BENCH_BODY_FILE is unset)
--   BENCH_HEADERS    request headers, one "Name: value" per line
--                    (default: "Content-Type: application/json", an OIP JSON body)
-- Setting wrk.method/body/headers at load time keeps wrk's request static
-- (formatted once, no Lua call per request).
local body
local path = os.getenv("BENCH_BODY_FILE")
if path ~= nil and path ~= "" then
  local f = assert(io.open(path, "rb"))
  body = f:read("*a")
  f:close()
else
  body = os.getenv("BENCH_BODY")
end
if body == nil or body == "" then
  error("neither BENCH_BODY_FILE nor BENCH_BODY is set: run this through `python -m bench.load`")
end
wrk.method = "POST"
wrk.body = body
local headers = os.getenv("BENCH_HEADERS")
if headers == nil or headers == "" then
  headers = "Content-Type: application/json"
end
for line in headers:gmatch("[^\r\n]+") do
  local name, value = line:match("^%s*([^:]+):%s*(.-)%s*$")
  if name == nil then
    error("BENCH_HEADERS: not a 'Name: value' line: " .. line)
  end
  wrk.headers[name] = value
end
