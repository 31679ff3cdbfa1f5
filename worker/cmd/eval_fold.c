/* eval_fold.c - fold-in in the prequential protocol (`--foldin N`): what
 * the worker does with catalogue.foldin (worker/fold.h), replayed offline
 * for one worker, so its effect on HR@10 can be measured.
 *
 * After each batch is scored, each of its events on an item the model does
 * not know adds its user's query vector (from the state just before the
 * event, the copy the batch was scored with) to core/foldin's sums, keyed
 * by the item's hl_item_key. An item due for publication (min.events, then
 * each doubling) gets or refreshes a side row, which later batches score
 * like the worker's catalogue side items (hl_ranker_set_catalogue): the
 * worker applies a published item for lists after the batch that read it,
 * here for the batch after. Side rows are bounded by max_items; beyond,
 * a due item gets none (counted). */
#include "eval_internal.h"
#include "encoder.h"
#include "foldin.h"
#include "foldin_count.h"

#include <stdlib.h>
#include <string.h>

struct eval_fold {
    hl_foldin      *f;
    hl_encoder_net  net;
    int             dim, in_dim, batch;
    int32_t         n_items, n_side, cap;
    float          *X, *act;            /* encoder scratch for a batch */
    float          *e_in, *e_out, *bias;/* (cap, dim), (cap) */
    uint64_t       *keys;               /* open addressing: key + 1 of side row */
    int32_t        *side;
    uint32_t        n_slot;
    int             changed;
    hl_rank_catalogue rc;
    int64_t         no_room;
    const float    *m_bias;             /* the model's, for --foldin-bias count */
    double          b_mean, bias_cap;
    float          *S;                  /* dim, scratch */
    int             count;
    double          gate, conf;
    int64_t         gated;
    int64_t         held;              /* by the distinct gate */
    hl_item_counts  ic;
    int64_t         fits;
    double          bias_sum, slope_sum;
    int64_t         now;
    int             lift_all;          /* every event's user feeds the lift's baseline */
};

int hl_eval_fold_create(eval_fold **out, const hl_model *m, const eval_args *a,
                        int32_t max_items, char *errbuf, size_t errlen)
{
    int batch = a->batch;
    const hl_model_info *mi = hl_model_info_get(m);
    eval_fold *ef = calloc(1, sizeof *ef);
    *out = NULL;
    if (ef == NULL)
        return hl_err(errbuf, errlen, HL_ENOMEM, "eval --foldin: out of memory");
    double h = 0;
    for (int i = 0; i < mi->n_heads; i++)
        h = mi->half_life_ms[i] > h ? mi->half_life_ms[i] : h;
    hl_foldin_opts fo = {.dim = mi->dim, .max_items = max_items, .min_events = a->foldin,
                         .half_life_ms = h, .bias = a->foldin_bias,
                         .shrink = (float)a->foldin_shrink,
                         .lift = (float)a->foldin_lift, .lift_all = a->foldin_lift_all,
                         .distinct = (float)a->foldin_distinct};
    ef->f = hl_foldin_create(&fo, hl_model_e_in(m), hl_model_e_out(m), hl_model_bias(m),
                             mi->n_items, errbuf, errlen);
    hl_encoder_net_from_model(&ef->net, m);
    ef->dim = mi->dim;
    ef->in_dim = hl_encoder_in_dim(&ef->net);
    ef->batch = batch;
    ef->n_items = mi->n_items;
    ef->cap = max_items;
    for (ef->n_slot = 16; ef->n_slot < 2 * (uint32_t)max_items; ef->n_slot *= 2)
        ;
    size_t d = (size_t)ef->dim, cap = (size_t)max_items;
    ef->X = malloc((size_t)batch * ef->in_dim * sizeof(float));
    ef->act = malloc(hl_encoder_act_floats(&ef->net, batch) * sizeof(float));
    ef->e_in = malloc(cap * d * sizeof(float));
    ef->e_out = malloc(cap * d * sizeof(float));
    ef->bias = malloc(cap * sizeof(float));
    ef->keys = calloc(ef->n_slot, sizeof *ef->keys);
    ef->side = calloc(ef->n_slot, sizeof *ef->side);
    ef->S = malloc(d * sizeof(float));
    ef->count = a->foldin_count;
    ef->gate = a->foldin_gate;
    ef->conf = a->foldin_conf;
    ef->bias_cap = a->foldin_cap;
    ef->lift_all = a->foldin_lift_all;
    ef->m_bias = hl_model_bias(m);
    for (int32_t j = 0; j < mi->n_items; j++)
        ef->b_mean += ef->m_bias[j] / mi->n_items;
    *out = ef;
    if ((ef->count || ef->gate > 0) && hl_item_counts_init(&ef->ic, mi->n_items, a->foldin_stride, h) != 0)
        return hl_err(errbuf, errlen, HL_ENOMEM, "eval --foldin: out of memory");
    if (ef->f == NULL)
        return HL_EINVAL;
    if (!ef->X || !ef->act || !ef->e_in || !ef->e_out || !ef->bias || !ef->keys || !ef->side || !ef->S)
        return hl_err(errbuf, errlen, HL_ENOMEM, "eval --foldin: out of memory");
    return 0;
}

void hl_eval_fold_destroy(eval_fold *ef)
{
    if (ef == NULL)
        return;
    hl_foldin_destroy(ef->f);
    free(ef->X); free(ef->act); free(ef->e_in); free(ef->e_out); free(ef->bias);
    free(ef->keys); free(ef->side); free(ef->S);
    hl_item_counts_free(&ef->ic);
    free(ef);
}

static uint32_t probe(const eval_fold *ef, uint64_t key)
{
    uint32_t mask = ef->n_slot - 1, i = (uint32_t)(key ^ key >> 29) & mask;
    while (ef->keys[i] != 0 && ef->keys[i] != key + 1)
        i = (i + 1) & mask;
    return i;
}

int32_t hl_eval_fold_row(const eval_fold *ef, uint64_t key)
{
    uint32_t i = probe(ef, key);
    return ef->keys[i] ? ef->n_items + ef->side[i] : -1;
}

const float *hl_eval_fold_e_in(const eval_fold *ef, uint64_t key)
{
    uint32_t i = probe(ef, key);
    return ef->keys[i] ? ef->e_in + (size_t)ef->side[i] * ef->dim : NULL;
}

/* The item's vectors into its side row (a new one if it has none). */
static void publish(eval_fold *ef, uint64_t key, const char *id)
{
    double M = 0;
    if (hl_foldin_sums(ef->f, id, sizeof key, ef->S, &M) == HL_FOLDIN_NOT_DISTINCT) {
        ef->held++;                     /* as the worker: again at its next doubling */
        return;
    }
    hl_count_fit fit = {0};
    if (ef->count || ef->gate > 0)
        fit = hl_item_counts_fit(&ef->ic, ef->m_bias, ef->now);
    if (ef->gate > 0 && M < ef->gate * fit.median) {
        ef->gated++;                    /* not yet: again at its next doubling */
        return;
    }
    uint32_t i = probe(ef, key);
    if (ef->keys[i] == 0) {
        if (ef->n_side == ef->cap) {
            ef->no_room++;
            return;
        }
        ef->keys[i] = key + 1;
        ef->side[i] = ef->n_side++;
    }
    size_t s = (size_t)ef->side[i], d = (size_t)ef->dim;
    hl_foldin_vectors(ef->f, id, sizeof key, ef->e_in + s * d, ef->e_out + s * d,
                      ef->bias + s);
    for (size_t c = 0; ef->conf > 0 && c < d; c++)
        ef->e_out[s * d + c] *= (float)(M / (M + ef->conf));
    if (ef->count) {
        ef->bias[s] = hl_count_bias(&fit, M, ef->b_mean, ef->bias_cap);
        ef->fits++;
        ef->bias_sum += ef->bias[s];
        ef->slope_sum += fit.s;
    }
    ef->changed = 1;
}

void hl_eval_fold_batch(eval_fold *ef, const ev_rec *ev, const hl_row_view *views, int n,
                        hl_ranker *rk, int use_b)
{
    float *x = ef->X;
    int k = 0;
    int32_t row[HL_EVAL_MAX_BATCH];
    for (int b = 0; b < n; b++) {
        row[b] = use_b ? ev[b].item_b : ev[b].item;
        if (ef->ic.n && row[b] >= 0)
            hl_item_counts_add(&ef->ic, row[b], ev[b].w, ev[b].ts_ms);
        ef->now = ev[b].ts_ms > ef->now ? ev[b].ts_ms : ef->now;
    }
    int all = ef->lift_all;
    for (int b = 0; b < n; b++)
        if (row[b] < 0 || all) {
            hl_encoder_features(ef->net.n_heads, ef->dim, views[b].s, views[b].m, x);
            x += ef->in_dim;
            k++;
        }
    if (k == 0)
        return;
    const float *Q = hl_encoder_forward(&ef->net, ef->X, k, ef->act);
    for (int b = 0, j = 0; b < n; b++) {
        if (all)
            hl_foldin_baseline_add(ef->f, Q + (size_t)j * ef->dim, ev[b].w, ev[b].ts_ms);
        if (row[b] >= 0) {
            j += all;
            continue;
        }
        char id[sizeof ev[b].key];
        memcpy(id, &ev[b].key, sizeof id);
        hl_foldin_add(ef->f, id, sizeof id, Q + (size_t)j++ * ef->dim, ev[b].w, ev[b].ts_ms);
        int32_t due = hl_foldin_due(ef->f, id, sizeof id);
        if (due > 0) {
            hl_foldin_mark(ef->f, id, sizeof id, due);
            publish(ef, ev[b].key, id);
        }
    }
    if (ef->changed) {
        ef->rc = (hl_rank_catalogue){.e_in = ef->e_in, .e_out = ef->e_out, .bias = ef->bias,
                                     .n_side = ef->n_side};
        hl_ranker_set_catalogue(rk, &ef->rc);
        ef->changed = 0;
    }
}

void hl_eval_fold_print(const eval_fold *ef)
{
    hl_foldin_stats st;
    hl_foldin_stats_get(ef->f, &st);
    printf(",\"foldin\":{\"items\":%d,\"ready\":%d,\"side_rows\":%d,\"evicted\":%llu,"
           "\"no_room\":%lld", (int)st.items, (int)st.ready, (int)ef->n_side,
           (unsigned long long)st.evicted, (long long)ef->no_room);
    if (ef->gate > 0)
        printf(",\"gated\":%lld", (long long)ef->gated);
    printf(",\"held_not_distinct\":%lld", (long long)ef->held);
    if (ef->count)
        printf(",\"count_bias\":{\"fits\":%lld,\"mean_bias\":%.4f,\"mean_slope\":%.4f,"
               "\"model_mean_bias\":%.4f}", (long long)ef->fits,
               ef->fits ? ef->bias_sum / ef->fits : 0.0,
               ef->fits ? ef->slope_sum / ef->fits : 0.0, ef->b_mean);
    printf("}");
}
