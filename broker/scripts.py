"""The job store's Redis scripts: each state change that must be atomic, in one place.

Every script takes its arguments as one JSON object in ``ARGV[1]`` with named fields (redis-py packs many
arguments slowly, and names keep the Lua and the Python in step); ``KEYS`` are listed above each script.

A script that changes a job's status also moves its id in the status index (``keys.status``, see ``_INDEX``), in
the same step, so that counting jobs by status reads one number per status, never the jobs.
"""

# The status index: the KEYS after a script's own are the sets of ``keys.status``, and ARGV[1] has "id" (the job's
# id) and "index" (status -> the position of its set in KEYS). KEYS[1] is the job; its id's score is its creation.
_INDEX = """
local function index_status(args, from, to)
  local score = redis.call('HGET', KEYS[1], 'created_at') or args.now
  if from then redis.call('ZREM', KEYS[args.index[from]], args.id) end
  redis.call('ZADD', KEYS[args.index[to]], score, args.id)
end
"""

# KEYS: job, results, errors, parts. ARGV[1]: {"now", "chunk", "records": [...]}, each record {"kind": "result" or
# "error", "id", "record" (its JSON), "bumps" (counter -> increment, ``store._bumps``)}. Writes a record only for an
# item of the chunk that has none yet (none once the chunk is committed to the result store), and adds its bumps
# to the job's counters. Returns how many of the chunk's items still have no record (-1: not counted), then the
# (1-based) positions of the records that were new.
RECORD = """
local args = cjson.decode(ARGV[1])
local field = 'left:' .. args.chunk
if redis.call('HEXISTS', KEYS[4], tostring(args.chunk)) == 1 then return {0} end
local added = {}
local counts = {}
local function bump(name, n) counts[name] = (counts[name] or 0) + n end
for pos, rec in ipairs(args.records) do
  if redis.call('HEXISTS', KEYS[3], rec.id) == 0 then
    if rec.kind == 'result' then
      if redis.call('HSETNX', KEYS[2], rec.id, rec.record) == 1 then
        table.insert(added, pos)
        for name, n in pairs(rec.bumps) do bump(name, n) end
      end
    elseif redis.call('HEXISTS', KEYS[2], rec.id) == 0 then
      redis.call('HSET', KEYS[3], rec.id, rec.record)
      table.insert(added, pos)
      for name, n in pairs(rec.bumps) do bump(name, n) end
    end
  end
end
for name, n in pairs(counts) do
  if n ~= 0 then redis.call('HINCRBY', KEYS[1], name, n) end
end
local left = -1
if redis.call('HEXISTS', KEYS[1], field) == 1 then
  left = tonumber(redis.call('HGET', KEYS[1], field))
  if #added > 0 then left = redis.call('HINCRBY', KEYS[1], field, 0 - #added) end
end
if #added > 0 then redis.call('HSET', KEYS[1], 'progress_at', args.now) end
table.insert(added, 1, left)
return added
"""

# KEYS: job, parts, the chunk. ARGV[1]: {"chunk", "part" (its commit record, JSON), "size", "bumps" (the sum of its
# records' bumps), "now", "ttl", "done" (the job's fields of the chunk that its commit drops)}. Commits a chunk whose
# every record was written to its part at once (the records never enter Redis): only when the chunk has no record
# yet (returns 1), not when it is committed already (0) or has records in Redis (-1: they are to be written one by
# one, and the part's files deleted).
COMMIT_WHOLE = """
local args = cjson.decode(ARGV[1])
if redis.call('HEXISTS', KEYS[2], tostring(args.chunk)) == 1 then return 0 end
local field = 'left:' .. args.chunk
local left = redis.call('HGET', KEYS[1], field)
if not left or tonumber(left) ~= args.size then return -1 end
redis.call('HSET', KEYS[2], tostring(args.chunk), args.part)
redis.call('EXPIRE', KEYS[2], args.ttl)
for name, n in pairs(args.bumps) do
  if n ~= 0 then redis.call('HINCRBY', KEYS[1], name, n) end
end
redis.call('HDEL', KEYS[1], unpack(args.done))
redis.call('HSET', KEYS[1], 'progress_at', args.now)
redis.call('DEL', KEYS[3])
return 1
"""

# KEYS: job. ARGV[1]: {"chunk", "escalated", "explored"}. Counts a chunk's items sent to the LLM, once per chunk (a
# chunk that runs again counts nothing). Returns 1 when they were counted now.
MARK_SENT = """
local args = cjson.decode(ARGV[1])
if redis.call('HSETNX', KEYS[1], 'sent:' .. args.chunk, 1) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'escalated', args.escalated)
redis.call('HINCRBY', KEYS[1], 'explored', args.explored)
return 1
"""

# KEYS: job, results, errors, parts, the chunk. ARGV[1]: {"chunk", "part" (its commit record, JSON), "ids", "ttl",
# "done" (the job's fields of the chunk that its commit drops)}.
# Commits a chunk whose every item has its record: the first commit wins (returns 1; a later one returns 0 and its
# files are to be deleted); its records and items leave Redis.
COMMIT = """
local args = cjson.decode(ARGV[1])
if redis.call('HSETNX', KEYS[4], tostring(args.chunk), args.part) == 0 then return 0 end
redis.call('EXPIRE', KEYS[4], args.ttl)
for _, id in ipairs(args.ids) do
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end
redis.call('DEL', KEYS[5])
redis.call('HDEL', KEYS[1], unpack(args.done))
return 1
"""

# KEYS: job, invalid, the status index. ARGV[1]: {"now", "id", "index"}. Completes a running job whose every line
# has its record (the counters of ``RECORD``, and the lines refused at intake).
FINISH = (
    _INDEX
    + """
local args = cjson.decode(ARGV[1])
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'in_progress' then return 0 end
local total = redis.call('HGET', KEYS[1], 'total')
if not total then return 0 end
local done = tonumber(redis.call('HGET', KEYS[1], 'n_results') or '0')
  + tonumber(redis.call('HGET', KEYS[1], 'n_errors') or '0') + redis.call('HLEN', KEYS[2])
if done < tonumber(total) then return 0 end
redis.call('HSET', KEYS[1], 'status', 'completed', 'finished_at', args.now)
index_status(args, status, 'completed')
return 1
"""
)

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

# KEYS: job, the status index. ARGV[1]: {"status", "now", "error", "id", "index"}. Moves a job that is not yet final
# to a final status. Returns -1 (no such job), 0 (already final) or 1.
END = (
    _INDEX
    + """
local args = cjson.decode(ARGV[1])
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status == 'completed' or status == 'failed' or status == 'cancelled' or status == 'expired' then return 0 end
redis.call('HSET', KEYS[1], 'status', args.status, 'finished_at', args.now)
index_status(args, status, args.status)
if type(args.error) == 'string' and args.error ~= '' then redis.call('HSET', KEYS[1], 'error', args.error) end
return 1
"""
)

# KEYS: job, the status index. ARGV[1]: {"total", "chunks", "now", "id", "index"}. The intake has read the
# whole input. Returns an IntakeOutcome: 'started' (the job runs), 'empty' (no valid line), 'sweep' (the job was
# asked to end while its input was read: its sweep is due now) or 'ended'.
INTAKE_DONE = (
    _INDEX
    + """
local args = cjson.decode(ARGV[1])
redis.call('HSET', KEYS[1], 'total', args.total, 'chunks', args.chunks)
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'validating' then
  if args.chunks == 0 then return 'empty' end
  redis.call('HSET', KEYS[1], 'status', 'in_progress')
  index_status(args, status, 'in_progress')
  redis.call('HSETNX', KEYS[1], 'started_at', args.now)
  return 'started'
end
if status == 'cancelling' or status == 'finalizing' then return 'sweep' end
return 'ended'
"""
)

# KEYS: job, the status index. ARGV[1]: {"interim" (cancelling, finalizing), "final" (cancelled, expired, failed),
# "now", "only_if_due", "reason", "id", "index"}. Asks a running job to end early, with only_if_due only when its
# expires_at has passed; the reason, if any, becomes the job's error. Returns 'sweep' (its
# input is read: sweep now), 'later' (the intake will ask for the sweep when it has read the input), 'no'
# (nothing to do) or 'missing'.
REQUEST_END = (
    _INDEX
    + """
local args = cjson.decode(ARGV[1])
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status ~= 'validating' and status ~= 'in_progress' then return 'no' end
if args.only_if_due then
  local expires = redis.call('HGET', KEYS[1], 'expires_at')
  if not expires or tonumber(expires) > tonumber(args.now) then return 'no' end
end
redis.call('HSET', KEYS[1], 'status', args.interim, 'ending', args.final, args.interim .. '_at', args.now)
index_status(args, status, args.interim)
if type(args.reason) == 'string' and args.reason ~= '' then redis.call('HSET', KEYS[1], 'error', args.reason) end
if redis.call('HEXISTS', KEYS[1], 'total') == 1 then return 'sweep' end
return 'later'
"""
)

# KEYS: owners, the owner's set. ARGV[1]: {"owner"}. Forgets an owner whose set is gone (its jobs all expired); in
# one step, so that a job created meanwhile keeps its owner listed.
DROP_OWNER = """
local args = cjson.decode(ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
return redis.call('ZREM', KEYS[1], args.owner)
"""

# The answer cache (``cascade.broker.answer_cache``), shared by every job: entries, their index, their claims.

# KEYS: answer 1, claim 1, answer 2, claim 2, ... ARGV[1]: {"owner", "ms"}. For each key, its cached answer (JSON);
# else 'mine' when the claim was free, had lapsed or is the owner's already (then renewed for ms); else 'theirs'.
ANSWER_CLAIM = """
local args = cjson.decode(ARGV[1])
local out = {}
for i = 1, #KEYS, 2 do
  local cached = redis.call('GET', KEYS[i])
  if cached then
    table.insert(out, cached)
  elseif redis.call('SET', KEYS[i + 1], args.owner, 'NX', 'PX', args.ms) then
    table.insert(out, 'mine')
  elseif redis.call('GET', KEYS[i + 1]) == args.owner then
    redis.call('PEXPIRE', KEYS[i + 1], args.ms)
    table.insert(out, 'mine')
  else
    table.insert(out, 'theirs')
  end
end
return out
"""

# KEYS: index, answer 1, claim 1, answer 2, claim 2, ... ARGV[1]: {"ttl", "max", "now", "prefix", "answers": [JSON,
# ...] in the order of the keys, "ids": [answer key, ...]}. Stores each answer with its TTL unless one is there
# (the first answer stays), drops its claim, indexes it by time; then drops index members older than the TTL (their
# entries have expired) and trims the oldest entries beyond max. The trimmed entries' names are made from the
# prefix (a single Redis, not a cluster). Returns how many entries were trimmed.
ANSWER_PUT = """
local args = cjson.decode(ARGV[1])
for i, value in ipairs(args.answers) do
  if redis.call('SET', KEYS[2 * i], value, 'NX', 'EX', args.ttl) then
    redis.call('ZADD', KEYS[1], args.now, args.ids[i])
  end
  redis.call('DEL', KEYS[2 * i + 1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (args.now - args.ttl))
local over = redis.call('ZCARD', KEYS[1]) - args.max
local trimmed = 0
while over > 0 do
  local n = math.min(over, 1000)
  local oldest = redis.call('ZRANGE', KEYS[1], 0, n - 1)
  local names = {}
  for j, id in ipairs(oldest) do names[j] = args.prefix .. id end
  redis.call('DEL', unpack(names))
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - 1)
  over = over - n
  trimmed = trimmed + n
end
return trimmed
"""

# KEYS: claim 1, claim 2, ... ARGV[1]: {"owner"}. Drops the owner's claims (another's stay).
ANSWER_RELEASE = """
local args = cjson.decode(ARGV[1])
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == args.owner then redis.call('DEL', key) end
end
return 0
"""
