/* model.c - `halflife model inspect FILE` and `halflife model compare OLD
 * NEW`: look at a model file, and at what a swap from OLD to NEW would
 * carry of users' history, before NEW goes live.
 *
 * Both open files through hl_model_open(), the worker's own loader, so a
 * file they accept passes the checks a worker runs on it (CRC, shapes,
 * finite and bounded values, ids). compare then fits the map between the
 * two models' item vectors as a worker's swap does (worker/models.c,
 * hl_migration_create_any: in place for one state shape, into the new
 * shape for another) and prints what the worker's
 * halflife_model_migration_* gauges will read after the swap. Its exit
 * status gates a retrain job: 1 when a file is refused or the map is
 * beyond --max-residual or --min-shared-ratio, whose defaults are the
 * thresholds of the HalflifeModelSwapLossy alert
 * (deploy/prometheus/alerts.yml). */
#include "cmd.h"
#include "cmd_common.h"

#include "migrate.h"
#include "model.h"
#include "models.h"
#include "log.h"

#include <stdio.h>
#include <string.h>

#define MAX_RESIDUAL     0.6    /* HalflifeModelSwapLossy's */
#define MIN_SHARED_RATIO 0.5

static void usage(FILE *f)
{
    fprintf(f,
        "usage: halflife model inspect FILE\n"
        "       halflife model compare OLD NEW [--max-residual R] [--min-shared-ratio S]\n\n"
        "inspect  validates FILE as a worker loading it does and prints its header\n"
        "         as one JSON object: version, fingerprint, dim, n_heads,\n"
        "         half_life_ms, items, layers, type_weight.\n"
        "compare  validates both files and fits the map a worker's swap from OLD\n"
        "         to NEW fits between their item vectors; prints one JSON object:\n"
        "         both headers, same_shape (false: users move into NEW's dim,\n"
        "         heads or half-lives, schemas/model.md), shared_items (items both\n"
        "         know: the map is fitted over them), shared_ratio (of OLD's\n"
        "         items), residual (||E_old M - E_new|| / ||E_new||: 0 exact, 1 the\n"
        "         map carries nothing of users' history older than their ring),\n"
        "         fit_seconds and ok. These are what halflife_model_migration_*\n"
        "         read after the swap.\n\n"
        "  --max-residual R       ok needs residual <= R (%.2f)\n"
        "  --min-shared-ratio S   ok needs shared_ratio >= S (%.2f)\n"
        "The defaults are the HalflifeModelSwapLossy alert's. A daily retrain\n"
        "warm-started with `train --init` (taobao-sample) fits to 0.40; the same\n"
        "training from scratch to 0.998.\n\n"
        "Exit status: 0 ok; 1 a file refused (the reason on stderr) or compare\n"
        "not ok; 2 a usage error. A retrain job can run compare on its output\n"
        "before renaming it over model.path (README, \"Daily retrain\").\n",
        MAX_RESIDUAL, MIN_SHARED_RATIO);
}

static hl_model *open_model(const char *path)
{
    char err[512];
    hl_model *m = hl_model_open(path, err, sizeof err);
    if (m == NULL)      /* the loader's reason names the file */
        fprintf(stderr, "halflife model: %s\n", err);
    return m;
}

/* The header's fields, without braces. */
static void print_header(FILE *f, const char *path, const hl_model_info *mi)
{
    fputs("\"path\":", f);
    hl_cmd_json_str(f, path, strlen(path));
    fputs(",\"version\":", f);
    hl_cmd_json_str(f, mi->version, strnlen(mi->version, sizeof mi->version));
    fprintf(f, ",\"fingerprint\":\"%016llx\",\"dim\":%d,\"n_heads\":%d,\"half_life_ms\":[",
            (unsigned long long)mi->fingerprint, mi->dim, mi->n_heads);
    for (int h = 0; h < mi->n_heads; h++)
        hl_cmd_json_num(f, h ? "," : "", 17, mi->half_life_ms[h]);
    fprintf(f, "],\"items\":%d,\"layers\":%d,\"type_weight\":[", (int)mi->n_items,
            mi->n_layers);
    for (int t = 0; t < HL_N_TYPES; t++)
        hl_cmd_json_num(f, t ? "," : "", 9, mi->type_weight[t]);
    fputc(']', f);
}

static int inspect(const char *path)
{
    hl_model *m = open_model(path);
    if (m == NULL)
        return 1;
    putchar('{');
    print_header(stdout, path, hl_model_info_get(m));
    puts("}");
    hl_model_close(m);
    return 0;
}

/* The fit a swap from a to b makes (worker/models.c fit()), with a's own
 * type weights; its seconds in *secs. */
static hl_migration *fit(const hl_model *a, const hl_model *b, double *secs)
{
    char err[512];
    const hl_model_info *ia = hl_model_info_get(a);
    double t0 = hl_now_mono_s();
    hl_migration *mg = hl_migration_create_any(a, b, ia->type_weight, err, sizeof err);
    *secs = hl_now_mono_s() - t0;
    if (mg == NULL)
        fprintf(stderr, "halflife model compare: fitting the map failed: %s\n", err);
    return mg;
}

static int compare(const char *from, const char *to, double max_res, double min_ratio)
{
    hl_model *a = open_model(from), *b = a ? open_model(to) : NULL;
    double secs = 0;
    hl_migration *mg = b ? fit(a, b, &secs) : NULL;
    if (mg == NULL) {
        hl_model_close(a);
        hl_model_close(b);
        return 1;
    }
    const hl_model_info *ia = hl_model_info_get(a), *ib = hl_model_info_get(b);
    int shared = hl_migration_shared(mg);
    double res = hl_migration_residual(mg), ratio = ia->n_items ? (double)shared / ia->n_items : 0;
    int ok = res <= max_res && ratio >= min_ratio;
    fputs("{\"from\":{", stdout);
    print_header(stdout, from, ia);
    fputs("},\"to\":{", stdout);
    print_header(stdout, to, ib);
    printf("},\"same_shape\":%s,\"shared_items\":%d,\"shared_ratio\":%.6f,\"residual\":%.6f,"
           "\"fit_seconds\":%.3f,\"max_residual\":%g,\"min_shared_ratio\":%g,\"ok\":%s}\n",
           hl_models_same_shape(ia, ib) ? "true" : "false", shared, ratio, res, secs, max_res,
           min_ratio, ok ? "true" : "false");
    if (res > max_res)
        fprintf(stderr, "halflife model compare: the map leaves %.3f of NEW's item vectors "
                "unexplained (--max-residual %g): users' history older than their ring "
                "would carry over poorly. Was NEW trained with --init OLD?\n", res, max_res);
    if (ratio < min_ratio)
        fprintf(stderr, "halflife model compare: NEW knows %d of OLD's %d items (%.3f, "
                "--min-shared-ratio %g): is it a model of the same catalogue?\n", shared,
                (int)ia->n_items, ratio, min_ratio);
    hl_migration_destroy(mg);
    hl_model_close(a);
    hl_model_close(b);
    return ok ? 0 : 1;
}

int hl_cmd_model(int argc, char **argv)
{
    double max_res = MAX_RESIDUAL, min_ratio = MIN_SHARED_RATIO;
    const hl_arg opts[] = {
        {"--max-residual", HL_ARG_NUM, 0, 1e9, &max_res},
        {"--min-shared-ratio", HL_ARG_NUM, 0, 1, &min_ratio},
    };
    hl_cmd_args a = {"model", opts, 2, usage, NULL};
    /* The words in place of the command or a FILE (compare's options come
     * after OLD NEW). One with a '-' is an option, as snapshot takes it:
     * none but --help is known there, and such a word was opened as a file
     * or answered with the usage alone. A file named so is ./-x. */
    int n_words = argc > 1 && !strcmp(argv[1], "compare") ? 4 : argc;
    for (int i = 1; i < argc && i < n_words; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        }
        if (argv[i][0] == '-')
            return hl_cmd_unknown_option("model", argv[i]);
    }
    if (argc == 3 && !strcmp(argv[1], "inspect"))
        return inspect(argv[2]);
    if (argc >= 4 && !strcmp(argv[1], "compare")) {
        int rc = hl_cmd_parse_args(&a, argc - 3, argv + 3);
        return rc == 1 ? 0 : rc != 0 ? 2 : compare(argv[2], argv[3], max_res, min_ratio);
    }
    usage(stderr);
    return 2;
}
