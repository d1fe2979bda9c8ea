/*
 * traffic-status: variables.  vhost_traffic_status_set_by_filter $VAR
 * GROUP/ZONE/NAME makes $VAR read one stored statistic when it is used
 * (not in the rewrite phase); an entry that does not exist leaves it not
 * found (as VTS: add_header sends nothing, Lua gets nil).
 * NAME is looked up in one field table (name -> counter or average).
 * A GROUP or NAME with variables is split and looked up per request.
 * The $vts_* variables read the request's own server zone through the
 * same table.
 */

#include "vts_conf.h"

namespace {

typedef ngx_http_vts_stats_t  stats_t;

enum average_e { AVG_NONE, AVG_REQUEST, AVG_RESPONSE };

struct field_t {
    ngx_str_t   name;
    size_t      offset;          /* of a counter in stats_t */
    average_e   average;         /* or a moving average */
    ngx_str_t   limit_name;      /* its name as a limit_traffic MEMBER */
};

#define COUNTER(name, member, limit) \
    { ngx_string(name), offsetof(stats_t, member), AVG_NONE, \
      ngx_string(limit) }

const field_t  fields[] = {
    COUNTER("requestCounter", requests, "request"),
    COUNTER("inBytes", in_bytes, "in"),
    COUNTER("outBytes", out_bytes, "out"),
    COUNTER("1xx", responses[0], "1xx"),
    COUNTER("2xx", responses[1], "2xx"),
    COUNTER("3xx", responses[2], "3xx"),
    COUNTER("4xx", responses[3], "4xx"),
    COUNTER("5xx", responses[4], "5xx"),
    COUNTER("cacheMiss", cache[NGX_HTTP_VTS_CACHE_MISS], "cache_miss"),
    COUNTER("cacheBypass", cache[NGX_HTTP_VTS_CACHE_BYPASS], "cache_bypass"),
    COUNTER("cacheExpired", cache[NGX_HTTP_VTS_CACHE_EXPIRED], "cache_expired"),
    COUNTER("cacheStale", cache[NGX_HTTP_VTS_CACHE_STALE], "cache_stale"),
    COUNTER("cacheUpdating", cache[NGX_HTTP_VTS_CACHE_UPDATING],
            "cache_updating"),
    COUNTER("cacheRevalidated", cache[NGX_HTTP_VTS_CACHE_REVALIDATED],
            "cache_revalidated"),
    COUNTER("cacheHit", cache[NGX_HTTP_VTS_CACHE_HIT], "cache_hit"),
    COUNTER("cacheScarce", cache[NGX_HTTP_VTS_CACHE_SCARCE], "cache_scarce"),
    COUNTER("requestMsecCounter", request_msec_total, ""),
    { ngx_string("requestMsec"), 0, AVG_REQUEST, ngx_null_string },
    COUNTER("responseMsecCounter", response_msec_total, ""),
    { ngx_string("responseMsec"), 0, AVG_RESPONSE, ngx_null_string },
};

#undef COUNTER


uint64_t
field_value(const field_t &f, const stats_t &st, ngx_http_vts_loc_conf_t *vlcf)
{
    switch (f.average) {
    case AVG_REQUEST:
        return ngx_http_vts_average(st.req_samples, st.req_pos,
                                    vlcf->average_method,
                                    vlcf->average_period,
                                    ngx_http_vts_now_msec());
    case AVG_RESPONSE:
        return ngx_http_vts_average(st.resp_samples, st.resp_pos,
                                    vlcf->average_method,
                                    vlcf->average_period,
                                    ngx_http_vts_now_msec());
    default:
        return *(const uint64_t *) ((const u_char *) &st + f.offset);
    }
}


/* GROUP/ZONE/NAME; ZONE may contain '/', so split on the first and last */
bool
split_spec(ngx_str_t spec, ngx_str_t *group, ngx_str_t *zone, ngx_str_t *field)
{
    u_char *first =
        (u_char *) ngx_strlchr(spec.data, spec.data + spec.len, '/');
    u_char *last = nullptr;

    for (u_char *p = spec.data + spec.len; p > spec.data; p--) {
        if (p[-1] == '/') {
            last = p - 1;
            break;
        }
    }
    if (first == nullptr || last == first) {
        return false;
    }
    *group = { (size_t) (first - spec.data), spec.data };
    *zone = { (size_t) (last - first - 1), first + 1 };
    *field = { (size_t) (spec.data + spec.len - last - 1), last + 1 };
    return true;
}


ngx_uint_t
find_field(ngx_str_t name)
{
    for (ngx_uint_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        if (ngx_http_vts_str_eq(name, &fields[i].name)) {
            return i;
        }
    }
    return NGX_CONF_UNSET_UINT;
}


const ngx_http_vts_scope_t *
find_scope(ngx_str_t group)
{
    const ngx_http_vts_scope_t *scope = ngx_http_vts_scope_find(&group);
    return scope && scope->kind ? scope : nullptr;
}


/* NGX_OK, NGX_DECLINED after logging a bad argument, NGX_ERROR */
ngx_int_t
parse_set(ngx_conf_t *cf, ngx_str_t spec, ngx_http_vts_set_t *s)
{
    ngx_str_t group, zone, field;

    if (!split_spec(spec, &group, &zone, &field)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid statistic \"%V\", "
                           "expected GROUP/ZONE/NAME", &spec);
        return NGX_DECLINED;
    }
    if (ngx_strlchr(group.data, group.data + group.len, '$')
        || ngx_strlchr(field.data, field.data + field.len, '$'))
    {
        s->dynamic = true;
        return ngx_http_vts_compile(cf, &spec, &s->spec);
    }

    s->scope = find_scope(group);
    if (s->scope == nullptr) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid group \"%V\", "
                           "expected server, filter, upstream@alone, "
                           "upstream@group or cache", &group);
        return NGX_DECLINED;
    }
    s->field = find_field(field);
    if (s->field == NGX_CONF_UNSET_UINT) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "unknown statistic \"%V\"",
                           &field);
        return NGX_DECLINED;
    }
    return ngx_http_vts_compile(cf, &zone, &s->zone);
}


ngx_int_t set_variable(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    uintptr_t data);

} // namespace


char *
ngx_http_vts_set_by_filter(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_array_t **sets = (ngx_array_t **) ((char *) conf + cmd->offset);
    ngx_str_t *value = (ngx_str_t *) cf->args->elts;
    ngx_str_t var = value[1];

    if (var.len < 2 || var.data[0] != '$') {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid variable name \"%V\"", &var);
        return (char *) NGX_CONF_ERROR;
    }
    var.data++;
    var.len--;

    ngx_http_vts_set_t s;
    ngx_memzero(&s, sizeof(s));
    if (parse_set(cf, value[2], &s) != NGX_OK) {
        return (char *) NGX_CONF_ERROR;
    }

    ngx_http_variable_t *v = ngx_http_add_variable(cf, &var,
        NGX_HTTP_VAR_CHANGEABLE|NGX_HTTP_VAR_NOCACHEABLE);
    if (v == nullptr) {
        return (char *) NGX_CONF_ERROR;
    }
    v->get_handler = set_variable;
    s.index = ngx_http_get_variable_index(cf, &var);
    if (s.index == NGX_ERROR) {
        return (char *) NGX_CONF_ERROR;
    }
    v->data = (uintptr_t) s.index;

    if (*sets == nullptr) {
        *sets = ngx_array_create(cf->pool, 2, sizeof(ngx_http_vts_set_t));
        if (*sets == nullptr) {
            return (char *) NGX_CONF_ERROR;
        }
    }
    ngx_http_vts_set_t *p = (ngx_http_vts_set_t *) ngx_array_push(*sets);
    if (p == nullptr) {
        return (char *) NGX_CONF_ERROR;
    }
    *p = s;
    return NGX_CONF_OK;
}


namespace {

/* this location's set_by_filter of the variable (the innermost wins) */
ngx_http_vts_set_t *
find_set(ngx_http_vts_loc_conf_t *vlcf, uintptr_t index)
{
    ngx_http_vts_set_t *s = (ngx_http_vts_set_t *) vlcf->sets->elts;

    for (ngx_uint_t i = vlcf->sets->nelts; i > 0; i--) {
        if ((uintptr_t) s[i - 1].index == index) {
            return &s[i - 1];
        }
    }
    return nullptr;
}


/* the stored key of ZONE in the scope; false: ZONE names none */
bool
set_key(const ngx_http_vts_scope_t *scope, ngx_str_t zone, ngx_str_t *group,
    ngx_str_t *name)
{
    ngx_str_null(group);
    *name = zone;

    if (scope->upstreams == NGX_HTTP_VTS_UPSTREAMS_ALONE) {
        *group = ngx_http_vts_nogroups;
    } else if (scope->grouped) {
        u_char *at =
            (u_char *) ngx_strlchr(zone.data, zone.data + zone.len, '@');
        if (at == nullptr) {
            return false;
        }
        group->data = zone.data;
        group->len = at - zone.data;
        name->data = at + 1;
        name->len = zone.data + zone.len - at - 1;
    }
    return true;
}


/* no such entry (yet): not found, and asked again on the next use */
ngx_int_t
set_not_found(ngx_http_variable_value_t *v)
{
    v->valid = 0;
    v->no_cacheable = 1;
    v->not_found = 1;
    return NGX_OK;
}


ngx_int_t
set_number(ngx_http_request_t *r, ngx_http_variable_value_t *v, uint64_t val)
{
    u_char *p = (u_char *) ngx_pnalloc(r->pool, NGX_INT64_LEN);
    if (p == nullptr) {
        return NGX_ERROR;
    }
    v->len = ngx_sprintf(p, "%uL", val) - p;
    v->data = p;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    return NGX_OK;
}


/* the set's scope, zone and field for this request; false: none */
bool
resolve_set(ngx_http_request_t *r, ngx_http_vts_set_t *set,
    const ngx_http_vts_scope_t **scope, ngx_str_t *zone, ngx_uint_t *field)
{
    if (!set->dynamic) {
        *scope = set->scope;
        *field = set->field;
        return ngx_http_complex_value(r, &set->zone, zone) == NGX_OK;
    }
    ngx_str_t spec, group, name;
    if (ngx_http_complex_value(r, &set->spec, &spec) != NGX_OK
        || !split_spec(spec, &group, zone, &name))
    {
        return false;
    }
    *scope = find_scope(group);
    *field = find_field(name);
    return *scope && *field != NGX_CONF_UNSET_UINT;
}


ngx_int_t
set_variable(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    uintptr_t data)
{
    ngx_http_vts_main_conf_t *vmcf = ngx_http_vts_main_conf(r);
    ngx_http_vts_loc_conf_t *vlcf = ngx_http_vts_loc_conf(r);

    if (!vmcf->enable || !ngx_http_vts_store_ready(&vmcf->store)
        || vlcf->sets == nullptr)
    {
        return set_not_found(v);
    }
    ngx_http_vts_set_t *set = find_set(vlcf, data);
    if (set == nullptr) {
        return set_not_found(v);
    }

    const ngx_http_vts_scope_t *scope;
    ngx_str_t zone, group, name;
    ngx_uint_t field;
    stats_t st;
    if (!resolve_set(r, set, &scope, &zone, &field)) {
        return set_number(r, v, 0);     /* an unknown GROUP or NAME */
    }
    if (!set_key(scope, zone, &group, &name)
        || !ngx_http_vts_store_read(&vmcf->store, scope->kind, &group, &name,
                                    &st))
    {
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "traffic-status: set_by_filter: no entry \"%V\" in "
                       "\"%V\"", &zone, &scope->name);
        return set_not_found(v);
    }
    return set_number(r, v, field_value(fields[field], st, vlcf));
}


/* $vts_NAME: a field of the request's own server zone (not found
   without one, as VTS) */
ngx_int_t
own_variable(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    uintptr_t field)
{
    ngx_http_vts_main_conf_t *vmcf = ngx_http_vts_main_conf(r);

    if (!vmcf->enable || !ngx_http_vts_store_ready(&vmcf->store)) {
        return set_not_found(v);
    }
    ngx_http_vts_loc_conf_t *vlcf = ngx_http_vts_loc_conf(r);
    ngx_http_vts_node_t *n = ngx_http_vts_own_server(r, &vmcf->store, vlcf);
    if (n == nullptr) {
        return set_not_found(v);
    }
    stats_t st;
    ngx_http_vts_read_stats(&st, &n->stats);
    return set_number(r, v, field_value(fields[field], st, vlcf));
}

} // namespace


/* a limit_traffic MEMBER: the offset of its counter in the stats */
bool
ngx_http_vts_limit_member(ngx_str_t name, size_t *offset)
{
    for (auto &f : fields) {
        if (f.limit_name.len && ngx_http_vts_str_eq(name, &f.limit_name)) {
            *offset = f.offset;
            return true;
        }
    }
    return false;
}


ngx_int_t
ngx_http_vts_add_variables(ngx_conf_t *cf)
{
    static const struct {
        ngx_str_t    name;
        const char  *field;
    } own[] = {
        { ngx_string("vts_request_counter"), "requestCounter" },
        { ngx_string("vts_in_bytes"), "inBytes" },
        { ngx_string("vts_out_bytes"), "outBytes" },
        { ngx_string("vts_1xx_counter"), "1xx" },
        { ngx_string("vts_2xx_counter"), "2xx" },
        { ngx_string("vts_3xx_counter"), "3xx" },
        { ngx_string("vts_4xx_counter"), "4xx" },
        { ngx_string("vts_5xx_counter"), "5xx" },
        { ngx_string("vts_cache_miss_counter"), "cacheMiss" },
        { ngx_string("vts_cache_bypass_counter"), "cacheBypass" },
        { ngx_string("vts_cache_expired_counter"), "cacheExpired" },
        { ngx_string("vts_cache_stale_counter"), "cacheStale" },
        { ngx_string("vts_cache_updating_counter"), "cacheUpdating" },
        { ngx_string("vts_cache_revalidated_counter"), "cacheRevalidated" },
        { ngx_string("vts_cache_hit_counter"), "cacheHit" },
        { ngx_string("vts_cache_scarce_counter"), "cacheScarce" },
        { ngx_string("vts_request_time_counter"), "requestMsecCounter" },
        { ngx_string("vts_request_time"), "requestMsec" },
    };
    for (auto &o : own) {
        ngx_str_t name = o.name;
        ngx_http_variable_t *v = ngx_http_add_variable(cf, &name,
                                                       NGX_HTTP_VAR_NOCACHEABLE);
        if (v == nullptr) {
            return NGX_ERROR;
        }
        ngx_str_t field = { ngx_strlen(o.field), (u_char *) o.field };
        v->get_handler = own_variable;
        v->data = find_field(field);
    }
    return NGX_OK;
}
