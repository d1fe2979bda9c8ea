-- Health as data (resty.upstream.healthcheck.status_json): hc.status_json()
-- returns one JSON document for every upstream from get_upstreams() (the
-- dashboard's /traffic/health.json in conf/nginx.conf serves it):
--
--   { "time": T, "upstreams": { NAME: { "checked": bool, "peers": [
--       { "name", "role" ("primary"|"backup"), "state" ("UP"|"DOWN"),
--         "checked", "consecutive_failures", "consecutive_successes",
--         "checks", "last_check", "last_check_duration", "since",
--         "transitions", "last_failure": { "time", "reason", "message" } } ] } } }
--
-- Times are ngx.now() seconds (null when never recorded).  States and
-- counters come from the checker's shm when this worker has a checker for
-- the group, else from this worker's peers.  Strings from backends are made
-- valid UTF-8 and escaped; keys are never repeated.

local upstream = require "ngx.upstream"
local state = require "resty.upstream.healthcheck.state"
local slice = require "resty.upstream.healthcheck.slice"
local page_cache = require "resty.upstream.healthcheck.page_cache"
local keys = require "resty.upstream.healthcheck.keys"

local type = type
local tostring = tostring
local tonumber = tonumber
local concat = table.concat
local str_gsub = string.gsub
local str_byte = string.byte
local str_match = string.match
local str_format = string.format
local math_floor = math.floor

local get_upstreams = upstream.get_upstreams
local fetch_peers = state.fetch_peers
local checker_of = state.checker

local PRIMARY = keys.PRIMARY
local BACKUP = keys.BACKUP

local _M = {}

local function json_string(s)
    -- a backend's bytes: keep the JSON valid UTF-8
    s = str_gsub(tostring(s), "[\128-\255]", "?")
    return '"' .. str_gsub(s, '[%c"\\]', function (c)
        return str_format("\\u%04x", str_byte(c))
    end) .. '"'
end

local function json_number(v)
    if v ~= v or v == 1 / 0 or v == -1 / 0 then
        return "null"
    end
    if v == math_floor(v) and v < 1e15 and v > -1e15 then
        return str_format("%d", v)
    end
    return str_format("%.6f", v)
end

local function json_value(v)
    if v == nil then
        return "null"
    end
    local t = type(v)
    if t == "number" then
        return json_number(v)
    elseif t == "boolean" then
        return v and "true" or "false"
    end
    return json_string(v)
end

-- an object from { key, value, key, value, ... } (values already JSON)
local function object(pairs_list)
    local out = {}
    for i = 1, #pairs_list, 2 do
        out[#out + 1] = json_string(pairs_list[i]) .. ":" .. pairs_list[i + 1]
    end
    return "{" .. concat(out, ",") .. "}"
end

local function last_failure(lf)
    local t, reason, msg = str_match(lf or "", "^(%S+) (%S+) (.*)$")
    if not t then
        return "null"
    end
    return object({ "time", json_value(tonumber(t)), "reason", json_string(reason),
                    "message", json_string(msg) })
end

local function peer_doc(ctx, role, p)
    local get
    if ctx then
        local dict, ks = ctx.dict, ctx.keys
        get = function (kind)
            return dict:get(ks:peer(kind, role, p.name))
        end
    else
        get = function () return nil end
    end
    local st = get("state")
    local down
    if st == nil then
        down = p.down == true
    else
        down = st == 1
    end
    return object({
        "name", json_string(p.name),
        "role", json_string(role == PRIMARY and "primary" or "backup"),
        "state", json_string(down and "DOWN" or "UP"),
        "checked", json_value(st ~= nil),
        "consecutive_failures", json_value(get("consecutive_failures") or 0),
        "consecutive_successes", json_value(get("consecutive_successes") or 0),
        "checks", json_value(get("checks") or 0),
        "last_check", json_value(get("last_check")),
        "last_check_duration", json_value(get("last_check_duration")),
        "since", json_value(get("state_changed")),
        "transitions", json_value(get("transitions") or 0),
        "last_failure", last_failure(get("last_failure")),
    })
end

local function upstream_doc(u, tick)
    local ctx = checker_of(u)
    local peers = {}
    local primary, backup = fetch_peers(u)
    tick(slice.BREAK)
    if primary then
        for i = 1, #primary do
            tick()
            peers[#peers + 1] = peer_doc(ctx, PRIMARY, primary[i])
        end
        for i = 1, #backup do
            tick()
            peers[#peers + 1] = peer_doc(ctx, BACKUP, backup[i])
        end
    end
    local checked = ctx ~= nil and ctx.dict:get(ctx.keys.peer_list) ~= nil
    return object({ "checked", json_value(checked),
                    "peers", "[" .. concat(peers, ",") .. "]" })
end

-- the JSON text (no trailing newline), or nil, err; never raises
local function status_text()
    local names, err = get_upstreams()
    if not names then
        return nil, "failed to get upstream names: " .. tostring(err)
    end
    local ups, seen = {}, {}
    local tick = slice.new()
    for i = 1, #names do
        local u = names[i]
        if not seen[u] then
            seen[u] = true
            ups[#ups + 1] = u
            ups[#ups + 1] = upstream_doc(u, tick)
        end
    end
    return object({ "time", json_value(ngx.now()), "upstreams", object(ups) })
end

function _M.status_json()
    local res, err, raised = page_cache.get("json", status_text)
    if res == nil then
        return nil, raised and "failed to build the status: " .. tostring(err) or err
    end
    -- one value: ngx.print(hc.status_json()) must not print a nil after it
    return res
end

return _M
