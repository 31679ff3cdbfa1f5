/* bench_worker_model.h - bench_worker's random model (item ids as the
 * synthetic stream's) and the ranker ceiling of worker_lists: THREADS
 * threads refreshing batches of 256 users at once, each with its own
 * ranker, as the worker's shard threads do. Included by bench_worker.c,
 * which provides THREADS, REPS, now_s(), die() and median(). */
#ifndef BENCH_WORKER_MODEL_H
#define BENCH_WORKER_MODEL_H

#include <pthread.h>

static float frand(uint64_t *s)
{
    *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17;
    return (float)((double)(*s >> 11) / 9007199254740992.0) * 2.0f - 1.0f;
}

/* A random model with items "i000000".. (the synthetic stream's ids). */
static void write_model(const char *path, int n_items, int dim)
{
    hl_model_parts p;
    memset(&p, 0, sizeof p);
    hl_model_info *mi = &p.info;
    mi->dim = dim;
    mi->n_heads = 3;
    mi->half_life_ms[0] = 3600e3; mi->half_life_ms[1] = 86400e3; mi->half_life_ms[2] = 2592e6;
    for (int t = 0; t < HL_N_TYPES; t++)
        mi->type_weight[t] = 1;
    mi->n_items = n_items;
    mi->n_layers = 2;
    mi->layer_out[0] = 256;
    mi->layer_out[1] = dim;
    snprintf(mi->version, sizeof mi->version, "bench-%d-%d", n_items, dim);
    int in = hl_model_input_dim(mi);
    size_t ne = (size_t)n_items * dim;
    float *e_in = malloc(ne * 4), *e_out = malloc(ne * 4), *bias = malloc((size_t)n_items * 4);
    float *w0 = malloc((size_t)256 * in * 4), *b0 = calloc(256, 4);
    float *w1 = malloc((size_t)dim * 256 * 4), *b1 = calloc((size_t)dim, 4);
    char (*ids)[16] = malloc((size_t)n_items * 16);
    const char **idp = malloc(sizeof *idp * (size_t)n_items);
    uint32_t *lens = malloc(sizeof *lens * (size_t)n_items);
    uint64_t s = 99;
    for (size_t i = 0; i < ne; i++) { e_in[i] = frand(&s); e_out[i] = frand(&s) * 0.3f; }
    for (int i = 0; i < 256 * in; i++) w0[i] = frand(&s) * 0.1f;
    for (int i = 0; i < dim * 256; i++) w1[i] = frand(&s) * 0.1f;
    for (int i = 0; i < n_items; i++) {
        bias[i] = frand(&s) * 0.1f;
        lens[i] = (uint32_t)hl_synth_item_id(i, ids[i]);
        idp[i] = ids[i];
    }
    p.item_id = idp; p.item_id_len = lens;
    p.e_in = e_in; p.e_out = e_out; p.bias = bias;
    p.layer_w[0] = w0; p.layer_b[0] = b0; p.layer_w[1] = w1; p.layer_b[1] = b1;
    char err[512];
    if (hl_model_write(path, &p, err, sizeof err) != 0)
        die(err);
    free(e_in); free(e_out); free(bias); free(w0); free(b0); free(w1); free(b1);
    free(ids); free(idp); free(lens);
}

/* One ceiling thread: its own ranker over shared user rows, refreshing
 * batches of CEIL_B users for 0.7 s. */
#define CEIL_B 256
typedef struct ceil_thread {
    hl_ranker         *r;
    const hl_row_view *v;
    double             rate;
} ceil_thread;

static void *ceil_run(void *arg)
{
    ceil_thread *c = arg;
    hl_rec *out = malloc(sizeof *out * CEIL_B * 20);
    int n_out[CEIL_B], iters = 0;
    double t0 = now_s();
    while (now_s() - t0 < 0.7) {
        hl_ranker_refresh(c->r, c->v, CEIL_B, out, n_out);
        iters++;
    }
    c->rate = (double)iters * CEIL_B / (now_s() - t0);
    free(out);
    return NULL;
}

/* 256 users shaped like the benchmark's stream (500k users, 40k events:
 * one or two events each, so exclusions and `because` cost what they cost
 * in the worker), in tbl, their rows in v. */
static void ceiling_users(hl_table *tbl, const hl_model *m, hl_row_view *v)
{
    const hl_model_info *mi = hl_model_info_get(m);
    char users[CEIL_B][16];
    uint64_t s = 7;
    for (int u = 0; u < CEIL_B; u++) {
        snprintf(users[u], 16, "u%d", u);
        for (int e = 0; e < 1 + (u & 1); e++) {
            hl_event ev = {.user = users[u], .user_len = (uint32_t)strlen(users[u]),
                           .item = (int32_t)((frand(&s) + 1) * 0.5 * (mi->n_items - 1)),
                           .type = 0, .w = 1, .ts_ms = 1000 * e, .offset = e};
            hl_table_apply(tbl, &ev, 1, hl_model_e_in(m), mi->n_items, NULL);
        }
    }
    for (int u = 0; u < CEIL_B; u++)
        hl_table_view(tbl, (uint32_t)hl_table_find(tbl, users[u], strlen(users[u])), &v[u]);
}

/* hl_ranker_refresh lists/s with the given recs.scoring (HL_SCORING_*),
 * batches of 256: THREADS threads at once, each with its own ranker, the
 * sum of their rates (median of REPS). All at once, not one thread times
 * THREADS, so the threads share memory bandwidth and the cores as the
 * worker's do. (On a loaded machine it can still read below the worker,
 * README says by how much.) */
static double ranker_ceiling(const char *model_path, int scoring)
{
    char err[512];
    hl_model *m = hl_model_open(model_path, err, sizeof err);
    if (m == NULL)
        die(err);
    const hl_model_info *mi = hl_model_info_get(m);
    hl_table_opts to = {.history = 32, .max_users = 1 << 20, .expected_users = CEIL_B};
    hl_decay_init(&to.decay, mi->n_heads, mi->dim, mi->half_life_ms, NULL, 0);
    hl_table *tbl = hl_table_create(&to, NULL, 0);
    static hl_row_view v[CEIL_B];
    ceiling_users(tbl, m, v);
    hl_rank_opts ro = {.k = 20, .exclude_seen = 1, .max_batch = CEIL_B, .scoring = scoring};
    ceil_thread c[16];
    int nt = THREADS < 16 ? THREADS : 16;
    for (int i = 0; i < nt; i++)
        if ((c[i] = (ceil_thread){.r = hl_ranker_create(m, &ro, err, sizeof err), .v = v}).r == NULL)
            die(err);
    openblas_set_num_threads(1);        /* as in each worker thread */
    double rates[REPS];
    for (int rep = 0; rep < REPS; rep++) {
        pthread_t th[16];
        rates[rep] = 0;
        for (int i = 0; i < nt; i++)
            pthread_create(&th[i], NULL, ceil_run, &c[i]);
        for (int i = 0; i < nt; i++) {
            pthread_join(th[i], NULL);
            rates[rep] += c[i].rate;
        }
    }
    for (int i = 0; i < nt; i++)
        hl_ranker_destroy(c[i].r);
    hl_table_destroy(tbl);
    hl_model_close(m);
    return median(rates, REPS);
}

#endif