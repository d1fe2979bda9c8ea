-- Rounds (resty.upstream.healthcheck.round): every worker runs one timer
-- chain per checked upstream, but only the worker that wins the round lock
-- (shm safe_add with an expiry, refreshed while the round runs, so a crashed
-- worker's rounds are taken over) runs a round, and only when the "next
-- round" marker set at the end of the previous round has expired: one round
-- per interval for the whole nginx instance.  A round checks every peer
-- with `concurrency` light threads (probe.lua) beside one exit watch, and
-- records the results (state.lua).
--
-- A worker that finds the round held off retries when the marker expires
-- (not a full interval later), and a worker that is exiting (reload)
-- abandons its round, releasing the lock without setting the marker and
-- noting where it stopped: a new worker finishes that round at once (the
-- peers not reached only), so frequent reloads neither starve the checks
-- nor multiply their rate.

local probe = require "resty.upstream.healthcheck.probe"
local probe_tcp = require "resty.upstream.healthcheck.probe_tcp"
local sock_steps = require "resty.upstream.healthcheck.sock"
local state = require "resty.upstream.healthcheck.state"
local peers = require "resty.upstream.healthcheck.peers"
local keys = require "resty.upstream.healthcheck.keys"

local ngx = ngx
local pcall = pcall
local tonumber = tonumber
local table_sort = table.sort
local math_floor = math.floor
local math_ceil = math.ceil
local str_sub = string.sub
local str_match = string.match

local log = ngx.log
local ERR = ngx.ERR
local now = ngx.now
local update_time = ngx.update_time
local timer_at = ngx.timer.at
local spawn = ngx.thread.spawn
local wait = ngx.thread.wait
local kill = ngx.thread.kill
local worker_exiting = ngx.worker.exiting
local sleep = ngx.sleep
local crc32 = ngx.crc32_short

local run_http = probe.run
local run_tcp = probe_tcp.run
local exit_watch = sock_steps.exit_watch
local EXITING = sock_steps.EXITING
local ABANDONED = probe.ABANDONED
local fetch_peers = state.fetch_peers
local apply_states = state.apply
local sync_states = state.sync

local PRIMARY = keys.PRIMARY
local BACKUP = keys.BACKUP

-- seconds: the shortest wait before retrying a held-off round
local MIN_RETRY = 0.005
-- seconds: how often a worker looks again while another one holds the lock
local LOCK_POLL = 0.1
-- seconds: the longest sleep while waiting for a peer's jitter offset (the
-- lock is refreshed and worker exit noticed in between)
local JITTER_SLICE = 0.5
-- the jitter window is cut into at most JITTER_SLOTS slots, none narrower
-- than JITTER_SLOT_MIN (s): a peer's offset is the start of its slot, so the
-- peers of a slot are checked together after shared wake-ups, as a small
-- round without jitter (jitter = 2000: 20 slots of 100 ms)
local JITTER_SLOTS = 20
local JITTER_SLOT_MIN = 0.01
-- seconds: an offset nearer than this is due.  The sleep's timer runs on
-- the monotonic clock and ngx.now() on the wall clock, so a timer may fire
-- up to a millisecond before ngx.now() reaches the offset: waiting again
-- would be an ngx.sleep(0), i.e. a busy loop until the clock ticks
local JITTER_EARLY = 0.002

local _M = {}

local function errlog(...)
    log(ERR, "healthcheck: ", ...)
end


------------------------------------------------------------------------
-- one round
------------------------------------------------------------------------

local function check_peer(ctx, peer)
    update_time()
    local t0 = now()
    local ok, reason, msg = pcall(ctx.tcp and run_tcp or run_http, ctx, peer)
    if worker_exiting() or reason == ABANDONED then
        -- reload or shutdown while probing (a probe still waiting is killed
        -- by the round's exit watch; one that finished just then ends
        -- here): the new workers take over, and this worker's (old) peer
        -- list must not write to the shm any more
        return
    end
    update_time()
    state.checked(ctx, peer, now() - t0)

    if not ok then
        errlog("checker error for peer ", peer.name, ": ", reason)
        return
    end
    if reason then
        state.failed(ctx, peer, reason, msg)
    else
        state.succeeded(ctx, peer)
    end
end

local function lock_ttl(ctx)
    -- a check takes at most 3 x timeout (probe.lua), plus slack (seconds):
    -- the lock is refreshed after every check
    return 4 * ctx.timeout / 1000 + 1
end

local function refresh_lock(ctx)
    local t = now()
    if t - ctx.lock_refreshed >= 0.5 then
        ctx.lock_refreshed = t
        ctx.dict:safe_set(ctx.keys.round_lock, ctx.pid, lock_ttl(ctx))
    end
end

-- "127.0.0.1:80" -> "127.0.0.1", 80; "[::1]:80" -> "[::1]", 80;
-- "unix:/path" -> "unix:/path", nil
local function split_addr(name)
    if str_sub(name, 1, 5) == "unix:" then
        return name, nil
    end
    local host, port = str_match(name, "^(.*):(%d+)$")
    if not host then
        return name, nil
    end
    return host, tonumber(port)
end

-- "name:port" of a server line -> the host name (for `host = true`); a
-- peer's server line is `peer.server` (an SRV target's name for `service=`)
local function host_of(server_name)
    if not server_name then
        return nil
    end
    local host = str_match(server_name, "^%[(.*)%]") or
                 str_match(server_name, "^(.*):%d+$") or server_name
    return host
end

-- seconds after the round's start at which the peer is checked (jitter):
-- the start of its slot (a hash of its address picks one of the slots)
local function offset_of(ctx, name)
    local slots = math_floor(ctx.jitter / JITTER_SLOT_MIN)
    if slots > JITTER_SLOTS then
        slots = JITTER_SLOTS
    end
    if slots < 1 then
        return 0
    end
    return (crc32(name) % slots) * (ctx.jitter / slots)
end

-- interval_unhealthy: is the peer's own rate due? (a check more than half a
-- round period early counts as due: rounds start on a timer)
local function due(ctx, target, t)
    if not ctx.interval_unhealthy then
        return true
    end
    local last = ctx.dict:get(ctx.keys:peer("last_check", target.role,
                                            target.name))
    if not last then
        return true
    end
    local down = state.is_down(ctx, target.role, target)
    local rate = down and ctx.interval_unhealthy or ctx.interval
    return t - last >= rate - ctx.period / 2
end

local function by_offset(a, b)
    return a.offset < b.offset
end

-- what a round checks: { name =, role =, down =, host =, port =, sni =,
-- offset = }, in the order of their offsets
local function build_targets(ctx, primary, backup)
    local targets = {}
    local per_peer = ctx.host_per_peer
    update_time()
    local t = now()
    local function add(peers, role)
        for i = 1, #peers do
            local p = peers[i]
            local host, port = split_addr(p.name)
            if ctx.port and port then
                port = ctx.port
            end
            local target = {
                name = p.name, role = role, down = p.down,
                host = host, port = port, sni = per_peer and host_of(p.server),
                offset = offset_of(ctx, p.name),
            }
            if due(ctx, target, t) then
                targets[#targets + 1] = target
            end
        end
    end
    add(primary, PRIMARY)
    add(backup, BACKUP)
    if ctx.jitter > 0 then
        table_sort(targets, by_offset)
    end
    return targets
end

-- waits until the target's offset after the round's start; false when the
-- worker is exiting
local function wait_offset(ctx, target, round_start)
    while true do
        if worker_exiting() then
            return false
        end
        update_time()
        local left = round_start + target.offset - now()
        if left < JITTER_EARLY then
            return true
        end
        -- whole milliseconds, rounded up: the threads waiting for one slot
        -- get the same timer (a truncated float could make two)
        sleep(left < JITTER_SLICE and math_ceil(left * 1000) / 1000
              or JITTER_SLICE)
        refresh_lock(ctx)
    end
end

local function worker_loop(ctx, targets, next_index, round_start)
    while true do
        if worker_exiting() then
            return
        end
        local i = next_index()
        if not i then
            return
        end
        local target = targets[i]
        if target.offset > 0 and not wait_offset(ctx, target, round_start) then
            return
        end
        check_peer(ctx, target)
        refresh_lock(ctx)
    end
end

-- a round cut short by a reload is finished by the next one (a new
-- worker's, at once): only the targets it did not reach, so the peers it
-- did check are not checked again (a HUP storm would multiply their rate)
local function rest_of_cut_round(ctx, targets)
    local key = ctx.keys.resume
    local from = ctx.dict:get(key)
    if not from then
        return targets, 0
    end
    ctx.dict:delete(key)
    local rest = {}
    for i = from + 1, #targets do
        rest[#rest + 1] = targets[i]
    end
    return rest, from
end

-- waits for the round's threads beside the exit watch (sock.exit_watch):
-- when the worker is exiting, the checks still in flight are killed (their
-- sockets closed, their results never recorded: check_peer) within the
-- watch's EXIT_POLL.  A thread that ends before its turn here waits, dead,
-- until it is waited for.
local function supervise(threads, watch)
    for t = 1, #threads do
        local ok, res = wait(threads[t], watch)
        if ok and res == EXITING then
            for k = t, #threads do
                kill(threads[k])
            end
            return
        end
    end
    kill(watch)
end

-- checks every target with up to ctx.concurrency light threads; returns how
-- many it started (all, unless the worker began exiting)
local function check_all(ctx, targets)
    local n = #targets
    local idx = 0
    local function next_index()
        if idx >= n then
            return nil
        end
        idx = idx + 1
        return idx
    end

    local nthreads = ctx.concurrency
    if nthreads > n then
        nthreads = n
    end
    update_time()
    local round_start = now()
    local threads = {}
    for t = 1, nthreads do
        local th, err = spawn(worker_loop, ctx, targets, next_index,
                              round_start)
        if not th then
            errlog("failed to spawn a light thread: ", err)
            break
        end
        threads[t] = th
    end
    if #threads == 0 then
        -- no thread to spare: the checks run here, without the exit watch
        worker_loop(ctx, targets, next_index, round_start)
        return idx
    end
    supervise(threads, spawn(exit_watch))
    return idx
end

-- (do_tick's sync_states has just followed DNS: peers.lua)
local function run_round(ctx)
    local primary, backup = fetch_peers(ctx.upstream)
    if not primary then
        return nil, backup
    end
    -- make sure this worker's peers reflect the shm before judging
    apply_states(ctx, primary, backup)

    ctx.changed = false
    local targets, from = rest_of_cut_round(ctx, build_targets(ctx, primary,
                                                                backup))
    local started = check_all(ctx, targets)
    if worker_exiting() and started > 0 then
        -- the checks in flight are dropped (check_peer): redo those too
        local done = started - ctx.concurrency
        ctx.dict:safe_set(ctx.keys.resume, from + (done > 0 and done or 0),
                          2 * ctx.period + 10)
    end
    if ctx.changed then
        state.save_file(ctx, primary, backup)
    end
    if ctx.dynamic then
        peers.expire(ctx)
    end
    return true
end


------------------------------------------------------------------------
-- the lock, the "next round" marker and the timer
------------------------------------------------------------------------

local function release_lock(ctx)
    local dict, key = ctx.dict, ctx.keys.round_lock
    if dict:get(key) == ctx.pid then
        dict:delete(key)
    end
end

-- seconds until the round held off by another worker's marker is due
local function throttle_wait(ctx)
    local ttl = ctx.dict:ttl(ctx.keys.next_round)
    if not ttl or ttl < MIN_RETRY then
        -- expired (or deleted) meanwhile, or about to: ttl() says 0 in the
        -- last millisecond (the marker is always set with an expiry)
        return MIN_RETRY
    end
    if ttl > ctx.period then
        -- set by a worker with a longer interval (old config): look again
        -- after our own interval at the latest
        return ctx.period
    end
    return ttl
end

local function lock_wait(ctx)
    local d = ctx.period
    if d > LOCK_POLL then
        d = LOCK_POLL
    end
    return d
end

-- another worker ran a round less than an interval ago? (the round must
-- not be skipped just because this worker's timer is out of phase, e.g. a
-- new worker after a reload: it retries when the marker expires)
local function held_off(ctx)
    local th = ctx.dict:get(ctx.keys.next_round)
    return th and th ~= ctx.pid
end

-- takes the round lock: true, or nil and the delay of the next tick
local function take_lock(ctx)
    local added, err = ctx.dict:safe_add(ctx.keys.round_lock, ctx.pid,
                                         lock_ttl(ctx))
    if not added then
        if err ~= "exists" then
            errlog("failed to take the round lock of upstream \"",
                   ctx.upstream, "\": ", err)
            return nil, ctx.period
        end
        -- a round is running elsewhere (or its worker died: the lock expires)
        return nil, lock_wait(ctx)
    end
    update_time()
    ctx.lock_refreshed = now()

    -- a round may have finished between our marker check and the lock
    if held_off(ctx) then
        release_lock(ctx)
        return nil, throttle_wait(ctx)
    end
    return true
end

-- runs a round when due; returns the delay of the next tick, or nil to stop
local function do_tick(ctx)
    local ok, err = sync_states(ctx)
    if not ok then
        errlog("failed to sync upstream \"", ctx.upstream, "\": ", err)
    end
    if held_off(ctx) then
        return throttle_wait(ctx)
    end
    local locked, delay = take_lock(ctx)
    if not locked then
        return delay
    end

    local rok, rres, rerr = pcall(run_round, ctx)
    if not rok then
        errlog("round failed for upstream \"", ctx.upstream, "\": ", rres)
    elseif not rres then
        errlog("round failed for upstream \"", ctx.upstream, "\": ", rerr)
    end

    if worker_exiting() then
        -- reload/shutdown during the round: abandon it without a marker and
        -- free the lock, so a new worker finishes it now (the rest only)
        release_lock(ctx)
        return nil
    end

    local sok, serr = ctx.dict:safe_set(ctx.keys.next_round, ctx.pid,
                                        ctx.period)
    if not sok then
        errlog("failed to save the round time of upstream \"", ctx.upstream,
               "\": ", serr)
    end
    release_lock(ctx)
    return ctx.period
end

local function tick(premature, ctx)
    if premature or ctx.cancelled or worker_exiting() then
        return
    end
    local ok, delay = pcall(do_tick, ctx)
    if not ok then
        errlog("checker failed for upstream \"", ctx.upstream, "\": ", delay)
        delay = ctx.period
    end
    if not delay or worker_exiting() then
        return
    end
    local tok, terr = timer_at(delay, tick, ctx)
    if not tok and terr ~= "process exiting" then
        errlog("failed to create the timer for upstream \"", ctx.upstream,
               "\": ", terr)
    end
end

-- starts the checker's timer chain: the first tick runs after the current
-- handler returns (set ctx.cancelled to stop it before it does anything)
function _M.start(ctx)
    ctx.pid = ngx.worker.pid()
    ctx.lock_refreshed = 0
    return timer_at(0, tick, ctx)
end

return _M
