-- wrk script: every request takes the next line of a request table, so the load rotates over
-- many users (tokens), rooms and bodies. Used by bench/load.py:
--   wrk -t T -c C -d Ds -s bench/rotate.lua http://host:port -- <table.tsv> <T>
-- Each line of the table: METHOD \t PATH \t TOKEN (or empty) \t BODY (or empty).
-- Thread i of T takes lines i, i+T, i+2T, ... (one Lua state per thread), and each line is used
-- in order, so a table as long as the run's request count never repeats a line (verify-otp
-- needs every OTP once).

local thread_count = 0

function setup(thread)
  thread:set("tid", thread_count)
  thread_count = thread_count + 1
end

local items = {}
local position = 0

local function split(line)
  local fields = {}
  local start = 1
  while true do
    local tab = string.find(line, "\t", start, true)
    if not tab then
      table.insert(fields, string.sub(line, start))
      break
    end
    table.insert(fields, string.sub(line, start, tab - 1))
    start = tab + 1
  end
  return fields
end

function init(args)
  local path = args[1]
  local threads = tonumber(args[2])
  local index = 0
  for line in io.lines(path) do
    if index % threads == tid then
      local f = split(line)
      local headers = { ["Accept"] = "application/json" }
      if f[3] ~= nil and f[3] ~= "" then
        headers["Authorization"] = "Bearer " .. f[3]
      end
      local body = nil
      if f[4] ~= nil and f[4] ~= "" then
        body = f[4]
        headers["Content-Type"] = "application/json"
      end
      -- Pre-formatted once: request() only picks the next one.
      table.insert(items, wrk.format(f[1], f[2], headers, body))
    end
    index = index + 1
  end
end

function request()
  position = position + 1
  if position > #items then
    position = 1
  end
  return items[position]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, '
      .. '"status": %d, "timeout": %d, "p50_us": %.1f, "p90_us": %.1f, "p99_us": %.1f, '
      .. '"mean_us": %.1f, "max_us": %.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max
  ))
end
