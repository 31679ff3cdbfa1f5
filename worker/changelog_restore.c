/* changelog_restore.c - one partition's state read back from the changelog
 * on assignment (the rules are in changelog.h; the claim that fences its
 * previous owner, written after the caller's checks, is changelog.c's).
 *
 * The restorer's consumer (outside the group) is assigned the partition at
 * its low watermark and reads to the high watermark taken before it
 * started; records are applied in order, later wins. A record the broker
 * holds is input like any other: a row that does not parse, an unknown
 * key, a missing epoch are counted (n_bad) and skipped, never trusted.
 * Runs on the main thread inside the rebalance callback, as the file
 * snapshot's restore does; the table is not shared yet. The fetch already
 * runs ahead on librdkafka's threads (a deep queue); into an empty table a
 * helper thread also faults the rows' pages in ahead of the writes
 * (changelog_prefault.c), the one other part of building the table that can go
 * on beside the reading. */
#include "changelog_internal.h"
#include "snapshot.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A row with no HL_CHANGELOG_FORMAT_HDR, or "2", is format 2: the bytes of
 * today's layout with the heads at t_ref, rebased as read (rebase_old);
 * "3" is today's. A new snapshot format must decide what the changelog's
 * rows become (and name them) before this builds. */
_Static_assert(HL_SNAPSHOT_VERSION == HL_CHANGELOG_FORMAT,
               "a new snapshot row layout changes the changelog's: give it a "
               "halflife.format and keep reading format 2 and 3 rows as such");

#define HIST_MAX 255        /* state.history's bound: any writer's rows decode */
#define RESHAPES 8          /* models of another shape one restore reads rows of */
#define ROW_FIXED 32        /* a row's bytes besides its user id, numbers and ring
                               (schemas/snapshot.md) */

/* The rows naming one model that is not the current one. */
typedef struct reshape_slot {
    uint64_t             fp;
    int                  rc;        /* opts.reshape's: 0 reshape with r, else as is */
    hl_changelog_reshape r;
    hl_decay             decay;     /* r.from's heads (not rebuilt): rebase_old's */
} reshape_slot;

typedef struct restorer {
    hl_changelog          *cl;
    hl_table              *tbl;
    hl_changelog_restored *out;
    int64_t                max_epoch;
    int                    have_ck;            /* a checkpoint seen */
    uint64_t               since_ck;           /* rows and tombstones applied after
                                                  the last checkpoint read (or, none
                                                  read, since the read began) */
    hl_changelog_ck        ck;
    hl_table_meta          seen;               /* newest row values, for the meta */
    hl_snapshot_row_scratch sc;
    uint32_t               row_bound;
    uint8_t               *fp_of;      /* row_bound: the model of the row restored at
                                          that id, 1 + index in fps; 0: not from
                                          the changelog (the base's, or none) */
    uint64_t               fps[254];
    int                    n_fps;
    int64_t                base_epoch;         /* the base's, 0: no base or unknown */
    int                    format_logged;      /* format_unknown() said so */
    char                   foreign[64];        /* the first other group.id read (quoted,
                                                  cut), for changelog_shared */
    const hl_changelog_base *adopt;            /* see adopt(): the base, until the
                                                  first record is read; else NULL */
    int                    not_ours;           /* adopt() refused the first record */
    int64_t                usurper;            /* see apply(): the epoch that shows the
                                                  base was a fenced owner's; 0: none */
    _Atomic uint64_t      *applied;            /* rows applied, for the prefault
                                                  thread; NULL: none runs */
    /* rows of another shape (opts.reshape), moved into the table's as read */
    reshape_slot           rz[RESHAPES];
    int                    n_rz;
    uint8_t               *moved;      /* row_bound: 1 migrated, 2 rebuilt, at that id */
    float                 *om;         /* their numbers, decoded (om_floats) */
    size_t                 om_floats;
    float                 *mv_s, *mv_m, *mv_scratch;  /* the moved row (table's shape) */
    size_t                 mv_floats;  /* mv_scratch's */
    int32_t               *mv_item;
} restorer;

/* ---- one record ---------------------------------------------------------- */

/* A header's value as a NUL-terminated string in buf (bufsize); 0 when it
 * is absent, empty or too long. */
static int hdr_text(const void *v, size_t len, char *buf, size_t bufsize)
{
    if (v == NULL || len == 0 || len >= bufsize)
        return 0;
    memcpy(buf, v, len);
    buf[len] = '\0';
    return 1;
}

static int64_t epoch_of(const hl_changelog_rec *r)
{
    char buf[24], *end;
    if (!hdr_text(r->epoch, r->epoch_len, buf, sizeof buf))
        return -1;
    long long e = strtoll(buf, &end, 10);     /* ERANGE gives LLONG_MAX: refused too */
    return *end == '\0' && e >= 0 && e <= HL_CHANGELOG_EPOCH_MAX ? e : -1;
}

/* The model a row record names (HL_CHANGELOG_MODEL_HDR); 0 when it names
 * none (a writer from before the header). */
static uint64_t model_of(const hl_changelog_rec *r)
{
    char buf[24], *end;
    if (!hdr_text(r->model, r->model_len, buf, sizeof buf))
        return 0;
    unsigned long long fp = strtoull(buf, &end, 16);
    return *end == '\0' ? (uint64_t)fp : 0;
}

/* The record m is, its headers looked up (the value of each one's last). */
static void rec_of(const rd_kafka_message_t *m, hl_changelog_rec *r)
{
    rd_kafka_headers_t *h = NULL;
    *r = (hl_changelog_rec){.key = m->key, .key_len = m->key_len, .value = m->payload,
                            .len = m->len, .partition = m->partition, .offset = m->offset};
    if (rd_kafka_message_headers(m, &h) != 0)
        return;
    if (rd_kafka_header_get_last(h, HL_CHANGELOG_EPOCH_HDR, &r->epoch, &r->epoch_len) != 0)
        r->epoch = NULL;
    if (rd_kafka_header_get_last(h, HL_CHANGELOG_MODEL_HDR, &r->model, &r->model_len) != 0)
        r->model = NULL;
    if (rd_kafka_header_get_last(h, HL_CHANGELOG_FORMAT_HDR, &r->format, &r->format_len) != 0)
        r->format = NULL;
    if (rd_kafka_header_get_last(h, HL_CHANGELOG_GROUP_HDR, &r->group, &r->group_len) != 0)
        r->group = NULL;
    if (rd_kafka_header_get_last(h, HL_CHANGELOG_BASE_HDR, &r->base, &r->base_len) != 0)
        r->base = NULL;
}

/* Remembers the model of the row now at id row (restored there). A row
 * naming no model, or one restored elsewhere, makes the rows mixed. */
static void note_model(restorer *rs, uint32_t row, int at_row, uint64_t fp)
{
    int k = 0;
    while (k < rs->n_fps && rs->fps[k] != fp)
        k++;
    if (k == rs->n_fps && fp != 0 && k < (int)(sizeof rs->fps / sizeof rs->fps[0]))
        rs->fps[rs->n_fps++] = fp;
    if (fp == 0 || k == rs->n_fps || !at_row)
        rs->out->mixed = 1;
    else
        rs->fp_of[row] = (uint8_t)(k + 1);
}

/* After the read: the models of the rows the table holds now (a user's
 * older rows, replaced since, do not count). */
static void models_held(restorer *rs)
{
    hl_changelog_restored *out = rs->out;
    uint32_t lim = hl_table_row_limit(rs->tbl);
    for (uint32_t r = 0; r < lim; r++) {
        if (!hl_table_row_live(rs->tbl, r))
            continue;
        int k = r < rs->row_bound ? rs->fp_of[r] : 0;
        if (r < rs->row_bound && rs->moved[r] != 0)
            *(rs->moved[r] == 1 ? &out->n_migrated : &out->n_rebuilt) += 1;
        if (k == 0) {
            out->base_rows = 1;
            continue;
        }
        uint64_t fp = rs->fps[k - 1];
        if (out->model_fingerprint != 0 && out->model_fingerprint != fp)
            out->mixed = 1;
        out->model_fingerprint = fp;
    }
}

/* How the rows naming fp are read: NULL as they are (the current model,
 * one of the table's shape, none named, or no opts.reshape), else in
 * their model's shape and moved (asked once per model). */
static const hl_changelog_reshape *reshape_of(restorer *rs, uint64_t fp)
{
    hl_changelog *cl = rs->cl;
    if (cl->o.reshape == NULL || fp == 0 || fp == atomic_load(&cl->fp))
        return NULL;
    for (int i = 0; i < rs->n_rz; i++)
        if (rs->rz[i].fp == fp)
            return rs->rz[i].rc == 0 ? &rs->rz[i].r : NULL;
    if (rs->n_rz == RESHAPES)
        return NULL;
    reshape_slot *z = &rs->rz[rs->n_rz++];
    memset(z, 0, sizeof *z);
    z->fp = fp;
    z->rc = cl->o.reshape(cl->o.reshape_arg, fp, &z->r);
    if (z->rc == 0 && z->r.mg == NULL)
        z->rc = HL_ENOMEM;
    if (z->rc == 0 && !z->r.rebuilt) {
        if (hl_decay_init(&z->decay, z->r.n_heads, z->r.dim, z->r.half_life_ms, NULL, 0) != 0)
            z->rc = HL_EINVAL;      /* a model file checks them: not reached */
    }
    if (z->rc == 0) {
        size_t need = hl_migration_scratch_floats(z->r.mg);
        float *sc = need > rs->mv_floats ? realloc(rs->mv_scratch, sizeof *sc * need) : NULL;
        if (sc != NULL)
            rs->mv_scratch = sc, rs->mv_floats = need;
        else if (need > rs->mv_floats)
            z->rc = HL_ENOMEM;      /* its rows are counted bad */
    }
    if (z->rc != 0) {
        hl_migration_destroy(z->r.mg);
        hl_model_close(z->r.from);
        z->r.mg = NULL;
        z->r.from = NULL;
    }
    return z->rc == 0 ? &z->r : NULL;
}

/* m's row decoded in n_heads x dim, its numbers into om (grown to fit). */
static int decode_as(restorer *rs, const hl_changelog_rec *m, int n_heads, int dim,
                     uint32_t *row, hl_row_view *v)
{
    size_t n_f = (size_t)n_heads * ((size_t)dim + 1);
    if (n_f > rs->om_floats) {
        float *om = realloc(rs->om, sizeof *om * n_f);
        if (om == NULL)
            return HL_ENOMEM;
        rs->om = om, rs->om_floats = n_f;
    }
    hl_snapshot_row_scratch sc = rs->sc;
    sc.m = rs->om;
    return hl_snapshot_row_decode(m->value, m->len, n_heads, dim, HIST_MAX,
                                  HL_SNAPSHOT_VERSION, &sc, row, v);
}

/* A row whose model is not at hand has an unknown shape, but a rebuild
 * reads only its ring: its numbers are taken as one head of the width
 * the length leaves (n_heads (dim + 1) floats in all). HL_EFORMAT when
 * the length leaves none. */
static int decode_ring(restorer *rs, const hl_changelog_rec *m, uint32_t *row, hl_row_view *v)
{
    const unsigned char *p = m->value;
    if (m->len < ROW_FIXED)
        return HL_EFORMAT;
    size_t ul = (size_t)(p[0] | p[1] << 8);
    if (m->len < ROW_FIXED + ul)
        return HL_EFORMAT;
    size_t n_hist = (size_t)(p[ul + 30] | p[ul + 31] << 8);
    size_t fixed = ROW_FIXED + ul + 25 * n_hist;
    if (m->len < fixed + 8 || (m->len - fixed) % 4 != 0 || (m->len - fixed) / 4 > INT32_MAX)
        return HL_EFORMAT;
    return decode_as(rs, m, 1, (int)((m->len - fixed) / 4) - 1, row, v);
}

/* m's row into v: in the table's shape (rz NULL), else in its model's
 * (the ring alone when that model is not at hand and the table's shape
 * does not fit it: a same-shape row loads as is, as without rz). *how:
 * 0 as is, 1 to migrate, 2 to rebuild. */
static int decode(restorer *rs, const hl_changelog_rec *m, const hl_changelog_reshape *rz,
                  uint32_t *row, hl_row_view *v, int *how)
{
    *how = 0;
    if (rz != NULL && !rz->rebuilt) {
        *how = 1;
        return decode_as(rs, m, rz->n_heads, rz->dim, row, v);
    }
    row_shape sh = shape_of(rs->tbl);
    int rc = hl_snapshot_row_decode(m->value, m->len, sh.n_heads, sh.dim, HIST_MAX,
                                    HL_SNAPSHOT_VERSION, &rs->sc, row, v);
    if (rc != 0 && rz != NULL) {
        *how = 2;
        rc = decode_ring(rs, m, row, v);
    }
    return rc;
}

/* v (another shape's) moved into the table's shape with mg. */
static void move_row(restorer *rs, const hl_migration *mg, hl_row_view *v)
{
    hl_migration_row_into(mg, v, rs->mv_s, rs->mv_m, rs->mv_item, rs->mv_scratch);
    v->s = rs->mv_s;
    v->m = rs->mv_m;
    v->hist_item = rs->mv_item;
}

/* v into any free row, when the id it had is taken by another user: a
 * live swap to another shape moves users into a new table (other ids),
 * so after it the changelog's older rows of other users can hold the ids
 * its newer rows name. *row: where it went, so its model is still known
 * (a row of unknown model would make every row mixed, rebuilt from the
 * rings alone). */
static int placed_elsewhere(restorer *rs, const hl_row_view *v, uint32_t *row)
{
    int rc = hl_table_restore(rs->tbl, v);
    if (rc != 0)
        return rc;
    int64_t at = hl_table_find(rs->tbl, v->user, v->user_len);
    *row = at >= 0 ? (uint32_t)at : UINT32_MAX;
    return 0;
}

/* A record checked whole before it touches anything (check, then put):
 * what put needs of it. */
typedef struct checked {
    int                         kind;   /* KIND_ROW, KIND_TOMBSTONE, KIND_CHECKPOINT */
    hl_row_view                 v;      /* a row, decoded (points into the record
                                           and the restorer's scratch) */
    uint32_t                    row;
    int                         how;    /* decode()'s */
    uint64_t                    fp;
    const hl_changelog_reshape *rz;
    hl_changelog_ck             ck;
    int                         recreation;     /* a checkpoint under the recreation
                                                   claims' key */
    int                         format;         /* a row's layout: 2 or 3 */
} checked;

/* A format 2 row's heads, at t_ref, moved to their bases (decay.h) where
 * decode() left them: the restorer's scratch, hence the casts. A ring-only
 * decode (how 2) has no heads to move. */
static void rebase_old(restorer *rs, checked *c)
{
    const hl_decay *d = &hl_table_opts_get(rs->tbl)->decay;
    if (c->format != 2 || c->how == 2)
        return;
    for (int i = 0; c->how == 1 && i < rs->n_rz; i++)
        if (&rs->rz[i].r == c->rz)
            d = &rs->rz[i].decay;
    hl_decay_rebase(d, c->v.t_ref_ms, (float *)c->v.s, (float *)c->v.m);
}

/* A row record decoded into c, nothing applied: HL_EFORMAT when it does
 * not parse or names another user than its key. */
static int check_row(restorer *rs, const hl_changelog_rec *m, checked *c)
{
    c->fp = model_of(m);
    c->rz = reshape_of(rs, c->fp);
    if (decode(rs, m, c->rz, &c->row, &c->v, &c->how) != 0 ||
        c->v.user_len != m->key_len || memcmp(c->v.user, m->key, m->key_len) != 0)
        return HL_EFORMAT;
    rebase_old(rs, c);
    return 0;
}

/* A checked row: replaces the user's row (later wins) at the id it had.
 * One of another shape is moved into the table's as it is read. */
static int put_row(restorer *rs, checked *c)
{
    hl_changelog *cl = rs->cl;
    hl_row_view v = c->v;
    uint32_t row = c->row;
    uint64_t fp = c->fp;
    int how = c->how;
    /* A shorter configured history keeps each user's newest entries. */
    if (v.n_hist > cl->history) {
        int skip = v.n_hist - cl->history;
        v.n_hist = cl->history;
        v.hist_item += skip;
        v.hist_ts_ms += skip;
        v.hist_type += skip;
        v.hist_key += skip;         /* never NULL: changelog rows are format 2 */
        v.hist_w += skip;
    }
    v.history = cl->history;
    if (how != 0) {
        move_row(rs, c->rz->mg, &v);
        fp = atomic_load(&cl->fp);      /* the row is in the current model now */
    }
    /* Most records name a user not yet restored: try that first, and
     * replace an existing row (later wins) only when the insert fails. */
    int at = row < rs->row_bound, rc = at ? hl_table_restore_at(rs->tbl, row, &v) : HL_EINVAL;
    if (rc != 0 && hl_table_remove(rs->tbl, v.user, v.user_len) == 0 && at)
        rc = hl_table_restore_at(rs->tbl, row, &v);
    if (rc != 0 && (rc = placed_elsewhere(rs, &v, &row)) != 0)
        return rc;
    if (v.t_ref_ms > rs->seen.newest_ts_ms) rs->seen.newest_ts_ms = v.t_ref_ms;
    if (v.active_seq > rs->seen.active_seq) rs->seen.active_seq = v.active_seq;
    rs->out->n_rows++;
    if (rs->applied)
        atomic_store_explicit(rs->applied, rs->out->n_rows, memory_order_relaxed);
    int at_row = row < rs->row_bound;
    note_model(rs, row, at_row, fp);
    /* counted once per user held at the end (models_held); a row beyond
     * the map is counted now */
    if (at_row)
        rs->moved[row] = (uint8_t)how;
    else if (how != 0)
        *(how == 1 ? &rs->out->n_migrated : &rs->out->n_rebuilt) += 1;
    return 0;
}

static int is_checkpoint(const hl_changelog *cl, const hl_changelog_rec *m)
{
    return m->key_len == sizeof cl->ck_key && memcmp(m->key, cl->ck_key, m->key_len) == 0;
}

static int is_recreation(const hl_changelog *cl, const hl_changelog_rec *m)
{
    return m->key_len == sizeof cl->recreation_key &&
           memcmp(m->key, cl->recreation_key, m->key_len) == 0;
}

/* The layout m names (HL_CHANGELOG_FORMAT_HDR): 2 when it names none or
 * "2", 3 for "3"; 0 for any other: a newer worker's record, refused
 * rather than misread (logged once per restore; counted bad like any
 * record skipped). */
static int format_of(restorer *rs, const hl_changelog_rec *m)
{
    char buf[24], shown[64];
    if (m->format == NULL)
        return 2;
    if (hdr_text(m->format, m->format_len, buf, sizeof buf) &&
        (strcmp(buf, "2") == 0 || strcmp(buf, "3") == 0))
        return buf[0] - '0';
    if (!rs->format_logged++)
        hl_log(HL_LOG_ERROR, "changelog_record_format_unknown", "topic=%s partition=%d "
               "offset=%lld format=\"%s\" reads=%d reason=\"written by a newer worker\" "
               "action=\"skipped (halflife_changelog_bad_records_total); upgrade this worker "
               "to the version that wrote it, or its users' state is lost\"", rs->cl->topic,
               (int)m->partition, (long long)m->offset,
               hl_log_quote(shown, sizeof shown, m->format, m->format_len),
               HL_CHANGELOG_FORMAT);
    return 0;
}

/* m checked whole into c, the restore left as it was: HL_EFORMAT for a
 * checkpoint that does not parse, a key that is no user id, a row that
 * does not parse; HL_EVERSION for a record of a layout it does not read. */
static int check(restorer *rs, const hl_changelog_rec *m, checked *c)
{
    if ((c->format = format_of(rs, m)) == 0)
        return HL_EVERSION;
    c->recreation = is_recreation(rs->cl, m);
    if (c->recreation || is_checkpoint(rs->cl, m)) {
        c->kind = KIND_CHECKPOINT;
        return m->value == NULL || hl_changelog_ck_decode(m->value, m->len, &c->ck) != 0
               ? HL_EFORMAT : 0;
    }
    if (m->key_len < 1 || m->key_len > HL_MAX_ID_LEN)
        return HL_EFORMAT;
    c->kind = m->value == NULL ? KIND_TOMBSTONE : KIND_ROW;
    return c->kind == KIND_ROW ? check_row(rs, m, c) : 0;
}

/* A checked record applied (its epoch already taken as the fence). */
static int put(restorer *rs, const hl_changelog_rec *m, checked *c)
{
    if (c->kind == KIND_CHECKPOINT) {
        /* Every row before a recreation claim names an applied offset of
         * the old input topic: kept, the new topic's events below it
         * would be dropped as applied (changelog.h). */
        if (c->recreation)
            hl_table_forget_offsets(rs->tbl);
        rs->out->input_recreated |= c->recreation;
        rs->ck = c->ck;
        rs->have_ck = 1;
        rs->since_ck = 0;
        rs->out->n_checkpoints++;
        return 0;
    }
    if (c->kind == KIND_ROW)
        return put_row(rs, c);
    int64_t r = hl_table_find(rs->tbl, m->key, m->key_len);
    if (r >= 0 && r < rs->row_bound)
        rs->moved[r] = 0;       /* its id may hold another user next */
    hl_table_remove(rs->tbl, m->key, m->key_len);
    rs->out->n_tombstones++;
    return 0;
}

static void count_bad(restorer *rs, const hl_changelog_rec *m, int rc)
{
    rs->out->n_bad++;
    hl_counter_add(rs->cl->mx.bad, 1);
    if (rs->out->n_bad <= 3)
        hl_log(HL_LOG_WARN, "changelog_record_bad", "topic=%s partition=%d offset=%lld "
               "err=\"%s\" action=skipped", rs->cl->topic, (int)m->partition,
               (long long)m->offset, hl_strerror(rc));
}

/* One record. It is checked whole before its epoch counts: anyone may
 * write the topic, and a record that does not parse (foreign, truncated)
 * but named a high epoch used to raise the fence all the same, so the
 * honest owner's later records, of a lower epoch, were ignored as stale
 * (its users lost at every restore) and, after a base, the read was
 * refused as usurped (test_bad_record_moves_nothing). */
/* A checkpoint another deployment wrote (HL_CHANGELOG_GROUP_HDR naming
 * another group.id): counted; the first one's group is kept for the log
 * line at the end (report_foreign). Applied all the same: a group.id
 * renamed on purpose over the same state.topic reads its own state. */
static void note_group(restorer *rs, const hl_changelog_rec *m)
{
    const char *own = rs->cl->group;
    if (m->group == NULL || (m->group_len == strlen(own) &&
                             memcmp(m->group, own, m->group_len) == 0))
        return;
    if (rs->out->n_foreign++ == 0)
        hl_log_quote(rs->foreign, sizeof rs->foreign, (const char *)m->group, m->group_len);
    hl_counter_add(rs->cl->mx.foreign, 1);
}

/* Once per restore that read another group's checkpoints: two
 * deployments share this state.topic. */
static void report_foreign(const restorer *rs, int32_t p)
{
    if (rs->out->n_foreign == 0)
        return;
    hl_log(HL_LOG_ERROR, "changelog_shared", "topic=%s partition=%d group=\"%s\" other_group=\"%s\" "
           "checkpoints=%llu reason=\"another consumer group writes this state topic: each "
           "deployment reads the other's users as its own and fences its owners\" "
           "action=\"give each deployment its own state.topic (default <group.id>-state); "
           "ignore this once after renaming group.id\"", rs->cl->topic, (int)p,
           rs->cl->group, rs->foreign, (unsigned long long)rs->out->n_foreign);
}

/* The first record of a topic that ends below base's cover and is not
 * empty: base's own continuation (1) when it is a claim naming base's
 * cover (HL_CHANGELOG_BASE_HDR): the state topic was found recreated by
 * an owner that kept this same snapshot and died before its rewrite of
 * every row ended. Refused before, the snapshot was dropped, and the
 * changelog held that claim and a part of the rows: every other user was
 * lost. The caller then writes every row again (out->recreated). Else 0:
 * the base is refused (not_ours), as any cover outside the watermarks. */
static int adopt(restorer *rs, const hl_changelog_rec *m)
{
    char want[48], got[48];
    snprintf(want, sizeof want, "%lld:%lld", (long long)rs->adopt->changelog_offset,
             (long long)rs->adopt->changelog_epoch);
    int ok = (is_checkpoint(rs->cl, m) || is_recreation(rs->cl, m)) &&
             hdr_text(m->base, m->base_len, got, sizeof got) && strcmp(got, want) == 0;
    if (ok) {
        rs->out->recreated = 1;
        rs->out->base_cover = rs->adopt->changelog_offset;
        rs->out->base_epoch = rs->adopt->changelog_epoch;
    }
    rs->not_ours = !ok;
    rs->adopt = NULL;
    return ok;
}

static void apply(restorer *rs, const hl_changelog_rec *m)
{
    hl_changelog *cl = rs->cl;
    int64_t epoch = epoch_of(m);
    checked c;
    if (rs->adopt != NULL && !adopt(rs, m))
        return;
    rs->out->n_records++;
    rs->out->bytes += m->len + m->key_len;
    if (epoch >= 0 && epoch < rs->max_epoch) {
        rs->out->n_stale++;         /* written by an owner fenced by a later claim */
        hl_counter_add(cl->mx.stale, 1);
        return;
    }
    int rc = epoch < 0 ? HL_EFORMAT : check(rs, m, &c);
    if (rc == 0 && epoch > rs->max_epoch && rs->base_epoch > 0 && c.kind != KIND_CHECKPOINT) {
        /* A new owner's first record is always its claim, a checkpoint.
         * A higher epoch that starts with a row has its claim before the
         * base's offset: the base's owner flushed after it was fenced (a
         * zombie's last flush landing late) and its cover skips the new
         * owner's records. The caller reads the whole changelog instead.
         * (On a compacted topic a claim superseded by later checkpoints
         * can be gone too: that also costs a whole read, never state.)
         * Only snapshots of older writers can hold such a cover: a
         * writer now names only covers its chain reaches (changelog.c),
         * which also closes the case this check missed (a new owner that
         * wrote nothing after the base's offset; this restore's claim
         * then reused its epoch). */
        rs->usurper = epoch;
        return;
    }
    if (rc == 0) {
        rs->max_epoch = epoch;
        rc = put(rs, m, &c);
    }
    if (rc == 0 && c.kind == KIND_CHECKPOINT)
        note_group(rs, m);
    if (rc == 0 && c.kind != KIND_CHECKPOINT)
        rs->since_ck++;
    if (rc != 0)
        count_bad(rs, m, rc);
}

/* ---- the partition -------------------------------------------------------- */

/* Reads [low, high) of partition p, applying each record. */
static int read_range(restorer *rs, int32_t p, int64_t low, int64_t high,
                      char *errbuf, size_t errlen)
{
    hl_changelog *cl = rs->cl;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, cl->topic, p)->offset = low;
    rd_kafka_resp_err_t err = rd_kafka_assign(cl->rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (err)
        return hl_err(errbuf, errlen, HL_EIO, "changelog %s [%d]: assign: %s", cl->topic,
                      (int)p, rd_kafka_err2str(err));
    /* timeout_ms bounds a silent stall: an error event (the broker down or
     * moving a partition's leader, as in a rolling upgrade) restarts it, so
     * the restore waits out an outage rather than failing the partition
     * (which exits the worker). A stop (start_abort: SIGTERM) ends it at
     * the next poll; the worker then stops as it does between partitions,
     * leaving this one unserved and uncommitted (worker_rebalance.c). */
    int64_t next = low, idle_since = hl_now_mono_ms();
    hl_log_limit lim = {.interval_ms = 5000};
    int rc = 0;
    while (next < high) {
        if (cl->o.start_abort != NULL && *cl->o.start_abort) {
            rc = hl_err(errbuf, errlen, HL_EIO, "changelog %s [%d]: read stopped at offset "
                        "%lld of %lld: the worker is stopping", cl->topic, (int)p,
                        (long long)next, (long long)high);
            break;
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll(cl->rk, 100);
        if (m == NULL) {
            if (hl_now_mono_ms() - idle_since > cl->o.timeout_ms) {
                rc = hl_err(errbuf, errlen, HL_EIO, "changelog %s [%d]: no record for %d ms "
                            "at offset %lld of %lld", cl->topic, (int)p, cl->o.timeout_ms,
                            (long long)next, (long long)high);
                break;
            }
            continue;
        }
        idle_since = hl_now_mono_ms();
        if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR && m->partition == p) {
            hl_changelog_rec r;
            rec_of(m, &r);
            apply(rs, &r);
            /* the base is unusable: stop */
            next = rs->usurper || rs->not_ours ? high : m->offset + 1;
        } else if (m->err && m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            uint64_t sup = 0;       /* repeated each reconnect while the broker is down */
            char why[256];
            const char *es = rd_kafka_message_errstr(m);
            if (hl_log_limit_pass(&lim, &sup))
                hl_log(HL_LOG_WARN, "changelog_read_error", "partition=%d offset=%lld "
                       "of=%lld err=\"%s\" action=\"the restore waits for the broker\" "
                       "suppressed=%llu", (int)p, (long long)next, (long long)high,
                       hl_log_quote(why, sizeof why, es, strlen(es)),
                       (unsigned long long)sup);
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_assign(cl->rk, NULL);
    return rc;
}

/* read_range from from to the high watermark. Into an empty table the
 * index is sized once for what the range can hold, so it never doubles
 * mid-read, and the rows' pages are faulted in beside the read. On a
 * topic not yet compacted the range holds many times the users (up to
 * state.max.users' worth, 128 MiB of index at the default), so the index
 * is fitted to the users read afterwards: it used to keep that size for
 * good. */
static int read_into(restorer *rs, int32_t p, const hl_changelog_base *base, int64_t from,
                     char *errbuf, size_t errlen)
{
    size_t n = (size_t)(rs->out->high - from);
    hl_changelog_prefault *pf = base == NULL ? malloc(sizeof *pf) : NULL;
    if (base == NULL)
        hl_table_reserve(rs->tbl, n);
    if (pf != NULL) {
        hl_changelog_prefault_start(pf, rs->tbl, n);
        rs->applied = &pf->applied;
    }
    int rc = read_range(rs, p, from, rs->out->high, errbuf, errlen);
    rs->applied = NULL;
    if (pf != NULL)
        hl_changelog_prefault_stop(pf);
    free(pf);
    if (base == NULL)
        hl_table_fit(rs->tbl);      /* a hint: on failure the index stays as it is */
    return rc;
}

/* The epoch this owner claims: one above the highest read. A record
 * naming HL_CHANGELOG_EPOCH_MAX itself (anyone may write the topic) made
 * that MAX + 1, which every reader refuses: each later record of every
 * owner was counted bad and the state was lost at each restore. The
 * claim stays at the ceiling instead; owners there no longer fence one
 * another by epoch (their records are not stale), which costs fencing,
 * never state. */
static int64_t claim_epoch(const hl_changelog *cl, int64_t max_epoch)
{
    if (max_epoch < HL_CHANGELOG_EPOCH_MAX)
        return max_epoch + 1;
    hl_log(HL_LOG_WARN, "changelog_epoch_ceiling", "topic=%s epoch=%lld reason=\"a record "
           "names the highest epoch a reader accepts (a foreign writer?)\" action=\"claimed "
           "at the ceiling: epochs no longer fence owners of this partition; recreate the "
           "changelog to restore fencing\"", cl->topic, (long long)max_epoch);
    return HL_CHANGELOG_EPOCH_MAX;
}

/* After the last record: the shard-wide meta and where the input resumes. */
static void finish(restorer *rs, const hl_changelog_base *base)
{
    hl_changelog_restored *out = rs->out;
    out->next_offset = base ? base->next_offset : HL_CHANGELOG_NO_OFFSET;
    if (rs->have_ck && rs->ck.offset >= 0) {
        hl_table_meta meta = rs->ck.meta;
        if (rs->seen.active_seq > meta.active_seq) meta.active_seq = rs->seen.active_seq;
        if (rs->seen.newest_ts_ms > meta.newest_ts_ms) meta.newest_ts_ms = rs->seen.newest_ts_ms;
        hl_table_meta_set(rs->tbl, &meta);
        out->next_offset = rs->ck.offset;
    }
    out->epoch = claim_epoch(rs->cl, rs->max_epoch);
}

static void observe(hl_changelog *cl, int32_t p, const hl_changelog_restored *out)
{
    char labels[64];
    snprintf(labels, sizeof labels, "partition=\"%d\"", (int)p);
    hl_gauge_set(hl_metrics_gauge(cl->o.reg, "halflife_restore_records",
        "Changelog records read by the last restore of the partition.", labels),
        (double)out->n_records);
    hl_gauge_set(hl_metrics_gauge(cl->o.reg, "halflife_restore_seconds",
        "Duration of the last restore of the partition.", labels), out->duration_s);
    hl_gauge_set(hl_metrics_gauge(cl->o.reg, "halflife_restore_records_per_second",
        "Changelog records per second of the last restore of the partition.", labels),
        out->duration_s > 0 ? (double)out->n_records / out->duration_s : 0);
}

static void restorer_free(restorer *rs)
{
    free(rs->sc.m);
    free(rs->sc.hist_item);
    free(rs->sc.hist_ts);
    free(rs->sc.hist_type);
    free(rs->sc.hist_key);
    free(rs->sc.hist_w);
    free(rs->fp_of);
    free(rs->moved);
    free(rs->om);
    free(rs->mv_s);
    free(rs->mv_m);
    free(rs->mv_scratch);
    free(rs->mv_item);
    for (int i = 0; i < rs->n_rz; i++) {
        hl_migration_destroy(rs->rz[i].r.mg);
        hl_model_close(rs->rz[i].r.from);
    }
}

/* The scratch rows decode into, and the model map sized for every row id
 * the table can hand out. 0 or HL_ENOMEM (restorer_free frees either way). */
static int restorer_init(restorer *rs, char *errbuf, size_t errlen)
{
    const hl_table_opts *o = rs->cl->o.topts;
    row_shape sh = shape_of(rs->tbl);       /* the table's: the serving model's */
    int n_heads = sh.n_heads, dim = sh.dim;
    uint64_t users = o->max_users ? o->max_users : (uint64_t)1 << 26;
    rs->row_bound = 2 * users + 1024 < HL_TABLE_MAX_ROWS ? (uint32_t)(2 * users + 1024)
                                                         : HL_TABLE_MAX_ROWS;
    rs->sc.m = malloc(sizeof(float) * (size_t)n_heads * ((size_t)dim + 1));
    rs->sc.hist_item = malloc(sizeof(int32_t) * HIST_MAX);
    rs->sc.hist_ts = malloc(sizeof(int64_t) * HIST_MAX);
    rs->sc.hist_type = malloc(HIST_MAX);
    rs->sc.hist_key = malloc(sizeof(uint64_t) * HIST_MAX);
    rs->sc.hist_w = malloc(sizeof(float) * HIST_MAX);
    rs->fp_of = calloc(rs->row_bound, 1);
    rs->moved = calloc(rs->row_bound, 1);
    rs->mv_s = malloc(sizeof(float) * (size_t)n_heads * (size_t)dim);
    rs->mv_m = malloc(sizeof(float) * (size_t)n_heads);
    rs->mv_item = malloc(sizeof(int32_t) * HIST_MAX);
    if (!rs->sc.m || !rs->sc.hist_item || !rs->sc.hist_ts || !rs->sc.hist_type ||
        !rs->sc.hist_key || !rs->sc.hist_w || !rs->fp_of || !rs->moved || !rs->mv_s ||
        !rs->mv_m || !rs->mv_item)
        return hl_err(errbuf, errlen, HL_ENOMEM, "changelog restore: out of memory");
    return 0;
}

/* The read goes on from base: its epoch and meta. */
static void base_start(restorer *rs, const hl_changelog_base *base)
{
    rs->max_epoch = rs->base_epoch = base->changelog_epoch;
    hl_table_meta_get(rs->tbl, &rs->seen);
    rs->out->used_base = 1;
}

/* An empty changelog whose end lies below the changelog offset base
 * covers: the state topic was deleted and created again (offsets only
 * grow). base, the local snapshot, is then the whole state there is:
 * refused, as a base outside the watermarks is, its users were dropped
 * and the input read again from auto.offset.reset, which loses every user
 * whose events retention has deleted since (an idle one). Kept, the
 * caller writes every row again (out->recreated), so the new topic holds
 * them all. A recreated topic that holds records already (another owner
 * wrote since) is still refused: their epochs and the base's do not
 * order. */
static int recreated(restorer *rs, int32_t p, const hl_changelog_base *base, int64_t *from)
{
    hl_changelog *cl = rs->cl;
    hl_counter_add(cl->mx.recreated, 1);
    hl_log(HL_LOG_ERROR, "changelog_recreated", "topic=%s partition=%d covered=%lld "
           "high=%lld next_offset=%lld reason=\"the state topic is empty below the changelog "
           "offset the local snapshot covers: deleted and created again\" action=\"kept the "
           "local snapshot's users and write them all to the new topic; a member without "
           "this snapshot would have restored nothing\"", cl->topic, (int)p,
           (long long)base->changelog_offset, (long long)rs->out->high,
           (long long)base->next_offset);
    rs->out->recreated = 1;
    rs->out->base_cover = base->changelog_offset;
    rs->out->base_epoch = base->changelog_epoch;
    *from = rs->out->high;
    base_start(rs, base);   /* its epoch too: the claim still outranks the old owners */
    return 0;
}

/* The watermarks into out, and the offset the read starts at: the low
 * watermark, or the base's changelog offset (HL_ENOENT when it is not
 * within them), whose epoch and meta the read then goes on from. */
static int read_start(restorer *rs, int32_t p, const hl_changelog_base *base, int64_t *from,
                      char *errbuf, size_t errlen)
{
    hl_changelog *cl = rs->cl;
    hl_changelog_restored *out = rs->out;
    rd_kafka_resp_err_t err = rd_kafka_query_watermark_offsets(cl->rk, cl->topic, p,
                                                               &out->low, &out->high,
                                                               cl->o.timeout_ms);
    if (err)
        return hl_err(errbuf, errlen, HL_EIO, "changelog %s [%d]: watermarks: %s", cl->topic,
                      (int)p, rd_kafka_err2str(err));
    *from = out->low;
    if (base == NULL)
        return 0;
    if (base->changelog_offset > out->high && out->low == out->high)
        return recreated(rs, p, base, from);
    if (base->changelog_offset > out->high && out->low == 0) {
        rs->adopt = base;       /* its first record decides (adopt) */
        base_start(rs, base);
        return 0;
    }
    if (base->changelog_offset < out->low || base->changelog_offset > out->high)
        return hl_err(errbuf, errlen, HL_ENOENT, "changelog %s [%d]: the local snapshot "
                      "covers up to offset %lld, outside the watermarks %lld..%lld",
                      cl->topic, (int)p, (long long)base->changelog_offset,
                      (long long)out->low, (long long)out->high);
    *from = base->changelog_offset;
    base_start(rs, base);
    return 0;
}

/* After the last record: a base a later owner's records showed unusable is
 * refused (HL_ENOENT), else the meta and the models held are set. */
static int read_end(restorer *rs, const hl_changelog_base *base, int32_t p, int64_t from,
                    char *errbuf, size_t errlen)
{
    hl_changelog *cl = rs->cl;
    /* Rows or tombstones after the base's cover with no checkpoint after
     * them: a flush that was in the air when the snapshot began and whose
     * checkpoint never landed (a crash, or a failed checkpoint and a stop
     * before the retry). Its rows are cut at an input offset below the
     * base's: taken over the base's newer rows and resumed at the base's
     * offset, their users' events in between were lost (and the claim
     * then wrote that offset down for every later reader). The input
     * offset they need is the previous checkpoint's, before the cover:
     * a whole read finds it (test_cache_then_unfinished_flush). */
    if (base != NULL && rs->since_ck > 0 && !(rs->have_ck && rs->ck.offset >= 0))
        return hl_err(errbuf, errlen, HL_ENOENT, "changelog %s [%d]: %llu rows or "
                      "tombstones after the local snapshot's cover (offset %lld) and no "
                      "checkpoint after them: a flush that never finished, cut before "
                      "the snapshot's input offset %lld", cl->topic, (int)p,
                      (unsigned long long)rs->since_ck, (long long)from,
                      (long long)base->next_offset);
    if (rs->not_ours)
        return hl_err(errbuf, errlen, HL_ENOENT, "changelog %s [%d]: the local snapshot "
                      "covers up to offset %lld, outside the watermarks %lld..%lld",
                      cl->topic, (int)p, (long long)base->changelog_offset,
                      (long long)rs->out->low, (long long)rs->out->high);
    if (rs->usurper)
        return hl_err(errbuf, errlen, HL_ENOENT, "changelog %s [%d]: the local snapshot "
                      "covers epoch %lld up to offset %lld, but epoch %lld claimed the "
                      "partition before that offset: the snapshot was written by an owner "
                      "that had lost the partition", cl->topic, (int)p,
                      (long long)rs->base_epoch, (long long)from, (long long)rs->usurper);
    finish(rs, base);
    models_held(rs);
    /* A changelog written under a larger state.max.users keeps the pod's
     * limit: its least recently active users go now (table.h). */
    if (hl_table_trim(rs->tbl, NULL) != 0)
        return hl_err(errbuf, errlen, HL_ENOMEM, "changelog %s [%d]: no memory to sort "
                      "its users down to state.max.users=%zu; give the pod more memory",
                      cl->topic, (int)p, rs->cl->o.topts->max_users);
    return 0;
}

int hl_changelog_read(hl_changelog *cl, int32_t p, hl_table *tbl,
                      const hl_changelog_base *base, hl_changelog_restored *out,
                      char *errbuf, size_t errlen)
{
    int64_t t0 = hl_now_mono_ms(), from = 0;
    restorer rs = {.cl = cl, .tbl = tbl, .out = out};
    memset(out, 0, sizeof *out);
    int rc = restorer_init(&rs, errbuf, errlen);
    if (rc == 0)
        rc = read_start(&rs, p, base, &from, errbuf, errlen);
    if (rc != 0)
        goto out;
    int64_t t_read = hl_now_mono_us();
    if (out->high > from && (rc = read_into(&rs, p, base, from, errbuf, errlen)) != 0)
        goto out;
    if ((rc = read_end(&rs, base, p, from, errbuf, errlen)) != 0)
        goto out;
    out->read_s = (double)(hl_now_mono_us() - t_read) / 1e6;
    report_foreign(&rs, p);
out:
    out->duration_s = (double)(hl_now_mono_ms() - t0) / 1000.0;
    if (rc == 0)
        observe(cl, p, out);
    restorer_free(&rs);
    return rc;
}

int hl_changelog_restore(hl_changelog *cl, int32_t p, hl_table *tbl,
                         const hl_changelog_base *base, hl_changelog_restored *out,
                         char *errbuf, size_t errlen)
{
    int rc = hl_changelog_read(cl, p, tbl, base, out, errbuf, errlen);
    return rc != 0 ? rc : hl_changelog_claim(cl, p, tbl, out, 0, errbuf, errlen);
}

int hl_changelog_replay(hl_changelog *cl, hl_table *tbl, const hl_changelog_base *base,
                        const hl_changelog_rec *recs, size_t n, hl_changelog_restored *out,
                        char *errbuf, size_t errlen)
{
    restorer rs = {.cl = cl, .tbl = tbl, .out = out};
    memset(out, 0, sizeof *out);
    int rc = restorer_init(&rs, errbuf, errlen);
    if (rc == 0) {
        if (base != NULL)
            base_start(&rs, base);
        for (size_t i = 0; i < n && !rs.usurper; i++)
            apply(&rs, &recs[i]);
        rc = read_end(&rs, base, 0, base ? base->changelog_offset : 0, errbuf, errlen);
    }
    restorer_free(&rs);
    return rc;
}
