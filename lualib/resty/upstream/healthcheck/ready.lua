-- Probes (resty.upstream.healthcheck.ready): what /readyz and
-- /readyz/upstreams in conf/nginx.conf answer.
--
--   hc.checkers_ready()   every checker this worker spawned is running: its
--                         first check is done and its latest one is recent
--   hc.upstreams_live()   every upstream has a peer that is not down
--
-- Each returns true, or false and a one-line reason; neither raises.
--
-- A readiness probe asks the first question only.  Whether a backend is up is
-- the same answer on every replica: had readiness depended on it, one backend
-- outage would unready every replica at once, the Service would empty and
-- clients would get refused connections instead of a 502 or an error page.

local upstream = require "ngx.upstream"
local state = require "resty.upstream.healthcheck.state"
local keys = require "resty.upstream.healthcheck.keys"

local pcall = pcall
local ipairs = ipairs
local tostring = tostring
local str_format = string.format
local math_max = math.max
local now = ngx.now
local worker_exiting = ngx.worker.exiting

local get_upstreams = upstream.get_upstreams
local fetch_peers = state.fetch_peers
local checker_of = state.checker

local PRIMARY = keys.PRIMARY
local BACKUP = keys.BACKUP

local _M = {}

-- seconds without any check after which a checker counts as stopped: three
-- of its longest intervals, plus the jitter and the longest check
-- (3 x timeout, probe.lua) with slack, so a slow round never flaps readiness
local function stale_after(ctx)
    local interval = math_max(ctx.interval, ctx.interval_unhealthy or 0)
    return 3 * interval + (ctx.jitter or 0) + 4 * ctx.timeout / 1000 + 1
end

-- the latest last_check of the checker's peers, or nil if none was checked
local function latest_check(ctx, primary, backup)
    local dict, ks = ctx.dict, ctx.keys
    local latest
    for _, list in ipairs({ { PRIMARY, primary }, { BACKUP, backup } }) do
        local role, peers = list[1], list[2]
        for i = 1, #peers do
            local t = dict:get(ks:peer("last_check", role, peers[i].name))
            if t and (not latest or t > latest) then
                latest = t
            end
        end
    end
    return latest
end

local function checker_running(u, ctx)
    if ctx.cancelled then
        return false, "health checker of upstream " .. u .. " was cancelled"
    end
    local primary, backup = fetch_peers(u)
    if not primary then
        return false, backup
    end
    if #primary + #backup == 0 then
        return true
    end
    local latest = latest_check(ctx, primary, backup)
    if not latest then
        return false, "health checker of upstream " .. u .. " has not checked yet"
    end
    local age, limit = now() - latest, stale_after(ctx)
    if age > limit then
        return false, str_format("health checker of upstream %s has not checked for %.1f s "
                                 .. "(limit %.1f s)", u, age, limit)
    end
    return true
end

local function each_upstream(fn)
    local ok, res, reason = pcall(function ()
        local names, err = get_upstreams()
        if not names then
            return false, "failed to get upstream names: " .. tostring(err)
        end
        for i = 1, #names do
            local good, why = fn(names[i])
            if not good then
                return false, why
            end
        end
        return true
    end)
    if not ok then
        return false, tostring(res)
    end
    return res, reason
end

function _M.checkers_ready()
    if worker_exiting() then
        return false, "shutting down"
    end
    return each_upstream(function (u)
        local ctx = checker_of(u)
        if not ctx then
            return true
        end
        return checker_running(u, ctx)
    end)
end

local function has_live_peer(u)
    local primary, backup = fetch_peers(u)
    if not primary then
        return false, backup
    end
    for _, peers in ipairs({ primary, backup }) do
        for i = 1, #peers do
            if not peers[i].down then
                return true
            end
        end
    end
    return false, "no live peer in upstream " .. u
end

function _M.upstreams_live()
    return each_upstream(has_live_peer)
end

return _M
