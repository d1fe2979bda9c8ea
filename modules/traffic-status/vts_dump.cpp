/*
 * traffic-status: vhost_traffic_status_dump.  Saves every entry to PATH
 * (worker 0 every PERIOD and on exit, the master on exit) and restores
 * them when the zone is created.
 *
 * File: header { magic, sizeof(stats), start_msec, writer's master pid,
 * flags } (5 x u64; version 1 files have the first 3), then per entry
 * { kind, group_len, name_len } (3 x u32), the stats as they are in
 * memory, the group and name bytes.  Written to a new PATH.<random>.tmp
 * (O_EXCL|O_NOFOLLOW), fsync'ed, then renamed over PATH; PATH itself must
 * be a regular file or absent (never followed, never opened to write).
 *
 * Binary upgrade (USR2): the new binary's first zone is not restored when
 * it starts, because the old master keeps counting until QUIT; its worker
 * 0 instead polls PATH every second and, once the old master's final dump
 * (flag FINAL, the old master's pid) is there (or the old master is gone:
 * no such process, or a zombie nobody reaped, as a SIGKILLed master under
 * a parent that never waits), adds it (else the last periodic dump written
 * under the old master) into the live zone.  A worker whose master is gone
 * writes no more dumps.  Until then the new generation writes no
 * dump, so the old one's stays whole.
 */

#include "vts_conf.h"

#define NGX_HTTP_VTS_DUMP_MAGIC1  0x3153545650474e4eULL  /* "NNGPVTS1" */
#define NGX_HTTP_VTS_DUMP_MAGIC   0x3253545650474e4eULL  /* "NNGPVTS2" */
#define NGX_HTTP_VTS_DUMP_HDR     5
#define NGX_HTTP_VTS_DUMP_FINAL   1     /* a master's dump when it exits */
#define NGX_HTTP_VTS_UPGRADE_POLL 1000

/* in a record's kind word: a server zone keyed by server_name, not by a
   Host (dumps without the flag restore every server zone under the Host
   cap, which errs on the safe side) */
#define NGX_HTTP_VTS_DUMP_NOT_HOST  0x100

namespace {

typedef ngx_http_vts_stats_t  stats_t;

ngx_event_t  dump_event;
ngx_event_t  upgrade_event;
bool         zone_created;      /* this process already created a zone */


size_t
record_size(ngx_http_vts_node_t *n)
{
    return 3 * sizeof(uint32_t) + sizeof(stats_t) + n->group_len + n->name_len;
}


/* the file's bytes, from a snapshot in creation order */
u_char *
serialize(ngx_http_vts_store_t *store, ngx_pool_t *pool, ngx_log_t *log,
    size_t *size, bool final)
{
    ngx_http_vts_snapshot_t snap;

    if (ngx_http_vts_store_snapshot(store, pool, &snap, false) != NGX_OK) {
        return nullptr;
    }
    *size = NGX_HTTP_VTS_DUMP_HDR * sizeof(uint64_t);
    for (ngx_uint_t i = 0; i < snap.n; i++) {
        *size += record_size(snap.nodes[i]);
    }

    u_char *buf = (u_char *) ngx_alloc(*size, log);
    if (buf == nullptr) {
        return nullptr;
    }
    uint64_t master = (ngx_process == NGX_PROCESS_WORKER) ? ngx_parent
                                                          : ngx_pid;
    uint64_t hdr[NGX_HTTP_VTS_DUMP_HDR] = {
        NGX_HTTP_VTS_DUMP_MAGIC, sizeof(stats_t), snap.start_msec, master,
        final ? (uint64_t) NGX_HTTP_VTS_DUMP_FINAL : 0 };
    u_char *p = ngx_cpymem(buf, hdr, sizeof(hdr));

    for (ngx_uint_t i = 0; i < snap.n; i++) {
        ngx_http_vts_node_t *n = snap.nodes[i];
        uint32_t kind = n->kind;
        if (n->kind == NGX_HTTP_VTS_SERVER
            && n->cap_class != NGX_HTTP_VTS_CAP_HOST)
        {
            kind |= NGX_HTTP_VTS_DUMP_NOT_HOST;
        }
        uint32_t rec[3] = { kind, n->group_len, n->name_len };
        stats_t st;
        ngx_http_vts_read_stats(&st, &n->stats);
        p = ngx_cpymem(p, rec, sizeof(rec));
        p = ngx_cpymem(p, &st, sizeof(st));
        p = ngx_cpymem(p, n->data, n->group_len + n->name_len);
    }
    return buf;
}


/* refuses a PATH that exists and is not a regular file (a symlink, a FIFO,
   a device): lstat never opens it, so it cannot block */
bool
path_is_regular_or_absent(ngx_str_t *path, ngx_log_t *log)
{
    struct stat sb;

    if (lstat((const char *) path->data, &sb) == -1) {
        return ngx_errno == NGX_ENOENT;
    }
    if (!S_ISREG(sb.st_mode)) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "vhost_traffic_status: dump \"%V\" is not a regular "
                      "file, not written", path);
        return false;
    }
    return true;
}


/* PATH.<16 random hex digits>.tmp, created O_EXCL|O_NOFOLLOW in PATH's
   directory: a name another user can neither predict nor pre-create, and
   never a file reached through a symlink */
ngx_fd_t
create_temp(ngx_str_t *path, u_char *tmp, size_t size, ngx_log_t *log)
{
    for (int attempt = 0; attempt < 8; attempt++) {
        uint64_t rnd;
        if (getentropy(&rnd, sizeof(rnd)) != 0) {
            rnd = ((uint64_t) ngx_random() << 32) ^ (uint64_t) ngx_random()
                  ^ (uint64_t) ngx_pid;
        }
        u_char *last = ngx_snprintf(tmp, size - 1, "%V.%016xL.tmp", path,
                                    rnd);
        *last = '\0';
        ngx_fd_t fd = open((const char *) tmp,
                           O_WRONLY|O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC, 0600);
        if (fd != NGX_INVALID_FILE || ngx_errno != NGX_EEXIST) {
            if (fd == NGX_INVALID_FILE) {
                ngx_log_error(NGX_LOG_ERR, log, ngx_errno,
                              "vhost_traffic_status: cannot create \"%s\"",
                              tmp);
            }
            return fd;
        }
    }
    ngx_log_error(NGX_LOG_ERR, log, 0,
                  "vhost_traffic_status: cannot create a temporary file "
                  "next to \"%V\"", path);
    return NGX_INVALID_FILE;
}


bool
write_all(ngx_fd_t fd, u_char *buf, size_t size)
{
    while (size > 0) {
        ssize_t n = write(fd, buf, size);
        if (n == -1 && ngx_errno == NGX_EINTR) {
            continue;
        }
        if (n <= 0) {
            return false;
        }
        buf += n;
        size -= n;
    }
    return true;
}


/* the master (root) writes the dump owned by the workers' user, like the
   workers' own dumps: worker 0 of a new binary reads it after a binary
   upgrade (a 0600 file of root's would be unreadable to it) */
bool
owned_by_workers(ngx_fd_t fd)
{
    ngx_core_conf_t *ccf = (ngx_core_conf_t *)
        ngx_get_conf(ngx_cycle->conf_ctx, ngx_core_module);

    if (geteuid() != 0 || ccf == nullptr
        || ccf->user == (ngx_uid_t) NGX_CONF_UNSET_UINT)
    {
        return true;
    }
    return fchown(fd, ccf->user, ccf->group) == 0;
}


/* temp file -> write -> fsync -> rename over PATH: a reader sees the old
   dump or the new one, never a part */
ngx_int_t
write_file(ngx_str_t *path, u_char *buf, size_t size, ngx_log_t *log)
{
    u_char tmp[NGX_MAX_PATH];

    if (!path_is_regular_or_absent(path, log)) {
        return NGX_ERROR;
    }
    ngx_fd_t fd = create_temp(path, tmp, sizeof(tmp), log);
    if (fd == NGX_INVALID_FILE) {
        return NGX_ERROR;
    }

    const char *failed = nullptr;
    if (!owned_by_workers(fd)) {
        failed = "chown";
    } else if (!write_all(fd, buf, size)) {
        failed = "write";
    } else if (fsync(fd) == -1) {
        failed = "fsync";
    }
    ngx_close_file(fd);
    if (failed == nullptr
        && ngx_rename_file(tmp, path->data) == NGX_FILE_ERROR)
    {
        failed = "rename";
    }
    if (failed) {
        ngx_log_error(NGX_LOG_ERR, log, ngx_errno,
                      "vhost_traffic_status: cannot %s \"%s\"", failed, tmp);
        ngx_delete_file(tmp);
        return NGX_ERROR;
    }
    return NGX_OK;
}


/* the whole file in a heap buffer; nullptr when missing or unreadable */
u_char *
read_file(ngx_str_t *path, ngx_log_t *log, ssize_t *size)
{
    /* O_NONBLOCK: a FIFO at PATH must not block the start; it is then
       refused, like anything that is not a regular file */
    ngx_fd_t fd = open((const char *) path->data,
                       O_RDONLY|O_NONBLOCK|O_NOFOLLOW|O_CLOEXEC);
    if (fd == NGX_INVALID_FILE) {
        if (ngx_errno != NGX_ENOENT) {
            ngx_log_error(NGX_LOG_WARN, log, ngx_errno,
                          "vhost_traffic_status: cannot open dump \"%V\"",
                          path);
        }
        return nullptr;
    }

    ngx_file_info_t fi;
    u_char *buf = nullptr;
    *size = 0;
    if (ngx_fd_info(fd, &fi) != NGX_FILE_ERROR && !S_ISREG(fi.st_mode)) {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "vhost_traffic_status: dump \"%V\" is not a regular "
                      "file, ignored", path);
        ngx_close_file(fd);
        return nullptr;
    }
    if (ngx_fd_info(fd, &fi) != NGX_FILE_ERROR) {
        *size = (ssize_t) ngx_file_size(&fi);
        buf = (u_char *) ngx_alloc(*size ? *size : 1, log);
    }
    if (buf == nullptr || read(fd, buf, *size) != *size) {
        ngx_log_error(NGX_LOG_WARN, log, ngx_errno,
                      "vhost_traffic_status: cannot read dump \"%V\"", path);
        ngx_close_file(fd);
        if (buf) {
            ngx_free(buf);
        }
        return nullptr;
    }
    ngx_close_file(fd);
    return buf;
}


/* the cap a restored entry counts against, as if it were created now */
uint8_t
restore_class(ngx_http_vts_store_t *store, uint32_t kind, ngx_str_t *group)
{
    switch (kind & 0xff) {
    case NGX_HTTP_VTS_SERVER:
        return (kind & NGX_HTTP_VTS_DUMP_NOT_HOST) ? NGX_HTTP_VTS_CAP_NONE
                                                   : NGX_HTTP_VTS_CAP_HOST;
    case NGX_HTTP_VTS_FILTER:
        return ngx_http_vts_store_filter_class(store, group);
    default:
        return NGX_HTTP_VTS_CAP_NONE;
    }
}


struct dump_header_t {
    uint64_t  start_msec;
    uint64_t  master;       /* the writer's master pid (0: version 1) */
    uint64_t  flags;
};


/* the header's size, 0 when p does not start a dump of this build */
size_t
parse_header(const u_char *p, const u_char *end, dump_header_t *h)
{
    uint64_t w[NGX_HTTP_VTS_DUMP_HDR] = {};
    size_t have = ngx_min((size_t) (end - p), sizeof(w));

    ngx_memcpy(w, p, have);
    if (have < 3 * sizeof(uint64_t) || w[1] != sizeof(stats_t)) {
        return 0;
    }
    h->start_msec = w[2];
    h->master = h->flags = 0;
    if (w[0] == NGX_HTTP_VTS_DUMP_MAGIC1) {
        return 3 * sizeof(uint64_t);
    }
    if (w[0] != NGX_HTTP_VTS_DUMP_MAGIC || have < sizeof(w)) {
        return 0;
    }
    h->master = w[3];
    h->flags = w[4];
    return sizeof(w);
}


/* the entries of a dump into the store: restored into a new zone, or
   (merge) added into a live one; false when the file is not valid */
bool
restore(ngx_http_vts_store_t *store, u_char *p, u_char *end, bool merge,
    ngx_uint_t *restored)
{
    dump_header_t hdr;
    size_t hlen = parse_header(p, end, &hdr);

    if (hlen == 0) {
        return false;
    }
    p += hlen;
    ngx_http_vts_store_set_start(store, hdr.start_msec);

    while (p < end) {
        uint32_t rec[3];   /* kind, group_len, name_len */
        stats_t st;

        if ((size_t) (end - p) < sizeof(rec) + sizeof(st)) {
            return false;
        }
        ngx_memcpy(rec, p, sizeof(rec));
        p += sizeof(rec);
        ngx_memcpy(&st, p, sizeof(st));
        p += sizeof(st);
        if (rec[1] > 65535 || rec[2] > NGX_HTTP_VTS_NAME_MAX
            || (size_t) (end - p) < (size_t) rec[1] + rec[2]
            || st.nbuckets > NGX_HTTP_VTS_BUCKET_MAX)
        {
            return false;
        }
        ngx_str_t group = { rec[1], p };
        ngx_str_t name = { rec[2], p + rec[1] };
        p += rec[1] + rec[2];

        uint8_t cls = restore_class(store, rec[0], &group);
        ngx_int_t rc = merge
            ? ngx_http_vts_store_merge(store, (uint8_t) rec[0], &group, &name,
                                       &st, cls)
            : ngx_http_vts_store_restore(store, (uint8_t) rec[0], &group,
                                         &name, &st, cls);
        if (rc == NGX_ABORT) {
            break;                      /* the rest is for new keys */
        }
        if (rc == NGX_OK) {
            (*restored)++;
        }
    }
    return true;
}


/* reads PATH into the store (merge: adds); logs what happened */
void
load_dump(ngx_http_vts_main_conf_t *vmcf, bool merge, ngx_log_t *log)
{
    ssize_t size;
    ngx_uint_t restored = 0;

    u_char *buf = read_file(&vmcf->dump_path, log, &size);
    if (buf == nullptr) {
        return;
    }
    if (restore(&vmcf->store, buf, buf + size, merge, &restored)) {
        ngx_log_error(NGX_LOG_NOTICE, log, 0,
                      "vhost_traffic_status: %s %ui entries from \"%V\"",
                      merge ? "merged" : "restored", restored,
                      &vmcf->dump_path);
    } else {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "vhost_traffic_status: dump \"%V\" is not valid, ignored",
                      &vmcf->dump_path);
    }
    ngx_free(buf);
}


/* the header of PATH without reading the rest (false: none or invalid) */
bool
read_header(ngx_str_t *path, dump_header_t *h)
{
    u_char w[NGX_HTTP_VTS_DUMP_HDR * sizeof(uint64_t)];
    ngx_fd_t fd = open((const char *) path->data,
                       O_RDONLY|O_NONBLOCK|O_NOFOLLOW|O_CLOEXEC);
    if (fd == NGX_INVALID_FILE) {
        return false;
    }
    ngx_file_info_t fi;
    ssize_t n = -1;
    if (ngx_fd_info(fd, &fi) != NGX_FILE_ERROR && S_ISREG(fi.st_mode)) {
        n = read(fd, w, sizeof(w));
    }
    ngx_close_file(fd);
    return n > 0 && parse_header(w, w + n, h) != 0;
}


/* a killed process that its parent has not reaped yet (a shell, a
   container's init that never waits) still answers kill(pid, 0): on
   Linux its state in /proc/PID/stat is Z (zombie) or X (dead) */
bool
process_is_zombie(ngx_pid_t pid)
{
    u_char path[64], buf[512];

    ngx_sprintf(path, "/proc/%P/stat%Z", pid);
    ngx_fd_t fd = open((const char *) path, O_RDONLY|O_CLOEXEC);
    if (fd == NGX_INVALID_FILE) {
        return false;
    }
    ssize_t n = read(fd, buf, sizeof(buf));
    ngx_close_file(fd);
    if (n <= 0) {
        return false;
    }
    /* "PID (COMM) STATE ...": COMM may hold ')', the last one ends it */
    u_char *p = buf + n;
    while (p > buf && p[-1] != ')') {
        p--;
    }
    return p > buf && p + 1 < buf + n
           && (p[1] == 'Z' || p[1] == 'X');
}


bool
process_gone(ngx_pid_t pid)
{
    if (kill(pid, 0) == -1 && ngx_errno == NGX_ESRCH) {
        return true;
    }
    return process_is_zombie(pid);
}


/* a worker whose master is gone (killed: its workers were reparented)
   writes no more dumps: a new generation's dumps must not be overwritten
   by an orphan of the old one (issue 26) */
bool
master_gone()
{
    return ngx_process == NGX_PROCESS_WORKER && getppid() != ngx_parent;
}


/* worker 0 after a binary upgrade: once the old master has written its
   final dump (or is gone), adds that dump into the live zone, and writes
   the sum as this generation's first dump */
void
upgrade_handler(ngx_event_t *ev)
{
    ngx_http_vts_main_conf_t *vmcf = (ngx_http_vts_main_conf_t *) ev->data;
    ngx_http_vts_store_t *store = &vmcf->store;
    ngx_pid_t old = (ngx_pid_t) ngx_http_vts_store_upgrade_from(store);
    dump_header_t h;

    if (old == 0) {
        return;                         /* merged by an earlier worker 0 */
    }
    bool have = read_header(&vmcf->dump_path, &h);
    bool final = have && h.master == (uint64_t) old
                 && (h.flags & NGX_HTTP_VTS_DUMP_FINAL);

    if (!final && !process_gone(old)) {
        if (!ngx_exiting && !ngx_terminate && !ngx_quit) {
            ngx_add_timer(ev, NGX_HTTP_VTS_UPGRADE_POLL);
        }
        return;
    }
    /* the old master's last word: its final dump, else (killed) the last
       one written under it; a dump of anyone else is not the old counts */
    if (have && (h.master == (uint64_t) old || h.master == 0)) {
        load_dump(vmcf, true, ev->log);
    } else {
        ngx_log_error(NGX_LOG_NOTICE, ev->log, 0,
                      "vhost_traffic_status: master %P left no dump to merge",
                      old);
    }
    ngx_http_vts_store_set_upgrade_from(store, 0);
    ngx_http_vts_dump_save(vmcf, ev->log, false);
}


void
dump_handler(ngx_event_t *ev)
{
    ngx_http_vts_main_conf_t *vmcf = (ngx_http_vts_main_conf_t *) ev->data;

    if (master_gone()) {
        ngx_log_error(NGX_LOG_WARN, ev->log, 0,
                      "vhost_traffic_status: master %P is gone, this worker "
                      "writes no more dumps", ngx_parent);
        return;
    }
    ngx_http_vts_dump_save(vmcf, ev->log, false);
    if (!ngx_exiting && !ngx_terminate && !ngx_quit) {
        ngx_add_timer(ev, vmcf->dump_period);
    }
}

} // namespace


ngx_int_t
ngx_http_vts_dump_save(ngx_http_vts_main_conf_t *vmcf, ngx_log_t *log,
    bool final)
{
    if (ngx_http_vts_store_upgrade_from(&vmcf->store)) {
        /* the old master's dump is not merged yet: it stays as it is */
        return NGX_DECLINED;
    }
    ngx_pool_t *pool = ngx_create_pool(NGX_DEFAULT_POOL_SIZE, log);
    if (pool == nullptr) {
        return NGX_ERROR;
    }
    size_t size;
    u_char *buf = serialize(&vmcf->store, pool, log, &size, final);
    ngx_destroy_pool(pool);
    if (buf == nullptr) {
        return NGX_ERROR;
    }
    ngx_int_t rc = write_file(&vmcf->dump_path, buf, size, log);
    ngx_free(buf);
    return rc;
}


void
ngx_http_vts_dump_restore(ngx_http_vts_store_t *store, void *data,
    ngx_log_t *log)
{
    ngx_http_vts_main_conf_t *vmcf = (ngx_http_vts_main_conf_t *) data;
    bool first = !zone_created;

    zone_created = true;
    /* the first zone of a binary started by USR2 (it inherited the
       listening sockets; its parent is the old master, still counting):
       the old master's final dump is merged later, by worker 0 */
    if (first && ngx_inherited && ngx_parent > 1) {
        ngx_http_vts_store_set_upgrade_from(store, (uint64_t) ngx_parent);
        ngx_log_error(NGX_LOG_NOTICE, log, 0,
                      "vhost_traffic_status: binary upgrade, the dump of "
                      "master %P is merged when it exits", ngx_parent);
        return;
    }
    load_dump(vmcf, false, log);
}


void
ngx_http_vts_dump_start_timer(ngx_http_vts_main_conf_t *vmcf,
    ngx_cycle_t *cycle)
{
    ngx_memzero(&dump_event, sizeof(dump_event));
    dump_event.handler = dump_handler;
    dump_event.data = vmcf;
    dump_event.log = cycle->log;
    dump_event.cancelable = 1;
    ngx_add_timer(&dump_event, vmcf->dump_period);

    if (ngx_http_vts_store_upgrade_from(&vmcf->store)) {
        ngx_memzero(&upgrade_event, sizeof(upgrade_event));
        upgrade_event.handler = upgrade_handler;
        upgrade_event.data = vmcf;
        upgrade_event.log = cycle->log;
        upgrade_event.cancelable = 1;
        ngx_add_timer(&upgrade_event, NGX_HTTP_VTS_UPGRADE_POLL);
    }
}
