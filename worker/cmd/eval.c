/* eval.c - `halflife eval`: how good are a model's lists, measured the
 * way they are served.
 *
 * The heads come from core/table.c (hl_table_apply with the model's e_in)
 * and the lists from core/rank.c, the worker's own code, so the figures are
 * those of the running worker, not of a re-implementation.
 *
 * This file reads the command line and the event file (user ids interned
 * to dense ids, items mapped to the model's rows, or interned too without
 * a model), and holds what both protocols use: the state table, the
 * metrics and the progress line. The protocols are eval_loo.c
 * (leave-one-out, full ranking) and eval_preq.c (prequential: test,
 * then learn, in time order); --baseline popularity ranks by counts under
 * the same protocol and exclusions (eval_pop.c). It needs no model:
 * without --model the catalogue is every item of the file. */
#include "cmd.h"
#include "cmd_common.h"
#include "eval_internal.h"
#include "decay.h"
#include "foldin.h"
#include "fnv.h"
#include "log.h"
#include "migrate.h"

#include <cblas.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- arguments ------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
        "usage: halflife eval [--model MODEL] --input FILE --format F\n"
        "                     --protocol loo|prequential [options]\n\n"
        "Measures a model's top-K lists, computed by the worker's own code, on an\n"
        "event file, and prints one JSON object on stdout (progress on stderr).\n\n"
        "  --model MODEL        the .hlm file (optional with --baseline popularity:\n"
        "                       the catalogue is then every item of the file)\n"
        "  --input FILE         events; --format movielens-csv|movielens-dat|seq|\n"
        "                       taobao|events-csv\n"
        "  --protocol loo       leave-one-out, full ranking: each user's last event is\n"
        "                       the target, all earlier ones make the state and are\n"
        "                       excluded from the ranking; HR@K and NDCG@K\n"
        "  --protocol prequential\n"
        "                       in time order, before each event is applied: is its\n"
        "                       item in the user's current top K? HR@K overall and\n"
        "                       per window\n"
        "  --k N                list length (default %d)\n"
        "  --baseline popularity  also rank by popularity under the same protocol\n"
        "  --seq-step-ms MS     seq format: event i of a user is at i x MS (default 1 h)\n"
        "  --history N          prequential: ring length, the items excluded as seen\n"
        "                       (default %d, state.history's default)\n"
        "  --exclude-seen yes|no  leave seen items out of the lists (default yes)\n"
        "  --seen-ring own|full prequential, with --exclude-seen yes: leave out the\n"
        "                       items of the state's own ring (own, the default: what\n"
        "                       the worker does), or of the ring the user would have\n"
        "                       after every earlier event of the file (full: the same\n"
        "                       items whatever --apply-from kept, so arms that differ\n"
        "                       in their state differ in nothing else)\n"
        "  --seen-history N     with --seen-ring full: that ring's length (default\n"
        "                       --seen-window, else --history), so a longer --history\n"
        "                       (the state's ring) can be measured with the same\n"
        "                       items left out\n"
        "  --seen-window N      prequential (with --exclude-seen no, nothing): leave out\n"
        "                       the items of the user's last N events only, not the whole\n"
        "                       --history ring (the worker's recs.exclude.seen.events,\n"
        "                       the same code: hl_row_seen_from); N <= --history;\n"
        "                       with --seen-ring full, that ring's length\n"
        "  --batch N            users (loo) or events (prequential) per refresh\n"
        "                       (default %d)\n"
        "  --windows N          prequential: report HR per 1/N of the stream (default %d)\n"
        "  --threads N          OpenBLAS threads (default 1: the refresh batches are\n"
        "                       small, and the worker scores on one core per shard too)\n"
        "  --popularity-counts history|all\n"
        "                       loo: count every event but the targets (history, the\n"
        "                       default), or every event, targets included (all: the\n"
        "                       published Beauty popularity row was computed so, and\n"
        "                       this reproduces it exactly; it leaks the targets)\n"
        "  --swap-model B --swap-at F\n"
        "                       prequential: at the time of the F quantile of the\n"
        "                       events every user's state migrates into model B\n"
        "                       (as a live swap does) and B ranks from then on;\n"
        "                       with --foldin, fold-in starts again in B's space\n"
        "                       (as the worker's does; --foldin-max-per-list is off)\n"
        "  --swap-weights count|remainder|bias\n"
        "                       weight the items in the swap's least-squares fit by\n"
        "                       1 + their events before the swap, 1 + those older\n"
        "                       than their user's ring (decayed by the longest\n"
        "                       half-life), or exp(the old model's bias); default\n"
        "                       none: unweighted, as the worker fits\n"
        "  --swap-local K       the swap's local correction (core/migrate.h): what\n"
        "                       is older than a ring also moves by K times the mean\n"
        "                       delta of the ring's items; default 0.5, as the\n"
        "                       worker migrates; 0: the map M alone\n"
        "  --score-from F       prequential: score only events from that time on\n"
        "  --apply-from F       prequential: skip the events before that time (a state\n"
        "                       rebuilt from a topic that keeps only the later ones)\n"
        "  --foldin N           prequential: items the model does not know are folded\n"
        "                       in from the stream after N interactions, as the\n"
        "                       worker does with catalogue.foldin.min.events=N\n"
        "  --foldin-bias B      neighbours (their mean bias), model (the model's\n"
        "                       mean bias) or count (from the item's decayed count,\n"
        "                       core/foldin_count.h); default the worker's\n"
        "  --foldin-bias-cap X  count: at most the model's mean bias + X; -1 none\n"
        "  --foldin-count-stride S  count: fit over every S-th known item (default 1)\n"
        "  --foldin-confidence C  scale a folded item's e_out by M / (M + C), M its\n"
        "                       decayed count (the score's item part; bias untouched)\n"
        "  --foldin-distinct D  publish a folded item only while its lifted mean\n"
        "                       query keeps D of its users' mean query's length\n"
        "                       (else again at its next doubling); default the\n"
        "                       worker's catalogue.foldin.distinct, " HL_FOLDIN_DISTINCT "\n"
        "  --foldin-e-in S      share of its weight with which a meeting with a\n"
        "                       folded item enters the user's state (its e_in), as\n"
        "                       the worker's catalogue.foldin.e_in.scale (its\n"
        "                       default, " HL_FOLDIN_E_IN_SCALE "); 0..1, yes = 1, no = 0 (as an\n"
        "                       item unknown to the model)\n"
        "  --foldin-gate X      list a folded item only once its decayed count is X\n"
        "                       times the median model item's (stream counts); 0 none\n"
        "  --foldin-max-per-list C  at most C folded items in a list of k: the top k\n"
        "                       of model items and the C best folded ones; 0 no cap\n"
        "  --foldin-lift B      rank a folded item's neighbours by its users' mean\n"
        "                       query less B x the other new items' users' mean,\n"
        "                       the bias by 1 - B (0..1; 1: what sets its users\n"
        "                       apart, no popularity; 0 none); default the worker's\n"
        "                       catalogue.foldin.lift, " HL_FOLDIN_LIFT "\n"
        "  --foldin-lift-base all|new  the baseline's users: every event's, or\n"
        "                       (new, as the worker) the new items' only\n"
        "  --foldin-shrink C    move a folded item towards the model's mean item by\n"
        "                       C / (decayed count + C); 0 none; default the worker's\n"
        "  --per-user FILE      prequential: write each scored user's events and\n"
        "                       the model's hits to FILE (user_id TAB n TAB hits)\n"
        "  --per-target FILE    prequential: one line per scored event, in time\n"
        "                       order: its line in the input (0 the first event) TAB\n"
        "                       user_id TAB known (1: an item of the model) TAB the\n"
        "                       target's rank in the list, -1 not in it; two arms'\n"
        "                       files pair up by the line\n"
        "  --quiet yes          no progress lines\n",
        DEFAULT_K, DEFAULT_HISTORY, DEFAULT_BATCH, DEFAULT_WINDOWS);
}

/* The value parsers below return nonzero for a bad value and write what
 * was wanted into want (WANT_LEN bytes), which the error then says: the
 * range of a number, the words of a choice. */
#define WANT_LEN 192

static int parse_int(const char *s, long lo, long hi, long *out, char *want)
{
    char *end;
    errno = 0;
    *out = strtol(s, &end, 10);
    if (*s != '\0' && *end == '\0' && errno == 0 && *out >= lo && *out <= hi)
        return 0;
    hl_cmd_range_text(want, WANT_LEN, 1, (double)lo, (double)hi);
    return -1;
}

static int parse_yes_no(const char *s, int *out, char *want)
{
    if (!strcmp(s, "yes") || !strcmp(s, "true") || !strcmp(s, "1")) *out = 1;
    else if (!strcmp(s, "no") || !strcmp(s, "false") || !strcmp(s, "0")) *out = 0;
    else return snprintf(want, WANT_LEN, "yes or no"), -1;
    return 0;
}

static int parse_real(const char *s, double lo, double hi, double *out, char *want)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || !(v >= lo && v <= hi)) {
        hl_cmd_range_text(want, WANT_LEN, 0, lo, hi);
        return 1;
    }
    *out = v;
    return 0;
}

/* A fraction 0..1 (of the stream's time order); 1 when it is not one. */
static int parse_fraction(const char *s, double *out, char *want)
{
    return parse_real(s, 0, 1, out, want);
}

/* Nonzero, with the choices in want, when s is none of them. */
static int bad_word(int bad, const char *choices, char *want)
{
    if (bad) snprintf(want, WANT_LEN, "%s", choices);
    return bad;
}

/* The --foldin* options (fold-in of items the model does not know); the
 * return codes are parse_opt's. */
static int parse_foldin_opt(eval_args *a, const char *opt, const char *val, char *want)
{
    long x = 0;
    int bad = 0;

    if (!strcmp(opt, "--foldin"))             { bad = parse_int(val, 1, 1000000, &x, want); a->foldin = (int)x; }
    else if (!strcmp(opt, "--foldin-bias"))   {
        a->foldin_count = !strcmp(val, "count");
        a->foldin_bias = !strcmp(val, "model") || a->foldin_count ? HL_FOLDIN_BIAS_MODEL
                                                                  : HL_FOLDIN_BIAS_NEIGHBOURS;
        bad = bad_word(a->foldin_bias == HL_FOLDIN_BIAS_NEIGHBOURS && strcmp(val, "neighbours"),
                       "neighbours, model or count", want);
    }
    else if (!strcmp(opt, "--foldin-bias-cap"))   bad = parse_real(val, -1, 1e9, &a->foldin_cap, want);
    else if (!strcmp(opt, "--foldin-confidence")) bad = parse_real(val, 0, 1e9, &a->foldin_conf, want);
    else if (!strcmp(opt, "--foldin-gate"))       bad = parse_real(val, 0, 1e9, &a->foldin_gate, want);
    else if (!strcmp(opt, "--foldin-max-per-list")) {
        bad = parse_int(val, 0, 1000, &x, want);
        a->foldin_max = (int)x;
    }
    else if (!strcmp(opt, "--foldin-e-in"))
        bad = parse_fraction(!strcmp(val, "yes") ? "1" : !strcmp(val, "no") ? "0" : val,
                             &a->foldin_e_in, want) &&
              bad_word(1, "a number in 0..1, yes or no", want);
    else if (!strcmp(opt, "--foldin-count-stride")) {
        bad = parse_int(val, 1, 1000000, &x, want);
        a->foldin_stride = (int)x;
    }
    else if (!strcmp(opt, "--foldin-lift"))
        bad = parse_real(val, 0, 1, &a->foldin_lift, want);
    else if (!strcmp(opt, "--foldin-distinct"))
        bad = parse_real(val, 0, 1, &a->foldin_distinct, want);
    else if (!strcmp(opt, "--foldin-lift-base")) {
        bad = bad_word(strcmp(val, "all") && strcmp(val, "new"), "all or new", want);
        a->foldin_lift_all = !strcmp(val, "all");
    }
    else if (!strcmp(opt, "--foldin-shrink")) {
        bad = parse_real(val, 0, 1e9, &a->foldin_shrink, want);
        if (!bad && a->foldin_shrink == 0)
            a->foldin_shrink = -1;              /* none, not the default */
    }
    else return -1;
    return bad ? -2 : 0;
}

static int parse_opt(eval_args *a, const char *opt, const char *val, char *want)
{
    long x = 0;
    int bad = 0;

    if (!strcmp(opt, "--model"))              a->model = val;
    else if (!strcmp(opt, "--input"))         a->input = val;
    else if (!strcmp(opt, "--format"))        a->format = val;
    else if (!strcmp(opt, "--protocol"))      a->protocol = val;
    else if (!strcmp(opt, "--baseline"))      a->baseline = val;
    else if (!strcmp(opt, "--k"))             { bad = parse_int(val, 1, 1000, &x, want); a->k = (int)x; }
    else if (!strcmp(opt, "--history"))       { bad = parse_int(val, 1, 255, &x, want); a->history = (int)x; }
    else if (!strcmp(opt, "--seen-history"))  { bad = parse_int(val, 1, 255, &x, want); a->seen_history = (int)x; }
    else if (!strcmp(opt, "--seen-window"))   { bad = parse_int(val, 1, 255, &x, want); a->seen_window = (int)x; }
    else if (!strcmp(opt, "--batch"))         { bad = parse_int(val, 1, HL_EVAL_MAX_BATCH, &x, want); a->batch = (int)x; }
    else if (!strcmp(opt, "--threads"))       { bad = parse_int(val, 1, 256, &x, want); a->threads = (int)x; }
    else if (!strcmp(opt, "--windows"))       { bad = parse_int(val, 1, 1000, &x, want); a->windows = (int)x; }
    else if (!strcmp(opt, "--seq-step-ms"))   { bad = parse_int(val, 1, HL_EVENT_MAX_TS_MS, &x, want); a->seq_step_ms = x; }
    else if (!strcmp(opt, "--exclude-seen"))  bad = parse_yes_no(val, &a->exclude_seen, want);
    else if (!strcmp(opt, "--quiet"))         bad = parse_yes_no(val, &a->quiet, want);
    else if (!strcmp(opt, "--swap-model"))    a->swap_model = val;
    else if (!strcmp(opt, "--swap-at"))       bad = parse_fraction(val, &a->swap_at, want);
    else if (!strcmp(opt, "--score-from"))    bad = parse_fraction(val, &a->score_from, want);
    else if (!strcmp(opt, "--apply-from"))    bad = parse_fraction(val, &a->apply_from, want);
    else if (!strcmp(opt, "--per-user"))      a->per_user = val;
    else if (!strcmp(opt, "--per-target"))    a->per_target = val;
    else if (!strcmp(opt, "--seen-ring"))     {
        a->seen_full = !strcmp(val, "full");
        bad = bad_word(!a->seen_full && strcmp(val, "own"), "own or full", want);
    }
    else if (!strcmp(opt, "--swap-local"))    bad = parse_real(val, 0, 4, &a->swap_local, want);
    else if (!strcmp(opt, "--swap-weights"))  {
        a->swap_weights = strcmp(val, "none") ? val : NULL;
        bad = bad_word(a->swap_weights && strcmp(val, "count") && strcmp(val, "remainder") &&
                       strcmp(val, "bias"), "none, count, remainder or bias", want);
    }
    else if (!strcmp(opt, "--popularity-counts")) {
        a->pop_counts_all = !strcmp(val, "all");
        bad = bad_word(!a->pop_counts_all && strcmp(val, "history"), "history or all", want);
    }
    else return parse_foldin_opt(a, opt, val, want);
    return bad ? -2 : 0;
}

static int check_args(const eval_args *a)
{
    if (!a->input || !a->format || !a->protocol) {
        fprintf(stderr, "halflife eval: --input, --format and --protocol are required\n\n");
        return 2;
    }
    if (strcmp(a->protocol, "loo") && strcmp(a->protocol, "prequential")) {
        return hl_cmd_bad_value("eval", "--protocol", a->protocol, "loo or prequential");
    }
    if (a->baseline && strcmp(a->baseline, "popularity")) {
        return hl_cmd_bad_value("eval", "--baseline", a->baseline, "popularity (the only "
                                "baseline)");
    }
    if (a->swap_model && (!a->model || strcmp(a->protocol, "prequential") || a->swap_at < 0)) {
        fprintf(stderr, "halflife eval: --swap-model needs --model, --swap-at and the "
                        "prequential protocol\n\n");
        return 2;
    }
    if (a->swap_weights && !a->swap_model) {
        fprintf(stderr, "halflife eval: --swap-weights weights a swap's fit: give "
                        "--swap-model and --swap-at too\n\n");
        return 2;
    }
    if ((a->per_user || a->per_target) && (!a->model || strcmp(a->protocol, "prequential"))) {
        fprintf(stderr, "halflife eval: --per-user and --per-target need --model and the "
                        "prequential protocol\n\n");
        return 2;
    }
    if (a->seen_full && (strcmp(a->protocol, "prequential") || !a->exclude_seen)) {
        fprintf(stderr, "halflife eval: --seen-ring full says which items --exclude-seen "
                        "yes leaves out, in the prequential protocol: give both, or drop it "
                        "(loo leaves out every earlier item anyway)\n\n");
        return 2;
    }
    /* With --exclude-seen no it leaves nothing out, as --seen-history: not
     * refused, so one set of options serves every protocol of a script. */
    if (a->seen_window > 0 && strcmp(a->protocol, "prequential")) {
        fprintf(stderr, "halflife eval: --seen-window says which items --exclude-seen yes "
                        "leaves out, in the prequential protocol (loo leaves out every "
                        "earlier item)\n\n");
        return 2;
    }
    if (a->seen_window > a->history && !a->seen_full) {
        fprintf(stderr, "halflife eval: --seen-window %d is above --history %d: the ring "
                        "holds only that many events (the worker refuses the same: "
                        "recs.exclude.seen.events above state.history)\n\n",
                a->seen_window, a->history);
        return 2;
    }
    if (a->seen_window > 0 && a->seen_history > 0 && a->seen_window != a->seen_history) {
        fprintf(stderr, "halflife eval: --seen-window %d and --seen-history %d disagree "
                        "(with --seen-ring full either sets that ring's length)\n\n",
                a->seen_window, a->seen_history);
        return 2;
    }
    if (!a->model && !a->baseline) {
        fprintf(stderr, "halflife eval: give --model, --baseline popularity, or both\n\n");
        return 2;
    }
    return 0;
}

/* 0, 1 (--help printed) or 2 (usage error, explained on stderr). */
static int parse_args(int argc, char **argv, eval_args *a)
{
    *a = (eval_args){.k = DEFAULT_K, .history = DEFAULT_HISTORY, .batch = DEFAULT_BATCH,
                     .windows = DEFAULT_WINDOWS, .exclude_seen = 1, .threads = 1,
                     .swap_at = -1, .foldin_cap = -1, .foldin_stride = 1,
                     .swap_local = HL_MIG_LOCAL,
                     .foldin_e_in = strtod(HL_FOLDIN_E_IN_SCALE, NULL),
                     .foldin_lift = strtod(HL_FOLDIN_LIFT, NULL),
                     .foldin_distinct = strtod(HL_FOLDIN_DISTINCT, NULL)};
    for (int i = 1; i < argc; i += 2) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 1;
        }
        /* Known or not is asked first, of a scratch copy: an unknown
         * option last on the line was said to need a value. */
        eval_args scratch = *a;
        char want[WANT_LEN] = "";
        if (parse_opt(&scratch, argv[i], "", want) == -1 && argv[i][0] != '-') {
            fprintf(stderr, "halflife eval: unexpected argument \"%s\": every value follows "
                    "its option ('halflife eval --help' lists them)\n", argv[i]);
            return 2;
        }
        if (parse_opt(&scratch, argv[i], "", want) == -1)
            return hl_cmd_unknown_option("eval", argv[i]);
        if (hl_cmd_need_value("eval", argv[i], i + 1 < argc ? argv[i + 1] : NULL))
            return 2;
        if (parse_opt(a, argv[i], argv[i + 1], want) == -2) {
            if (!strcmp(argv[i], "--seq-step-ms"))
                snprintf(want + strlen(want), WANT_LEN - strlen(want), " (event i of a user "
                         "is at i x MS, and the worker refuses an event after 2100)");
            return hl_cmd_bad_value("eval", argv[i], argv[i + 1], want);
        }
    }
    /* The synopsis after the reason, not the 100 lines of usage that
     * scrolled the reason out of sight. */
    int rc = check_args(a);
    if (rc != 0)
        fprintf(stderr, "usage: halflife eval [--model MODEL] --input FILE --format F\n"
                "                     --protocol loo|prequential [options]\n"
                "('halflife eval --help' lists the options)\n");
    return rc;
}

/* ---- string interning: user and item ids to dense ids ---------------------- */

static uint64_t hash_bytes(const char *s, uint32_t len)
{
    uint64_t h = hl_fnv1a64(HL_FNV64_HLM, s, len);
    return h ^ (h >> 29);
}

static int strmap_rehash(strmap *sm)
{
    uint32_t n_slots = sm->n_slots ? sm->n_slots * 2 : 1024;
    int32_t *slot = malloc((size_t)n_slots * sizeof *slot);
    if (slot == NULL)
        return HL_ENOMEM;
    memset(slot, 0xff, (size_t)n_slots * sizeof *slot);
    for (int32_t id = 0; id < sm->n; id++) {
        uint32_t i = (uint32_t)hash_bytes(sm->arena + sm->off[id], sm->len[id]) & (n_slots - 1);
        while (slot[i] >= 0)
            i = (i + 1) & (n_slots - 1);
        slot[i] = id;
    }
    free(sm->slot);
    sm->slot = slot;
    sm->n_slots = n_slots;
    return 0;
}

static int strmap_grow(strmap *sm, uint32_t len)
{
    if (sm->arena_len + len > sm->arena_cap) {
        size_t cap = sm->arena_cap ? sm->arena_cap * 2 : 65536;
        while (cap < sm->arena_len + len)
            cap *= 2;
        char *a = realloc(sm->arena, cap);
        if (a == NULL) return HL_ENOMEM;
        sm->arena = a;
        sm->arena_cap = cap;
    }
    if (sm->n == sm->cap) {
        int32_t cap = sm->cap ? sm->cap * 2 : 1024;
        size_t *off = realloc(sm->off, (size_t)cap * sizeof *off);
        if (off == NULL) return HL_ENOMEM;
        sm->off = off;
        uint32_t *l = realloc(sm->len, (size_t)cap * sizeof *l);
        if (l == NULL) return HL_ENOMEM;
        sm->len = l;
        sm->cap = cap;
    }
    if ((uint32_t)sm->n * 2 + 2 > sm->n_slots)
        return strmap_rehash(sm);
    return 0;
}

/* Id of s, added if new; negative HL_E* on no memory. */
static int32_t strmap_put(strmap *sm, const char *s, uint32_t len)
{
    if (strmap_grow(sm, len) != 0)
        return HL_ENOMEM;
    uint32_t i = (uint32_t)hash_bytes(s, len) & (sm->n_slots - 1);
    for (; sm->slot[i] >= 0; i = (i + 1) & (sm->n_slots - 1)) {
        int32_t id = sm->slot[i];
        if (sm->len[id] == len && memcmp(sm->arena + sm->off[id], s, len) == 0)
            return id;
    }
    memcpy(sm->arena + sm->arena_len, s, len);
    sm->off[sm->n] = sm->arena_len;
    sm->len[sm->n] = len;
    sm->arena_len += len;
    sm->slot[i] = sm->n;
    return sm->n++;
}

static void strmap_free(strmap *sm)
{
    free(sm->arena);
    free(sm->off);
    free(sm->len);
    free(sm->slot);
}

/* ---- the events ------------------------------------------------------------ */

static int push_event(eval_data *d, const hl_dataset_event *de, const hl_model *m,
                      const hl_model *mb, char *errbuf, size_t errlen)
{
    if (d->n_ev == d->cap) {
        int64_t cap = d->cap ? d->cap * 2 : 65536;
        ev_rec *ev = realloc(d->ev, (size_t)cap * sizeof *ev);
        if (ev == NULL)
            return hl_err(errbuf, errlen, HL_ENOMEM, "eval: out of memory at event %lld",
                          (long long)d->n_ev);
        d->ev = ev;
        d->cap = cap;
    }
    ev_rec *e = &d->ev[d->n_ev];
    int32_t user = strmap_put(&d->users, de->user, de->user_len);
    int32_t item = m ? hl_model_item_find(m, de->item, de->item_len)
                     : strmap_put(&d->items, de->item, de->item_len);
    if (user < 0 || (m == NULL && item < 0))
        return hl_err(errbuf, errlen, HL_ENOMEM, "eval: out of memory interning ids");
    float tw = m ? hl_model_info_get(m)->type_weight[de->type] : 1.0f;
    *e = (ev_rec){.ts_ms = de->ts_ms, .idx = d->n_ev, .user = user, .item = item,
                  .w = tw * de->weight, .type = (uint8_t)de->type,
                  .item_b = mb ? hl_model_item_find(mb, de->item, de->item_len) : -1,
                  .key = hl_item_key(de->item, de->item_len)};
    d->unknown += item < 0;
    d->n_ev++;
    return 0;
}

/* A model that knows none of the file's items (nor does --swap-model)
 * ranks for states that stay empty: it scored HR 0 with exit 0, as if it
 * were a bad model rather than a model of another catalogue. */
static int check_catalogue(const eval_args *a, const eval_data *d, char *errbuf,
                           size_t errlen)
{
    for (int64_t i = 0; i < d->n_ev; i++)
        if (d->ev[i].item >= 0 || d->ev[i].item_b >= 0)
            return 0;
    return hl_err(errbuf, errlen, HL_EINVAL, "eval: none of the %lld events of %s is on an "
                  "item %s%s%s knows: is it a model of this catalogue, and is --format "
                  "right?", (long long)d->n_ev, a->input, a->model,
                  a->swap_model ? " or " : "", a->swap_model ? a->swap_model : "");
}

static int load_events(const eval_args *a, const hl_model *m, eval_data *d,
                       char *errbuf, size_t errlen)
{
    hl_dataset_opts o = {.seq_step_ms = a->seq_step_ms};
    hl_dataset_event de;
    int rc;

    if ((rc = hl_dataset_format_parse(a->format, &o.format, errbuf, errlen)) != 0)
        return rc;
    hl_dataset_reader *rd = hl_dataset_open(a->input, &o, errbuf, errlen);
    if (rd == NULL)
        return HL_EIO;
    while ((rc = hl_dataset_next(rd, &de, errbuf, errlen)) == 1)
        if ((rc = push_event(d, &de, m, a->swap_m, errbuf, errlen)) != 0)
            break;
    hl_dataset_stats_get(rd, &d->st);
    hl_dataset_close(rd);
    if (rc < 0)
        return rc;
    d->n_rows = m ? hl_model_info_get(m)->n_items : d->items.n;
    if (d->n_ev == 0)
        return hl_err(errbuf, errlen, HL_EFORMAT, "eval: %s holds no events", a->input);
    return m ? check_catalogue(a, d, errbuf, errlen) : 0;
}

hl_event hl_eval_event(const eval_data *d, const ev_rec *e, int64_t offset)
{
    uint32_t len;
    const char *user = strmap_key(&d->users, e->user, &len);
    return (hl_event){.user = user, .user_len = len, .item = e->item, .item_key = e->key,
                      .type = e->type,
                      .w = e->w, .ts_ms = e->ts_ms, .offset = offset};
}

/* ---- the state ----------------------------------------------------------- */

hl_table *hl_eval_table_create(const hl_model *m, int history, int32_t n_users,
                               char *errbuf, size_t errlen)
{
    hl_table_opts o = {.history = history, .max_users = (size_t)n_users + 1,
                       .evict_mass = 0.0f, .expected_users = (size_t)n_users + 1};
    static const double one_day_ms = 86400e3;
    int rc = m ? hl_decay_init(&o.decay, hl_model_info_get(m)->n_heads,
                               hl_model_info_get(m)->dim,
                               hl_model_info_get(m)->half_life_ms, errbuf, errlen)
               : hl_decay_init(&o.decay, 1, 1, &one_day_ms, errbuf, errlen);
    return rc == 0 ? hl_table_create(&o, errbuf, errlen) : NULL;
}

int hl_eval_apply(hl_table *tbl, const hl_model *m, const hl_event *ev,
                  char *errbuf, size_t errlen)
{
    int8_t status = 0;
    const float *e_in = m ? hl_model_e_in(m) : NULL;
    int32_t n_items = m ? hl_model_info_get(m)->n_items : 0;
    hl_table_apply(tbl, ev, 1, e_in, n_items, &status);
    if (status < 0)
        return hl_err(errbuf, errlen, status, "eval: state table: %s", hl_strerror(status));
    return 0;
}

/* ---- metrics and progress ---------------------------------------------------- */

void hl_eval_print_metric(const char *name, const metric *mt, int with_ndcg)
{
    printf(",\"%s\":{\"hr\":%.6f", name, metric_hr(mt));
    if (with_ndcg)
        printf(",\"ndcg\":%.6f", metric_ndcg(mt));
    printf(",\"hits\":%lld,\"n\":%lld}", (long long)mt->hits, (long long)mt->n);
}

void hl_eval_progress(progress *pg, const char *what, int64_t done, int64_t total,
                      const metric *model, const metric *pop)
{
    int64_t now = hl_now_mono_ms();
    if (pg->quiet || (now - pg->last_ms < PROGRESS_MS && done < total))
        return;
    pg->last_ms = now;
    fprintf(stderr, "eval: %s %lld/%lld (%.0f%%)", what, (long long)done,
            (long long)total, 100.0 * done / (total ? total : 1));
    if (model) fprintf(stderr, " model_hr %.4f", metric_hr(model));
    if (pop)   fprintf(stderr, " popularity_hr %.4f", metric_hr(pop));
    fprintf(stderr, "\n");
}

/* ---- the command ------------------------------------------------------------- */

int hl_cmd_eval(int argc, char **argv)
{
    eval_args a;
    eval_data d;
    hl_model *m = NULL, *mb = NULL;
    char err[512] = "";
    int rc = parse_args(argc, argv, &a);

    if (rc != 0)
        return rc == 1 ? 0 : 2;
    memset(&d, 0, sizeof d);
    openblas_set_num_threads(a.threads);
    if ((a.model && (m = hl_model_open(a.model, err, sizeof err)) == NULL) ||
        (a.swap_model && (mb = hl_model_open(a.swap_model, err, sizeof err)) == NULL)) {
        fprintf(stderr, "halflife eval: %s\n", err);
        hl_model_close(m);
        return 1;
    }
    a.swap_m = mb;
    if ((rc = load_events(&a, m, &d, err, sizeof err)) == 0) {
        if (d.st.bad_lines > 0 && !a.quiet)
            fprintf(stderr, "eval: %lld bad lines skipped (first at line %lld: %s)\n",
                    (long long)d.st.bad_lines, (long long)d.st.first_bad_line[0],
                    d.st.first_bad_why[0]);
        rc = !strcmp(a.protocol, "loo") ? hl_eval_run_loo(&a, m, &d, err, sizeof err)
                                        : hl_eval_run_prequential(&a, m, &d, err, sizeof err);
    }
    if (rc != 0)                /* its own messages begin "eval: ": said once */
        fprintf(stderr, "halflife eval: %s\n", strncmp(err, "eval: ", 6) ? err : err + 6);
    strmap_free(&d.users);
    strmap_free(&d.items);
    free(d.ev);
    hl_model_close(m);
    hl_model_close(mb);
    return rc == 0 ? 0 : 1;
}
