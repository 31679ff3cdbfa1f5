/* models.c - the served model, its reference counts and its reload from
 * model.path (the contract is models.h; DESIGN.md section 10).
 *
 * Writers replace the file by rename (a new inode): a half-written file
 * in place fails its CRC, is counted, and is looked at again once its
 * size or time changes. The file's identity (device, inode, size, mtime)
 * decides whether a periodic check opens it at all; the fingerprint
 * decides whether an opened file is new. Everything here runs on the main
 * thread except acquire/release, which any thread may call (mu guards
 * the current pointer; the batch loop only reads the atomic generation).
 *
 * A replaced model is not released at once: the set keeps it on its held
 * list while anyone else holds it, so that the next model's maps can be
 * fitted from it here (models.h, skip[]); it is released at the first
 * check that finds the set its only holder (every main loop pass), and
 * the maps from it go first.
 *
 * Every model served is kept in model.dir, which pods may share: each
 * worker renews a lease (the kept file's time) on the models it serves,
 * and prune() deletes none whose lease is fresh, whoever holds it. */
#include "models.h"

#include "log.h"
#include "tempname.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <unistd.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* A file's identity: hl_model_file, which has no padding, so ids compare
 * whole with memcmp. */
typedef hl_model_file file_id;

/* Who may read the file: a chmod or chown changes no file_id field, and a
 * file refused as unreadable must be tried again once it is readable. */
typedef struct file_access {
    uint32_t mode, uid, gid;
} file_access;

struct hl_models {
    hl_models_opts   o;
    pthread_mutex_t  mu;
    hl_mref         *cur;                 /* under mu */
    hl_mref         *held;                /* replaced models, newest first: one
                                             reference each (main thread) */
    atomic_ullong    gen;
    int64_t          next_check_ms;
    int64_t          next_lease_ms;       /* the next renew_leases (monotonic) */
    int              lease_failing;       /* a lease could not be renewed (said once) */
    file_id          seen;                /* the file last examined */
    file_access      seen_access;         /* and its mode and owner then */
    int              missing;             /* model.path could not be stat'ed
                                             at the last check (said once) */
    int              seen_set;
    hl_counter      *swaps, *failures, *keep_failures;
    int              unkept;              /* the served model is not in model.dir */
    uint64_t         unkept_fp;           /* (its fingerprint: said once per model) */
    hl_gauge        *loaded_ts, *file_ts, *info;
    hl_gauge        *fit_residual, *fit_shared, *fit_ratio;   /* note_migration */
    uint64_t         host;                /* names keep()'s temporaries (tempname.h) */
    char             info_labels[256];
};

/* The file's identity into id, and its access into acc unless NULL: 0,
 * or -1 when it cannot be stat'ed. */
static int file_stat(const char *path, file_id *id, file_access *acc)
{
    struct stat st;
    memset(id, 0, sizeof *id);
    if (stat(path, &st) != 0)
        return -1;
    if (acc != NULL)
        *acc = (file_access){(uint32_t)st.st_mode, (uint32_t)st.st_uid, (uint32_t)st.st_gid};
    id->dev = (uint64_t)st.st_dev;
    id->ino = (uint64_t)st.st_ino;
    id->size = (int64_t)st.st_size;
    id->mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
    return 0;
}

/* ---- the store: models served, by fingerprint ---------------------------- */

static int kept_path(const hl_models *ms, uint64_t fp, const char *suffix, char *out, size_t len)
{
    return snprintf(out, len, "%s/%016llx.hlm%s", ms->o.store_dir, (unsigned long long)fp,
                    suffix) < (int)len ? 0 : -1;
}

/* mkdir -p: model.dir under a snapshot.dir that does not exist yet. */
static void mkdir_p(const char *dir)
{
    char p[4096];
    snprintf(p, sizeof p, "%s", dir);
    for (char *s = p + 1; *s; s++)
        if (*s == '/') {
            *s = '\0';
            mkdir(p, 0755);
            *s = '/';
        }
    mkdir(p, 0755);
}

/* 1 when the kept file name (<fingerprint>.hlm) is the served model's or
 * a replaced one's still held (users may still be migrating from it). */
static int in_use(const hl_models *ms, const char *name)
{
    uint64_t fp = strtoull(name, NULL, 16);
    for (const hl_mref *r = ms->cur; r != NULL; r = r == ms->cur ? ms->held : r->held_next)
        if (r->mi->fingerprint == fp)
            return 1;
    return 0;
}

/* buf (len bytes) to a new file dst. dst must not exist: it is never
 * opened to truncate, since a file of that name could be a hard link to
 * model.path itself (kept by an older worker on a shared volume), and
 * truncating it would empty the model being served. */
static int write_new(const char *dst, const void *buf, size_t len)
{
    int out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644), rc = -1;
    const char *p = buf;
    ssize_t n = 0;
    if (out < 0)
        return -1;
    for (size_t off = 0; off < len; off += (size_t)n)
        if ((n = write(out, p + off, len - off)) <= 0)
            goto done;
    rc = fsync(out) == 0 ? 0 : -1;
done:
    if (close(out) != 0) rc = -1;
    return rc;
}

/* m, to a new file dst: a copy of m's own bytes (validated when m was
 * read), never a hard link to the file m was read from. A link shares
 * the inode, so a writer who rewrites model.path in place (cp, which
 * truncates and writes) rewrote the kept model with it: the fingerprint
 * check then refused it and the snapshots written under it were rebuilt
 * from their rings instead of migrated. A copy costs the model's size on
 * disk once per kept model. */
static int copy_model(const hl_model *m, const char *dst)
{
    size_t len;
    const void *buf = hl_model_bytes(m, &len);
    return write_new(dst, buf, len);
}

/* 1 when name is a keep() temporary, with its host tag and pid:
 * "<16 hex>.hlm.<host>.<pid>.tmp" (tempname.h), or the old-format
 * "<16 hex>.hlm.<pid>.tmp" of workers before 2026-12-07 (host 0: its pid
 * may be any host's). */
static int temp_name(const char *name, uint64_t *host, long *pid)
{
    size_t len = strlen(name);
    if (len < 26 || strncmp(name + 16, ".hlm.", 5) != 0 || strcmp(name + len - 4, ".tmp") != 0)
        return 0;
    for (int i = 0; i < 16; i++)
        if (strchr("0123456789abcdef", name[i]) == NULL)
            return 0;
    if (hl_tempname_parse(name + 21, host, pid) == 0)
        return 1;
    char *end;
    *host = 0;
    *pid = strtol(name + 21, &end, 10);
    return end == name + len - 4 && *pid > 0 && *pid <= INT32_MAX;
}

/* Removes the temporaries of workers killed while keeping a model: each
 * is a whole model's size, and nothing else would ever remove them. Only
 * those provably abandoned (hl_tempname_abandoned): a crashed one of this
 * host, this process's own (keep() runs on the main thread and renames
 * or removes its own, so none is in flight here), and anyone's unchanged
 * for temp_stale_s, which leaves a worker on another host sharing
 * model.dir (whose pid says nothing here) time to finish a keep() of
 * seconds. At create and after each keep. */
static void sweep_temps(const hl_models *ms)
{
    DIR *d = opendir(ms->o.store_dir);
    struct dirent *de;
    char path[4352];
    time_t now = time(NULL);
    int64_t bound = ms->o.temp_stale_s == 0 ? 3600 : ms->o.temp_stale_s;
    while (d != NULL && (de = readdir(d)) != NULL) {
        uint64_t host;
        long pid;
        if (!temp_name(de->d_name, &host, &pid))
            continue;
        snprintf(path, sizeof path, "%s/%s", ms->o.store_dir, de->d_name);
        if (hl_tempname_abandoned(path, host, pid, ms->host, 1, bound, now) &&
            unlink(path) == 0)
            hl_log(HL_LOG_INFO, "model_temp_removed", "path=%s pid=%ld host=%016llx "
                   "why=\"a worker killed while keeping this model left it\"", path, pid,
                   (unsigned long long)host);
    }
    if (d != NULL)
        closedir(d);
}

/* ---- leases: the models other workers on model.dir serve ----------------
 * model.dir may be one volume shared by many pods, and prune() knows only
 * this worker's models: a pod that swapped ahead deleted the model a pod
 * one swap behind still served, whose restart with a newer model then
 * rebuilt the users of its snapshots from their rings. So the kept file's
 * time is a lease: every worker sets it to now on the files of the models
 * it serves (current and replaced ones still held) every LEASE_RENEW_MS,
 * and prune() deletes no file whose time is within LEASE_S of its own
 * clock, either way, so clocks minutes apart still agree. A crashed pod
 * renews nothing, and its leases go stale in LEASE_S; a replaced model
 * keeps its last lease that long, so a restart soon after a swap still
 * finds the model its snapshots were written under. The volume is all the
 * pods share: no coordination service. */
#define LEASE_S        600         /* ten renewals missed */
#define LEASE_RENEW_MS 60000

/* 1 when a kept file's time st says some worker renewed its lease (or
 * kept it) within LEASE_S of now. */
static int leased(const struct stat *st, time_t now)
{
    int64_t age = (int64_t)now - (int64_t)st->st_mtim.tv_sec;
    return age < LEASE_S && age > -LEASE_S;
}

/* Renews the leases on the kept files of the models served here (the
 * current one, and the replaced ones still held): their time to now. A
 * file gone is not renewed (a replaced model pruned by its age; the
 * current one is copied again by keep()). One not renewed (model.dir
 * read-only, the file another uid's) is said once until renewals succeed
 * again, and serving goes on: another worker may prune that model, as
 * before leases. */
static void renew_leases(hl_models *ms)
{
    char path[4352], failed[4352] = "";
    int err = 0;
    if (ms->o.store_dir == NULL)
        return;
    for (const hl_mref *r = ms->cur; r != NULL; r = r == ms->cur ? ms->held : r->held_next)
        if (kept_path(ms, r->mi->fingerprint, "", path, sizeof path) == 0 &&
            utimensat(AT_FDCWD, path, NULL, 0) != 0 && errno != ENOENT && err == 0) {
            err = errno;
            snprintf(failed, sizeof failed, "%s", path);
        }
    if (err != 0 && !ms->lease_failing)
        hl_log(HL_LOG_WARN, "model_lease_failed", "path=%s err=\"%s\" action=\"make "
               "model.dir writable by every worker sharing it; until then another worker "
               "may prune this model while it is served here, and a restart with a newer "
               "model rebuilds the users of its snapshots from their rings "
               "(halflife_users_rebuilt_total)\"", failed, strerror(err));
    ms->lease_failing = err != 0;
}

/* Deletes the oldest kept models beyond store_retain (by mtime: the last
 * lease renewed), never one in use here or leased by anyone: a kept file
 * may be an older worker's hard link with the model file's own time, so
 * a model put in service from an older file (a rollback, a copy that
 * keeps times) could otherwise be the oldest and go at once, and with it
 * the migration of the snapshots written under it after a restart. */
static void prune(hl_models *ms)
{
    DIR *d = opendir(ms->o.store_dir);
    struct dirent *de;
    char path[4352], oldest[4352];
    time_t now = time(NULL);
    for (;;) {
        int n = 0;
        int64_t t_old = INT64_MAX;
        if (d == NULL) return;
        rewinddir(d);
        while ((de = readdir(d)) != NULL) {
            size_t len = strlen(de->d_name);
            struct stat st;
            if (len != 20 || strcmp(de->d_name + 16, ".hlm") != 0) continue;
            n++;
            if (in_use(ms, de->d_name)) continue;
            snprintf(path, sizeof path, "%s/%s", ms->o.store_dir, de->d_name);
            if (stat(path, &st) != 0) { n--; continue; }
            if (leased(&st, now)) continue;
            int64_t t = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
            if (t < t_old) { t_old = t; snprintf(oldest, sizeof oldest, "%s", path); }
        }
        if (n <= ms->o.store_retain || t_old == INT64_MAX || unlink(oldest) != 0) break;
    }
    closedir(d);
    sweep_temps(ms);
}

/* A served model not kept: counted and said once per model (the next
 * checks try again), with what the operator meets later and can do. */
static void keep_failed(hl_models *ms, uint64_t fp, const char *why)
{
    if (ms->unkept && ms->unkept_fp == fp)
        return;
    ms->unkept = 1;
    ms->unkept_fp = fp;
    hl_counter_add(ms->keep_failures, 1);
    hl_log(HL_LOG_WARN, "model_keep_failed", "dir=%s fingerprint=%016llx err=\"%s\" "
           "action=\"free space in model.dir or make it writable; the copy is tried again "
           "at each model check. Until it is kept, a restart with another model rebuilds the "
           "users of the snapshots written under this one from their rings instead of "
           "migrating them (halflife_users_rebuilt_total)\"", ms->o.store_dir,
           (unsigned long long)fp, why);
}

/* 1 when the kept file dst is a hard link, as workers before 2026-12-07
 * kept a model: to model.path, which a rewrite in place would rewrite
 * too, or to another pod's model.path on the shared volume, whose time
 * renew_leases() must not touch (that pod would reopen its model file at
 * every renewal, and its model age gauge would lie). A copy replaces it. */
static int is_link(const hl_models *ms, const char *dst)
{
    file_id a, b;
    struct stat st;
    if (stat(dst, &st) == 0 && st.st_nlink > 1)
        return 1;
    return ms->o.path != NULL && file_stat(dst, &a, NULL) == 0 &&
           file_stat(ms->o.path, &b, NULL) == 0 && a.dev == b.dev && a.ino == b.ino;
}

/* Keeps the served model src in the store: its own bytes, read back and
 * fingerprinted before the rename publishes them (over a kept hard link
 * to model.path, which the rename replaces with a file of its own). */
static void keep(hl_models *ms, const hl_model *src)
{
    const hl_model_info *mi = hl_model_info_get(src);
    char dst[4352], tmp[4352], err[512] = "";
    /* The temporary name is this process's own: workers sharing model.dir
     * (one volume) keep the same model at once, and must not unlink or
     * overwrite each other's temporary file. Its pid alone was not: pods
     * all run the worker as pid 1, so one pod's unlink below removed
     * another's copy in flight (whose rename then failed, counted as a
     * keep failure) or its rename published the other's half-written one. */
    if (ms->o.store_dir == NULL || kept_path(ms, mi->fingerprint, "", dst, sizeof dst) ||
        hl_tempname_make(tmp, sizeof tmp, dst, ms->host, (long)getpid()) != 0)
        return;
    if (access(dst, F_OK) == 0 && !is_link(ms, dst)) {
        ms->unkept = 0;
        return;
    }
    mkdir_p(ms->o.store_dir);
    unlink(tmp);
    int copied = copy_model(src, tmp) == 0;
    if (!copied)
        snprintf(err, sizeof err, "write: %s", strerror(errno));
    hl_model *m = copied ? hl_model_open(tmp, err, sizeof err) : NULL;
    if (m != NULL && hl_model_info_get(m)->fingerprint == mi->fingerprint &&
        rename(tmp, dst) == 0) {
        /* Gone already, unless another worker on the volume linked the
         * same file at dst since the access() above: a rename() between
         * two links to one file does nothing, and tmp would stay. */
        unlink(tmp);
        hl_log(HL_LOG_INFO, "model_kept", "path=%s fingerprint=%016llx", dst,
               (unsigned long long)mi->fingerprint);
        ms->unkept = 0;
        prune(ms);
    } else {
        if (m != NULL)
            snprintf(err, sizeof err, "%s", hl_model_info_get(m)->fingerprint != mi->fingerprint
                     ? "the copy read back is another model" : strerror(errno));
        keep_failed(ms, mi->fingerprint, err);
        unlink(tmp);
    }
    hl_model_close(m);
}

hl_model *hl_models_open_kept(hl_models *ms, uint64_t fingerprint, char *errbuf, size_t errlen)
{
    char path[4352];
    if (ms->o.store_dir == NULL || kept_path(ms, fingerprint, "", path, sizeof path))
        return hl_err(errbuf, errlen, HL_ENOENT, "no model.dir"), NULL;
    if (access(path, F_OK) != 0)
        return hl_err(errbuf, errlen, HL_ENOENT, "model %016llx is not in %s",
                      (unsigned long long)fingerprint, ms->o.store_dir), NULL;
    hl_model *m = hl_model_open(path, errbuf, errlen);
    if (m != NULL && hl_model_info_get(m)->fingerprint != fingerprint) {
        hl_err(errbuf, errlen, HL_EMISMATCH, "%s holds model %016llx", path,
               (unsigned long long)hl_model_info_get(m)->fingerprint);
        hl_model_close(m);
        return NULL;
    }
    return m;
}

/* 1 when a state of dim, n_heads and half_life_ms is mi's shape. */
static int shape_is(int dim, int n_heads, const double *half_life_ms, const hl_model_info *mi)
{
    return hl_decay_shape_diff(dim, n_heads, half_life_ms, mi->dim, mi->n_heads,
                               mi->half_life_ms) == HL_SHAPE_SAME;
}

int hl_models_same_shape(const hl_model_info *a, const hl_model_info *b)
{
    return shape_is(a->dim, a->n_heads, a->half_life_ms, b);
}

int hl_models_table_fits(const hl_table *tbl, const hl_model_info *mi)
{
    const hl_decay *d = &hl_table_opts_get(tbl)->decay;
    return shape_is(d->dim, d->n_heads, d->half_life_ms, mi);
}

/* The map from cur into m: in place for one shape (the path a same-shape
 * swap always took, bit for bit), else into m's shape (a reshape, when
 * the setup allows it). NULL and a reason when refused or on failure. */
static hl_migration *fit(hl_models *ms, const hl_mref *cur, const hl_model *m,
                         char *errbuf, size_t errlen)
{
    const hl_model_info *a = cur->mi, *b = hl_model_info_get(m);
    if (!hl_models_same_shape(a, b) && ms->o.reshape_refused != NULL) {
        hl_err(errbuf, errlen, HL_EMISMATCH, "another state shape (dim %d -> %d, heads "
               "%d -> %d): %s", a->dim, b->dim, a->n_heads, b->n_heads, ms->o.reshape_refused);
        return NULL;
    }
    return hl_migration_create_any(cur->m, m, cur->tw, errbuf, errlen);
}

/* ---- references --------------------------------------------------------- */

static hl_mref *mref_new(hl_models *ms, hl_model *m, int owned, uint64_t gen)
{
    hl_mref *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->m = m;
    r->mi = hl_model_info_get(m);
    r->gen = gen;
    r->owned = owned;
    atomic_store(&r->refs, 1);
    for (int i = 0; i < HL_N_TYPES; i++) {
        float ov = ms->o.tw_override ? ms->o.tw_override[i] : NAN;
        r->tw[i] = ov == ov ? ov : r->mi->type_weight[i];
    }
    return r;
}

hl_mref *hl_mref_get(hl_mref *r)
{
    atomic_fetch_add(&r->refs, 1);
    return r;
}

void hl_mref_release(hl_mref *r)
{
    if (r == NULL || atomic_fetch_sub(&r->refs, 1) != 1)
        return;
    hl_migration_destroy(r->from_prev);
    for (int i = 0; i < r->n_skip; i++)
        hl_migration_destroy(atomic_load(&r->skip[i].mig));
    if (r->qitems_owned)        /* no ranker holds it: each holds a reference */
        hl_qitems_destroy((hl_qitems *)r->qitems);
    if (r->ivf_owned)
        hl_ivf_destroy((hl_ivf *)r->ivf);
    if (r->owned)
        hl_model_close(r->m);
    free(r);
}

hl_mref *hl_models_acquire(hl_models *ms)
{
    pthread_mutex_lock(&ms->mu);
    hl_mref *r = hl_mref_get(ms->cur);
    pthread_mutex_unlock(&ms->mu);
    return r;
}

uint64_t hl_models_gen(hl_models *ms) { return atomic_load(&ms->gen); }

hl_migration *hl_mref_migration(const hl_mref *to, const hl_mref *from)
{
    /* prev and gen first: from_prev is dropped (drop_maps_from) only once
     * prev has no holder, and a caller holding from == prev reads it then */
    if (to->prev == from && to->gen == from->gen + 1 && to->from_prev != NULL)
        return to->from_prev;
    for (int i = 0; i < to->n_skip; i++)
        if (to->skip[i].from == from && to->skip[i].gen == from->gen)
            return atomic_load(&((hl_mref *)to)->skip[i].mig);
    return NULL;
}

void hl_mref_moving_out(hl_mref *r, int delta)
{
    atomic_fetch_add(&r->moving_out, delta);
}

/* ---- replaced models still in use ---------------------------------------
 * The set's reference to a held model is what keeps the maps from it
 * valid (a map reads the old model's e_in): the maps go before it. */

/* 1 when a thread or shard serves r (into whose space a shard may still
 * have to move users from r): a reference beyond the set's and the
 * shards' moving out of it. refs is read first: a shard drops its
 * moving_out before its reference, so the two never add up to less than
 * the truth (a model wrongly counted as served costs a fit, not a stall). */
static int served(hl_mref *r)
{
    int refs = atomic_load(&r->refs);
    return refs - 1 - atomic_load(&r->moving_out) > 0;
}

/* Every map from `from` held by the current model or a held one. Nothing
 * is migrating with them: that would be a shard holding `from`. */
static void drop_maps_from(hl_models *ms, const hl_mref *from)
{
    for (hl_mref *r = ms->cur; r != NULL; r = r == ms->cur ? ms->held : r->held_next) {
        /* the map from the model r replaced: its delta (or a reshape's
         * pair table) is the old model's items x dim in huge pages, held
         * otherwise for as long as r serves */
        if (r->prev == from && r->gen == from->gen + 1) {
            hl_migration_destroy(r->from_prev);
            r->from_prev = NULL;
        }
        for (int i = 0; i < r->n_skip; i++)
            if (r->skip[i].from == from)
                hl_migration_destroy(atomic_exchange(&r->skip[i].mig, NULL));
    }
}

/* Releases the held models only the set holds now (nobody can take a new
 * reference to one: only the current model is handed out). */
static void release_unused(hl_models *ms)
{
    for (hl_mref **p = &ms->held; *p != NULL;) {
        hl_mref *r = *p;
        if (atomic_load(&r->refs) > 1) {
            p = &r->held_next;
            continue;
        }
        *p = r->held_next;
        drop_maps_from(ms, r);
        hl_mref_release(r);
    }
}

/* The maps into r (model m, not live yet) from every held model still
 * served, newest first and HL_MREF_SKIPS at most: a thread that skips
 * models jumps from one of them. A fit that fails is logged and left to
 * the shard (which fits its own then). Returns the seconds it took. */
static double fit_skips(hl_models *ms, hl_mref *r, const hl_model *m)
{
    char err[512];
    double t0 = hl_now_mono_s();
    for (hl_mref *h = ms->held; h != NULL && r->n_skip < HL_MREF_SKIPS; h = h->held_next) {
        if (!served(h))
            continue;
        hl_migration *mg = fit(ms, h, m, err, sizeof err);
        if (mg == NULL) {
            hl_log(HL_LOG_WARN, "model_skip_fit_failed", "from=\"%s\" to=\"%s\" err=\"%s\" "
                   "action=\"a shard jumping from it fits its own map on its thread\"",
                   h->mi->version, r->mi->version, err);
            continue;
        }
        r->skip[r->n_skip].from = h;
        r->skip[r->n_skip].gen = h->gen;
        atomic_store(&r->skip[r->n_skip].mig, mg);
        r->n_skip++;
    }
    return hl_now_mono_s() - t0;
}

/* ---- metrics ------------------------------------------------------------ */

/* halflife_model_info{version,fingerprint} 1 for the current model only:
 * the previous series leaves /metrics, and the registry (dropped, not
 * hidden: a worker that swaps in each retrain for months would otherwise
 * keep every old label set, walked at each scrape). */
static void show_model(hl_models *ms, const hl_mref *r)
{
    char version[sizeof r->mi->version * 2 + 1];
    if (ms->info != NULL)
        hl_metrics_drop(ms->o.reg, "halflife_model_info", ms->info_labels);
    hl_metrics_escape(version, sizeof version, r->mi->version);
    snprintf(ms->info_labels, sizeof ms->info_labels,
             "version=\"%s\",fingerprint=\"%016llx\",items=\"%d\",dim=\"%d\"", version,
             (unsigned long long)r->mi->fingerprint, (int)r->mi->n_items, r->mi->dim);
    ms->info = hl_metrics_gauge(ms->o.reg, "halflife_model_info",
                                "The model in use (always 1).", ms->info_labels);
    hl_gauge_set(ms->info, 1);
    hl_gauge_set(ms->loaded_ts, (double)time(NULL));
    hl_gauge_set(ms->file_ts, (double)hl_model_file_get(r->m)->mtime_ns / 1e9);
}

/* How well a migration carries users' older history: the map's residual
 * and the items it was fitted over (hl_migration_residual). A model
 * trained on another catalogue shares few of the old one's items;
 * swap_quality.sh's daily retrain (train --init, taobao-sample) fits to
 * 0.40, the same training from scratch to 0.998. */
void hl_models_note_migration(hl_models *ms, const hl_migration *mg, int old_items)
{
    int shared = mg != NULL ? hl_migration_shared(mg) : 0;
    hl_gauge_set(ms->fit_residual, mg != NULL ? hl_migration_residual(mg) : 1);
    hl_gauge_set(ms->fit_shared, shared);
    hl_gauge_set(ms->fit_ratio, old_items > 0 ? (double)shared / old_items : 0);
}

static void register_metrics(hl_models *ms)
{
    hl_metrics *reg = ms->o.reg;
    ms->swaps = hl_metrics_counter(reg, "halflife_model_swaps_total",
        "New models put in service without a restart.", NULL);
    ms->failures = hl_metrics_counter(reg, "halflife_model_swap_failures_total",
        "Changed model files refused (damaged, half-written, or refused by the setup).", NULL);
    ms->keep_failures = hl_metrics_counter(reg, "halflife_model_keep_failures_total",
        "Served models that could not be copied into model.dir (disk full, not writable): "
        "until one is, a restart with another model rebuilds the users of its snapshots "
        "from their rings instead of migrating them.", NULL);
    ms->loaded_ts = hl_metrics_gauge(reg, "halflife_model_loaded_timestamp_seconds",
        "Wall time the model in use was loaded.", NULL);
    /* The model's age for a dashboard: the load time restarts with the pod,
     * the file's time does not (a rename keeps it). */
    ms->file_ts = hl_metrics_gauge(reg, "halflife_model_file_timestamp_seconds",
        "Modification time of model.path when the model in use was read from it: when "
        "the file was written (a rename over model.path keeps it; a restart does not "
        "change it).", NULL);
    /* Before any migration: the identity over the model's items (0, n, 1). */
    ms->fit_residual = hl_metrics_gauge(reg, "halflife_model_migration_residual",
        "The last migration's map (a swap, or a restore of state written under another "
        "model): ||E_old M - E_new|| / ||E_new|| over the items both models know (0 "
        "exact, 1 nothing carried, as in a rebuild from the rings); users' history older "
        "than their ring moved with this error.", NULL);
    ms->fit_shared = hl_metrics_gauge(reg, "halflife_model_migration_shared_items",
        "Items both models of the last migration know: its map is fitted over them.", NULL);
    ms->fit_ratio = hl_metrics_gauge(reg, "halflife_model_migration_shared_ratio",
        "The last migration's shared items over the old model's items.", NULL);
    hl_gauge_set(ms->fit_shared, ms->cur->mi->n_items);
    hl_gauge_set(ms->fit_ratio, 1);
}

/* ---- lifecycle ---------------------------------------------------------- */

hl_models *hl_models_create(const hl_models_opts *o, hl_model *first,
                            char *errbuf, size_t errlen)
{
    hl_models *ms = calloc(1, sizeof *ms);
    if (ms == NULL || (ms->o = *o, ms->cur = mref_new(ms, first, 0, 1)) == NULL) {
        free(ms);
        hl_err(errbuf, errlen, HL_ENOMEM, "models: out of memory");
        return NULL;
    }
    ms->host = o->host_tag != 0 ? o->host_tag : hl_tempname_host();
    ms->cur->qitems = o->first_qitems;
    ms->cur->ivf = o->first_ivf;
    /* Freed with the first model once a swap replaced it and no thread
     * serves it, as every later index and table is: kept to the end, they
     * held a copy of the first model's e_out (the index: 256 MB at 1M
     * items, dim 64; the int8 table: 64 MB) for good. */
    ms->cur->ivf_owned = o->first_ivf != NULL;
    ms->cur->qitems_owned = o->first_qitems != NULL;
    pthread_mutex_init(&ms->mu, NULL);
    atomic_store(&ms->gen, 1);
    /* The file first served, as it was opened: a periodic check opens only
     * a changed one, and a file renamed over the path since (while the
     * index was built, say) is a changed one. */
    ms->seen = *hl_model_file_get(first);
    ms->seen_set = o->path != NULL;
    if (o->path != NULL)
        file_stat(o->path, &(file_id){0}, &ms->seen_access);
    register_metrics(ms);               /* before keep, which may count */
    if (o->store_dir != NULL)
        sweep_temps(ms);                /* a crash's, which keep() may not reach */
    if (o->path != NULL) {
        keep(ms, first);
        renew_leases(ms);           /* kept long ago: ours from now */
    }
    show_model(ms, ms->cur);
    return ms;
}

void hl_models_destroy(hl_models *ms)
{
    if (ms == NULL)
        return;
    /* every thread and shard is gone: no map is in use, and none may
     * outlive the models it reads */
    for (hl_mref *r = ms->held; r != NULL; r = r->held_next)
        drop_maps_from(ms, r);
    while (ms->held != NULL) {
        hl_mref *r = ms->held;
        ms->held = r->held_next;
        hl_mref_release(r);
    }
    hl_mref_release(ms->cur);
    pthread_mutex_destroy(&ms->mu);
    free(ms);
}

/* ---- reload ------------------------------------------------------------- */

static int refuse(hl_models *ms, const char *why)
{
    hl_counter_add(ms->failures, 1);
    hl_log(HL_LOG_WARN, "model_swap_failed", "path=%s err=\"%s\" action=\"the serving "
           "model stays; the file is tried again when it changes (contents, mode or owner) "
           "or on SIGHUP\"", ms->o.path, why);
    return HL_EFORMAT;
}

/* Makes r current (its migrations already fitted); the one it replaces
 * is held while anyone else uses it. */
static void install(hl_models *ms, hl_mref *r, double fit_s, double skip_s)
{
    hl_mref *old;
    pthread_mutex_lock(&ms->mu);
    old = ms->cur;
    ms->cur = r;
    atomic_store(&ms->gen, r->gen);
    pthread_mutex_unlock(&ms->mu);
    if (r->ivf_owned)   /* the served index's recall: left alone, the gauge
                           would go on showing a model no longer served */
        hl_gauge_set(hl_metrics_gauge(ms->o.reg, "halflife_index_recall", NULL,
                                      "check=\"load\""), r->ivf_recall);
    hl_counter_add(ms->swaps, 1);
    show_model(ms, r);
    hl_models_note_migration(ms, r->from_prev, old->mi->n_items);
    hl_log(HL_LOG_INFO, "model_swapped", "path=%s version=\"%s\" fingerprint=%016llx "
           "previous_version=\"%s\" generation=%llu shared_items=%d residual=%.4f "
           "reshaped=%d fit_seconds=%.3f skip_maps=%d skip_fit_seconds=%.3f", ms->o.path,
           r->mi->version, (unsigned long long)r->mi->fingerprint, old->mi->version,
           (unsigned long long)r->gen, hl_migration_shared(r->from_prev),
           hl_migration_residual(r->from_prev), hl_migration_reshapes(r->from_prev), fit_s,
           r->n_skip, skip_s);
    old->held_next = ms->held;
    ms->held = old;
    release_unused(ms);
}

/* Queries per look at the stop flag: a few hundred ms at 1M items. */
#define RECALL_CHUNK 20

double hl_models_index_recall(const hl_model *m, const hl_ivf *ix, int k, int nprobe,
                              const volatile sig_atomic_t *stop)
{
    const hl_model_info *mi = hl_model_info_get(m);
    int n_q = mi->n_items < HL_INDEX_SAMPLE ? (int)mi->n_items : HL_INDEX_SAMPLE;
    float *Q = malloc((size_t)n_q * mi->dim * sizeof(float));
    if (Q == NULL)
        return -1.0;
    for (int i = 0; i < n_q; i++) {
        int64_t j = (int64_t)i * mi->n_items / n_q;       /* evenly spaced rows */
        memcpy(Q + (size_t)i * mi->dim, hl_model_e_out(m) + (size_t)j * mi->dim,
               (size_t)mi->dim * sizeof(float));
    }
    /* The mean over chunks weighted by their sizes is the mean over all. */
    double sum = 0.0;
    for (int i = 0; i < n_q && sum >= 0.0; i += RECALL_CHUNK) {
        int n = n_q - i < RECALL_CHUNK ? n_q - i : RECALL_CHUNK;
        double r = stop != NULL && *stop ? -1.0
                                         : hl_ivf_recall(ix, Q + (size_t)i * mi->dim, n, k, nprobe);
        sum = r < 0.0 ? -1.0 : sum + r * n;
    }
    free(Q);
    return sum < 0.0 ? -1.0 : sum / n_q;
}

/* A swapped-in model's index: its recall at load, logged, and kept for
 * install to export once the model is live (a swap refused after this
 * must leave the served model's). */
static void index_loaded(hl_models *ms, hl_mref *r, double build_s)
{
    const hl_model_info *mi = r->mi;
    int np = ms->o.ivf_nprobe, nl = hl_ivf_nlist(r->ivf);   /* as the rankers clamp it */
    np = np == 0 ? hl_ivf_default_nprobe(r->ivf) : np < nl ? np : nl;
    /* At start such settings are refused; a model swapped in with fewer
     * items than they fit is served anyway, with the change said. */
    if ((ms->o.ivf_nlist > 0 && ms->o.ivf_nlist != nl) || ms->o.ivf_nprobe > nl)
        hl_log(HL_LOG_WARN, "index_settings_reduced", "model_version=\"%s\" items=%d "
               "nlist_asked=%d nlist=%d nprobe_asked=%d nprobe=%d why=\"more lists than the "
               "swapped-in model's items allow\"", mi->version, (int)mi->n_items,
               ms->o.ivf_nlist, nl, ms->o.ivf_nprobe, np);
    double t1 = hl_now_mono_s(), recall = hl_models_index_recall(r->m, r->ivf, ms->o.ivf_k, np,
                                                                ms->o.stop);
    r->ivf_recall = recall;
    hl_log(HL_LOG_INFO, "index", "mode=ivf items=%d nlist=%d nprobe=%d build_s=%.2f "
           "bytes=%zu recall_at_%d=%.4f sample=%d recall_s=%.2f model_version=\"%s\" "
           "swapped_in=1", (int)mi->n_items, nl, np, build_s, hl_ivf_bytes(r->ivf),
           ms->o.ivf_k, recall, mi->n_items < HL_INDEX_SAMPLE ? (int)mi->n_items
                                                           : HL_INDEX_SAMPLE,
           hl_now_mono_s() - t1, mi->version);
}

/* The new model's scoring tables, before it goes live: a ranker over
 * r->m with the old model's int8 table or index would rank other items.
 * The index takes a while at millions of items (about 23 s at 1M, one
 * core): the shard threads serve the current model meanwhile, the main
 * loop waits. */
static int scoring_tables(hl_models *ms, hl_mref *r, char *errbuf, size_t errlen)
{
    const hl_model_info *mi = r->mi;
    if (ms->o.first_qitems != NULL) {
        r->qitems = hl_qitems_create(hl_model_e_out(r->m), hl_model_bias(r->m), mi->n_items,
                                     mi->dim, HL_QKERNEL_AUTO, errbuf, errlen);
        r->qitems_owned = 1;
        if (r->qitems == NULL)
            return HL_EINVAL;
    }
    if (ms->o.first_ivf != NULL) {
        hl_ivf_opts io = {.nlist = ms->o.ivf_nlist <= mi->n_items ? ms->o.ivf_nlist : 0,
                          .stop = ms->o.stop};
        double t0 = hl_now_mono_s();
        hl_log(HL_LOG_INFO, "index_building", "mode=ivf items=%d dim=%d swap=1",
               (int)mi->n_items, mi->dim);
        r->ivf = hl_ivf_create(hl_model_e_out(r->m), hl_model_bias(r->m), mi->n_items,
                               mi->dim, &io, errbuf, errlen);
        r->ivf_owned = 1;
        if (r->ivf == NULL)
            return HL_EINVAL;
        index_loaded(ms, r, hl_now_mono_s() - t0);
    }
    return 0;
}

static int stop_asked(const hl_models *ms)
{
    return ms->o.stop != NULL && *ms->o.stop;
}

/* A stop came while a new model's scoring tables were built: not a failure
 * (not counted), and the file is not held against: the next start reads it. */
static int swap_stopped(hl_models *ms)
{
    hl_log(HL_LOG_INFO, "model_swap_stopped", "path=%s why=\"stopping: the swap's scoring "
           "tables (index build, recall check) were cut short\" action=\"the serving model "
           "stays until the exit; the next start loads the file\"", ms->o.path);
    return 0;
}

/* Opens, validates and fits the file at path against the current model. */
static int load(hl_models *ms)
{
    char err[512];
    hl_model *m = hl_model_open(ms->o.path, err, sizeof err);
    if (m == NULL)
        return refuse(ms, err);
    ms->seen = *hl_model_file_get(m);   /* what was read, if renamed over since the stat */
    hl_mref *cur = ms->cur;         /* only this thread replaces it */
    if (hl_model_info_get(m)->fingerprint == cur->mi->fingerprint) {
        hl_log(HL_LOG_INFO, "model_unchanged", "path=%s fingerprint=%016llx", ms->o.path,
               (unsigned long long)cur->mi->fingerprint);
        hl_model_close(m);
        return 0;
    }
    hl_mref *r = mref_new(ms, m, 1, cur->gen + 1);
    if (r == NULL) {
        hl_model_close(m);
        return refuse(ms, "out of memory");
    }
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    r->from_prev = fit(ms, cur, m, err, sizeof err);
    r->prev = cur;
    clock_gettime(CLOCK_MONOTONIC, &b);
    if (r->from_prev == NULL) {
        hl_mref_release(r);
        return refuse(ms, err);
    }
    double skip_s = fit_skips(ms, r, m);
    if (scoring_tables(ms, r, err, sizeof err) != 0 || stop_asked(ms)) {
        int stopped = stop_asked(ms);
        hl_mref_release(r);
        return stopped ? swap_stopped(ms) : refuse(ms, err);
    }
    if (ms->o.before_live != NULL &&
        ms->o.before_live(ms->o.before_live_arg, r, err, sizeof err) != 0) {
        hl_mref_release(r);
        return refuse(ms, err);
    }
    install(ms, r, (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9,
            skip_s);
    keep(ms, r->m);
    renew_leases(ms);               /* a rollback's kept file may be long stale */
    return 1;
}

int hl_models_check(hl_models *ms, int64_t now_ms, int force)
{
    file_id id;
    file_access acc;
    release_unused(ms);             /* every pass: a replaced model goes soon */
    if (ms->o.path == NULL)
        return 0;
    if (ms->o.store_dir != NULL && now_ms >= ms->next_lease_ms) {
        ms->next_lease_ms = now_ms + LEASE_RENEW_MS;
        keep(ms, ms->cur->m);       /* copied again if gone from model.dir */
        renew_leases(ms);
    }
    if (!force && (ms->o.check_ms <= 0 || now_ms < ms->next_check_ms))
        return 0;
    ms->next_check_ms = now_ms + ms->o.check_ms;
    if (ms->unkept)
        keep(ms, ms->cur->m);       /* space freed, permissions fixed: kept now */
    if (file_stat(ms->o.path, &id, &acc) != 0) {
        /* a rename never leaves the path missing: deleted, or a broken or
         * looping symlink. Said once per loss (and on each SIGHUP), since a
         * restart would find no model to start with. */
        if (force || !ms->missing)
            hl_log(HL_LOG_WARN, "model_check_failed", "path=%s err=\"cannot stat: %s\" "
                   "action=\"the serving model stays; put a model file back at the path, "
                   "or the worker cannot start again\"", ms->o.path, strerror(errno));
        ms->missing = 1;
        return 0;
    }
    ms->missing = 0;
    if (!force && ms->seen_set && memcmp(&id, &ms->seen, sizeof id) == 0 &&
        memcmp(&acc, &ms->seen_access, sizeof acc) == 0)
        return 0;
    ms->seen = id;
    ms->seen_access = acc;
    ms->seen_set = 1;
    return load(ms);
}
