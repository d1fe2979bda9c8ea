-- The options of spawn_checker (resty.upstream.healthcheck.options): one
-- table of specs, in the order the contract checks them (the first error
-- wins), and one walk over it that turns the user's table into a checker
-- context or `nil, err`.
--
-- A spec: name; kind (which checker below); field (the context field, when
-- not the name); required (error text when absent) or default (value, or a
-- function of the context built so far); min/max bounds and integer for
-- numbers (every number option has both); convert (applied to the value,
-- checked or default); types (the check types the option belongs to: given
-- with another type it is an error, and `required` holds for these only).
-- Error texts are the contract's; the number ones name the option and its
-- bounds.  The options beyond the contract come after its table, so its
-- order of errors is unchanged.
--
-- A key that is no option is looked at first: close to an option's name (a
-- typo: "intervall") it is an error naming that option, since the default
-- would run silently instead; otherwise (a config written for another
-- checker) it is only reported, and spawn_checker warns once.

local state = require "resty.upstream.healthcheck.state"
local match = require "resty.upstream.healthcheck.match"
local passive = require "resty.upstream.healthcheck.passive"
local client_cert = require "resty.upstream.healthcheck.client_cert"

local ngx = ngx
local type = type
local pairs = pairs
local ipairs = ipairs
local math_floor = math.floor
local math_huge = math.huge
local pcall = pcall
local tostring = tostring
local concat = table.concat
local sort = table.sort
local str_find = string.find
local str_byte = string.byte
local str_lower = string.lower
local str_sub = string.sub

local fetch_peers = state.fetch_peers

local _M = {}

local function is_int(v)
    return type(v) == "number" and v == math_floor(v) and v > -math_huge
           and v < math_huge
end

local function bad(spec, what)
    return "bad \"" .. spec.name .. "\" option: " .. what
end


-- kind -> function(spec, value, ctx) returning the value to store, or nil, err
local CHECK = {}

-- "name" for a string, else the value as Lua writes it
local function quoted(v)
    if type(v) == "string" then
        return "\"" .. v .. "\""
    end
    return tostring(v)
end

function CHECK.probe_type(spec, v)
    if v ~= "http" and v ~= "https" and v ~= "tcp" then
        return nil, spec.unsupported .. quoted(v)
    end
    return v
end

function CHECK.string(spec, v)
    if type(v) ~= "string" or (spec.non_empty and v == "") then
        return nil, bad(spec, spec.non_empty and "non-empty string expected"
                              or "string expected")
    end
    return v
end

function CHECK.shm(spec, v)
    local name, err = CHECK.string(spec, v)
    if not name then
        return nil, err
    end
    if not ngx.shared[name] then
        return nil, "shm \"" .. name .. "\" not found"
    end
    return name
end

function CHECK.upstream(spec, v)
    local name, err = CHECK.string(spec, v)
    if not name then
        return nil, err
    end
    local primary, perr = fetch_peers(name)
    if not primary then
        return nil, perr
    end
    return name
end

function CHECK.number(spec, v)
    if type(v) ~= "number" then
        return nil, bad(spec, "number expected, got " .. type(v))
    end
    if v ~= v then
        return nil, bad(spec, "number expected, got NaN")
    end
    if spec.integer and not is_int(v) then
        return nil, bad(spec, "integer expected")
    end
    local min, max = spec.min, spec.max
    if v < min or v > max then
        return nil, bad(spec, "must be between " .. min .. " and " .. max)
    end
    return v
end

-- an array of HTTP status codes -> a set
function CHECK.statuses(spec, v)
    if type(v) ~= "table" then
        return nil, bad(spec, "table expected")
    end
    local set = {}
    for i, code in ipairs(v) do
        if not is_int(code) or code < 100 or code > 999 then
            return nil, bad(spec, "element " .. i .. " is not an HTTP status code")
        end
        set[code] = true
    end
    for k in pairs(v) do
        if not is_int(k) or k < 1 or k > #v then
            return nil, bad(spec, "array expected")
        end
    end
    return set
end

function CHECK.boolean(spec, v)
    if type(v) ~= "boolean" then
        return nil, bad(spec, "boolean expected")
    end
    return v
end

-- a Lua pattern (string.find must accept it)
function CHECK.pattern(spec, v)
    if type(v) ~= "string" or v == "" or not pcall(str_find, "", v) then
        return nil, bad(spec, "Lua pattern expected")
    end
    return v
end

-- one of spec.values
function CHECK.enum(spec, v)
    for i = 1, #spec.values do
        if v == spec.values[i] then
            return v
        end
    end
    return nil, bad(spec, "one of \"" .. concat(spec.values, "\", \"")
                          .. "\" expected")
end

-- a name (SNI and verification), or true: each peer's configured host name
function CHECK.host(spec, v)
    if v == true then
        return true
    end
    return CHECK.string(spec, v)
end

function CHECK.match(spec, v)
    return match.validate(spec, v)
end

function CHECK.passive(spec, v)
    return passive.validate(spec, v)
end

-- extension: where peer states are saved for a new master (false: nowhere)
function CHECK.path_or_false(spec, v)
    if v == false then
        return false
    end
    if type(v) == "string" and v ~= "" then
        return v
    end
    return nil, bad(spec, "path or false expected")
end


local function interval_seconds(ms)
    if ms < 2 then
        ms = 2           -- the contract: under 2 ms is raised to 2 ms
    end
    return ms / 1000
end

local function default_state_file(ctx)
    return state.default_file(ctx.shm, ctx.upstream)
end

local function no_state_file(v)
    return v or nil
end

local function ms_to_seconds(ms)
    return ms / 1000
end

local HTTP = { http = true, https = true }
local HTTPS = { https = true }
local TCP = { tcp = true }

-- the contract's bounds (spec "Option bounds"): beyond them a timer delay
-- or a socket timeout overflows, or the checker does nothing useful
local MAX_MS = 2 ^ 31 - 1
local MAX_STREAK = 10000
local MAX_CONCURRENCY = 1000

-- the contract's order: the first error wins
local SPECS = {
    { name = "type", kind = "probe_type",
      required = "\"type\" option required",
      unsupported = "only \"http\", \"https\" and \"tcp\" type are "
                    .. "supported, not " },
    { name = "http_req", kind = "string", non_empty = true, types = HTTP,
      required = "\"http_req\" option required" },
    { name = "shm", kind = "shm", required = "\"shm\" option required" },
    { name = "upstream", kind = "upstream", required = "no upstream specified" },
    { name = "timeout", kind = "number", integer = true, default = 1000,
      min = 1, max = MAX_MS },
    { name = "interval", kind = "number", integer = true, default = 1000,
      min = 1, max = MAX_MS, convert = interval_seconds },
    { name = "fall", kind = "number", integer = true, default = 5, min = 1,
      max = MAX_STREAK },
    { name = "rise", kind = "number", integer = true, default = 2, min = 1,
      max = MAX_STREAK },
    { name = "valid_statuses", kind = "statuses", field = "statuses" },
    { name = "concurrency", kind = "number", integer = true, default = 1,
      min = 1, max = MAX_CONCURRENCY },
    { name = "port", kind = "number", integer = true, min = 1, max = 65535 },
    { name = "ssl_verify", kind = "boolean", default = true },
    { name = "host", kind = "host", non_empty = true },
    { name = "state_file", kind = "path_or_false",
      default = default_state_file, convert = no_state_file },
    -- beyond the contract (lualib/README.md)
    { name = "send", kind = "string", non_empty = true, types = TCP },
    { name = "expect", kind = "pattern", types = TCP },
    { name = "match", kind = "match", types = HTTP },
    { name = "jitter", kind = "number", integer = true, default = 0,
      min = 0, max = MAX_MS, convert = ms_to_seconds },
    { name = "interval_unhealthy", kind = "number", integer = true,
      min = 1, max = MAX_MS, convert = interval_seconds },
    { name = "initial_state", kind = "enum", values = { "up", "down" },
      default = "up" },
    { name = "ssl_cert", kind = "string", non_empty = true, types = HTTPS },
    { name = "ssl_key", kind = "string", non_empty = true, types = HTTPS },
    { name = "passive", kind = "passive" },
    -- peers DNS removed (peers.lua): their state is kept this long
    { name = "forget_after", kind = "number", integer = true, default = 60000,
      min = 0, max = MAX_MS, convert = ms_to_seconds },
}
_M.SPECS = SPECS


------------------------------------------------------------------------
-- keys that are no option
------------------------------------------------------------------------

-- Optimal string alignment distance: Levenshtein's, plus a swap of two
-- neighbours as one edit ("tyep" is one edit from "type").
local function distance(a, b)
    local la, lb = #a, #b
    local older, prev = nil, {}
    for j = 0, lb do
        prev[j] = j
    end
    for i = 1, la do
        local cur = { [0] = i }
        local ca = str_byte(a, i)
        for j = 1, lb do
            local cb = str_byte(b, j)
            local d = prev[j - 1] + (ca == cb and 0 or 1)
            if prev[j] + 1 < d then
                d = prev[j] + 1
            end
            if cur[j - 1] + 1 < d then
                d = cur[j - 1] + 1
            end
            if i > 1 and j > 1 and ca == str_byte(b, j - 1)
               and str_byte(a, i - 1) == cb and older[j - 2] + 1 < d
            then
                d = older[j - 2] + 1
            end
            cur[j] = d
        end
        older, prev = prev, cur
    end
    return prev[lb]
end

-- the option a key was probably meant to be, or nil: one edit away (two
-- for names of 8 letters or more), a letter case apart, or one name the
-- start of the other ("http_request", "forget"); the closest wins, the
-- first in SPECS among equals
local KEY_MAX = 64      -- longer keys are nobody's typo (and cost n x m)

local function meant(key)
    if type(key) ~= "string" or #key > KEY_MAX then
        return nil
    end
    key = str_lower(key)
    local best, best_d
    for i = 1, #SPECS do
        local name = SPECS[i].name
        local d = distance(key, name)
        local limit = #name >= 8 and 2 or 1
        local short, long = key, name
        if #short > #long then
            short, long = long, short
        end
        if (d <= limit or #short >= 4 and str_sub(long, 1, #short) == short)
           and (not best_d or d < best_d)
        then
            best, best_d = name, d
        end
    end
    return best
end

local KNOWN = {}
for i = 1, #SPECS do
    KNOWN[SPECS[i].name] = true
end

local function by_text(a, b)
    return a < b
end

-- the keys of opts that are no option: nil, or a sorted list of them as
-- the log shows them; nil, err when one looks like a misspelled option
local function unknown_keys(opts)
    local list
    for k in pairs(opts) do
        if not KNOWN[k] then
            local name = meant(k)
            if name then
                return nil, "unknown option " .. quoted(k)
                            .. " (did you mean \"" .. name .. "\"?)"
            end
            list = list or {}
            list[#list + 1] = quoted(k)
        end
    end
    if list then
        sort(list, by_text)
    end
    return list
end

local function option_value(spec, opts, ctx)
    local v = opts[spec.name]
    local applies = not spec.types or spec.types[ctx.type]
    if v ~= nil and not applies then
        return nil, bad(spec, "not used by \"" .. ctx.type .. "\" checks")
    end
    if v == nil then
        if spec.required and applies then
            return nil, spec.required
        end
        v = spec.default
        if type(v) == "function" then
            v = v(ctx)
        end
    else
        local err
        v, err = CHECK[spec.kind](spec, v, ctx)
        if v == nil then
            return nil, err
        end
    end
    if v ~= nil and spec.convert then
        v = spec.convert(v)
    end
    return v
end

-- returns the checker context { type =, https =, tcp =, http_req =, shm =,
-- dict =, upstream =, timeout = (ms), interval = (s), fall =, rise =,
-- statuses =, concurrency =, port =, ssl_verify =, host =, host_per_peer =,
-- state_file =, send =, expect =, match =, jitter = (s),
-- interval_unhealthy = (s), period = (s, the round period), initial_state =,
-- forget_after = (s),
-- client_cert =, client_key = (parsed), passive =, unknown = (the keys
-- that are no option, for a warning) }, or nil, err
function _M.validate(opts)
    if type(opts) ~= "table" then
        return nil, "options table expected"
    end
    local unknown, uerr = unknown_keys(opts)
    if uerr then
        return nil, uerr
    end
    local ctx = { unknown = unknown }
    for i = 1, #SPECS do
        local spec = SPECS[i]
        local v, err = option_value(spec, opts, ctx)
        if err then
            return nil, err
        end
        ctx[spec.field or spec.name] = v
    end
    ctx.https = ctx.type == "https"
    ctx.tcp = ctx.type == "tcp"
    ctx.dict = ngx.shared[ctx.shm]
    if ctx.host == true then
        ctx.host, ctx.host_per_peer = nil, true
    end
    -- rounds run at the shorter rate; each peer is checked at its own
    -- (round.lua)
    ctx.period = ctx.interval
    if ctx.interval_unhealthy and ctx.interval_unhealthy < ctx.period then
        ctx.period = ctx.interval_unhealthy
    end
    local err
    ctx.client_cert, ctx.client_key, err =
        client_cert.load(ctx.ssl_cert, ctx.ssl_key)
    if err then
        return nil, err
    end
    return ctx
end

return _M
