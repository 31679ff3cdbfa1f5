/* foldin.h - vectors for items the model does not know, earned from the
 * users who interact with them (DESIGN.md section 11, "fold-in"): the pure
 * arithmetic, with no notion of shards, threads or topics.
 *
 * For an unknown item j, each interaction i by a user whose query vector
 * was q_i, with weight w_i at event time t_i, adds to decayed sums
 *
 *     S_j = sum_i w_i exp(-lambda (t_ref - t_i)) q_i,   M_j = the same of w_i
 *
 * (lambda = ln 2 / half_life, t_ref the newest t_i; late events are
 * decayed to t_ref, as core/decay does for users; like users' heads, the
 * sums are held at t_ref rounded down to a grid with lambda grid <=
 * 2^-12, so M_j is within 2^-12 of its value at t_ref). Once j has min_events
 * interactions of weight w_i > 0 (one of weight 0 adds nothing, so it is
 * no evidence) it has vectors. By default (neighbours T > 0) they are the
 * model's own: the lifted mean query r_j of its users scores the model's
 * items (r_j . e_out + (1 - beta) b), with
 *
 *     r_j = S_j / M_j - beta' G'_j / M'_j,   beta' = beta M' / (M' + M_j)
 *
 * G' and M' the decayed sums of every noted query but j's own (the other
 * new items' users; none yet: r_j = S_j / M_j; beta' keeps a baseline of
 * a few other items, such as one launched with j to the same users, from
 * cancelling j's own direction): at beta 1 (lift, the
 * default) the items that set j's users apart from other new items' users,
 * without popularity; at beta 0 the list those users would get. Then
 *
 *     e_in_j, e_out_j = the means of e_in, e_out over the top T,
 *     b_j = the mean of b over all the model's items (HL_FOLDIN_BIAS)
 *
 * so j is scored like those model items, never by a new scale, but
 * without their popularity. (The rule below, neighbours < 0, puts e_out on the mean
 * query itself, which every user's query leans towards: on taobao-sample
 * and ml-latest-small those items took list places from better model items;
 * README, "Fold-in".) With neighbours < 0:
 *
 *     e_out_j = S_j / |S_j| x r          r = the mean norm of the model's e_out
 *     e_in_j  = e_out_j W                W = argmin |E_out W - E_in|^2 + ridge |W|^2,
 *                                            fitted once over the model's items
 *     b_j     = b_mean + ln(1 + M_j) - ln(1 + min_events)
 *
 * so a user scores j by how close its query is to the mean query of j's
 * users (the direction; the length is the model's typical one), the
 * newcomer's bias starts at the model's mean and grows with its decayed
 * count, and e_in (what the item adds to a user's heads) follows from the
 * map the model itself implies between its two tables. W is fitted in both
 * cases (hl_foldin_map).
 *
 * Memory is bounded by max_items: beyond it the least recently seen
 * sixteenth goes at once (counted), so an insert costs O(1) amortised. One
 * thread: worker/foldin.c wires it into the worker. */
#ifndef HL_FOLDIN_H
#define HL_FOLDIN_H

/* What of a folded item's e_in (one a worker published from the stream,
 * not an encoder's) enters the state of a user who meets it: the event
 * counts with this share of its weight (0: as an item unknown to the
 * model, nothing but the decay). The worker's catalogue.foldin.e_in.scale
 * and eval's --foldin-e-in default; README, "Fold-in", says what it costs
 * and gains. A string: it is the config key's default too. */
#define HL_FOLDIN_E_IN_SCALE "0"

/* The lift beta of catalogue.foldin.lift and eval's --foldin-lift default
 * (README "Fold-in"): a string, the config key's default too. */
#define HL_FOLDIN_LIFT "1"
/* The lift's beta is scaled by M' / (M' + this x M_j): near full once the
 * other new items' users weigh well above j's own, half when they weigh
 * what j's do (README "The lift"). */
#define HL_FOLDIN_LIFT_OTHERS 1.0

#include "hl.h"

typedef struct hl_foldin hl_foldin;   /* opaque */

typedef struct hl_foldin_opts {
    int     dim;
    int32_t max_items;      /* catalogue.max.new.items */
    int     min_events;     /* catalogue.foldin.min.events, >= 1: interactions of
                               weight > 0 */
    double  half_life_ms;   /* of the decayed sums; > 0 */
    float   ridge;          /* of the map fit; 0 = 1e-3 x trace/dim */
    int     neighbours;     /* T; 0 = HL_FOLDIN_NEIGHBOURS, < 0 = the mean-query rule */
    int     bias;           /* the neighbours rule's bias: 0 = HL_FOLDIN_BIAS, else
                               HL_FOLDIN_BIAS_NEIGHBOURS or HL_FOLDIN_BIAS_MODEL */
    float   shrink;         /* c of the neighbours rule's shrinkage; 0 = HL_FOLDIN_SHRINK,
                               < 0 = none */
    float   lift;           /* beta of r_j above, 0..1; 0 none (no baseline kept) */
    int     lift_all;       /* the baseline G is fed by hl_foldin_baseline_add only
                               (eval --foldin-lift-base all: every event's user),
                               not by hl_foldin_add's queries */
    float   distinct;       /* catalogue.foldin.distinct, 0..1; 0 off: an item is
                               ready only while its lifted sums keep at least this
                               share of their length before the lift (below) */
} hl_foldin_opts;

/* The distinct gate (catalogue.foldin.distinct, README "The lift"): the
 * lift takes off what the item's users share with every other new item's;
 * when little is left (|lifted S| < distinct x |S|) the item's users are
 * the population, and its neighbours would be picked by noise. Such an
 * item is not made: hl_foldin_sums returns HL_FOLDIN_NOT_DISTINCT (the
 * caller tries again at the item's next doubling). Without a baseline
 * (lift 0, or no other new item yet) every item passes. On
 * ml-latest-small, where new films are rated by users of everything, the
 * lifted length's median is 0.77 of the raw one; on taobao-sample 0.99. */
#define HL_FOLDIN_DISTINCT     "0"
#define HL_FOLDIN_NOT_DISTINCT 1

/* The neighbours rule's bias: their mean, or (the default) the model's
 * mean over all its items. The bias carries an item's popularity to every
 * user alike, and the top items' is the highest: with it on
 * ml-latest-small folded items took 4.2% of all list places at 0.43% hits
 * per place, below the places they displaced; with the model's mean, 17
 * times fewer places (README "Fold-in"). Shrinkage (measured, off by
 * default): with c > 0 the vectors and bias move towards the model's mean
 * item by c / (M + c) (M the decayed count); at c 2 and 5 no folded item
 * reached a list on either dataset. */
#define HL_FOLDIN_BIAS_NEIGHBOURS 1
#define HL_FOLDIN_BIAS_MODEL      2
#define HL_FOLDIN_BIAS   HL_FOLDIN_BIAS_MODEL
#define HL_FOLDIN_SHRINK 0.0f

#define HL_FOLDIN_NEIGHBOURS 10   /* README "Fold-in": measured 1, 5, 10, 20, 30, 50 */
#define HL_FOLDIN_NEIGHBOURS_MAX 256

/* Fits W over the model's n items (e_in, e_out (n, dim), bias (n)). With
 * neighbours (the default) f borrows the three tables: they must outlive f
 * (the worker's and eval's model does); hl_foldin_vectors then costs
 * O(n dim). Otherwise they are read during the call only. NULL and a reason on bad options, n < 1
 * or out of memory. */
hl_foldin *hl_foldin_create(const hl_foldin_opts *o, const float *e_in, const float *e_out,
                            const float *bias, int32_t n, char *errbuf, size_t errlen);
void       hl_foldin_destroy(hl_foldin *f);             /* NULL is a no-op */

/* The most any |S_i| and M (an item's or the lift baseline's) may hold:
 * an add that would take one past it is refused, and counted
 * (hl_foldin_stats.refused, or baseline_refused). The sums are floats with no decay bound: an
 * event of weight 1e30 (a user's state takes that much, HL_TABLE_MAX_MASS)
 * by a user whose query sits at the ranker's clamp (2^64) made them inf in
 * one add, and they stayed so (0 x inf is NaN after a long idle); through
 * the baseline every other new item's lifted sums went NaN as well, and
 * their neighbours were picked by NaN scores. Below the bound nothing
 * downstream overflows: the lifted sums are <= 3 x it (S - c (G - a S),
 * c <= beta <= 1), and the scan's float scores (M b_j + S . e_out[j], with
 * every |b_j|, |e_ji| <= 2^8 and dim <= 2^12) stay below 2^22 x 2^104 =
 * 2^126 < FLT_MAX. With event.max.weight's default (1e6) and a trained
 * model's queries it is far out of reach. */
#define HL_FOLDIN_MAX_SUM 0x1p104f

/* One interaction with item id by a user with query q (dim floats, finite,
 * each within HL_QUERY_MAX_ABS, the encoder's clamp)
 * and weight w >= 0 at ts_ms. 1 when this made the item ready, 0 when it
 * was counted (or w is 0: no interaction, nothing changes), HL_EINVAL for
 * a bad id, q or w, HL_ERANGE when it would take the item's sums past
 * HL_FOLDIN_MAX_SUM (refused: nothing changes; counted in refused),
 * HL_ENOMEM. An add that would take the lift's baseline past it still
 * counts for the item; the baseline leaves that one out (counted in
 * baseline_refused, not in refused: the add returned 0 or 1). */
int hl_foldin_add(hl_foldin *f, const char *id, uint32_t len, const float *q, float w,
                  int64_t ts_ms);

/* The same with the id's hash (hl_foldin_hash) computed by the caller,
 * once per event, and *due set to what hl_foldin_due would answer right
 * after (0 on error), so the caller that publishes needs no second lookup. */
uint32_t hl_foldin_hash(const char *id, uint32_t len);
/* The same from the id's hl_item_key, when the caller has it already:
 * hl_foldin_hash(id, len) == hl_foldin_hash_key(hl_item_key(id, len)). */
uint32_t hl_foldin_hash_key(uint64_t item_key);
int hl_foldin_add_due(hl_foldin *f, const char *id, uint32_t len, uint32_t h, const float *q,
                      float w, int64_t ts_ms, int32_t *due);

/* A hint, changing nothing: starts loading what hl_foldin_add will touch
 * for the items of hashes h[0..n) (hl_foldin_hash), all of them at once,
 * so a batch of adds overlaps its cache misses instead of paying them one
 * after another (the sums of a few thousand new items outgrow the cache
 * between batches: an add misses on its hash slot and its record, head
 * and sums; bench_foldin). Same thread rules as hl_foldin_add. */
void hl_foldin_prefetch(const hl_foldin *f, const uint32_t *h, int n);

/* The vectors of a ready item into e_in, e_out (dim each) and *bias: 0, or
 * HL_ENOENT (unknown, evicted or below min_events) or HL_FOLDIN_NOT_DISTINCT
 * (the distinct gate; nothing written). O(n dim) with
 * neighbours, O(dim^2) without; called once per publication. */
int hl_foldin_vectors(const hl_foldin *f, const char *id, uint32_t len,
                      float *e_in, float *e_out, float *bias);

/* The same in two steps, so a caller that guards f with a lock holds it
 * only for the copy: hl_foldin_sums copies a ready item's decayed sums (S,
 * dim floats) and mass (0, or HL_ENOENT or HL_FOLDIN_NOT_DISTINCT as
 * above: S is then not to be used); hl_foldin_vectors_from
 * makes the vectors from them and reads only what hl_foldin_create fitted
 * (never changed after it), so it may run outside that lock while other
 * threads add interactions. */
int  hl_foldin_sums(const hl_foldin *f, const char *id, uint32_t len, float *S, double *M);
/* (With the lift, S comes out as M r_j: the sums less beta M G' / M'.) */
void hl_foldin_vectors_from(const hl_foldin *f, const float *S, double M, float *e_in,
                            float *e_out, float *bias);
/* Its plain-loop twin (tests, bench_foldin --scan): the top T by a double
 * dot product per model item. hl_foldin_vectors_from scores every item
 * with one cblas_sgemv and rescores in double only those the float
 * rounding bound cannot rule out, so the two give the same top T and the
 * same vectors, to the bit (foldin.c, top_items_scan); it allocates
 * n x 4 bytes per call (without them it runs the loop). */
void hl_foldin_vectors_from_naive(const hl_foldin *f, const float *S, double M, float *e_in,
                                  float *e_out, float *bias);

/* Publication (the worker sends ready items' vectors to the item topic):
 * hl_foldin_due gives the item's interactions when it is ready and has at
 * least twice the interactions of its last publication (hl_foldin_mark:
 * the count this worker published, or the one the topic's record was built
 * from), else 0 (unknown and evicted items included). */
int32_t hl_foldin_due(const hl_foldin *f, const char *id, uint32_t len);
void    hl_foldin_mark(hl_foldin *f, const char *id, uint32_t len, int64_t count);

/* One user's query into the lift's baseline, with lift_all (else the
 * adds feed it); a no-op without the lift. */
void hl_foldin_baseline_add(hl_foldin *f, const float *q, float w, int64_t ts_ms);

/* The fitted map, (dim, dim) row-major: e_in = e_out W. */
const float *hl_foldin_map(const hl_foldin *f);

typedef struct hl_foldin_stats {
    int32_t  items, ready;
    uint64_t evicted;
    uint64_t refused;       /* adds refused (HL_ERANGE): past HL_FOLDIN_MAX_SUM */
    uint64_t baseline_refused;  /* adds to the lift's baseline left out (past it),
                               their item's taken: an event lands in one count */
} hl_foldin_stats;
void hl_foldin_stats_get(const hl_foldin *f, hl_foldin_stats *st);

#endif
