-- Peer states (resty.upstream.healthcheck.state): fall/rise counting and
-- transitions, applying the states to this worker's peers (set_peer_down in
-- every worker, kept in step by a version number and a light sync timer),
-- reserving every per-peer key up front, and the state file that carries the
-- states over to a new master (binary upgrade, restart: its shm starts empty).
--
-- All shm writes use safe_set/safe_add (and incr without init): they fail
-- with "no memory" instead of evicting other entries, such as another
-- upstream's DOWN state.

local upstream = require "ngx.upstream"
local keys = require "resty.upstream.healthcheck.keys"
local probe = require "resty.upstream.healthcheck.probe"

local ngx = ngx
local pairs = pairs
local pcall = pcall
local tostring = tostring
local tonumber = tonumber
local concat = table.concat
local str_sub = string.sub
local str_match = string.match
local str_gsub = string.gsub
local str_format = string.format
local io_open = io.open
local os_rename = os.rename
local os_remove = os.remove

local log = ngx.log
local ngx_now = ngx.now
local ERR = ngx.ERR
local WARN = ngx.WARN
local timer_at = ngx.timer.at
local worker_exiting = ngx.worker.exiting
local worker_pid = ngx.worker.pid

local get_primary_peers = upstream.get_primary_peers
local get_backup_peers = upstream.get_backup_peers
local set_peer_down_by_name = upstream.set_peer_down_by_name

local PRIMARY = keys.PRIMARY
local BACKUP = keys.BACKUP
local RESERVED_COUNTERS = keys.RESERVED_COUNTERS
local PEER_KINDS = keys.PEER_KINDS
local REASONS = probe.REASONS

-- seconds: at most one failed check of a peer is logged per this time (a
-- peer that fails without reaching `fall`, or 1,000 flapping peers, must
-- not flood the log; the failures are all counted and the last is kept)
local LOG_EVERY = 10

-- seconds: how often every worker compares the state versions in the shm
-- (the bound for a DOWN to reach a worker's balancer without `zone`; one
-- shm get per upstream when nothing changed)
local SYNC_PERIOD = 0.1

local _M = {}

-- upstream name -> checker context of this worker (status pages, sync timer)
local checkers = {}

local function errlog(...)
    log(ERR, "healthcheck: ", ...)
end

local function warn(...)
    log(WARN, "healthcheck: ", ...)
end

function _M.register(ctx)
    checkers[ctx.upstream] = ctx
end

function _M.checker(u)
    return checkers[u]
end

-- for cached status pages: a number that grows whenever a checked upstream
-- changes a peer's state (the versions only grow), and the shortest period
-- (seconds) of the checkers: how old their counters may be anyway
function _M.versions_signature()
    local sum, period = 0, nil
    for _, ctx in pairs(checkers) do
        sum = sum + (ctx.dict:get(ctx.keys.version) or 0)
        if not period or ctx.period < period then
            period = ctx.period
        end
    end
    return sum, period
end

-- the primary and the backup peers of upstream u, or nil, err
function _M.fetch_peers(u)
    local primary, err = get_primary_peers(u)
    if not primary then
        if err == "upstream not found" then
            -- configs log err alone: name the group that is not there
            err = "upstream \"" .. tostring(u) .. "\" not found"
        end
        return nil, "failed to get primary peers: " .. tostring(err)
    end
    local backup
    backup, err = get_backup_peers(u)
    if not backup then
        return nil, "failed to get backup peers: " .. tostring(err)
    end
    return primary, backup
end
local fetch_peers = _M.fetch_peers

-- incr that never evicts: incr an existing number in place, else safe_add
local function safe_incr(dict, key, n)
    local v, err = dict:incr(key, n)
    if v or err ~= "not found" then
        return v, err
    end
    local ok
    ok, err = dict:safe_add(key, n)
    if ok then
        return n
    end
    if err ~= "exists" then
        return nil, err
    end
    return dict:incr(key, n)
end
_M.safe_incr = safe_incr

-- a record for the status pages (keys.lua: last_check, last_failure, ...):
-- never evicts, and a full shm leaves it unrecorded
local function record_peer(ctx, peer, kind, value)
    ctx.dict:safe_set(ctx.keys:peer(kind, peer.role, peer.name), value)
end

-- calls fn(peer, role) for every primary, then every backup peer
local function each_peer(primary, backup, fn)
    for i = 1, #primary do
        fn(primary[i], PRIMARY)
    end
    for i = 1, #backup do
        fn(backup[i], BACKUP)
    end
end
_M.each_peer = each_peer


------------------------------------------------------------------------
-- state file (survives a new master: binary upgrade, restart)
------------------------------------------------------------------------

function _M.default_file(shm, u)
    local safe = str_gsub(u, "[^%w%.%-_]", "_")
    return ngx.config.prefix() .. "logs/healthcheck." .. shm .. "." .. safe
           .. ".state"
end

-- returns { [role .. name] = 0|1, ... } or nil
local function read_file(path)
    local f = path and io_open(path, "rb")
    if not f then
        return nil
    end
    local data = f:read("*a")
    f:close()
    return data
end

local function parse_states(ctx, data)
    if not data then
        return nil
    end
    local states = {}
    local header = true
    for line in data:gmatch("[^\n]+") do
        if header then
            -- first line: the upstream name, guards against a renamed group
            if line ~= "upstream " .. ctx.upstream then
                return nil
            end
            header = false
        else
            local st, role, name = str_match(line, "^([01]) ([pb]) (.+)$")
            if st then
                states[role .. name] = tonumber(st)
            end
        end
    end
    return states
end

-- seconds the state file's text stays in the shm for every worker of a new
-- master (peers that DNS adds after the start: peers.lua)
local SAVED_TTL = 600

-- { [role .. name] = 0|1 } from the state file, or nil.  The first worker
-- of a new master (nothing in its shm yet) reads the file and shares its
-- text: the other workers, which find the shm no longer empty, and the
-- peers DNS adds later get the same saved states
local function load_saved(ctx, first)
    local dict, key = ctx.dict, ctx.keys.saved
    if first then
        local data = read_file(ctx.state_file)
        if data then
            dict:safe_set(key, data, SAVED_TTL)
        end
        return parse_states(ctx, data)
    end
    return parse_states(ctx, dict:get(key))
end

local function write_file(path, text)
    local tmp = path .. ".tmp" .. worker_pid()
    local f, err = io_open(tmp, "wb")
    if not f then
        return nil, err
    end
    local ok
    ok, err = f:write(text)
    f:close()
    if ok then
        ok, err = os_rename(tmp, path)
        if ok then
            return true
        end
    end
    os_remove(tmp)
    return nil, err
end

local function save_file(ctx, primary, backup)
    local path = ctx.state_file
    if not path or ctx.state_file_failed then
        return
    end
    local dict, ks = ctx.dict, ctx.keys
    local out = { "upstream " .. ctx.upstream }
    each_peer(primary, backup, function (peer, role)
        local st = dict:get(ks:peer("state", role, peer.name))
        if st then
            out[#out + 1] = st .. " " .. role .. " " .. peer.name
        end
    end)
    out[#out + 1] = ""

    local ok, err = write_file(path, concat(out, "\n"))
    local warned = ks.state_file_warned
    if ok then
        if dict:get(warned) then
            dict:delete(warned)     -- fixed: a new failure is news again
        end
        return
    end
    -- this worker stops trying; the warning is said once per upstream for
    -- the life of the shm, not by every worker after every reload
    ctx.state_file_failed = true
    local added, aerr = dict:safe_add(warned, true)
    if added or aerr ~= "exists" then
        warn("cannot save peer states of upstream \"", ctx.upstream, "\" to ",
             path, ": ", tostring(err), " (they will not survive a new ",
             "master: let the workers' user write there, or set the ",
             "state_file option)")
    end
end


------------------------------------------------------------------------
-- this worker's peers follow the shm
------------------------------------------------------------------------

-- by address, not by id: an address outlives its position in a list that
-- DNS changes (a static group's duplicates share their state anyway)
local function set_down(ctx, peer, is_backup, down)
    local ok, err = set_peer_down_by_name(ctx.upstream, is_backup, peer.name,
                                          down)
    if not ok then
        -- DNS removed it since it was read: nothing left to turn
        log(err == "peer not found" and ngx.INFO or ERR,
            "healthcheck: failed to set peer ", peer.name, " of upstream \"",
            ctx.upstream, "\" ", down and "down" or "up", ": ", err)
    end
    return ok
end

function _M.apply(ctx, primary, backup)
    local dict, ks = ctx.dict, ctx.keys
    each_peer(primary, backup, function (peer, role)
        local st = dict:get(ks:peer("state", role, peer.name))
        if st ~= nil then
            local down = st == 1
            if down ~= (peer.down == true)
               and set_down(ctx, peer, role == BACKUP, down)
            then
                peer.down = down or nil
            end
        end
    end)
end
local apply = _M.apply

-- re-applies the states when another worker changed them (and follows
-- DNS first: ctx.follow_peers, peers.lua)
function _M.sync(ctx)
    if ctx.follow_peers then
        local ok, err = ctx.follow_peers(ctx)
        if not ok then
            return nil, err
        end
    end
    local ver = ctx.dict:get(ctx.keys.version)
    if ver == ctx.version then
        return true
    end
    local primary, backup = fetch_peers(ctx.upstream)
    if not primary then
        return nil, backup
    end
    apply(ctx, primary, backup)
    ctx.version = ver
    return true
end
local sync = _M.sync

-- tells the other workers that the states changed: their sync timers
-- compare this number (this worker applied the change itself already)
local function bump_version(ctx)
    local ver, err = safe_incr(ctx.dict, ctx.keys.version, 1)
    if not ver then
        errlog("failed to bump the state version of upstream \"",
               ctx.upstream, "\": ", err)
    end
end

-- the round changed states (each change was announced when it was made, so
-- a slow peer later in the round does not hold it back): the state file
_M.save_file = save_file

-- one timer per worker: applies state changes made by the worker running
-- the rounds to this worker's peers within SYNC_PERIOD (cheap: one shm get
-- per upstream when nothing changed)
local sync_timer_running = false

local function sync_all(premature)
    if premature or worker_exiting() then
        sync_timer_running = false
        return
    end
    for u, ctx in pairs(checkers) do
        if not ctx.cancelled then
            local ok, res, err = pcall(sync, ctx)
            if not ok or not res then
                errlog("failed to sync upstream \"", u, "\": ",
                       ok and err or res)
            end
        end
    end
    local ok, err = timer_at(SYNC_PERIOD, sync_all)
    if not ok then
        sync_timer_running = false
        if err ~= "process exiting" then
            errlog("failed to create the sync timer: ", err)
        end
    end
end

function _M.start_sync_timer()
    if sync_timer_running then
        return true
    end
    local ok, err = timer_at(SYNC_PERIOD, sync_all)
    if not ok then
        return nil, err
    end
    sync_timer_running = true
    return true
end


------------------------------------------------------------------------
-- fall and rise
------------------------------------------------------------------------

-- peer is DOWN? from the shm when a checker owns the group, else local
function _M.is_down(ctx, role, peer)
    if ctx then
        local st = ctx.dict:get(ctx.keys:peer("state", role, peer.name))
        if st ~= nil then
            return st == 1
        end
    end
    return peer.down == true
end
local is_down = _M.is_down

local function transition(ctx, peer, down, n, reason)
    local is_backup = peer.role == BACKUP
    if down then
        warn("peer ", peer.name, " is turned down after ", n,
             " failure(s) (upstream \"", ctx.upstream, "\"",
             is_backup and ", backup" or "", "): ", reason or "")
    else
        warn("peer ", peer.name, " is turned up after ", n,
             " success(es) (upstream \"", ctx.upstream, "\"",
             is_backup and ", backup" or "", ")")
    end

    -- the balancer first (with `zone`, every worker's): a page that reads
    -- the new state from the shm never finds the peer still routed
    set_down(ctx, peer, is_backup, down)
    local ok, err = ctx.dict:safe_set(ctx.keys:peer("state", peer.role, peer.name),
                                      down and 1 or 0)
    if not ok then
        errlog("failed to save the state of peer ", peer.name, " of upstream \"",
               ctx.upstream, "\": ", err)
        set_down(ctx, peer, is_backup, not down)
        return
    end
    -- at once: a cached status page (page_cache.lua) must not outlive a
    -- state that a page reading the shm already shows
    bump_version(ctx)
    ctx.changed = true
    if down and ctx.passive then
        -- a new window of live failures once it is back up (passive.lua)
        ctx.dict:delete(ctx.keys:peer("passive_failures", peer.role, peer.name))
    end
    -- best effort records for the dashboard (keys.lua)
    record_peer(ctx, peer, "state_changed", ngx_now())
    safe_incr(ctx.dict, ctx.keys:peer("transitions", peer.role, peer.name), 1)
end

-- Passive checks keep at least half of a role's peers UP, and never turn
-- down the last: a client alone can provoke the statuses they count (a slow
-- URL's 504 on every peer alike, a 502 from an endpoint that crashes), so
-- such failures must not empty the upstream; a real outage beyond that is
-- for the active checks.  true, or false and the UP peers left and the count
local function passive_allowed(ctx, peer, primary, backup)
    local list = peer.role == BACKUP and backup or primary
    local n, up = #list, 0
    for i = 1, n do
        local p = list[i]
        if p.name ~= peer.name and not is_down(ctx, peer.role, p) then
            up = up + 1
        end
    end
    return up >= 1 and 2 * up >= n, up, n
end

-- warns once per window per peer that the floor held
local function passive_refused(ctx, peer, up, n)
    local key = ctx.keys:peer("passive_warned", peer.role, peer.name)
    if ctx.dict:get(key) then
        return
    end
    ctx.dict:safe_set(key, true, ctx.passive.window)
    warn("peer ", peer.name, " keeps failing live requests but stays up ",
         "(upstream \"", ctx.upstream, "\"): passive checks leave at least ",
         "half of the peers up, ", up, " of ", n, " would remain")
end

-- passive checks (passive.lua): live traffic turned the peer DOWN; the
-- streaks restart, the other workers follow (version), active checks bring
-- it back after `rise` successes
function _M.passive_down(ctx, peer, n, reason)
    local primary, backup = fetch_peers(ctx.upstream)
    if not primary then
        errlog("failed to read the peers of upstream \"", ctx.upstream, "\": ",
               backup)
        return
    end
    local allowed, up, total = passive_allowed(ctx, peer, primary, backup)
    if not allowed then
        passive_refused(ctx, peer, up, total)
        return
    end
    local dict, ks = ctx.dict, ctx.keys
    dict:safe_set(ks:peer("consecutive_failures", peer.role, peer.name), 0)
    dict:safe_set(ks:peer("consecutive_successes", peer.role, peer.name), 0)
    transition(ctx, peer, true, n, reason)
    save_file(ctx, primary, backup)
end

-- sets a counter back to 0 unless it is already
local function clear(dict, key)
    local v = dict:get(key)
    if v and v ~= 0 then
        dict:safe_set(key, 0)
    end
end

-- counts one more in `streak` (consecutive_failures|successes); at `limit`
-- both streaks restart and the peer turns down (or up)
local function count_streak(ctx, peer, streak, limit, down, reason)
    local dict, ks = ctx.dict, ctx.keys
    local key = ks:peer(streak, peer.role, peer.name)
    local n, err = safe_incr(dict, key, 1)
    if not n then
        errlog("failed to count ", down and "failures" or "successes",
               " of ", peer.name, ": ", err)
        return
    end
    if n >= limit then
        dict:safe_set(ks:peer("consecutive_failures", peer.role, peer.name), 0)
        dict:safe_set(ks:peer("consecutive_successes", peer.role, peer.name), 0)
        transition(ctx, peer, down, n, reason)
    end
end

function _M.succeeded(ctx, peer)
    if is_down(ctx, peer.role, peer) then
        count_streak(ctx, peer, "consecutive_successes", ctx.rise, false)
        return
    end
    clear(ctx.dict, ctx.keys:peer("consecutive_failures", peer.role, peer.name))
end

function _M.failed(ctx, peer, reason, msg)
    local dict, ks = ctx.dict, ctx.keys
    local down = is_down(ctx, peer.role, peer)
    -- best effort (not reserved): when the shm is full it stays uncounted
    safe_incr(dict, ks:failure(peer.role, peer.name, reason), 1)
    record_peer(ctx, peer, "last_failure", str_format("%.3f %s %s", ngx_now(), reason, msg))

    if down then
        clear(dict, ks:peer("consecutive_successes", peer.role, peer.name))
        return
    end
    -- msg starts with the spec's prefix ("failed to connect to ADDR: ...")
    if dict:safe_add(ks:peer("failure_logged", peer.role, peer.name), true,
                     LOG_EVERY)
    then
        errlog(msg, " (upstream \"", ctx.upstream, "\"",
               peer.role == BACKUP and ", backup)" or ")")
    end
    count_streak(ctx, peer, "consecutive_failures", ctx.fall, true, msg)
end

-- one check done, whatever its result: duration (seconds) and count
function _M.checked(ctx, peer, duration)
    local dict, ks = ctx.dict, ctx.keys
    dict:safe_set(ks:peer("last_check_duration", peer.role, peer.name), duration)
    safe_incr(dict, ks:peer("checks", peer.role, peer.name), 1)
    record_peer(ctx, peer, "last_check", ngx_now())
end


------------------------------------------------------------------------
-- spawn_checker: every peer's keys reserved up front
------------------------------------------------------------------------

-- safe_add that remembers what it created, to delete it again on failure
local function new_reservation(dict)
    local added = {}
    local r = {}
    function r.add(key, val)
        local ok, err = dict:safe_add(key, val)
        if ok then
            added[#added + 1] = key
            return true
        end
        if err == "exists" then
            return true
        end
        return nil, err
    end
    function r.undo()
        for i = 1, #added do
            dict:delete(added[i])
        end
    end
    return r
end

_M.new_reservation = new_reservation

-- the state (saved, else the initial one) and the counters of one peer:
-- true, or nil, err
function _M.reserve_peer(ctx, reservation, peer, role, saved, down)
    local ks = ctx.keys
    local st = saved and saved[role .. peer.name]
    if st == nil then
        -- new to the checker: `initial_state = "down"` waits for `rise`
        st = (down or ctx.initial_state == "down") and 1 or 0
    end
    local ok, err = reservation.add(ks:peer("state", role, peer.name), st)
    for k = 1, #RESERVED_COUNTERS do
        if not ok then
            break
        end
        ok, err = reservation.add(ks:peer(RESERVED_COUNTERS[k], role,
                                          peer.name), 0)
    end
    if not ok then
        return nil, "failed to initialise the state of peer " .. peer.name
                    .. ": " .. err
    end
    return true
end
local reserve_peer = _M.reserve_peer

-- the state and the counters of every peer: a round then never needs new
-- shm memory for them (safe_add: never evicts other upstreams' keys)
local function reserve_peers(ctx, reservation, primary, backup, saved)
    local failed
    each_peer(primary, backup, function (peer, role)
        if not failed then
            local _
            _, failed = reserve_peer(ctx, reservation, peer, role, saved,
                                     peer.down)
        end
    end)
    if failed then
        return nil, failed
    end
    return true
end

-- another worker of this nginx may have failed at the same time and deleted
-- keys this one found existing: all must be there
local function all_states_present(ctx, primary, backup)
    local dict, ks = ctx.dict, ctx.keys
    local missing
    each_peer(primary, backup, function (peer, role)
        if not missing and dict:get(ks:peer("state", role, peer.name)) == nil then
            missing = "failed to initialise the state of peer " .. peer.name
                      .. ": no memory"
        end
    end)
    if missing then
        return nil, missing
    end
    return true
end

-- every key of one peer
function _M.forget_peer(ctx, role, name)
    local dict, ks = ctx.dict, ctx.keys
    for k = 1, #PEER_KINDS do
        dict:delete(ks:peer(PEER_KINDS[k], role, name))
    end
    for k = 1, #REASONS do
        dict:delete(ks:failure(role, name, REASONS[k]))
    end
end
local forget_peer = _M.forget_peer

-- forget the peers removed from the config: old and list are peer lists
-- ("role address" lines)
local function forget_removed(ctx, old, list)
    local keep = {}
    for i = 1, #list do
        keep[list[i]] = true
    end
    for entry in old:gmatch("[^\n]+") do
        if not keep[entry] then
            forget_peer(ctx, str_sub(entry, 1, 1), str_sub(entry, 3))
        end
    end
end

local function reserve_all(ctx, reservation, primary, backup, saved, old, list_str)
    local ok, err = reserve_peers(ctx, reservation, primary, backup, saved)
    if not ok then
        return nil, err
    end
    ok, err = reservation.add(ctx.keys.version, 0)
    if not ok then
        return nil, "failed to initialise the state version: " .. err
    end
    if old ~= list_str then
        ok, err = ctx.dict:safe_set(ctx.keys.peer_list, list_str)
        if not ok then
            return nil, "failed to save the peer list: " .. err
        end
    end
    return all_states_present(ctx, primary, backup)
end

-- the state keys of this upstream's peers (from the shm, else the state
-- file, else the config), forgetting removed peers; nil, err leaves no key
-- behind.
function _M.init(ctx, primary, backup)
    local dict = ctx.dict
    local list = {}
    each_peer(primary, backup, function (peer, role)
        list[#list + 1] = role .. " " .. peer.name
    end)
    local list_str = concat(list, "\n")

    local old = dict:get(ctx.keys.peer_list)
    -- nothing known in this shm yet: a new master (kept for the peers DNS
    -- adds later, in every worker: peers.lua)
    ctx.saved = load_saved(ctx, old == nil)
    local saved = old == nil and ctx.saved or nil

    local reservation = new_reservation(dict)
    local ok, err = reserve_all(ctx, reservation, primary, backup, saved, old,
                                list_str)
    if not ok then
        reservation.undo()
        return nil, err
    end

    if old ~= list_str then
        if old then
            forget_removed(ctx, old, list)
        end
        safe_incr(dict, ctx.keys.version, 1)
    end
    return true
end

return _M
