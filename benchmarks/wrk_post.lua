-- wrk script: POST one fixed body (read from a file) with the given headers, and print a JSON summary.
--
--   wrk -t1 -c16 -d5s --timeout 30s -s benchmarks/wrk_post.lua http://127.0.0.1:8000/v2/models/vae.decode/infer \
--       -- /tmp/body.bin "Content-Type: application/json" ["Inference-Header-Content-Length: 97" ...]
--
-- After wrk's own report, done() prints one line `WRK_JSON {...}`: requests, non-2xx responses, socket errors,
-- duration and latency percentiles in microseconds (benchmarks/v2load.py reads it).

function init(args)
   local file = assert(io.open(args[1], "rb"), "cannot open the body file " .. tostring(args[1]))
   wrk.body = file:read("*a")
   file:close()
   wrk.method = "POST"
   for i = 2, #args do
      local name, value = args[i]:match("^([^:]+):%s*(.*)$")
      assert(name, "a header must read 'Name: value', got " .. args[i])
      wrk.headers[name] = value
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "status_errors": %d, "connect_errors": %d, ' ..
      '"read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
      '"mean_us": %.1f, "max_us": %d}\n',
      summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read, e.write, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
