/* train_eval.c - leave-one-out HR@10 and NDCG@10 of a net: the validation
 * figure of each training epoch and the test figure after it
 * (hl_train_eval_loo).
 *
 * Users are scored in blocks of EVAL_BLOCK: the heads of each, one MLP
 * forward and one SGEMM against the whole catalogue, then each target's
 * rank among the items the user has not seen in its input events. The
 * worker's ranker is not used: `halflife eval` (worker/cmd_eval*.c)
 * measures through it; this is the trainer's own, faster check. */
#include "train_eval.h"

#include <cblas.h>

#define EVAL_BLOCK  256       /* users scored per SGEMM in evaluation */

/* Scratch for scoring blocks of users; sized once per evaluation. */
typedef struct evalbuf {
    float   *x, *s, *scores, *z[HL_MAX_LAYERS], *a[HL_MAX_LAYERS];
    int32_t *user;
    uint8_t *seen;         /* (n_items) marks of one user's input items */
    double   hits, ndcg;
    int64_t  n;
} evalbuf;

static void evalbuf_free(evalbuf *e)
{
    free(e->x); free(e->s); free(e->scores); free(e->user); free(e->seen);
    for (int l = 0; l < HL_MAX_LAYERS; l++) { free(e->z[l]); free(e->a[l]); }
}

static int evalbuf_init(evalbuf *e, const net *n)
{
    memset(e, 0, sizeof *e);
    int nb = EVAL_BLOCK;
    ALLOC(e->x, (size_t)nb * n->in_dim);
    ALLOC(e->s, (size_t)n->n_heads * n->dim);
    ALLOC(e->scores, (size_t)nb * n->n_items);
    ALLOC(e->user, nb);
    if ((e->seen = calloc((size_t)n->n_items, 1)) == NULL) return HL_ENOMEM;
    for (int l = 0; l < n->n_layers; l++) {
        ALLOC(e->z[l], (size_t)nb * n->layer_out[l]);
        ALLOC(e->a[l], (size_t)nb * n->layer_out[l]);
    }
    return 0;
}

/* Rank of row r's target among the items the user has not seen in its
 * input events [first, last]; counts the items that score strictly higher.
 * A target among the seen items counts as a miss. */
static void eval_one(evalbuf *e, const net *n, const seqs *sq, const float *sc,
                     int64_t first, int64_t last)
{
    int32_t target = sq->item[last + 1];
    float ts = sc[target];
    int64_t above = 0;
    for (int64_t i = first; i <= last; i++)
        if (sq->item[i] == target) { e->n++; return; }
    for (int32_t j = 0; j < n->n_items; j++)
        above += sc[j] > ts;
    for (int64_t i = first; i <= last; i++) {       /* seen items do not count */
        int32_t j = sq->item[i];
        if (!e->seen[j] && sc[j] > ts) above--;
        e->seen[j] = 1;
    }
    for (int64_t i = first; i <= last; i++) e->seen[sq->item[i]] = 0;
    e->n++;
    if (above < 10) {
        e->hits += 1;
        e->ndcg += 1.0 / log2((double)above + 2.0);
    }
}

static void eval_block(evalbuf *e, const net *n, const hl_decay *dec,
                       const seqs *sq, int nb, int back)
{
    for (int r = 0; r < nb; r++) {
        int32_t u = e->user[r];
        hl_train_heads_input(dec, n->e_in, sq, sq->off[u], sq->off[u + 1] - 1 - back, e->s,
                             e->x + (size_t)r * n->in_dim, NULL);
    }
    hl_train_mlp_forward(n, e->x, nb, e->z, e->a, NULL);
    const float *q = e->a[n->n_layers - 1];
    for (int r = 0; r < nb; r++)
        memcpy(e->scores + (size_t)r * n->n_items, n->bias, (size_t)n->n_items * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, n->n_items, n->dim, 1.0f,
                q, n->dim, n->e_out, n->dim, 1.0f, e->scores, n->n_items);
    for (int r = 0; r < nb; r++) {
        int32_t u = e->user[r];
        eval_one(e, n, sq, e->scores + (size_t)r * n->n_items, sq->off[u],
                 sq->off[u + 1] - 1 - back);
    }
}

int hl_train_eval_net(const net *n, const hl_decay *dec, const seqs *sq, int back,
                      int max_users, double *hr, double *ndcg)
{
    evalbuf e;
    int32_t n_ok = 0, nb = 0;
    if (evalbuf_init(&e, n)) {
        evalbuf_free(&e);
        return HL_ENOMEM;
    }
    for (int32_t u = 0; u < sq->n_users; u++)
        n_ok += sq->off[u + 1] - sq->off[u] >= back + 1;
    int64_t stride = max_users > 0 && n_ok > max_users ? n_ok : 0, acc = 0;
    for (int32_t u = 0; u < sq->n_users; u++) {
        if (sq->off[u + 1] - sq->off[u] < back + 1) continue;
        if (stride) {                       /* keep max_users of n_ok, spread */
            acc += max_users;
            if (acc < stride) continue;
            acc -= stride;
        }
        e.user[nb++] = u;
        if (nb == EVAL_BLOCK) {
            eval_block(&e, n, dec, sq, nb, back);
            nb = 0;
        }
    }
    if (nb) eval_block(&e, n, dec, sq, nb, back);
    *hr = e.n ? e.hits / (double)e.n : 0;
    *ndcg = e.n ? e.ndcg / (double)e.n : 0;
    evalbuf_free(&e);
    return 0;
}

int hl_train_eval_loo(const hl_train_result *res, const hl_train_data *d, int back,
                      int max_users, double *hr10, double *ndcg10,
                      char *errbuf, size_t errlen)
{
    hl_decay dec;
    seqs sq;
    net n;
    int rc;

    if (back < 1)
        return hl_err(errbuf, errlen, HL_EINVAL, "train: eval back must be >= 1");
    if ((rc = hl_train_check_data(d, errbuf, errlen)))
        return rc;
    if (d->n_items != res->info.n_items)
        return hl_err(errbuf, errlen, HL_EMISMATCH, "train: data has %d items, model %d",
                      d->n_items, res->info.n_items);
    if ((rc = hl_decay_init(&dec, res->info.n_heads, res->info.dim,
                            res->info.half_life_ms, errbuf, errlen)))
        return rc;
    if ((rc = hl_train_seqs_build(&sq, d, res->info.type_weight, errbuf, errlen)))
        return rc;
    hl_train_net_of_result(&n, res);
    rc = hl_train_eval_net(&n, &dec, &sq, back, max_users, hr10, ndcg10);
    if (rc) hl_err(errbuf, errlen, rc, "train: no memory for the evaluation");
    hl_train_seqs_free(&sq);
    return rc;
}
