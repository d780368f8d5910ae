"""The job store's Redis scripts: each state change that must be atomic, in one place.

Every script takes its arguments as one JSON object in ``ARGV[1]`` with named fields (redis-py packs many
arguments slowly, and names keep the Lua and the Python in step); ``KEYS`` are listed above each script.
"""

# KEYS: job, results, errors. ARGV[1]: {"now", "records": [...]}, each record {"kind": "result"|"error", "id",
# "record" (its JSON)} and, for results, {"tier", "route", "labelled", "correct", "specialist_correct",
# "llm_error", "llm_tokens"}. Writes a record only for an item that has none yet, and counts it once per tier.
# Returns the (1-based) positions of the records that were new.
RECORD = """
local args = cjson.decode(ARGV[1])
local added = {}
local counts = {}
local function bump(field, n) counts[field] = (counts[field] or 0) + n end
for pos, rec in ipairs(args.records) do
  if redis.call('HEXISTS', KEYS[3], rec.id) == 0 then
    if rec.kind == 'result' then
      if redis.call('HSETNX', KEYS[2], rec.id, rec.record) == 1 then
        table.insert(added, pos)
        bump('answered:' .. rec.tier, 1)
        if rec.labelled then
          bump('labelled:' .. rec.tier, 1)
          if rec.correct then bump('correct:' .. rec.tier, 1) end
          if rec.specialist_correct then bump('specialist_correct:' .. rec.tier, 1) end
        end
        if rec.llm_error then bump('llm_errors', 1) end
        bump('route:' .. rec.route, 1)
        if rec.llm_tokens > 0 then
          bump('llm_tokens', rec.llm_tokens)
          bump('llm_requests', 1)
        end
      end
    elseif redis.call('HEXISTS', KEYS[2], rec.id) == 0 then
      redis.call('HSET', KEYS[3], rec.id, rec.record)
      table.insert(added, pos)
    end
  end
end
for field, n in pairs(counts) do
  if n ~= 0 then redis.call('HINCRBY', KEYS[1], field, n) end
end
if #added > 0 then redis.call('HSET', KEYS[1], 'progress_at', args.now) end
return added
"""

# KEYS: job, results, errors, invalid. ARGV[1]: {"now"}. Completes a running job whose every line has its record.
FINISH = """
local args = cjson.decode(ARGV[1])
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'in_progress' then return 0 end
local total = redis.call('HGET', KEYS[1], 'total')
if not total then return 0 end
local done = redis.call('HLEN', KEYS[2]) + redis.call('HLEN', KEYS[3]) + redis.call('HLEN', KEYS[4])
if done < tonumber(total) then return 0 end
redis.call('HSET', KEYS[1], 'status', 'completed', 'finished_at', args.now)
return 1
"""

# KEYS: job. ARGV[1]: {"chunk", "budget", "costs": [...] best first}. Takes as many as fit in what is left of the
# budget; a chunk that runs again gets the same answer and spends nothing more.
RESERVE = """
local args = cjson.decode(ARGV[1])
local field = 'budget_chunk:' .. args.chunk
local before = redis.call('HGET', KEYS[1], field)
if before then return tonumber(before) end
local spent = tonumber(redis.call('HGET', KEYS[1], 'budget_spent') or '0')
local taken, cost = 0, 0
for _, c in ipairs(args.costs) do
  if spent + cost + c > args.budget then break end
  cost = cost + c
  taken = taken + 1
end
redis.call('HINCRBYFLOAT', KEYS[1], 'budget_spent', cost)
redis.call('HSET', KEYS[1], field, taken)
return taken
"""

# KEYS: job. ARGV[1]: {"status", "now", "error"}. Moves a job that is not yet final to a final status. Returns -1
# (no such job), 0 (already final) or 1.
END = """
local args = cjson.decode(ARGV[1])
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status == 'completed' or status == 'failed' or status == 'cancelled' or status == 'expired' then return 0 end
redis.call('HSET', KEYS[1], 'status', args.status, 'finished_at', args.now)
if type(args.error) == 'string' and args.error ~= '' then redis.call('HSET', KEYS[1], 'error', args.error) end
return 1
"""

# KEYS: job. ARGV[1]: {"total", "chunks", "now"}. The intake has read the whole input. Returns an IntakeOutcome:
# 'started' (the job runs), 'empty' (no valid line), 'sweep' (the job was asked to end while its input was read:
# its sweep is due now) or 'ended'.
INTAKE_DONE = """
local args = cjson.decode(ARGV[1])
redis.call('HSET', KEYS[1], 'total', args.total, 'chunks', args.chunks)
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'validating' then
  if args.chunks == 0 then return 'empty' end
  redis.call('HSET', KEYS[1], 'status', 'in_progress')
  redis.call('HSETNX', KEYS[1], 'started_at', args.now)
  return 'started'
end
if status == 'cancelling' or status == 'finalizing' then return 'sweep' end
return 'ended'
"""

# KEYS: job. ARGV[1]: {"interim" (cancelling, finalizing), "final" (cancelled, expired, failed), "now",
# "only_if_due", "reason"}. Asks a running job to end early, with only_if_due only when its expires_at has passed;
# the reason, if any, becomes the job's error. Returns 'sweep' (its
# input is read: sweep now), 'later' (the intake will ask for the sweep when it has read the input), 'no'
# (nothing to do) or 'missing'.
REQUEST_END = """
local args = cjson.decode(ARGV[1])
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status ~= 'validating' and status ~= 'in_progress' then return 'no' end
if args.only_if_due then
  local expires = redis.call('HGET', KEYS[1], 'expires_at')
  if not expires or tonumber(expires) > tonumber(args.now) then return 'no' end
end
redis.call('HSET', KEYS[1], 'status', args.interim, 'ending', args.final, args.interim .. '_at', args.now)
if type(args.reason) == 'string' and args.reason ~= '' then redis.call('HSET', KEYS[1], 'error', args.reason) end
if redis.call('HEXISTS', KEYS[1], 'total') == 1 then return 'sweep' end
return 'later'
"""

# KEYS: ids. ARGV[1]: {"ttl", "ids": [...], "lines": [...]}. Claims each custom_id for its line unless an earlier
# line has it; returns the (1-based) positions of the duplicates. Reading the same lines again gives the same
# answer.
CLAIM = """
local args = cjson.decode(ARGV[1])
local duplicates = {}
for pos, id in ipairs(args.ids) do
  local line = tostring(args.lines[pos])
  if redis.call('HSETNX', KEYS[1], id, line) == 0 and redis.call('HGET', KEYS[1], id) ~= line then
    table.insert(duplicates, pos)
  end
end
redis.call('EXPIRE', KEYS[1], args.ttl)
return duplicates
"""
