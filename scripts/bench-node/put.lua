-- wrk script: PUT a new ~1 KB document with a unique id on every request.
-- BENCH_OWNER adds an "owner" member (what the sync-function workload's function checks) and
-- the channel that function gives the document, for the default function's `channels` rule.
local db = os.getenv("BENCH_DB") or "bench"
local owner = os.getenv("BENCH_OWNER")
local run = os.getenv("BENCH_RUN") or "r"
local threads = 0
local counter = 0
local headers = nil
local body = nil

function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

function init(args)
  headers = {}
  for k, v in pairs(wrk.headers) do headers[k] = v end
  headers["Content-Type"] = "application/json"
  local head = '{"type":"bench","n":0,"pad":"'
  if owner then head = '{"type":"bench","owner":"' .. owner .. '","channels":["user-' .. owner .. '"],"n":0,"pad":"' end
  body = head .. string.rep("x", 1024 - #head - 2) .. '"}'
end

function request()
  counter = counter + 1
  local path = string.format("/%s/put-%s-%d-%d", db, run, tid, counter)
  return wrk.format("PUT", path, headers, body)
end
