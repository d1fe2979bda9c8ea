/*
 * traffic-status: the control endpoint,
 * <location>/control?cmd=status|reset|delete&group=GROUP[&zone=ZONE].
 *
 * parse: the arguments URL-decoded, cmd and group by table, zone split by
 * what the group names (NAME, or GROUP[@NAME]) -> a selection; status
 * renders the selected JSON sections (group=*: the whole document,
 * zone=::main: the main section, one named entry: that entry alone),
 * reset / delete ask the store to apply the operation to every matching
 * node (delete with expire=T: only those idle for longer than T).
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
    bool                         main;      /* zone=::main */
    ngx_str_t                    expire_arg;
    bool                         has_expire;
    uint64_t                     idle_before;  /* msec; 0: any */
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


/* an argument, URL-decoded into the pool; NGX_DECLINED: absent */
ngx_int_t
arg(ngx_http_request_t *r, const char *name, ngx_str_t *v)
{
    if (ngx_http_arg(r, (u_char *) name, ngx_strlen(name), v) != NGX_OK) {
        return NGX_DECLINED;
    }
    u_char *dst = (u_char *) ngx_pnalloc(r->pool, v->len + 1);
    if (dst == nullptr) {
        return NGX_ERROR;
    }
    u_char *src = v->data, *d = dst;
    ngx_unescape_uri(&d, &src, v->len, 0);
    v->data = dst;
    v->len = d - dst;
    return NGX_OK;
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

    static const ngx_str_t main_zone = ngx_string("::main");
    c.main = c.has_zone && ngx_http_vts_str_eq(c.zone, &main_zone);
    bool all_zones = !c.has_zone || (c.zone.len == 1 && c.zone.data[0] == '*');
    if (kind != 0 && !all_zones && !c.main) {
        select_zone(c);
        sel.bare = sel.name != nullptr;
    }
}


/* NGX_OK, or the message of a 400 in *err */
ngx_int_t
parse(ngx_http_request_t *r, control_t &c, const char **err)
{
    ngx_int_t rc = arg(r, "cmd", &c.cmd_arg);
    if (rc != NGX_OK) {
        *err = "missing cmd (status, reset or delete)";
        return rc;
    }
    rc = arg(r, "group", &c.group_arg);
    if (rc != NGX_OK) {
        *err = "missing group (server, filter, upstream@alone, "
               "upstream@group, cache or *)";
        return rc;
    }
    rc = arg(r, "zone", &c.zone);
    if (rc == NGX_ERROR) {
        return rc;
    }
    c.has_zone = rc == NGX_OK;
    rc = arg(r, "expire", &c.expire_arg);
    if (rc == NGX_ERROR) {
        return rc;
    }
    c.has_expire = rc == NGX_OK;

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

    if (c.scope->kind == 0 && !c.main) {        /* group=*: as /format/json */
        ngx_http_vts_render_json(o, rd);
        o.putc('\n');
        return ngx_http_vts_send(r, NGX_HTTP_OK, "application/json", o);
    }
    o.putc('{');
    if (c.main) {
        ngx_http_vts_json_main(o, rd);
    }
    for (auto &s : sections) {
        if (c.main || !(c.sel.*s.selected)) {
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
               || ngx_http_vts_str_eq(ngx_http_vts_node_name(n), c.sel.name))
           && (c.idle_before == 0
               || ngx_http_vts_load(&n->last_msec) < c.idle_before);
}


/* delete&expire=T (seconds, or 30m, 1h, 7d): only the zones whose last
   request is older than T; false: T is unreadable */
bool
parse_expire(control_t &c, uint64_t now)
{
    c.idle_before = 0;
    if (!c.has_expire || c.cmd != CMD_DELETE) {
        return true;
    }
    time_t t = ngx_parse_time(&c.expire_arg, 1);
    if (t == (time_t) NGX_ERROR || c.expire_arg.len == 0) {
        return false;
    }
    uint64_t ms = (uint64_t) t * 1000;
    c.idle_before = ms < now ? now - ms : 1;
    return true;
}


ngx_int_t
change(ngx_http_request_t *r, vts_render_t &rd, control_t &c)
{
    ngx_http_vts_op_e op = c.cmd == CMD_RESET ? NGX_HTTP_VTS_RESET
                                              : NGX_HTTP_VTS_DELETE;
    bool valid = parse_expire(c, rd.now);
    ngx_uint_t counts = valid ? ngx_http_vts_store_apply(&rd.vmcf->store, op,
                                                         matches, &c)
                              : 0;
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
    if (!valid) {
        o.put(",\"error\":\"invalid expire (seconds, or a time such as "
              "30m, 1h, 7d): nothing deleted\"");
    }
    o.put("}\n");
    return ngx_http_vts_send(r, valid ? NGX_HTTP_OK : NGX_HTTP_BAD_REQUEST,
                             "application/json", o);
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
