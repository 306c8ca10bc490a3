-- wrk script: replays pre-signed, distinct requests, one file per thread, each at most once.
-- Usage: wrk -s bench/wrk_signed.lua ... URL -- <file prefix> [delay_ms]
-- Each line of <prefix>.<thread>: method \t path \t header=value|header=value \t body
local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  requests = {}
  index = 0
  pause = tonumber(args[2] or "0")
  local f = assert(io.open(args[1] .. "." .. id, "r"))
  for line in f:lines() do
    local method, path, head, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
    local headers = {}
    for name, value in head:gmatch("([^=|]+)=([^|]*)") do
      headers[name] = value
    end
    table.insert(requests, wrk.format(method, path, headers, body))
  end
  f:close()
  exhausted = 0
end

function request()
  index = index + 1
  if index > #requests then
    -- never replay: an event sent twice would be a duplicate, not new work
    exhausted = 1
    wrk.thread:stop()
    index = #requests
  end
  return requests[index]
end

function delay()
  return pause
end

function done(summary, latency, requests)
  local out = string.format(
    '{"requests": %d, "duration_us": %d, "status_errors": %d, "connect_errors": %d, ' ..
    '"read_errors": %d, "write_errors": %d, "timeouts": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "max_us": %d, "exhausted": %d}',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, 0)
  io.write("WRKJSON " .. out .. "\n")
end
