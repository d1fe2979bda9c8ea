-- Passive checks (resty.upstream.healthcheck.passive): live traffic's
-- results fed into the checker's state by hc.report() in log_by_lua*.
--
--   passive = { fall = 5, statuses = {502, 503, 504}, window = 10000 }
--
-- Each attempt of a request ($upstream_addr / $upstream_status /
-- $upstream_connect_time / $upstream_header_time: one entry per try of a
-- proxy_next_upstream chain, " : " between groups) fails when its status is
-- listed, when the connection failed (connect time "-") or when nginx gave
-- up waiting for the header (header time "-" with nginx's own 502/504).
-- `fall` failures of an UP peer within a window (a per-peer shm counter that
-- expires `window` after the window's first failure) turn it DOWN at once,
-- in this worker and, through the version number, in the others; active
-- checks bring it back after `rise` successes.  The common request (one
-- attempt, an unlisted status that is not 502/504) costs two ngx.var reads.

local upstream = require "ngx.upstream"
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
local current_upstream_name = upstream.current_upstream_name

local safe_incr = state.safe_incr
local is_down = state.is_down

local DEFAULT_FALL = 5
local DEFAULT_WINDOW = 10000
local DEFAULT_STATUSES = { 502, 503, 504 }
local MAX_MS = 2 ^ 31 - 1

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

-- spawn_checker
function _M.register(ctx, primary, backup)
    learn(ctx, primary, backup)
    by_upstream[ctx.upstream] = ctx
    for code in pairs(ctx.passive.statuses) do
        watched[code] = true
    end
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
-- hc.report()
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
    -- the group: given, else the request's (nil for a proxy_pass with
    -- variables: each address then names its group)
    local u = name or current_upstream_name()
    local ctx
    if u then
        ctx = by_upstream[u]
        if not ctx then
            return
        end
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

-- hc.report([upstream]): call in log_by_lua*; never raises.  true, or nil,
-- err
function _M.report(name)
    if next(by_upstream) == nil then
        return true
    end
    local ok, err = pcall(report, name)
    if not ok then
        return nil, err
    end
    return true
end

return _M
