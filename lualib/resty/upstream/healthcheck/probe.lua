-- One check of one peer (resty.upstream.healthcheck.probe): TCP connect, TLS
-- handshake for https, send the request, read the status line, judge the
-- status.  Returns nil on success, or reason, message; the reasons are the
-- labels of the failure counters (REASONS).  Touches no shm: the caller
-- records the result (state.lua).

local ngx = ngx
local tostring = tostring
local tonumber = tonumber
local str_sub = string.sub
local str_match = string.match

local tcp = ngx.socket.tcp

local _M = {}

-- failure reasons, in the order they are reported by the extended metrics
_M.REASONS = { "connect", "timeout", "tls", "send", "receive",
               "status_line", "status" }

-- the steps of a check: the reason of their failure and its message
local CONNECT = { reason = "connect", timed_out = "connect() timed out",
                  failed = "connect() failed: " }
local HANDSHAKE = { reason = "tls", timed_out = "SSL handshake timed out",
                    failed = "SSL handshake failed: " }
local SEND = { reason = "send", timed_out = "send() timed out",
               failed = "send() failed: " }
local RECEIVE = { reason = "receive", timed_out = "receive() timed out",
                  failed = "receive() failed: " }

local function step_failed(step, err)
    if err == "timeout" then
        return "timeout", step.timed_out
    end
    return step.reason, step.failed .. tostring(err)
end

-- The one place that decides how long a step (CONNECT, HANDSHAKE, SEND,
-- RECEIVE) may take: for now each step gets `timeout` (ms) of its own.
local function arm(sock, ctx, step)
    sock:settimeout(ctx.timeout)
end

local function connect(ctx, peer)
    local sock, err = tcp()
    if not sock then
        return nil, "connect", "failed to create socket: " .. tostring(err)
    end
    arm(sock, ctx, CONNECT)
    local ok
    if peer.port then
        ok, err = sock:connect(peer.host, peer.port)
    else
        ok, err = sock:connect(peer.host)
    end
    if not ok then
        return nil, step_failed(CONNECT, err)
    end
    return sock
end

local function handshake(ctx, sock)
    arm(sock, ctx, HANDSHAKE)
    -- not `false` as the first argument: with it, resty.core returns true
    -- without looking at the verification result when the handshake
    -- completes at once (lua-nginx-module 0.10.23)
    local ok, err = sock:sslhandshake(nil, ctx.host, ctx.ssl_verify)
    if not ok then
        return step_failed(HANDSHAKE, err)
    end
    return nil
end

-- sends the request and reads the status line: line, or nil, reason, message
local function exchange(ctx, sock)
    arm(sock, ctx, SEND)
    local bytes, err = sock:send(ctx.http_req)
    if not bytes then
        return nil, step_failed(SEND, err)
    end
    arm(sock, ctx, RECEIVE)
    local line
    line, err = sock:receive("*l")
    if not line then
        return nil, step_failed(RECEIVE, err)
    end
    return line
end

-- nil when the status line says success, else reason, message
local function judge(ctx, line)
    local status = str_match(line, "^HTTP/%d+%.%d+%s+(%d%d%d)")
    if not status then
        return "status_line", "bad status line: " .. str_sub(line, 1, 64)
    end
    local statuses = ctx.statuses
    if statuses and not statuses[tonumber(status)] then
        return "status", "bad status code " .. status
    end
    return nil
end

-- peer: { host =, port = (nil for unix:) }; returns nil or reason, message
function _M.run(ctx, peer)
    local sock, reason, msg = connect(ctx, peer)
    if not sock then
        return reason, msg
    end
    if ctx.https then
        reason, msg = handshake(ctx, sock)
        if reason then
            sock:close()
            return reason, msg
        end
    end
    local line
    line, reason, msg = exchange(ctx, sock)
    sock:close()
    if not line then
        return reason, msg
    end
    return judge(ctx, line)
end

return _M
