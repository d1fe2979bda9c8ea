/*
 * traffic-status: what the views share.  The render context (one sorted
 * store snapshot per request, taken when the render starts), the walk
 * over upstream peers (vts_peers.cpp) and file caches, the sum key, and
 * the renderers' entry points.
 */
#ifndef VTS_DISPLAY_H
#define VTS_DISPLAY_H

#include "vts_conf.h"
#include "vts_out.h"

struct ngx_http_vts_upstream_t;

struct ngx_http_vts_render_t {
    ngx_http_request_t        *r;
    ngx_http_vts_main_conf_t  *vmcf;
    ngx_http_vts_loc_conf_t   *vlcf;
    bool                       reads_zone;  /* the view needs snap */
    ngx_http_vts_snapshot_t    snap;
    uint64_t                   now;
    ngx_http_vts_upstream_t   *upstreams = nullptr;  /* built on first use */
    ngx_uint_t                 nupstreams = 0;
};

typedef ngx_http_vts_render_t  vts_render_t;

/*
 * Takes snap (when the view reads the zone) and now, right before the
 * view runs: never when the request arrives, as a render may wait for a
 * slot longer than the store keeps unlinked nodes (vts_stream.cpp).
 * NGX_ERROR when out of memory.
 */
ngx_int_t ngx_http_vts_render_start(vts_render_t &rd);

/*
 * Which entries a JSON section shows (the control endpoint's selection;
 * the full document shows everything).  nullptr group / name: all.
 */
struct ngx_http_vts_select_t {
    bool        server = true, filter = true, upstream = true, cache = true;
    uint8_t     upstreams = NGX_HTTP_VTS_UPSTREAMS_ANY;
    ngx_str_t  *group = nullptr;     /* filter group or upstream group */
    ngx_str_t  *name = nullptr;      /* zone / key / peer */
    bool        bare = false;        /* one named entry: "NAME":{...} only,
                                        without the section and group */
};

typedef ngx_http_vts_select_t  vts_select_t;

/* one upstream peer as every view shows it (vts_peers.cpp) */
struct ngx_http_vts_peer_t {
    ngx_str_t             name;
    ngx_uint_t            weight;
    ngx_uint_t            max_fails;
    time_t                fail_timeout;
    bool                  backup;
    bool                  down;         /* the failed bit: `down`,
                                           set_peer_down */
    bool                  drain;        /* the draining bit: `drain` */
    bool                  removed;      /* left its list, kept (lifecycle) */
    bool                  resolved;     /* from a `resolve` line's name */
    uint64_t              added;        /* msec it joined at run time, 0 */
    uint64_t              removed_at;   /* msec it left (when removed) */
    ngx_http_vts_node_t  *node;         /* its counters; nullptr: none */
};

/* an upstream group with the peers the views show */
struct ngx_http_vts_upstream_t {
    ngx_str_t             group;
    ngx_http_vts_peer_t  *peers;
    ngx_uint_t            n;
};

/*
 * The one walk of upstream peers for every view, built once per render
 * into rd.upstreams: each upstream{} in configuration order with its
 * listed peers (primary, then backup, in list order, each name once; read
 * under each list's read lock, names copied) and then its removed peers
 * still kept (by name, ngx_http_vts_store_retained); then the groups only
 * the zone knows (a reload removed their upstream{}: every peer removed),
 * by name; then ::nogroups.  NGX_ERROR when out of memory.
 */
ngx_int_t ngx_http_vts_upstreams(vts_render_t &rd);

/* fn(group, peer) for every peer of ngx_http_vts_upstreams */
template <typename Fn>
ngx_int_t
ngx_http_vts_peers(vts_render_t &rd, Fn &&fn)
{
    if (ngx_http_vts_upstreams(rd) != NGX_OK) {
        return NGX_ERROR;
    }
    for (ngx_uint_t i = 0; i < rd.nupstreams; i++) {
        ngx_http_vts_upstream_t *u = &rd.upstreams[i];
        for (ngx_uint_t k = 0; k < u->n; k++) {
            fn(u->group, u->peers[k]);
        }
    }
    return NGX_OK;
}

/* one file cache zone, with its sizes and its counters (zero if unused) */
struct ngx_http_vts_cache_row_t {
    ngx_str_t             name;
    uint64_t              max;
    uint64_t              used;
    ngx_http_vts_stats_t  st;
};

/* every proxy/fastcgi/uwsgi/scgi cache zone, in the cycle's order, in
   the request pool; NGX_ERROR when out of memory */
ngx_int_t ngx_http_vts_cache_rows(vts_render_t &rd,
    ngx_http_vts_cache_row_t **rows, ngx_uint_t *n);

/* the sum key's counters over every server zone (and the overflow) */
void ngx_http_vts_sum_stats(vts_render_t &rd, ngx_http_vts_stats_t *sum,
    uint64_t *avg);

uint64_t ngx_http_vts_req_avg(vts_render_t &rd, const ngx_http_vts_stats_t *st);
uint64_t ngx_http_vts_resp_avg(vts_render_t &rd,
    const ngx_http_vts_stats_t *st);

/* connections as stub_status (0 without it): active, reading, writing,
   waiting, accepted, handled, requests */
#define NGX_HTTP_VTS_CONN_N  7

struct ngx_http_vts_conn_t {
    const char  *name;
    uint64_t     value;
};

void ngx_http_vts_connections(ngx_http_vts_conn_t c[NGX_HTTP_VTS_CONN_N]);

/* vts_stream.cpp: answers r with the view's output.  A main GET whose
   output passes 64 KB is sent chunked while the view writes it (paused
   while the client is slow, and between time slices so other requests are
   served); otherwise the whole output is sent with a Content-Length */
typedef ngx_int_t (*ngx_http_vts_view_pt)(vts_out_t &o, vts_render_t &rd);
ngx_int_t ngx_http_vts_stream(ngx_http_request_t *r, vts_render_t &rd,
    ngx_http_vts_view_pt view, const char *type);

/* vts_json.cpp */
void ngx_http_vts_render_json(vts_out_t &o, vts_render_t &rd);
void ngx_http_vts_json_main(vts_out_t &o, vts_render_t &rd);  /* hostName ..
                                                         sharedZones */
void ngx_http_vts_json_servers(vts_out_t &o, vts_render_t &rd,
    vts_select_t &sel);
void ngx_http_vts_json_filters(vts_out_t &o, vts_render_t &rd,
    vts_select_t &sel);
void ngx_http_vts_json_upstreams(vts_out_t &o, vts_render_t &rd,
    vts_select_t &sel);
void ngx_http_vts_json_caches(vts_out_t &o, vts_render_t &rd,
    vts_select_t &sel);

/* vts_prometheus.cpp */
ngx_int_t ngx_http_vts_render_prometheus(vts_out_t &o, vts_render_t &rd);

/* vts_exporter.cpp: nginx-vts-exporter's metric names */
ngx_int_t ngx_http_vts_render_exporter(vts_out_t &o, vts_render_t &rd);

/* vts_html.cpp */
ngx_int_t ngx_http_vts_render_html(vts_out_t &o, ngx_http_request_t *r);

/* vts_control.cpp */
ngx_int_t ngx_http_vts_control(ngx_http_request_t *r, vts_render_t &rd);

#endif /* VTS_DISPLAY_H */
