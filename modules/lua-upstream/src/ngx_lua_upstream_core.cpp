
/*
 * Upstream groups and their round-robin peers, read and written under the
 * locks nginx's own balancer uses (ngx_http_upstream_round_robin.h):
 *
 *   - the peer list's rwlock: readers (the balancer, our snapshots) take it
 *     shared, set_peer_down takes it exclusive;
 *   - a peer's own lock, which the balancer takes (under the shared list
 *     lock) while it updates the peer's counters; our snapshot takes it too
 *     so a peer is copied consistently.
 *
 * Both are no-ops for groups without `zone` (peers->shpool == NULL): then the
 * peers are private to the worker, which is single-threaded.  With `zone` the
 * peers live in shared memory as a linked list, so lists are always walked
 * through `next`, never indexed.
 */


#include "ngx_lua_upstream_core.h"


namespace ngx_lua_upstream {

namespace {


class peers_read_lock {
public:
    explicit peers_read_lock(ngx_http_upstream_rr_peers_t *peers)
        : peers_(peers)
    {
        ngx_http_upstream_rr_peers_rlock(peers_);
    }

    ~peers_read_lock()
    {
        ngx_http_upstream_rr_peers_unlock(peers_);
    }

    peers_read_lock(const peers_read_lock &) = delete;
    peers_read_lock &operator=(const peers_read_lock &) = delete;

private:
    ngx_http_upstream_rr_peers_t  *peers_;
};


class peers_write_lock {
public:
    explicit peers_write_lock(ngx_http_upstream_rr_peers_t *peers)
        : peers_(peers)
    {
        ngx_http_upstream_rr_peers_wlock(peers_);
    }

    ~peers_write_lock()
    {
        ngx_http_upstream_rr_peers_unlock(peers_);
    }

    peers_write_lock(const peers_write_lock &) = delete;
    peers_write_lock &operator=(const peers_write_lock &) = delete;

private:
    ngx_http_upstream_rr_peers_t  *peers_;
};


class peer_lock {
public:
    peer_lock(ngx_http_upstream_rr_peers_t *peers,
        ngx_http_upstream_rr_peer_t *peer)
        : peers_(peers), peer_(peer)
    {
        ngx_http_upstream_rr_peer_lock(peers_, peer_);
    }

    ~peer_lock()
    {
        ngx_http_upstream_rr_peer_unlock(peers_, peer_);
    }

    peer_lock(const peer_lock &) = delete;
    peer_lock &operator=(const peer_lock &) = delete;

private:
    ngx_http_upstream_rr_peers_t  *peers_;
    ngx_http_upstream_rr_peer_t   *peer_;
};


/* does `name` equal the group's "host" or "host:port"? */
bool
name_matches(const ngx_http_upstream_srv_conf_t *uscf, const u_char *name,
    size_t len)
{
    const ngx_str_t  &host = uscf->host;

    if (len < host.len
        || ngx_strncasecmp(const_cast<u_char *>(name), host.data, host.len)
           != 0)
    {
        return false;
    }

    if (uscf->port == 0) {
        return len == host.len;
    }

    const u_char  *rest = name + host.len;
    size_t         rest_len = len - host.len;

    if (rest_len < 2 || rest[0] != ':') {
        return false;
    }

    ngx_int_t  port = ngx_atoi(const_cast<u_char *>(rest + 1), rest_len - 1);

    return port == static_cast<ngx_int_t>(uscf->port);
}


/*
 * Ids of dynamic groups: the low 32 bits of the generation, then the
 * position (2^52 stays exact in a Lua number).
 */
constexpr unsigned            id_position_bits = 20;
constexpr unsigned long long  id_position_mask = (1ULL << id_position_bits) - 1;
constexpr unsigned long long  id_generation_mask = 0xffffffffULL;


/* peers->config: every copy, add and removal of a peer increments it */
ngx_uint_t
locked_generation(const ngx_http_upstream_rr_peers_t *peers)
{
#if (NGX_HTTP_UPSTREAM_ZONE)
    return peers->config ? *peers->config : 0;
#else
    (void) peers;
    return 0;
#endif
}


const void *
resolve_line_of(const ngx_http_upstream_rr_peer_t *peer)
{
#if (NGX_HTTP_UPSTREAM_ZONE)
    return peer->host;
#else
    (void) peer;
    return nullptr;
#endif
}


ngx_str_t
copy_string(u_char **p, const ngx_str_t &s)
{
    ngx_str_t  copy = { s.len, *p };

    *p = ngx_cpymem(*p, s.data, s.len);

    return copy;
}


/* only the failed bit: a draining peer stays draining */
void
set_failed_bit(ngx_http_upstream_rr_peer_t *peer, bool down)
{
    if (down) {
        peer->down |= NGX_HTTP_UPSTREAM_FAILED;

    } else {
        peer->down &= ~static_cast<ngx_uint_t>(NGX_HTTP_UPSTREAM_FAILED);
    }
}


void
mark_down(ngx_http_upstream_rr_peer_t *peer, bool down)
{
    set_failed_bit(peer, down);

    if (!down) {
        peer->fails = 0;
    }
}


} /* namespace */


const char *
status_text(status_t s)
{
    switch (s) {
    case status_t::ok:
        return "ok";
    case status_t::not_found:
        return "upstream not found";
    case status_t::no_peer_data:
        return "no peer data";
    case status_t::no_backup:
        return "no backup peers";
    case status_t::bad_peer_id:
        return "bad peer id";
    case status_t::peers_changed:
        return "peers changed";
    case status_t::peer_not_found:
        return "peer not found";
    case status_t::not_resolved:
        return "no resolve servers";
    case status_t::no_memory:
        return "no memory";
    }

    return "unknown error";
}


ngx_http_upstream_main_conf_t *
main_conf()
{
    /* ngx_cycle is volatile only because reloads swap it */
    ngx_cycle_t  *cycle = const_cast<ngx_cycle_t *>(ngx_cycle);

    if (cycle == nullptr || cycle->conf_ctx == nullptr) {
        return nullptr;         /* init_by_lua* on the very first start */
    }

    return static_cast<ngx_http_upstream_main_conf_t *>(
               ngx_http_cycle_get_module_main_conf(cycle,
                                                   ngx_http_upstream_module));
}


ngx_http_upstream_srv_conf_t *
find(ngx_http_upstream_main_conf_t *umcf, const u_char *name, size_t len)
{
    if (umcf == nullptr) {
        return nullptr;
    }

    auto **uscfp = static_cast<ngx_http_upstream_srv_conf_t **>(
                       umcf->upstreams.elts);

    for (ngx_uint_t i = 0; i < umcf->upstreams.nelts; i++) {
        if (name_matches(uscfp[i], name, len)) {
            return uscfp[i];
        }
    }

    return nullptr;
}


ngx_http_upstream_rr_peers_t *
peer_list(const ngx_http_upstream_srv_conf_t *uscf, bool backup)
{
    /*
     * round robin and every balancer built on it (hash, ip_hash, least_conn,
     * random, keepalive on top) keep ngx_http_upstream_rr_peers_t here; with
     * `zone` the zone module has replaced it by the shared-memory copy.  The
     * backup list hangs off the primary one; DNS (SRV records) may change
     * its peers at run time, never the list itself, so following `next`
     * needs no lock.
     */

    auto *peers = static_cast<ngx_http_upstream_rr_peers_t *>(
                      uscf->peer.data);

    if (peers != nullptr && backup) {
        peers = peers->next;
    }

    return peers;
}


bool
dynamic(const ngx_http_upstream_srv_conf_t *uscf)
{
#if (NGX_HTTP_UPSTREAM_ZONE)
    /* the templates of `resolve` lines are set up with the zone, never later */
    auto *peers = static_cast<ngx_http_upstream_rr_peers_t *>(uscf->peer.data);

    return peers != nullptr && peers->shpool != nullptr
           && (peers->resolve != nullptr
               || (peers->next != nullptr && peers->next->resolve != nullptr));
#else
    (void) uscf;
    return false;
#endif
}


long long
peer_id(const ngx_http_upstream_srv_conf_t *uscf, ngx_uint_t position,
    ngx_uint_t generation)
{
    if (!dynamic(uscf)) {
        return static_cast<long long>(position);
    }

    if (position > id_position_mask) {
        return -1;              /* no id: set_peer_down says "bad peer id" */
    }

    return static_cast<long long>(
               (static_cast<unsigned long long>(generation) & id_generation_mask)
               << id_position_bits | position);
}


list_size_t
measure(ngx_http_upstream_rr_peers_t *peers)
{
    peers_read_lock  list_lock(peers);
    list_size_t      size = { 0, 0 };

    for (ngx_http_upstream_rr_peer_t *peer = peers->peer;
         peer != nullptr;
         peer = peer->next)
    {
        size.peers++;
        size.bytes += peer->name.len + peer->server.len;
    }

    return size;
}


bool
snapshot(ngx_http_upstream_rr_peers_t *peers, const snapshot_space_t &space,
    ngx_uint_t *n, ngx_uint_t *gen)
{
    peers_read_lock  list_lock(peers);
    u_char          *p = space.strings;
    u_char          *end = space.strings + space.len;

    *n = 0;
    *gen = locked_generation(peers);

    for (ngx_http_upstream_rr_peer_t *peer = peers->peer;
         peer != nullptr;
         peer = peer->next)
    {
        if (*n == space.max
            || static_cast<size_t>(end - p) < peer->name.len + peer->server.len)
        {
            return false;       /* grew since it was measured */
        }

        peer_lock  lock(peers, peer);

        peer_snapshot_t  &s = space.peers[(*n)++];

        s.name = copy_string(&p, peer->name);
        s.server = copy_string(&p, peer->server);
        s.line = resolve_line_of(peer);
        s.weight = peer->weight;
        s.current_weight = peer->current_weight;
        s.effective_weight = peer->effective_weight;
        s.conns = peer->conns;
        s.fails = peer->fails;
        s.max_fails = peer->max_fails;
        s.fail_timeout = peer->fail_timeout;
        s.accessed = peer->accessed;
        s.checked = peer->checked;
        s.down = peer->down;
    }

    return true;
}


ngx_uint_t
generation(ngx_http_upstream_srv_conf_t *uscf)
{
    ngx_http_upstream_rr_peers_t  *peers = peer_list(uscf, false);

    if (peers == nullptr) {
        return 0;
    }

    peers_read_lock  lock(peers);

    return locked_generation(peers);
}


const void *
resolve_line(ngx_http_upstream_srv_conf_t *uscf, bool backup, ngx_uint_t k)
{
#if (NGX_HTTP_UPSTREAM_ZONE)
    ngx_http_upstream_rr_peers_t  *peers = peer_list(uscf, backup);

    if (peers == nullptr || !dynamic(uscf)) {
        return nullptr;
    }

    /* the templates are in the order of their server lines (rr.c) */
    ngx_http_upstream_rr_peer_t  *tmpl = peers->resolve;

    for (ngx_uint_t i = 0; tmpl != nullptr && i < k; i++) {
        tmpl = tmpl->next;
    }

    return tmpl ? tmpl->host : nullptr;
#else
    (void) uscf;
    (void) backup;
    (void) k;
    return nullptr;
#endif
}


status_t
set_peer_down(ngx_http_upstream_srv_conf_t *uscf, bool backup, long long id,
    bool down)
{
    if (uscf->peer.data == nullptr) {
        return status_t::no_peer_data;
    }

    ngx_http_upstream_rr_peers_t  *peers = peer_list(uscf, backup);

    if (peers == nullptr) {
        return status_t::no_backup;
    }

    if (id < 0) {
        return status_t::bad_peer_id;
    }

    bool        changing = dynamic(uscf);
    ngx_uint_t  position = changing
                           ? static_cast<ngx_uint_t>(id) & id_position_mask
                           : static_cast<ngx_uint_t>(id);

    peers_write_lock  lock(peers);

    if (changing
        && static_cast<unsigned long long>(id) >> id_position_bits
           != (locked_generation(peers) & id_generation_mask))
    {
        /* read before DNS changed the lists: it may name another peer now */
        return status_t::peers_changed;
    }

    if (static_cast<unsigned long long>(id) >= peers->number && !changing) {
        return status_t::bad_peer_id;
    }

    ngx_http_upstream_rr_peer_t  *peer = peers->peer;

    for (ngx_uint_t i = 0; peer != nullptr && i < position; i++) {
        peer = peer->next;
    }

    if (peer == nullptr) {
        return status_t::bad_peer_id;
    }

    mark_down(peer, down);

    return status_t::ok;
}


status_t
set_peer_down_by_name(ngx_http_upstream_srv_conf_t *uscf, bool backup,
    const ngx_str_t &name, bool down)
{
    if (uscf->peer.data == nullptr) {
        return status_t::no_peer_data;
    }

    ngx_http_upstream_rr_peers_t  *peers = peer_list(uscf, backup);

    if (peers == nullptr) {
        return status_t::no_backup;
    }

    peers_write_lock  lock(peers);
    status_t          rc = status_t::peer_not_found;

    for (ngx_http_upstream_rr_peer_t *peer = peers->peer;
         peer != nullptr;
         peer = peer->next)
    {
        if (peer->name.len == name.len
            && ngx_strncmp(peer->name.data, name.data, name.len) == 0)
        {
            mark_down(peer, down);
            rc = status_t::ok;
        }
    }

    return rc;
}


status_t
set_new_peers_down(ngx_http_upstream_srv_conf_t *uscf, bool down)
{
    if (uscf->peer.data == nullptr) {
        return status_t::no_peer_data;
    }

    if (!dynamic(uscf)) {
        return status_t::not_resolved;
    }

#if (NGX_HTTP_UPSTREAM_ZONE)
    for (int b = 0; b < 2; b++) {
        ngx_http_upstream_rr_peers_t  *peers = peer_list(uscf, b == 1);

        if (peers == nullptr) {
            continue;
        }

        /* the resolver copies a template's `down` under this lock (zone.c) */
        peers_write_lock  lock(peers);

        for (ngx_http_upstream_rr_peer_t *tmpl = peers->resolve;
             tmpl != nullptr;
             tmpl = tmpl->next)
        {
            set_failed_bit(tmpl, down);
        }
    }
#endif

    return status_t::ok;
}


} /* namespace ngx_lua_upstream */
