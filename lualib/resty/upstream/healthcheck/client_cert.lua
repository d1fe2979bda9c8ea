-- The client certificate of mTLS checks (resty.upstream.healthcheck.client_cert):
-- `ssl_cert` and `ssl_key` (PEM files; relative paths are under the nginx
-- prefix) read and parsed once, with ngx.ssl's parse_pem_cert /
-- parse_pem_priv_key; every probe then hands the parsed objects to
-- tcpsock:setclientcert (probe.lua).
--
-- spawn_checker runs in init_worker, as the workers' user: a key only root
-- may read (mode 0600, as nginx's own ssl_certificate_key) cannot be opened
-- there.  preload() reads such files in init_by_lua, in the master, before
-- the workers drop privileges; the parsed objects are kept here by full path
-- and inherited by every worker, so spawn_checker never opens those files.
-- A reload (HUP) runs init_by_lua again: replaced files are read anew.

local ngx = ngx
local io_open = io.open
local type = type
local tostring = tostring
local str_sub = string.sub
local str_find = string.find

local _M = {}

-- full path -> parsed certificate chain / private key (cdata), filled by
-- preload() in the master; local, so no other module's Lua can reach them
local preloaded_certs, preloaded_keys = {}, {}

local HINT = " (a file only root may read: read it in init_by_lua* with "
             .. "load_client_cert, see lualib/README.md)"

local function bad(name, what)
    return "bad \"" .. name .. "\" option: " .. what
end

local function full_path(path)
    if str_sub(path, 1, 1) == "/" then
        return path
    end
    return ngx.config.prefix() .. path
end

local function read_pem(name, full)
    local f, err = io_open(full, "rb")
    if not f then
        err = tostring(err)
        if str_find(err, "Permission denied", 1, true) then
            err = err .. HINT
        end
        return nil, bad(name, "cannot open " .. err)
    end
    local data = f:read("*a")
    f:close()
    if not data or data == "" then
        return nil, bad(name, full .. " is empty")
    end
    return data
end

-- the parsed certificate chain (name "ssl_cert") or private key ("ssl_key")
-- in the file `full`: cdata, or nil, err
local function parse(name, full)
    local ssl = require "ngx.ssl"
    local pem, err = read_pem(name, full)
    if not pem then
        return nil, err
    end
    local obj
    if name == "ssl_cert" then
        obj, err = ssl.parse_pem_cert(pem)
        if not obj then
            return nil, bad(name, "not a PEM certificate: " .. tostring(err))
        end
    else
        obj, err = ssl.parse_pem_priv_key(pem)
        if not obj then
            return nil, bad(name, "not a PEM private key: " .. tostring(err))
        end
    end
    return obj
end

-- both paths given, or neither: nil, or err
local function pair_error(cert_path, key_path)
    if not key_path then
        return bad("ssl_key", "required with \"ssl_cert\"")
    end
    if not cert_path then
        return bad("ssl_cert", "required with \"ssl_key\"")
    end
    return nil
end

-- cert, key (cdata), or nil, nil when neither is set, or nil, nil, err
function _M.load(cert_path, key_path)
    if not cert_path and not key_path then
        return nil, nil
    end
    local err = pair_error(cert_path, key_path)
    if err then
        return nil, nil, err
    end
    local full = full_path(cert_path)
    local cert = preloaded_certs[full]
    if not cert then
        cert, err = parse("ssl_cert", full)
        if not cert then
            return nil, nil, err
        end
    end
    full = full_path(key_path)
    local key = preloaded_keys[full]
    if not key then
        key, err = parse("ssl_key", full)
        if not key then
            return nil, nil, err
        end
    end
    return cert, key
end

-- hc.load_client_cert(ssl_cert, ssl_key), in init_by_lua*: reads and parses
-- both files now (in the master: as root when nginx starts as root), for
-- every spawn_checker that names the same paths.  true, or nil, err
function _M.preload(cert_path, key_path)
    if ngx.get_phase() ~= "init" then
        return nil, "load_client_cert must be called from init_by_lua*"
    end
    if type(cert_path) ~= "string" or cert_path == "" then
        return nil, bad("ssl_cert", "non-empty string expected")
    end
    if type(key_path) ~= "string" or key_path == "" then
        return nil, bad("ssl_key", "non-empty string expected")
    end
    local cert_full, key_full = full_path(cert_path), full_path(key_path)
    local cert, err = parse("ssl_cert", cert_full)
    if not cert then
        return nil, err
    end
    local key
    key, err = parse("ssl_key", key_full)
    if not key then
        return nil, err
    end
    preloaded_certs[cert_full], preloaded_keys[key_full] = cert, key
    return true
end

return _M
