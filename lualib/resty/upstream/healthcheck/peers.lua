-- Peers that DNS adds and removes while nginx runs
-- (resty.upstream.healthcheck.peers): upstreams with `server NAME resolve`
-- lines (nginx 1.27.3+, always with `zone`, so a peer's down flag is shared
-- by every worker).
--
-- The checker follows the peer set in every worker (the sync timer and each
-- round call follow()): when ngx.upstream's generation moved, the new peers
-- get their state (a known address keeps the one it had, else
-- `initial_state`), every peer is set to its state, the passive checks learn
-- the new addresses.  New peers start down because spawn_checker set the
-- `resolve` templates down (ngx.upstream.set_new_peers_down): no address
-- takes traffic before the checker has seen it, and a known-dead address
-- that DNS re-adds stays down until it passes `rise` checks.  One worker at
-- a time (a short shm lock) keeps the list of peers DNS removed: their keys
-- are forgotten `forget_after` (60 s) after DNS removed them, so churn
-- reuses the shm, and a dead address re-added meanwhile stays down.

local upstream = require "ngx.upstream"
local state = require "resty.upstream.healthcheck.state"
local passive = require "resty.upstream.healthcheck.passive"

local ngx = ngx
local ipairs = ipairs
local pairs = pairs
local tonumber = tonumber
local tostring = tostring
local concat = table.concat
local str_match = string.match

local log = ngx.log
local ERR = ngx.ERR
local ngx_now = ngx.now

local get_servers = upstream.get_servers
local get_peers_generation = upstream.get_peers_generation
local set_new_peers_down = upstream.set_new_peers_down
local fetch_peers = state.fetch_peers
local each_peer = state.each_peer
local apply = state.apply
local reserve_peer = state.reserve_peer
local new_reservation = state.new_reservation
local forget_peer = state.forget_peer

-- seconds: how long the bookkeeping lock may be held by a dead worker
local LOCK_TTL = 5

local _M = {}

local function errlog(...)
    log(ERR, "healthcheck: ", ...)
end

-- the first `resolve` line of upstream u, or nil
function _M.resolve_line(u)
    local servers = get_servers(u)
    for _, srv in ipairs(servers or {}) do
        if srv.resolve then
            return srv.name
        end
    end
end

-- a state for every peer that has none yet (DNS added it): the one the
-- state file remembers, else `initial_state`; never the template's down
local function admit(ctx, primary, backup)
    local dict, ks = ctx.dict, ctx.keys
    local reservation = new_reservation(dict)
    local failed
    each_peer(primary, backup, function (peer, role)
        if not failed and dict:get(ks:peer("state", role, peer.name)) == nil then
            local _
            _, failed = reserve_peer(ctx, reservation, peer, role, ctx.saved,
                                     false)
        end
    end)
    if failed then
        -- the peer stays as DNS added it: down, unchecked state
        errlog(failed, " (upstream \"", ctx.upstream, "\": the shm is full)")
    end
end

local function parse_gone(text)
    local gone = {}
    for line in (text or ""):gmatch("[^\n]+") do
        local t, entry = str_match(line, "^(%S+) (.+)$")
        if t then
            gone[entry] = tonumber(t)
        end
    end
    return gone
end

local function save_gone(ctx, gone)
    local out = {}
    for entry, t in pairs(gone) do
        out[#out + 1] = t .. " " .. entry
    end
    if #out == 0 then
        ctx.dict:delete(ctx.keys.gone)
        return
    end
    local ok, err = ctx.dict:safe_set(ctx.keys.gone, concat(out, "\n"))
    if not ok then
        errlog("failed to save the removed peers of upstream \"",
               ctx.upstream, "\": ", err)
    end
end

-- the peer list and the removed peers (one worker at a time): a peer gone
-- for `forget_after` is forgotten (its keys deleted), one that came back is no
-- longer gone
local function note_peers(ctx, primary, backup)
    local dict, ks = ctx.dict, ctx.keys
    if not dict:safe_add(ks.follow_lock, ctx.pid, LOCK_TTL) then
        return          -- another worker is at it
    end
    local list, current = {}, {}
    each_peer(primary, backup, function (peer, role)
        local entry = role .. " " .. peer.name
        if not current[entry] then
            current[entry] = true
            list[#list + 1] = entry
        end
    end)
    local now = ngx_now()
    local gone = parse_gone(dict:get(ks.gone))
    for entry in (dict:get(ks.peer_list) or ""):gmatch("[^\n]+") do
        if not current[entry] and not gone[entry] then
            gone[entry] = now
        end
    end
    local grace = ctx.forget_after
    for entry, t in pairs(gone) do
        if current[entry] then
            gone[entry] = nil
        elseif now - t >= grace then
            forget_peer(ctx, entry:sub(1, 1), entry:sub(3))
            gone[entry] = nil
        end
    end
    dict:safe_set(ks.peer_list, concat(list, "\n"))
    save_gone(ctx, gone)
    dict:delete(ks.follow_lock)
end

-- this worker follows DNS: true, or nil, err (state.sync calls it)
local function follow(ctx)
    local gen, err = get_peers_generation(ctx.upstream)
    if not gen then
        return nil, err
    end
    if gen == ctx.generation then
        return true
    end
    local primary, backup = fetch_peers(ctx.upstream)
    if not primary then
        return nil, backup
    end
    admit(ctx, primary, backup)
    apply(ctx, primary, backup)
    if ctx.passive then
        passive.refresh(ctx, primary, backup)
    end
    note_peers(ctx, primary, backup)
    ctx.generation = gen
    return true
end

-- spawn_checker, after the states are set up: new peers start down from now
-- on, and this worker follows the peer set.  true, or nil, err
function _M.start(ctx)
    local ok, err = set_new_peers_down(ctx.upstream, true)
    if not ok then
        return nil, "failed to make new peers start down: " .. tostring(err)
    end
    ctx.dynamic = true
    ctx.follow_peers = follow
    -- peers that appeared before this point get their state now
    ctx.generation = nil
    return follow(ctx)
end

-- the end of a round: removed peers past their grace are forgotten even
-- when DNS has not changed since
function _M.expire(ctx)
    local primary, backup = fetch_peers(ctx.upstream)
    if primary then
        note_peers(ctx, primary, backup)
    end
end

return _M
