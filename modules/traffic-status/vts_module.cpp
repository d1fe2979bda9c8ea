/*
 * traffic-status: VTS-compatible traffic statistics for nginx (C++17).
 *
 * This file: the ngx_module_t, the log phase registration and the
 * process hooks.  See README.md for the files and how data flows.
 */

#include "vts_conf.h"

namespace {

ngx_int_t
postconfiguration(ngx_conf_t *cf)
{
    ngx_http_vts_main_conf_t *vmcf = ngx_http_vts_conf_main(cf);

    if (!vmcf->enable) {
        if (vmcf->dump_path.len) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"vhost_traffic_status_dump\" needs "
                               "\"vhost_traffic_status_zone\"");
            return NGX_ERROR;
        }
        return NGX_OK;
    }

    ngx_http_core_main_conf_t *cmcf = (ngx_http_core_main_conf_t *)
        ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);
    ngx_http_handler_pt *h = (ngx_http_handler_pt *)
        ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }
    *h = ngx_http_vts_log_handler;

    if (vmcf->limits) {
        h = (ngx_http_handler_pt *)
            ngx_array_push(&cmcf->phases[NGX_HTTP_PREACCESS_PHASE].handlers);
        if (h == NULL) {
            return NGX_ERROR;
        }
        *h = ngx_http_vts_limit_handler;
    }
    return NGX_OK;
}


ngx_int_t
init_process(ngx_cycle_t *cycle)
{
    ngx_http_vts_main_conf_t *vmcf = ngx_http_vts_cycle_main_conf(cycle);

    if (vmcf == NULL || !vmcf->enable) {
        return NGX_OK;
    }
    if (ngx_http_vts_store_init_worker(&vmcf->store, cycle) != NGX_OK) {
        return NGX_ERROR;
    }
    if (vmcf->dump_path.len && ngx_worker == 0) {
        ngx_http_vts_dump_start_timer(vmcf, cycle);
    }
    /* (a cache manager or loader runs this too, with ngx_worker 0) */
    if (ngx_worker == 0
        && (ngx_process == NGX_PROCESS_WORKER
            || ngx_process == NGX_PROCESS_SINGLE))
    {
        ngx_http_vts_peers_start_sweep(vmcf, cycle);
    }
    return NGX_OK;
}


/* worker 0 and the master save the dump when they exit */
void
save_on_exit(ngx_cycle_t *cycle, bool worker)
{
    ngx_http_vts_main_conf_t *vmcf = ngx_http_vts_cycle_main_conf(cycle);

    if (vmcf && vmcf->enable && vmcf->dump_path.len
        && (!worker || ngx_worker == 0)
        && ngx_http_vts_store_ready(&vmcf->store))
    {
        ngx_http_vts_dump_save(vmcf, cycle->log, !worker);
    }
}


void
exit_process(ngx_cycle_t *cycle)
{
    save_on_exit(cycle, true);
}


void
exit_master(ngx_cycle_t *cycle)
{
    save_on_exit(cycle, false);
}


ngx_http_module_t  module_ctx = {
    ngx_http_vts_add_variables,         /* preconfiguration */
    postconfiguration,                  /* postconfiguration */
    ngx_http_vts_create_main_conf,      /* create main configuration */
    ngx_http_vts_init_main_conf,        /* init main configuration */
    NULL,                               /* create server configuration */
    NULL,                               /* merge server configuration */
    ngx_http_vts_create_loc_conf,       /* create location configuration */
    ngx_http_vts_merge_loc_conf         /* merge location configuration */
};

} // namespace


ngx_module_t  ngx_http_vts_module = {
    NGX_MODULE_V1,
    &module_ctx,                   /* module context */
    ngx_http_vts_commands,         /* module directives */
    NGX_HTTP_MODULE,               /* module type */
    NULL,                          /* init master */
    NULL,                          /* init module */
    init_process,                  /* init process */
    NULL,                          /* init thread */
    NULL,                          /* exit thread */
    exit_process,                  /* exit process */
    exit_master,                   /* exit master */
    NGX_MODULE_V1_PADDING
};
