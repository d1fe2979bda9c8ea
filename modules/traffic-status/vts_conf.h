/*
 * traffic-status: configuration structures, typed getters, and the
 * entry points that the module table (vts_module.cpp) and the directive
 * table (vts_conf.cpp) name.
 */
#ifndef VTS_CONF_H
#define VTS_CONF_H

#include "vts_store.h"

enum {
    NGX_HTTP_VTS_FORMAT_NONE = 0,
    NGX_HTTP_VTS_FORMAT_JSON,
    NGX_HTTP_VTS_FORMAT_HTML,
    NGX_HTTP_VTS_FORMAT_JSONP,
    NGX_HTTP_VTS_FORMAT_PROMETHEUS,
    NGX_HTTP_VTS_FORMAT_EXPORTER        /* nginx-vts-exporter's names */
};

/* vhost_traffic_status_filter_by_set_key KEY [NAME] */
struct ngx_http_vts_filter_t {
    ngx_http_complex_value_t  key;
    ngx_http_complex_value_t  name;
};

/* vhost_traffic_status_set_by_filter $VAR GROUP/ZONE/NAME (vts_vars) */
struct ngx_http_vts_set_t {
    ngx_int_t                    index;    /* variable index */
    bool                         dynamic;  /* GROUP or NAME has variables: */
    ngx_http_complex_value_t     spec;     /* the whole, split per request */
    const ngx_http_vts_scope_t  *scope;
    ngx_http_complex_value_t     zone;     /* "GROUP@NAME" or NAME */
    ngx_uint_t                   field;    /* into the field table */
};

/* vhost_traffic_status_limit_traffic[_by_set_key] (vts_limit.cpp) */
struct ngx_http_vts_limit_t {
    bool                      by_key;   /* else the request's server zone */
    ngx_str_t                 key_text; /* as written: de-duplication */
    ngx_http_complex_value_t  key;      /* NO@name, UA@, UG@, CC@, FG@ */
    ngx_str_t                 member;   /* as written (MEMBER, or the
                                           whole MEMBER:SIZE if dynamic) */
    ngx_http_complex_value_t *value;    /* MEMBER:SIZE with variables,
                                           parsed per request; or nullptr */
    size_t                    offset;   /* of its counter in the stats */
    uint64_t                  size;
    ngx_uint_t                code;
};

struct ngx_http_vts_main_conf_t {
    ngx_http_vts_store_t  store;
    ngx_flag_t            stats_by_upstream;
    ngx_flag_t            limits;       /* some limit_traffic exists */
    ngx_str_t             dump_path;
    ngx_msec_t            dump_period;
    ngx_flag_t            enable;       /* a zone is configured */
    ngx_str_t             display_file; /* the first display directive: */
    ngx_uint_t            display_line; /* it needs a zone */
};

struct ngx_http_vts_loc_conf_t {
    ngx_flag_t            enable;
    ngx_flag_t            display;
    ngx_uint_t            format;
    ngx_str_t             jsonp;
    ngx_str_t             sum_key;
    ngx_flag_t            filter;
    ngx_flag_t            filter_by_host;
    ngx_flag_t            filter_check_duplicate;
    ngx_array_t          *filters;      /* ngx_http_vts_filter_t */
    ngx_array_t          *buckets;      /* uint64_t msec, ascending */
    ngx_uint_t            average_method;
    ngx_msec_t            average_period;
    ngx_flag_t            bypass_stats;
    ngx_array_t          *sets;         /* ngx_http_vts_set_t */
    ngx_uint_t            ignore_status;    /* bit k: class kxx */
    ngx_flag_t            limit;
    ngx_flag_t            limit_check_duplicate;
    ngx_flag_t            bypass_limit;
    ngx_array_t          *limits;       /* ngx_http_vts_limit_t */
};

extern "C" {
extern ngx_module_t  ngx_http_vts_module;
}

/* vts_conf.cpp */
extern ngx_command_t  ngx_http_vts_commands[];
void *ngx_http_vts_create_main_conf(ngx_conf_t *cf);
char *ngx_http_vts_init_main_conf(ngx_conf_t *cf, void *conf);
void *ngx_http_vts_create_loc_conf(ngx_conf_t *cf);
char *ngx_http_vts_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child);
ngx_int_t ngx_http_vts_compile(ngx_conf_t *cf, ngx_str_t *value,
    ngx_http_complex_value_t *cv);

/* directive handlers that live next to what they configure */
char *ngx_http_vts_set_by_filter(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);                                    /* vts_vars.cpp */
char *ngx_http_vts_limit_traffic(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);                                    /* vts_limit.cpp */
char *ngx_http_vts_limit_merge(ngx_conf_t *cf, ngx_http_vts_loc_conf_t *conf,
    ngx_http_vts_loc_conf_t *prev);
ngx_int_t ngx_http_vts_limit_handler(ngx_http_request_t *r);
char *ngx_http_vts_measure_codes(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);                                    /* vts_conf_status.cpp */
char *ngx_http_vts_ignore_status(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_http_vts_add_variables(ngx_conf_t *cf);    /* vts_vars.cpp */
char *ngx_http_vts_removed_peers(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);                                    /* vts_peers.cpp */
void ngx_http_vts_removed_peers_init(ngx_http_vts_store_t *store);
bool ngx_http_vts_limit_member(ngx_str_t name, size_t *offset);

/* vts_count.cpp: the log phase handler, and the request's own server
   zone (an existing node or nullptr) for the limits and $vts_* */
ngx_int_t ngx_http_vts_log_handler(ngx_http_request_t *r);
ngx_http_vts_node_t *ngx_http_vts_own_server(ngx_http_request_t *r,
    ngx_http_vts_store_t *store, ngx_http_vts_loc_conf_t *vlcf);

/* vts_peers.cpp: worker 0's sweep of the upstreams' peer lists into the
   store's peer lifecycle, once a second */
void ngx_http_vts_peers_start_sweep(ngx_http_vts_main_conf_t *vmcf,
    ngx_cycle_t *cycle);

/* vts_display.cpp: the display location's content handler */
ngx_int_t ngx_http_vts_display_handler(ngx_http_request_t *r);

/* vts_dump.cpp */
void ngx_http_vts_dump_restore(ngx_http_vts_store_t *store, void *data,
    ngx_log_t *log);
/* final: the master's dump when it exits (a binary upgrade's new
   generation merges it) */
ngx_int_t ngx_http_vts_dump_save(ngx_http_vts_main_conf_t *vmcf,
    ngx_log_t *log, bool final);
void ngx_http_vts_dump_start_timer(ngx_http_vts_main_conf_t *vmcf,
    ngx_cycle_t *cycle);


static inline ngx_http_vts_main_conf_t *
ngx_http_vts_main_conf(ngx_http_request_t *r)
{
    return (ngx_http_vts_main_conf_t *)
        ngx_http_get_module_main_conf(r, ngx_http_vts_module);
}


static inline ngx_http_vts_loc_conf_t *
ngx_http_vts_loc_conf(ngx_http_request_t *r)
{
    return (ngx_http_vts_loc_conf_t *)
        ngx_http_get_module_loc_conf(r, ngx_http_vts_module);
}


static inline ngx_http_vts_main_conf_t *
ngx_http_vts_conf_main(ngx_conf_t *cf)
{
    return (ngx_http_vts_main_conf_t *)
        ngx_http_conf_get_module_main_conf(cf, ngx_http_vts_module);
}


/* nullptr before the http{} block or when it has none */
static inline ngx_http_vts_main_conf_t *
ngx_http_vts_cycle_main_conf(ngx_cycle_t *cycle)
{
    if (cycle->conf_ctx == nullptr
        || cycle->conf_ctx[ngx_http_module.index] == nullptr)
    {
        return nullptr;
    }
    return (ngx_http_vts_main_conf_t *)
        ngx_http_cycle_get_module_main_conf(cycle, ngx_http_vts_module);
}

#endif /* VTS_CONF_H */
