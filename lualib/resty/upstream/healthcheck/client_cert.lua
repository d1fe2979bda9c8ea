-- The client certificate of mTLS checks (resty.upstream.healthcheck.client_cert):
-- `ssl_cert` and `ssl_key` (PEM files; relative paths are under the nginx
-- prefix) read and parsed once, when spawn_checker runs, with ngx.ssl's
-- parse_pem_cert / parse_pem_priv_key; every probe then hands the parsed
-- objects to tcpsock:setclientcert (probe.lua).

local io_open = io.open
local tostring = tostring
local str_sub = string.sub

local _M = {}

local function bad(name, what)
    return "bad \"" .. name .. "\" option: " .. what
end

local function full_path(path)
    if str_sub(path, 1, 1) == "/" then
        return path
    end
    return ngx.config.prefix() .. path
end

local function read_pem(name, path)
    local full = full_path(path)
    local f, err = io_open(full, "rb")
    if not f then
        return nil, bad(name, "cannot open " .. tostring(err))
    end
    local data = f:read("*a")
    f:close()
    if not data or data == "" then
        return nil, bad(name, full .. " is empty")
    end
    return data
end

-- cert, key (cdata), or nil, nil when neither is set, or nil, nil, err
function _M.load(cert_path, key_path)
    if not cert_path and not key_path then
        return nil, nil
    end
    if not key_path then
        return nil, nil, bad("ssl_key", "required with \"ssl_cert\"")
    end
    if not cert_path then
        return nil, nil, bad("ssl_cert", "required with \"ssl_key\"")
    end
    local ssl = require "ngx.ssl"
    local pem, err = read_pem("ssl_cert", cert_path)
    if not pem then
        return nil, nil, err
    end
    local cert
    cert, err = ssl.parse_pem_cert(pem)
    if not cert then
        return nil, nil, bad("ssl_cert", "not a PEM certificate: " .. tostring(err))
    end
    pem, err = read_pem("ssl_key", key_path)
    if not pem then
        return nil, nil, err
    end
    local key
    key, err = ssl.parse_pem_priv_key(pem)
    if not key then
        return nil, nil, bad("ssl_key", "not a PEM private key: " .. tostring(err))
    end
    return cert, key
end

return _M
