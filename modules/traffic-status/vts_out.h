/*
 * traffic-status: the output every view writes into.  A chain of request
 * pool buffers (64 KB or the size of one large piece), never reallocated,
 * plus the escaping of JSON strings and Prometheus label values.
 *
 * A streamed render (vts_stream.cpp) hands each full buffer over to be
 * sent while the view goes on writing, and reuses the buffers already sent:
 * the views only see put / putc / u64 / secs and the escaping functions.
 */
#ifndef VTS_OUT_H
#define VTS_OUT_H

#include "ngx_cpp.h"

#include <cstdint>

struct ngx_http_vts_stream_t;       /* vts_stream.cpp */

/* > 0 while a view holds a lock: a streamed render does not pause then */
extern ngx_uint_t  ngx_http_vts_out_hold;

/* the streamed render running now (nullptr: none) */
extern ngx_http_vts_stream_t  *ngx_http_vts_stream_current;

/* called from a view's own loops (never from the store, never under a
   lock): a streamed render past its time slice pauses there */
void ngx_http_vts_stream_check_slice();

/* while alive, a streamed render does not pause: a view holding a lock
   (a peer list's, a zone's) scopes one, so no early return can leave the
   count raised */
class ngx_http_vts_no_pause_t {
public:
    ngx_http_vts_no_pause_t() { ngx_http_vts_out_hold++; }
    ~ngx_http_vts_no_pause_t() { ngx_http_vts_out_hold--; }

    ngx_http_vts_no_pause_t(const ngx_http_vts_no_pause_t &) = delete;
    ngx_http_vts_no_pause_t &operator=(const ngx_http_vts_no_pause_t &)
        = delete;
};

/* v in decimal at p, which has NGX_INT64_LEN bytes of room; returns the
   end.  What every view writes numbers with: ngx_sprintf's "%uL" gives the
   same digits after parsing its format each time (43 % of a JSON render's
   instructions went there) */
inline u_char *
ngx_http_vts_put_u64(u_char *p, uint64_t v)
{
    u_char  buf[NGX_INT64_LEN], *d = buf + sizeof(buf);

    do {
        *--d = (u_char) ('0' + v % 10);
        v /= 10;
    } while (v);
    return ngx_cpymem(p, d, buf + sizeof(buf) - d);
}


/* milliseconds as seconds with 3 decimals ("%uL.%03uL"): needs
   NGX_INT64_LEN + 4 bytes of room */
inline u_char *
ngx_http_vts_put_secs(u_char *p, uint64_t ms)
{
    p = ngx_http_vts_put_u64(p, ms / 1000);
    *p++ = '.';
    *p++ = (u_char) ('0' + ms % 1000 / 100);
    *p++ = (u_char) ('0' + ms % 100 / 10);
    *p++ = (u_char) ('0' + ms % 10);
    return p;
}


struct ngx_http_vts_out_t {
    ngx_pool_t   *pool;
    ngx_chain_t  *head = nullptr;
    ngx_chain_t **last = &head;
    ngx_buf_t    *b = nullptr;
    size_t        total = 0;
    bool          failed = false;
    ngx_http_vts_stream_t  *stream = nullptr;  /* set: full buffers are sent
                                                  while the view writes */
    ngx_chain_t  *free = nullptr;              /* sent buffers, for reuse */

    explicit ngx_http_vts_out_t(ngx_pool_t *p) : pool(p) {}

    bool reserve(size_t n) {
        if (failed) {
            return false;
        }
        if (b && (size_t) (b->end - b->last) >= n) {
            return true;
        }
        return grow(n);
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

    /* a string literal: its length is known when compiling */
    template <size_t N> void lit(const char (&s)[N]) { put(s, N - 1); }

    /* n bytes to write at the returned pointer (nullptr: failed), then
       done(end): a view composing many small pieces checks room once */
    u_char *room(size_t n) { return reserve(n) ? b->last : nullptr; }

    void done(u_char *end) {
        total += end - b->last;
        b->last = end;
    }

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
        u_char *p = ngx_http_vts_put_u64(b->last, v);
        total += p - b->last;
        b->last = p;
    }

    /* milliseconds as seconds, 3 decimals */
    void secs(uint64_t ms) {
        if (!reserve(NGX_INT64_LEN + 4)) {
            return;
        }
        u_char *p = ngx_http_vts_put_secs(b->last, ms);
        total += p - b->last;
        b->last = p;
    }

private:
    bool grow(size_t n);
};

typedef ngx_http_vts_out_t  vts_out_t;

/* a JSON string: escaped, control characters as \u00XX, invalid UTF-8
   bytes as \ufffd */
void ngx_http_vts_json_str(vts_out_t &o, const u_char *p, size_t len);
void ngx_http_vts_json_str(vts_out_t &o, ngx_str_t s);

/* a Prometheus label value (text format 0.0.4), without the quotes */
void ngx_http_vts_prom_label(vts_out_t &o, ngx_str_t s);

/* "# HELP NAME HELP\n# TYPE NAME TYPE\n" (the Prometheus views) */
void ngx_http_vts_prom_family(vts_out_t &o, const char *name,
    const char *type, const char *help);

/* a node name (a Host, a filter group or key: client input) inside a JSON
   string or a Prometheus label value, without the quotes; reversible, so
   distinct names never render alike: in the decoded text a backslash is
   \\, control characters and invalid UTF-8 bytes are \xHH, and a name
   equal to reserved (the sum key) has its first byte as \xHH */
void ngx_http_vts_put_name(vts_out_t &o, ngx_str_t s,
    const ngx_str_t *reserved);

/* vts_stream.cpp, called by grow() of a streamed render: hands the full
   buffers over to be sent and returns when the view may go on writing
   (NGX_ERROR: the render is given up) */
ngx_int_t ngx_http_vts_stream_pause(ngx_http_vts_stream_t *s);

/* sends the chain as the whole response body */
ngx_int_t ngx_http_vts_send(ngx_http_request_t *r, ngx_uint_t status,
    const char *type, vts_out_t &o);

#endif /* VTS_OUT_H */
