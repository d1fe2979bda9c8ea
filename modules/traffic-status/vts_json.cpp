/*
 * traffic-status: the JSON view (also JSONP, and the control endpoint's
 * status answers, which are sections of the same document).
 */

#include "vts_display.h"

namespace {

typedef ngx_http_vts_stats_t  stats_t;


void
str(vts_out_t &o, ngx_str_t s)
{
    ngx_http_vts_json_str(o, s);
}


/* a node name as a JSON key (reversible; see ngx_http_vts_put_name) */
void
name(vts_out_t &o, ngx_str_t s, const ngx_str_t *reserved)
{
    o.putc('"');
    ngx_http_vts_put_name(o, s, reserved);
    o.putc('"');
}


/* ,"key":value; key is the literal ,"key": */
template <size_t N>
void
member(vts_out_t &o, const char (&key)[N], uint64_t v)
{
    u_char *p = o.room(N - 1 + NGX_INT64_LEN);

    if (p) {
        p = ngx_cpymem(p, key, N - 1);
        o.done(ngx_http_vts_put_u64(p, v));
    }
}


void
u64_array(vts_out_t &o, const uint64_t *v, size_t n)
{
    o.putc('[');
    for (size_t k = 0; k < n; k++) {
        if (k) {
            o.putc(',');
        }
        o.u64(v[k]);
    }
    o.putc(']');
}


/* the samples of a moving average ring, oldest first */
void
samples(vts_out_t &o, const ngx_http_vts_sample_t *smp, uint64_t pos)
{
    uint64_t n = ngx_min(pos, (uint64_t) NGX_HTTP_VTS_AVG_SAMPLES);
    uint64_t start = pos - n;

    o.lit("{\"times\":[");
    for (uint64_t k = 0; k < n; k++) {
        if (k) {
            o.putc(',');
        }
        o.u64(smp[(start + k) % NGX_HTTP_VTS_AVG_SAMPLES].time);
    }
    o.lit("],\"msecs\":[");
    for (uint64_t k = 0; k < n; k++) {
        if (k) {
            o.putc(',');
        }
        o.u64(smp[(start + k) % NGX_HTTP_VTS_AVG_SAMPLES].msec);
    }
    o.lit("]}");
}


/* cumulative, as in Prometheus: each bucket counts every request at or
   under its bound */
void
buckets(vts_out_t &o, const stats_t *st, const uint64_t *counters)
{
    uint64_t cum[NGX_HTTP_VTS_BUCKET_MAX], c = 0;

    for (uint32_t k = 0; k < st->nbuckets; k++) {
        c += counters[k];
        cum[k] = c;
    }
    o.lit("{\"msecs\":");
    u64_array(o, st->bucket_msec, st->nbuckets);
    o.lit(",\"counters\":");
    u64_array(o, cum, st->nbuckets);
    o.putc('}');
}


/* "NAME": of each status class and cache status, composed once (the
   names are the tables' of vts_store) */
struct class_key_t {
    u_char  text[32];
    size_t  len;
};

const class_key_t *
class_keys()
{
    static class_key_t  keys[5 + NGX_HTTP_VTS_CACHE_N];
    static bool         ready;

    if (!ready) {
        for (int k = 0; k < 5 + NGX_HTTP_VTS_CACHE_N; k++) {
            const char *nm = k < 5 ? ngx_http_vts_class_names[k]
                                   : ngx_http_vts_cache_names[k - 5];
            u_char *p = ngx_snprintf(keys[k].text, sizeof(keys[k].text),
                                     "\"%s\":", nm);
            keys[k].len = p - keys[k].text;
        }
        ready = true;
    }
    return keys;
}


/* room for the longest class_members() */
const size_t  class_members_max = (5 + NGX_HTTP_VTS_CACHE_N)
                                  * (sizeof(class_key_t::text) + 1
                                     + NGX_INT64_LEN);


/* "1xx":N .. "5xx":N[, "miss":N .. "scarce":N] at p (class_members_max
   bytes of room); returns the end.  Upstream peers have no cache statuses
   (as VTS) */
u_char *
class_members_at(u_char *p, const uint64_t *classes, const uint64_t *cache,
    bool with_classes)
{
    const class_key_t *keys = class_keys();
    u_char *start = p;

    for (int k = 0; with_classes && k < 5; k++) {
        if (p != start) {
            *p++ = ',';
        }
        p = ngx_cpymem(p, keys[k].text, keys[k].len);
        p = ngx_http_vts_put_u64(p, classes[k]);
    }
    for (int k = 0; cache && k < NGX_HTTP_VTS_CACHE_N; k++) {
        if (p != start) {
            *p++ = ',';
        }
        p = ngx_cpymem(p, keys[5 + k].text, keys[5 + k].len);
        p = ngx_http_vts_put_u64(p, cache[k]);
    }
    return p;
}


/* the same into the output, in one piece */
void
class_members(vts_out_t &o, const uint64_t *classes, const uint64_t *cache,
    bool with_classes)
{
    u_char *p = o.room(class_members_max);

    if (p) {
        o.done(class_members_at(p, classes, cache, with_classes));
    }
}


void
responses(vts_out_t &o, const stats_t *st, bool cache)
{
    o.lit("\"responses\":{");
    class_members(o, st->responses, cache ? st->cache : nullptr, true);
    o.putc('}');
}


/* the text of over_counts() for its flags */
struct over_text_t {
    u_char  text[class_members_max + 256];
    size_t  len;
};

template <size_t N>
u_char *
cpy_lit(u_char *p, const char (&s)[N])
{
    return ngx_cpymem(p, s, N - 1);
}


void
compose_over_counts(over_text_t &t, bool requests, bool upstream)
{
    static const uint64_t zeros[NGX_HTTP_VTS_CACHE_N] = {};
    u_char *p = t.text;

    p = cpy_lit(p, ",\"overCounts\":{"
                   "\"maxIntegerSize\":18446744073709551615");
    if (requests) {
        p = cpy_lit(p, ",\"requestCounter\":0");
    }
    p = cpy_lit(p, ",\"inBytes\":0,\"outBytes\":0,");
    p = class_members_at(p, zeros, upstream ? nullptr : zeros, requests);
    if (requests) {
        p = cpy_lit(p, ",\"requestMsecCounter\":0");
    }
    if (upstream) {
        p = cpy_lit(p, ",\"responseMsecCounter\":0");
    }
    *p++ = '}';
    t.len = p - t.text;
}


/* VTS's overflow counts of its 64-bit counters: ours never wrap in
   practice (a request per nanosecond takes 584 years), so all zero.  The
   text depends on the flags only: each is composed once */
void
over_counts(vts_out_t &o, bool requests, bool upstream)
{
    static over_text_t  texts[4];
    static bool         ready[4];
    int k = (requests ? 1 : 0) + (upstream ? 2 : 0);

    if (!ready[k]) {
        compose_over_counts(texts[k], requests, upstream);
        ready[k] = true;
    }
    o.put(texts[k].text, texts[k].len);
}


/* the members common to server, filter and upstream entries; the sum key
   passes its own average and has no samples */
void
stats_body(vts_out_t &o, vts_render_t &rd, const stats_t *st, bool upstream,
    const uint64_t *sum_avg)
{
    o.lit("\"requestCounter\":");
    o.u64(st->requests);
    member(o, ",\"inBytes\":", st->in_bytes);
    member(o, ",\"outBytes\":", st->out_bytes);
    o.putc(',');
    responses(o, st, !upstream);
    member(o, ",\"requestMsecCounter\":", st->request_msec_total);
    member(o, ",\"requestMsec\":",
           sum_avg ? *sum_avg : ngx_http_vts_req_avg(rd, st));
    o.lit(",\"requestMsecs\":");
    if (sum_avg) {
        o.lit("{\"times\":[],\"msecs\":[]}");
    } else {
        samples(o, st->req_samples, st->req_pos);
    }
    o.lit(",\"requestBuckets\":");
    buckets(o, st, st->req_buckets);

    if (upstream) {
        member(o, ",\"responseMsecCounter\":", st->response_msec_total);
        member(o, ",\"responseMsec\":", ngx_http_vts_resp_avg(rd, st));
        o.lit(",\"responseMsecs\":");
        samples(o, st->resp_samples, st->resp_pos);
        o.lit(",\"responseBuckets\":");
        buckets(o, st, st->resp_buckets);
    }
}


/* ,"statusCodes":{"other":N,"200":N,...}: measure_status_codes; with
   "all" only the codes seen */
void
status_codes(vts_out_t &o, ngx_http_vts_codes_t *codes, const uint64_t *v)
{
    o.lit(",\"statusCodes\":{\"other\":");
    o.u64(v ? v[0] : 0);
    for (uint16_t k = 1; k < codes->n; k++) {
        uint64_t c = v ? ngx_http_vts_load(&v[k]) : 0;
        if (codes->all && c == 0) {
            continue;
        }
        o.lit(",\"");
        o.u64(codes->code[k]);
        o.lit("\":");
        o.u64(c);
    }
    o.putc('}');
}


const uint64_t *
node_codes(vts_render_t &rd, ngx_http_vts_node_t *n)
{
    ngx_http_vts_codes_t *codes = rd.vmcf->store.codes;
    return n->ncodes == codes->n ? ngx_http_vts_node_codes(n) : nullptr;
}


/* a live node of this kind, in the selected group and name */
bool
selected(ngx_http_vts_node_t *n, ngx_str_t *group, ngx_str_t *name)
{
    return !n->deleted
           && (group == nullptr
               || ngx_http_vts_str_eq(ngx_http_vts_node_group(n), group))
           && (name == nullptr
               || ngx_http_vts_str_eq(ngx_http_vts_node_name(n), name));
}


/* "NAME":{...} of one server or filter node */
void
entry(vts_out_t &o, vts_render_t &rd, ngx_http_vts_node_t *n)
{
    stats_t st;

    ngx_http_vts_read_stats(&st, &n->stats);
    ngx_http_vts_stream_check_slice();
    name(o, ngx_http_vts_node_name(n),
         n->kind == NGX_HTTP_VTS_SERVER ? &rd.vlcf->sum_key : nullptr);
    o.lit(":{");
    stats_body(o, rd, &st, false, nullptr);
    over_counts(o, true, false);
    if (n->kind == NGX_HTTP_VTS_SERVER && rd.vmcf->store.codes) {
        status_codes(o, rd.vmcf->store.codes, node_codes(rd, n));
    }
    o.putc('}');
}


/* the sum key's exact codes: the sum over the server zones */
void
sum_codes(vts_out_t &o, vts_render_t &rd)
{
    ngx_http_vts_codes_t *codes = rd.vmcf->store.codes;
    uint64_t *sum = (uint64_t *) ngx_pcalloc(rd.r->pool,
                                             codes->n * sizeof(uint64_t));
    ngx_uint_t first, last;

    if (sum == nullptr) {
        o.failed = true;
        return;
    }
    ngx_http_vts_snapshot_range(&rd.snap, NGX_HTTP_VTS_SERVER, &first, &last);
    for (ngx_uint_t i = first; i < last; i++) {
        const uint64_t *v = node_codes(rd, rd.snap.nodes[i]);
        for (uint16_t k = 0; v && k < codes->n; k++) {
            sum[k] += ngx_http_vts_load(&v[k]);
        }
    }
    status_codes(o, codes, sum);
}


/* one upstream peer; additions to VTS: drain, and its lifecycle: removed
   (it left its upstream's list, kept until it expires), addedMsec (it
   joined at run time: 0 when listed from the start), removedMsec */
void
peer(vts_out_t &o, vts_render_t &rd, ngx_http_vts_peer_t &pi)
{
    stats_t st;

    if (pi.node) {
        ngx_http_vts_read_stats(&st, &pi.node->stats);
        ngx_http_vts_stream_check_slice();
    } else {
        ngx_memzero(&st, sizeof(st));
    }
    o.lit("{\"server\":");
    str(o, pi.name);
    o.putc(',');
    stats_body(o, rd, &st, true, nullptr);
    member(o, ",\"weight\":", pi.weight);
    member(o, ",\"maxFails\":", pi.max_fails);
    member(o, ",\"failTimeout\":", (uint64_t) pi.fail_timeout);
    o.put(pi.backup ? ",\"backup\":true" : ",\"backup\":false");
    o.put(pi.down ? ",\"down\":true" : ",\"down\":false");
    o.put(pi.drain ? ",\"drain\":true" : ",\"drain\":false");
    o.put(pi.removed ? ",\"removed\":true" : ",\"removed\":false");
    member(o, ",\"addedMsec\":", pi.added);
    member(o, ",\"removedMsec\":", pi.removed ? pi.removed_at : 0);
    over_counts(o, true, true);
    o.putc('}');
}


bool
peer_selected(vts_select_t &sel, ngx_str_t group, ngx_http_vts_peer_t &pi)
{
    bool alone = ngx_http_vts_is_nogroups(group);

    if ((sel.upstreams == NGX_HTTP_VTS_UPSTREAMS_ALONE && !alone)
        || (sel.upstreams == NGX_HTTP_VTS_UPSTREAMS_GROUPS && alone))
    {
        return false;
    }
    return (sel.group == nullptr || ngx_http_vts_str_eq(group, sel.group))
           && (sel.name == nullptr || ngx_http_vts_str_eq(pi.name, sel.name));
}


} // namespace


/* hostName .. sharedZones: the members before the zone sections */
void
ngx_http_vts_json_main(vts_out_t &o, vts_render_t &rd)
{
    o.lit("\"hostName\":");
    str(o, ((ngx_cycle_t *) ngx_cycle)->hostname);
    o.put(",\"moduleVersion\":\"" NGX_HTTP_VTS_MODULE_VERSION "\"");
    o.put(",\"nginxVersion\":\"" NGINX_VERSION "\"");
    member(o, ",\"loadMsec\":", rd.snap.start_msec);
    member(o, ",\"nowMsec\":", rd.now);

    ngx_http_vts_conn_t c[NGX_HTTP_VTS_CONN_N];
    ngx_http_vts_connections(c);
    o.lit(",\"connections\":{");
    for (int k = 0; k < NGX_HTTP_VTS_CONN_N; k++) {
        o.put(k ? ",\"" : "\"");
        o.put(c[k].name);
        o.lit("\":");
        o.u64(c[k].value);
    }

    o.lit("},\"sharedZones\":{\"name\":");
    str(o, rd.snap.zone_name);
    member(o, ",\"maxSize\":", rd.snap.max_size);
    member(o, ",\"usedSize\":", rd.snap.used_size);
    member(o, ",\"usedNode\":", rd.snap.used_node);
    member(o, ",\"freeSize\":", rd.snap.free_size);
    o.lit(",\"droppedNodes\":{\"zoneFull\":");
    o.u64(rd.snap.dropped_full);
    member(o, ",\"maxNode\":", rd.snap.dropped_limit);
    member(o, ",\"evicted\":", rd.snap.dropped_evicted);
    o.lit("}}");
}


void
ngx_http_vts_json_servers(vts_out_t &o, vts_render_t &rd, vts_select_t &sel)
{
    ngx_uint_t first, last;
    bool comma = false;

    ngx_http_vts_snapshot_range(&rd.snap, NGX_HTTP_VTS_SERVER, &first, &last);
    if (!sel.bare) {
        o.lit("\"serverZones\":{");
    }
    for (ngx_uint_t i = first; i < last; i++) {
        ngx_http_vts_node_t *n = rd.snap.nodes[i];
        if (!selected(n, nullptr, sel.name)) {
            continue;
        }
        if (comma) {
            o.putc(',');
        }
        comma = true;
        entry(o, rd, n);
    }

    if (sel.name == nullptr) {
        stats_t st;
        uint64_t avg;
        ngx_http_vts_sum_stats(rd, &st, &avg);
        if (comma) {
            o.putc(',');
        }
        str(o, rd.vlcf->sum_key);
        o.lit(":{");
        stats_body(o, rd, &st, false, &avg);
        over_counts(o, true, false);
        if (rd.vmcf->store.codes) {
            sum_codes(o, rd);
        }
        o.putc('}');
    }
    if (!sel.bare) {
        o.putc('}');
    }
}


void
ngx_http_vts_json_filters(vts_out_t &o, vts_render_t &rd, vts_select_t &sel)
{
    ngx_uint_t first, last;
    ngx_str_t cur = ngx_null_string;
    bool open = false;

    ngx_http_vts_snapshot_range(&rd.snap, NGX_HTTP_VTS_FILTER, &first, &last);
    if (sel.bare) {
        for (ngx_uint_t i = first; i < last; i++) {
            if (selected(rd.snap.nodes[i], sel.group, sel.name)) {
                entry(o, rd, rd.snap.nodes[i]);
                break;
            }
        }
        return;
    }
    o.lit("\"filterZones\":{");
    for (ngx_uint_t i = first; i < last; i++) {
        ngx_http_vts_node_t *n = rd.snap.nodes[i];
        if (!selected(n, sel.group, sel.name)) {
            continue;
        }
        ngx_str_t g = ngx_http_vts_node_group(n);
        if (!open || !ngx_http_vts_str_eq(g, &cur)) {
            if (open) {
                o.lit("},");
            }
            name(o, g, nullptr);
            o.lit(":{");
            cur = g;
            open = true;
        } else {
            o.putc(',');
        }
        entry(o, rd, n);
    }
    if (open) {
        o.putc('}');
    }
    o.putc('}');
}


void
ngx_http_vts_json_upstreams(vts_out_t &o, vts_render_t &rd, vts_select_t &sel)
{
    ngx_str_t cur = ngx_null_string;
    bool open = false;
    bool first_peer = true;

    if (!sel.bare) {
        o.lit("\"upstreamZones\":{");
    }
    ngx_int_t rc = ngx_http_vts_peers(rd, [&](ngx_str_t group,
                                              ngx_http_vts_peer_t &pi)
    {
        if (!peer_selected(sel, group, pi)) {
            return;
        }
        if (sel.bare) {
            if (first_peer) {
                str(o, pi.name);
                o.putc(':');
                peer(o, rd, pi);
            }
            first_peer = false;
            return;
        }
        if (!open || !ngx_http_vts_str_eq(group, &cur)) {
            if (open) {
                o.lit("],");
            }
            str(o, group);
            o.lit(":[");
            cur = group;
            open = true;
            first_peer = true;
        }
        if (!first_peer) {
            o.putc(',');
        }
        first_peer = false;
        peer(o, rd, pi);
    });
    if (rc != NGX_OK) {
        o.failed = true;
    }
    if (open) {
        o.putc(']');
    }
    if (!sel.bare) {
        o.putc('}');
    }
}


void
ngx_http_vts_json_caches(vts_out_t &o, vts_render_t &rd, vts_select_t &sel)
{
    ngx_http_vts_cache_row_t *rows;
    ngx_uint_t n;
    bool comma = false;

    if (ngx_http_vts_cache_rows(rd, &rows, &n) != NGX_OK) {
        o.failed = true;
        return;
    }
    if (!sel.bare) {
        o.lit("\"cacheZones\":{");
    }
    for (ngx_uint_t i = 0; i < n; i++) {
        if (sel.name && !ngx_http_vts_str_eq(rows[i].name, sel.name)) {
            continue;
        }
        if (comma) {
            o.putc(',');
        }
        comma = true;
        str(o, rows[i].name);
        o.lit(":{\"maxSize\":");
        o.u64(rows[i].max);
        member(o, ",\"usedSize\":", rows[i].used);
        member(o, ",\"inBytes\":", rows[i].st.in_bytes);
        member(o, ",\"outBytes\":", rows[i].st.out_bytes);
        o.lit(",\"responses\":{");
        class_members(o, nullptr, rows[i].st.cache, false);
        o.putc('}');
        over_counts(o, false, false);
        o.putc('}');
    }
    if (!sel.bare) {
        o.putc('}');
    }
}


void
ngx_http_vts_render_json(vts_out_t &o, vts_render_t &rd)
{
    vts_select_t all;

    o.putc('{');
    ngx_http_vts_json_main(o, rd);
    o.putc(',');
    ngx_http_vts_json_servers(o, rd, all);
    o.putc(',');
    ngx_http_vts_json_filters(o, rd, all);
    o.putc(',');
    ngx_http_vts_json_upstreams(o, rd, all);
    o.putc(',');
    ngx_http_vts_json_caches(o, rd, all);
    o.putc('}');
}
