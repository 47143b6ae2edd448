-- wrk script: POST pre-signed webhook bodies, one line each ("<signature>\t<body>").
-- Usage: wrk ... -s bench/post_bodies.lua URL -- <file> <path> <wrk threads>
-- Thread t sends lines t, t+T, t+2T, ... in order, so line i goes out as request
-- floor(i / T) of thread i % T; the benchmark maps stored rows back to lines with that.
-- done() prints one line starting with WRKJSON for the benchmark to parse.

local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local file, path, nthreads = args[1], args[2], tonumber(args[3])
  reqs = {}
  local i = 0
  for line in io.lines(file) do
    if i % nthreads == tid then
      local tab = line:find("\t", 1, true)
      local headers = {
        ["Content-Type"] = "application/json",
        ["X-Hub-Signature-256"] = line:sub(1, tab - 1),
      }
      reqs[#reqs + 1] = wrk.format("POST", path, headers, line:sub(tab + 1))
    end
    i = i + 1
  end
  n = #reqs
  idx = 0
  issued = 0
end

function request()
  idx = idx + 1
  if idx > n then idx = 1 end
  issued = issued + 1
  return reqs[idx]
end

function done(summary, latency, requests)
  local per_thread = {}
  for _, t in ipairs(threads) do
    per_thread[#per_thread + 1] = string.format("[%d,%d]", t:get("tid"), t:get("issued"))
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"issued":[%s]}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    table.concat(per_thread, ",")))
end
