/*
 * traffic-status: the VTS limit family.  limit_traffic MEMBER:SIZE [CODE]
 * (the request's server zone) and limit_traffic_by_set_key KEY
 * MEMBER:SIZE [CODE] (any zone) answer CODE (default 503) once the
 * zone's counter MEMBER is over SIZE (as VTS: request:3 refuses the 5th
 * request, the 4th sees 3); `limit off` and
 * `bypass_limit on` lift them in a scope.  A MEMBER:SIZE with variables
 * (`$member:4`) is evaluated and parsed per request, as VTS; one that is
 * not a valid MEMBER:SIZE then limits nothing.
 *
 * A scope's limits are the inherited ones plus its own; with
 * limit_check_duplicate on, an own entry replaces an inherited one of the
 * same KEY and MEMBER.  The check runs in the preaccess phase, which is
 * registered only when some limit exists (no cost otherwise), and reads
 * existing nodes only (worker cache, else the rbtree; never creates).
 */

#include "vts_conf.h"

namespace {

/* "MEMBER:SIZE" -> the member's name, its counter's offset and the size;
   false when it is none (the members are the $vts_* field table's,
   vts_vars.cpp) */
bool
split_member(ngx_str_t v, ngx_str_t *member, size_t *offset, uint64_t *size)
{
    u_char *colon = (u_char *) ngx_strlchr(v.data, v.data + v.len, ':');

    if (colon == nullptr) {
        return false;
    }
    ngx_str_t name = { (size_t) (colon - v.data), v.data };
    ngx_str_t num = { (size_t) (v.data + v.len - colon - 1), colon + 1 };
    off_t n = ngx_parse_offset(&num);
    if (n == NGX_ERROR || n <= 0 || !ngx_http_vts_limit_member(name, offset)) {
        return false;
    }
    *member = name;
    *size = (uint64_t) n;
    return true;
}


/* "MEMBER:SIZE" of the directive: parsed now, or compiled when it holds
   variables; false after logging */
bool
parse_member(ngx_conf_t *cf, ngx_str_t v, ngx_http_vts_limit_t *l)
{
    if (ngx_http_script_variables_count(&v)) {
        l->value = (ngx_http_complex_value_t *)
            ngx_pcalloc(cf->pool, sizeof(ngx_http_complex_value_t));
        if (l->value == nullptr
            || ngx_http_vts_compile(cf, &v, l->value) != NGX_OK)
        {
            return false;
        }
        l->member = v;
        return true;
    }
    if (split_member(v, &l->member, &l->offset, &l->size)) {
        return true;
    }
    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid limit \"%V\", expected "
                       "MEMBER:SIZE with MEMBER one of request, in, out, "
                       "1xx..5xx, cache_miss..cache_scarce and a positive "
                       "SIZE (k, m, g suffixes)", &v);
    return false;
}


/* the zone KEY names: NO@name, UA@peer, UG@group@peer, CC@name,
   FG@group@name; false when it names none */
bool
parse_key(ngx_str_t key, uint8_t *kind, ngx_str_t *group, ngx_str_t *name)
{
    static const struct {
        const char  *prefix;
        uint8_t      kind;
        bool         grouped;
    } keys[] = {
        { "NO@", NGX_HTTP_VTS_SERVER, false },
        { "UA@", NGX_HTTP_VTS_UPSTREAM, false },
        { "UG@", NGX_HTTP_VTS_UPSTREAM, true },
        { "CC@", NGX_HTTP_VTS_CACHE, false },
        { "FG@", NGX_HTTP_VTS_FILTER, true },
    };
    if (key.len < 3) {
        return false;
    }
    for (auto &k : keys) {
        if (ngx_strncmp(key.data, k.prefix, 3) != 0) {
            continue;
        }
        *kind = k.kind;
        ngx_str_t rest = { key.len - 3, key.data + 3 };
        ngx_str_null(group);
        *name = rest;
        if (k.kind == NGX_HTTP_VTS_UPSTREAM && !k.grouped) {
            *group = ngx_http_vts_nogroups;
        }
        if (k.grouped) {
            u_char *at = (u_char *) ngx_strlchr(rest.data,
                                                rest.data + rest.len, '@');
            if (at == nullptr) {
                return false;
            }
            *group = { (size_t) (at - rest.data), rest.data };
            *name = { (size_t) (rest.data + rest.len - at - 1), at + 1 };
        }
        return true;
    }
    return false;
}


bool
same_limit(ngx_http_vts_limit_t *a, ngx_http_vts_limit_t *b)
{
    if ((a->value == nullptr) != (b->value == nullptr)) {
        return false;
    }
    bool same_member = a->value ? ngx_http_vts_str_eq(a->member, &b->member)
                                : a->offset == b->offset;
    return a->by_key == b->by_key && same_member
           && ngx_http_vts_str_eq(a->key_text, &b->key_text);
}


/* the node a limit reads, or nullptr (no such zone yet: no limit) */
ngx_http_vts_node_t *
limit_node(ngx_http_request_t *r, ngx_http_vts_store_t *store,
    ngx_http_vts_loc_conf_t *vlcf, ngx_http_vts_limit_t *l)
{
    if (!l->by_key) {
        return ngx_http_vts_own_server(r, store, vlcf);
    }
    ngx_str_t key, group, name;
    uint8_t kind;
    if (ngx_http_complex_value(r, &l->key, &key) != NGX_OK
        || !parse_key(key, &kind, &group, &name))
    {
        return nullptr;
    }
    return ngx_http_vts_store_find(store, kind, &group, &name);
}


/* this request's member, counter offset and size of l; false: the
   limit's MEMBER:SIZE evaluates to none (no limit) */
bool
limit_member(ngx_http_request_t *r, ngx_http_vts_limit_t *l,
    ngx_str_t *member, size_t *offset, uint64_t *size)
{
    if (l->value == nullptr) {
        *member = l->member;
        *offset = l->offset;
        *size = l->size;
        return true;
    }
    ngx_str_t v;
    if (ngx_http_complex_value(r, l->value, &v) != NGX_OK) {
        return false;
    }
    if (!split_member(v, member, offset, size)) {
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "traffic-status: limit \"%V\" is \"%V\", no "
                       "MEMBER:SIZE: not checked", &l->member, &v);
        return false;
    }
    return true;
}

} // namespace


char *
ngx_http_vts_limit_traffic(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_array_t **limits = (ngx_array_t **) ((char *) conf + cmd->offset);
    ngx_str_t *value = (ngx_str_t *) cf->args->elts;
    ngx_http_vts_limit_t l;

    ngx_memzero(&l, sizeof(l));
    l.by_key = cmd->name.len > sizeof("vhost_traffic_status_limit_traffic") - 1;
    ngx_uint_t arg = 1;
    if (l.by_key) {
        l.key_text = value[arg];
        if (ngx_http_vts_compile(cf, &value[arg++], &l.key) != NGX_OK) {
            return (char *) NGX_CONF_ERROR;
        }
    }
    if (!parse_member(cf, value[arg++], &l)) {
        return (char *) NGX_CONF_ERROR;
    }
    l.code = NGX_HTTP_SERVICE_UNAVAILABLE;
    if (arg < cf->args->nelts) {
        ngx_int_t code = ngx_atoi(value[arg].data, value[arg].len);
        if (code < 400 || code > 599) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid code \"%V\", "
                               "expected 400 to 599", &value[arg]);
            return (char *) NGX_CONF_ERROR;
        }
        l.code = (ngx_uint_t) code;
    }

    if (*limits == nullptr) {
        *limits = ngx_array_create(cf->pool, 2, sizeof(ngx_http_vts_limit_t));
        if (*limits == nullptr) {
            return (char *) NGX_CONF_ERROR;
        }
    }
    ngx_http_vts_limit_t *p = (ngx_http_vts_limit_t *) ngx_array_push(*limits);
    if (p == nullptr) {
        return (char *) NGX_CONF_ERROR;
    }
    *p = l;
    ngx_http_vts_conf_main(cf)->limits = 1;
    return NGX_CONF_OK;
}


/* inherited limits first, then the scope's own (an own entry replaces an
   identical inherited one, and repeats once, with check_duplicate) */
char *
ngx_http_vts_limit_merge(ngx_conf_t *cf, ngx_http_vts_loc_conf_t *conf,
    ngx_http_vts_loc_conf_t *prev)
{
    if (conf->limits == nullptr || conf->limits == prev->limits) {
        conf->limits = prev->limits;
        return NGX_CONF_OK;
    }
    ngx_uint_t n = conf->limits->nelts + (prev->limits ? prev->limits->nelts : 0);
    ngx_array_t *all = ngx_array_create(cf->pool, n,
                                        sizeof(ngx_http_vts_limit_t));
    if (all == nullptr) {
        return (char *) NGX_CONF_ERROR;
    }
    ngx_array_t *parts[] = { conf->limits, prev->limits };
    for (ngx_array_t *a : parts) {          /* own first: they win */
        ngx_http_vts_limit_t *l = a ? (ngx_http_vts_limit_t *) a->elts : nullptr;
        for (ngx_uint_t i = 0; a && i < a->nelts; i++) {
            ngx_http_vts_limit_t *have = (ngx_http_vts_limit_t *) all->elts;
            bool dup = false;
            for (ngx_uint_t j = 0; conf->limit_check_duplicate && j < all->nelts;
                 j++)
            {
                dup = dup || same_limit(&have[j], &l[i]);
            }
            ngx_http_vts_limit_t *p = dup ? nullptr
                : (ngx_http_vts_limit_t *) ngx_array_push(all);
            if (p) {
                *p = l[i];
            }
        }
    }
    conf->limits = all;
    return NGX_CONF_OK;
}


ngx_int_t
ngx_http_vts_limit_handler(ngx_http_request_t *r)
{
    ngx_http_vts_main_conf_t *vmcf = ngx_http_vts_main_conf(r);
    ngx_http_vts_loc_conf_t *vlcf = ngx_http_vts_loc_conf(r);

    if (r != r->main || vlcf->limits == nullptr || !vlcf->limit
        || vlcf->bypass_limit || !ngx_http_vts_store_ready(&vmcf->store))
    {
        return NGX_DECLINED;
    }
    ngx_http_vts_limit_t *l = (ngx_http_vts_limit_t *) vlcf->limits->elts;
    for (ngx_uint_t i = 0; i < vlcf->limits->nelts; i++) {
        ngx_str_t member;
        size_t offset;
        uint64_t size;
        if (!limit_member(r, &l[i], &member, &offset, &size)) {
            continue;
        }
        ngx_http_vts_node_t *n = limit_node(r, &vmcf->store, vlcf, &l[i]);
        if (n == nullptr) {
            continue;
        }
        const uint64_t *counter = (const uint64_t *)
            ((const u_char *) &n->stats + offset);
        uint64_t v = ngx_http_vts_load(counter);
        if (v > size) {
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "traffic-status: limit %V:%uL exceeded (%uL), "
                          "answering %ui", &member, size, v, l[i].code);
            return (ngx_int_t) l[i].code;
        }
    }
    return NGX_DECLINED;
}
