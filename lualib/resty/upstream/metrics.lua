-- The merged Prometheus page of nginx-portable (resty.upstream.metrics):
-- one call serves what the default config's /metrics location used to
-- spell out in 50 lines, so a config needs one line:
--
--   location = /metrics {
--       content_by_lua_block { require("resty.upstream.metrics").serve() }
--   }
--
-- The page, in this order: the health checker's families
-- (hc.prometheus_status_page, extended by default), traffic-status's
-- (a subrequest to its Prometheus view, /status/format/prometheus by
-- default: that location must exist), nginx-prometheus-exporter's
-- families (nginx_up, nginx_connections_*, nginx_http_requests_total),
-- nginx_portable_build_info and nginx_metrics_source_up.  A source that
-- fails is a comment line and a 0 in nginx_metrics_source_up, never a 500.
-- Docs: lualib/README.md, "The merged /metrics page".

local ngx = ngx
local capture = ngx.location.capture
local concat = table.concat
local floor = math.floor
local format = string.format
local io_open = io.open
local jit_version = jit.version
local match = string.match
local pcall = pcall
local require = require
local tostring = tostring
local type = type

local _M = {
    _VERSION = "0.1.0",
}

local DEFAULT_VTS_URI = "/status/format/prometheus"

-- nginx-prometheus-exporter's stub_status families, from the counters
-- traffic-status prints as nginx_vts_main_connections (the same numbers
-- stub_status shows).  accepted and handled have no _total: typed untyped,
-- as promtool's lint rejects a counter without it (rate() works the same).
local STUB = {
    { "accepted", "nginx_connections_accepted", "untyped",
      "Accepted client connections" },
    { "active", "nginx_connections_active", "gauge",
      "Active client connections" },
    { "handled", "nginx_connections_handled", "untyped",
      "Handled client connections" },
    { "reading", "nginx_connections_reading", "gauge",
      "Connections where NGINX is reading the request header" },
    { "waiting", "nginx_connections_waiting", "gauge",
      "Idle client connections" },
    { "writing", "nginx_connections_writing", "gauge",
      "Connections where NGINX is writing the response back to the client" },
    { "requests", "nginx_http_requests_total", "counter",
      "Total http requests" },
}


-- a multi-line error (require's list of searched files) would break the
-- text format
local function one_line(err)
    return (tostring(err):gsub("%s*\n%s*", " "))
end


local function family(out, name, typ, help)
    out[#out + 1] = "# HELP " .. name .. " " .. help
    out[#out + 1] = "# TYPE " .. name .. " " .. typ
end


local function healthcheck_chunk(out, extended)
    local ok, hc = pcall(require, "resty.upstream.healthcheck")
    if not ok then
        out[#out + 1] = "# healthcheck module unavailable: " .. one_line(hc)
        return 0
    end
    local text, err = hc.prometheus_status_page({ extended = extended })
    if not text then
        out[#out + 1] = "# healthcheck module unavailable: " .. one_line(err)
        return 0
    end
    out[#out + 1] = text
    return 1
end


-- 1 and the traffic-status page's body, or 0 (a comment in its place)
local function vts_chunk(out, uri)
    local res = capture(uri)
    if res.status ~= ngx.HTTP_OK then
        out[#out + 1] = "# vts metrics unavailable: status="
                        .. tostring(res.status)
        return 0
    end
    out[#out + 1] = res.body
    return 1, res.body
end


-- the seven numbers of nginx_vts_main_connections in STUB's order, or nil
local function stub_values(vts_body)
    if not vts_body then
        return nil
    end
    local v = {}
    for i = 1, #STUB do
        v[i] = match(vts_body, '\nnginx_vts_main_connections{status="'
                     .. STUB[i][1] .. '"} (%d+)')
        if not v[i] then
            return nil
        end
    end
    return v
end


-- nginx_up and the stub_status families; nginx_up 0 alone when the
-- traffic-status page gave no connection counters
local function stub_chunk(out, vts_body)
    local v = stub_values(vts_body)
    family(out, "nginx_up", "gauge", "Status of the last metric scrape")
    out[#out + 1] = "nginx_up " .. (v and 1 or 0)
    if not v then
        return
    end
    for i = 1, #STUB do
        local s = STUB[i]
        family(out, s[2], s[3], s[4])
        out[#out + 1] = s[2] .. " " .. v[i]
    end
end


-- the versions of the running binary (never written into a config) and
-- the bundle's VERSION file
local function build_info(out)
    local ffi = require "ffi"
    pcall(ffi.cdef, "const char *OpenSSL_version(int type);")
    local ok_ssl, openssl = pcall(function()
        return ffi.string(ffi.C.OpenSSL_version(0))
    end)
    local vfile = io_open(ngx.config.prefix() .. "VERSION")
    local version = vfile and vfile:read("*l") or "unknown"
    if vfile then
        vfile:close()
    end
    local lua_v = ngx.config.ngx_lua_version
    family(out, "nginx_portable_build_info", "gauge",
           "Versions of nginx-portable and of what it is built with")
    out[#out + 1] = format('nginx_portable_build_info{version="%s",nginx="%s",'
        .. 'openssl="%s",luajit="%s",lua_nginx_module="%d.%d.%d"} 1',
        (version:gsub('[\\"\n]', "\\%0")), ngx.var.nginx_version,
        ok_ssl and openssl:match("^OpenSSL (%S+)") or "unknown",
        jit_version:match("^LuaJIT (%S+)") or jit_version,
        floor(lua_v / 1000000), floor(lua_v / 1000) % 1000, lua_v % 1000)
end


-- opts (all optional): vts_uri (the traffic-status Prometheus location),
-- extended (false: the checker's basic families only), stub (false: no
-- nginx-prometheus-exporter families).  Returns the page's text.
function _M.page(opts)
    if type(opts) ~= "table" then
        opts = {}
    end
    local out = {}
    local hc_up = healthcheck_chunk(out, opts.extended ~= false)
    local vts_up, vts_body = vts_chunk(out, opts.vts_uri or DEFAULT_VTS_URI)
    if opts.stub ~= false then
        stub_chunk(out, vts_body)
    end
    build_info(out)
    family(out, "nginx_metrics_source_up", "gauge",
           "Source availability for merged /metrics endpoint")
    local up = 'nginx_metrics_source_up{source="%s"} %d'
    out[#out + 1] = format(up, "healthcheck_module", hc_up)
    out[#out + 1] = format(up, "vts", vts_up)
    -- (the seed omits the final newline; the text format wants it)
    out[#out + 1] = ""
    return concat(out, "\n")
end


-- page(opts) as the response, with the text format's content type
function _M.serve(opts)
    ngx.header["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
    ngx.print(_M.page(opts))
end

return _M
