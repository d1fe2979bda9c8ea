-- Every lua_shared_dict key of the health checker is built here
-- (resty.upstream.healthcheck.keys).  Pure Lua, no ngx: the tests build the
-- keys they inspect with this module too (tests/support/hc_keys.py).
--
-- A key is TAG ":" upstream for the per-upstream keys, and
-- TAG ":" upstream ":" role ":" peer-address for the per-peer keys (the
-- failures by reason add ":" reason).  Peers are keyed by address, never by
-- list position, so a reload that reorders the servers keeps each state on
-- its peer.  The tags are short on purpose: every peer owns five keys (the
-- shm budget is ~700 bytes per peer), and they are what a running shm already
-- holds (a HUP keeps the shm: renaming a tag would forget every state).

local pairs = pairs
local setmetatable = setmetatable
local error = error
local tostring = tostring

local _M = {}

-- a peer's role, as spelt in keys, in the peer list and in the state file
_M.ROLE = { primary = "p", backup = "b" }
_M.PRIMARY = _M.ROLE.primary
_M.BACKUP = _M.ROLE.backup

-- kind (what the value is) -> tag that starts the key
local TAGS = {
    -- per upstream
    version = "ver",          -- bumped on every state change: workers re-sync
    round_lock = "lock",      -- pid of the worker running a round (expires)
    next_round = "next",      -- set at the end of a round, expires after interval
    peer_list = "peers",      -- "role address" lines of the configured peers
    gone = "gone",            -- "time role address" lines of peers DNS removed
    follow_lock = "flock",    -- pid of the worker updating peers/gone (expires)
    resume = "resume",        -- where a round cut short by a reload stopped
    saved = "saved",          -- a new master's state file text (expires)
    state_file_warned = "sfw", -- the state file could not be written: said so
    -- per peer
    state = "st",                       -- 1 DOWN, 0 UP
    consecutive_failures = "cf",
    consecutive_successes = "cs",
    checks = "n",                       -- checks done (counter)
    last_check_duration = "d",          -- seconds
    failures = "fr",                    -- failed checks by reason (counter)
    -- records for the status pages and the dashboard, written best effort
    -- (not reserved: unrecorded when the shm is full, the checks go on)
    last_check = "lc",                  -- time of the last check (ngx.now())
    state_changed = "ch",               -- time of the last state change
    transitions = "tr",                 -- number of state changes (counter)
    last_failure = "lf",                -- "TIME REASON MESSAGE" of the last failure
    -- passive checks: live failures in the current window (expires)
    passive_failures = "pf",
    -- the passive floor held for this peer: warned (expires with the window)
    passive_warned = "pw",
    -- a failed check of this peer was logged (expires: LOG_EVERY, state.lua)
    failure_logged = "fl",
}

-- the counters reserved next to each peer's state by spawn_checker, so that
-- a round never needs new shm memory for them
_M.RESERVED_COUNTERS = { "consecutive_failures", "consecutive_successes",
                         "checks", "last_check_duration" }

-- every per-peer kind with one key per peer (not the failures by reason)
_M.PEER_KINDS = { "state", "consecutive_failures", "consecutive_successes",
                  "checks", "last_check_duration",
                  "last_check", "state_changed", "transitions", "last_failure",
                  "passive_failures", "passive_warned", "failure_logged" }

local function tag_of(kind)
    local tag = TAGS[kind]
    if not tag then
        error("unknown shm key kind: " .. tostring(kind), 3)
    end
    return tag
end

local function peer_key(kind, upstream, role, name)
    return tag_of(kind) .. ":" .. upstream .. ":" .. role .. ":" .. name
end
_M.peer_key = peer_key

function _M.upstream_key(kind, upstream)
    return tag_of(kind) .. ":" .. upstream
end

-- what every key of a kind starts with (e.g. to tell keys apart in a dump)
function _M.prefix(kind)
    return tag_of(kind) .. ":"
end


-- The keys of one checker: the per-upstream keys as fields, the per-peer
-- keys memoised (a round asks for the same few keys of every peer).
local checker_keys = {}
local checker_keys_mt = { __index = checker_keys }

function _M.new(upstream)
    local cache = {}
    for kind in pairs(TAGS) do
        cache[kind] = {}
    end
    return setmetatable({
        upstream = upstream,
        version = _M.upstream_key("version", upstream),
        round_lock = _M.upstream_key("round_lock", upstream),
        next_round = _M.upstream_key("next_round", upstream),
        peer_list = _M.upstream_key("peer_list", upstream),
        gone = _M.upstream_key("gone", upstream),
        follow_lock = _M.upstream_key("follow_lock", upstream),
        resume = _M.upstream_key("resume", upstream),
        saved = _M.upstream_key("saved", upstream),
        state_file_warned = _M.upstream_key("state_file_warned", upstream),
        cache = cache,
    }, checker_keys_mt)
end

function checker_keys.peer(self, kind, role, name)
    local by_kind = self.cache[kind] or tag_of(kind)   -- tag_of raises
    local k = by_kind[role .. name]
    if not k then
        k = peer_key(kind, self.upstream, role, name)
        by_kind[role .. name] = k
    end
    return k
end

function checker_keys.failure(self, role, name, reason)
    return self:peer("failures", role, name .. ":" .. reason)
end

return _M
