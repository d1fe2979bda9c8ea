-- Status pages (resty.upstream.healthcheck.render): the plain-text status
-- page and the Prometheus text (plus the extended per-peer families), for
-- every upstream from ngx.upstream.get_upstreams().  States come from the
-- shm when this worker has a checker for the group, else from this
-- worker's peers; any worker can serve them.

local upstream = require "ngx.upstream"
local keys = require "resty.upstream.healthcheck.keys"
local probe = require "resty.upstream.healthcheck.probe"
local state = require "resty.upstream.healthcheck.state"
local slice = require "resty.upstream.healthcheck.slice"
local page_cache = require "resty.upstream.healthcheck.page_cache"

local type = type
local ipairs = ipairs
local pcall = pcall
local tostring = tostring
local concat = table.concat
local str_gsub = string.gsub
local str_format = string.format
local math_floor = math.floor

local get_upstreams = upstream.get_upstreams
local fetch_peers = state.fetch_peers
local checker_of = state.checker
local is_down = state.is_down

local BREAK = slice.BREAK
local PRIMARY = keys.PRIMARY
local BACKUP = keys.BACKUP
local REASONS = probe.REASONS

local _M = {}


------------------------------------------------------------------------
-- plain text
------------------------------------------------------------------------

local function peer_lines(out, ctx, peers, role, tick)
    for i = 1, #peers do
        tick()
        local p = peers[i]
        out[#out + 1] = "        " .. p.name .. " "
                        .. (is_down(ctx, role, p) and "DOWN" or "UP")
    end
end

local function status_block(out, u, tick)
    local ctx = checker_of(u)
    out[#out + 1] = "Upstream " .. u .. (ctx and "" or " (NO checkers)")
    local primary, backup = fetch_peers(u)
    if not primary then
        out[#out + 1] = "    " .. tostring(backup)
        return
    end
    out[#out + 1] = "    Primary Peers"
    peer_lines(out, ctx, primary, PRIMARY, tick)
    out[#out + 1] = "    Backup Peers"
    peer_lines(out, ctx, backup, BACKUP, tick)
end

function _M.status_page()
    local ok, res = pcall(function ()
        local names, err = get_upstreams()
        if not names then
            return "failed to get upstream names: " .. tostring(err)
        end
        local blocks = {}
        local tick = slice.new()
        for i = 1, #names do
            local out = {}
            status_block(out, names[i], tick)
            blocks[#blocks + 1] = concat(out, "\n") .. "\n"
        end
        return concat(blocks, "\n")
    end)
    if not ok then
        return "failed to get upstream names: " .. tostring(res)
    end
    return res
end


------------------------------------------------------------------------
-- Prometheus
------------------------------------------------------------------------

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

-- two lines per peer; returns true when one of them is up
local function prom_peers(out, ctx, name, peers, role, role_label, tick)
    local any_up = false
    for i = 1, #peers do
        tick()
        local p = peers[i]
        local down = is_down(ctx, role, p)
        if not down then
            any_up = true
        end
        local pre = "nginx_upstream_status_info{name=\"" .. name
                    .. "\",endpoint=\"" .. esc(p.name) .. "\",status=\""
        local post = "\",role=\"" .. role_label .. "\"} "
        out[#out + 1] = pre .. "UP" .. post .. (down and "0" or "1") .. "\n"
        out[#out + 1] = pre .. "DOWN" .. post .. (down and "1" or "0") .. "\n"
    end
    return any_up
end

local function prom_upstream(out, u, tick)
    local name = esc(u)
    local ctx = checker_of(u)
    if not ctx then
        prom_aggregate(out, name, 0, 0, 1)
        return
    end
    local primary, backup = fetch_peers(u)
    tick(BREAK)
    if not primary then
        prom_aggregate(out, name, 0, 1, 0)
        return
    end
    local up_primary = prom_peers(out, ctx, name, primary, PRIMARY, "PRIMARY",
                                  tick)
    local up_backup = prom_peers(out, ctx, name, backup, BACKUP, "BACKUP", tick)
    if up_primary or up_backup then
        prom_aggregate(out, name, 1, 0, 0)
    else
        prom_aggregate(out, name, 0, 1, 0)
    end
end

-- the extended families read from one per-peer key kind each
local EXTENDED = {
    { "nginx_upstream_peer_consecutive_failures", "gauge",
      "Consecutive failed checks of the peer", "consecutive_failures" },
    { "nginx_upstream_peer_consecutive_successes", "gauge",
      "Consecutive successful checks of a DOWN peer", "consecutive_successes" },
    { "nginx_upstream_peer_last_check_duration_seconds", "gauge",
      "Duration of the last check of the peer", "last_check_duration" },
    { "nginx_upstream_peer_checks_total", "counter",
      "Checks of the peer", "checks" },
    { "nginx_upstream_peer_transitions_total", "counter",
      "State changes (UP to DOWN and back) of the peer", "transitions" },
    { "nginx_upstream_peer_last_change_timestamp_seconds", "gauge",
      "Time of the last state change of the peer (0: none seen)",
      "state_changed" },
}

local function fmt_num(v)
    if v == math_floor(v) and v < 1e15 and v > -1e15 then
        return str_format("%d", v)
    end
    return str_format("%.6f", v)
end

-- the checked groups whose peers can be read: { ctx =, primary =, backup = }
local function checked_groups(names, tick)
    local groups = {}
    for i = 1, #names do
        local ctx = checker_of(names[i])
        if ctx then
            local primary, backup = fetch_peers(names[i])
            tick(BREAK)
            if primary then
                groups[#groups + 1] = { ctx = ctx, primary = primary,
                                        backup = backup }
            end
        end
    end
    return groups
end

local function each_peer(groups, tick, fn)
    for _, g in ipairs(groups) do
        for _, p in ipairs(g.primary) do
            tick()
            fn(g.ctx, PRIMARY, "PRIMARY", p)
        end
        for _, p in ipairs(g.backup) do
            tick()
            fn(g.ctx, BACKUP, "BACKUP", p)
        end
    end
end

local function labels(ctx, role_label, p)
    return "name=\"" .. esc(ctx.upstream) .. "\",endpoint=\""
           .. esc(p.name) .. "\",role=\"" .. role_label .. "\""
end

local function family_header(out, metric, typ, help)
    out[#out + 1] = "# HELP " .. metric .. " " .. help .. "\n"
    out[#out + 1] = "# TYPE " .. metric .. " " .. typ .. "\n"
end

local function prom_extended(out, names, tick)
    local groups = checked_groups(names, tick)

    for _, fam in ipairs(EXTENDED) do
        local metric, kind = fam[1], fam[4]
        family_header(out, metric, fam[2], fam[3])
        each_peer(groups, tick, function (ctx, role, role_label, p)
            local v = ctx.dict:get(ctx.keys:peer(kind, role, p.name)) or 0
            out[#out + 1] = metric .. "{" .. labels(ctx, role_label, p) .. "} "
                            .. fmt_num(v) .. "\n"
        end)
    end

    local metric = "nginx_upstream_peer_check_failures_total"
    family_header(out, metric, "counter", "Failed checks of the peer by reason")
    each_peer(groups, tick, function (ctx, role, role_label, p)
        local l = labels(ctx, role_label, p)
        for _, reason in ipairs(REASONS) do
            local v = ctx.dict:get(ctx.keys:failure(role, p.name, reason)) or 0
            out[#out + 1] = metric .. "{" .. l .. ",reason=\"" .. reason
                            .. "\"} " .. fmt_num(v) .. "\n"
        end
    end)
end

local function prometheus_text(extended)
    local names, err = get_upstreams()
    if not names then
        return nil, "failed to get upstream names: " .. tostring(err)
    end
    local out = { HEADER }
    local tick = slice.new()
    for i = 1, #names do
        prom_upstream(out, names[i], tick)
    end
    if extended then
        prom_extended(out, names, tick)
    end
    tick(BREAK)
    return concat(out)
end

local function prometheus_plain()
    return prometheus_text(false)
end

local function prometheus_extended()
    return prometheus_text(true)
end

function _M.prometheus_status_page(opts)
    local extended = type(opts) == "table" and opts.extended
    local res, err, raised
    if extended then
        res, err, raised = page_cache.get("prometheus_extended", prometheus_extended)
    else
        res, err, raised = page_cache.get("prometheus", prometheus_plain)
    end
    if res == nil then
        return nil, raised and "failed to build the status page: " .. tostring(err) or err
    end
    -- one value: ngx.print(hc.status_json()) must not print a nil after it
    return res
end

return _M
