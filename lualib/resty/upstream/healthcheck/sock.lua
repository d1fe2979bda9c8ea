-- Bounded socket steps shared by every kind of check
-- (resty.upstream.healthcheck.sock): the clock, the one place that sets a
-- step's time limit (`arm`), the TCP connect, a bounded read that gathers
-- bytes until a caller's test is satisfied, and the exit watch beside which
-- round.lua runs a round's checks, so that an exiting worker abandons them
-- at once.  Used by probe.lua (http/https), probe_tcp.lua, match.lua and
-- round.lua; touches no shm.

local ngx = ngx
local tostring = tostring
local str_sub = string.sub
local str_gsub = string.gsub
local str_byte = string.byte
local str_format = string.format
local math_ceil = math.ceil
local concat = table.concat

local tcp = ngx.socket.tcp
local now = ngx.now
local sleep = ngx.sleep
local update_time = ngx.update_time
local worker_exiting = ngx.worker.exiting

-- seconds: how often a check in flight looks whether its worker is exiting
-- (reload, quit), to abandon the check then
local EXIT_POLL = 0.1

local _M = { EXIT_POLL = EXIT_POLL }

-- what a check returns when the worker started exiting: nothing to record
_M.ABANDONED = "abandoned"

-- a peer's bytes for the log and the status pages: the first 64,
-- printable ASCII kept, the rest (ESC sequences, CR, NUL, UTF-8) as \xNN
function _M.printable(s)
    return (str_gsub(str_sub(s, 1, 64), "[^%w%p ]", function (c)
        return str_format("\\x%02x", str_byte(c))
    end))
end

function _M.clock()
    update_time()
    return now()
end
local clock = _M.clock

-- reason and message of a failed step: step = { reason =, prefix = }; a
-- timeout is always reason "timeout"
function _M.step_failed(step, peer, err)
    local reason = step.reason
    if err == "timeout" then
        reason = "timeout"
    elseif step.too_long and err == step.too_long then
        reason = step.too_long_reason or reason
    end
    return reason, step.prefix .. peer.name .. ": " .. tostring(err)
end
local step_failed = _M.step_failed

-- The one place that decides how long a step may take: `timeout` (ms), but
-- never past `deadline` (seconds, the end of the whole check or of the
-- current read).  Returns false when no time is left.
function _M.arm(sock, ctx, deadline, slice)
    local left = math_ceil((deadline - clock()) * 1000)
    if left < 1 then
        return false
    end
    local ms = ctx.timeout
    if left < ms then
        ms = left
    end
    if slice and ms > slice * 1000 then
        ms = math_ceil(slice * 1000)
    end
    sock:settimeout(ms)      -- >= 1: 0 would mean the lua_socket_* defaults
    return true
end
local arm = _M.arm

local CONNECT = { reason = "connect", prefix = "failed to connect to " }
_M.CONNECT = CONNECT

-- sock, or nil, reason, message
function _M.connect(ctx, peer, check_end)
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

-- seconds, bytes a second: bytes not yet tested are tested once the socket
-- has been quiet for QUIET plus 1 s per QUIET_RATE bytes already tested (a
-- response that neither closes nor says its length, a pattern in a small last
-- piece); such tests then scan at most QUIET_RATE bytes a second
local QUIET, QUIET_RATE = 0.01, 4 * 1048576
_M.QUIET, _M.QUIET_RATE = QUIET, QUIET_RATE

-- data with the n pending pieces appended
local function joined(data, parts, n)
    if n == 0 then
        return data
    end
    if n == 1 then
        return data .. parts[1]
    end
    return data .. concat(parts, "", 1, n)
end

-- Reads until done(data_so_far) returns a non-nil result, the peer closes,
-- `max` bytes were read in all (err "too long") or `deadline` passes (err
-- "timeout"), however slowly the bytes trickle in; `buffered` are bytes
-- already read.  Returns done's result and the data, or nil, err, data
-- (err ABANDONED when the worker is exiting).  Never buffers more than max
-- bytes (beyond `buffered`).
--
-- Each wait for bytes lasts until the deadline (a silent peer costs one
-- socket timeout, and with lua_socket_log_errors on one "read timed out"
-- line, per check), or until the quiet test below is due; an exiting worker
-- abandons it through the round's exit watch (exit_watch).
--
-- Linear in the bytes read, however small the pieces: pieces are kept apart,
-- and joined and tested only when the data doubled since the last test, when
-- the socket went quiet (above), and once more when the read stops (closed,
-- too long, deadline).  The doubling tests scan at most twice the bytes read;
-- a match is seen at most one doubling or one quiet wait late, never lost:
-- the last test sees every byte read (a `$` in a pattern is the end of what
-- was read).
function _M.read_until(ctx, sock, deadline, max, done, buffered)
    local data = buffered or ""
    local got = #data
    local r = done(data)
    if r ~= nil then
        return r, nil, data
    end
    local parts, n, tested, last, err = {}, 0, got, now(), nil
    while true do
        local quiet_wait      -- nil: wait for bytes until the deadline
        if got > tested then
            local quiet = last + QUIET + tested / QUIET_RATE - clock()
            if got >= 2 * tested or quiet <= 0 then
                data, n, tested = joined(data, parts, n), 0, got
                r = done(data)
                if r ~= nil then
                    return r, nil, data
                end
            else
                quiet_wait = quiet
            end
        end
        if got >= max then
            err = "too long"
            break
        end
        if worker_exiting() then
            return nil, _M.ABANDONED, joined(data, parts, n)
        end
        if not arm(sock, ctx, deadline, quiet_wait) then
            err = "timeout"
            break
        end
        local chunk, rerr = sock:receiveany(max - got)
        if chunk then
            n = n + 1
            parts[n] = chunk
            got, last = got + #chunk, now()
        elseif rerr ~= "timeout" then
            err = rerr
            break
        end
        -- a quiet wait that ran out leaves the socket usable
    end
    if got > tested then
        data = joined(data, parts, n)
        r = done(data)
        if r ~= nil then
            return r, nil, data
        end
    end
    return nil, err, data
end


_M.EXITING = {}

-- A light thread of its own beside a round's checks (round.lua): returns
-- EXITING within EXIT_POLL once the worker is exiting (reload, quit), and
-- the round kills the checks in flight (a killed check's socket is
-- closed).  One watch per round, not per check: no socket wait needs to be
-- cut into short slices to notice the exit (sleeping, unlike a short
-- socket timeout, logs nothing), and a check costs no light threads or
-- timers of its own (a fifth of its instructions when it had them).
function _M.exit_watch()
    while not worker_exiting() do
        sleep(EXIT_POLL)
    end
    return _M.EXITING
end

return _M
