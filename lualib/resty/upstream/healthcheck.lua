-- Active health checker for nginx upstream peers (resty.upstream.healthcheck).
--
-- Interface-compatible with OpenResty's lua-resty-upstream-healthcheck; the
-- contract is the project's spec healthcheck.md (docs: lualib/README.md).
-- This file is the public face; the parts live in healthcheck/:
--   options.lua      the option specs and their validation
--   keys.lua         every shm key
--   sock.lua         bounded socket steps (deadlines, capped reads)
--   probe.lua        one http/https check of one peer
--   match.lua        the `match` option: status, headers, body
--   probe_tcp.lua    one tcp check (connect, send, expect)
--   client_cert.lua  ssl_cert/ssl_key for mTLS checks
--   round.lua        rounds: timer, round lock, concurrency, jitter
--   state.lua        fall/rise, transitions, every worker's peers, state file
--   peers.lua        peers that DNS adds and removes (`server NAME resolve`)
--   passive.lua      the `passive` option: live failures (and hc.report())
--   render.lua       status page and Prometheus
--   status_json.lua  hc.status_json()
--   ready.lua        hc.checkers_ready(), hc.upstreams_live(): the probes

local ok_up, upstream = pcall(require, "ngx.upstream")
if not ok_up or type(upstream) ~= "table" then
    error("ngx_upstream_lua module required")
end

local keys = require "resty.upstream.healthcheck.keys"
local options = require "resty.upstream.healthcheck.options"
local passive = require "resty.upstream.healthcheck.passive"
local peers = require "resty.upstream.healthcheck.peers"
local status_json = require "resty.upstream.healthcheck.status_json"
local render = require "resty.upstream.healthcheck.render"
local round = require "resty.upstream.healthcheck.round"
local state = require "resty.upstream.healthcheck.state"
local ready = require "resty.upstream.healthcheck.ready"

local ngx = ngx
local tostring = tostring
local concat = table.concat
local worker_id = ngx.worker.id

local _M = {
    _VERSION = "0.1.0",
}

function _M.spawn_checker(opts)
    local ctx, err = options.validate(opts)
    if not ctx then
        return nil, err
    end
    if ngx.get_phase() == "init" then
        return nil, "spawn_checker must be called from init_worker_by_lua*"
    end
    local u = ctx.upstream
    if state.checker(u) then
        -- a second timer chain would double the check rate
        return nil, "checker already spawned for upstream " .. u
    end
    local primary, backup = state.fetch_peers(u)
    if not primary then
        return nil, backup
    end
    ctx.keys = keys.new(u)

    -- the first tick runs after this handler returns; cancelled below if the
    -- states cannot be initialised, so nothing is left half-started
    local ok, terr = round.start(ctx)
    if not ok then
        return nil, "failed to create timer: " .. tostring(terr)
    end

    ok, err = state.init(ctx, primary, backup)
    if not ok then
        ctx.cancelled = true
        return nil, err
    end

    ok, err = state.start_sync_timer()
    if not ok then
        ctx.cancelled = true
        return nil, "failed to create timer: " .. tostring(err)
    end

    -- new workers (after HUP) start with the known states
    state.apply(ctx, primary, backup)
    ctx.version = ctx.dict:get(ctx.keys.version)

    state.register(ctx)
    if ctx.passive then
        -- live failures judged in C from now on (passive.lua)
        ok, err = passive.register(ctx, primary, backup)
        if not ok then
            return nil, err
        end
    end
    if peers.resolve_line(u) then
        -- DNS changes the peers at run time: follow them (peers.lua)
        ok, err = peers.start(ctx)
        if not ok then
            return nil, err
        end
    end
    -- keys no option is close to (options.lua): said once, not per worker
    local unknown = ctx.unknown
    if unknown and (worker_id() or 0) == 0 then
        ngx.log(ngx.WARN, "healthcheck: unknown option", #unknown > 1 and "s"
                or "", " ignored by spawn_checker for upstream \"", u,
                "\": ", concat(unknown, ", "))
    end
    return true
end

_M.status_page = render.status_page
_M.prometheus_status_page = render.prometheus_status_page
_M.status_json = status_json.status_json
_M.report = passive.report
-- /readyz and /readyz/upstreams (conf/nginx.conf)
_M.checkers_ready = ready.checkers_ready
_M.upstreams_live = ready.upstreams_live
-- in init_by_lua*: mTLS files only root may read (lualib/README.md)
_M.load_client_cert = require("resty.upstream.healthcheck.client_cert").preload

return _M
