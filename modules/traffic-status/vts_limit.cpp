/*
 * traffic-status: the VTS limit directive family (limit, limit_traffic,
 * limit_traffic_by_set_key, limit_check_duplicate, bypass_limit).
 *
 * Not implemented yet: every one of them fails `nginx -t` loudly instead
 * of being silently ignored.  The limit checks (an access-phase handler
 * reading store snapshots) belong in this file.
 */

#include "vts_conf.h"


char *
ngx_http_vts_limit_unsupported(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "\"%V\" is not supported by this build (the "
                       "traffic-status module implements statistics only, "
                       "not the VTS limit directives)", &cmd->name);
    return (char *) NGX_CONF_ERROR;
}
