/*
 * traffic-status: a render sent while it is written, in bounded memory and
 * in time slices.
 *
 * The views write a whole document in one call (a full zone is ~20,000
 * entries, tens of MB).  Holding it would cost one document per concurrent
 * scrape, and writing it in one go would stall every other request of the
 * worker for the whole render.  So the view runs on its own stack (a
 * ucontext in the request pool): each time its output fills a 64 KB
 * buffer, vts_out's grow() pauses it here; the full buffers go through the
 * output filter, and the view resumes
 *   - at once, while the worker's renders took less than SLICE_USEC of
 *     this event-loop turn,
 *   - at the next turn otherwise (ngx_posted_next_events: the turn's
 *     network events are served first),
 *   - when the client has taken what was sent, if it is slow (the write
 *     event, under send_timeout): a stalled client holds two buffers, not
 *     a document.
 * Buffers already sent are reused.  The view never pauses inside a lock
 * (ngx_http_vts_out_hold).  At most VTS_RENDERS views run at once in a
 * worker; a later scrape waits for a slot (parked), holding nothing of
 * the store.  A client that takes nothing for VTS_STALL_MSEC gives its
 * slot up (its view stays paused, under send_timeout as before): clients
 * that never read cannot keep the worker's slots from other scrapes.  When
 * it reads on, its view waits for a slot again (parked, ahead of nothing:
 * at the tail of the queue).
 *
 * The snapshot's node pointers stay valid only while their nodes are not
 * freed: an unlinked node is freed a grace period after its unlink, and a
 * render may be paused (slow client) far longer.  So the snapshot is taken
 * when the view starts (ngx_http_vts_render_start in begin()), not when
 * the request arrives: a parked scrape may wait long for a slot (behind
 * clients that read slowly), and a snapshot taken then could name nodes
 * freed (and their pages reused by other entries) before it ran.  From
 * that moment, each run of the view first checks the snapshot
 * (snapshot_expiring): one older than half the grace period while entries
 * were unlinked since it was taken is given up.  A document under 64 KB,
 * a subrequest or a HEAD is written whole, right after its snapshot, and
 * sent with a Content-Length.
 */

#include "vts_display.h"

#include <new>                  /* placement new only (inline) */
#include <time.h>
#include <ucontext.h>

#if defined(__SANITIZE_ADDRESS__)
#define VTS_ASAN  1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define VTS_ASAN  1
#endif
#endif

#if (VTS_ASAN)
#include <sanitizer/common_interface_defs.h>
#define VTS_STACK_SIZE  (1024 * 1024)
#else
#define VTS_STACK_SIZE  (256 * 1024)
#endif

#define VTS_SLICE_USEC   5000       /* renders' share of one loop turn */
#define VTS_RUN_USEC     2000       /* one render's run between pauses */
#define VTS_RENDERS      4          /* views running at once in a worker */
#define VTS_STALL_MSEC   200        /* a client that takes nothing this long
                                       holds no slot */
#define VTS_STALE_MSEC   5000       /* half the store's grace period:
                                       one run (VTS_RUN_USEC) and a loop
                                       turn's lag of ngx_current_msec fit
                                       in the other half */

struct ngx_http_vts_stream_t {
    ngx_http_request_t    *r;
    vts_render_t           rd;
    ngx_http_vts_view_pt   view;
    vts_out_t              out;
    ngx_chain_t           *busy = nullptr;
    ucontext_t             caller, self;
    u_char                *stack;
    const char            *type;
    ngx_queue_t            queue;           /* in parked, while waiting */
    ngx_int_t              rc = NGX_OK;
    bool                   done = false;
    bool                   handover = false;        /* full buffers to send */
    uint64_t               run_start = 0;
    ngx_uint_t             reads = 0;
    bool                   parked = false;
    bool                   has_slot = false;
    bool                   started = false;     /* the view has its stack */
    ngx_msec_t             stalled_at = 0;      /* client blocked since */
#if (VTS_ASAN)
    const void            *caller_bottom = nullptr;
    size_t                 caller_size = 0;
#endif

    ngx_http_vts_stream_t(ngx_http_request_t *req, vts_render_t &render,
        ngx_http_vts_view_pt v) : r(req), rd(render), view(v), out(req->pool)
    {}
};

typedef ngx_http_vts_stream_t  stream_t;

ngx_http_vts_stream_t  *ngx_http_vts_stream_current;

namespace {

stream_t     *starting;             /* the stream whose view starts now */
ngx_uint_t    running;              /* streams holding a render slot */
ngx_queue_t   parked;               /* streams waiting for one */
ngx_msec_t    slice_epoch;          /* the loop turn (its time) ... */
uint64_t      slice_spent;          /* ... and the renders' usec in it */


uint64_t
now_usec()
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}


/* the view's side: runs the view, then returns to the caller for good */
void
view_main()
{
    stream_t *s = starting;

#if (VTS_ASAN)
    __sanitizer_finish_switch_fiber(nullptr, &s->caller_bottom,
                                    &s->caller_size);
#endif
    s->rc = s->view(s->out, s->rd);
    s->done = true;
#if (VTS_ASAN)
    __sanitizer_start_switch_fiber(nullptr, s->caller_bottom, s->caller_size);
#endif
    setcontext(&s->caller);
}


/* the caller's side: the view runs until its next full buffer or its end */
void
run_view(stream_t *s)
{
    uint64_t t0 = now_usec();
    s->run_start = t0;
    ngx_http_vts_stream_current = s;
#if (VTS_ASAN)
    void *fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, s->stack, VTS_STACK_SIZE);
#endif
    swapcontext(&s->caller, &s->self);
#if (VTS_ASAN)
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    ngx_http_vts_stream_current = nullptr;
    if (slice_epoch != ngx_current_msec) {
        slice_epoch = ngx_current_msec;
        slice_spent = 0;
    }
    slice_spent += now_usec() - t0;
}


bool
slice_left()
{
    return slice_epoch != ngx_current_msec || slice_spent < VTS_SLICE_USEC;
}


ngx_int_t
start_view(stream_t *s)
{
    s->stack = (u_char *) ngx_pmemalign(s->r->pool, VTS_STACK_SIZE, 64);
    if (s->stack == nullptr || getcontext(&s->self) == -1) {
        return NGX_ERROR;
    }
    s->self.uc_stack.ss_sp = s->stack;
    s->self.uc_stack.ss_size = VTS_STACK_SIZE;
    s->self.uc_link = nullptr;
    makecontext(&s->self, view_main, 0);
    s->out.stream = s;
    starting = s;
    run_view(s);
    return NGX_OK;
}


bool
client_blocked(ngx_http_request_t *r)
{
    return r->buffered || r->postponed || r->connection->buffered;
}


/* the full buffers handed over by the view, through the output filter */
ngx_int_t
send_pieces(stream_t *s)
{
    if (!s->handover) {
        return NGX_OK;              /* paused mid-buffer: nothing is full */
    }
    ngx_chain_t *out = s->out.head;

    s->handover = false;
    s->out.head = nullptr;
    s->out.last = &s->out.head;
    ngx_int_t rc = out ? ngx_http_output_filter(s->r, out) : NGX_OK;
    ngx_chain_update_chains(s->r->pool, &s->out.free, &s->busy, &out,
                            (ngx_buf_tag_t) &ngx_http_vts_out_hold);
    return rc == NGX_ERROR ? NGX_ERROR : NGX_OK;
}


void drop_slot(stream_t *s);


/* the view returned: its last buffer ends the body */
void
finish(stream_t *s)
{
    ngx_http_request_t *r = s->r;

    drop_slot(s);               /* what is left to send needs no slot */

    if (s->rc != NGX_OK || s->out.failed) {
        ngx_http_finalize_request(r, NGX_ERROR);
        return;
    }
    ngx_chain_t *out = s->out.head;
    ngx_buf_t *lb = out ? s->out.b : (ngx_buf_t *) ngx_calloc_buf(r->pool);
    ngx_chain_t end = { lb, nullptr };

    if (lb == nullptr) {
        ngx_http_finalize_request(r, NGX_ERROR);
        return;
    }
    lb->last_buf = 1;
    lb->last_in_chain = 1;
    ngx_http_finalize_request(r, ngx_http_output_filter(r, out ? out : &end));
}


void resume_handler(ngx_http_request_t *r);
void park(stream_t *s);
void wake_one();


/* the view no longer runs (it ended, or its client stalls): the slot
   goes to the longest-waiting scrape */
void
drop_slot(stream_t *s)
{
    if (s->has_slot) {
        s->has_slot = false;
        running--;
        wake_one();
    }
}


/* waits for the client to take what was sent: send_timeout in all, and
   with a slot only VTS_STALL_MSEC (then stalled() gives it up) */
void
wait_client(stream_t *s)
{
    ngx_http_request_t *r = s->r;
    ngx_event_t *wev = r->connection->write;
    ngx_http_core_loc_conf_t *clcf = (ngx_http_core_loc_conf_t *)
        ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (s->stalled_at == 0) {
        s->stalled_at = ngx_current_msec;
    }
    ngx_msec_t spent = ngx_current_msec - s->stalled_at;
    ngx_msec_t left = spent < clcf->send_timeout
                      ? clcf->send_timeout - spent : 1;

    r->write_event_handler = resume_handler;
    if (!wev->delayed) {
        ngx_add_timer(wev, s->has_slot ? ngx_min(left, VTS_STALL_MSEC) : left);
    }
    if (ngx_handle_write_event(wev, clcf->send_lowat) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_ERROR);
    }
}


/* the snapshot's nodes may be freed before the next run ends: entries were
   unlinked since it was taken, longer than half the grace period ago */
bool
snapshot_expiring(stream_t *s)
{
    ngx_http_vts_snapshot_t *snap = &s->rd.snap;

    return s->rd.reads_zone
           && ngx_http_vts_store_generation(&s->rd.vmcf->store)
              != snap->generation
           && ngx_current_msec - snap->taken > VTS_STALE_MSEC;
}


/* sends, and lets the view go on while the client and the slice allow */
void
pump(stream_t *s)
{
    ngx_http_request_t *r = s->r;

    for ( ;; ) {
        if (send_pieces(s) != NGX_OK) {
            ngx_http_finalize_request(r, NGX_ERROR);
            return;
        }
        if (client_blocked(r)) {
            wait_client(s);
            return;
        }
        if (!slice_left()) {
            r->write_event_handler = resume_handler;
            ngx_post_event(r->connection->write, &ngx_posted_next_events);
            return;
        }
        if (snapshot_expiring(s)) {
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "vhost_traffic_status: render given up: entries "
                          "were deleted while the client was slow");
            ngx_http_finalize_request(r, NGX_ERROR);
            return;
        }
        run_view(s);
        if (s->done) {
            finish(s);
            return;
        }
    }
}


/* the client took nothing for a while: past send_timeout the request
   ends, before it the view gives its slot up (stays paused, slotless) */
void
stalled(stream_t *s)
{
    ngx_http_request_t *r = s->r;
    ngx_http_core_loc_conf_t *clcf = (ngx_http_core_loc_conf_t *)
        ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    r->connection->write->timedout = 0;
    if (ngx_current_msec - s->stalled_at >= clcf->send_timeout) {
        r->connection->timedout = 1;
        ngx_http_finalize_request(r, NGX_HTTP_REQUEST_TIME_OUT);
        return;
    }
    if (s->has_slot) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "vhost_traffic_status: stalled client, slot given up");
        drop_slot(s);
    }
    wait_client(s);
}


/* a slotless view whose client reads on: a free slot, else the queue's
   tail (false) */
bool
take_slot(stream_t *s)
{
    if (running < VTS_RENDERS
        && (parked.next == nullptr || ngx_queue_empty(&parked)))
    {
        running++;
        s->has_slot = true;
        return true;
    }
    park(s);
    return false;
}


void
resume_handler(ngx_http_request_t *r)
{
    stream_t *s = (stream_t *) ngx_http_get_module_ctx(r, ngx_http_vts_module);
    ngx_event_t *wev = r->connection->write;

    if (wev->timedout) {
        stalled(s);
        return;
    }
    if (wev->timer_set) {
        ngx_del_timer(wev);
    }
    s->stalled_at = 0;
    if (ngx_http_output_filter(r, nullptr) == NGX_ERROR) {
        ngx_http_finalize_request(r, NGX_ERROR);
        return;
    }
    if (!s->has_slot) {
        if (client_blocked(r)) {
            wait_client(s);
            return;
        }
        if (!take_slot(s)) {
            return;
        }
    }
    pump(s);
}


/* the whole output, then sent with a Content-Length */
ngx_int_t
send_whole(ngx_http_request_t *r, vts_render_t &rd,
    ngx_http_vts_view_pt view, const char *type)
{
    vts_out_t o(r->pool);

    if (ngx_http_vts_render_start(rd) != NGX_OK || view(o, rd) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    return ngx_http_vts_send(r, NGX_HTTP_OK, type, o);
}

/* takes the snapshot and runs the view's first slice at once: a small
   output is sent whole, with a Content-Length; a larger one goes on in
   pieces */
void
begin(stream_t *s)
{
    ngx_http_request_t *r = s->r;

    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_request_empty_handler;
    if (ngx_http_vts_render_start(s->rd) != NGX_OK
        || start_view(s) != NGX_OK)
    {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }
    s->started = true;
    if (s->done) {
        /* under 64 KB: never paused, the whole output is here */
        s->out.stream = nullptr;
        drop_slot(s);
        ngx_http_finalize_request(r, s->rc == NGX_OK
            ? ngx_http_vts_send(r, NGX_HTTP_OK, s->type, s->out)
            : NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_type.len = ngx_strlen(s->type);
    r->headers_out.content_type.data = (u_char *) s->type;
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_length_n = -1;
    ngx_int_t rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK) {
        ngx_http_finalize_request(r, rc);   /* the paused view is dropped */
        return;
    }
    pump(s);
}


void
begin_handler(ngx_http_request_t *r)
{
    stream_t *s = (stream_t *) ngx_http_get_module_ctx(r, ngx_http_vts_module);

    if (!slice_left()) {
        ngx_post_event(r->connection->write, &ngx_posted_next_events);
        return;
    }
    begin(s);
}


/* waits for a render slot (a client that goes away meanwhile is noticed
   by ngx_http_test_reading) */
void
park(stream_t *s)
{
    if (parked.next == nullptr) {
        ngx_queue_init(&parked);
    }
    s->parked = true;
    ngx_queue_insert_tail(&parked, &s->queue);
    s->r->read_event_handler = ngx_http_test_reading;
    s->r->write_event_handler = ngx_http_request_empty_handler;
}


/* a slot was freed: the longest-waiting stream gets it (next loop turn) */
void
wake_one()
{
    if (parked.next == nullptr || ngx_queue_empty(&parked)) {
        return;
    }
    ngx_queue_t *q = ngx_queue_head(&parked);
    stream_t *s = ngx_queue_data(q, stream_t, queue);

    ngx_queue_remove(q);
    s->parked = false;
    s->has_slot = true;
    running++;
    s->r->write_event_handler = s->started ? resume_handler : begin_handler;
    ngx_post_event(s->r->connection->write, &ngx_posted_next_events);
}


/* the request is freed: its slot (or its place in the queue) goes */
void
release(void *data)
{
    stream_t *s = (stream_t *) data;

    if (s->parked) {
        ngx_queue_remove(&s->queue);
        s->parked = false;
    }
    drop_slot(s);
}

} // namespace


namespace {

void
switch_to_caller(stream_t *s)
{
#if (VTS_ASAN)
    void *fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, s->caller_bottom, s->caller_size);
#endif
    swapcontext(&s->self, &s->caller);
#if (VTS_ASAN)
    __sanitizer_finish_switch_fiber(fake, &s->caller_bottom, &s->caller_size);
#endif
}

} // namespace


ngx_int_t
ngx_http_vts_stream_pause(stream_t *s)
{
    s->handover = true;
    switch_to_caller(s);
    return NGX_OK;
}


void
ngx_http_vts_stream_check_slice()
{
    stream_t *s = ngx_http_vts_stream_current;

    if (s == nullptr || ngx_http_vts_out_hold || (++s->reads & 63)
        || now_usec() - s->run_start < VTS_RUN_USEC)
    {
        return;
    }
    switch_to_caller(s);
}


ngx_int_t
ngx_http_vts_stream(ngx_http_request_t *r, vts_render_t &rd,
    ngx_http_vts_view_pt view, const char *type)
{
    if (r != r->main || r->header_only) {
        return send_whole(r, rd, view, type);
    }

    void *mem = ngx_palloc(r->pool, sizeof(stream_t));
    ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(r->pool, 0);
    if (mem == nullptr || cln == nullptr) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    stream_t *s = new (mem) stream_t(r, rd, view);
    s->type = type;
    cln->handler = release;
    cln->data = s;
    ngx_http_set_ctx(r, s, ngx_http_vts_module);
    r->main->count++;

    if (running < VTS_RENDERS && slice_left()) {
        running++;
        s->has_slot = true;
        begin(s);
    } else {
        park(s);
        if (running < VTS_RENDERS) {
            /* a slot is free, only this turn's budget is spent: no slot
               release may come to wake the queue, so its head takes the
               slot now and starts at the next turn */
            wake_one();
        }
    }
    return NGX_DONE;
}
