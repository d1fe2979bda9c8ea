
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
     * backup list hangs off the primary one and is never changed at run
     * time, so following `next` needs no lock.
     */

    auto *peers = static_cast<ngx_http_upstream_rr_peers_t *>(
                      uscf->peer.data);

    if (peers != nullptr && backup) {
        peers = peers->next;
    }

    return peers;
}


ngx_uint_t
snapshot(ngx_http_upstream_rr_peers_t *peers, peer_snapshot_t *out,
    ngx_uint_t max)
{
    peers_read_lock  list_lock(peers);
    ngx_uint_t       n = 0;

    for (ngx_http_upstream_rr_peer_t *peer = peers->peer;
         peer != nullptr && n < max;
         peer = peer->next, n++)
    {
        peer_lock  lock(peers, peer);

        peer_snapshot_t  &s = out[n];

        s.name = peer->name;
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

    return n;
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

    if (id < 0 || static_cast<unsigned long long>(id) >= peers->number) {
        return status_t::bad_peer_id;
    }

    peers_write_lock  lock(peers);

    ngx_http_upstream_rr_peer_t  *peer = peers->peer;

    for (long long i = 0; peer != nullptr && i < id; i++) {
        peer = peer->next;
    }

    if (peer == nullptr) {
        return status_t::bad_peer_id;
    }

    /* only the failed bit: a draining peer stays draining */
    if (down) {
        peer->down |= NGX_HTTP_UPSTREAM_FAILED;

    } else {
        peer->down &= ~static_cast<ngx_uint_t>(NGX_HTTP_UPSTREAM_FAILED);
        peer->fails = 0;
    }

    return status_t::ok;
}


} /* namespace ngx_lua_upstream */
