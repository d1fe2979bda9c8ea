-- Big pages from a per-worker cache (resty.upstream.healthcheck.page_cache):
-- the extended Prometheus page of 2,000 peers is 4 MB built from ~30,000
-- strings.  Even rendered in slices (slice.lua), building it on every
-- request keeps the worker busy with slices, the final join and the garbage
-- of the last page: two clients looping on it and on status_json() held a
-- plain request of the same worker up to 96 ms (p99).  So a page of at
-- least MIN_BYTES is kept and served again until a checker's round could
-- have changed its counters (the shortest checker period, within
-- MIN_AGE..MAX_AGE) or a checked upstream changed a state (the states'
-- version in the shm: a state change shows at once).  While one request
-- renders an aged page anew, the others of the worker get the last one
-- instead of rendering it too.  Small pages render on every request.

local ngx = ngx
local pcall = pcall
local ngx_now = ngx.now
local state = require "resty.upstream.healthcheck.state"

local versions_signature = state.versions_signature

local MIN_BYTES = 128 * 1024
local MIN_AGE = 1           -- seconds
local MAX_AGE = 10
-- a render older than this is taken for dead (its request was finalized
-- mid-render): the next request renders again
local RENDER_STALE = 10

local _M = {}

local pages = {}            -- kind -> { text, at, sig }
local rendering = {}        -- kind -> when a request of this worker started it

local function max_age(period)
    if not period or period > MAX_AGE then
        return MAX_AGE
    end
    return period < MIN_AGE and MIN_AGE or period
end

local function fresh(page, sig, period, now)
    return page and page.sig == sig and now - page.at < max_age(period)
end

-- build() returns text or nil, err; get returns the same, or nil, err, true
-- when build raised err
function _M.get(kind, build)
    local now = ngx_now()
    local sig, period = versions_signature()
    local page = pages[kind]
    if fresh(page, sig, period, now) then
        return page.text
    end
    -- only aged, not changed: while another request renders it anew, the
    -- last one will do
    local started = rendering[kind]
    if page and page.sig == sig and started and now - started < RENDER_STALE then
        return page.text
    end

    rendering[kind] = now
    local ok, text, err = pcall(build)
    rendering[kind] = nil
    if not ok then
        return nil, text, true
    end
    if text and #text >= MIN_BYTES then
        -- the states read while rendering are at least as new as sig
        pages[kind] = { text = text, at = now, sig = sig }
    else
        pages[kind] = nil
    end
    return text, err
end

return _M
