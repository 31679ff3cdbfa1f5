/* test_offline.c - what core/ computes for a stream, without Kafka: the
 * reference the end-to-end test (tests/integration/test_e2e.py) compares
 * the worker's published lists with.
 *
 * Modes, chosen by environment variables:
 *   HL_OFFLINE_MAKE_MODEL=path [HL_OFFLINE_ITEMS=n HL_OFFLINE_DIM=d
 *   HL_OFFLINE_HALF_LIVES=ms,ms,..]
 *       write a random model whose items are the synthetic stream's ids
 *       ("i000000"..), so tests need no training; its heads' half-lives
 *       those listed (default 1 h, 1 d, 30 d);
 *   HL_OFFLINE_MAKE_EVENTS=path [HL_OFFLINE_N=n HL_OFFLINE_USERS=u]
 *       write n synthetic events as events-csv;
 *   HL_OFFLINE_EVENTS=path HL_OFFLINE_MODEL=path [HL_OFFLINE_K=k]
 *       apply an events-csv file (file order = each user's order, as the
 *       producer sends it) with hl_table and rank every user with hl_ranker
 *       as the worker does, scoring exact fp32 over every item (the
 *       reference: a worker scoring two-stage must publish the same lists); print one JSON line per user:
 *       {"user":..,"t_ref":..,"items":[[item,score,because|null],..]};
 *       with HL_OFFLINE_CATALOGUE=path (lines as `halflife items` reads
 *       them: item_id,available[,expires_at_ms[,bias,e_in..,e_out..]]) the
 *       live catalogue of that file is applied, expiry at HL_OFFLINE_NOW
 *       (ms; default: the newest event time); HL_OFFLINE_HISTORY=n
 *       (state.history, default 32) and HL_OFFLINE_SEEN_EVENTS=n
 *       (recs.exclude.seen.events, default 0: the whole ring);
 *   HL_OFFLINE_SWAP_PRE=path HL_OFFLINE_SWAP_POST=path HL_OFFLINE_MODEL=A
 *   HL_OFFLINE_MODEL_B=B
 *       a model swap as core/ computes it (test_model_swap.py's reference):
 *       apply PRE under A, migrate every user into B (hl_migration with A's
 *       type weights, as the worker does; into a table of B's shape when
 *       B's dim, heads or half-lives differ), apply POST under B; print one
 *       JSON line per user: {"user":..,"m":[..],"s":[..]}; with
 *       HL_OFFLINE_SWAP_LISTS=1, each user's list under B instead, scored
 *       exact fp32 (as HL_OFFLINE_EVENTS prints them, k HL_OFFLINE_K);
 *   HL_OFFLINE_FIT=1 HL_OFFLINE_MODEL=A HL_OFFLINE_MODEL_B=B
 *       the map a live swap from A to B fits: {"shared":..,"residual":..};
 *   none: the self-tests below. */
#define T_SUITE "offline"
#include "test.h"

#include "catalogue.h"
#include "dataset.h"
#include "migrate.h"
#include "model.h"
#include "rank.h"
#include "synth.h"
#include "table.h"

#include <stdint.h>
#include <unistd.h>

static float frand(uint64_t *s)
{
    *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17;
    return (float)((double)(*s >> 11) / 9007199254740992.0) * 2.0f - 1.0f;
}

static int make_model(const char *path, int n_items, int dim, char *err, size_t errlen)
{
    hl_model_parts p;
    memset(&p, 0, sizeof p);
    hl_model_info *mi = &p.info;
    mi->dim = dim;
    mi->n_heads = 3;
    mi->half_life_ms[0] = 3600e3; mi->half_life_ms[1] = 86400e3; mi->half_life_ms[2] = 30 * 86400e3;
    const char *hls = getenv("HL_OFFLINE_HALF_LIVES");
    if (hls && *hls) {          /* another state shape (a reshape test) */
        char *end;
        for (mi->n_heads = 0; mi->n_heads < HL_MAX_HEADS && *hls; hls = *end ? end + 1 : end)
            mi->half_life_ms[mi->n_heads++] = strtod(hls, &end);
    }
    const float tw[HL_N_TYPES] = {1, 2, 3, 4, 5, 1};
    memcpy(mi->type_weight, tw, sizeof tw);
    mi->n_items = n_items;
    mi->n_layers = 1;
    mi->layer_out[0] = dim;
    snprintf(mi->version, sizeof mi->version, "offline-random-%d-%d", n_items, dim);
    int in = hl_model_input_dim(mi);
    size_t ne = (size_t)n_items * dim;
    float *e_in = malloc(ne * 4), *e_out = malloc(ne * 4), *bias = malloc((size_t)n_items * 4);
    float *w = malloc((size_t)dim * in * 4), *b = malloc((size_t)dim * 4);
    char **ids = malloc(sizeof *ids * (size_t)n_items);
    uint32_t *lens = malloc(sizeof *lens * (size_t)n_items);
    const char *seed = getenv("HL_OFFLINE_SEED");   /* another model, same ids */
    uint64_t s = seed && *seed ? strtoull(seed, NULL, 10) | 1 : 12345;
    for (size_t i = 0; i < ne; i++) { e_in[i] = frand(&s); e_out[i] = frand(&s) * 0.5f; }
    for (int i = 0; i < n_items; i++) {
        bias[i] = frand(&s) * 0.1f;
        ids[i] = malloc(16);
        lens[i] = (uint32_t)hl_synth_item_id(i, ids[i]);
    }
    for (int i = 0; i < dim * in; i++) w[i] = frand(&s) * 0.3f;
    for (int i = 0; i < dim; i++) b[i] = frand(&s) * 0.1f;
    p.item_id = (const char *const *)ids;
    p.item_id_len = lens;
    p.e_in = e_in; p.e_out = e_out; p.bias = bias;
    p.layer_w[0] = w; p.layer_b[0] = b;
    int rc = hl_model_write(path, &p, err, errlen);
    for (int i = 0; i < n_items; i++) free(ids[i]);
    free(ids); free(lens); free(e_in); free(e_out); free(bias); free(w); free(b);
    return rc;
}

static int make_events(const char *path, int n, int users, int items)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    hl_synth_opts so;
    hl_synth_opts_default(&so);
    so.n_users = users;
    so.n_items = items;
    so.n_topics = items >= 20 ? 20 : 1;
    hl_synth *s = hl_synth_create(&so, NULL, 0);
    hl_synth_event ev;
    fprintf(f, "user_id,item_id,event_type,timestamp_ms,weight\n");
    for (int i = 0; i < n; i++) {
        hl_synth_next(s, &ev);
        if (ev.has_weight)
            fprintf(f, "%s,%s,%s,%lld,%g\n", ev.user, ev.item, hl_type_name(ev.type),
                    (long long)ev.ts_ms, (double)ev.weight);
        else
            fprintf(f, "%s,%s,%s,%lld,\n", ev.user, ev.item, hl_type_name(ev.type),
                    (long long)ev.ts_ms);
    }
    hl_synth_destroy(s);
    return fclose(f);
}

/* Reads path into tbl the way the worker applies events. Returns events or <0. */
static long apply_file_at(hl_table *tbl, const hl_model *m, const char *path, long base,
                          char *err, size_t errlen);

static long apply_file(hl_table *tbl, const hl_model *m, const char *path, char *err, size_t errlen)
{
    return apply_file_at(tbl, m, path, 0, err, errlen);
}

static const hl_catview *g_view;    /* the offline run's catalogue, if any */

/* An item the catalogue added: its e_in, as the worker gives it (NULL for
 * any other item). */
static const float *added_e_in(uint64_t key)
{
    int32_t row = g_view ? hl_catview_added_row(g_view, key) : -1;
    if (row < 0)
        return NULL;
    return hl_catview_side_e_in(g_view) +
           (size_t)(row - hl_catview_n_model(g_view)) * (size_t)hl_catview_dim(g_view);
}

/* Like apply_file, numbering the events' offsets from base. */
static long apply_file_at(hl_table *tbl, const hl_model *m, const char *path, long base,
                          char *err, size_t errlen)
{
    hl_dataset_opts dopts = {.format = HL_FMT_EVENTS_CSV};
    hl_dataset_reader *r = hl_dataset_open(path, &dopts, err, errlen);
    if (r == NULL)
        return -1;
    const hl_model_info *mi = hl_model_info_get(m);
    hl_dataset_event de;
    long n = 0;
    while (hl_dataset_next(r, &de, err, errlen) == 1) {
        hl_event ev = {.user = de.user, .user_len = de.user_len,
                       .item = hl_model_item_find(m, de.item, de.item_len),
                       .item_key = hl_item_key(de.item, de.item_len),
                       .type = (uint8_t)de.type, .w = mi->type_weight[de.type] * de.weight,
                       .ts_ms = de.ts_ms, .offset = base + n};
        if (ev.item < 0 && (ev.x = added_e_in(ev.item_key)) != NULL)
            ev.item = HL_ITEM_ADDED;
        hl_table_apply(tbl, &ev, 1, hl_model_e_in(m), mi->n_items, NULL);
        n++;
    }
    hl_dataset_close(r);
    return n;
}

static int env_int(const char *name, int def)
{
    const char *v = getenv(name);
    return v && *v ? atoi(v) : def;
}

static hl_table *new_table(const hl_model *m)
{
    const hl_model_info *mi = hl_model_info_get(m);
    hl_table_opts to = {.history = env_int("HL_OFFLINE_HISTORY", 32), .max_users = 10000000,
                        .evict_mass = 1e-6f, .expected_users = 1024};
    if (hl_decay_init(&to.decay, mi->n_heads, mi->dim, mi->half_life_ms, NULL, 0) != 0)
        return NULL;
    return hl_table_create(&to, NULL, 0);
}

static void json_str(FILE *f, const char *s, uint32_t n)
{
    fputc('"', f);
    for (uint32_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

/* The catalogue of a `halflife items` file; NULL and a reason on failure. */
static hl_catalogue *read_catalogue(const hl_model *m, const char *path, char *err,
                                    size_t errlen)
{
    int dim = hl_model_info_get(m)->dim;
    FILE *f = fopen(path, "r");
    hl_catalogue *c = f ? hl_catalogue_create(m, 100000, err, errlen) : NULL;
    float *vec = malloc(2 * (size_t)dim * sizeof(float));
    char line[65536];
    while (c && vec && fgets(line, sizeof line, f)) {
        char *fld[4 + 2 * 256];
        int n = 0;
        line[strcspn(line, "\r\n")] = '\0';
        for (char *p = line; n < 4 + 2 * 256 && p; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL)
            fld[n++] = p;
        for (char *p = strchr(line, ','); p; p = strchr(p + 1, ','))
            *p = '\0';
        hl_item_update u = {.id = fld[0], .id_len = (uint32_t)strlen(fld[0]),
                            .available = n > 1 && !strcmp(fld[1], "true"),
                            .tombstone = n > 1 && !strcmp(fld[1], "delete"),
                            .expires_at_ms = n > 2 && fld[2][0] ? strtoll(fld[2], NULL, 10)
                                                                : HL_CATALOGUE_NO_EXPIRY};
        if (n == 4 + 2 * dim) {
            u.bias = strtof(fld[3], NULL);
            for (int d = 0; d < 2 * dim; d++)
                vec[d] = strtof(fld[4 + d], NULL);
            u.e_in = vec;
            u.e_out = vec + dim;
        }
        if (n >= 2 && hl_catalogue_apply(c, &u, err, errlen) != 0) {
            hl_catalogue_destroy(c);
            c = NULL;
        }
    }
    if (f == NULL)
        snprintf(err, errlen, "cannot open %s", path);
    if (f)
        fclose(f);
    free(vec);
    return c;
}

static const char *row_id(const hl_model *m, int32_t row, uint32_t *len)
{
    return g_view ? hl_catview_item_id(g_view, row, len) : hl_model_item_id(m, row, len);
}

static void print_list(FILE *f, const hl_model *m, const hl_row_view *v,
                       const hl_rec *recs, int n)
{
    uint32_t len;
    fprintf(f, "{\"user\":");
    json_str(f, v->user, v->user_len);
    fprintf(f, ",\"t_ref\":%lld,\"items\":[", (long long)v->t_ref_ms);
    for (int j = 0; j < n; j++) {
        const char *id = row_id(m, recs[j].item, &len);
        fprintf(f, "%s[", j ? "," : "");
        json_str(f, id, len);
        fprintf(f, ",%.9g,", (double)recs[j].score);
        if (recs[j].because >= 0) {
            id = hl_model_item_id(m, recs[j].because, &len);
            json_str(f, id, len);
        } else {
            fprintf(f, "null");
        }
        fprintf(f, "]");
    }
    fprintf(f, "]}\n");
}

static int64_t env_ms(const char *name, int64_t def)
{
    const char *v = getenv(name);
    return v && *v ? strtoll(v, NULL, 10) : def;
}

/* The user's ring entries the catalogue added or overrides, as ranker rows: seen, like
 * model items in the ring (the worker's publish.c does the same). */
static hl_rank_exclude added_seen(const hl_row_view *v, int window, int32_t *rows)
{
    int n = 0;
    for (int j = hl_row_seen_from(v, window); g_view && j < v->n_hist; j++) {
        int k = hl_row_hist_index(v, j);
        int32_t row = v->hist_item[k] < 0 ? hl_catview_added_row(g_view, v->hist_key[k])
                                          : hl_catview_override_row(g_view, v->hist_item[k]);
        if (row >= 0)
            rows[n++] = row;
    }
    return (hl_rank_exclude){.item = rows, .n = n};
}

/* Ranks every live user of tbl; prints to f. Returns users ranked or <0. */
static long rank_all(hl_table *tbl, const hl_model *m, int k, FILE *f)
{
    enum { B = 256 };
    int window = env_int("HL_OFFLINE_SEEN_EVENTS", 0);
    hl_rank_opts ro = {.k = k, .exclude_seen = 1, .seen_window = window, .max_batch = B,
                       .scoring = HL_SCORING_EXACT};
    hl_ranker *r = hl_ranker_create(m, &ro, NULL, 0);
    hl_row_view *v = calloc(B, sizeof *v);
    hl_rank_catalogue rc = {0};
    int32_t *hidden = NULL;
    if (g_view != NULL && r != NULL) {
        hl_table_meta meta;
        int64_t next, now = env_ms("HL_OFFLINE_NOW", 0);
        hl_table_meta_get(tbl, &meta);
        hidden = malloc(((size_t)hl_catview_hidden_max(g_view) + 1) * sizeof *hidden);
        rc = (hl_rank_catalogue){
            .hidden = hidden,
            .n_hidden = hl_catview_hidden_at(g_view, now ? now : meta.newest_ts_ms, hidden, &next),
            .e_in = hl_catview_side_e_in(g_view), .e_out = hl_catview_side_e_out(g_view),
            .bias = hl_catview_side_bias(g_view), .n_side = hl_catview_n_side(g_view)};
        hl_ranker_set_catalogue(r, &rc);
    }
    hl_rec *recs = calloc((size_t)B * k, sizeof *recs);
    hl_rank_exclude ex[B];
    static int32_t seen[B][255];        /* new_table's history, at most 255 */
    int n_out[B];
    long users = 0;
    uint32_t lim = hl_table_row_limit(tbl);
    for (uint32_t row = 0; r && row < lim;) {
        int n = 0;
        for (; row < lim && n < B; row++)
            if (hl_table_row_live(tbl, row))
                hl_table_view(tbl, row, &v[n++]);
        for (int i = 0; i < n; i++)
            ex[i] = added_seen(&v[i], window, seen[i]);
        if (n == 0 || hl_ranker_refresh_ex(r, v, n, ex, recs, n_out) != 0)
            continue;
        for (int i = 0; i < n; i++)
            print_list(f, m, &v[i], recs + (size_t)i * k, n_out[i]);
        users += n;
    }
    hl_ranker_destroy(r);
    free(hidden);
    free(v);
    free(recs);
    return r ? users : -1;
}

static int offline_main(const char *events, const char *model, int k)
{
    char err[512];
    hl_model *m = hl_model_open(model, err, sizeof err);
    if (m == NULL) {
        fprintf(stderr, "offline: %s\n", err);
        return 1;
    }
    const char *cpath = getenv("HL_OFFLINE_CATALOGUE");
    hl_catalogue *cat = NULL;
    hl_catview *view = NULL;
    if (cpath && *cpath) {
        if ((cat = read_catalogue(m, cpath, err, sizeof err)) == NULL ||
            (view = hl_catalogue_view(cat)) == NULL) {
            fprintf(stderr, "offline: catalogue: %s\n", err);
            return 1;
        }
        g_view = view;
    }
    hl_table *tbl = new_table(m);
    long n = apply_file(tbl, m, events, err, sizeof err);
    long users = n >= 0 ? rank_all(tbl, m, k, stdout) : -1;
    if (n < 0 || users < 0)
        fprintf(stderr, "offline: %s\n", n < 0 ? err : "ranking failed");
    hl_table_destroy(tbl);
    g_view = NULL;
    hl_catview_destroy(view);
    hl_catalogue_destroy(cat);
    hl_model_close(m);
    return n < 0 || users < 0;
}

static void print_state(FILE *f, const hl_row_view *v, int n_s, int n_heads)
{
    fprintf(f, "{\"user\":");
    json_str(f, v->user, v->user_len);
    fprintf(f, ",\"m\":[");
    for (int h = 0; h < n_heads; h++) fprintf(f, "%s%.9g", h ? "," : "", (double)v->m[h]);
    fprintf(f, "],\"s\":[");
    for (int j = 0; j < n_s; j++) fprintf(f, "%s%.9g", j ? "," : "", (double)v->s[j]);
    fprintf(f, "]}\n");
}

/* Every live row of *tblp from a's space into b's, or (HL_OFFLINE_REBUILD
 * set: the old model is not at hand) rebuilt from the rings with b; into
 * a new table of b's shape (replacing *tblp) when a's state shape is not
 * b's, as the worker's restart does. */
static int migrate_all(hl_table **tblp, const hl_model *a, const hl_model *b, char *err,
                       size_t errlen)
{
    const char *rb = getenv("HL_OFFLINE_REBUILD");
    const hl_model_info *ia = hl_model_info_get(a), *ib = hl_model_info_get(b);
    int reshape = ia->dim != ib->dim || ia->n_heads != ib->n_heads;
    for (int h = 0; h < ia->n_heads && !reshape; h++)
        reshape = ia->half_life_ms[h] != ib->half_life_ms[h];
    hl_migration *mg = rb && *rb
        ? hl_migration_rebuild(b, ib->type_weight, err, errlen)
        : reshape ? hl_migration_create_any(a, b, ia->type_weight, err, errlen)
                  : hl_migration_create(a, b, ia->type_weight, err, errlen);
    hl_table *dst = reshape && mg ? new_table(b) : NULL;
    int64_t n = mg == NULL ? -1 : !reshape ? hl_migration_table(mg, *tblp)
                          : dst ? hl_migration_table_into(mg, *tblp, dst) : -1;
    hl_migration_destroy(mg);
    if (dst != NULL && n >= 0) {
        hl_table_destroy(*tblp);
        *tblp = dst;
    } else {
        hl_table_destroy(dst);
    }
    return n < 0 ? -1 : 0;
}

static int swap_main(const char *pre, const char *post, const char *ma, const char *mb)
{
    char err[512] = "";
    hl_model *a = hl_model_open(ma, err, sizeof err);
    hl_model *b = a ? hl_model_open(mb, err, sizeof err) : NULL;
    hl_table *tbl = a ? new_table(a) : NULL;
    long n = -1, n2 = -1;
    if (tbl != NULL && (n = apply_file(tbl, a, pre, err, sizeof err)) >= 0 && b != NULL &&
        migrate_all(&tbl, a, b, err, sizeof err) == 0)
        n2 = apply_file_at(tbl, b, post, n, err, sizeof err);
    const char *lists = getenv("HL_OFFLINE_SWAP_LISTS");
    if (n2 >= 0 && lists && *lists) {
        const char *k = getenv("HL_OFFLINE_K");
        if (rank_all(tbl, b, k && *k ? atoi(k) : 20, stdout) < 0)
            n2 = -1;
    } else if (n2 >= 0) {
        const hl_model_info *mi = hl_model_info_get(b);
        for (uint32_t row = 0; row < hl_table_row_limit(tbl); row++) {
            hl_row_view v;
            if (!hl_table_row_live(tbl, row)) continue;
            hl_table_view(tbl, row, &v);
            print_state(stdout, &v, mi->n_heads * mi->dim, mi->n_heads);
        }
    } else {
        fprintf(stderr, "offline swap: %s\n", err[0] ? err : "failed");
    }
    hl_table_destroy(tbl);
    hl_model_close(a);
    hl_model_close(b);
    return n2 < 0;
}

/* The map a live swap from A to B fits (worker/models.c fit(): one shape
 * or another, A's type weights): {"shared":..,"residual":..}, what the
 * worker's halflife_model_migration_* gauges must read after that swap. */
static int fit_main(const char *ma, const char *mb)
{
    char err[512] = "";
    hl_model *a = hl_model_open(ma, err, sizeof err);
    hl_model *b = a ? hl_model_open(mb, err, sizeof err) : NULL;
    hl_migration *mg = NULL;
    if (b != NULL) {
        const hl_model_info *ia = hl_model_info_get(a), *ib = hl_model_info_get(b);
        int same = ia->dim == ib->dim && ia->n_heads == ib->n_heads;
        for (int h = 0; h < ia->n_heads && same; h++)
            same = ia->half_life_ms[h] == ib->half_life_ms[h];
        mg = same ? hl_migration_create(a, b, ia->type_weight, err, sizeof err)
                  : hl_migration_create_any(a, b, ia->type_weight, err, sizeof err);
    }
    if (mg != NULL)
        printf("{\"shared\":%d,\"residual\":%.9g}\n", hl_migration_shared(mg),
               hl_migration_residual(mg));
    else
        fprintf(stderr, "offline fit: %s\n", err[0] ? err : "failed");
    hl_migration_destroy(mg);
    hl_model_close(b);
    hl_model_close(a);
    return mg == NULL;
}

/* ---- self-tests -------------------------------------------------------- */

static char tmpdir[64];

static void test_model_roundtrip(void)
{
    char path[128], err[256];
    snprintf(path, sizeof path, "%s/m.hlm", tmpdir);
    CHECKF(make_model(path, 300, 16, err, sizeof err) == 0, "%s", err);
    hl_model *m = hl_model_open(path, err, sizeof err);
    CHECKF(m != NULL, "%s", err);
    if (m == NULL)
        return;
    CHECK(hl_model_info_get(m)->n_items == 300);
    CHECK(hl_model_item_find(m, "i000299", 7) == 299);
    hl_model_close(m);
}

/* The offline reference must not depend on how users are split into
 * shards: applying everything in one table or per user-hash shard gives the
 * same lists (what lets the e2e test ignore partitioning). */
static void test_sharding_invariant(void)
{
    char mpath[128], epath[128], err[256];
    snprintf(mpath, sizeof mpath, "%s/m2.hlm", tmpdir);
    snprintf(epath, sizeof epath, "%s/e.csv", tmpdir);
    CHECK(make_model(mpath, 200, 8, err, sizeof err) == 0);
    CHECK(make_events(epath, 3000, 50, 200) == 0);
    hl_model *m = hl_model_open(mpath, err, sizeof err);
    CHECKF(m != NULL, "%s", err);
    if (m == NULL)
        return;
    hl_table *one = new_table(m);
    CHECK(apply_file(one, m, epath, err, sizeof err) == 3000);
    char *a = NULL, *b = NULL;
    size_t al = 0, bl = 0;
    FILE *fa = open_memstream(&a, &al);
    CHECK(rank_all(one, m, 10, fa) == 50);
    fclose(fa);
    /* Two tables split by the first byte parity of the user's last digit. */
    hl_table *sh[2] = {new_table(m), new_table(m)};
    hl_dataset_opts dopts = {.format = HL_FMT_EVENTS_CSV};
    hl_dataset_reader *r = hl_dataset_open(epath, &dopts, err, sizeof err);
    const hl_model_info *mi = hl_model_info_get(m);
    hl_dataset_event de;
    long n = 0;
    while (r && hl_dataset_next(r, &de, err, sizeof err) == 1) {
        hl_event ev = {.user = de.user, .user_len = de.user_len,
                       .item = hl_model_item_find(m, de.item, de.item_len),
                       .type = (uint8_t)de.type, .w = mi->type_weight[de.type] * de.weight,
                       .ts_ms = de.ts_ms, .offset = n++};
        hl_table_apply(sh[de.user[de.user_len - 1] & 1], &ev, 1, hl_model_e_in(m), mi->n_items, NULL);
    }
    hl_dataset_close(r);
    FILE *fb = open_memstream(&b, &bl);
    CHECK(rank_all(sh[0], m, 10, fb) + rank_all(sh[1], m, 10, fb) == 50);
    fclose(fb);
    /* Same set of lines, in a different order: compare sorted line sets by
     * total length and by each line of a appearing in b. */
    CHECK(al == bl);
    for (char *line = a; line && *line;) {
        char *nl = strchr(line, '\n');
        *nl = '\0';
        CHECKF(strstr(b, line) != NULL, "line missing: %.80s", line);
        line = nl + 1;
    }
    free(a);
    free(b);
    hl_table_destroy(one);
    hl_table_destroy(sh[0]);
    hl_table_destroy(sh[1]);
    hl_model_close(m);
}

int main(void)
{
    const char *mk = getenv("HL_OFFLINE_MAKE_MODEL"), *me = getenv("HL_OFFLINE_MAKE_EVENTS");
    const char *ev = getenv("HL_OFFLINE_EVENTS"), *mo = getenv("HL_OFFLINE_MODEL");
    char err[512];
    if (mk && *mk) {
        if (make_model(mk, env_int("HL_OFFLINE_ITEMS", 1000), env_int("HL_OFFLINE_DIM", 16),
                       err, sizeof err) != 0) {
            fprintf(stderr, "offline: %s\n", err);
            return 1;
        }
        return 0;
    }
    if (me && *me)
        return make_events(me, env_int("HL_OFFLINE_N", 10000), env_int("HL_OFFLINE_USERS", 500),
                           env_int("HL_OFFLINE_ITEMS", 1000)) != 0;
    if (ev && *ev && mo && *mo)
        return offline_main(ev, mo, env_int("HL_OFFLINE_K", 20));
    const char *pre = getenv("HL_OFFLINE_SWAP_PRE"), *post = getenv("HL_OFFLINE_SWAP_POST");
    const char *mb = getenv("HL_OFFLINE_MODEL_B");
    if (pre && *pre && post && mo && mb)
        return swap_main(pre, post, mo, mb);
    const char *fit = getenv("HL_OFFLINE_FIT");
    if (fit && *fit && mo && mb)
        return fit_main(mo, mb);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/hl_offline_XXXXXX");
    if (mkdtemp(tmpdir) == NULL)
        return 1;
    RUN(test_model_roundtrip);
    RUN(test_sharding_invariant);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0)
        return 1;
    TEST_EXIT();
}
