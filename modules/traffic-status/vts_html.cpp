/*
 * traffic-status: the HTML view.  One self-contained page (html/status.html,
 * compiled in as vts_html_page.h by gen_html.py) that polls
 * <location>/format/json from the browser, so it reads no counters here.
 * It is sent with a Content-Security-Policy (also from gen_html.py): its
 * inlined blocks run by their hashes, and it talks to its own origin only.
 */

#include "vts_display.h"
#include "vts_html_page.h"


namespace {

ngx_int_t
add_header(ngx_http_request_t *r, const char *name, const char *value)
{
    ngx_table_elt_t *h = (ngx_table_elt_t *)
        ngx_list_push(&r->headers_out.headers);

    if (h == nullptr) {
        return NGX_ERROR;
    }
    h->hash = 1;
    h->next = nullptr;
    h->key.len = ngx_strlen(name);
    h->key.data = (u_char *) name;
    h->value.len = ngx_strlen(value);
    h->value.data = (u_char *) value;
    return NGX_OK;
}

} // namespace


ngx_int_t
ngx_http_vts_render_html(vts_out_t &o, ngx_http_request_t *r)
{
    if (add_header(r, "Content-Security-Policy", ngx_http_vts_html_csp)
        != NGX_OK
        || add_header(r, "X-Content-Type-Options", "nosniff") != NGX_OK)
    {
        return NGX_ERROR;
    }
    o.put(ngx_http_vts_html, sizeof(ngx_http_vts_html) - 1);
    return NGX_OK;
}
