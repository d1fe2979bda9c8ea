/*
 * traffic-status: the display handler (JSON, JSONP, HTML, Prometheus),
 * the control endpoint and vhost_traffic_status_set_by_filter variables.
 *
 * Rendering takes a snapshot of the node list under the zone's mutex (a
 * few pointers per node), sorts it, and writes the output without the
 * mutex into a chain of buffers from the request pool.  Unlinked nodes
 * stay readable for a grace period, so a snapshot is always safe to read.
 */

#include "ngx_http_vts.h"
#include "ngx_http_vts_html.h"

#include <algorithm>
#include <cstring>

extern "C" {
extern ngx_module_t  ngx_http_proxy_module;
extern ngx_module_t  ngx_http_fastcgi_module;
extern ngx_module_t  ngx_http_uwsgi_module;
extern ngx_module_t  ngx_http_scgi_module;
}

namespace {

/* ----------------------------------------------------------------------
 * output buffer: a chain of pool buffers, never reallocated
 */

struct out_t {
    ngx_pool_t   *pool;
    ngx_chain_t  *head = nullptr;
    ngx_chain_t **last = &head;
    ngx_buf_t    *b = nullptr;
    size_t        total = 0;
    bool          failed = false;

    explicit out_t(ngx_pool_t *p) : pool(p) {}

    bool reserve(size_t n) {
        if (failed) {
            return false;
        }
        if (b && (size_t) (b->end - b->last) >= n) {
            return true;
        }
        size_t size = n > 65536 ? n : 65536;
        ngx_buf_t *nb = ngx_create_temp_buf(pool, size);
        ngx_chain_t *cl = ngx_alloc_chain_link(pool);
        if (nb == nullptr || cl == nullptr) {
            failed = true;
            return false;
        }
        cl->buf = nb;
        cl->next = nullptr;
        *last = cl;
        last = &cl->next;
        b = nb;
        return true;
    }

    void put(const void *data, size_t len) {
        if (len == 0 || !reserve(len)) {
            return;
        }
        b->last = ngx_cpymem(b->last, data, len);
        total += len;
    }

    void put(const char *s) { put(s, ngx_strlen(s)); }
    void put(ngx_str_t s) { put(s.data, s.len); }

    void putc(u_char c) {
        if (!reserve(1)) {
            return;
        }
        *b->last++ = c;
        total++;
    }

    void u64(uint64_t v) {
        if (!reserve(NGX_INT64_LEN)) {
            return;
        }
        u_char *p = ngx_sprintf(b->last, "%uL", v);
        total += p - b->last;
        b->last = p;
    }

    /* milliseconds as seconds with 3 decimals */
    void secs(uint64_t ms) {
        if (!reserve(NGX_INT64_LEN + 4)) {
            return;
        }
        u_char *p = ngx_sprintf(b->last, "%uL.%03uL", ms / 1000, ms % 1000);
        total += p - b->last;
        b->last = p;
    }
};


/* length of the valid UTF-8 sequence at p, 0 when invalid */
size_t
utf8_len(const u_char *p, const u_char *end)
{
    u_char c = p[0];

    if (c < 0x80) {
        return 1;
    }

    size_t n;
    uint32_t cp, min;
    if ((c & 0xe0) == 0xc0) {
        n = 2; cp = c & 0x1f; min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
        n = 3; cp = c & 0x0f; min = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
        n = 4; cp = c & 0x07; min = 0x10000;
    } else {
        return 0;
    }
    if ((size_t) (end - p) < n) {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80) {
            return 0;
        }
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
        return 0;
    }
    return n;
}


const char hexdigits[] = "0123456789abcdef";


void
json_str(out_t &o, const u_char *p, size_t len)
{
    const u_char *end = p + len;

    o.putc('"');
    while (p < end) {
        u_char c = *p;
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            const u_char *s = p;
            while (p < end && *p >= 0x20 && *p < 0x80 && *p != '"' && *p != '\\') {
                p++;
            }
            o.put(s, p - s);
            continue;
        }
        if (c == '"' || c == '\\') {
            o.putc('\\');
            o.putc(c);
            p++;
            continue;
        }
        if (c < 0x20) {
            u_char esc[6] = { '\\', 'u', '0', '0', (u_char) hexdigits[c >> 4],
                              (u_char) hexdigits[c & 0xf] };
            o.put(esc, 6);
            p++;
            continue;
        }
        size_t n = utf8_len(p, end);
        if (n == 0) {
            o.put("\\ufffd");
            p++;
            continue;
        }
        o.put(p, n);
        p += n;
    }
    o.putc('"');
}


void
json_str(out_t &o, ngx_str_t s)
{
    json_str(o, s.data, s.len);
}


/* a Prometheus label value (text format 0.0.4) */
void
prom_label(out_t &o, const u_char *p, size_t len)
{
    const u_char *end = p + len;

    while (p < end) {
        u_char c = *p;
        if (c == '\\' || c == '"') {
            o.putc('\\');
            o.putc(c);
            p++;
        } else if (c == '\n') {
            o.put("\\n");
            p++;
        } else if (c < 0x20 || c == 0x7f) {
            o.putc('?');
            p++;
        } else if (c < 0x80) {
            o.putc(c);
            p++;
        } else {
            size_t n = utf8_len(p, end);
            if (n == 0) {
                o.put("\xef\xbf\xbd");
                p++;
            } else {
                o.put(p, n);
                p += n;
            }
        }
    }
}


void
prom_label(out_t &o, ngx_str_t s)
{
    prom_label(o, s.data, s.len);
}


/* ----------------------------------------------------------------------
 * snapshot
 */

struct snap_t {
    ngx_http_vts_node_t **nodes = nullptr;
    ngx_uint_t            n = 0;
    uint64_t              used_node = 0;
    uint64_t              dropped_full = 0;
    uint64_t              dropped_limit = 0;
    uint64_t              start_msec = 0;
    size_t                used_size = 0;
    ngx_http_vts_stats_t *overflow = nullptr;
};


bool
node_less(ngx_http_vts_node_t *a, ngx_http_vts_node_t *b)
{
    if (a->type != b->type) {
        return a->type < b->type;
    }
    ngx_str_t ga = ngx_http_vts_node_group(a), gb = ngx_http_vts_node_group(b);
    int rc = ngx_memn2cmp(ga.data, gb.data, ga.len, gb.len);
    if (rc != 0) {
        return rc < 0;
    }
    ngx_str_t na = ngx_http_vts_node_name(a), nb = ngx_http_vts_node_name(b);
    return ngx_memn2cmp(na.data, nb.data, na.len, nb.len) < 0;
}


ngx_int_t
take_snapshot(ngx_http_request_t *r, ngx_http_vts_main_conf_t *vmcf, snap_t &s)
{
    ngx_http_vts_shctx_t *sh = vmcf->sh;
    ngx_slab_pool_t *shpool = vmcf->shpool;

    ngx_shmtx_lock(&shpool->mutex);

    s.used_node = sh->nodes;
    s.dropped_full = sh->dropped_full;
    s.dropped_limit = sh->dropped_limit;
    s.start_msec = sh->start_msec;
    s.overflow = &sh->overflow;
    s.used_size = vmcf->shm_zone->shm.size - shpool->pfree * ngx_pagesize;
    s.nodes = (ngx_http_vts_node_t **) ngx_palloc(r->pool,
        sizeof(ngx_http_vts_node_t *) * (sh->nodes + 1));
    if (s.nodes == nullptr) {
        ngx_shmtx_unlock(&shpool->mutex);
        return NGX_ERROR;
    }
    for (ngx_queue_t *q = ngx_queue_head(&sh->queue);
         q != ngx_queue_sentinel(&sh->queue) && s.n < sh->nodes;
         q = ngx_queue_next(q))
    {
        s.nodes[s.n++] = ngx_queue_data(q, ngx_http_vts_node_t, queue);
    }

    ngx_shmtx_unlock(&shpool->mutex);

    std::sort(s.nodes, s.nodes + s.n, node_less);
    return NGX_OK;
}


/* [first, last) of the nodes of one type */
void
type_range(snap_t &s, uint8_t type, ngx_uint_t &first, ngx_uint_t &last)
{
    first = 0;
    while (first < s.n && s.nodes[first]->type < type) {
        first++;
    }
    last = first;
    while (last < s.n && s.nodes[last]->type == type) {
        last++;
    }
}


ngx_http_vts_node_t *
find_node(snap_t &s, uint8_t type, ngx_str_t group, ngx_str_t name)
{
    ngx_http_vts_node_t key_hdr;
    (void) key_hdr;

    ngx_uint_t lo = 0, hi = s.n;
    while (lo < hi) {
        ngx_uint_t mid = (lo + hi) / 2;
        ngx_http_vts_node_t *n = s.nodes[mid];
        int rc;
        if (n->type != type) {
            rc = n->type < type ? -1 : 1;
        } else {
            ngx_str_t g = ngx_http_vts_node_group(n);
            rc = ngx_memn2cmp(g.data, group.data, g.len, group.len);
            if (rc == 0) {
                ngx_str_t nm = ngx_http_vts_node_name(n);
                rc = ngx_memn2cmp(nm.data, name.data, nm.len, name.len);
            }
        }
        if (rc == 0) {
            return n;
        }
        if (rc < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return nullptr;
}


/* a consistent-enough copy of a node's counters */
void
read_stats(ngx_http_vts_stats_t *dst, ngx_http_vts_stats_t *src)
{
    uint64_t *s = (uint64_t *) src, *d = (uint64_t *) dst;
    for (size_t i = 0; i < sizeof(*dst) / sizeof(uint64_t); i++) {
        d[i] = ngx_http_vts_load(&s[i]);
    }
}


/* sum of all server zones (the sum key) */
void
sum_stats(snap_t &s, ngx_http_vts_stats_t *sum, ngx_http_vts_loc_conf_t *vlcf,
    uint64_t now, uint64_t *avg)
{
    ngx_uint_t first, last;
    ngx_http_vts_stats_t st = {};
    uint64_t total_ms = 0, samples = 0;
    bool buckets_ok = true;

    ngx_memzero(sum, sizeof(*sum));
    type_range(s, NGX_HTTP_VTS_SERVER, first, last);

    for (ngx_uint_t i = first; i <= last; i++) {
        if (i == last) {
            /* the requests no server entry could be created for */
            read_stats(&st, s.overflow);
            if (st.requests == 0) {
                break;
            }
        } else {
            read_stats(&st, &s.nodes[i]->stats);
        }
        sum->requests += st.requests;
        sum->in_bytes += st.in_bytes;
        sum->out_bytes += st.out_bytes;
        for (int k = 0; k < 5; k++) {
            sum->responses[k] += st.responses[k];
        }
        for (int k = 0; k < NGX_HTTP_VTS_CACHE_N; k++) {
            sum->cache[k] += st.cache[k];
        }
        sum->request_msec_total += st.request_msec_total;

        uint64_t n = st.req_pos < NGX_HTTP_VTS_AVG_SAMPLES
                     ? st.req_pos : NGX_HTTP_VTS_AVG_SAMPLES;
        for (uint64_t k = 0; k < n; k++) {
            ngx_http_vts_sample_t *smp = &st.req_samples[k];
            if (smp->time && (vlcf->average_period == 0
                              || smp->time + vlcf->average_period >= now))
            {
                total_ms += smp->msec;
                samples++;
            }
        }

        if (i == last) {
            continue;               /* the overflow has no buckets */
        }
        if (i == first) {
            sum->nbuckets = st.nbuckets;
            ngx_memcpy(sum->bucket_msec, st.bucket_msec, sizeof(st.bucket_msec));
        } else if (st.nbuckets != sum->nbuckets
                   || ngx_memcmp(st.bucket_msec, sum->bucket_msec,
                                 st.nbuckets * sizeof(uint64_t)) != 0)
        {
            buckets_ok = false;
        }
        if (buckets_ok) {
            for (uint32_t k = 0; k < st.nbuckets; k++) {
                sum->req_buckets[k] += st.req_buckets[k];
            }
            sum->req_overflow += st.req_overflow;
        }
    }

    if (!buckets_ok) {
        sum->nbuckets = 0;
    }
    *avg = samples ? total_ms / samples : 0;
}


/* ----------------------------------------------------------------------
 * JSON
 */

struct render_t {
    ngx_http_request_t        *r;
    ngx_http_vts_main_conf_t  *vmcf;
    ngx_http_vts_loc_conf_t   *vlcf;
    snap_t                     snap;
    uint64_t                   now;
};


void
json_samples(out_t &o, ngx_http_vts_sample_t *smp, uint64_t pos)
{
    uint64_t n = pos < NGX_HTTP_VTS_AVG_SAMPLES ? pos : NGX_HTTP_VTS_AVG_SAMPLES;
    uint64_t start = pos - n;

    o.put("{\"times\":[");
    for (uint64_t k = 0; k < n; k++) {
        if (k) {
            o.putc(',');
        }
        o.u64(smp[(start + k) % NGX_HTTP_VTS_AVG_SAMPLES].time);
    }
    o.put("],\"msecs\":[");
    for (uint64_t k = 0; k < n; k++) {
        if (k) {
            o.putc(',');
        }
        o.u64(smp[(start + k) % NGX_HTTP_VTS_AVG_SAMPLES].msec);
    }
    o.put("]}");
}


void
json_buckets(out_t &o, ngx_http_vts_stats_t *st, uint64_t *counters)
{
    o.put("{\"msecs\":[");
    for (uint32_t k = 0; k < st->nbuckets; k++) {
        if (k) {
            o.putc(',');
        }
        o.u64(st->bucket_msec[k]);
    }
    o.put("],\"counters\":[");
    for (uint32_t k = 0; k < st->nbuckets; k++) {
        if (k) {
            o.putc(',');
        }
        o.u64(counters[k]);
    }
    o.put("]}");
}


void
json_responses(out_t &o, ngx_http_vts_stats_t *st)
{
    static const char *cls[5] = { "1xx", "2xx", "3xx", "4xx", "5xx" };

    o.put("\"responses\":{");
    for (int k = 0; k < 5; k++) {
        o.putc('"');
        o.put(cls[k]);
        o.put("\":");
        o.u64(st->responses[k]);
        o.putc(',');
    }
    for (int k = 0; k < NGX_HTTP_VTS_CACHE_N; k++) {
        if (k) {
            o.putc(',');
        }
        o.putc('"');
        o.put(ngx_http_vts_cache_names[k]);
        o.put("\":");
        o.u64(st->cache[k]);
    }
    o.putc('}');
}


/* the members common to server, filter and upstream entries */
void
json_stats_body(out_t &o, render_t &rd, ngx_http_vts_stats_t *st,
    bool upstream, const uint64_t *avg_override)
{
    o.put("\"requestCounter\":");
    o.u64(st->requests);
    o.put(",\"inBytes\":");
    o.u64(st->in_bytes);
    o.put(",\"outBytes\":");
    o.u64(st->out_bytes);
    o.putc(',');
    json_responses(o, st);
    o.put(",\"requestMsecCounter\":");
    o.u64(st->request_msec_total);
    o.put(",\"requestMsec\":");
    o.u64(avg_override ? *avg_override
          : ngx_http_vts_average(st->req_samples, st->req_pos,
                                 rd.vlcf->average_method,
                                 rd.vlcf->average_period, rd.now));
    o.put(",\"requestMsecs\":");
    if (avg_override) {
        o.put("{\"times\":[],\"msecs\":[]}");
    } else {
        json_samples(o, st->req_samples, st->req_pos);
    }
    o.put(",\"requestBuckets\":");
    json_buckets(o, st, st->req_buckets);

    if (upstream) {
        o.put(",\"responseMsecCounter\":");
        o.u64(st->response_msec_total);
        o.put(",\"responseMsec\":");
        o.u64(ngx_http_vts_average(st->resp_samples, st->resp_pos,
                                   rd.vlcf->average_method,
                                   rd.vlcf->average_period, rd.now));
        o.put(",\"responseMsecs\":");
        json_samples(o, st->resp_samples, st->resp_pos);
        o.put(",\"responseBuckets\":");
        json_buckets(o, st, st->resp_buckets);
    }
}


bool
selected(ngx_http_vts_node_t *n, uint8_t type, ngx_str_t *group,
    ngx_str_t *name)
{
    if (n->type != type || n->deleted) {
        return false;
    }
    if (group) {
        ngx_str_t g = ngx_http_vts_node_group(n);
        if (g.len != group->len || ngx_memcmp(g.data, group->data, g.len)) {
            return false;
        }
    }
    if (name) {
        ngx_str_t nm = ngx_http_vts_node_name(n);
        if (nm.len != name->len || ngx_memcmp(nm.data, name->data, nm.len)) {
            return false;
        }
    }
    return true;
}


/* selection for the control endpoint: nullptr members mean "all" */
struct select_t {
    bool        server = true, filter = true, upstream = true, cache = true;
    bool        nogroups_only = false, groups_only = false;
    ngx_str_t  *group = nullptr;     /* filter group or upstream group */
    ngx_str_t  *name = nullptr;      /* zone / key / peer */
    bool        sum_only = false;
};


/* control's zone=NAME: one zone, key or peer */
void
select_name(select_t &sel, ngx_str_t &zone, ngx_str_t &zname)
{
    zname = zone;
    sel.name = &zname;
}


/* control's zone=GROUP[@NAME]: a filter or upstream group, or one entry of it */
void
select_group_and_name(select_t &sel, ngx_str_t &zone, ngx_str_t &zgroup,
    ngx_str_t &zname)
{
    u_char *at = (u_char *) ngx_strlchr(zone.data, zone.data + zone.len, '@');

    zgroup.data = zone.data;
    zgroup.len = at ? (size_t) (at - zone.data) : zone.len;
    sel.group = &zgroup;

    if (at) {
        zname.data = at + 1;
        zname.len = zone.data + zone.len - at - 1;
        sel.name = &zname;
    }
}


void
json_server_zones(out_t &o, render_t &rd, select_t &sel)
{
    ngx_uint_t first, last;
    ngx_http_vts_stats_t st;
    bool comma = false;

    type_range(rd.snap, NGX_HTTP_VTS_SERVER, first, last);
    o.put("\"serverZones\":{");

    if (!sel.sum_only) {
        for (ngx_uint_t i = first; i < last; i++) {
            ngx_http_vts_node_t *n = rd.snap.nodes[i];
            if (!selected(n, NGX_HTTP_VTS_SERVER, nullptr, sel.name)) {
                continue;
            }
            read_stats(&st, &n->stats);
            if (comma) {
                o.putc(',');
            }
            comma = true;
            json_str(o, ngx_http_vts_node_name(n));
            o.put(":{");
            json_stats_body(o, rd, &st, false, nullptr);
            o.putc('}');
        }
    }

    if (sel.name == nullptr || sel.sum_only) {
        uint64_t avg;
        sum_stats(rd.snap, &st, rd.vlcf, rd.now, &avg);
        if (comma) {
            o.putc(',');
        }
        json_str(o, rd.vlcf->sum_key);
        o.put(":{");
        json_stats_body(o, rd, &st, false, &avg);
        o.putc('}');
    }
    o.putc('}');
}


void
json_filter_zones(out_t &o, render_t &rd, select_t &sel)
{
    ngx_uint_t first, last;
    ngx_http_vts_stats_t st;
    ngx_str_t cur = ngx_null_string;
    bool open = false;

    type_range(rd.snap, NGX_HTTP_VTS_FILTER, first, last);
    o.put("\"filterZones\":{");

    for (ngx_uint_t i = first; i < last; i++) {
        ngx_http_vts_node_t *n = rd.snap.nodes[i];
        if (!selected(n, NGX_HTTP_VTS_FILTER, sel.group, sel.name)) {
            continue;
        }
        ngx_str_t g = ngx_http_vts_node_group(n);
        if (!open || g.len != cur.len || ngx_memcmp(g.data, cur.data, g.len)) {
            if (open) {
                o.put("},");
            }
            json_str(o, g);
            o.put(":{");
            cur = g;
            open = true;
        } else {
            o.putc(',');
        }
        read_stats(&st, &n->stats);
        json_str(o, ngx_http_vts_node_name(n));
        o.put(":{");
        json_stats_body(o, rd, &st, false, nullptr);
        o.putc('}');
    }
    if (open) {
        o.putc('}');
    }
    o.putc('}');
}


struct peer_info_t {
    ngx_str_t   name;
    ngx_uint_t  weight;
    ngx_uint_t  max_fails;
    time_t      fail_timeout;
    bool        backup;
    bool        down;
};


void
json_peer(out_t &o, render_t &rd, ngx_http_vts_node_t *n, peer_info_t &pi)
{
    ngx_http_vts_stats_t st;

    if (n) {
        read_stats(&st, &n->stats);
    } else {
        ngx_memzero(&st, sizeof(st));
    }
    o.put("{\"server\":");
    json_str(o, pi.name);
    o.putc(',');
    json_stats_body(o, rd, &st, true, nullptr);
    o.put(",\"weight\":");
    o.u64(pi.weight);
    o.put(",\"maxFails\":");
    o.u64(pi.max_fails);
    o.put(",\"failTimeout\":");
    o.u64((uint64_t) pi.fail_timeout);
    o.put(pi.backup ? ",\"backup\":true" : ",\"backup\":false");
    o.put(pi.down ? ",\"down\":true}" : ",\"down\":false}");
}


/*
 * Calls fn(group, peer_info, node) for every configured peer of every
 * upstream{} block (primary, then backup), then for every ::nogroups node.
 */
template <typename Fn>
void
for_each_peer(render_t &rd, Fn fn)
{
    ngx_http_upstream_main_conf_t *umcf = (ngx_http_upstream_main_conf_t *)
        ngx_http_get_module_main_conf(rd.r, ngx_http_upstream_module);

    if (umcf) {
        ngx_http_upstream_srv_conf_t **uscfp =
            (ngx_http_upstream_srv_conf_t **) umcf->upstreams.elts;

        for (ngx_uint_t i = 0; i < umcf->upstreams.nelts; i++) {
            ngx_http_upstream_srv_conf_t *uscf = uscfp[i];
            if (!(uscf->flags & NGX_HTTP_UPSTREAM_CREATE)
                || uscf->peer.data == nullptr)
            {
                continue;
            }
            ngx_http_upstream_rr_peers_t *peers =
                (ngx_http_upstream_rr_peers_t *) uscf->peer.data;

            ngx_http_upstream_rr_peers_rlock(peers);
            bool backup = false;
            for (ngx_http_upstream_rr_peers_t *ps = peers; ps;
                 ps = ps->next, backup = true)
            {
                for (ngx_http_upstream_rr_peer_t *p = ps->peer; p; p = p->next) {
                    peer_info_t pi;
                    pi.name = p->name;
                    pi.weight = (ngx_uint_t) p->weight;
                    pi.max_fails = p->max_fails;
                    pi.fail_timeout = p->fail_timeout;
                    pi.backup = backup;
                    pi.down = p->down != 0;
                    fn(uscf->host, pi, find_node(rd.snap, NGX_HTTP_VTS_UPSTREAM,
                                                 uscf->host, p->name));
                }
                if (backup) {
                    break;
                }
            }
            ngx_http_upstream_rr_peers_unlock(peers);
        }
    }

    ngx_str_t nog = ngx_string("::nogroups");
    ngx_uint_t first, last;
    type_range(rd.snap, NGX_HTTP_VTS_UPSTREAM, first, last);
    for (ngx_uint_t i = first; i < last; i++) {
        ngx_http_vts_node_t *n = rd.snap.nodes[i];
        if (!selected(n, NGX_HTTP_VTS_UPSTREAM, &nog, nullptr)) {
            continue;
        }
        peer_info_t pi;
        pi.name = ngx_http_vts_node_name(n);
        pi.weight = 0;
        pi.max_fails = 0;
        pi.fail_timeout = 0;
        pi.backup = false;
        pi.down = false;
        fn(nog, pi, n);
    }
}


bool
str_eq(ngx_str_t a, ngx_str_t *b)
{
    return b == nullptr
           || (a.len == b->len && ngx_memcmp(a.data, b->data, a.len) == 0);
}


void
json_upstream_zones(out_t &o, render_t &rd, select_t &sel)
{
    ngx_str_t cur = ngx_null_string;
    bool open = false;
    bool first_peer = true;

    o.put("\"upstreamZones\":{");
    for_each_peer(rd, [&](ngx_str_t group, peer_info_t &pi,
                          ngx_http_vts_node_t *n)
    {
        bool nog = group.len == 10 && ngx_memcmp(group.data, "::nogroups", 10) == 0;
        if ((sel.nogroups_only && !nog) || (sel.groups_only && nog)
            || !str_eq(group, sel.group) || !str_eq(pi.name, sel.name))
        {
            return;
        }
        if (!open || group.len != cur.len
            || ngx_memcmp(group.data, cur.data, group.len))
        {
            if (open) {
                o.put("],");
            }
            json_str(o, group);
            o.put(":[");
            cur = group;
            open = true;
            first_peer = true;
        }
        if (!first_peer) {
            o.putc(',');
        }
        first_peer = false;
        json_peer(o, rd, n, pi);
    });
    if (open) {
        o.putc(']');
    }
    o.putc('}');
}


#if (NGX_HTTP_CACHE)

/* every file cache zone: calls fn(name, cache) */
template <typename Fn>
void
for_each_cache(Fn fn)
{
    ngx_list_part_t *part = &((ngx_cycle_t *) ngx_cycle)->shared_memory.part;
    ngx_shm_zone_t *zone = (ngx_shm_zone_t *) part->elts;

    for (ngx_uint_t i = 0; ; i++) {
        if (i >= part->nelts) {
            if (part->next == nullptr) {
                break;
            }
            part = part->next;
            zone = (ngx_shm_zone_t *) part->elts;
            i = 0;
        }
        if (zone[i].init != nullptr && zone[i].data != nullptr
            && (zone[i].tag == &ngx_http_proxy_module
                || zone[i].tag == &ngx_http_fastcgi_module
                || zone[i].tag == &ngx_http_uwsgi_module
                || zone[i].tag == &ngx_http_scgi_module))
        {
            ngx_http_file_cache_t *cache = (ngx_http_file_cache_t *) zone[i].data;
            if (cache->shm_zone == &zone[i]) {
                fn(zone[i].shm.name, cache);
            }
        }
    }
}

#endif


void
cache_sizes(ngx_http_file_cache_t *cache, uint64_t *max, uint64_t *used)
{
#if (NGX_HTTP_CACHE)
    *max = (uint64_t) cache->max_size * cache->bsize;
    *used = 0;
    if (cache->sh) {
        ngx_shmtx_lock(&cache->shpool->mutex);
        *used = (uint64_t) cache->sh->size * cache->bsize;
        ngx_shmtx_unlock(&cache->shpool->mutex);
    }
#else
    *max = 0;
    *used = 0;
#endif
}


void
json_cache_zones(out_t &o, render_t &rd, select_t &sel)
{
    o.put("\"cacheZones\":{");
#if (NGX_HTTP_CACHE)
    bool comma = false;
    ngx_str_t empty = ngx_null_string;
    for_each_cache([&](ngx_str_t name, ngx_http_file_cache_t *cache) {
        if (!str_eq(name, sel.name)) {
            return;
        }
        ngx_http_vts_node_t *n = find_node(rd.snap, NGX_HTTP_VTS_CACHE, empty, name);
        ngx_http_vts_stats_t st;
        if (n) {
            read_stats(&st, &n->stats);
        } else {
            ngx_memzero(&st, sizeof(st));
        }
        uint64_t max, used;
        cache_sizes(cache, &max, &used);
        if (comma) {
            o.putc(',');
        }
        comma = true;
        json_str(o, name);
        o.put(":{\"maxSize\":");
        o.u64(max);
        o.put(",\"usedSize\":");
        o.u64(used);
        o.put(",\"inBytes\":");
        o.u64(st.in_bytes);
        o.put(",\"outBytes\":");
        o.u64(st.out_bytes);
        o.putc(',');
        json_responses(o, &st);
        o.putc('}');
    });
#endif
    o.putc('}');
}


uint64_t
stat_load(ngx_atomic_t *p)
{
    return p ? (uint64_t) *p : 0;
}


void
render_json(out_t &o, render_t &rd)
{
    select_t all;

    o.put("{\"hostName\":");
    json_str(o, ((ngx_cycle_t *) ngx_cycle)->hostname);
    o.put(",\"moduleVersion\":\"" NGX_HTTP_VTS_MODULE_VERSION "\"");
    o.put(",\"nginxVersion\":\"" NGINX_VERSION "\"");
    o.put(",\"loadMsec\":");
    o.u64(rd.snap.start_msec);
    o.put(",\"nowMsec\":");
    o.u64(rd.now);
    o.put(",\"connections\":{\"active\":");
#if (NGX_STAT_STUB)
    o.u64(stat_load(ngx_stat_active));
    o.put(",\"reading\":");
    o.u64(stat_load(ngx_stat_reading));
    o.put(",\"writing\":");
    o.u64(stat_load(ngx_stat_writing));
    o.put(",\"waiting\":");
    o.u64(stat_load(ngx_stat_waiting));
    o.put(",\"accepted\":");
    o.u64(stat_load(ngx_stat_accepted));
    o.put(",\"handled\":");
    o.u64(stat_load(ngx_stat_handled));
    o.put(",\"requests\":");
    o.u64(stat_load(ngx_stat_requests));
#else
    o.put("0,\"reading\":0,\"writing\":0,\"waiting\":0,\"accepted\":0,"
          "\"handled\":0,\"requests\":0");
#endif
    o.put("},\"sharedZones\":{\"name\":");
    json_str(o, rd.vmcf->shm_zone->shm.name);
    o.put(",\"maxSize\":");
    o.u64(rd.vmcf->shm_zone->shm.size);
    o.put(",\"usedSize\":");
    o.u64(rd.snap.used_size);
    o.put(",\"usedNode\":");
    o.u64(rd.snap.used_node);
    o.put(",\"droppedNodes\":{\"zoneFull\":");
    o.u64(rd.snap.dropped_full);
    o.put(",\"maxNode\":");
    o.u64(rd.snap.dropped_limit);
    o.put("}},");
    json_server_zones(o, rd, all);
    o.putc(',');
    json_filter_zones(o, rd, all);
    o.putc(',');
    json_upstream_zones(o, rd, all);
    o.putc(',');
    json_cache_zones(o, rd, all);
    o.putc('}');
}


/* ----------------------------------------------------------------------
 * Prometheus
 */

void
prom_family(out_t &o, const char *name, const char *type, const char *help)
{
    o.put("# HELP ");
    o.put(name);
    o.putc(' ');
    o.put(help);
    o.put("\n# TYPE ");
    o.put(name);
    o.putc(' ');
    o.put(type);
    o.putc('\n');
}


/* labels of one entry, e.g. host="x" or upstream="u",backend="b" */
struct labels_t {
    const char *k1;
    ngx_str_t   v1;
    const char *k2;      /* may be null */
    ngx_str_t   v2;
};


void
prom_series_start(out_t &o, const char *name, const char *suffix,
    labels_t &l)
{
    o.put(name);
    if (suffix) {
        o.put(suffix);
    }
    o.putc('{');
    o.put(l.k1);
    o.put("=\"");
    prom_label(o, l.v1);
    o.putc('"');
    if (l.k2) {
        o.putc(',');
        o.put(l.k2);
        o.put("=\"");
        prom_label(o, l.v2);
        o.putc('"');
    }
}


void
prom_value(out_t &o, const char *name, labels_t &l, const char *extra_k,
    const char *extra_v, uint64_t v, bool secs)
{
    prom_series_start(o, name, nullptr, l);
    if (extra_k) {
        o.putc(',');
        o.put(extra_k);
        o.put("=\"");
        o.put(extra_v);
        o.putc('"');
    }
    o.put("} ");
    if (secs) {
        o.secs(v);
    } else {
        o.u64(v);
    }
    o.putc('\n');
}


void
prom_histogram(out_t &o, const char *name, labels_t &l,
    ngx_http_vts_stats_t *st, uint64_t *counters, uint64_t overflow,
    uint64_t sum_ms)
{
    uint64_t cum = 0;
    for (uint32_t k = 0; k < st->nbuckets; k++) {
        cum += counters[k];
        prom_series_start(o, name, "_bucket", l);
        o.put(",le=\"");
        o.secs(st->bucket_msec[k]);
        o.put("\"} ");
        o.u64(cum);
        o.putc('\n');
    }
    cum += overflow;
    prom_series_start(o, name, "_bucket", l);
    o.put(",le=\"+Inf\"} ");
    o.u64(cum);
    o.putc('\n');
    prom_series_start(o, name, "_sum", l);
    o.put("} ");
    o.secs(sum_ms);
    o.putc('\n');
    prom_series_start(o, name, "_count", l);
    o.put("} ");
    o.u64(cum);
    o.putc('\n');
}


/* one entry of server / filter / upstream kind, collected before printing */
struct prom_entry_t {
    labels_t              l;
    ngx_http_vts_stats_t *st;
    uint64_t              req_avg;
    uint64_t              resp_avg;
    bool                  down;
};


void
prom_entries(out_t &o, const char *prefix, prom_entry_t *e, ngx_uint_t n,
    bool upstream)
{
    static const char *cls[5] = { "1xx", "2xx", "3xx", "4xx", "5xx" };
    char name[128];
    const char *code_label = ngx_strcmp(prefix, "nginx_vts_filter") == 0
                             ? "direction" : "code";

    if (n == 0) {
        return;
    }

#define FAMILY(suffix, type, help)                                           \
    ngx_sprintf((u_char *) name, "%s%s%Z", prefix, suffix);                 \
    prom_family(o, name, type, help)

    FAMILY("_bytes_total", "counter", "The request/response bytes");
    for (ngx_uint_t i = 0; i < n; i++) {
        prom_value(o, name, e[i].l, "direction", "in", e[i].st->in_bytes, false);
        prom_value(o, name, e[i].l, "direction", "out", e[i].st->out_bytes, false);
    }

    FAMILY("_requests_total", "counter", "The requests counter");
    for (ngx_uint_t i = 0; i < n; i++) {
        for (int k = 0; k < 5; k++) {
            prom_value(o, name, e[i].l, code_label, cls[k],
                       e[i].st->responses[k], false);
        }
        prom_value(o, name, e[i].l, code_label, "total", e[i].st->requests, false);
    }

    FAMILY("_request_seconds_total", "counter",
           "The request processing time in seconds");
    for (ngx_uint_t i = 0; i < n; i++) {
        prom_value(o, name, e[i].l, nullptr, nullptr,
                   e[i].st->request_msec_total, true);
    }

    FAMILY("_request_seconds", "gauge",
           "The average of request processing times in seconds");
    for (ngx_uint_t i = 0; i < n; i++) {
        prom_value(o, name, e[i].l, nullptr, nullptr, e[i].req_avg, true);
    }

    if (upstream) {
        FAMILY("_response_seconds_total", "counter",
               "The only upstream response processing time in seconds");
        for (ngx_uint_t i = 0; i < n; i++) {
            prom_value(o, name, e[i].l, nullptr, nullptr,
                       e[i].st->response_msec_total, true);
        }
        FAMILY("_response_seconds", "gauge",
               "The average of only upstream response processing times in "
               "seconds");
        for (ngx_uint_t i = 0; i < n; i++) {
            prom_value(o, name, e[i].l, nullptr, nullptr, e[i].resp_avg, true);
        }
    }

    bool any_buckets = false;
    for (ngx_uint_t i = 0; i < n; i++) {
        any_buckets = any_buckets || e[i].st->nbuckets;
    }
    if (any_buckets) {
        FAMILY("_request_duration_seconds", "histogram",
               "The histogram of request processing time");
        for (ngx_uint_t i = 0; i < n; i++) {
            if (e[i].st->nbuckets) {
                prom_histogram(o, name, e[i].l, e[i].st, e[i].st->req_buckets,
                               e[i].st->req_overflow,
                               e[i].st->request_msec_total);
            }
        }
        if (upstream) {
            FAMILY("_response_duration_seconds", "histogram",
                   "The histogram of the upstream response processing time");
            for (ngx_uint_t i = 0; i < n; i++) {
                if (e[i].st->nbuckets) {
                    prom_histogram(o, name, e[i].l, e[i].st,
                                   e[i].st->resp_buckets,
                                   e[i].st->resp_overflow,
                                   e[i].st->response_msec_total);
                }
            }
        }
    }

    if (!upstream) {
        FAMILY("_cache_total", "counter", "The requests cache counter");
        for (ngx_uint_t i = 0; i < n; i++) {
            for (int k = 0; k < NGX_HTTP_VTS_CACHE_N; k++) {
                prom_value(o, name, e[i].l, "status", ngx_http_vts_cache_names[k],
                           e[i].st->cache[k], false);
            }
        }
    } else {
        o.put("# HELP nginx_vts_upstream_peer_down 1 when the peer is marked "
              "down (nginx-portable addition, not in VTS)\n"
              "# TYPE nginx_vts_upstream_peer_down gauge\n");
        for (ngx_uint_t i = 0; i < n; i++) {
            prom_value(o, "nginx_vts_upstream_peer_down", e[i].l, nullptr,
                       nullptr, e[i].down ? 1 : 0, false);
        }
    }
#undef FAMILY
}


ngx_int_t
render_prometheus(out_t &o, render_t &rd)
{
    ngx_http_request_t *r = rd.r;

    prom_family(o, "nginx_vts_info", "gauge", "Nginx info");
    o.put("nginx_vts_info{hostname=\"");
    prom_label(o, ((ngx_cycle_t *) ngx_cycle)->hostname);
    o.put("\",module_version=\"" NGX_HTTP_VTS_MODULE_VERSION
          "\",version=\"" NGINX_VERSION "\"} 1\n");

    prom_family(o, "nginx_vts_start_time_seconds", "gauge", "Nginx start time");
    o.put("nginx_vts_start_time_seconds ");
    o.secs(rd.snap.start_msec);
    o.putc('\n');

    prom_family(o, "nginx_vts_main_connections", "gauge", "Nginx connections");
#if (NGX_STAT_STUB)
    static const char *cn[7] = { "accepted", "active", "handled", "reading",
                                 "requests", "waiting", "writing" };
    ngx_atomic_t *cv[7] = { ngx_stat_accepted, ngx_stat_active,
                            ngx_stat_handled, ngx_stat_reading,
                            ngx_stat_requests, ngx_stat_waiting,
                            ngx_stat_writing };
    for (int k = 0; k < 7; k++) {
        o.put("nginx_vts_main_connections{status=\"");
        o.put(cn[k]);
        o.put("\"} ");
        o.u64(stat_load(cv[k]));
        o.putc('\n');
    }
#endif

    prom_family(o, "nginx_vts_main_shm_usage_bytes", "gauge",
                "Shared memory [" "vhost_traffic_status" "] info");
    o.put("nginx_vts_main_shm_usage_bytes{shared=\"max_size\"} ");
    o.u64(rd.vmcf->shm_zone->shm.size);
    o.put("\nnginx_vts_main_shm_usage_bytes{shared=\"used_size\"} ");
    o.u64(rd.snap.used_size);
    o.put("\nnginx_vts_main_shm_usage_bytes{shared=\"used_node\"} ");
    o.u64(rd.snap.used_node);
    o.putc('\n');

    prom_family(o, "nginx_vts_main_shm_dropped_nodes_total", "counter",
                "New entries not stored because the zone was full or a "
                "filter_max_node cap was reached (nginx-portable addition)");
    o.put("nginx_vts_main_shm_dropped_nodes_total{reason=\"zone_full\"} ");
    o.u64(rd.snap.dropped_full);
    o.put("\nnginx_vts_main_shm_dropped_nodes_total{reason=\"max_node\"} ");
    o.u64(rd.snap.dropped_limit);
    o.putc('\n');

    /* entries: each with a private copy of its counters */
    ngx_uint_t n = rd.snap.n + 1;
    ngx_http_upstream_main_conf_t *umcf = (ngx_http_upstream_main_conf_t *)
        ngx_http_get_module_main_conf(r, ngx_http_upstream_module);
    if (umcf) {
        ngx_http_upstream_srv_conf_t **u =
            (ngx_http_upstream_srv_conf_t **) umcf->upstreams.elts;
        for (ngx_uint_t i = 0; i < umcf->upstreams.nelts; i++) {
            if (u[i]->servers) {
                ngx_http_upstream_server_t *s =
                    (ngx_http_upstream_server_t *) u[i]->servers->elts;
                for (ngx_uint_t j = 0; j < u[i]->servers->nelts; j++) {
                    n += s[j].naddrs;
                }
            }
        }
    }

    prom_entry_t *e = (prom_entry_t *) ngx_palloc(r->pool, sizeof(prom_entry_t) * n);
    ngx_http_vts_stats_t *st = (ngx_http_vts_stats_t *)
        ngx_palloc(r->pool, sizeof(ngx_http_vts_stats_t) * n);
    if (e == nullptr || st == nullptr) {
        return NGX_ERROR;
    }

    /* servers */
    ngx_uint_t first, last, m = 0;
    type_range(rd.snap, NGX_HTTP_VTS_SERVER, first, last);
    for (ngx_uint_t i = first; i < last; i++) {
        ngx_http_vts_node_t *node = rd.snap.nodes[i];
        read_stats(&st[m], &node->stats);
        e[m].l = { "host", ngx_http_vts_node_name(node), nullptr, ngx_null_string };
        e[m].st = &st[m];
        e[m].req_avg = ngx_http_vts_average(st[m].req_samples, st[m].req_pos,
                                            rd.vlcf->average_method,
                                            rd.vlcf->average_period, rd.now);
        m++;
    }
    sum_stats(rd.snap, &st[m], rd.vlcf, rd.now, &e[m].req_avg);
    e[m].l = { "host", rd.vlcf->sum_key, nullptr, ngx_null_string };
    e[m].st = &st[m];
    m++;
    prom_entries(o, "nginx_vts_server", e, m, false);

    /* filters */
    m = 0;
    type_range(rd.snap, NGX_HTTP_VTS_FILTER, first, last);
    for (ngx_uint_t i = first; i < last; i++) {
        ngx_http_vts_node_t *node = rd.snap.nodes[i];
        read_stats(&st[m], &node->stats);
        e[m].l = { "filter", ngx_http_vts_node_group(node),
                   "filter_name", ngx_http_vts_node_name(node) };
        e[m].st = &st[m];
        e[m].req_avg = ngx_http_vts_average(st[m].req_samples, st[m].req_pos,
                                            rd.vlcf->average_method,
                                            rd.vlcf->average_period, rd.now);
        m++;
    }
    prom_entries(o, "nginx_vts_filter", e, m, false);

    /* upstream peers */
    m = 0;
    for_each_peer(rd, [&](ngx_str_t group, peer_info_t &pi,
                          ngx_http_vts_node_t *node)
    {
        if (m >= n) {
            return;
        }
        if (node) {
            read_stats(&st[m], &node->stats);
        } else {
            ngx_memzero(&st[m], sizeof(st[m]));
        }
        e[m].l = { "upstream", group, "backend", pi.name };
        e[m].st = &st[m];
        e[m].down = pi.down;
        e[m].req_avg = ngx_http_vts_average(st[m].req_samples, st[m].req_pos,
                                            rd.vlcf->average_method,
                                            rd.vlcf->average_period, rd.now);
        e[m].resp_avg = ngx_http_vts_average(st[m].resp_samples, st[m].resp_pos,
                                             rd.vlcf->average_method,
                                             rd.vlcf->average_period, rd.now);
        m++;
    });
    prom_entries(o, "nginx_vts_upstream", e, m, true);

#if (NGX_HTTP_CACHE)
    struct cache_row_t {
        ngx_str_t name;
        uint64_t max, used;
        ngx_http_vts_stats_t *st;
    };
    ngx_uint_t nc = 0;
    for_each_cache([&](ngx_str_t, ngx_http_file_cache_t *) { nc++; });
    if (nc) {
        cache_row_t *rows = (cache_row_t *) ngx_palloc(r->pool, sizeof(cache_row_t) * nc);
        ngx_http_vts_stats_t *cst = (ngx_http_vts_stats_t *)
            ngx_pcalloc(r->pool, sizeof(ngx_http_vts_stats_t) * nc);
        if (rows == nullptr || cst == nullptr) {
            return NGX_ERROR;
        }
        ngx_uint_t k = 0;
        ngx_str_t empty = ngx_null_string;
        for_each_cache([&](ngx_str_t name, ngx_http_file_cache_t *cache) {
            if (k >= nc) {
                return;
            }
            rows[k].name = name;
            rows[k].st = &cst[k];
            cache_sizes(cache, &rows[k].max, &rows[k].used);
            ngx_http_vts_node_t *node = find_node(rd.snap, NGX_HTTP_VTS_CACHE,
                                                  empty, name);
            if (node) {
                read_stats(&cst[k], &node->stats);
            }
            k++;
        });

        prom_family(o, "nginx_vts_cache_usage_bytes", "gauge",
                    "The cache zone capacity in bytes");
        for (ngx_uint_t i = 0; i < k; i++) {
            labels_t l = { "cache_zone", rows[i].name, nullptr, ngx_null_string };
            prom_value(o, "nginx_vts_cache_usage_bytes", l, "cache_size", "max",
                       rows[i].max, false);
            prom_value(o, "nginx_vts_cache_usage_bytes", l, "cache_size", "used",
                       rows[i].used, false);
        }
        prom_family(o, "nginx_vts_cache_bytes_total", "counter",
                    "The cache zone request/response bytes");
        for (ngx_uint_t i = 0; i < k; i++) {
            labels_t l = { "cache_zone", rows[i].name, nullptr, ngx_null_string };
            prom_value(o, "nginx_vts_cache_bytes_total", l, "direction", "in",
                       rows[i].st->in_bytes, false);
            prom_value(o, "nginx_vts_cache_bytes_total", l, "direction", "out",
                       rows[i].st->out_bytes, false);
        }
        prom_family(o, "nginx_vts_cache_requests_total", "counter",
                    "The cache requests counter");
        for (ngx_uint_t i = 0; i < k; i++) {
            labels_t l = { "cache_zone", rows[i].name, nullptr, ngx_null_string };
            for (int c = 0; c < NGX_HTTP_VTS_CACHE_N; c++) {
                prom_value(o, "nginx_vts_cache_requests_total", l, "status",
                           ngx_http_vts_cache_names[c], rows[i].st->cache[c],
                           false);
            }
        }
    }
#endif

    return NGX_OK;
}


/* ----------------------------------------------------------------------
 * control
 */

bool
uri_ends_with(ngx_http_request_t *r, const char *suffix, size_t len)
{
    ngx_str_t *u = &r->uri;
    size_t n = u->len;
    while (n > 1 && u->data[n - 1] == '/') {
        n--;
    }
    return n >= len && ngx_strncmp(u->data + n - len, suffix, len) == 0;
}


ngx_int_t
send_body(ngx_http_request_t *r, ngx_uint_t status, const char *type,
    out_t &o)
{
    if (o.failed) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    if (o.head == nullptr) {
        o.reserve(1);
        if (o.failed) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    r->headers_out.status = status;
    r->headers_out.content_type.len = ngx_strlen(type);
    r->headers_out.content_type.data = (u_char *) type;
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_length_n = (off_t) o.total;

    ngx_buf_t *lb = o.b;
    lb->last_buf = (r == r->main) ? 1 : 0;
    lb->last_in_chain = 1;

    ngx_int_t rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }
    if (o.total == 0) {
        /* a zero-length chain: only the flags matter */
        lb->pos = lb->last;
    }
    return ngx_http_output_filter(r, o.head);
}


ngx_int_t
control_error(ngx_http_request_t *r, const char *msg)
{
    out_t o(r->pool);
    o.put("{\"processingReturn\":false,\"error\":");
    json_str(o, (const u_char *) msg, ngx_strlen(msg));
    o.put("}\n");
    return send_body(r, NGX_HTTP_BAD_REQUEST, "application/json", o);
}


ngx_int_t
control_handler(ngx_http_request_t *r, render_t &rd)
{
    ngx_str_t cmd, group, zone;

    if (ngx_http_arg(r, (u_char *) "cmd", 3, &cmd) != NGX_OK) {
        return control_error(r, "missing cmd (status, reset or delete)");
    }
    if (ngx_http_arg(r, (u_char *) "group", 5, &group) != NGX_OK) {
        return control_error(r, "missing group (server, filter, "
                             "upstream@alone, upstream@group, cache or *)");
    }
    bool has_zone = ngx_http_arg(r, (u_char *) "zone", 4, &zone) == NGX_OK;

    /* the arguments are still URL-encoded */
    if (has_zone) {
        u_char *dst = (u_char *) ngx_pnalloc(r->pool, zone.len + 1);
        if (dst == nullptr) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        u_char *src = zone.data, *d = dst;
        ngx_unescape_uri(&d, &src, zone.len, 0);
        zone.data = dst;
        zone.len = d - dst;
    }

    enum { C_STATUS, C_RESET, C_DELETE } c;
    if (cmd.len == 6 && ngx_strncmp(cmd.data, "status", 6) == 0) {
        c = C_STATUS;
    } else if (cmd.len == 5 && ngx_strncmp(cmd.data, "reset", 5) == 0) {
        c = C_RESET;
    } else if (cmd.len == 6 && ngx_strncmp(cmd.data, "delete", 6) == 0) {
        c = C_DELETE;
    } else {
        return control_error(r, "unknown cmd (expected status, reset or delete)");
    }

    select_t sel;
    ngx_str_t zgroup = ngx_null_string, zname = ngx_null_string;
    bool all_zones = !has_zone || (zone.len == 1 && zone.data[0] == '*');
    uint8_t type = 0;

    sel.server = sel.filter = sel.upstream = sel.cache = false;
    if (group.len == 6 && ngx_strncmp(group.data, "server", 6) == 0) {
        sel.server = true;
        type = NGX_HTTP_VTS_SERVER;
        if (!all_zones) {
            select_name(sel, zone, zname);
        }
    } else if (group.len == 6 && ngx_strncmp(group.data, "filter", 6) == 0) {
        sel.filter = true;
        type = NGX_HTTP_VTS_FILTER;
        if (!all_zones) {
            select_group_and_name(sel, zone, zgroup, zname);
        }
    } else if (group.len == 14 && ngx_strncmp(group.data, "upstream@alone", 14) == 0) {
        sel.upstream = true;
        sel.nogroups_only = true;
        type = NGX_HTTP_VTS_UPSTREAM;
        if (!all_zones) {
            select_name(sel, zone, zname);
        }
    } else if (group.len == 14 && ngx_strncmp(group.data, "upstream@group", 14) == 0) {
        sel.upstream = true;
        sel.groups_only = true;
        type = NGX_HTTP_VTS_UPSTREAM;
        if (!all_zones) {
            select_group_and_name(sel, zone, zgroup, zname);
        }
    } else if (group.len == 5 && ngx_strncmp(group.data, "cache", 5) == 0) {
        sel.cache = true;
        type = NGX_HTTP_VTS_CACHE;
        if (!all_zones) {
            select_name(sel, zone, zname);
        }
    } else if (group.len == 1 && group.data[0] == '*') {
        sel.server = sel.filter = sel.upstream = sel.cache = true;
    } else {
        return control_error(r, "unknown group (expected server, filter, "
                             "upstream@alone, upstream@group, cache or *)");
    }

    out_t o(r->pool);

    if (c == C_STATUS) {
        bool comma = false;
        o.putc('{');
        if (sel.server) {
            json_server_zones(o, rd, sel);
            comma = true;
        }
        if (sel.filter) {
            if (comma) { o.putc(','); }
            json_filter_zones(o, rd, sel);
            comma = true;
        }
        if (sel.upstream) {
            if (comma) { o.putc(','); }
            json_upstream_zones(o, rd, sel);
            comma = true;
        }
        if (sel.cache) {
            if (comma) { o.putc(','); }
            json_cache_zones(o, rd, sel);
        }
        o.put("}\n");
        return send_body(r, NGX_HTTP_OK, "application/json", o);
    }

    /* reset / delete: walk the live nodes under the mutex */
    ngx_http_vts_main_conf_t *vmcf = rd.vmcf;
    ngx_uint_t counts = 0;
    ngx_str_t nog = ngx_string("::nogroups");

    ngx_shmtx_lock(&vmcf->shpool->mutex);
    ngx_queue_t *q = ngx_queue_head(&vmcf->sh->queue);
    while (q != ngx_queue_sentinel(&vmcf->sh->queue)) {
        ngx_http_vts_node_t *n = ngx_queue_data(q, ngx_http_vts_node_t, queue);
        q = ngx_queue_next(q);

        bool match;
        if (type == 0) {
            match = true;
        } else if (!selected(n, type, sel.group, sel.name)) {
            match = false;
        } else if (type == NGX_HTTP_VTS_UPSTREAM) {
            ngx_str_t g = ngx_http_vts_node_group(n);
            bool is_nog = str_eq(g, &nog);
            match = sel.nogroups_only ? is_nog : !is_nog;
        } else {
            match = true;
        }
        if (!match) {
            continue;
        }
        counts++;
        if (c == C_RESET) {
            ngx_http_vts_stats_reset(&n->stats);
        } else {
            ngx_http_vts_unlink_locked(vmcf, n);
        }
    }
    ngx_shmtx_unlock(&vmcf->shpool->mutex);

    o.put("{\"processingReturn\":");
    o.put(counts ? "true" : "false");
    o.put(",\"processingCommandString\":");
    json_str(o, cmd);
    o.put(",\"processingGroupString\":");
    json_str(o, group);
    o.put(",\"processingZoneString\":");
    if (has_zone) {
        json_str(o, zone);
    } else {
        o.put("\"*\"");
    }
    o.put(",\"processingCounts\":");
    o.u64(counts);
    o.put("}\n");
    return send_body(r, NGX_HTTP_OK, "application/json", o);
}

} // namespace


/* ----------------------------------------------------------------------
 * the handler
 */

ngx_int_t
ngx_http_vts_display_handler(ngx_http_request_t *r)
{
    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    ngx_int_t rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    render_t rd;
    rd.r = r;
    rd.vmcf = (ngx_http_vts_main_conf_t *)
        ngx_http_get_module_main_conf(r, ngx_http_vts_module);
    rd.vlcf = (ngx_http_vts_loc_conf_t *)
        ngx_http_get_module_loc_conf(r, ngx_http_vts_module);
    rd.now = ngx_http_vts_now_msec();

    if (!rd.vmcf->enable || rd.vmcf->sh == nullptr) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "vhost_traffic_status_display: "
                      "\"vhost_traffic_status_zone\" is not set");
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    ngx_uint_t format = rd.vlcf->format;
    bool control = false;
    if (uri_ends_with(r, "/format/json", 12)) {
        format = NGX_HTTP_VTS_FORMAT_JSON;
    } else if (uri_ends_with(r, "/format/jsonp", 13)) {
        format = NGX_HTTP_VTS_FORMAT_JSONP;
    } else if (uri_ends_with(r, "/format/html", 12)) {
        format = NGX_HTTP_VTS_FORMAT_HTML;
    } else if (uri_ends_with(r, "/format/prometheus", 18)) {
        format = NGX_HTTP_VTS_FORMAT_PROMETHEUS;
    } else if (uri_ends_with(r, "/control", 8)) {
        control = true;
    }

    out_t o(r->pool);

    if (format == NGX_HTTP_VTS_FORMAT_HTML && !control) {
        o.put(ngx_http_vts_html, sizeof(ngx_http_vts_html) - 1);
        return send_body(r, NGX_HTTP_OK, "text/html; charset=utf-8", o);
    }

    if (take_snapshot(r, rd.vmcf, rd.snap) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (control) {
        return control_handler(r, rd);
    }

    switch (format) {

    case NGX_HTTP_VTS_FORMAT_PROMETHEUS:
        if (render_prometheus(o, rd) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        return send_body(r, NGX_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", o);

    case NGX_HTTP_VTS_FORMAT_JSONP: {
        ngx_str_t cb = rd.vlcf->jsonp;
        ngx_str_t arg;
        /* ?callback=NAME overrides, restricted to identifier characters */
        if (ngx_http_arg(r, (u_char *) "callback", 8, &arg) == NGX_OK
            && arg.len && arg.len <= 128)
        {
            bool ok = true;
            for (size_t i = 0; i < arg.len; i++) {
                u_char ch = arg.data[i];
                if (!(ch == '_' || ch == '.' || ch == '$' || (ch >= '0' && ch <= '9')
                      || ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'z')))
                {
                    ok = false;
                }
            }
            if (ok) {
                cb = arg;
            }
        }
        o.put(cb);
        o.putc('(');
        render_json(o, rd);
        o.put(")\n");
        return send_body(r, NGX_HTTP_OK, "application/javascript", o);
    }

    default:
        render_json(o, rd);
        o.putc('\n');
        return send_body(r, NGX_HTTP_OK, "application/json", o);
    }
}


/* ----------------------------------------------------------------------
 * vhost_traffic_status_set_by_filter
 */

ngx_int_t
ngx_http_vts_set_variable(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    uintptr_t data)
{
    ngx_http_vts_main_conf_t *vmcf = (ngx_http_vts_main_conf_t *)
        ngx_http_get_module_main_conf(r, ngx_http_vts_module);
    ngx_http_vts_loc_conf_t *vlcf = (ngx_http_vts_loc_conf_t *)
        ngx_http_get_module_loc_conf(r, ngx_http_vts_module);

    v->not_found = 1;
    if (!vmcf->enable || vmcf->sh == nullptr || vlcf->sets == nullptr) {
        return NGX_OK;
    }

    ngx_http_vts_set_t *s = (ngx_http_vts_set_t *) vlcf->sets->elts, *set = nullptr;
    for (ngx_uint_t i = vlcf->sets->nelts; i > 0; i--) {
        if ((uintptr_t) s[i - 1].index == data) {
            set = &s[i - 1];
            break;
        }
    }
    if (set == nullptr) {
        return NGX_OK;
    }

    ngx_str_t zone;
    if (ngx_http_complex_value(r, &set->zone, &zone) != NGX_OK) {
        return NGX_ERROR;
    }

    uint8_t type = set->type & 0x7f;
    ngx_str_t group = ngx_null_string, name = zone;
    ngx_str_t nog = ngx_string("::nogroups");
    if (set->type == NGX_HTTP_VTS_UPSTREAM) {
        group = nog;
    } else if (type == NGX_HTTP_VTS_FILTER || set->type == (NGX_HTTP_VTS_UPSTREAM + 0x80)) {
        u_char *at = (u_char *) ngx_strlchr(zone.data, zone.data + zone.len, '@');
        if (at == nullptr) {
            return NGX_OK;
        }
        group.data = zone.data;
        group.len = at - zone.data;
        name.data = at + 1;
        name.len = zone.data + zone.len - at - 1;
    }

    uint32_t hash = ngx_http_vts_hash(type, &group, &name);
    ngx_http_vts_stats_t st;
    bool found = false;

    ngx_shmtx_lock(&vmcf->shpool->mutex);
    ngx_http_vts_node_t *n = ngx_http_vts_lookup_locked(vmcf->sh, type, &group,
                                                        &name, hash);
    if (n) {
        uint64_t *src = (uint64_t *) &n->stats, *dst = (uint64_t *) &st;
        for (size_t i = 0; i < sizeof(st) / sizeof(uint64_t); i++) {
            dst[i] = ngx_http_vts_load(&src[i]);
        }
        found = true;
    }
    ngx_shmtx_unlock(&vmcf->shpool->mutex);

    uint64_t val = 0;
    if (found) {
        uint64_t now = ngx_http_vts_now_msec();
        switch (set->field) {
        case 0: val = st.requests; break;
        case 1: val = st.in_bytes; break;
        case 2: val = st.out_bytes; break;
        case 3: case 4: case 5: case 6: case 7:
            val = st.responses[set->field - 3]; break;
        case 8: case 9: case 10: case 11: case 12: case 13: case 14: case 15:
            val = st.cache[set->field - 8]; break;
        case 16: val = st.request_msec_total; break;
        case 17:
            val = ngx_http_vts_average(st.req_samples, st.req_pos,
                                       vlcf->average_method,
                                       vlcf->average_period, now);
            break;
        case 18: val = st.response_msec_total; break;
        case 19:
            val = ngx_http_vts_average(st.resp_samples, st.resp_pos,
                                       vlcf->average_method,
                                       vlcf->average_period, now);
            break;
        }
    }

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
