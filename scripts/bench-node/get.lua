-- wrk script: GET a random one of the bulk-written documents (bulk-000000 ... bulk-NNNNNN).
local db = os.getenv("BENCH_DB") or "bench"
local docs = tonumber(os.getenv("BENCH_DOCS") or "20000")

function init(args)
  math.randomseed(os.time() + (tid or 0))
end

function request()
  local id = string.format("bulk-%06d", math.random(0, docs - 1))
  return wrk.format("GET", "/" .. db .. "/" .. id)
end
