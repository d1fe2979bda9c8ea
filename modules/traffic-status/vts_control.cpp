/*
 * traffic-status: the control endpoint,
 * <location>/control?cmd=status|reset|delete&group=GROUP[&zone=ZONE].
 *
 * parse: cmd and group by table, zone URL-decoded and split by what the
 * group names (NAME, or GROUP[@NAME]) -> a selection; status renders the
 * selected JSON sections, reset / delete ask the store to apply the
 * operation to every matching node.
 */

#include "vts_display.h"

namespace {

enum cmd_e { CMD_STATUS, CMD_RESET, CMD_DELETE };

const struct {
    ngx_str_t  name;
    cmd_e      cmd;
} commands[] = {
    { ngx_string("status"), CMD_STATUS },
    { ngx_string("reset"), CMD_RESET },
    { ngx_string("delete"), CMD_DELETE },
};

/* a parsed request */
struct control_t {
    cmd_e                        cmd;
    ngx_str_t                    cmd_arg;
    ngx_str_t                    group_arg;
    ngx_str_t                    zone;
    bool                         has_zone;
    const ngx_http_vts_scope_t  *scope;
    ngx_str_t                    zgroup;
    ngx_str_t                    zname;
    vts_select_t                 sel;
};


ngx_int_t
control_error(ngx_http_request_t *r, ngx_uint_t status, const char *msg)
{
    vts_out_t o(r->pool);

    o.put("{\"processingReturn\":false,\"error\":");
    ngx_http_vts_json_str(o, (const u_char *) msg, ngx_strlen(msg));
    o.put("}\n");
    return ngx_http_vts_send(r, status, "application/json", o);
}


/* zone=NAME, or zone=GROUP[@NAME] for groups keyed that way */
void
select_zone(control_t &c)
{
    vts_select_t &sel = c.sel;
    ngx_str_t &zone = c.zone;

    if (!c.scope->grouped) {
        c.zname = zone;
        sel.name = &c.zname;
        return;
    }
    u_char *at = (u_char *) ngx_strlchr(zone.data, zone.data + zone.len, '@');
    c.zgroup.data = zone.data;
    c.zgroup.len = at ? (size_t) (at - zone.data) : zone.len;
    sel.group = &c.zgroup;
    if (at) {
        c.zname.data = at + 1;
        c.zname.len = zone.data + zone.len - at - 1;
        sel.name = &c.zname;
    }
}


/* the selection the group and zone arguments make */
void
select_scope(control_t &c)
{
    uint8_t kind = c.scope->kind;
    vts_select_t &sel = c.sel;

    sel.server = kind == 0 || kind == NGX_HTTP_VTS_SERVER;
    sel.filter = kind == 0 || kind == NGX_HTTP_VTS_FILTER;
    sel.upstream = kind == 0 || kind == NGX_HTTP_VTS_UPSTREAM;
    sel.cache = kind == 0 || kind == NGX_HTTP_VTS_CACHE;
    sel.upstreams = c.scope->upstreams;

    bool all_zones = !c.has_zone || (c.zone.len == 1 && c.zone.data[0] == '*');
    if (kind != 0 && !all_zones) {
        select_zone(c);
    }
}


/* NGX_OK, or the message of a 400 in *err */
ngx_int_t
parse(ngx_http_request_t *r, control_t &c, const char **err)
{
    if (ngx_http_arg(r, (u_char *) "cmd", 3, &c.cmd_arg) != NGX_OK) {
        *err = "missing cmd (status, reset or delete)";
        return NGX_DECLINED;
    }
    if (ngx_http_arg(r, (u_char *) "group", 5, &c.group_arg) != NGX_OK) {
        *err = "missing group (server, filter, upstream@alone, "
               "upstream@group, cache or *)";
        return NGX_DECLINED;
    }
    c.has_zone = ngx_http_arg(r, (u_char *) "zone", 4, &c.zone) == NGX_OK;

    /* the arguments are still URL-encoded */
    if (c.has_zone) {
        u_char *dst = (u_char *) ngx_pnalloc(r->pool, c.zone.len + 1);
        if (dst == nullptr) {
            return NGX_ERROR;
        }
        u_char *src = c.zone.data, *d = dst;
        ngx_unescape_uri(&d, &src, c.zone.len, 0);
        c.zone.data = dst;
        c.zone.len = d - dst;
    }

    bool known = false;
    for (auto &k : commands) {
        if (ngx_http_vts_str_eq(c.cmd_arg, &k.name)) {
            c.cmd = k.cmd;
            known = true;
        }
    }
    if (!known) {
        *err = "unknown cmd (expected status, reset or delete)";
        return NGX_DECLINED;
    }

    c.scope = ngx_http_vts_scope_find(&c.group_arg);
    if (c.scope == nullptr) {
        *err = "unknown group (expected server, filter, upstream@alone, "
               "upstream@group, cache or *)";
        return NGX_DECLINED;
    }
    select_scope(c);
    return NGX_OK;
}


ngx_int_t
status(ngx_http_request_t *r, vts_render_t &rd, control_t &c)
{
    static const struct {
        bool vts_select_t::*selected;
        void (*render)(vts_out_t &o, vts_render_t &rd, vts_select_t &sel);
    } sections[] = {
        { &vts_select_t::server, ngx_http_vts_json_servers },
        { &vts_select_t::filter, ngx_http_vts_json_filters },
        { &vts_select_t::upstream, ngx_http_vts_json_upstreams },
        { &vts_select_t::cache, ngx_http_vts_json_caches },
    };
    vts_out_t o(r->pool);
    bool comma = false;

    o.putc('{');
    for (auto &s : sections) {
        if (!(c.sel.*s.selected)) {
            continue;
        }
        if (comma) {
            o.putc(',');
        }
        comma = true;
        s.render(o, rd, c.sel);
    }
    o.put("}\n");
    return ngx_http_vts_send(r, NGX_HTTP_OK, "application/json", o);
}


bool
matches(ngx_http_vts_node_t *n, void *data)
{
    control_t &c = *(control_t *) data;

    return ngx_http_vts_scope_has(c.scope, n)
           && (c.sel.group == nullptr
               || ngx_http_vts_str_eq(ngx_http_vts_node_group(n), c.sel.group))
           && (c.sel.name == nullptr
               || ngx_http_vts_str_eq(ngx_http_vts_node_name(n), c.sel.name));
}


ngx_int_t
change(ngx_http_request_t *r, vts_render_t &rd, control_t &c)
{
    ngx_http_vts_op_e op = c.cmd == CMD_RESET ? NGX_HTTP_VTS_RESET
                                              : NGX_HTTP_VTS_DELETE;
    ngx_uint_t counts = ngx_http_vts_store_apply(&rd.vmcf->store, op, matches,
                                                 &c);
    vts_out_t o(r->pool);

    o.put("{\"processingReturn\":");
    o.put(counts ? "true" : "false");
    o.put(",\"processingCommandString\":");
    ngx_http_vts_json_str(o, c.cmd_arg);
    o.put(",\"processingGroupString\":");
    ngx_http_vts_json_str(o, c.group_arg);
    o.put(",\"processingZoneString\":");
    if (c.has_zone) {
        ngx_http_vts_json_str(o, c.zone);
    } else {
        o.put("\"*\"");
    }
    o.put(",\"processingCounts\":");
    o.u64(counts);
    o.put("}\n");
    return ngx_http_vts_send(r, NGX_HTTP_OK, "application/json", o);
}

} // namespace


ngx_int_t
ngx_http_vts_control(ngx_http_request_t *r, vts_render_t &rd)
{
    control_t c;
    const char *err = nullptr;

    ngx_memzero(&c.zgroup, sizeof(c.zgroup));
    ngx_memzero(&c.zname, sizeof(c.zname));

    ngx_int_t rc = parse(r, c, &err);
    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    if (rc != NGX_OK) {
        return control_error(r, NGX_HTTP_BAD_REQUEST, err);
    }
    /* a HEAD (a prefetch, a link checker) never changes data */
    if (c.cmd != CMD_STATUS && r->method == NGX_HTTP_HEAD) {
        return control_error(r, NGX_HTTP_NOT_ALLOWED,
                             "reset and delete need GET");
    }
    return c.cmd == CMD_STATUS ? status(r, rd, c) : change(r, rd, c);
}
