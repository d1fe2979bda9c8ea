-- Passive checks (resty.upstream.healthcheck.passive): live traffic's
-- results fed into the checker's state.
--
--   passive = { fall = 5, statuses = {502, 503, 504}, window = 10000 }
--
-- Each attempt of a request (one per try of a proxy_next_upstream chain)
-- fails when its status is listed, when the connection failed (connect time
-- "-") or when nginx gave up waiting for the header (header time "-" with
-- nginx's own 502/504).  ngx.upstream's log-phase handler (C) judges every
-- proxied request with the statuses each checker registered
-- (watch_live_failures), so the common request runs no Lua at all; it
-- records failed attempts and posts a semaphore, and a light thread of this
-- worker drains them (take_live_failures) in the same event loop
-- iteration.  `fall` failures of an UP peer within a window (a per-peer shm
-- counter that expires `window` after the window's first failure) turn it
-- DOWN at once, in this worker and, through the version number, in the
-- others; active checks bring it back after `rise` successes.
--
-- hc.report() in log_by_lua* was the way in before (issue 29): it is now a
-- no-op for every request the C handler judges, and still counts a
-- request whose own group has no passive checker for the group it names.

local upstream = require "ngx.upstream"
local semaphore = require "ngx.semaphore"
local state = require "resty.upstream.healthcheck.state"

local ngx = ngx
local type = type
local next = next
local pairs = pairs
local pcall = pcall
local tonumber = tonumber
local tostring = tostring
local math_floor = math.floor
local str_find = string.find
local str_format = string.format
local str_gmatch = string.gmatch

local var = ngx.var
local ngx_now = ngx.now
local errlog = ngx.log
local ERR = ngx.ERR
local WARN = ngx.WARN
local timer_at = ngx.timer.at
local worker_exiting = ngx.worker.exiting
local current_upstream_name = upstream.current_upstream_name
local watch_live_failures = upstream.watch_live_failures
local take_live_failures = upstream.take_live_failures

local safe_incr = state.safe_incr
local is_down = state.is_down

local DEFAULT_FALL = 5
local DEFAULT_WINDOW = 10000
local DEFAULT_STATUSES = { 502, 503, 504 }
local MAX_MS = 2 ^ 31 - 1
-- seconds the drainer waits for the C handler's post before it looks
-- whether the worker is exiting (an exit wakes it at once: on_exit)
local DRAIN_WAIT = 60
local EXIT_WATCH = 3600

local _M = {}

-- upstream name -> checker context with passive checks (this worker)
local by_upstream = {}
-- peer address -> { ctx =, peer = } (the first group that has it), for
-- requests whose group has no name (proxy_pass with variables)
local by_addr = {}
-- status -> true when some passive checker may count it: every listed one,
-- and nginx's own 502/504 (connect errors, timeouts)
local watched = { [502] = true, [504] = true }


------------------------------------------------------------------------
-- validation
------------------------------------------------------------------------

local KEYS = { fall = true, statuses = true, window = true }

local function bad(what)
    return "bad \"passive\" option: " .. what
end

local function int_in(v, min, max)
    return type(v) == "number" and v == math_floor(v) and v >= min and v <= max
end

local function status_set(v)
    if type(v) ~= "table" or #v == 0 then
        return nil, bad("\"statuses\": non-empty array of status codes expected")
    end
    local set, n = {}, 0
    for _ in pairs(v) do
        n = n + 1
    end
    if n ~= #v then
        return nil, bad("\"statuses\": array expected")
    end
    for i = 1, #v do
        if not int_in(v[i], 100, 999) then
            return nil, bad("\"statuses\" element " .. i
                            .. " is not an HTTP status code")
        end
        set[v[i]] = true
    end
    return set
end

-- the user's table -> { fall =, statuses = set, window = (s) }, or nil, err
function _M.validate(spec, v)
    if type(v) ~= "table" then
        return nil, bad("table expected")
    end
    for k in pairs(v) do
        if not KEYS[k] then
            return nil, bad("unknown key \"" .. tostring(k) .. "\"")
        end
    end
    local fall = v.fall == nil and DEFAULT_FALL or v.fall
    if not int_in(fall, 1, 10000) then
        return nil, bad("\"fall\" must be an integer between 1 and 10000")
    end
    local window = v.window == nil and DEFAULT_WINDOW or v.window
    if not int_in(window, 1, MAX_MS) then
        return nil, bad("\"window\" must be an integer between 1 and " .. MAX_MS)
    end
    local statuses, err = status_set(v.statuses == nil and DEFAULT_STATUSES
                                     or v.statuses)
    if not statuses then
        return nil, err
    end
    return { fall = fall, statuses = statuses, window = window / 1000 }
end


------------------------------------------------------------------------
-- this worker's passive checkers
------------------------------------------------------------------------

-- the peers live traffic can name ({ name =, role = }); an address is
-- looked up in the first checker that has it
local function learn(ctx, primary, backup)
    local peers = {}
    local function add(list, role)
        for i = 1, #list do
            local p = list[i]
            if not peers[p.name] then
                local peer = { name = p.name, role = role }
                peers[p.name] = peer
                if not by_addr[p.name] then
                    by_addr[p.name] = { ctx = ctx, peer = peer }
                end
            end
        end
    end
    add(primary, "p")
    add(backup, "b")
    ctx.passive_peers = peers
end

-- DNS changed the peers (peers.lua): this checker's addresses again
function _M.refresh(ctx, primary, backup)
    for addr, hit in pairs(by_addr) do
        if hit.ctx == ctx then
            by_addr[addr] = nil
        end
    end
    learn(ctx, primary, backup)
end


------------------------------------------------------------------------
-- judging attempts (the C handler's records, and hc.report())
------------------------------------------------------------------------

local function failed(ctx, peer, why)
    if is_down(ctx, peer.role, peer) then
        return
    end
    local dict, ks, p = ctx.dict, ctx.keys, ctx.passive
    local key = ks:peer("passive_failures", peer.role, peer.name)
    local n = dict:incr(key, 1)
    if not n then
        -- the window starts now (safe_add: never evicts)
        if dict:safe_add(key, 1, p.window) then
            n = 1
        else
            n = dict:incr(key, 1)
        end
    end
    safe_incr(dict, ks:failure(peer.role, peer.name, "passive"), 1)
    local msg = "live request to " .. peer.name .. " failed: " .. why
    dict:safe_set(ks:peer("last_failure", peer.role, peer.name),
                  str_format("%.3f passive %s", ngx_now(), msg))
    if n and n >= p.fall then
        state.passive_down(ctx, peer, n, msg)
    end
end

-- one attempt: did it fail? (status, connect and header time as strings)
local function attempt_failed(p, status, connect_time, header_time)
    local code = tonumber(status)
    if code and p.statuses[code] then
        return "status " .. status
    end
    if connect_time == "-" then
        return "connect failed (" .. tostring(status) .. ")"
    end
    if header_time == "-" and (code == 502 or code == 504) then
        return "no response (" .. status .. ")"
    end
    return nil
end

local function find_peer(ctx, addr)
    if ctx then
        local peer = ctx.passive_peers[addr]
        return peer and ctx, peer
    end
    local hit = by_addr[addr]
    if hit then
        return hit.ctx, hit.peer
    end
end

local function report_one(ctx, addr, status, connect_time, header_time)
    local c, peer = find_peer(ctx, addr)
    if not peer then
        return
    end
    local why = attempt_failed(c.passive, status, connect_time, header_time)
    if why then
        failed(c, peer, why)
    end
end

-- every token of a $upstream_* list ("a, b : c" -> a, b, ":", c)
local function tokens(s)
    local list = {}
    for t in str_gmatch(s or "", "[^%s,]+") do
        list[#list + 1] = t
    end
    return list
end

-- a chain of attempts (proxy_next_upstream) or of groups (" : ")
local function report_chain(ctx, addrs, statuses)
    local a = tokens(addrs)
    local s = tokens(statuses)
    local c = tokens(var.upstream_connect_time)
    local h = tokens(var.upstream_header_time)
    for i = 1, #a do
        if a[i] ~= ":" then
            report_one(ctx, a[i], s[i], c[i], h[i])
        end
    end
end

-- hc.report(name) for a request the C handler does not judge
local function report(name)
    local statuses = var.upstream_status
    if not statuses then
        return
    end
    -- the common case first: one attempt (a number) with a status no
    -- passive checker counts
    local code = tonumber(statuses)
    if code and not watched[code] then
        return
    end
    local addrs = var.upstream_addr
    if not addrs then
        return
    end
    local ctx = by_upstream[name]
    if not ctx then
        return
    end
    if not code then
        -- a chain of attempts, or several groups (" : "): then each address
        -- is looked up on its own
        return report_chain(str_find(addrs, " : ", 1, true) and nil or ctx,
                            addrs, statuses)
    end
    report_one(ctx, addrs, statuses, var.upstream_connect_time,
               var.upstream_header_time)
end

------------------------------------------------------------------------
-- the C handler's failures
------------------------------------------------------------------------

-- posted by ngx.upstream's log handler (once per batch) and at exit
local wake

local function drain()
    local failures, dropped = take_live_failures()
    for i = 1, #failures do
        local f = failures[i]
        -- a record names the group it was watched as, or none: by address
        local ctx = f.upstream and by_upstream[f.upstream]
        if ctx or not f.upstream then
            report_one(ctx, f.addr,
                       f.status == 0 and "-" or tostring(f.status),
                       f.connect_failed and "-" or "",
                       f.no_header and "-" or "")
        end
    end
    if dropped > 0 then
        errlog(WARN, "healthcheck: ", dropped, " live request failure(s) ",
               "not counted: more than ", #failures, " between two drains")
    end
end

-- one light thread per worker for its whole life; it runs only when
-- something failed, or once a minute (worker_exiting, and a drain that
-- failed is tried again: the records stay until a take succeeds)
local function drainer(premature)
    if premature then
        return
    end
    while not worker_exiting() do
        wake:wait(DRAIN_WAIT)
        local ok, err = pcall(drain)
        if not ok then
            errlog(ERR, "healthcheck: failed to count live failures: ", err)
        end
    end
end

-- a pending timer is fired early (premature) when the worker exits: then
-- the drainer must not keep it waiting for DRAIN_WAIT
local function on_exit(premature)
    if premature then
        wake:post(1)
        return
    end
    timer_at(EXIT_WATCH, on_exit)
end

local function start_drainer()
    if wake then
        return wake
    end
    local sema, err = semaphore.new(0)
    if not sema then
        return nil, err
    end
    local ok, terr = timer_at(0, drainer)
    if not ok then
        return nil, "failed to create timer: " .. tostring(terr)
    end
    ok, terr = timer_at(EXIT_WATCH, on_exit)
    if not ok then
        return nil, "failed to create timer: " .. tostring(terr)
    end
    wake = sema
    return wake
end

local function status_list(set)
    local list = {}
    for code in pairs(set) do
        list[#list + 1] = code
    end
    return list
end

-- spawn_checker: true, or nil, err
function _M.register(ctx, primary, backup)
    local sema, err = start_drainer()
    if not sema then
        return nil, err
    end
    local ok, werr = watch_live_failures(ctx.upstream,
                                         status_list(ctx.passive.statuses),
                                         sema)
    if not ok then
        return nil, "failed to watch live failures: " .. tostring(werr)
    end
    learn(ctx, primary, backup)
    by_upstream[ctx.upstream] = ctx
    for code in pairs(ctx.passive.statuses) do
        watched[code] = true
    end
    return true
end


------------------------------------------------------------------------
-- hc.report()
------------------------------------------------------------------------

-- does the C handler judge this request?  Every request of a group with a
-- passive checker, and every request without a group (by address)
local function judged_in_c()
    local u = current_upstream_name()
    return u == nil or by_upstream[u] ~= nil
end

-- hc.report([upstream]): call in log_by_lua*; never raises.  true, or nil,
-- err.  Passive checks no longer need it (issue 29); it counts only what
-- the C handler does not: a request whose own group has no passive checker,
-- for the group named
function _M.report(name)
    if name == nil or next(by_upstream) == nil then
        return true
    end
    local ok, judged = pcall(judged_in_c)
    if not ok then
        return nil, judged
    end
    if judged then
        return true
    end
    local rok, err = pcall(report, name)
    if not rok then
        return nil, err
    end
    return true
end

return _M
