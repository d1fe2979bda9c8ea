/*
 * traffic-status: the status code directives,
 * vhost_traffic_status_measure_status_codes all|CODE... (exact codes per
 * server zone: the code -> counter slot table counting uses) and
 * vhost_traffic_status_ignore_status CLASS...|off (a bitmask of classes).
 */

#include "vts_conf.h"


char *
ngx_http_vts_measure_codes(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_vts_store_t *store = &((ngx_http_vts_main_conf_t *) conf)->store;
    ngx_str_t *value = (ngx_str_t *) cf->args->elts;

    if (store->codes) {
        return (char *) "is duplicate";
    }
    ngx_http_vts_codes_t *c = (ngx_http_vts_codes_t *)
        ngx_pcalloc(cf->pool, sizeof(ngx_http_vts_codes_t));
    if (c == nullptr) {
        return (char *) NGX_CONF_ERROR;
    }
    c->n = 1;                                   /* slot 0: "other" */

    if (cf->args->nelts == 2 && ngx_strcmp(value[1].data, "all") == 0) {
        c->all = true;
        for (ngx_uint_t code = NGX_HTTP_VTS_CODE_MIN;
             code <= NGX_HTTP_VTS_CODE_MAX; code++)
        {
            c->slot[code] = c->n;
            c->code[c->n++] = (uint16_t) code;
        }
        store->codes = c;
        return NGX_CONF_OK;
    }

    ngx_int_t prev = 0;
    for (ngx_uint_t i = 1; i < cf->args->nelts; i++) {
        ngx_int_t code = ngx_atoi(value[i].data, value[i].len);
        if (code < NGX_HTTP_VTS_CODE_MIN || code > NGX_HTTP_VTS_CODE_MAX
            || code <= prev)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid status code "
                               "\"%V\", expected \"all\" or codes from 100 "
                               "to 599 in ascending order", &value[i]);
            return (char *) NGX_CONF_ERROR;
        }
        prev = code;
        c->slot[code] = c->n;
        c->code[c->n++] = (uint16_t) code;
    }
    store->codes = c;
    return NGX_CONF_OK;
}


char *
ngx_http_vts_ignore_status(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_uint_t *mask = (ngx_uint_t *) ((char *) conf + cmd->offset);
    ngx_str_t *value = (ngx_str_t *) cf->args->elts;

    if (*mask != NGX_CONF_UNSET_UINT) {
        return (char *) "is duplicate";
    }
    *mask = 0;
    for (ngx_uint_t i = 1; i < cf->args->nelts; i++) {
        ngx_str_t v = value[i];
        if (v.len == 3 && ngx_strcmp(v.data, "off") == 0
            && cf->args->nelts == 2)
        {
            return NGX_CONF_OK;
        }
        if (v.len != 3 || v.data[0] < '1' || v.data[0] > '5'
            || (v.data[1] | 0x20) != 'x' || (v.data[2] | 0x20) != 'x')
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid status class "
                               "\"%V\", expected 1xx, 2xx, 3xx, 4xx, 5xx or "
                               "a single \"off\"", &v);
            return (char *) NGX_CONF_ERROR;
        }
        *mask |= (ngx_uint_t) 1 << (v.data[0] - '0');
    }
    return NGX_CONF_OK;
}
