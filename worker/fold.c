/* fold.c - fold-in wired into the worker (the contract is fold.h).
 *
 * The hot path pays one branch per event whose item the model knows; an
 * unknown-item event costs a note at decode (its id copied, its hash the
 * event's item_key, which decode computed already), a lookup of
 * its user's row after the apply, a copy of the query the refresh computed
 * for that user (one bit tested per refreshed user while the batch has
 * notes, a hash probe when it is set), and its share of one lock per FOLD_CHUNK notes for the sums
 * (bench_foldin). An encoder pass of fold-in's own runs only for users no
 * refresh encoded. Publication is rare (O(log n) records per item) and
 * goes out of the lock. */
#include "fold.h"
#include "encoder.h"
#include "foldin.h"
#include "log.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>


/* One ready item to send, copied out of the lock. */
typedef struct fold_pub {
    char     id[HL_MAX_ID_LEN];
    uint32_t len;
    int32_t  count;
    double   mass;                  /* the item's decayed weight, taken under mu */
    float   *vec;                   /* e_in, e_out, bias: 2 dim + 1; then the
                                       sums taken under mu: dim */
} fold_pub;

/* The accumulator of one served model (DESIGN.md section 11; README
 * "Fold-in", across a live model swap): its sums are of that model's queries and its map is fitted
 * over that model's items, so a swap starts a new one (hl_wfoldin_rebind).
 * Counted references: the worker's (the current generation) and each
 * thread's from its batch's resolve to its flush; the last release frees
 * it, so a thread still serving the old model finishes its batch on it. */
typedef struct fold_gen {
    const hl_model     *m;
    pthread_mutex_t     mu;
    hl_foldin          *f;              /* under mu */
    uint64_t            evicted_seen;   /* under mu */
    uint64_t            baseline_refused_seen;  /* under mu */
    int                 retired;        /* under mu: a rebind replaced it, so its
                                           sums are dropped: no note goes in */
    hl_encoder_net      net;
    int                 dim, in_dim;
    size_t              act_floats;     /* FOLD_CHUNK users' encoder activations */
    hl_item_codec_opts  codec;          /* the worker's, with this model's dim */
    atomic_int          refs;
} fold_gen;

/* Why a noted event was not folded in: the reason label of
 * halflife_foldin_skipped_total. Every note lands once, there or in
 * halflife_foldin_events_total (test_fold, test_every_note_counted_once). */
enum {
    SKIP_MODEL_SWAPPED,     /* its batch's model has no accumulator (a swap) */
    SKIP_NOT_APPLIED,       /* the state took no event: a duplicate, or refused */
    SKIP_NO_QUERY,          /* its user was not encoded, or left the table */
    SKIP_BAD_QUERY,         /* a query fold-in does not take (HL_EINVAL) */
    SKIP_REFUSED,           /* past the sums' bound (HL_ERANGE) */
    SKIP_OUT_OF_MEMORY,
    SKIP_N
};

static const char *const skip_reason[SKIP_N] = {
    "model_swapped", "not_applied", "no_query", "bad_query", "refused", "out_of_memory",
};

static const char skip_help[] =
    "Unknown-item interactions not folded in, by reason: model_swapped (the batch's model "
    "is not the newest, or its map could not be fitted), not_applied (a duplicate, or an "
    "event the state refused), no_query (its user was not encoded or left the table), "
    "bad_query (a query not finite or past the encoder's clamp), refused (it would take "
    "the item's sums past 2^104: an extreme weight), out_of_memory.";

struct hl_wfoldin {
    hl_wfoldin_opts  o;
    char            *topic;
    pthread_mutex_t  gen_mu;
    fold_gen        *cur;           /* under gen_mu: the newest model's */
    hl_counter      *c_events, *c_published, *c_evicted, *c_failed, *c_held;
    hl_counter      *c_skipped[SKIP_N];     /* by reason */
    hl_counter      *c_baseline_refused;
    hl_gauge        *g_items;
    hl_log_limit     err_limit;
    /* Every publication goes out on this ticket, never waited for: a
     * record hl_producer_purge takes back (a release's purge is for the
     * lists of lost partitions, but takes every record the producer holds)
     * comes back with its key here, and the next flush sends it again
     * (resend_purged). Without it the item was marked published and waited
     * for twice its count, for good on a worker whose partitions, and so
     * the item's buyers, had just moved away. */
    hl_ticket        ticket;
    hl_ticket_keys   keys;
};

static double longest_half_life(const hl_model_info *mi)
{
    double h = 0.0;
    for (int i = 0; i < mi->n_heads; i++)
        h = mi->half_life_ms[i] > h ? mi->half_life_ms[i] : h;
    return h;
}

static void register_metrics(hl_wfoldin *wf)
{
    hl_metrics *reg = wf->o.reg;
    wf->c_events = hl_metrics_counter(reg, "halflife_foldin_events_total",
        "Interactions with items unknown to the model (and not served by an operator's "
        "embedding) added to the fold-in sums.", NULL);
    wf->c_published = hl_metrics_counter(reg, "halflife_foldin_published_total",
        "Fold-in ItemUpdates this worker handed to its producer for the item topic (one the "
        "broker then refuses is counted in halflife_foldin_failed_total as well).", NULL);
    wf->c_evicted = hl_metrics_counter(reg, "halflife_foldin_evicted_total",
        "Items dropped from the fold-in sums (least recently seen, "
        "catalogue.max.new.items).", NULL);
    wf->c_failed = hl_metrics_counter(reg, "halflife_foldin_failed_total",
        "Fold-in ItemUpdates that could not be sent (logged; sent again at the next "
        "doubling of the item's count).", NULL);
    for (int r = 0; r < SKIP_N; r++) {
        char lab[48];
        snprintf(lab, sizeof lab, "reason=\"%s\"", skip_reason[r]);
        wf->c_skipped[r] = hl_metrics_counter(reg, "halflife_foldin_skipped_total",
                                              skip_help, lab);
    }
    wf->c_baseline_refused = hl_metrics_counter(reg, "halflife_foldin_baseline_refused_total",
        "Interactions folded into their item but left out of the lift's baseline "
        "(catalogue.foldin.lift): they would take its sums past 2^104 (an extreme weight).",
        NULL);
    wf->c_held = hl_metrics_counter(reg, "halflife_foldin_held_total",
        "Fold-in publications held back by catalogue.foldin.distinct (the item's users "
        "are not set apart from other new items' users; tried again at its next doubling).",
        NULL);
    wf->g_items = hl_metrics_gauge(reg, "halflife_foldin_items",
        "Items unknown to the model whose fold-in sums this worker keeps.", NULL);
}

static void gen_release(fold_gen *g)
{
    if (g == NULL || atomic_fetch_sub(&g->refs, 1) != 1)
        return;
    hl_foldin_destroy(g->f);
    pthread_mutex_destroy(&g->mu);
    free(g);
}

/* A fresh accumulator for model m (fits its map e_out -> e_in: a pass over
 * its items). NULL and a reason on failure. One reference, the caller's. */
static fold_gen *gen_create(const hl_wfoldin_opts *o, const hl_model *m, char *errbuf,
                            size_t errlen)
{
    const hl_model_info *mi = hl_model_info_get(m);
    fold_gen *g = calloc(1, sizeof *g);
    if (g == NULL) {
        hl_err(errbuf, errlen, HL_ENOMEM, "catalogue.foldin: out of memory");
        return NULL;
    }
    g->m = m;
    g->dim = mi->dim;
    hl_encoder_net_from_model(&g->net, m);
    g->in_dim = hl_encoder_in_dim(&g->net);
    g->act_floats = hl_encoder_act_floats(&g->net, FOLD_CHUNK);
    g->codec = o->codec;
    g->codec.dim = mi->dim;
    pthread_mutex_init(&g->mu, NULL);
    atomic_init(&g->refs, 1);
    hl_foldin_opts fo = {.dim = mi->dim, .max_items = o->max_items > 0 ? o->max_items : 1,
                         .min_events = o->min_events, .half_life_ms = longest_half_life(mi),
                         .lift = o->lift, .distinct = o->distinct};
    g->f = hl_foldin_create(&fo, hl_model_e_in(m), hl_model_e_out(m), hl_model_bias(m),
                            mi->n_items, errbuf, errlen);
    if (g->f == NULL) {
        gen_release(g);
        return NULL;
    }
    return g;
}

/* A reference to the current accumulator if it is model m's, else NULL. */
static fold_gen *gen_acquire(hl_wfoldin *wf, const hl_model *m)
{
    pthread_mutex_lock(&wf->gen_mu);
    fold_gen *g = wf->cur;
    if (g != NULL && (m == NULL || g->m == m))
        atomic_fetch_add(&g->refs, 1);
    else
        g = NULL;
    pthread_mutex_unlock(&wf->gen_mu);
    return g;
}

hl_wfoldin *hl_wfoldin_create(const hl_wfoldin_opts *o, char *errbuf, size_t errlen)
{
    hl_wfoldin *wf = calloc(1, sizeof *wf);
    if (wf == NULL || (wf->topic = strdup(o->topic)) == NULL) {
        free(wf);
        hl_err(errbuf, errlen, HL_ENOMEM, "catalogue.foldin: out of memory");
        return NULL;
    }
    wf->o = *o;
    wf->o.topic = wf->topic;
    wf->err_limit.interval_ms = 5000;
    pthread_mutex_init(&wf->gen_mu, NULL);
    pthread_mutex_init(&wf->keys.mu, NULL);
    hl_ticket_reset(&wf->ticket);
    wf->ticket.keys = &wf->keys;
    if ((wf->cur = gen_create(&wf->o, o->m, errbuf, errlen)) == NULL) {
        hl_wfoldin_destroy(wf);
        return NULL;
    }
    register_metrics(wf);
    wf->ticket.fail_counter = wf->c_failed;     /* a refusal the broker reports */
    return wf;
}

/* After the producer is settled (worker.c): no report writes into the
 * ticket any more. */
void hl_wfoldin_destroy(hl_wfoldin *wf)
{
    if (wf == NULL)
        return;
    gen_release(wf->cur);
    hl_failed_keys_free(wf->keys.head);
    pthread_mutex_destroy(&wf->keys.mu);
    pthread_mutex_destroy(&wf->gen_mu);
    free(wf->topic);
    free(wf);
}

int hl_wfoldin_rebind(hl_wfoldin *wf, const hl_model *m, char *errbuf, size_t errlen)
{
    fold_gen *g = gen_acquire(wf, m);
    if (g != NULL) {                /* already m's */
        gen_release(g);
        return 0;
    }
    if ((g = gen_create(&wf->o, m, errbuf, errlen)) == NULL)
        return HL_EINVAL;
    pthread_mutex_lock(&wf->gen_mu);
    fold_gen *old = wf->cur;
    wf->cur = g;
    hl_gauge_set(wf->g_items, 0);
    pthread_mutex_unlock(&wf->gen_mu);
    int64_t dropped = 0;
    if (old != NULL) {
        hl_foldin_stats st;
        pthread_mutex_lock(&old->mu);
        old->retired = 1;           /* a flush still on it counts its notes skipped */
        hl_foldin_stats_get(old->f, &st);
        pthread_mutex_unlock(&old->mu);
        dropped = st.items;
    }
    hl_log(HL_LOG_INFO, "foldin_rebound", "items_dropped=%lld dim=%d "
           "note=\"new items' sums start again in the new model's space; an item already "
           "on the item topic is sent again at twice its count there\"",
           (long long)dropped, g->dim);
    gen_release(old);
    return 0;
}

int hl_wfoldin_sums(hl_wfoldin *wf, const char *id, uint32_t len, float *S, double *M)
{
    fold_gen *g = gen_acquire(wf, NULL);
    if (g == NULL)
        return HL_ENOENT;
    pthread_mutex_lock(&g->mu);
    int rc = hl_foldin_sums(g->f, id, len, S, M);
    pthread_mutex_unlock(&g->mu);
    gen_release(g);
    return rc;
}

/* ---- a shard thread's notes ---- */

/* The buffers whose size follows the model: the queries' width, the due
 * items' vectors, the record being encoded and the encoder's scratch.
 * Reallocated when a thread first resolves notes under a model of another
 * shape (a swap); the notes' users are empty then (between batches). */
static int local_shape(hl_foldin_local *loc, const fold_gen *g)
{
    if (loc->dim == g->dim && loc->x_floats >= (size_t)FOLD_CHUNK * g->in_dim &&
        loc->act_floats >= g->act_floats)
        return 0;
    size_t d = (size_t)g->dim;
    free(loc->X); free(loc->act); free(loc->vecs); free(loc->enc); free(loc->uq);
    loc->uq = NULL;
    loc->cap_user = 0;              /* users_room sizes uq again */
    loc->dim = g->dim;
    loc->x_floats = (size_t)FOLD_CHUNK * g->in_dim;
    loc->act_floats = g->act_floats;
    loc->X = malloc(loc->x_floats * sizeof(float));
    loc->act = malloc(loc->act_floats * sizeof(float));
    loc->vecs = malloc(FOLD_CHUNK * (3 * d + 1) * sizeof(float));
    loc->enc_cap = 64 + 2 * (HL_MAX_ID_LEN + 10 * 2 + 5 * 2 * d + 32);
    loc->enc = malloc(loc->enc_cap);
    if (!loc->X || !loc->act || !loc->vecs || !loc->enc) {
        loc->dim = 0;               /* tried again at the next resolve */
        loc->x_floats = loc->act_floats = 0;
        return HL_ENOMEM;
    }
    return 0;
}

int hl_foldin_local_init(hl_wfoldin *wf, hl_foldin_local *loc, char *errbuf, size_t errlen)
{
    memset(loc, 0, sizeof *loc);
    fold_gen *g = gen_acquire(wf, NULL);
    int rc = g == NULL ? HL_EINVAL : 0;
    loc->views = calloc(FOLD_CHUNK, sizeof *loc->views);
    if (rc == 0 && (loc->views == NULL || local_shape(loc, g) != 0))
        rc = HL_ENOMEM;
    gen_release(g);
    if (rc != 0) {
        hl_foldin_local_reset(loc);
        return hl_err(errbuf, errlen, rc, "catalogue.foldin: out of memory");
    }
    return 0;
}

void hl_foldin_local_reset(hl_foldin_local *loc)
{
    gen_release(loc->gen);
    free(loc->note);
    free(loc->ids);
    free(loc->user);
    free(loc->uq);
    free(loc->uslot);
    free(loc->views);
    free(loc->X);
    free(loc->act);
    free(loc->vecs);
    free(loc->enc);
    memset(loc, 0, sizeof *loc);
}

static int grow(hl_foldin_local *loc, uint32_t len)
{
    if (loc->n == loc->cap) {
        int cap = loc->cap ? loc->cap * 2 : 256;
        fold_note *n = realloc(loc->note, (size_t)cap * sizeof *n);
        if (n == NULL)
            return HL_ENOMEM;
        loc->note = n;
        loc->cap = cap;
    }
    if (loc->ids_used + len > loc->ids_cap) {
        size_t cap = loc->ids_cap ? loc->ids_cap * 2 : 16384;
        while (cap < loc->ids_used + len)
            cap *= 2;
        char *s = realloc(loc->ids, cap);
        if (s == NULL)
            return HL_ENOMEM;
        loc->ids = s;
        loc->ids_cap = cap;
    }
    return 0;
}

void hl_foldin_local_note(hl_foldin_local *loc, hl_shard *sh, int ev, const char *id,
                          uint32_t len, float w)
{
    if (grow(loc, len) != 0) {
        loc->dropped++;
        return;
    }
    uint64_t key = sh->ev[ev].item_key;     /* decode's hash of the id: no second one */
    memcpy(loc->ids + loc->ids_used, id, len);
    loc->note[loc->n++] = (fold_note){sh, ev, (uint32_t)loc->ids_used, len,
                                      key != 0 ? hl_foldin_hash_key(key)
                                               : hl_foldin_hash(id, len), -1, w, 0};
    loc->ids_used += len;
}

/* ---- publication ---- */

static void publish(hl_wfoldin *wf, hl_foldin_local *loc, const fold_pub *p)
{
    char err[256], q[160];
    const fold_gen *g = loc->gen;
    int d = g->dim;
    hl_item_update u = {
        .id = p->id, .id_len = p->len, .available = 1,
        .expires_at_ms = HL_CATALOGUE_NO_EXPIRY, .e_in = p->vec, .e_out = p->vec + d,
        .bias = p->vec[2 * d], .foldin_events = p->count,
    };
    char key[HL_ITEM_KEY_MAX];
    uint32_t key_len = hl_item_foldin_key(p->id, p->len, key);   /* never the operator's */
    int len = hl_item_encode(&g->codec, &u, loc->enc, loc->enc_cap);
    int rc = len < 0 ? len : hl_producer_send(wf->o.prod, wf->topic, RD_KAFKA_PARTITION_UA,
                                              key, key_len, loc->enc, (size_t)len, NULL,
                                              &wf->ticket, err, sizeof err);
    uint64_t sup = 0;
    if (rc == 0) {
        hl_counter_add(wf->c_published, 1);
        return;
    }
    hl_counter_add(wf->c_failed, 1);
    if (len < 0)
        snprintf(err, sizeof err, "cannot encode (%d bytes of room)", (int)loc->enc_cap);
    if (hl_log_limit_pass(&wf->err_limit, &sup))
        hl_log(HL_LOG_WARN, "foldin_publish_failed", "item=\"%s\" topic=%s err=\"%s\" "
               "action=\"sent again when the item's count doubles\" suppressed=%llu",
               hl_log_quote(q, sizeof q, p->id, p->len < 64 ? p->len : 64), wf->topic, err,
               (unsigned long long)sup);
}

/* Under g->mu: whether item id, due with n interactions (hl_foldin_add_due),
 * is to be published now, its sums into p (the vectors are made from them
 * after the lock: a scan of the model's items, too long to hold up the
 * other threads' batches). An operator's item is marked so that it is
 * due again only at its next doubling (asked again then: a tombstone may
 * have deleted that record); a topic record built from more interactions
 * raises the bar to twice its count. */
static int take_due(hl_wfoldin *wf, fold_gen *g, const char *id, uint32_t len, int32_t n,
                    fold_pub *p)
{
    if (n == 0 || wf->o.prod == NULL)
        return 0;
    int64_t on_topic = hl_items_foldin_state(wf->o.items, id, len);
    /* n / 2, not 2 x on_topic: a topic record may carry any count. An
     * operator's record is asked about again at the next doubling, not
     * never: once it is deleted (a tombstone) fold-in goes on for the item */
    if (on_topic < 0 || n / 2 < on_topic) {
        hl_foldin_mark(g->f, id, len, on_topic < 0 ? n : on_topic);
        return 0;
    }
    int d = g->dim, rc = hl_foldin_sums(g->f, id, len, p->vec + 2 * d + 1, &p->mass);
    if (rc == HL_FOLDIN_NOT_DISTINCT) {         /* again at its next doubling */
        hl_foldin_mark(g->f, id, len, n);
        hl_counter_add(wf->c_held, 1);
    }
    if (rc != 0)
        return 0;
    hl_foldin_mark(g->f, id, len, n);
    memcpy(p->id, id, len);
    p->len = len;
    p->count = n;
    return 1;
}

/* ---- the batch's users and their queries ---- */

static uint32_t user_home(const hl_foldin_local *loc, const hl_shard *sh, uint32_t row)
{
    uint64_t k = (uint64_t)(uintptr_t)sh ^ ((uint64_t)row * 0x9E3779B97F4A7C15ull);
    return (uint32_t)((k * 0xBF58476D1CE4E5B9ull) >> 32) & (loc->n_uslot - 1);
}

/* The user of (sh, row), -1 if the batch's notes have none. */
static int find_user(const hl_foldin_local *loc, const hl_shard *sh, uint32_t row)
{
    for (uint32_t i = user_home(loc, sh, row); loc->uslot[i] != 0;
         i = (i + 1) & (loc->n_uslot - 1)) {
        const fold_user *u = &loc->user[loc->uslot[i] - 1];
        if (u->row == row && u->sh == sh)
            return loc->uslot[i] - 1;
    }
    return -1;
}

/* Row row's bit in the filter of the noted users' rows. */
static inline uint64_t *filter_word(hl_foldin_local *loc, uint32_t row)
{
    return &loc->ufilter[(row >> 6) % FOLD_FILTER_WORDS];
}

/* Whether (some shard's) row may be a noted user's: no false "no". The
 * take asks it of every refreshed row (~1000 a batch of 1024 events, ~100
 * of them noted at 10% unknown items): 1 KiB of bits stays in the cache
 * through the refreshes where the hash and the users did not, and each
 * probe of those was a miss or two (bench_foldin). */
static inline int maybe_user(const hl_foldin_local *loc, uint32_t row)
{
    return (int)(loc->ufilter[(row >> 6) % FOLD_FILTER_WORDS] >> (row & 63) & 1);
}

/* The user of (sh, row), added if new (room is there: users_room). */
static int add_user(hl_foldin_local *loc, const hl_shard *sh, uint32_t row)
{
    uint32_t i = user_home(loc, sh, row);
    for (; loc->uslot[i] != 0; i = (i + 1) & (loc->n_uslot - 1)) {
        const fold_user *u = &loc->user[loc->uslot[i] - 1];
        if (u->row == row && u->sh == sh)
            return loc->uslot[i] - 1;
    }
    int k = loc->n_user++;
    loc->user[k] = (fold_user){sh, row, i, 0};
    loc->uslot[i] = k + 1;
    *filter_word(loc, row) |= 1ull << (row & 63);
    return k;
}

/* Room for n users (the hash at most half full); amortised, like the notes. */
static int users_room(hl_foldin_local *loc, int n)
{
    if (n <= loc->cap_user)
        return 0;
    int cap = loc->cap_user ? loc->cap_user : 256;
    while (cap < n)
        cap *= 2;
    uint32_t n_slot = 2 * (uint32_t)cap;
    fold_user *u = realloc(loc->user, (size_t)cap * sizeof *u);
    if (u != NULL)
        loc->user = u;
    float *q = realloc(loc->uq, (size_t)cap * (size_t)loc->dim * sizeof *q);
    if (q != NULL)
        loc->uq = q;
    int32_t *sl = calloc(n_slot, sizeof *sl);
    if (u == NULL || q == NULL || sl == NULL) {
        free(sl);
        return HL_ENOMEM;
    }
    free(loc->uslot);               /* empty between batches: nothing to move */
    loc->uslot = sl;
    loc->n_uslot = n_slot;
    loc->cap_user = cap;
    return 0;
}

static void forget_notes(hl_foldin_local *loc)
{
    for (int u = 0; u < loc->n_user; u++) {
        loc->uslot[loc->user[u].slot] = 0;
        *filter_word(loc, loc->user[u].row) = 0;
    }
    loc->n_user = 0;
    loc->n = 0;
    loc->ids_used = 0;
    gen_release(loc->gen);
    loc->gen = NULL;
}

/* Ties each note to its user (add_user); a note that gets none adds
 * nothing, and is counted here: its event was not applied, or its user
 * left the table later in the apply (state.max.users). */
static void resolve_users(hl_wfoldin *wf, hl_foldin_local *loc)
{
    uint64_t not_applied = 0, gone = 0;
    for (int k = 0; k < loc->n; k++) {
        fold_note *nt = &loc->note[k];
        const hl_event *e = &nt->sh->ev[nt->ev];
        int64_t row = nt->sh->row[nt->ev];      /* the apply's, when it vouches for it */
        if (nt->sh->status[nt->ev] <= 0) {
            row = -1;
            not_applied++;
        } else if (row == HL_TABLE_NO_ROW) {
            row = hl_table_find(nt->sh->tbl, e->user, e->user_len);
            gone += row < 0;
        }
        nt->user = row < 0 ? -1 : add_user(loc, nt->sh, (uint32_t)row);
        nt->ts_ms = e->ts_ms;
    }
    if (not_applied)
        hl_counter_add(wf->c_skipped[SKIP_NOT_APPLIED], not_applied);
    if (gone)
        hl_counter_add(wf->c_skipped[SKIP_NO_QUERY], gone);
}

void hl_foldin_local_resolve(hl_wfoldin *wf, hl_foldin_local *loc, const hl_model *m)
{
    if (loc->n == 0)
        return;
    if (loc->gen != NULL && loc->gen->m != m) {     /* never after a flush */
        gen_release(loc->gen);
        loc->gen = NULL;
    }
    if (loc->gen == NULL)           /* held until the flush */
        loc->gen = gen_acquire(wf, m);
    if (loc->gen == NULL || local_shape(loc, loc->gen) != 0 || users_room(loc, loc->n) != 0) {
        int r = loc->gen == NULL ? SKIP_MODEL_SWAPPED : SKIP_OUT_OF_MEMORY;
        hl_counter_add(wf->c_skipped[r], (uint64_t)loc->n);
        forget_notes(loc);
        return;
    }
    resolve_users(wf, loc);
}

void hl_foldin_local_take(hl_foldin_local *loc, const hl_shard *sh, const uint32_t *rows,
                          int n, const hl_ranker *rk)
{
    if (loc->n_user == 0)
        return;                     /* the common case: one branch per chunk */
    for (int i = 0; i < n; i++) {
        if (!maybe_user(loc, rows[i]))
            continue;
        int u = find_user(loc, sh, rows[i]);
        if (u < 0 || loc->user[u].has_q)
            continue;
        memcpy(loc->uq + (size_t)u * loc->dim, hl_ranker_query(rk, i),
               (size_t)loc->dim * sizeof(float));
        loc->user[u].has_q = 1;
    }
}

/* Queries of users idx[0..n) of sh, n <= FOLD_CHUNK: through the thread's
 * ranker when it has one (what its refresh would have computed), else
 * through the model's encoder. */
static void encode_users(hl_wfoldin *wf, hl_foldin_local *loc, const hl_shard *sh,
                         const int *idx, int n, hl_ranker *rk)
{
    const float *Q = NULL;
    int d = loc->dim;
    for (int k = 0; k < n; k++)
        hl_table_view(sh->tbl, loc->user[idx[k]].row, &loc->views[k]);
    if (rk == NULL || hl_ranker_encode(rk, loc->views, n) != 0) {
        hl_encoder_features_rows(&loc->gen->net, loc->views, n, loc->X);
        Q = hl_encoder_forward(&loc->gen->net, loc->X, n, loc->act);
    }
    for (int k = 0; k < n; k++) {
        memcpy(loc->uq + (size_t)idx[k] * d, Q ? Q + (size_t)k * d : hl_ranker_query(rk, k),
               (size_t)d * sizeof(float));
        loc->user[idx[k]].has_q = 1;
    }
}

void hl_foldin_local_fill(hl_wfoldin *wf, hl_foldin_local *loc, const hl_shard *sh,
                          hl_ranker *rk)
{
    int idx[FOLD_CHUNK], n = 0;
    for (int u = 0; u < loc->n_user; u++) {
        if (loc->user[u].sh != sh || loc->user[u].has_q)
            continue;
        idx[n++] = u;
        if (n == FOLD_CHUNK) {
            encode_users(wf, loc, sh, idx, n, rk);
            n = 0;
        }
    }
    if (n > 0)
        encode_users(wf, loc, sh, idx, n, rk);
}

/* ---- the batch's notes into the sums ---- */

/* Starts loading what the adds of notes [i0, i0+n) read outside the
 * accumulator: their users' flags and queries, written at the take and
 * evicted by the refreshes since. The notes themselves are read in order.
 * Inlined by force: out of line, gcc 12 takes a function of prefetches
 * alone for pure and drops its calls (core/hl.h, HL_PREFETCH_FN). */
HL_PREFETCH_FN void
prefetch_users(const hl_foldin_local *loc, int i0, int n)
{
    size_t q_bytes = (size_t)loc->dim * sizeof(float);
    for (int k = 0; k < n; k++) {
        int32_t u = loc->note[i0 + k].user;
        if (u < 0)
            continue;
        const char *q = (const char *)(loc->uq + (size_t)u * loc->dim);
        __builtin_prefetch(&loc->user[u]);
        for (size_t b = 0; b < q_bytes; b += 64)
            __builtin_prefetch(q + b);
    }
}

/* The skip reason of an add that failed with rc (HL_ENOENT: no query). */
static int skip_of(int rc)
{
    return rc == HL_ENOENT ? SKIP_NO_QUERY : rc == HL_ERANGE ? SKIP_REFUSED :
           rc == HL_ENOMEM ? SKIP_OUT_OF_MEMORY : SKIP_BAD_QUERY;
}

/* Adds notes [i0, i0+n) under the lock; the due items into pub (room for
 * n), their count returned. A note without a user (its event not applied,
 * or its user gone) adds nothing (resolve counted it); one whose user has
 * no query (no fill ran for its shard) or whose add fails is counted in
 * skipped[reason]. Into a generation a rebind retired (its sums dropped,
 * the items logged) nothing goes: its notes are skipped, as those of a
 * thread that resolved after the rebind, and publish nothing of the old
 * model's. */
static int add_chunk(hl_wfoldin *wf, hl_foldin_local *loc, int i0, int n, fold_pub *pub,
                     float *vecs, uint64_t *added, uint64_t *skipped)
{
    fold_gen *g = loc->gen;
    int n_pub = 0, d = g->dim, m = 0;
    uint32_t hs[FOLD_CHUNK];
    for (int k = 0; k < n; k++)
        if (loc->note[i0 + k].user >= 0)
            hs[m++] = loc->note[i0 + k].hash;
    if (g->retired) {
        skipped[SKIP_MODEL_SWAPPED] += (uint64_t)m;
        return 0;
    }
    hl_foldin_prefetch(g->f, hs, m);
    for (int k = 0; k < n; k++) {
        const fold_note *nt = &loc->note[i0 + k];
        if (nt->user < 0)
            continue;
        const char *id = loc->ids + nt->off;
        int32_t due;
        int rc = !loc->user[nt->user].has_q ? HL_ENOENT :
                 hl_foldin_add_due(g->f, id, nt->len, nt->hash, loc->uq + (size_t)nt->user * d,
                                   nt->w, nt->ts_ms, &due);
        if (rc < 0) {
            skipped[skip_of(rc)]++;
            continue;
        }
        (*added)++;
        pub[n_pub].vec = vecs + (size_t)n_pub * (3 * d + 1);
        n_pub += take_due(wf, g, id, nt->len, due, &pub[n_pub]);
    }
    return n_pub;
}

static void note_stats(hl_wfoldin *wf, fold_gen *g)
{
    hl_foldin_stats st;
    hl_foldin_stats_get(g->f, &st);
    if (st.evicted > g->evicted_seen) {
        hl_counter_add(wf->c_evicted, st.evicted - g->evicted_seen);
        g->evicted_seen = st.evicted;
    }
    if (st.baseline_refused > g->baseline_refused_seen) {
        hl_counter_add(wf->c_baseline_refused, st.baseline_refused - g->baseline_refused_seen);
        g->baseline_refused_seen = st.baseline_refused;
    }
    /* A thread that resolved its notes before a swap flushes them on the
     * old generation (add_chunk skips them there); the gauge is the
     * serving one's (rebind set it to 0), so the old one's count must not
     * put it back. */
    pthread_mutex_lock(&wf->gen_mu);
    if (wf->cur == g)
        hl_gauge_set(wf->g_items, st.items);
    pthread_mutex_unlock(&wf->gen_mu);
}

/* The due items' vectors, made out of the lock from the sums taken under
 * it, then sent. */
static void send_due(hl_wfoldin *wf, hl_foldin_local *loc, fold_pub *pub, int n_pub)
{
    const fold_gen *g = loc->gen;
    for (int k = 0; k < n_pub; k++) {
        float *v = pub[k].vec;
        hl_foldin_vectors_from(g->f, v + 2 * g->dim + 1, pub[k].mass, v, v + g->dim,
                               v + 2 * g->dim);
        publish(wf, loc, &pub[k]);
    }
}

static void flush_chunk(hl_wfoldin *wf, hl_foldin_local *loc, int i0, int n,
                        fold_pub *pub, float *vecs)
{
    fold_gen *g = loc->gen;
    uint64_t added = 0, skipped[SKIP_N] = {0};
    prefetch_users(loc, i0, n);     /* thread-local: before the lock */
    pthread_mutex_lock(&g->mu);
    int n_pub = add_chunk(wf, loc, i0, n, pub, vecs, &added, skipped);
    note_stats(wf, g);
    pthread_mutex_unlock(&g->mu);
    send_due(wf, loc, pub, n_pub);
    hl_counter_add(wf->c_events, added);
    for (int r = 0; r < SKIP_N; r++)
        if (skipped[r])
            hl_counter_add(wf->c_skipped[r], skipped[r]);
}

/* ---- publications a purge took back ---- */

static int purged_key(const hl_failed_key *k)
{
    return hl_failed_key_purged(k) && k->len > HL_ITEM_FOLDIN_KEY_LEN &&
           k->len <= HL_ITEM_KEY_MAX &&
           memcmp(k->key, HL_ITEM_FOLDIN_KEY, HL_ITEM_FOLDIN_KEY_LEN) == 0;
}

/* Under g->mu: the items of keys k[*i..n) that are to be sent again
 * into pub (FOLD_CHUNK at most), their count returned; *i moves past them.
 * A purged item is due again as if its record had never been sent:
 * against the count of the topic's record, if one came meanwhile (another
 * worker's, or the purged one itself, which a purge may still let through),
 * so a better estimate is not replaced. */
static int take_purged(hl_wfoldin *wf, fold_gen *g, hl_failed_key **k, int n, int *i,
                       fold_pub *pub, float *vecs)
{
    int n_pub = 0, d = g->dim;
    for (; *i < n && n_pub < FOLD_CHUNK; (*i)++) {
        const char *id = k[*i]->key + HL_ITEM_FOLDIN_KEY_LEN;
        uint32_t len = (uint32_t)(k[*i]->len - HL_ITEM_FOLDIN_KEY_LEN);
        int64_t on_topic = hl_items_foldin_state(wf->o.items, id, len);
        if (on_topic < 0)
            continue;               /* an operator's now */
        hl_foldin_mark(g->f, id, len, on_topic);
        pub[n_pub].vec = vecs + (size_t)n_pub * (3 * d + 1);
        n_pub += take_due(wf, g, id, len, hl_foldin_due(g->f, id, len), &pub[n_pub]);
    }
    return n_pub;
}

static int key_cmp(const void *a, const void *b)
{
    const hl_failed_key *x = *(hl_failed_key *const *)a, *y = *(hl_failed_key *const *)b;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    return memcmp(x->key, y->key, x->len);
}

/* The purged fold-in keys of list head, each item once (an item's records
 * at successive doublings may all have been waiting), into a new array;
 * its length in *n. NULL when there are none (or no memory: the items
 * then wait for their next doubling, as before). */
static hl_failed_key **purged_items(hl_failed_key *head, int *n)
{
    int cap = 0;
    *n = 0;
    for (const hl_failed_key *k = head; k != NULL; k = k->next)
        cap += purged_key(k);
    hl_failed_key **v = cap > 0 ? malloc((size_t)cap * sizeof *v) : NULL;
    if (v == NULL)
        return NULL;
    for (hl_failed_key *k = head; k != NULL; k = k->next)
        if (purged_key(k))
            v[(*n)++] = k;
    qsort(v, (size_t)*n, sizeof *v, key_cmp);
    int m = 0;
    for (int i = 0; i < *n; i++)
        if (m == 0 || key_cmp(&v[m - 1], &v[i]) != 0)
            v[m++] = v[i];
    *n = m;
    return v;
}

/* Sends again, from the current accumulator, the items whose publication
 * a purge took back. After the notes are flushed: the buffers may be
 * reshaped here for the current model. */
static void resend_purged(hl_wfoldin *wf, hl_foldin_local *loc, fold_pub *pub)
{
    hl_failed_key *head = hl_ticket_take_failed(&wf->ticket);
    int n = 0, i = 0;
    hl_failed_key **k = purged_items(head, &n);
    fold_gen *g = k != NULL ? gen_acquire(wf, NULL) : NULL;
    if (g != NULL && local_shape(loc, g) == 0) {
        loc->gen = g;               /* publish() encodes with its codec */
        while (i < n) {
            pthread_mutex_lock(&g->mu);
            int n_pub = take_purged(wf, g, k, n, &i, pub, loc->vecs);
            pthread_mutex_unlock(&g->mu);
            send_due(wf, loc, pub, n_pub);
        }
        loc->gen = NULL;
    }
    gen_release(g);
    free(k);
    hl_failed_keys_free(head);
}

void hl_foldin_local_flush(hl_wfoldin *wf, hl_foldin_local *loc)
{
    if (loc->dropped > 0) {
        hl_counter_add(wf->c_skipped[SKIP_OUT_OF_MEMORY], loc->dropped);
        loc->dropped = 0;
    }
    fold_pub pub[FOLD_CHUNK];
    for (int i0 = 0; i0 < loc->n; i0 += FOLD_CHUNK)
        flush_chunk(wf, loc, i0, loc->n - i0 < FOLD_CHUNK ? loc->n - i0 : FOLD_CHUNK, pub,
                    loc->vecs);
    forget_notes(loc);
    resend_purged(wf, loc, pub);
}
