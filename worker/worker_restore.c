/* worker_restore.c - a partition's state when it is handed to the worker
 * (DESIGN.md section 6): its newest valid snapshot, its changelog (with
 * state.store=kafka, the snapshot read first as a cache), or both; rows
 * written under another model migrated into the current one, or rebuilt
 * from their rings when that model is gone. Main thread only, inside the
 * consumer's rebalance callback (worker_rebalance.c), which then hands the
 * table to a shard. */
#include "worker_internal.h"

/* The model served now (the main thread is the one that changes it). */
static const hl_model *cur_model(hl_worker *w)
{
    hl_mref *r = hl_models_acquire(w->models);
    const hl_model *m = r->m;
    hl_mref_release(r);         /* the set still holds it */
    return m;
}

/* 1 when tbl's state shape (dim, heads, half-lives) is not mi's: a
 * restart with a model of another shape. */
static int other_shape(const hl_table *tbl, const hl_model_info *mi)
{
    return !hl_models_table_fits(tbl, mi);
}

/* The weights per event type rows of model old were built with. */
static void old_type_weights(const hl_worker *w, const hl_model *old, float tw[HL_N_TYPES])
{
    for (int i = 0; i < HL_N_TYPES; i++) {
        float ov = w->o.has_type_weight ? w->o.type_weight[i] : NAN;
        tw[i] = ov == ov ? ov : hl_model_info_get(old)->type_weight[i];
    }
}

/* hl_changelog_opts.reshape (arg: the worker): changelog rows naming model
 * fp, read by a restore. A kept model of another shape than the current
 * one: its migration into the current model (hl_migration_create_any, as
 * migrate_restored makes for a snapshot); a kept one of the same shape: 1,
 * the rows load as they are and changelog_migrate moves them after the
 * read; a model not kept: a rebuild from the rings alone (the shape is
 * then unknown: the restore loads a row that fits the current shape as
 * it is, as before, and rebuilds one that does not). Main thread, inside
 * the restore. */
int hl_worker_changelog_reshape(void *arg, uint64_t fp, hl_changelog_reshape *out)
{
    hl_worker *w = arg;
    char why[512] = "", err[256];
    hl_mref *cur = hl_models_acquire(w->models);
    hl_model *old = hl_models_open_kept(w->models, fp, why, sizeof why);
    int rc = 0;
    float tw[HL_N_TYPES];
    memset(out, 0, sizeof *out);
    if (old != NULL && hl_models_same_shape(hl_model_info_get(old), cur->mi)) {
        rc = 1;
    } else if (old != NULL) {
        old_type_weights(w, old, tw);
        out->mg = hl_migration_create_any(old, cur->m, tw, why, sizeof why);
        out->n_heads = hl_model_info_get(old)->n_heads;
        out->dim = hl_model_info_get(old)->dim;
        memcpy(out->half_life_ms, hl_model_info_get(old)->half_life_ms,
               sizeof out->half_life_ms);
        if (out->mg != NULL)
            out->from = old, old = NULL;    /* mg reads it: closed after mg */
    }
    if (out->mg != NULL)
        hl_models_note_migration(w->models, out->mg, hl_model_info_get(out->from)->n_items);
    if (rc == 0 && out->mg == NULL) {
        out->rebuilt = 1;
        out->mg = hl_migration_rebuild(cur->m, cur->tw, err, sizeof err);
        rc = out->mg ? 0 : HL_ENOMEM;
        if (out->mg)
            hl_log(HL_LOG_WARN, "changelog_rebuilt", "model=%016llx to=%016llx reason=\"%s; "
                   "rows of another shape rebuilt from the history rings alone\"",
                   (unsigned long long)fp, (unsigned long long)cur->mi->fingerprint, why);
    }
    hl_model_close(old);
    hl_mref_release(cur);       /* the set still holds the current model */
    return rc;
}

/* Moves *tblp's rows with mg: in place for the same shape, else into a
 * new table of the shard's options (which replaces *tblp). Rows moved, or
 * a negative HL_E* (*tblp then unchanged, to be dropped). */
static int64_t move_rows(hl_worker *w, const hl_migration *mg, hl_table **tblp, int reshape)
{
    char err[256];
    if (!reshape)
        return hl_migration_table(mg, *tblp);
    hl_table *dst = hl_table_create(&w->ctx.topts, err, sizeof err);
    int64_t n = dst ? hl_migration_table_into(mg, *tblp, dst) : HL_ENOMEM;
    if (n < 0) {
        hl_table_destroy(dst);
        return n;
    }
    hl_table_destroy(*tblp);
    *tblp = dst;
    return n;
}

/* A snapshot written under another model (a restart with a new one):
 * its rows move into the current model as a live swap moves them, when
 * that model is kept in model.dir; else they are rebuilt from their rings
 * alone (counted in halflife_users_rebuilt_total). Never refused: a model
 * of another state shape (dim, heads, half-lives) migrates too, into a
 * table of the new shape (hl_migration_create_any; what is approximated
 * is in schemas/model.md). The users moved are counted at once, or
 * added to *defer (migrated, rebuilt) for the caller to count once the
 * table is kept (NULL: at once). */
static int migrate_restored(hl_worker *w, int32_t p, hl_table **tblp, uint64_t fp,
                            uint64_t defer[2])
{
    char err[512], why[512] = "";
    hl_mref *cur = hl_models_acquire(w->models);
    hl_model *old = hl_models_open_kept(w->models, fp, why, sizeof why);
    hl_migration *mg = NULL;
    int reshape = other_shape(*tblp, cur->mi);
    float tw[HL_N_TYPES];
    if (old != NULL && other_shape(*tblp, hl_model_info_get(old))) {
        snprintf(why, sizeof why, "the kept model %016llx is not the snapshot's shape",
                 (unsigned long long)fp);
        hl_model_close(old), old = NULL;
    }
    if (old != NULL)
        old_type_weights(w, old, tw);
    if (old != NULL && (mg = hl_migration_create_any(old, cur->m, tw, why, sizeof why)) == NULL)
        hl_model_close(old), old = NULL;
    int rebuilt = mg == NULL;
    hl_models_note_migration(w->models, rebuilt ? NULL : mg,
                             old != NULL ? hl_model_info_get(old)->n_items : 0);
    if (rebuilt)
        mg = hl_migration_rebuild(cur->m, cur->tw, err, sizeof err);
    int64_t t0 = hl_now_mono_us(), n = mg ? move_rows(w, mg, tblp, reshape) : HL_ENOMEM;
    if (n >= 0) {
        if (defer != NULL)
            defer[rebuilt] += (uint64_t)n;
        else
            hl_counter_add(rebuilt ? w->ctx.mx.rebuilt : w->ctx.mx.migrated, (uint64_t)n);
        hl_log(rebuilt ? HL_LOG_WARN : HL_LOG_INFO, rebuilt ? "snapshot_rebuilt"
               : "snapshot_migrated", "partition=%d from=%016llx to=%016llx users=%lld "
               "reshaped=%d shared_items=%d residual=%.4f seconds=%.3f%s%s%s", (int)p,
               (unsigned long long)fp, (unsigned long long)cur->mi->fingerprint, (long long)n,
               reshape, rebuilt ? 0 : hl_migration_shared(mg),
               rebuilt ? 1.0 : hl_migration_residual(mg),
               (double)(hl_now_mono_us() - t0) / 1e6, rebuilt ? " reason=\"" : "",
               rebuilt ? why : "", rebuilt ? "; heads and masses rebuilt from the "
               "history rings alone\"" : "");
    } else {
        hl_log(HL_LOG_ERROR, "restore_failed", "partition=%d err=\"out of memory migrating "
               "the snapshot into the current model\"", (int)p);
    }
    hl_migration_destroy(mg);
    hl_model_close(old);
    hl_mref_release(cur);
    return n >= 0 ? 0 : HL_ENOMEM;
}

/* The values of halflife_restore_source's source label. */
static const char *const restore_sources[] = {"snapshot", "changelog", "both", "none"};
#define N_RESTORE_SOURCES (sizeof restore_sources / sizeof restore_sources[0])

/* Marks where the partition's state came from: halflife_restore_source
 * {partition, source} is 1 for the source of the last restore. */
static void restore_source(hl_worker *w, int32_t p, const char *source)
{
    char labels[80];
    for (size_t i = 0; i < N_RESTORE_SOURCES; i++) {
        snprintf(labels, sizeof labels, "partition=\"%d\",source=\"%s\"", (int)p,
                 restore_sources[i]);
        hl_gauge_set(hl_metrics_gauge(w->reg, "halflife_restore_source",
            "Where the last restore of the partition read its state (1 for that source).",
            labels), strcmp(restore_sources[i], source) == 0);
    }
}

/* The local snapshot as a cache (state.store=kafka): loaded into *tblp
 * when there is one, described in base. One of another state shape (a
 * restart with a model of another dim, heads or half-lives) is moved into
 * the current model first, as a file restore moves it (*fp is then the
 * current model, *moved 1): the changelog read after it is in that shape.
 * Its users are added to defer (migrated, rebuilt), not counted: the
 * changelog may yet refuse the file, which is then dropped and the
 * changelog read from its start. 0, or a negative HL_E* (logged). */
static int restore_cache(hl_worker *w, int32_t p, hl_table **tblp, hl_changelog_base *base,
                         uint64_t *fp, int *moved, uint64_t defer[2])
{
    char err[512];
    hl_persist_restored pr;
    base->next_offset = HL_PERSIST_NO_OFFSET;
    if (w->persist == NULL)
        return 0;
    if (hl_persist_restore_any(w->persist, p, tblp, &pr, err, sizeof err) != 0) {
        hl_log(HL_LOG_ERROR, "restore_failed", "partition=%d source=snapshot err=\"%s\"",
               (int)p, err);
        return HL_ENOMEM;
    }
    *base = (hl_changelog_base){pr.next_offset, pr.changelog_offset, pr.changelog_epoch};
    *fp = pr.model_fingerprint;
    const hl_model_info *cur = hl_model_info_get(cur_model(w));
    if (pr.next_offset == HL_PERSIST_NO_OFFSET || !other_shape(*tblp, cur))
        return 0;
    if (migrate_restored(w, p, tblp, pr.model_fingerprint, defer) != 0)
        return HL_ENOMEM;
    *fp = cur->fingerprint;
    *moved = 1;
    return 0;
}

/* The rows held after a changelog restore (the changelog's, each naming its
 * model, and the cache file's not replaced since, in base_fp) in another
 * model's space than the current one: moved into it
 * as a file restore moves them (migrate_restored) when they are all in one
 * model, else (rows of two models, or rows that name none) rebuilt from
 * their rings alone, counted in halflife_users_rebuilt_total. *tblp is
 * replaced when the move changes the rows' shape (migrate_restored). */
static int changelog_migrate(hl_worker *w, int32_t p, hl_table **tblp, uint64_t base_fp,
                             const hl_changelog_restored *r, int *moved)
{
    uint64_t cur = hl_model_info_get(cur_model(w))->fingerprint;
    uint64_t fp = r->base_rows ? base_fp : r->model_fingerprint;
    int mixed = r->mixed || (r->base_rows && r->model_fingerprint != 0 &&
                             r->model_fingerprint != base_fp);
    if (!mixed && (fp == 0 || fp == cur))
        return 0;
    *moved = 1;
    /* No model has fingerprint 0: migrate_restored then rebuilds. */
    return migrate_restored(w, p, tblp, mixed ? 0 : fp, NULL);
}

/* The users a changelog restore moved into the current model: the cache
 * file's (cache: NULL when the file was dropped) and the rows of another
 * shape, moved as they were read. */
static void count_moved(hl_worker *w, int32_t p, const hl_changelog_restored *r,
                        const uint64_t cache[2], int *moved)
{
    if (cache != NULL) {
        hl_counter_add(w->ctx.mx.migrated, cache[0]);
        hl_counter_add(w->ctx.mx.rebuilt, cache[1]);
    }
    if (r->n_migrated + r->n_rebuilt == 0)
        return;
    *moved = 1;
    hl_counter_add(w->ctx.mx.migrated, r->n_migrated);
    hl_counter_add(w->ctx.mx.rebuilt, r->n_rebuilt);
    hl_log(r->n_rebuilt ? HL_LOG_WARN : HL_LOG_INFO, "changelog_reshaped",
           "partition=%d users_migrated=%llu users_rebuilt=%llu", (int)p,
           (unsigned long long)r->n_migrated, (unsigned long long)r->n_rebuilt);
}

static void log_restored(int32_t p, const char *src, const hl_changelog_restored *r,
                         int64_t from)
{
    hl_log(HL_LOG_INFO, "restored", "partition=%d source=%s records=%llu rows=%llu "
           "tombstones=%llu checkpoints=%llu stale=%llu bad=%llu bytes=%llu low=%lld high=%lld "
           "from=%lld next_offset=%lld epoch=%lld seconds=%.3f", (int)p, src,
           (unsigned long long)r->n_records, (unsigned long long)r->n_rows,
           (unsigned long long)r->n_tombstones, (unsigned long long)r->n_checkpoints,
           (unsigned long long)r->n_stale, (unsigned long long)r->n_bad,
           (unsigned long long)r->bytes, (long long)r->low, (long long)r->high,
           (long long)from, (long long)r->next_offset, (long long)r->epoch, r->duration_s);
}

/* state.store=kafka: the partition's table read from its local snapshot
 * (if any) and the changelog after it, or from the changelog alone (the
 * claim follows the input topic's check: claim). NULL when neither can
 * be read: the partition must not be served from an empty table.
 * *on_disk: the local file's offset, when one was used. */
static hl_table *restore_changelog(hl_worker *w, int32_t p, hl_table *tbl, int64_t *restored,
                                   int64_t *offset, int64_t *on_disk, hl_changelog_restored *r,
                                   int *moved)
{
    char err[512];
    hl_changelog_base base;
    uint64_t base_fp = 0, cache_moved[2] = {0, 0};   /* users migrated, rebuilt */
    int64_t t0 = hl_now_mono_us();
    if (restore_cache(w, p, &tbl, &base, &base_fp, moved, cache_moved) != 0)
        goto fail;
    const hl_changelog_base *bp = base.next_offset >= 0 ? &base : NULL;
    int rc = hl_changelog_read(w->changelog, p, tbl, bp, r, err, sizeof err);
    if (rc == HL_ENOENT && bp != NULL) {
        hl_log(HL_LOG_WARN, "snapshot_not_usable", "partition=%d err=\"%s\" "
               "action=\"read the whole changelog\"", (int)p, err);
        hl_table_destroy(tbl);
        if ((tbl = hl_table_create(&w->ctx.topts, err, sizeof err)) == NULL)
            goto fail;
        bp = NULL;
        rc = hl_changelog_read(w->changelog, p, tbl, NULL, r, err, sizeof err);
    }
    if (rc != 0) {
        if (w->o.start_abort == NULL || !*w->o.start_abort)   /* else the stop's line */
            hl_log(HL_LOG_ERROR, "restore_failed", "partition=%d source=changelog "
                   "err=\"%s\"", (int)p, err);
        goto fail;
    }
    count_moved(w, p, r, bp != NULL ? cache_moved : NULL, moved);
    if (changelog_migrate(w, p, &tbl, bp ? base_fp : 0, r, moved) != 0)
        goto fail;
    *on_disk = bp ? bp->next_offset : HL_PERSIST_NO_OFFSET;
    if (r->next_offset != HL_CHANGELOG_NO_OFFSET)
        *restored = *offset = r->next_offset;
    else if (r->n_rows > 0)
        *offset = RD_KAFKA_OFFSET_BEGINNING;   /* rows of an unfinished first flush */
    const char *src = bp ? (r->n_records > 0 ? "both" : "snapshot")
                         : (r->n_records > 0 ? "changelog" : "none");
    restore_source(w, p, src);
    /* The worker-wide figure the dashboard shows: the whole restore. */
    hl_gauge *g = hl_metrics_gauge(w->reg, "halflife_restore_duration_seconds",
        "Seconds the newest partition restore took: with state.store=kafka all of it "
        "(snapshot base, changelog replay, migration), else loading the newest snapshot.", NULL);
    hl_gauge_set(g, (double)(hl_now_mono_us() - t0) / 1e6);
    log_restored(p, src, r, bp ? bp->changelog_offset : r->low);
    return tbl;
fail:
    hl_table_destroy(tbl);
    return NULL;
}

/* The partition's table: its newest valid snapshot's (or, with
 * state.store=kafka, its changelog's), and the offset to start from (the
 * snapshot's, else auto.offset.reset: DESIGN.md section 6 rebuilds state
 * from the topic rather than trust a committed offset without the state
 * that goes with it). NULL when out of memory. */
hl_table *hl_worker_restore(hl_worker *w, int32_t p, int64_t *restored, int64_t *offset,
                            int64_t *on_disk, hl_changelog_restored *cr, int *moved)
{
    char err[512];
    hl_persist_restored r;
    hl_table *tbl = hl_table_create(&w->ctx.topts, err, sizeof err);
    *restored = -1;
    *offset = w->o.offset_reset_latest ? RD_KAFKA_OFFSET_END : RD_KAFKA_OFFSET_BEGINNING;
    if (tbl != NULL && w->changelog != NULL)
        return restore_changelog(w, p, tbl, restored, offset, on_disk, cr, moved);
    if (tbl == NULL || w->persist == NULL)
        return tbl;
    /* any shape: a restart with a model of another dim, heads or
     * half-lives migrates the snapshot rather than refuse it */
    if (hl_persist_restore_any(w->persist, p, &tbl, &r, err, sizeof err) != 0) {
        hl_log(HL_LOG_ERROR, "restore_failed", "partition=%d err=\"%s\"", (int)p, err);
        hl_table_destroy(tbl);
        return NULL;
    }
    const hl_model_info *cur = hl_model_info_get(cur_model(w));
    *moved = r.next_offset != HL_PERSIST_NO_OFFSET &&
             (r.model_fingerprint != cur->fingerprint || other_shape(tbl, cur));
    if (*moved && migrate_restored(w, p, &tbl, r.model_fingerprint, NULL) != 0) {
        hl_table_destroy(tbl);
        return NULL;
    }
    if (r.next_offset != HL_PERSIST_NO_OFFSET) {
        *restored = *offset = r.next_offset;
        hl_log(HL_LOG_INFO, "restored", "partition=%d path=%s users=%llu next_offset=%lld "
               "seconds=%.3f", (int)p, r.path, (unsigned long long)r.n_rows,
               (long long)r.next_offset, r.duration_s);
    }
    return tbl;
}

/* Every reader of the table takes its rows for the model's shape. A
 * restore that left them in another (a table not made from w->ctx.topts
 * after a reshaping swap: a bug) is not served: with state.store=kafka
 * such a table was served under the new model, silently
 * (test_model_reshape_rebalance.py with check_model's update of topts
 * taken out). 1 when it fits; else 0, logged. */
int hl_worker_state_fits(const hl_table *tbl, const hl_model_info *mi, int32_t p)
{
    if (!other_shape(tbl, mi))
        return 1;
    hl_log(HL_LOG_ERROR, "shard_create_failed", "partition=%d err=\"the restored table "
           "is not the model's state shape (dim %d, model %d)\"", (int)p,
           hl_table_opts_get(tbl)->decay.dim, mi->dim);
    return 0;
}

void hl_worker_restore_hide(hl_worker *w, int32_t p)
{
    char labels[80];
    for (size_t i = 0; i < N_RESTORE_SOURCES; i++) {
        snprintf(labels, sizeof labels, "partition=\"%d\",source=\"%s\"", (int)p,
                 restore_sources[i]);
        hl_metrics_hide(w->reg, "halflife_restore_source", labels);
    }
}
