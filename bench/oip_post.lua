-- wrk script: POST one fixed OIP v2 JSON body to the URL on every request.
-- The body comes from the environment (BENCH_BODY), set by bench/load.py, so the
-- harness and wrk send the same bytes. Setting wrk.method/body/headers at load
-- time keeps wrk's request static (formatted once, no Lua call per request).
local body = os.getenv("BENCH_BODY")
if body == nil or body == "" then
  error("BENCH_BODY is not set: run this through `python -m bench.load`")
end
wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
