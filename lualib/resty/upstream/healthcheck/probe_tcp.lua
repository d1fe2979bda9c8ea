-- One `type = "tcp"` check of one peer (resty.upstream.healthcheck.probe_tcp):
-- connect; then, when given, send the `send` bytes and read until the `expect`
-- Lua pattern is found in the first bytes read.  The same bounds as the http
-- checks (probe.lua): connect and send get `timeout` each, the expected
-- bytes must arrive within `timeout` after the send (or the connect) however
-- slowly they trickle, at most EXPECT_MAX bytes are read, the whole check
-- never takes more than 3 x timeout, and an exiting worker gives up the
-- check within EXIT_POLL (the round's exit watch, sock.exit_watch).  Returns nil on success, or
-- reason, message (reasons from probe.REASONS).  Touches no shm.

local sock_steps = require "resty.upstream.healthcheck.sock"
local probe = require "resty.upstream.healthcheck.probe"

local str_find = string.find
local str_sub = string.sub

local clock = sock_steps.clock
local arm = sock_steps.arm
local connect = sock_steps.connect
local read_until = sock_steps.read_until
local step_failed = sock_steps.step_failed
local printable = sock_steps.printable

-- bytes: the most read while looking for `expect` (as for a status line)
local EXPECT_MAX = probe.STATUS_LINE_MAX
local CHECK_TIMEOUTS = probe.CHECK_TIMEOUTS
local ABANDONED = sock_steps.ABANDONED

local _M = { EXPECT_MAX = EXPECT_MAX }

local SEND = { reason = "send", prefix = "failed to send to " }
local RECEIVE = { reason = "receive", prefix = "failed to receive from " }


local function unexpected(peer, data)
    return "expect", "unexpected answer from " .. peer.name .. ": \""
                     .. printable(data) .. "\""
end

-- nil, or reason, message
local function expect_answer(ctx, peer, sock, check_end)
    local read_end = clock() + ctx.timeout / 1000
    if read_end > check_end then
        read_end = check_end
    end
    local pattern = ctx.expect
    local found, err, data = read_until(ctx, sock, read_end, EXPECT_MAX,
        function (d)
            if str_find(d, pattern) then
                return true
            end
        end)
    if found then
        return nil
    end
    if err == ABANDONED then
        return ABANDONED
    end
    if data and data ~= "" then
        -- bytes came, but never the expected ones (closed, capped, or the
        -- deadline passed): a mismatch
        return unexpected(peer, data)
    end
    return step_failed(RECEIVE, peer, err)
end

local function check(ctx, peer)
    local check_end = clock() + CHECK_TIMEOUTS * ctx.timeout / 1000
    local sock, reason, msg = connect(ctx, peer, check_end)
    if not sock then
        return reason, msg
    end
    if ctx.send then
        if not arm(sock, ctx, check_end) then
            sock:close()
            return step_failed(SEND, peer, "timeout")
        end
        local bytes, err = sock:send(ctx.send)
        if not bytes then
            sock:close()
            return step_failed(SEND, peer, err)
        end
    end
    if ctx.expect then
        reason, msg = expect_answer(ctx, peer, sock, check_end)
    end
    sock:close()
    return reason, msg
end

-- peer: { name =, host =, port = (nil for unix:) }; nil, or reason,
-- message, or ABANDONED when the worker is exiting
_M.run = check

return _M
