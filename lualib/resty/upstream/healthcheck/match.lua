-- Response matching for http/https checks (resty.upstream.healthcheck.match):
-- the `match` option's validation, and the check of a response whose status
-- line probe.lua already read and judged.
--
--   match = { status = {200, "3xx"} | "2xx", header = { NAME = "pattern" },
--             body = "pattern", body_max = 8192 }
--
-- Headers are read (at most HEADERS_MAX bytes) only when `header` or `body`
-- is given, the body (at most `body_max` bytes: up to Content-Length, or the
-- close, or the first body_max bytes; a chunked body is matched as sent)
-- only when `body` is.  Both must arrive within `timeout` after the status
-- line, never past the check's deadline, however slowly they trickle in;
-- they are read in time linear in their size (sock.read_until).  A mismatch
-- is a failure with its own reason (match_status, match_header, match_body).

local sock_steps = require "resty.upstream.healthcheck.sock"

local type = type
local pairs = pairs
local pcall = pcall
local tostring = tostring
local tonumber = tonumber
local math_floor = math.floor
local str_find = string.find
local str_sub = string.sub
local str_lower = string.lower
local str_match = string.match
local str_gmatch = string.gmatch
local str_format = string.format

local clock = sock_steps.clock
local read_until = sock_steps.read_until
local step_failed = sock_steps.step_failed
local printable = sock_steps.printable

-- bytes: the most of the header block read (status line not included)
local HEADERS_MAX = 8192
local BODY_MAX_DEFAULT = 8192
local BODY_MAX_LIMIT = 1048576

local _M = { HEADERS_MAX = HEADERS_MAX, BODY_MAX_DEFAULT = BODY_MAX_DEFAULT }

local RECEIVE_HEADERS = { reason = "receive",
                          prefix = "failed to receive headers from ",
                          too_long = "too long", too_long_reason = "match_header" }
local RECEIVE_BODY = { reason = "receive", prefix = "failed to receive body from " }
local MISMATCH = "response does not match from "


------------------------------------------------------------------------
-- validation
------------------------------------------------------------------------

local function bad(what)
    return "bad \"match\" option: " .. what
end

local function is_pattern(v)
    return type(v) == "string" and pcall(str_find, "", v)
end

-- one element of `status`: a code (100..999) or a class "Nxx"
local function add_status(set, v)
    if type(v) == "number" and v == math_floor(v) and v >= 100 and v <= 999 then
        set[v] = true
        return true
    end
    local class = type(v) == "string" and str_match(v, "^([1-9])[xX][xX]$")
    if not class then
        return false
    end
    local first = tonumber(class) * 100
    for code = first, first + 99 do
        set[code] = true
    end
    return true
end

local function compile_status(v)
    local set = {}
    if type(v) ~= "table" then
        if not add_status(set, v) then
            return nil, bad("\"status\": a status code, \"Nxx\" or an array of them expected")
        end
        return set
    end
    local n = 0
    for _ in pairs(v) do
        n = n + 1
    end
    if n == 0 or n ~= #v then
        return nil, bad("\"status\": non-empty array expected")
    end
    for i = 1, #v do
        if not add_status(set, v[i]) then
            return nil, bad("\"status\" element " .. i
                            .. ": a status code or \"Nxx\" expected")
        end
    end
    return set
end

local function compile_headers(v)
    if type(v) ~= "table" then
        return nil, bad("\"header\": table of NAME = \"pattern\" expected")
    end
    local list = {}
    for name, pattern in pairs(v) do
        if type(name) ~= "string" or not str_find(name, "^[%w!#$%%&'*+.^_`|~-]+$") then
            return nil, bad("\"header\": bad header name " .. tostring(name))
        end
        if not is_pattern(pattern) then
            return nil, bad("\"header\" " .. name .. ": Lua pattern expected")
        end
        list[#list + 1] = { name = name, lname = str_lower(name),
                            pattern = pattern }
    end
    if #list == 0 then
        return nil, bad("\"header\": at least one header expected")
    end
    return list
end

local KEYS = { status = true, header = true, body = true, body_max = true }

-- the user's table -> { status = set, header = list, body = pattern,
-- body_max = n }, or nil, err
function _M.validate(spec, v)
    if type(v) ~= "table" then
        return nil, bad("table expected")
    end
    for k in pairs(v) do
        if not KEYS[k] then
            return nil, bad("unknown key \"" .. tostring(k) .. "\"")
        end
    end
    local m, err = { body_max = BODY_MAX_DEFAULT }, nil
    if v.status ~= nil then
        m.status, err = compile_status(v.status)
        if not m.status then
            return nil, err
        end
    end
    if v.header ~= nil then
        m.header, err = compile_headers(v.header)
        if not m.header then
            return nil, err
        end
    end
    if v.body ~= nil then
        if not is_pattern(v.body) then
            return nil, bad("\"body\": Lua pattern expected")
        end
        m.body = v.body
    end
    local max = v.body_max
    if max ~= nil then
        if type(max) ~= "number" or max ~= math_floor(max) or max < 1
           or max > BODY_MAX_LIMIT
        then
            return nil, bad("\"body_max\" must be an integer between 1 and "
                            .. BODY_MAX_LIMIT)
        end
        m.body_max = max
    end
    if not (m.status or m.header or m.body) then
        return nil, bad("\"status\", \"header\" or \"body\" expected")
    end
    return m
end


------------------------------------------------------------------------
-- the check
------------------------------------------------------------------------

-- end of the header block in data (after the status line), or nil
local function headers_end(data)
    local _, e = str_find(data, "^\r?\n")
    if e then
        return e
    end
    _, e = str_find(data, "\r?\n\r?\n")
    return e
end

-- { lowercase name = { value, ... } }
local function parse_headers(block)
    local headers = {}
    for line in str_gmatch(block, "([^\n]*)\n") do
        local name, value = str_match(line, "^([^:%s]+)%s*:%s*(.-)%s*$")
        if name then
            name = str_lower(name)
            local values = headers[name]
            if not values then
                values = {}
                headers[name] = values
            end
            values[#values + 1] = value
        end
    end
    return headers
end

local function header_mismatch(m, headers)
    for i = 1, #m.header do
        local h = m.header[i]
        local values, found = headers[h.lname], false
        for k = 1, values and #values or 0 do
            if str_find(values[k], h.pattern) then
                found = true
                break
            end
        end
        if not found then
            return values and "header " .. h.name .. ": " .. printable(values[1])
                   or "header " .. h.name .. " missing"
        end
    end
    return nil
end

-- reads the body until `body` matches or it is complete: nil, or reason, msg.
-- read_until tests the pattern at geometrically spaced sizes and on the whole
-- body read, so a body trickled in small pieces costs time linear in its size
local function check_body(ctx, peer, sock, m, headers, data, resp_end)
    local want = m.body_max
    local cl = headers["content-length"]
    cl = cl and tonumber(cl[1])
    if cl and cl >= 0 and cl < want then
        want = cl
    end
    if #data > want then
        data = str_sub(data, 1, want)
    end
    local pattern = m.body
    local function done(d)
        if str_find(d, pattern) then
            return true
        end
        return nil
    end
    local matched, err, got = read_until(ctx, sock, resp_end, want, done, data)
    if matched then
        return nil
    end
    -- complete (closed, or want bytes) without a match: a mismatch
    if err ~= "closed" and err ~= "too long" then
        if err == sock_steps.ABANDONED then
            return err
        end
        return step_failed(RECEIVE_BODY, peer, err)
    end
    return "match_body", MISMATCH .. peer.name .. ": body ("
                         .. #(got or "") .. " bytes)"
end

-- the rest of a response whose status line said `code`: nil when it
-- matches, else reason, message (ABANDONED when the worker is exiting)
function _M.check(ctx, peer, sock, code, rest, check_end)
    local m = ctx.match
    if m.status and not m.status[code] then
        return "match_status", MISMATCH .. peer.name .. ": status " .. code
    end
    if not (m.header or m.body) then
        return nil
    end
    local resp_end = clock() + ctx.timeout / 1000
    if resp_end > check_end then
        resp_end = check_end
    end
    local hend, err, got = read_until(ctx, sock, resp_end, HEADERS_MAX,
                                      headers_end, rest)
    if not hend then
        if err == sock_steps.ABANDONED then
            return err
        end
        if err == "closed" then
            err = str_format("closed after %d bytes", #(got or ""))
        end
        return step_failed(RECEIVE_HEADERS, peer, err)
    end
    local headers = parse_headers(str_sub(got, 1, hend))
    if m.header then
        local why = header_mismatch(m, headers)
        if why then
            return "match_header", MISMATCH .. peer.name .. ": " .. why
        end
    end
    if m.body then
        return check_body(ctx, peer, sock, m, headers, str_sub(got, hend + 1),
                          resp_end)
    end
    return nil
end

return _M
