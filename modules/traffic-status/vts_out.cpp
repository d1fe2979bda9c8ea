/*
 * traffic-status: the output buffer, escaping, and sending the body.
 */

#include "vts_out.h"

namespace {

const char  hexdigits[] = "0123456789abcdef";


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


/* the UTF-8 sequence at p, or invalid: one byte as the replacement */
const u_char *
put_utf8(vts_out_t &o, const u_char *p, const u_char *end,
    const char *replacement)
{
    size_t n = utf8_len(p, end);

    if (n == 0) {
        o.put(replacement);
        return p + 1;
    }
    o.put(p, n);
    return p + n;
}


bool
json_plain(u_char c)
{
    return c >= 0x20 && c < 0x80 && c != '"' && c != '\\';
}

} // namespace


ngx_uint_t  ngx_http_vts_out_hold;


bool
ngx_http_vts_out_t::grow(size_t n)
{
    if (stream && head && ngx_http_vts_out_hold == 0) {
        /* the chain is handed over to be sent; head is empty again */
        if (ngx_http_vts_stream_pause(stream) != NGX_OK) {
            failed = true;
            return false;
        }
    }

    size_t size = n > 65536 ? n : 65536;
    ngx_chain_t *cl = free;
    ngx_buf_t *nb;

    if (cl && (size_t) (cl->buf->end - cl->buf->start) >= n) {
        free = cl->next;
        nb = cl->buf;
        nb->pos = nb->last = nb->start;
        nb->last_buf = nb->last_in_chain = nb->flush = 0;
    } else {
        nb = ngx_create_temp_buf(pool, size);
        cl = ngx_alloc_chain_link(pool);
        if (nb == nullptr || cl == nullptr) {
            failed = true;
            return false;
        }
        nb->tag = (ngx_buf_tag_t) &ngx_http_vts_out_hold;
    }
    cl->buf = nb;
    cl->next = nullptr;
    *last = cl;
    last = &cl->next;
    b = nb;
    return true;
}


void
ngx_http_vts_json_str(vts_out_t &o, const u_char *p, size_t len)
{
    const u_char *end = p + len;

    o.putc('"');
    while (p < end) {
        u_char c = *p;
        if (json_plain(c)) {
            const u_char *s = p;
            while (p < end && json_plain(*p)) {
                p++;
            }
            o.put(s, p - s);
        } else if (c == '"' || c == '\\') {
            o.putc('\\');
            o.putc(c);
            p++;
        } else if (c < 0x20) {
            u_char esc[6] = { '\\', 'u', '0', '0', (u_char) hexdigits[c >> 4],
                              (u_char) hexdigits[c & 0xf] };
            o.put(esc, 6);
            p++;
        } else {
            p = put_utf8(o, p, end, "\\ufffd");
        }
    }
    o.putc('"');
}


void
ngx_http_vts_json_str(vts_out_t &o, ngx_str_t s)
{
    ngx_http_vts_json_str(o, s.data, s.len);
}


void
ngx_http_vts_prom_family(vts_out_t &o, const char *name, const char *type,
    const char *help)
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


void
ngx_http_vts_prom_label(vts_out_t &o, ngx_str_t s)
{
    const u_char *p = s.data, *end = s.data + s.len;

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
            p = put_utf8(o, p, end, "\xef\xbf\xbd");
        }
    }
}


/* a byte of a node name as the four characters \xHH (in either format a
   backslash is written \\) */
static void
put_name_hex(vts_out_t &o, u_char c)
{
    static const char upper[] = "0123456789ABCDEF";
    u_char esc[5] = { '\\', '\\', 'x', (u_char) upper[c >> 4],
                      (u_char) upper[c & 0xf] };

    o.put(esc, 5);
}


void
ngx_http_vts_put_name(vts_out_t &o, ngx_str_t s, const ngx_str_t *reserved)
{
    const u_char *p = s.data, *end = s.data + s.len;

    if (reserved && reserved->len && s.len == reserved->len
        && ngx_memcmp(s.data, reserved->data, s.len) == 0)
    {
        put_name_hex(o, *p++);
    }
    while (p < end) {
        u_char c = *p;
        if (c == '"') {
            o.put("\\\"");
            p++;
        } else if (c == '\\') {
            o.put("\\\\\\\\");          /* decoded: \\ */
            p++;
        } else if (c < 0x20 || c == 0x7f) {
            put_name_hex(o, c);
            p++;
        } else if (c < 0x80) {
            const u_char *run = p;
            while (p < end && *p >= 0x20 && *p < 0x7f && *p != '"'
                   && *p != '\\')
            {
                p++;
            }
            o.put(run, p - run);
        } else {
            size_t n = utf8_len(p, end);
            if (n == 0) {
                put_name_hex(o, c);
                p++;
            } else {
                o.put(p, n);
                p += n;
            }
        }
    }
}


ngx_int_t
ngx_http_vts_send(ngx_http_request_t *r, ngx_uint_t status, const char *type,
    vts_out_t &o)
{
    if (o.head == nullptr) {
        o.reserve(1);
    }
    if (o.failed) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
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
