-- Long renders give the worker back now and then
-- (resty.upstream.healthcheck.slice): a status page of thousands of peers
-- is hundreds of milliseconds of Lua without a yield, during which the
-- worker serves nothing else.  A slicer counts work (peers rendered) and,
-- every STEP units, sleeps 1 ms: the worker runs its other events and comes
-- back (not 0 s: without OpenResty's delayed-events patch to nginx,
-- ngx.sleep(0) logs a warning on every call).  Only where a yield is allowed (content, access, rewrite, timers);
-- elsewhere (header filter, log phase, init) it never yields.

local ngx = ngx
local get_phase = ngx.get_phase
local ngx_sleep = ngx.sleep

-- peer lines per slice: about 2 ms of the extended Prometheus page (2,000
-- peers: 110 slices, +110 ms of sleeps on a 200 ms render)
local STEP = 128
local PAUSE = 0.001

local YIELDABLE = {
    rewrite = true, server_rewrite = true, access = true, content = true,
    timer = true,
}

local _M = {}

-- tick(slice.BREAK) ends the slice now (after a big step: a peer list read)
_M.BREAK = STEP

local function never()
end

-- returns tick(units): call it as work is done
function _M.new()
    if not YIELDABLE[get_phase()] then
        return never
    end
    local done = 0
    return function (units)
        done = done + (units or 1)
        if done >= STEP then
            done = 0
            ngx_sleep(PAUSE)
        end
    end
end

return _M
