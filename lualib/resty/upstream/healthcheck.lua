-- Active health checker for nginx upstream peers (resty.upstream.healthcheck).
--
-- Interface-compatible with OpenResty's lua-resty-upstream-healthcheck; the
-- contract is /work/shared/spec/healthcheck.md (docs: lualib/README.md).
--
-- Design in short:
--   * every worker runs one timer chain per checked upstream;
--   * one round per interval for the whole nginx instance: a worker runs a
--     round only when it wins a shm lock (shm:add with expiry, refreshed while
--     the round runs, so the rounds of a crashed worker are taken over) and
--     the "throttle" key set at the end of the previous round has expired;
--   * peer state (UP/DOWN, consecutive failures/successes, counters) lives in
--     the shm, keyed by upstream, role and peer address (never list index);
--     a version number per upstream tells the other workers to re-apply the
--     states to their own peers with ngx.upstream.set_peer_down;
--   * the states are also saved to a small file on every change, so a new
--     master (binary upgrade, cold restart) starts with the last known states;
--   * a worker that finds the round held off retries when the "next" marker
--     expires (not a full interval later), and a worker that is exiting
--     (reload) abandons its round, releasing the lock without setting "next",
--     so frequent reloads do not starve the checks;
--   * one light sync timer per worker compares the version numbers every
--     SYNC_PERIOD and applies changes to its own peers;
--   * all shm writes use safe_set/safe_add (and incr without init): they fail
--     with "no memory" instead of evicting other entries (e.g. another
--     upstream's DOWN state); spawn_checker reserves every per-peer key up
--     front and fails cleanly, leaving no keys behind, when they do not fit.

local ok_up, upstream = pcall(require, "ngx.upstream")
if not ok_up or type(upstream) ~= "table" then
    error("ngx_upstream_lua module required")
end


local ngx = ngx
local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local pcall = pcall
local concat = table.concat
local str_sub = string.sub
local str_match = string.match
local str_gsub = string.gsub
local str_format = string.format
local math_floor = math.floor
local math_huge = math.huge
local io_open = io.open
local os_rename = os.rename
local os_remove = os.remove

local log = ngx.log
local ERR = ngx.ERR
local WARN = ngx.WARN
local INFO = ngx.INFO
local now = ngx.now
local update_time = ngx.update_time
local timer_at = ngx.timer.at
local spawn = ngx.thread.spawn
local wait = ngx.thread.wait
local tcp = ngx.socket.tcp
local worker_exiting = ngx.worker.exiting
local worker_pid = ngx.worker.pid

local get_upstreams = upstream.get_upstreams
local get_primary_peers = upstream.get_primary_peers
local get_backup_peers = upstream.get_backup_peers
local set_peer_down = upstream.set_peer_down

local _M = {
    _VERSION = "0.1.0",
}

-- upstream name -> checker context of this worker (for the status pages)
local checkers = {}

-- failure reasons, in the order they are reported by the extended metrics
local REASONS = { "connect", "timeout", "tls", "send", "receive",
                  "status_line", "status" }

local ROLE_PRIMARY = "p"
local ROLE_BACKUP = "b"

-- per-peer counters reserved next to the state by spawn_checker, so that a
-- round never needs new shm memory for them
local PEER_COUNTERS = { "cf", "cs", "n", "d" }

-- seconds: how often every worker compares the state versions in the shm
local SYNC_PERIOD = 0.2
-- seconds: the shortest wait before retrying a held-off round
local MIN_RETRY = 0.005
-- seconds: how often a worker looks again while another one holds the lock
local LOCK_POLL = 0.1


------------------------------------------------------------------------
-- logging helpers
------------------------------------------------------------------------

local function errlog(...)
    log(ERR, "healthcheck: ", ...)
end

local function warn(...)
    log(WARN, "healthcheck: ", ...)
end


-- Trust for ssl_verify: lua_ssl_trusted_certificate when set, otherwise the
-- system CA bundle, which the bundle's lua-nginx-module loads into every
-- cosocket SSL context at configuration time ($SSL_CERT_FILE, then the usual
-- distro paths; build/patches/lua-nginx-module/0002-*.patch).  Nothing to do here.


------------------------------------------------------------------------
-- shm keys and peer helpers
------------------------------------------------------------------------

local function peer_key(ctx, kind, role, name)
    local k = ctx.key_cache[kind][role .. name]
    if not k then
        k = kind .. ":" .. ctx.upstream .. ":" .. role .. ":" .. name
        ctx.key_cache[kind][role .. name] = k
    end
    return k
end

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

local function new_key_cache()
    return { st = {}, cf = {}, cs = {}, n = {}, d = {}, fr = {},
             lc = {}, ch = {}, tr = {}, lf = {} }
end

-- What the status pages show beside the state, written best effort (not
-- reserved: when the shm is full it stays unrecorded, the checks go on):
-- lc = time of the last check, ch = time of the last state change, tr =
-- number of state changes, lf = the last failure as "TIME REASON MESSAGE".
local function record(ctx, peer, kind, value)
    ctx.dict:safe_set(peer_key(ctx, kind, peer.role, peer.name), value)
end

-- "127.0.0.1:80" -> "127.0.0.1", 80; "[::1]:80" -> "[::1]", 80;
-- "unix:/path" -> "unix:/path", nil
local function split_addr(name)
    if str_sub(name, 1, 5) == "unix:" then
        return name, nil
    end
    local host, port = str_match(name, "^(.*):(%d+)$")
    if not host then
        return name, nil
    end
    return host, tonumber(port)
end

-- all peers of the group (primary then backup) as
-- { name =, id =, backup =, down = }
local function fetch_peers(u)
    local primary, err = get_primary_peers(u)
    if not primary then
        return nil, "failed to get primary peers: " .. tostring(err)
    end
    local backup
    backup, err = get_backup_peers(u)
    if not backup then
        return nil, "failed to get backup peers: " .. tostring(err)
    end
    return primary, backup
end


------------------------------------------------------------------------
-- state file (survives a new master: binary upgrade, restart)
------------------------------------------------------------------------

local function state_file_path(shm, u)
    local safe = str_gsub(u, "[^%w%.%-_]", "_")
    return ngx.config.prefix() .. "logs/healthcheck." .. shm .. "." .. safe
           .. ".state"
end

-- returns { ["p" .. name] = 0|1, ... } or nil
local function load_state_file(ctx)
    local path = ctx.state_file
    if not path then
        return nil
    end
    local f = io_open(path, "rb")
    if not f then
        return nil
    end
    local data = f:read("*a")
    f:close()
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

local function save_state_file(ctx, primary, backup)
    local path = ctx.state_file
    if not path or ctx.state_file_failed then
        return
    end
    local dict = ctx.dict
    local out = { "upstream " .. ctx.upstream }
    local function add(peers, role)
        for i = 1, #peers do
            local name = peers[i].name
            local st = dict:get(peer_key(ctx, "st", role, name))
            if st then
                out[#out + 1] = st .. " " .. role .. " " .. name
            end
        end
    end
    add(primary, ROLE_PRIMARY)
    add(backup, ROLE_BACKUP)
    out[#out + 1] = ""

    local tmp = path .. ".tmp" .. worker_pid()
    local f, err = io_open(tmp, "wb")
    if f then
        local ok
        ok, err = f:write(concat(out, "\n"))
        f:close()
        if ok then
            ok, err = os_rename(tmp, path)
            if ok then
                return
            end
        end
        os_remove(tmp)
    end
    -- warn once per worker: states will not survive a new master
    ctx.state_file_failed = true
    warn("cannot save peer states of upstream \"", ctx.upstream, "\" to ",
         path, ": ", tostring(err))
end


------------------------------------------------------------------------
-- applying states to this worker's peers
------------------------------------------------------------------------

local function apply_states(ctx, primary, backup)
    local dict = ctx.dict
    local u = ctx.upstream
    local function apply(peers, role, is_backup)
        for i = 1, #peers do
            local peer = peers[i]
            local st = dict:get(peer_key(ctx, "st", role, peer.name))
            if st ~= nil then
                local down = st == 1
                if down ~= (peer.down == true) then
                    local ok, err = set_peer_down(u, is_backup, peer.id, down)
                    if not ok then
                        errlog("failed to set peer ", peer.name, " of upstream \"",
                               u, "\" ", down and "down" or "up", ": ", err)
                    else
                        peer.down = down or nil
                    end
                end
            end
        end
    end
    apply(primary, ROLE_PRIMARY, false)
    apply(backup, ROLE_BACKUP, true)
end

local function sync_version(ctx)
    local ver = ctx.dict:get(ctx.ver_key)
    if ver == ctx.version then
        return true
    end
    local primary, backup = fetch_peers(ctx.upstream)
    if not primary then
        return nil, backup
    end
    apply_states(ctx, primary, backup)
    ctx.version = ver
    return true
end


------------------------------------------------------------------------
-- one probe
------------------------------------------------------------------------

local function set_state(ctx, peer, down, n, reason)
    local is_backup = peer.role == ROLE_BACKUP
    if down then
        warn("peer ", peer.name, " is turned down after ", n,
             " failure(s) (upstream \"", ctx.upstream, "\"",
             is_backup and ", backup" or "", "): ", reason or "")
    else
        warn("peer ", peer.name, " is turned up after ", n,
             " success(es) (upstream \"", ctx.upstream, "\"",
             is_backup and ", backup" or "", ")")
    end

    local ok, err = ctx.dict:safe_set(peer_key(ctx, "st", peer.role, peer.name),
                                      down and 1 or 0)
    if not ok then
        errlog("failed to save the state of peer ", peer.name, " of upstream \"",
               ctx.upstream, "\": ", err)
        return
    end
    ctx.changed = true
    record(ctx, peer, "ch", now())
    safe_incr(ctx.dict, peer_key(ctx, "tr", peer.role, peer.name), 1)

    local sok, serr = set_peer_down(ctx.upstream, is_backup, peer.id, down)
    if not sok then
        errlog("failed to set peer ", peer.name, " of upstream \"",
               ctx.upstream, "\" ", down and "down" or "up", ": ", serr)
    end
end

local function peer_ok(ctx, peer)
    local dict = ctx.dict
    local st = dict:get(peer_key(ctx, "st", peer.role, peer.name))
    local is_down
    if st == nil then
        is_down = peer.down == true
    else
        is_down = st == 1
    end

    if is_down then
        local n, err = safe_incr(dict, peer_key(ctx, "cs", peer.role, peer.name), 1)
        if not n then
            errlog("failed to count successes of ", peer.name, ": ", err)
            return
        end
        if n >= ctx.rise then
            dict:safe_set(peer_key(ctx, "cs", peer.role, peer.name), 0)
            dict:safe_set(peer_key(ctx, "cf", peer.role, peer.name), 0)
            set_state(ctx, peer, false, n)
        end
        return
    end

    local cf_key = peer_key(ctx, "cf", peer.role, peer.name)
    local cf = dict:get(cf_key)
    if cf and cf ~= 0 then
        dict:safe_set(cf_key, 0)
    end
end

local function peer_fail(ctx, peer, reason, msg)
    local dict = ctx.dict
    local st = dict:get(peer_key(ctx, "st", peer.role, peer.name))
    local is_down
    if st == nil then
        is_down = peer.down == true
    else
        is_down = st == 1
    end

    local fr_key = peer_key(ctx, "fr", peer.role, peer.name .. ":" .. reason)
    -- best effort (not reserved): when the shm is full it stays uncounted
    safe_incr(dict, fr_key, 1)
    record(ctx, peer, "lf", str_format("%.3f %s %s", now(), reason, msg))

    if is_down then
        local cs_key = peer_key(ctx, "cs", peer.role, peer.name)
        local cs = dict:get(cs_key)
        if cs and cs ~= 0 then
            dict:safe_set(cs_key, 0)
        end
        return
    end

    errlog(msg, " for peer ", peer.name, " of upstream \"", ctx.upstream, "\"")

    local n, err = safe_incr(dict, peer_key(ctx, "cf", peer.role, peer.name), 1)
    if not n then
        errlog("failed to count failures of ", peer.name, ": ", err)
        return
    end
    if n >= ctx.fall then
        dict:safe_set(peer_key(ctx, "cf", peer.role, peer.name), 0)
        dict:safe_set(peer_key(ctx, "cs", peer.role, peer.name), 0)
        set_state(ctx, peer, true, n, msg)
    end
end

local function is_timeout(err)
    return err == "timeout"
end

-- returns nil on success, or reason, message
local function probe(ctx, peer)
    local sock, err = tcp()
    if not sock then
        return "connect", "failed to create socket: " .. tostring(err)
    end
    sock:settimeout(ctx.timeout)

    local host, port = peer.host, peer.port
    local ok
    if port then
        ok, err = sock:connect(host, port)
    else
        ok, err = sock:connect(host)
    end
    if not ok then
        if is_timeout(err) then
            return "timeout", "connect() timed out"
        end
        return "connect", "connect() failed: " .. tostring(err)
    end

    if ctx.https then
        -- not `false` as the first argument: with it, resty.core returns
        -- true without looking at the verification result when the
        -- handshake completes at once (lua-nginx-module 0.10.23)
        ok, err = sock:sslhandshake(nil, ctx.host, ctx.ssl_verify)
        if not ok then
            sock:close()
            if is_timeout(err) then
                return "timeout", "SSL handshake timed out"
            end
            return "tls", "SSL handshake failed: " .. tostring(err)
        end
    end

    local bytes
    bytes, err = sock:send(ctx.http_req)
    if not bytes then
        sock:close()
        if is_timeout(err) then
            return "timeout", "send() timed out"
        end
        return "send", "send() failed: " .. tostring(err)
    end

    local line
    line, err = sock:receive("*l")
    if not line then
        sock:close()
        if is_timeout(err) then
            return "timeout", "receive() timed out"
        end
        return "receive", "receive() failed: " .. tostring(err)
    end

    local status = str_match(line, "^HTTP/%d+%.%d+%s+(%d%d%d)")
    if not status then
        sock:close()
        return "status_line", "bad status line: " .. str_sub(line, 1, 64)
    end

    sock:close()

    local statuses = ctx.statuses
    if statuses and not statuses[tonumber(status)] then
        return "status", "bad status code " .. status
    end
    return nil
end

local function check_peer(ctx, peer)
    update_time()
    local t0 = now()
    local ok, reason, msg = pcall(probe, ctx, peer)
    if worker_exiting() then
        -- reload or shutdown while probing: the new workers take over, and
        -- this worker's (old) peer list must not write to the shm any more
        return
    end
    update_time()
    local dict = ctx.dict
    dict:safe_set(peer_key(ctx, "d", peer.role, peer.name), now() - t0)
    record(ctx, peer, "lc", now())
    safe_incr(dict, peer_key(ctx, "n", peer.role, peer.name), 1)

    if not ok then
        errlog("checker error for peer ", peer.name, ": ", reason)
        return
    end
    if reason then
        peer_fail(ctx, peer, reason, msg)
    else
        peer_ok(ctx, peer)
    end
end


------------------------------------------------------------------------
-- rounds and the timer
------------------------------------------------------------------------

local function lock_ttl(ctx)
    -- connect + handshake + send + receive, plus slack (seconds)
    return 4 * ctx.timeout / 1000 + 1
end

local function refresh_lock(ctx)
    local t = now()
    if t - ctx.lock_refreshed >= 0.5 then
        ctx.lock_refreshed = t
        ctx.dict:safe_set(ctx.lock_key, ctx.pid, lock_ttl(ctx))
    end
end

local function build_targets(ctx, primary, backup)
    local targets = {}
    local function add(peers, role)
        for i = 1, #peers do
            local p = peers[i]
            local host, port = split_addr(p.name)
            if ctx.port and port then
                port = ctx.port
            end
            targets[#targets + 1] = {
                name = p.name, id = p.id, role = role, down = p.down,
                host = host, port = port,
            }
        end
    end
    add(primary, ROLE_PRIMARY)
    add(backup, ROLE_BACKUP)
    return targets
end

local function worker_loop(ctx, targets, next_index)
    while true do
        if worker_exiting() then
            return
        end
        local i = next_index()
        if not i then
            return
        end
        check_peer(ctx, targets[i])
        refresh_lock(ctx)
    end
end

local function run_round(ctx)
    local primary, backup = fetch_peers(ctx.upstream)
    if not primary then
        return nil, backup
    end
    -- make sure this worker's peers reflect the shm before judging
    apply_states(ctx, primary, backup)

    local targets = build_targets(ctx, primary, backup)
    local n = #targets
    local idx = 0
    local function next_index()
        if idx >= n then
            return nil
        end
        idx = idx + 1
        return idx
    end

    ctx.changed = false
    local nthreads = ctx.concurrency
    if nthreads > n then
        nthreads = n
    end
    if nthreads > 1 then
        local threads = {}
        for t = 1, nthreads - 1 do
            local th, err = spawn(worker_loop, ctx, targets, next_index)
            if not th then
                errlog("failed to spawn a light thread: ", err)
                break
            end
            threads[t] = th
        end
        worker_loop(ctx, targets, next_index)
        for t = 1, #threads do
            wait(threads[t])
        end
    else
        worker_loop(ctx, targets, next_index)
    end

    if ctx.changed then
        local ver, err = safe_incr(ctx.dict, ctx.ver_key, 1)
        if not ver then
            errlog("failed to bump the state version of upstream \"",
                   ctx.upstream, "\": ", err)
        end
        save_state_file(ctx, primary, backup)
        -- this worker applied the changes itself: re-sync on the next tick
        -- anyway (cheap) by not recording the version
    end
    return true
end

local tick

local function release_lock(ctx)
    local dict = ctx.dict
    if dict:get(ctx.lock_key) == ctx.pid then
        dict:delete(ctx.lock_key)
    end
end

-- seconds until the round held off by another worker's "next" marker is due
local function throttle_wait(ctx)
    local ttl = ctx.dict:ttl(ctx.throttle_key)
    if not ttl or ttl < MIN_RETRY then
        -- expired (or deleted) meanwhile, or about to: ttl() says 0 in the
        -- last millisecond (the marker is always set with an expiry)
        return MIN_RETRY
    end
    if ttl > ctx.interval then
        -- set by a worker with a longer interval (old config): look again
        -- after our own interval at the latest
        return ctx.interval
    end
    if ttl < MIN_RETRY then
        return MIN_RETRY
    end
    return ttl
end

local function lock_wait(ctx)
    local d = ctx.interval
    if d > LOCK_POLL then
        d = LOCK_POLL
    end
    return d
end

-- runs a round when due; returns the delay of the next tick, or nil to stop
local function do_tick(ctx)
    local dict = ctx.dict
    local ok, err = sync_version(ctx)
    if not ok then
        errlog("failed to sync upstream \"", ctx.upstream, "\": ", err)
    end

    -- another worker ran a round less than an interval ago? then try again
    -- when its marker expires (the round must not be skipped just because
    -- this worker's timer is out of phase, e.g. a new worker after a reload)
    local th = dict:get(ctx.throttle_key)
    if th and th ~= ctx.pid then
        return throttle_wait(ctx)
    end

    local added, aerr = dict:safe_add(ctx.lock_key, ctx.pid, lock_ttl(ctx))
    if not added then
        if aerr ~= "exists" then
            errlog("failed to take the round lock of upstream \"",
                   ctx.upstream, "\": ", aerr)
            return ctx.interval
        end
        -- a round is running elsewhere (or its worker died: the lock expires)
        return lock_wait(ctx)
    end
    update_time()
    ctx.lock_refreshed = now()

    -- a round may have finished between our throttle check and the lock
    th = dict:get(ctx.throttle_key)
    if th and th ~= ctx.pid then
        release_lock(ctx)
        return throttle_wait(ctx)
    end

    local rok, rres, rerr = pcall(run_round, ctx)
    if not rok then
        errlog("round failed for upstream \"", ctx.upstream, "\": ", rres)
    elseif not rres then
        errlog("round failed for upstream \"", ctx.upstream, "\": ", rerr)
    end

    if worker_exiting() then
        -- reload/shutdown during the round: abandon it without a "next"
        -- marker and free the lock, so a new worker runs the next round now
        release_lock(ctx)
        return nil
    end

    local sok, serr = dict:safe_set(ctx.throttle_key, ctx.pid, ctx.interval)
    if not sok then
        errlog("failed to save the round time of upstream \"", ctx.upstream,
               "\": ", serr)
    end
    release_lock(ctx)
    return ctx.interval
end

tick = function (premature, ctx)
    if premature or ctx.cancelled or worker_exiting() then
        return
    end
    local ok, delay = pcall(do_tick, ctx)
    if not ok then
        errlog("checker failed for upstream \"", ctx.upstream, "\": ", delay)
        delay = ctx.interval
    end
    if not delay or worker_exiting() then
        return
    end
    local tok, terr = timer_at(delay, tick, ctx)
    if not tok then
        if terr ~= "process exiting" then
            errlog("failed to create the timer for upstream \"", ctx.upstream,
                   "\": ", terr)
        end
    end
end

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
            local ok, res, err = pcall(sync_version, ctx)
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

local function start_sync_timer()
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
-- spawn_checker
------------------------------------------------------------------------

local function is_int(v)
    return type(v) == "number" and v == math_floor(v) and v > -math_huge
           and v < math_huge
end

local function opt_number(opts, name, default, min, integer, max)
    local v = opts[name]
    if v == nil then
        return default
    end
    if type(v) ~= "number" or v ~= v then
        return nil, "bad \"" .. name .. "\" option: number expected, got "
                    .. type(v)
    end
    if integer and not is_int(v) then
        return nil, "bad \"" .. name .. "\" option: integer expected"
    end
    if v < min or (max and v > max) or v == math_huge then
        if max then
            return nil, "bad \"" .. name .. "\" option: must be between "
                        .. min .. " and " .. max
        end
        return nil, "bad \"" .. name .. "\" option: must be at least " .. min
    end
    return v
end

local function validate(opts)
    if type(opts) ~= "table" then
        return nil, "options table expected"
    end

    local ctx = {}

    local typ = opts.type
    if typ == nil then
        return nil, "\"type\" option required"
    end
    if typ ~= "http" and typ ~= "https" then
        return nil, "only \"http\" and \"https\" type are supported right now"
    end
    ctx.type = typ
    ctx.https = typ == "https"

    local http_req = opts.http_req
    if http_req == nil then
        return nil, "\"http_req\" option required"
    end
    if type(http_req) ~= "string" or http_req == "" then
        return nil, "bad \"http_req\" option: non-empty string expected"
    end
    ctx.http_req = http_req

    local shm = opts.shm
    if shm == nil then
        return nil, "\"shm\" option required"
    end
    if type(shm) ~= "string" then
        return nil, "bad \"shm\" option: string expected"
    end
    local dict = ngx.shared[shm]
    if not dict then
        return nil, "shm \"" .. shm .. "\" not found"
    end
    ctx.shm = shm
    ctx.dict = dict

    local u = opts.upstream
    if u == nil then
        return nil, "no upstream specified"
    end
    if type(u) ~= "string" then
        return nil, "bad \"upstream\" option: string expected"
    end
    local primary, backup = fetch_peers(u)
    if not primary then
        return nil, backup
    end
    ctx.upstream = u

    local v, err = opt_number(opts, "timeout", 1000, 1, false)
    if not v then
        return nil, err
    end
    ctx.timeout = v

    v, err = opt_number(opts, "interval", 1000, 0, false)
    if not v then
        return nil, err
    end
    if v < 2 then
        v = 2
    end
    ctx.interval = v / 1000        -- seconds

    v, err = opt_number(opts, "fall", 5, 1, true)
    if not v then
        return nil, err
    end
    ctx.fall = v

    v, err = opt_number(opts, "rise", 2, 1, true)
    if not v then
        return nil, err
    end
    ctx.rise = v

    local vs = opts.valid_statuses
    if vs ~= nil then
        if type(vs) ~= "table" then
            return nil, "bad \"valid_statuses\" option: table expected"
        end
        local set = {}
        for i, code in ipairs(vs) do
            if not is_int(code) or code < 100 or code > 999 then
                return nil, "bad \"valid_statuses\" option: element " .. i
                            .. " is not an HTTP status code"
            end
            set[code] = true
        end
        for k in pairs(vs) do
            if not is_int(k) or k < 1 or k > #vs then
                return nil, "bad \"valid_statuses\" option: array expected"
            end
        end
        ctx.statuses = set
    end

    v, err = opt_number(opts, "concurrency", 1, 1, true)
    if not v then
        return nil, err
    end
    ctx.concurrency = v

    v, err = opt_number(opts, "port", nil, 1, true, 65535)
    if v == nil and err then
        return nil, err
    end
    ctx.port = v

    local sv = opts.ssl_verify
    if sv == nil then
        sv = true
    elseif type(sv) ~= "boolean" then
        return nil, "bad \"ssl_verify\" option: boolean expected"
    end
    ctx.ssl_verify = sv

    local host = opts.host
    if host ~= nil and (type(host) ~= "string" or host == "") then
        return nil, "bad \"host\" option: non-empty string expected"
    end
    ctx.host = host

    -- extension: where peer states are saved for a new master
    local sf = opts.state_file
    if sf == nil then
        ctx.state_file = state_file_path(shm, u)
    elseif sf == false then
        ctx.state_file = nil
    elseif type(sf) == "string" and sf ~= "" then
        ctx.state_file = sf
    else
        return nil, "bad \"state_file\" option: path or false expected"
    end

    return ctx, primary, backup
end

-- the "st" keys of this upstream's peers, forgetting removed peers
local function init_states(ctx, primary, backup)
    local dict = ctx.dict
    local list = {}
    for i = 1, #primary do
        list[#list + 1] = ROLE_PRIMARY .. " " .. primary[i].name
    end
    for i = 1, #backup do
        list[#list + 1] = ROLE_BACKUP .. " " .. backup[i].name
    end
    local list_str = concat(list, "\n")

    local old = dict:get(ctx.idx_key)
    local saved
    if old == nil then
        -- nothing known in this shm yet: a new master
        saved = load_state_file(ctx)
    end

    -- every key this call created, deleted again when something does not fit
    local added = {}
    local function reserve(key, val)
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
    local function undo()
        for i = 1, #added do
            dict:delete(added[i])
        end
    end

    -- the state and the counters of every peer: a round then never needs
    -- new shm memory for them (safe_add: never evicts other upstreams' keys)
    local function init(peers, role)
        for i = 1, #peers do
            local p = peers[i]
            local st = saved and saved[role .. p.name]
            if st == nil then
                st = p.down and 1 or 0
            end
            local ok, err = reserve(peer_key(ctx, "st", role, p.name), st)
            if ok then
                for k = 1, #PEER_COUNTERS do
                    ok, err = reserve(peer_key(ctx, PEER_COUNTERS[k], role,
                                               p.name), 0)
                    if not ok then
                        break
                    end
                end
            end
            if not ok then
                return nil, "failed to initialise the state of peer " .. p.name
                            .. ": " .. err
            end
        end
        return true
    end
    local ok, err = init(primary, ROLE_PRIMARY)
    if ok then
        ok, err = init(backup, ROLE_BACKUP)
    end
    if ok then
        ok, err = reserve(ctx.ver_key, 0)
        if not ok then
            err = "failed to initialise the state version: " .. err
        end
    end
    if ok and old ~= list_str then
        ok, err = dict:safe_set(ctx.idx_key, list_str)
        if not ok then
            err = "failed to save the peer list: " .. err
        end
    end
    if ok then
        -- another worker of this nginx may have failed at the same time and
        -- deleted keys this one found existing: all must be there
        local function check(peers, role)
            for i = 1, #peers do
                if dict:get(peer_key(ctx, "st", role, peers[i].name)) == nil then
                    return nil, "failed to initialise the state of peer "
                                .. peers[i].name .. ": no memory"
                end
            end
            return true
        end
        ok, err = check(primary, ROLE_PRIMARY)
        if ok then
            ok, err = check(backup, ROLE_BACKUP)
        end
    end
    if not ok then
        undo()
        return nil, err
    end

    if old ~= list_str then
        if old then
            -- forget the peers removed from the config
            local keep = {}
            for i = 1, #list do
                keep[list[i]] = true
            end
            for entry in old:gmatch("[^\n]+") do
                if not keep[entry] then
                    local role, name = str_sub(entry, 1, 1), str_sub(entry, 3)
                    for kind in pairs(ctx.key_cache) do
                        if kind ~= "fr" then
                            dict:delete(peer_key(ctx, kind, role, name))
                        end
                    end
                    for _, reason in ipairs(REASONS) do
                        dict:delete(peer_key(ctx, "fr", role,
                                             name .. ":" .. reason))
                    end
                end
            end
        end
        safe_incr(dict, ctx.ver_key, 1)
    end
    return true
end

function _M.spawn_checker(opts)
    local ctx, primary, backup = validate(opts)
    if not ctx then
        return nil, primary
    end

    if ngx.get_phase() == "init" then
        return nil, "spawn_checker must be called from init_worker_by_lua*"
    end

    local u = ctx.upstream
    ctx.key_cache = new_key_cache()
    ctx.ver_key = "ver:" .. u
    ctx.lock_key = "lock:" .. u
    ctx.throttle_key = "next:" .. u
    ctx.idx_key = "peers:" .. u
    ctx.pid = worker_pid()
    ctx.lock_refreshed = 0

    -- the first tick runs after this handler returns; cancelled below if the
    -- states cannot be initialised, so nothing is left half-started
    local tok, terr = timer_at(0, tick, ctx)
    if not tok then
        return nil, "failed to create timer: " .. tostring(terr)
    end

    local ok, err = init_states(ctx, primary, backup)
    if not ok then
        ctx.cancelled = true
        return nil, err
    end

    ok, err = start_sync_timer()
    if not ok then
        ctx.cancelled = true
        return nil, "failed to create timer: " .. tostring(err)
    end

    -- new workers (after HUP) start with the known states
    apply_states(ctx, primary, backup)
    ctx.version = ctx.dict:get(ctx.ver_key)

    checkers[u] = ctx
    return true
end


------------------------------------------------------------------------
-- status pages
------------------------------------------------------------------------

-- peer is DOWN? from the shm when a checker owns the group, else local
local function peer_is_down(ctx, role, peer)
    if ctx then
        local st = ctx.dict:get(peer_key(ctx, "st", role, peer.name))
        if st ~= nil then
            return st == 1
        end
    end
    return peer.down == true
end

local function status_block(out, u)
    local ctx = checkers[u]
    out[#out + 1] = "Upstream " .. u .. (ctx and "" or " (NO checkers)")
    local primary, backup = fetch_peers(u)
    if not primary then
        out[#out + 1] = "    " .. tostring(backup)
        return
    end
    out[#out + 1] = "    Primary Peers"
    for i = 1, #primary do
        local p = primary[i]
        out[#out + 1] = "        " .. p.name .. " "
                        .. (peer_is_down(ctx, ROLE_PRIMARY, p) and "DOWN" or "UP")
    end
    out[#out + 1] = "    Backup Peers"
    for i = 1, #backup do
        local p = backup[i]
        out[#out + 1] = "        " .. p.name .. " "
                        .. (peer_is_down(ctx, ROLE_BACKUP, p) and "DOWN" or "UP")
    end
end

function _M.status_page()
    local ok, res = pcall(function ()
        local names, err = get_upstreams()
        if not names then
            return "failed to get upstream names: " .. tostring(err)
        end
        local blocks = {}
        for i = 1, #names do
            local out = {}
            status_block(out, names[i])
            blocks[#blocks + 1] = concat(out, "\n") .. "\n"
        end
        return concat(blocks, "\n")
    end)
    if not ok then
        return "failed to get upstream names: " .. tostring(res)
    end
    return res
end

local function esc(v)
    v = str_gsub(v, "\\", "\\\\")
    v = str_gsub(v, "\"", "\\\"")
    v = str_gsub(v, "\n", "\\n")
    return v
end

local HEADER = "# HELP nginx_upstream_status_info The running status of "
               .. "nginx upstream\n"
               .. "# TYPE nginx_upstream_status_info gauge\n"

local function prom_aggregate(out, name, up, down, unknown)
    local p = "nginx_upstream_status_info{name=\"" .. name .. "\",status=\""
    out[#out + 1] = p .. "UP\"} " .. up .. "\n"
    out[#out + 1] = p .. "DOWN\"} " .. down .. "\n"
    out[#out + 1] = p .. "UNKNOWN\"} " .. unknown .. "\n"
end

local function prom_upstream(out, u)
    local name = esc(u)
    local ctx = checkers[u]
    if not ctx then
        prom_aggregate(out, name, 0, 0, 1)
        return
    end
    local primary, backup = fetch_peers(u)
    if not primary then
        prom_aggregate(out, name, 0, 1, 0)
        return
    end
    local any_up = false
    local function peers_lines(peers, role, role_label)
        for i = 1, #peers do
            local p = peers[i]
            local down = peer_is_down(ctx, role, p)
            if not down then
                any_up = true
            end
            local pre = "nginx_upstream_status_info{name=\"" .. name
                        .. "\",endpoint=\"" .. esc(p.name) .. "\",status=\""
            local post = "\",role=\"" .. role_label .. "\"} "
            out[#out + 1] = pre .. "UP" .. post .. (down and "0" or "1") .. "\n"
            out[#out + 1] = pre .. "DOWN" .. post .. (down and "1" or "0") .. "\n"
        end
    end
    peers_lines(primary, ROLE_PRIMARY, "PRIMARY")
    peers_lines(backup, ROLE_BACKUP, "BACKUP")
    if any_up then
        prom_aggregate(out, name, 1, 0, 0)
    else
        prom_aggregate(out, name, 0, 1, 0)
    end
end

local EXTENDED = {
    { "nginx_upstream_peer_consecutive_failures", "gauge",
      "Consecutive failed checks of the peer", "cf" },
    { "nginx_upstream_peer_consecutive_successes", "gauge",
      "Consecutive successful checks of a DOWN peer", "cs" },
    { "nginx_upstream_peer_last_check_duration_seconds", "gauge",
      "Duration of the last check of the peer", "d" },
    { "nginx_upstream_peer_checks_total", "counter",
      "Checks of the peer", "n" },
}

local function fmt_num(v)
    if v == math_floor(v) and v < 1e15 and v > -1e15 then
        return str_format("%d", v)
    end
    return str_format("%.6f", v)
end

local function prom_extended(out, names)
    local groups = {}
    for i = 1, #names do
        local u = names[i]
        local ctx = checkers[u]
        if ctx then
            local primary, backup = fetch_peers(u)
            if primary then
                groups[#groups + 1] = { ctx = ctx, primary = primary,
                                        backup = backup }
            end
        end
    end

    local function each_peer(fn)
        for _, g in ipairs(groups) do
            for _, p in ipairs(g.primary) do
                fn(g.ctx, ROLE_PRIMARY, "PRIMARY", p)
            end
            for _, p in ipairs(g.backup) do
                fn(g.ctx, ROLE_BACKUP, "BACKUP", p)
            end
        end
    end

    local function labels(ctx, role_label, p)
        return "name=\"" .. esc(ctx.upstream) .. "\",endpoint=\""
               .. esc(p.name) .. "\",role=\"" .. role_label .. "\""
    end

    for _, fam in ipairs(EXTENDED) do
        local metric, typ, help, kind = fam[1], fam[2], fam[3], fam[4]
        out[#out + 1] = "# HELP " .. metric .. " " .. help .. "\n"
        out[#out + 1] = "# TYPE " .. metric .. " " .. typ .. "\n"
        each_peer(function (ctx, role, role_label, p)
            local v = ctx.dict:get(peer_key(ctx, kind, role, p.name)) or 0
            out[#out + 1] = metric .. "{" .. labels(ctx, role_label, p) .. "} "
                            .. fmt_num(v) .. "\n"
        end)
    end

    local metric = "nginx_upstream_peer_check_failures_total"
    out[#out + 1] = "# HELP " .. metric .. " Failed checks of the peer by reason\n"
    out[#out + 1] = "# TYPE " .. metric .. " counter\n"
    each_peer(function (ctx, role, role_label, p)
        local l = labels(ctx, role_label, p)
        for _, reason in ipairs(REASONS) do
            local v = ctx.dict:get(peer_key(ctx, "fr", role,
                                            p.name .. ":" .. reason)) or 0
            out[#out + 1] = metric .. "{" .. l .. ",reason=\"" .. reason
                            .. "\"} " .. fmt_num(v) .. "\n"
        end
    end)
end

function _M.prometheus_status_page(opts)
    local ok, res, err = pcall(function ()
        local names, gerr = get_upstreams()
        if not names then
            return nil, "failed to get upstream names: " .. tostring(gerr)
        end
        local out = { HEADER }
        for i = 1, #names do
            prom_upstream(out, names[i])
        end
        if type(opts) == "table" and opts.extended then
            prom_extended(out, names)
        end
        return concat(out)
    end)
    if not ok then
        return nil, "failed to build the status page: " .. tostring(res)
    end
    return res, err
end

return _M
