-- One http/https check of one peer (resty.upstream.healthcheck.probe): TCP
-- connect, TLS handshake for https (client certificate, SNI = `host` or the
-- peer's server name), send the request, read the status line, judge the
-- status, then the `match` option's headers and body (match.lua); tcp checks
-- are probe_tcp.lua.  Returns nil on success, or reason, message; the reasons are the
-- labels of the failure counters (REASONS), the messages start with the
-- prefixes operators grep for (spec "Log lines").  Touches no shm: the
-- caller records the result (state.lua).
--
-- Hostile peers are bounded (spec "Bounds"): the status line must be complete
-- within `timeout` after the request was sent however slowly it trickles in,
-- it is read in pieces of at most STATUS_LINE_MAX bytes in all, a whole check
-- never takes more than 3 x timeout, and a worker that is exiting gives up
-- the check within EXIT_POLL (the round's exit watch, sock.exit_watch).

local sock_steps = require "resty.upstream.healthcheck.sock"
local match = require "resty.upstream.healthcheck.match"

local tostring = tostring
local tonumber = tonumber
local concat = table.concat
local str_sub = string.sub
local str_find = string.find
local str_match = string.match

local worker_exiting = ngx.worker.exiting

local clock = sock_steps.clock
local arm = sock_steps.arm
local connect = sock_steps.connect
local step_failed = sock_steps.step_failed
local printable = sock_steps.printable

-- bytes: the longest status line, CRLF included; never buffered beyond
local STATUS_LINE_MAX = 8192
-- a whole check: connect + send + status line (https: the handshake too)
local CHECK_TIMEOUTS = 3

local _M = { STATUS_LINE_MAX = STATUS_LINE_MAX, CHECK_TIMEOUTS = CHECK_TIMEOUTS }

-- failure reasons, in the order they are reported by the extended metrics
-- (the contract's seven, then the tcp, `match` and live-traffic ones)
_M.REASONS = { "connect", "timeout", "tls", "send", "receive",
               "status_line", "status",
               "expect", "match_status", "match_header", "match_body",
               "passive" }

-- what run() returns when the worker started exiting: nothing to record
_M.ABANDONED = sock_steps.ABANDONED

-- the steps of a check: the reason of their failure and the message prefix
local HANDSHAKE = { reason = "tls", prefix = "failed to ssl handshake to " }
local SEND = { reason = "send", prefix = "failed to send request to " }
local RECEIVE = { reason = "receive",
                  prefix = "failed to receive status line from ",
                  too_long = "status line too long",
                  too_long_reason = "status_line" }

local function handshake(ctx, peer, sock, check_end)
    if not arm(sock, ctx, check_end) then
        return step_failed(HANDSHAKE, peer, "timeout")
    end
    if ctx.client_cert then
        -- parsed once by spawn_checker (options.lua), not per probe
        local ok, err = sock:setclientcert(ctx.client_cert, ctx.client_key)
        if not ok then
            return step_failed(HANDSHAKE, peer, "client certificate: "
                                                .. tostring(err))
        end
    end
    -- not `false` as the first argument: with it, resty.core returns true
    -- without looking at the verification result when the handshake
    -- completes at once (lua-nginx-module 0.10.23)
    local ok, err = sock:sslhandshake(nil, peer.sni or ctx.host,
                                      ctx.ssl_verify)
    if not ok then
        return step_failed(HANDSHAKE, peer, err)
    end
    return nil
end

-- the status line, however the peer sends it (one byte at a time, never a
-- newline): line and the bytes read after it, or nil, err ("timeout",
-- "status line too long", ...)
local function read_status_line(ctx, sock, line_end)
    local parts, got = {}, 0
    while true do
        if worker_exiting() then
            return nil, _M.ABANDONED
        end
        if not arm(sock, ctx, line_end) then
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
                -- the rest: the start of the headers (for `match`)
                return line, str_sub(data, nl + 1)
            end
            got = got + #data
            if got >= STATUS_LINE_MAX then
                return nil, "status line too long"
            end
            parts[#parts + 1] = data
        else
            -- the status line's deadline ("timeout"), or another error
            return nil, err
        end
    end
end

-- sends the request and reads the status line: line, the bytes after it
-- and the deadline of the status line, or nil, reason, message
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
    local line, rest
    line, rest = read_status_line(ctx, sock, line_end)
    if not line then
        err = rest
        if err == _M.ABANDONED then
            return nil, err
        end
        return nil, step_failed(RECEIVE, peer, err)
    end
    return line, rest
end

-- the status code when the status line says success, else nil, reason,
-- message; the code is exactly three digits ("HTTP/1.1 2000 OK" is a bad
-- status line)
local function judge(ctx, peer, line)
    local status = str_match(line, "^HTTP/%d%.%d +(%d%d%d)$")
                   or str_match(line, "^HTTP/%d%.%d +(%d%d%d)[ \t]")
    if not status then
        return nil, "status_line", "bad status line from " .. peer.name
                                   .. ": " .. printable(line)
    end
    local code = tonumber(status)
    local statuses = ctx.statuses
    if statuses and not statuses[code] then
        return nil, "status", "bad status code from " .. peer.name .. ": "
                              .. status
    end
    return code
end

local function check(ctx, peer)
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
    local line, rest
    line, rest, msg = exchange(ctx, peer, sock, check_end)
    if not line then
        sock:close()
        return rest, msg
    end
    local code
    code, reason, msg = judge(ctx, peer, line)
    if code and ctx.match then
        reason, msg = match.check(ctx, peer, sock, code, rest, check_end)
    end
    sock:close()
    return reason, msg
end

-- peer: { name =, host =, port = (nil for unix:), sni = }; returns nil, or
-- reason, message, or ABANDONED when the worker is exiting.  Runs in one of
-- the round's light threads, which the round kills when the worker exits.
_M.run = check

return _M
