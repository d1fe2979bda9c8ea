/*
 * traffic-status: the HTML view.  One self-contained page (html/status.html,
 * compiled in as vts_html_page.h by gen_html.py) that polls
 * <location>/format/json from the browser, so it reads no counters here.
 */

#include "vts_display.h"
#include "vts_html_page.h"


void
ngx_http_vts_render_html(vts_out_t &o)
{
    o.put(ngx_http_vts_html, sizeof(ngx_http_vts_html) - 1);
}
