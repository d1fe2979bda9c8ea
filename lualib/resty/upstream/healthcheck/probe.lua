-- One check of one peer (resty.upstream.healthcheck.probe): TCP connect, TLS
-- handshake for https, send the request, read the status line, judge the
-- status.  Returns nil on success, or reason, message; the reasons are the
-- labels of the failure counters (REASONS), the messages start with the
-- prefixes operators grep for (spec "Log lines").  Touches no shm: the
-- caller records the result (state.lua).
--
-- Hostile peers are bounded (spec "Bounds"): the status line must be complete
-- within `timeout` after the request was sent however slowly it trickles in,
-- it is read in pieces of at most STATUS_LINE_MAX bytes in all, a whole check
-- never takes more than 3 x timeout, and a worker that is exiting gives up
-- the read within READ_SLICE.

local ngx = ngx
local tostring = tostring
local tonumber = tonumber
local concat = table.concat
local str_sub = string.sub
local str_find = string.find
local str_match = string.match
local math_ceil = math.ceil

local tcp = ngx.socket.tcp
local now = ngx.now
local update_time = ngx.update_time
local worker_exiting = ngx.worker.exiting

-- bytes: the longest status line, CRLF included; never buffered beyond
local STATUS_LINE_MAX = 8192
-- seconds: the longest single wait of a read, so that an exiting worker
-- (reload, quit) notices it and abandons the check
local READ_SLICE = 0.1
-- a whole check: connect + send + status line (https: the handshake too)
local CHECK_TIMEOUTS = 3

local _M = { STATUS_LINE_MAX = STATUS_LINE_MAX }

-- failure reasons, in the order they are reported by the extended metrics
_M.REASONS = { "connect", "timeout", "tls", "send", "receive",
               "status_line", "status" }

-- what run() returns when the worker started exiting: nothing to record
_M.ABANDONED = "abandoned"

-- the steps of a check: the reason of their failure and the message prefix
local CONNECT = { reason = "connect", prefix = "failed to connect to " }
local HANDSHAKE = { reason = "tls", prefix = "failed to ssl handshake to " }
local SEND = { reason = "send", prefix = "failed to send request to " }
local RECEIVE = { reason = "receive",
                  prefix = "failed to receive status line from " }

local function step_failed(step, peer, err)
    local reason = step.reason
    if err == "timeout" then
        reason = "timeout"
    elseif err == "status line too long" then
        reason = "status_line"
    end
    return reason, step.prefix .. peer.name .. ": " .. tostring(err)
end

local function clock()
    update_time()
    return now()
end

-- The one place that decides how long a step may take: `timeout` (ms), but
-- never past `deadline` (seconds, the end of the whole check or of the
-- status line).  Returns false when no time is left.
local function arm(sock, ctx, deadline, slice)
    local left = math_ceil((deadline - clock()) * 1000)
    if left < 1 then
        return false
    end
    local ms = ctx.timeout
    if left < ms then
        ms = left
    end
    if slice and ms > slice * 1000 then
        ms = slice * 1000
    end
    sock:settimeout(ms)      -- >= 1: 0 would mean the lua_socket_* defaults
    return true
end

local function connect(ctx, peer, check_end)
    local sock, err = tcp()
    if not sock then
        return nil, "connect", CONNECT.prefix .. peer.name
                    .. ": failed to create socket: " .. tostring(err)
    end
    arm(sock, ctx, check_end)
    local ok
    if peer.port then
        ok, err = sock:connect(peer.host, peer.port)
    else
        ok, err = sock:connect(peer.host)
    end
    if not ok then
        return nil, step_failed(CONNECT, peer, err)
    end
    return sock
end

local function handshake(ctx, peer, sock, check_end)
    if not arm(sock, ctx, check_end) then
        return step_failed(HANDSHAKE, peer, "timeout")
    end
    -- not `false` as the first argument: with it, resty.core returns true
    -- without looking at the verification result when the handshake
    -- completes at once (lua-nginx-module 0.10.23)
    local ok, err = sock:sslhandshake(nil, ctx.host, ctx.ssl_verify)
    if not ok then
        return step_failed(HANDSHAKE, peer, err)
    end
    return nil
end

-- the status line, however the peer sends it (one byte at a time, never a
-- newline): line, or nil, err ("timeout", "status line too long", ...)
local function read_status_line(ctx, sock, line_end)
    local parts, got = {}, 0
    while true do
        if worker_exiting() then
            return nil, _M.ABANDONED
        end
        if not arm(sock, ctx, line_end, READ_SLICE) then
            return nil, "timeout"
        end
        local data, err = sock:receiveany(STATUS_LINE_MAX - got)
        if data then
            local nl = str_find(data, "\n", 1, true)
            if nl then
                parts[#parts + 1] = str_sub(data, 1, nl - 1)
                local line = concat(parts)
                if str_sub(line, -1) == "\r" then
                    line = str_sub(line, 1, -2)
                end
                return line
            end
            got = got + #data
            if got >= STATUS_LINE_MAX then
                return nil, "status line too long"
            end
            parts[#parts + 1] = data
        elseif err ~= "timeout" then
            return nil, err
        end
        -- a slice ran out (the read timeout leaves the socket usable)
    end
end

-- sends the request and reads the status line: line, or nil, reason, message
local function exchange(ctx, peer, sock, check_end)
    if not arm(sock, ctx, check_end) then
        return nil, step_failed(SEND, peer, "timeout")
    end
    local bytes, err = sock:send(ctx.http_req)
    if not bytes then
        return nil, step_failed(SEND, peer, err)
    end
    local line_end = clock() + ctx.timeout / 1000
    if line_end > check_end then
        line_end = check_end
    end
    local line
    line, err = read_status_line(ctx, sock, line_end)
    if not line then
        if err == _M.ABANDONED then
            return nil, err
        end
        return nil, step_failed(RECEIVE, peer, err)
    end
    return line
end

-- nil when the status line says success, else reason, message; the code is
-- exactly three digits ("HTTP/1.1 2000 OK" is a bad status line)
local function judge(ctx, peer, line)
    local status = str_match(line, "^HTTP/%d%.%d +(%d%d%d)$")
                   or str_match(line, "^HTTP/%d%.%d +(%d%d%d)[ \t]")
    if not status then
        return "status_line", "bad status line from " .. peer.name .. ": "
                              .. str_sub(line, 1, 64)
    end
    local statuses = ctx.statuses
    if statuses and not statuses[tonumber(status)] then
        return "status", "bad status code from " .. peer.name .. ": " .. status
    end
    return nil
end

-- peer: { name =, host =, port = (nil for unix:) }; returns nil, or reason,
-- message, or ABANDONED when the worker is exiting
function _M.run(ctx, peer)
    local check_end = clock() + CHECK_TIMEOUTS * ctx.timeout / 1000
    local sock, reason, msg = connect(ctx, peer, check_end)
    if not sock then
        return reason, msg
    end
    if ctx.https then
        reason, msg = handshake(ctx, peer, sock, check_end)
        if reason then
            sock:close()
            return reason, msg
        end
    end
    local line
    line, reason, msg = exchange(ctx, peer, sock, check_end)
    sock:close()
    if not line then
        return reason, msg
    end
    return judge(ctx, peer, line)
end

return _M
