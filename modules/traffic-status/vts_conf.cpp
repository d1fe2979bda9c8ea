/*
 * traffic-status: the directive table, the conf structs and their merge.
 * Directives whose meaning lives elsewhere point to that file's handler
 * (set_by_filter: vts_vars.cpp; the limit family: vts_limit.cpp).
 */

#include "vts_conf.h"

#define NGX_HTTP_VTS_HOST_MAX_DEFAULT  1024

namespace {

char *set_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *set_display(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *set_format(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *set_filter_key(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *set_max_node(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *set_buckets(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *set_average(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *set_dump(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);

ngx_conf_enum_t  formats[] = {
    { ngx_string("json"), NGX_HTTP_VTS_FORMAT_JSON },
    { ngx_string("html"), NGX_HTTP_VTS_FORMAT_HTML },
    { ngx_string("jsonp"), NGX_HTTP_VTS_FORMAT_JSONP },
    { ngx_string("prometheus"), NGX_HTTP_VTS_FORMAT_PROMETHEUS },
    { ngx_string("vts-exporter"), NGX_HTTP_VTS_FORMAT_EXPORTER },
    { ngx_null_string, 0 }
};

ngx_conf_enum_t  average_methods[] = {
    { ngx_string("AMM"), NGX_HTTP_VTS_AVG_AMM },
    { ngx_string("WMA"), NGX_HTTP_VTS_AVG_WMA },
    { ngx_null_string, 0 }
};

} // namespace

#define VTS_ANY_CONF  (NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF)
#define VTS_IF_CONF   (NGX_HTTP_SIF_CONF|NGX_HTTP_LIF_CONF)
#define VTS_LOC(field)  NGX_HTTP_LOC_CONF_OFFSET, \
                        offsetof(ngx_http_vts_loc_conf_t, field)

ngx_command_t  ngx_http_vts_commands[] = {

    { ngx_string("vhost_traffic_status_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_NOARGS|NGX_CONF_TAKE1,
      set_zone, 0, 0, NULL },

    { ngx_string("vhost_traffic_status"),
      VTS_ANY_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot, VTS_LOC(enable), NULL },

    { ngx_string("vhost_traffic_status_display"),
      NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      set_display, VTS_LOC(display), NULL },

    { ngx_string("vhost_traffic_status_display_format"),
      VTS_ANY_CONF|NGX_CONF_TAKE1,
      set_format, VTS_LOC(format), formats },

    { ngx_string("vhost_traffic_status_display_jsonp"),
      VTS_ANY_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot, VTS_LOC(jsonp), NULL },

    { ngx_string("vhost_traffic_status_display_sum_key"),
      VTS_ANY_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot, VTS_LOC(sum_key), NULL },

    { ngx_string("vhost_traffic_status_filter"),
      VTS_ANY_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot, VTS_LOC(filter), NULL },

    { ngx_string("vhost_traffic_status_filter_by_host"),
      VTS_ANY_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot, VTS_LOC(filter_by_host), NULL },

    { ngx_string("vhost_traffic_status_filter_by_set_key"),
      VTS_ANY_CONF|NGX_CONF_TAKE12,
      set_filter_key, VTS_LOC(filters), NULL },

    { ngx_string("vhost_traffic_status_filter_check_duplicate"),
      VTS_ANY_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot, VTS_LOC(filter_check_duplicate), NULL },

    { ngx_string("vhost_traffic_status_filter_max_node"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      set_max_node, 0, 0, NULL },

    { ngx_string("vhost_traffic_status_histogram_buckets"),
      VTS_ANY_CONF|NGX_CONF_1MORE,
      set_buckets, VTS_LOC(buckets), NULL },

    { ngx_string("vhost_traffic_status_average_method"),
      VTS_ANY_CONF|NGX_CONF_TAKE12,
      set_average, VTS_LOC(average_method), average_methods },

    { ngx_string("vhost_traffic_status_bypass_stats"),
      VTS_ANY_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot, VTS_LOC(bypass_stats), NULL },

    { ngx_string("vhost_traffic_status_set_by_filter"),
      VTS_ANY_CONF|VTS_IF_CONF|NGX_CONF_TAKE2,
      ngx_http_vts_set_by_filter, VTS_LOC(sets), NULL },

    { ngx_string("vhost_traffic_status_dump"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE12,
      set_dump, 0, 0, NULL },

    { ngx_string("vhost_traffic_status_stats_by_upstream"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot, NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_vts_main_conf_t, stats_by_upstream), NULL },

    { ngx_string("vhost_traffic_status_removed_peers"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE12,
      ngx_http_vts_removed_peers, 0, 0, NULL },

    { ngx_string("vhost_traffic_status_measure_status_codes"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_vts_measure_codes, 0, 0, NULL },

    { ngx_string("vhost_traffic_status_ignore_status"),
      VTS_ANY_CONF|NGX_CONF_1MORE,
      ngx_http_vts_ignore_status, VTS_LOC(ignore_status), NULL },

    /* the limit family (vts_limit.cpp) */
    { ngx_string("vhost_traffic_status_limit"),
      VTS_ANY_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot, VTS_LOC(limit), NULL },
    { ngx_string("vhost_traffic_status_limit_traffic"),
      VTS_ANY_CONF|NGX_CONF_TAKE12,
      ngx_http_vts_limit_traffic, VTS_LOC(limits), NULL },
    { ngx_string("vhost_traffic_status_limit_traffic_by_set_key"),
      VTS_ANY_CONF|NGX_CONF_TAKE23,
      ngx_http_vts_limit_traffic, VTS_LOC(limits), NULL },
    { ngx_string("vhost_traffic_status_limit_check_duplicate"),
      VTS_ANY_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot, VTS_LOC(limit_check_duplicate), NULL },
    { ngx_string("vhost_traffic_status_bypass_limit"),
      VTS_ANY_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot, VTS_LOC(bypass_limit), NULL },

    ngx_null_command
};


void *
ngx_http_vts_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_vts_main_conf_t *conf = (ngx_http_vts_main_conf_t *)
        ngx_pcalloc(cf->pool, sizeof(ngx_http_vts_main_conf_t));
    if (conf == NULL) {
        return NULL;
    }
    conf->store.host_max = NGX_CONF_UNSET_UINT;
    conf->store.group_max = NGX_CONF_UNSET_UINT;
    conf->stats_by_upstream = NGX_CONF_UNSET;
    conf->dump_period = NGX_CONF_UNSET_MSEC;
    conf->store.retain_msec = NGX_CONF_UNSET_MSEC;
    conf->store.retain_max = NGX_CONF_UNSET_UINT;
    return conf;
}


char *
ngx_http_vts_init_main_conf(ngx_conf_t *cf, void *c)
{
    ngx_http_vts_main_conf_t *conf = (ngx_http_vts_main_conf_t *) c;

    ngx_conf_init_uint_value(conf->store.host_max,
                             NGX_HTTP_VTS_HOST_MAX_DEFAULT);
    ngx_conf_init_uint_value(conf->store.group_max,
                             NGX_HTTP_VTS_GROUP_MAX_DEFAULT);
    ngx_conf_init_value(conf->stats_by_upstream, 1);
    ngx_conf_init_msec_value(conf->dump_period, 60000);
    ngx_http_vts_removed_peers_init(&conf->store);
    if (conf->display_line && !conf->enable) {
        /* (here the whole http{} block is read: the zone may follow) */
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"vhost_traffic_status_display\" needs "
                      "\"vhost_traffic_status_zone\" in %V:%ui",
                      &conf->display_file, conf->display_line);
        return (char *) NGX_CONF_ERROR;
    }
    return NGX_CONF_OK;
}


void *
ngx_http_vts_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_vts_loc_conf_t *conf = (ngx_http_vts_loc_conf_t *)
        ngx_pcalloc(cf->pool, sizeof(ngx_http_vts_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }
    conf->enable = NGX_CONF_UNSET;
    conf->display = NGX_CONF_UNSET;
    conf->format = NGX_CONF_UNSET_UINT;
    conf->filter = NGX_CONF_UNSET;
    conf->filter_by_host = NGX_CONF_UNSET;
    conf->filter_check_duplicate = NGX_CONF_UNSET;
    conf->filters = (ngx_array_t *) NGX_CONF_UNSET_PTR;
    conf->buckets = (ngx_array_t *) NGX_CONF_UNSET_PTR;
    conf->average_method = NGX_CONF_UNSET_UINT;
    conf->average_period = NGX_CONF_UNSET_MSEC;
    conf->bypass_stats = NGX_CONF_UNSET;
    conf->sets = NULL;
    conf->ignore_status = NGX_CONF_UNSET_UINT;
    conf->limit = NGX_CONF_UNSET;
    conf->limit_check_duplicate = NGX_CONF_UNSET;
    conf->bypass_limit = NGX_CONF_UNSET;
    conf->limits = NULL;
    return conf;
}


/* a scope's set_by_filter variables are the inherited ones plus its own
   (its own come last: the lookup takes the last definition of a variable) */
static char *
merge_sets(ngx_conf_t *cf, ngx_http_vts_loc_conf_t *conf,
    ngx_http_vts_loc_conf_t *prev)
{
    if (conf->sets == NULL) {
        conf->sets = prev->sets;
        return NGX_CONF_OK;
    }
    if (prev->sets == NULL || prev->sets == conf->sets) {
        return NGX_CONF_OK;
    }
    ngx_uint_t n = prev->sets->nelts + conf->sets->nelts;
    ngx_array_t *all = ngx_array_create(cf->pool, n,
                                        sizeof(ngx_http_vts_set_t));
    if (all == NULL) {
        return (char *) NGX_CONF_ERROR;
    }
    ngx_array_t *parts[] = { prev->sets, conf->sets };
    for (ngx_array_t *a : parts) {
        void *dst = ngx_array_push_n(all, a->nelts);
        if (dst == NULL) {
            return (char *) NGX_CONF_ERROR;
        }
        ngx_memcpy(dst, a->elts, a->nelts * sizeof(ngx_http_vts_set_t));
    }
    conf->sets = all;
    return NGX_CONF_OK;
}


char *
ngx_http_vts_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_vts_loc_conf_t *prev = (ngx_http_vts_loc_conf_t *) parent;
    ngx_http_vts_loc_conf_t *conf = (ngx_http_vts_loc_conf_t *) child;

    ngx_conf_merge_value(conf->enable, prev->enable, 1);
    ngx_conf_merge_value(conf->display, prev->display, 0);
    ngx_conf_merge_uint_value(conf->format, prev->format,
                              (ngx_uint_t) NGX_HTTP_VTS_FORMAT_JSON);
    ngx_conf_merge_str_value(conf->jsonp, prev->jsonp,
                             "ngx_http_vhost_traffic_status_jsonp_callback");
    ngx_conf_merge_str_value(conf->sum_key, prev->sum_key, "*");
    ngx_conf_merge_value(conf->filter, prev->filter, 1);
    ngx_conf_merge_value(conf->filter_by_host, prev->filter_by_host, 0);
    ngx_conf_merge_value(conf->filter_check_duplicate,
                         prev->filter_check_duplicate, 1);
    ngx_conf_merge_ptr_value(conf->filters, prev->filters, NULL);
    ngx_conf_merge_ptr_value(conf->buckets, prev->buckets, NULL);
    ngx_conf_merge_uint_value(conf->average_method, prev->average_method,
                              (ngx_uint_t) NGX_HTTP_VTS_AVG_AMM);
    ngx_conf_merge_msec_value(conf->average_period, prev->average_period,
                              60000);
    ngx_conf_merge_value(conf->bypass_stats, prev->bypass_stats, 0);
    ngx_conf_merge_uint_value(conf->ignore_status, prev->ignore_status, 0);
    ngx_conf_merge_value(conf->limit, prev->limit, 1);
    ngx_conf_merge_value(conf->limit_check_duplicate,
                         prev->limit_check_duplicate, 1);
    ngx_conf_merge_value(conf->bypass_limit, prev->bypass_limit, 0);
    if (ngx_http_vts_limit_merge(cf, conf, prev) != NGX_CONF_OK) {
        return (char *) NGX_CONF_ERROR;
    }
    return merge_sets(cf, conf, prev);
}


ngx_int_t
ngx_http_vts_compile(ngx_conf_t *cf, ngx_str_t *value,
    ngx_http_complex_value_t *cv)
{
    ngx_http_compile_complex_value_t ccv;

    ngx_memzero(&ccv, sizeof(ccv));
    ccv.cf = cf;
    ccv.value = value;
    ccv.complex_value = cv;
    return ngx_http_compile_complex_value(&ccv);
}


namespace {

/* the directive's conf member, by the table's offset (as nginx's slots) */
template <typename T>
T *
member(void *conf, ngx_command_t *cmd)
{
    return (T *) ((char *) conf + cmd->offset);
}


/* an enum value by the table in cmd->post, case-insensitive like
   ngx_conf_set_enum_slot, with our own error message */
char *
set_enum(ngx_conf_t *cf, ngx_command_t *cmd, ngx_str_t *value,
    ngx_uint_t *dst, const char *what, const char *expected)
{
    if (*dst != NGX_CONF_UNSET_UINT) {
        return (char *) "is duplicate";
    }
    for (ngx_conf_enum_t *e = (ngx_conf_enum_t *) cmd->post; e->name.len; e++) {
        if (e->name.len == value->len
            && ngx_strncasecmp(e->name.data, value->data, value->len) == 0)
        {
            *dst = e->value;
            return NGX_CONF_OK;
        }
    }
    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid %s \"%V\", expected %s",
                       what, value, expected);
    return (char *) NGX_CONF_ERROR;
}


/* "shared:NAME:SIZE" -> name, size; false after logging the error */
bool
parse_zone(ngx_conf_t *cf, ngx_str_t v, ngx_str_t *name, ssize_t *size)
{
    static const size_t prefix = sizeof("shared:") - 1;

    u_char *colon = nullptr;
    if (v.len > prefix && ngx_strncmp(v.data, "shared:", prefix) == 0) {
        name->data = v.data + prefix;
        colon = (u_char *) ngx_strlchr(name->data, v.data + v.len, ':');
    }
    if (colon == nullptr || colon == name->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid parameter \"%V\", "
                           "expected \"shared:NAME:SIZE\"", &v);
        return false;
    }
    name->len = colon - name->data;
    ngx_str_t s = { (size_t) (v.data + v.len - colon - 1), colon + 1 };
    *size = ngx_parse_size(&s);
    if (*size == NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid zone size \"%V\"",
                           &s);
        return false;
    }
    if (*size < (ssize_t) (8 * ngx_pagesize)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "zone \"%V\" is too small (at least %uzk)",
                           name, 8 * ngx_pagesize / 1024);
        return false;
    }
    return true;
}


char *
set_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_vts_main_conf_t *vmcf = (ngx_http_vts_main_conf_t *) conf;
    ngx_http_vts_store_t *store = &vmcf->store;
    ngx_str_t name = ngx_string("ngx_http_vhost_traffic_status");
    ssize_t size = 1024 * 1024;

    if (store->shm_zone) {
        return (char *) "is duplicate";
    }
    ngx_str_t *value = (ngx_str_t *) cf->args->elts;
    if (cf->args->nelts == 2 && !parse_zone(cf, value[1], &name, &size)) {
        return (char *) NGX_CONF_ERROR;
    }

    store->shm_zone = ngx_shared_memory_add(cf, &name, size,
                                            &ngx_http_vts_module);
    if (store->shm_zone == NULL) {
        return (char *) NGX_CONF_ERROR;
    }
    if (store->shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "zone \"%V\" is already used", &name);
        return (char *) NGX_CONF_ERROR;
    }
    store->shm_zone->init = ngx_http_vts_store_init_zone;
    store->shm_zone->data = store;
    vmcf->enable = 1;
    return NGX_CONF_OK;
}


char *
set_display(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_flag_t *display = member<ngx_flag_t>(conf, cmd);
    ngx_http_core_loc_conf_t *clcf = (ngx_http_core_loc_conf_t *)
        ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (*display != NGX_CONF_UNSET) {
        return (char *) "is duplicate";
    }
    *display = 1;
    clcf->handler = ngx_http_vts_display_handler;

    ngx_http_vts_main_conf_t *vmcf = ngx_http_vts_conf_main(cf);
    if (vmcf->display_line == 0) {
        vmcf->display_file = cf->conf_file->file.name;
        vmcf->display_line = cf->conf_file->line;
    }
    return NGX_CONF_OK;
}


char *
set_format(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_str_t *value = (ngx_str_t *) cf->args->elts;

    return set_enum(cf, cmd, &value[1], member<ngx_uint_t>(conf, cmd),
                    "format", "json, html, jsonp or prometheus");
}


char *
set_filter_key(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_array_t **filters = member<ngx_array_t *>(conf, cmd);
    ngx_str_t *value = (ngx_str_t *) cf->args->elts;

    if (value[1].len == 0) {
        return (char *) "has an empty key";
    }
    if (*filters == NGX_CONF_UNSET_PTR) {
        *filters = ngx_array_create(cf->pool, 2, sizeof(ngx_http_vts_filter_t));
        if (*filters == NULL) {
            return (char *) NGX_CONF_ERROR;
        }
    }
    ngx_http_vts_filter_t *f =
        (ngx_http_vts_filter_t *) ngx_array_push(*filters);
    if (f == NULL) {
        return (char *) NGX_CONF_ERROR;
    }
    ngx_memzero(f, sizeof(*f));

    ngx_str_t name = ngx_string("$server_name");
    if (cf->args->nelts == 3) {
        name = value[2];
    }
    if (ngx_http_vts_compile(cf, &value[1], &f->key) != NGX_OK
        || ngx_http_vts_compile(cf, &name, &f->name) != NGX_OK)
    {
        return (char *) NGX_CONF_ERROR;
    }
    return NGX_CONF_OK;
}


bool
cap_exists(ngx_array_t *caps, ngx_str_t *prefix)
{
    ngx_http_vts_cap_t *c = (ngx_http_vts_cap_t *) caps->elts;

    for (ngx_uint_t i = 0; i < caps->nelts; i++) {
        if (ngx_http_vts_str_eq(c[i].prefix, prefix)) {
            return true;
        }
    }
    return false;
}


/* filter_max_node N [PREFIX...]: one cap per prefix (none: every group,
   and then also the cap of Host-keyed server zones) */
char *
set_max_node(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_vts_store_t *store = &((ngx_http_vts_main_conf_t *) conf)->store;
    ngx_str_t *value = (ngx_str_t *) cf->args->elts;

    ngx_int_t max = ngx_atoi(value[1].data, value[1].len);
    if (max == NGX_ERROR || max == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid number \"%V\", "
                           "expected a positive integer", &value[1]);
        return (char *) NGX_CONF_ERROR;
    }
    if (store->filter_caps == NULL) {
        store->filter_caps = ngx_array_create(cf->pool, 4,
                                              sizeof(ngx_http_vts_cap_t));
        if (store->filter_caps == NULL) {
            return (char *) NGX_CONF_ERROR;
        }
    }

    bool any = cf->args->nelts == 2;
    ngx_uint_t n = any ? 1 : cf->args->nelts - 2;
    for (ngx_uint_t i = 0; i < n; i++) {
        if (store->filter_caps->nelts >= NGX_HTTP_VTS_CAPS_MAX) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "too many filter_max_node prefixes (at most %d)",
                               NGX_HTTP_VTS_CAPS_MAX);
            return (char *) NGX_CONF_ERROR;
        }
        ngx_str_t prefix = ngx_null_string;
        if (!any) {
            prefix = value[2 + i];
        }
        if (cap_exists(store->filter_caps, &prefix)) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               any ? "filter_max_node without a prefix is "
                                     "duplicate"
                                   : "filter_max_node prefix \"%V\" is "
                                     "duplicate", &prefix);
            return (char *) NGX_CONF_ERROR;
        }
        ngx_http_vts_cap_t *c =
            (ngx_http_vts_cap_t *) ngx_array_push(store->filter_caps);
        if (c == NULL) {
            return (char *) NGX_CONF_ERROR;
        }
        c->max = (ngx_uint_t) max;
        if (any) {
            ngx_str_null(&c->prefix);
            store->host_max = (ngx_uint_t) max;
        } else {
            c->prefix = value[2 + i];
        }
    }
    return NGX_CONF_OK;
}


char *
set_buckets(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_array_t **buckets = member<ngx_array_t *>(conf, cmd);
    ngx_str_t *value = (ngx_str_t *) cf->args->elts;

    if (*buckets != NGX_CONF_UNSET_PTR) {
        return (char *) "is duplicate";
    }
    if (cf->args->nelts - 1 > NGX_HTTP_VTS_BUCKET_MAX) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "too many buckets (at most %d)",
                           NGX_HTTP_VTS_BUCKET_MAX);
        return (char *) NGX_CONF_ERROR;
    }
    *buckets = ngx_array_create(cf->pool, cf->args->nelts - 1,
                                sizeof(uint64_t));
    if (*buckets == NULL) {
        return (char *) NGX_CONF_ERROR;
    }

    uint64_t prev = 0;
    for (ngx_uint_t i = 1; i < cf->args->nelts; i++) {
        ngx_int_t ms = ngx_atofp(value[i].data, value[i].len, 3);
        if (ms == NGX_ERROR || ms <= 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid bucket \"%V\", "
                               "expected seconds such as 0.005 (millisecond "
                               "precision)", &value[i]);
            return (char *) NGX_CONF_ERROR;
        }
        if (i > 1 && (uint64_t) ms <= prev) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "bucket \"%V\" is not "
                               "greater than the previous one (buckets must "
                               "ascend)", &value[i]);
            return (char *) NGX_CONF_ERROR;
        }
        prev = (uint64_t) ms;
        uint64_t *b = (uint64_t *) ngx_array_push(*buckets);
        if (b == NULL) {
            return (char *) NGX_CONF_ERROR;
        }
        *b = prev;
    }
    return NGX_CONF_OK;
}


/* a time argument; false after logging the error */
bool
parse_period(ngx_conf_t *cf, ngx_str_t *v, ngx_msec_t min, const char *hint,
    ngx_msec_t *period)
{
    ngx_msec_t p = ngx_parse_time(v, 0);

    if (p == (ngx_msec_t) NGX_ERROR || p < min) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid period \"%V\"%s",
                           v, hint);
        return false;
    }
    *period = p;
    return true;
}


char *
set_average(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_vts_loc_conf_t *vlcf = (ngx_http_vts_loc_conf_t *) conf;
    ngx_str_t *value = (ngx_str_t *) cf->args->elts;

    char *rc = set_enum(cf, cmd, &value[1], &vlcf->average_method, "method",
                        "AMM or WMA");
    if (rc != NGX_CONF_OK) {
        return rc;
    }
    if (cf->args->nelts == 3
        && !parse_period(cf, &value[2], 0, "", &vlcf->average_period))
    {
        return (char *) NGX_CONF_ERROR;
    }
    return NGX_CONF_OK;
}


/* the dump's directory must exist when the configuration is read (it is
   written at exit, when no one would see the error) */
bool
dump_dir_exists(ngx_conf_t *cf, ngx_str_t *path)
{
    u_char dir[NGX_MAX_PATH];
    u_char *slash = (u_char *) ngx_strlchr(path->data, path->data + path->len,
                                           '/');
    size_t len = 0;

    for (u_char *p = slash; p; p = (u_char *) ngx_strlchr(p + 1,
                                   path->data + path->len, '/'))
    {
        len = p - path->data;
    }
    if (slash == nullptr || len + 2 > sizeof(dir) || len + 1 == path->len) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid dump path \"%V\"", path);
        return false;
    }
    ngx_memcpy(dir, path->data, len ? len : 1);
    dir[len ? len : 1] = '\0';

    struct stat sb;
    int failed = stat((const char *) dir, &sb);
    if (failed || !S_ISDIR(sb.st_mode)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, failed ? ngx_errno : 0,
                           "dump directory \"%s\" is not a directory", dir);
        return false;
    }
    return true;
}


char *
set_dump(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_vts_main_conf_t *vmcf = (ngx_http_vts_main_conf_t *) conf;
    ngx_str_t *value = (ngx_str_t *) cf->args->elts;

    if (vmcf->dump_path.data) {
        return (char *) "is duplicate";
    }
    if (value[1].len == 0) {
        return (char *) "needs a file path";
    }
    vmcf->dump_path = value[1];
    if (ngx_conf_full_name(cf->cycle, &vmcf->dump_path, 0) != NGX_OK) {
        return (char *) NGX_CONF_ERROR;
    }
    if (!dump_dir_exists(cf, &vmcf->dump_path)) {
        return (char *) NGX_CONF_ERROR;
    }
    if (cf->args->nelts == 3
        && !parse_period(cf, &value[2], 1000, " (at least 1s)",
                         &vmcf->dump_period))
    {
        return (char *) NGX_CONF_ERROR;
    }
    vmcf->store.on_create = ngx_http_vts_dump_restore;
    vmcf->store.on_create_data = vmcf;
    return NGX_CONF_OK;
}

} // namespace
