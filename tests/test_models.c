/* test_models.c - which files a model set's periodic check opens
 * (worker/models.c): a model.path that is a symlink into a projected
 * directory (a Kubernetes ConfigMap or volume: model.hlm -> ..data/model.hlm,
 * ..data -> a timestamped directory, swapped by rename) is opened once per
 * projection, never again while it stands; a file caught half-written in
 * place is refused and counted once, and loaded once complete. Swaps
 * themselves are test_swap.c's. */
#define T_SUITE "models"
#include "test.h"
#include "log.h"
#include "models.h"
#include "qscore.h"
#include "tempname.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <time.h>

#define DIM     8
#define N_ITEMS 50
/* Relative: main() first moves into a directory of this process's own
 * (mkdtemp), so clones running the test at once never share files. */
#define TOP     "test_models_dir"

/* N_ITEMS items "it<i>" whose vectors depend on seed; version names it. */
static int write_model(const char *path, const char *version, int seed)
{
    hl_model_parts p;
    memset(&p, 0, sizeof p);
    hl_model_info *mi = &p.info;
    *mi = (hl_model_info){.dim = DIM, .n_heads = 1, .half_life_ms = {3600e3},
                          .n_items = N_ITEMS, .n_layers = 1, .layer_out = {DIM}};
    for (int t = 0; t < HL_N_TYPES; t++)
        mi->type_weight[t] = 1;
    snprintf(mi->version, sizeof mi->version, "%s", version);
    float *e = malloc(sizeof(float) * N_ITEMS * DIM), *bias = calloc(N_ITEMS, sizeof(float));
    float *w = calloc((size_t)DIM * (size_t)hl_model_input_dim(mi), sizeof(float));
    float *b = calloc(DIM, sizeof(float));
    char ids[N_ITEMS][16];
    const char *idp[N_ITEMS];
    uint32_t lens[N_ITEMS];
    for (int i = 0; i < N_ITEMS * DIM; i++)
        e[i] = (float)((i * 7 + seed * 13) % 17) / 17.0f - 0.5f;
    for (int i = 0; i < N_ITEMS; i++) {
        lens[i] = (uint32_t)snprintf(ids[i], sizeof ids[i], "it%d", i);
        idp[i] = ids[i];
    }
    p.item_id = idp;
    p.item_id_len = lens;
    p.e_in = p.e_out = e;
    p.bias = bias;
    p.layer_w[0] = w;
    p.layer_b[0] = b;
    char err[256];
    int rc = hl_model_write(path, &p, err, sizeof err);
    if (rc != 0)
        printf("    model %s: %s\n", path, err);
    free(e); free(bias); free(w); free(b);
    return rc;
}

/* halflife_model_swap_failures_total in reg's /metrics text. */
static double failures(hl_metrics *reg)
{
    const char *name = "\nhalflife_model_swap_failures_total ";
    char *text = NULL, *at;
    size_t len = 0;
    double v = -1;
    if (hl_metrics_render(reg, &text, &len) == 0 && (at = strstr(text, name)) != NULL)
        v = strtod(at + strlen(name), NULL);
    free(text);
    return v;
}

/* Periodic checks at now_ms, now_ms + 1000, ... (n of them): how many
 * opened model.path, read from the lines they log (a file reopened with
 * the model already served says model_unchanged, which is no load). */
static int opens(hl_models *ms, int64_t now_ms, int n)
{
    static const char *const said[] = {"event=model_unchanged", "event=model_swapped",
                                       "event=model_swap_failed"};
    char log[4096] = "";
    FILE *f = tmpfile();
    int saved = dup(STDERR_FILENO), count = 0;
    if (f == NULL || saved < 0 || dup2(fileno(f), STDERR_FILENO) < 0)
        return -1;
    hl_log_set_level(HL_LOG_INFO);
    for (int i = 0; i < n; i++)
        hl_models_check(ms, now_ms + 1000 * i, 0);
    hl_log_set_level(HL_LOG_ERROR);
    dup2(saved, STDERR_FILENO);
    close(saved);
    rewind(f);
    log[fread(log, 1, sizeof log - 1, f)] = '\0';
    fclose(f);
    for (size_t k = 0; k < sizeof said / sizeof said[0]; k++)
        for (const char *at = log; (at = strstr(at, said[k])) != NULL; at++)
            count++;
    return count;
}

/* A set over TOP/model.hlm, a symlink into the projection ..data. */
static hl_models *projected_set(hl_metrics *reg, hl_model **first)
{
    char err[512];
    CHECK(system("rm -rf " TOP) == 0);
    CHECK(mkdir(TOP, 0755) == 0 && mkdir(TOP "/..v1", 0755) == 0 &&
          mkdir(TOP "/..v2", 0755) == 0);
    CHECK(write_model(TOP "/..v1/model.hlm", "A", 1) == 0);
    CHECK(symlink("..v1", TOP "/..data") == 0);
    CHECK(symlink("..data/model.hlm", TOP "/model.hlm") == 0);
    if ((*first = hl_model_open(TOP "/model.hlm", err, sizeof err)) == NULL)
        return NULL;
    hl_models_opts mo = {.path = TOP "/model.hlm", .check_ms = 1000, .reg = reg};
    return hl_models_create(&mo, *first, err, sizeof err);
}

/* The identity the set starts from (the mapped descriptor's) is what a
 * check's stat of the symlinked path finds: no reload while the
 * projection stands, one when it is swapped. */
static void test_projected_path_loaded_once_per_projection(void)
{
    hl_metrics *reg = hl_metrics_create();
    hl_model *a = NULL;
    hl_models *ms = projected_set(reg, &a);
    CHECK(ms != NULL);
    if (ms == NULL) {
        hl_model_close(a);
        hl_metrics_destroy(reg);
        return;
    }
    int n = opens(ms, 2000, 5);
    CHECKF(n == 0, "the unchanged projection was opened %d times", n);
    CHECK(write_model(TOP "/..v2/model.hlm", "B", 2) == 0);
    CHECK(symlink("..v2", TOP "/..data_tmp") == 0 &&
          rename(TOP "/..data_tmp", TOP "/..data") == 0);
    n = opens(ms, 10000, 5);
    CHECKF(n == 1, "the new projection was opened %d times (want 1)", n);
    hl_mref *r = hl_models_acquire(ms);
    CHECK(strcmp(r->mi->version, "B") == 0);
    hl_mref_release(r);
    CHECK(failures(reg) == 0);
    hl_models_destroy(ms);
    hl_model_close(a);
    hl_metrics_destroy(reg);
    CHECK(system("rm -rf " TOP) == 0);
}

/* A file written in place and caught half-way fails its CRC: refused and
 * counted once, not opened again while it stays as it was, and loaded at
 * the first check after it is complete (its size and time changed). */
static void test_half_written_counted_once_then_loaded(void)
{
    hl_metrics *reg = hl_metrics_create();
    hl_model *a = NULL;
    hl_models *ms = projected_set(reg, &a);
    struct stat st;
    CHECK(ms != NULL && write_model(TOP "/full.hlm", "C", 3) == 0 &&
          stat(TOP "/full.hlm", &st) == 0 && unlink(TOP "/model.hlm") == 0);
    size_t size = (size_t)st.st_size, half = size / 2;
    char *buf = malloc(size);
    int in = open(TOP "/full.hlm", O_RDONLY);
    int out = open(TOP "/model.hlm", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(ms != NULL && buf != NULL && in >= 0 && out >= 0 &&
          read(in, buf, size) == (ssize_t)size && write(out, buf, half) == (ssize_t)half);
    if (ms != NULL) {
        CHECK(hl_models_check(ms, 2000, 0) < 0 && failures(reg) == 1);
        int n = opens(ms, 3000, 4);
        CHECKF(n == 0 && failures(reg) == 1, "opened %d times more, %g failures for the "
               "file as it was", n, failures(reg));
        usleep(20000);              /* another mtime, whatever the clock's grain */
        CHECK(write(out, buf + half, size - half) == (ssize_t)(size - half));
        CHECK(hl_models_check(ms, 8000, 0) == 1 && opens(ms, 9000, 3) == 0);
    }
    if (in >= 0) close(in);
    if (out >= 0) close(out);
    free(buf);
    hl_models_destroy(ms);
    hl_model_close(a);
    hl_metrics_destroy(reg);
    CHECK(system("rm -rf " TOP) == 0);
}

/* Bytes malloc holds, its arenas' and its mmapped chunks'. */
static size_t heap_bytes(void)
{
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
}

#define BIG_ROWS 200000      /* the first index: 200,000 rows of DIM, ~7 MB */

/* recs.index=ivf: the first model's index goes with the first model once
 * a model swapped in replaced it and no thread serves it, as every later
 * model's does. Held to the end instead, it kept a copy of the first
 * model's e_out (hundreds of MB at a million items) for the process's
 * life. The index here is a large stand-in (the set never reads its rows),
 * so its freeing shows in malloc's totals. */
static void test_first_index_freed_after_swap(void)
{
    char err[512] = "";
    hl_metrics *reg = hl_metrics_create();
    float *e = malloc(sizeof(float) * BIG_ROWS * DIM), *bias = calloc(BIG_ROWS, sizeof(float));
    for (size_t i = 0; i < (size_t)BIG_ROWS * DIM; i++)
        e[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
    hl_ivf_opts io = {.nlist = 16};
    hl_ivf *ix = hl_ivf_create(e, bias, BIG_ROWS, DIM, &io, err, sizeof err);
    free(e);
    free(bias);
    CHECK(system("rm -rf " TOP) == 0 && mkdir(TOP, 0755) == 0);
    CHECK(write_model(TOP "/model.hlm", "A", 1) == 0 && write_model(TOP "/b.hlm", "B", 2) == 0);
    hl_model *a = hl_model_open(TOP "/model.hlm", err, sizeof err);
    hl_models_opts mo = {.path = TOP "/model.hlm", .check_ms = 1000, .reg = reg,
                         .first_ivf = ix, .ivf_k = 10};
    hl_models *ms = ix != NULL && a != NULL ? hl_models_create(&mo, a, err, sizeof err) : NULL;
    CHECKF(ms != NULL, "set: %s", err);
    if (ms != NULL) {
        size_t before = heap_bytes(), ix_bytes = hl_ivf_bytes(ix);
        CHECK(rename(TOP "/b.hlm", TOP "/model.hlm") == 0);
        CHECK(hl_models_check(ms, 2000, 0) == 1);
        hl_mref *r = hl_models_acquire(ms);
        CHECK(strcmp(r->mi->version, "B") == 0 && r->ivf != NULL && r->ivf != ix);
        hl_mref_release(r);
        size_t after = heap_bytes();
        /* under sanitizers malloc's totals read 0: LeakSanitizer then
         * reports the index if the set did not free it */
        CHECKF(before == 0 || after + ix_bytes * 9 / 10 <= before, "malloc holds %zu bytes before the "
               "swap, %zu after: the first model's index (%zu bytes) was not freed", before,
               after, ix_bytes);
    }
    hl_models_destroy(ms);
    hl_model_close(a);
    hl_metrics_destroy(reg);
    CHECK(system("rm -rf " TOP) == 0);
}

/* Two-stage scoring: the first model's int8 table goes with the first
 * model as its index does (above); held to the end, it kept a quarter of
 * the first model's e_out bytes for the process's life. */
static void test_first_table_freed_after_swap(void)
{
    char err[512] = "";
    hl_metrics *reg = hl_metrics_create();
    float *e = malloc(sizeof(float) * BIG_ROWS * DIM), *bias = calloc(BIG_ROWS, sizeof(float));
    for (size_t i = 0; i < (size_t)BIG_ROWS * DIM; i++)
        e[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
    hl_qitems *qi = hl_qitems_create(e, bias, BIG_ROWS, DIM, HL_QKERNEL_AUTO, err, sizeof err);
    free(e);
    free(bias);
    CHECK(system("rm -rf " TOP) == 0 && mkdir(TOP, 0755) == 0);
    CHECK(write_model(TOP "/model.hlm", "A", 1) == 0 && write_model(TOP "/b.hlm", "B", 2) == 0);
    hl_model *a = hl_model_open(TOP "/model.hlm", err, sizeof err);
    hl_models_opts mo = {.path = TOP "/model.hlm", .check_ms = 1000, .reg = reg,
                         .first_qitems = qi};
    hl_models *ms = qi != NULL && a != NULL ? hl_models_create(&mo, a, err, sizeof err) : NULL;
    CHECKF(ms != NULL, "set: %s", err);
    if (ms != NULL) {
        size_t before = heap_bytes(), qi_bytes = hl_qitems_scan_bytes(qi);
        CHECK(rename(TOP "/b.hlm", TOP "/model.hlm") == 0);
        CHECK(hl_models_check(ms, 2000, 0) == 1);
        hl_mref *r = hl_models_acquire(ms);
        CHECK(strcmp(r->mi->version, "B") == 0 && r->qitems != NULL && r->qitems != qi);
        hl_mref_release(r);
        size_t after = heap_bytes();
        /* under sanitizers malloc's totals read 0: LeakSanitizer then
         * reports the table if the set did not free it */
        CHECKF(before == 0 || after + qi_bytes * 9 / 10 <= before, "malloc holds %zu bytes "
               "before the swap, %zu after: the first model's int8 table (%zu bytes) was "
               "not freed", before, after, qi_bytes);
    }
    hl_models_destroy(ms);
    hl_model_close(a);
    hl_metrics_destroy(reg);
    CHECK(system("rm -rf " TOP) == 0);
}

/* 1 when TOP/kept holds the kept copy of m's model. */
static int kept(const hl_model *m)
{
    char path[256];
    snprintf(path, sizeof path, TOP "/kept/%016llx.hlm",
             (unsigned long long)hl_model_info_get(m)->fingerprint);
    return access(path, F_OK) == 0;
}

/* model.retain=1 and a model whose file is older than the one it
 * replaces (a rollback to yesterday's file, or a copy that keeps the
 * time: rsync -t, cp -p, tar): the kept copy is a hard link with the
 * file's mtime, and pruning the oldest deleted the model just put in
 * service, so a restart after the next swap rebuilt the users of every
 * snapshot written under it from their rings. The served model stays. */
static void test_retain_keeps_served_model(void)
{
    char err[512] = "";
    hl_metrics *reg = hl_metrics_create();
    CHECK(system("rm -rf " TOP) == 0 && mkdir(TOP, 0755) == 0);
    CHECK(write_model(TOP "/model.hlm", "A", 1) == 0 && write_model(TOP "/b.hlm", "B", 2) == 0);
    struct timespec day_ago[2] = {{.tv_sec = time(NULL) - 86400}, {.tv_sec = time(NULL) - 86400}};
    CHECK(utimensat(AT_FDCWD, TOP "/b.hlm", day_ago, 0) == 0);
    hl_model *a = hl_model_open(TOP "/model.hlm", err, sizeof err);
    hl_model *b = hl_model_open(TOP "/b.hlm", err, sizeof err);
    hl_models_opts mo = {.path = TOP "/model.hlm", .check_ms = 1000, .reg = reg,
                         .store_dir = TOP "/kept", .store_retain = 1};
    hl_models *ms = a != NULL && b != NULL ? hl_models_create(&mo, a, err, sizeof err) : NULL;
    CHECKF(ms != NULL, "set: %s", err);
    if (ms != NULL) {
        CHECK(kept(a));
        CHECK(rename(TOP "/b.hlm", TOP "/model.hlm") == 0 && hl_models_check(ms, 2000, 0) == 1);
        CHECKF(kept(b), "model.dir lost B, the model in service (retain 1, A kept: %d)",
               kept(a));
    }
    hl_models_destroy(ms);
    hl_model_close(a);
    hl_model_close(b);
    hl_metrics_destroy(reg);
    CHECK(system("rm -rf " TOP) == 0);
}

/* The bytes of file src written over dst in place (cp does this: it
 * truncates dst and writes, keeping its inode). */
static int write_in_place(const char *src, const char *dst)
{
    char buf[1 << 16];
    ssize_t n;
    int in = open(src, O_RDONLY), out = open(dst, O_WRONLY | O_TRUNC), rc = 0;
    while (in >= 0 && out >= 0 && (n = read(in, buf, sizeof buf)) > 0)
        if (write(out, buf, (size_t)n) != n)
            rc = -1;
    if (in < 0 || out < 0)
        rc = -1;
    if (in >= 0) close(in);
    if (out >= 0 && close(out) != 0) rc = -1;
    return rc;
}

/* model.path rewritten in place (cp b.hlm model.hlm) after A was kept: the
 * kept A must still be A. It was a hard link to model.path, so the
 * rewrite changed it too; the fingerprint check then refused it ("holds
 * model B") and a restart with another model rebuilt the users of every
 * snapshot written under A from their rings instead of migrating them. */
static void test_kept_model_survives_rewrite_in_place(void)
{
    char err[512] = "";
    hl_metrics *reg = hl_metrics_create();
    CHECK(system("rm -rf " TOP) == 0 && mkdir(TOP, 0755) == 0);
    CHECK(write_model(TOP "/model.hlm", "A", 1) == 0 && write_model(TOP "/b.hlm", "B", 2) == 0);
    hl_model *a = hl_model_open(TOP "/model.hlm", err, sizeof err);
    uint64_t fp_a = a != NULL ? hl_model_info_get(a)->fingerprint : 0;
    hl_models_opts mo = {.path = TOP "/model.hlm", .check_ms = 1000, .reg = reg,
                         .store_dir = TOP "/kept", .store_retain = 4};
    hl_models *ms = a != NULL ? hl_models_create(&mo, a, err, sizeof err) : NULL;
    CHECKF(ms != NULL, "set: %s", err);
    if (ms != NULL) {
        CHECK(kept(a));
        CHECK(write_in_place(TOP "/b.hlm", TOP "/model.hlm") == 0);
        hl_model *old = hl_models_open_kept(ms, fp_a, err, sizeof err);
        CHECKF(old != NULL && hl_model_info_get(old)->fingerprint == fp_a,
               "the kept A after model.path was rewritten in place: %s",
               old != NULL ? "another model" : err);
        hl_model_close(old);
    }
    hl_models_destroy(ms);
    hl_model_close(a);
    hl_metrics_destroy(reg);
    CHECK(system("rm -rf " TOP) == 0);
}

/* A kept model an older worker made as a hard link to model.path (the
 * same inode) is made a file of its own when that model is served again,
 * so a later rewrite of model.path in place leaves it alone. */
static void test_kept_hard_link_replaced_by_copy(void)
{
    char err[512] = "", linked[256];
    hl_metrics *reg = hl_metrics_create();
    CHECK(system("rm -rf " TOP) == 0 && mkdir(TOP, 0755) == 0 && mkdir(TOP "/kept", 0755) == 0);
    CHECK(write_model(TOP "/model.hlm", "A", 1) == 0 && write_model(TOP "/b.hlm", "B", 2) == 0);
    hl_model *a = hl_model_open(TOP "/model.hlm", err, sizeof err);
    uint64_t fp_a = a != NULL ? hl_model_info_get(a)->fingerprint : 0;
    snprintf(linked, sizeof linked, TOP "/kept/%016llx.hlm", (unsigned long long)fp_a);
    CHECK(link(TOP "/model.hlm", linked) == 0);
    hl_models_opts mo = {.path = TOP "/model.hlm", .check_ms = 1000, .reg = reg,
                         .store_dir = TOP "/kept", .store_retain = 4};
    hl_models *ms = a != NULL ? hl_models_create(&mo, a, err, sizeof err) : NULL;
    CHECKF(ms != NULL, "set: %s", err);
    if (ms != NULL) {
        CHECK(write_in_place(TOP "/b.hlm", TOP "/model.hlm") == 0);
        hl_model *old = hl_models_open_kept(ms, fp_a, err, sizeof err);
        CHECKF(old != NULL && hl_model_info_get(old)->fingerprint == fp_a,
               "the kept A (a hard link when the worker started) after model.path was "
               "rewritten in place: %s", old != NULL ? "another model" : err);
        hl_model_close(old);
    }
    hl_models_destroy(ms);
    hl_model_close(a);
    hl_metrics_destroy(reg);
    CHECK(system("rm -rf " TOP) == 0);
}

/* A kept model an older worker on the shared volume made as a hard link
 * to its own model file (another pod's model.path): renewing the lease
 * on it would set that pod's model file's time, so the pod reopened its
 * model at every renewal. It is replaced by a copy, whose time is the
 * lease, and the other pod's file keeps its time. */
static void test_lease_leaves_other_pods_model_file(void)
{
    char err[512] = "", linked[256];
    struct stat st;
    hl_metrics *reg = hl_metrics_create();
    CHECK(system("rm -rf " TOP) == 0 && mkdir(TOP, 0755) == 0 && mkdir(TOP "/kept", 0755) == 0);
    CHECK(write_model(TOP "/model.hlm", "A", 1) == 0 &&
          write_model(TOP "/theirs.hlm", "A", 1) == 0);
    struct timespec day_ago[2] = {{.tv_sec = time(NULL) - 86400}, {.tv_sec = time(NULL) - 86400}};
    CHECK(utimensat(AT_FDCWD, TOP "/theirs.hlm", day_ago, 0) == 0);
    hl_model *a = hl_model_open(TOP "/model.hlm", err, sizeof err);
    snprintf(linked, sizeof linked, TOP "/kept/%016llx.hlm",
             (unsigned long long)(a != NULL ? hl_model_info_get(a)->fingerprint : 0));
    CHECK(link(TOP "/theirs.hlm", linked) == 0);
    hl_models_opts mo = {.path = TOP "/model.hlm", .check_ms = 1000, .reg = reg,
                         .store_dir = TOP "/kept", .store_retain = 4};
    hl_models *ms = a != NULL ? hl_models_create(&mo, a, err, sizeof err) : NULL;
    CHECKF(ms != NULL, "set: %s", err);
    if (ms != NULL) {
        hl_models_check(ms, 60000, 0);
        CHECKF(stat(TOP "/theirs.hlm", &st) == 0 && st.st_mtime == day_ago[0].tv_sec,
               "the other pod's model file's time was set by this worker's lease");
        CHECKF(stat(linked, &st) == 0 && st.st_nlink == 1 && time(NULL) - st.st_mtime < 60,
               "the kept A is still a link, or its lease is not fresh");
    }
    hl_models_destroy(ms);
    hl_model_close(a);
    hl_metrics_destroy(reg);
    CHECK(system("rm -rf " TOP) == 0);
}

/* halflife_model_keep_failures_total in reg's /metrics text (-1: none). */
static double keep_failures(hl_metrics *reg)
{
    const char *name = "\nhalflife_model_keep_failures_total ";
    char *text = NULL, *at;
    size_t len = 0;
    double v = -1;
    if (hl_metrics_render(reg, &text, &len) == 0 && (at = strstr(text, name)) != NULL)
        v = strtod(at + strlen(name), NULL);
    free(text);
    return v;
}

/* A served model that cannot be copied into model.dir (here a regular
 * file stands where the directory goes; a full disk does the same) is
 * counted, and kept at the first check after the cause is gone. Before,
 * a warn line was all: nothing to alert on, never tried again, and the
 * first sign was a restart with another model that rebuilt every user of
 * the snapshots written under it from their rings. */
static void test_keep_failure_counted_and_retried(void)
{
    char err[512] = "";
    hl_metrics *reg = hl_metrics_create();
    CHECK(system("rm -rf " TOP) == 0 && mkdir(TOP, 0755) == 0);
    CHECK(write_model(TOP "/model.hlm", "A", 1) == 0);
    CHECK(close(open(TOP "/kept", O_WRONLY | O_CREAT, 0644)) == 0);
    hl_model *a = hl_model_open(TOP "/model.hlm", err, sizeof err);
    hl_models_opts mo = {.path = TOP "/model.hlm", .check_ms = 1000, .reg = reg,
                         .store_dir = TOP "/kept", .store_retain = 4};
    hl_models *ms = a != NULL ? hl_models_create(&mo, a, err, sizeof err) : NULL;
    CHECKF(ms != NULL, "set: %s", err);
    if (ms != NULL) {
        CHECKF(keep_failures(reg) == 1, "halflife_model_keep_failures_total %g, want 1",
               keep_failures(reg));
        hl_models_check(ms, 2000, 0);
        CHECKF(keep_failures(reg) == 1, "a second failure of the same model counted: %g",
               keep_failures(reg));
        CHECK(unlink(TOP "/kept") == 0);
        hl_models_check(ms, 4000, 0);
        CHECKF(kept(a), "A not kept at the check after model.dir could take it");
    }
    hl_models_destroy(ms);
    hl_model_close(a);
    hl_metrics_destroy(reg);
    CHECK(system("rm -rf " TOP) == 0);
}

/* A worker swaps in each retrain for months: the registry must hold one
 * halflife_model_info series, not one per model ever served. Replaced
 * ones were hidden, kept in memory and walked at each scrape for the
 * process's life (41 series after 40 swaps). */
static void test_model_info_series_do_not_pile_up(void)
{
    enum { SWAPS = 40 };
    char err[512] = "", version[16];
    hl_metrics *reg = hl_metrics_create();
    CHECK(system("rm -rf " TOP) == 0 && mkdir(TOP, 0755) == 0);
    CHECK(write_model(TOP "/model.hlm", "v0", 0) == 0);
    hl_model *a = hl_model_open(TOP "/model.hlm", err, sizeof err);
    hl_models_opts mo = {.path = TOP "/model.hlm", .check_ms = 1000, .reg = reg};
    hl_models *ms = a != NULL ? hl_models_create(&mo, a, err, sizeof err) : NULL;
    CHECKF(ms != NULL, "set: %s", err);
    int swapped = 0;
    for (int i = 1; i <= SWAPS && ms != NULL; i++) {
        snprintf(version, sizeof version, "v%d", i);
        if (write_model(TOP "/next.hlm", version, i) == 0 &&
            rename(TOP "/next.hlm", TOP "/model.hlm") == 0)
            swapped += hl_models_check(ms, 2000 * (int64_t)i, 0) == 1;
    }
    CHECKF(swapped == SWAPS, "%d of %d swaps", swapped, SWAPS);
    int n = hl_metrics_series_count(reg, "halflife_model_info");
    CHECKF(n == 1, "halflife_model_info: %d series held after %d swaps (1 wanted)", n, swapped);
    char *text = NULL;
    size_t len = 0;
    CHECK(hl_metrics_render(reg, &text, &len) == 0 && text != NULL &&
          strstr(text, "version=\"v40\"") != NULL && strstr(text, "version=\"v39\"") == NULL);
    free(text);
    hl_models_destroy(ms);
    hl_model_close(a);
    hl_metrics_destroy(reg);
    CHECK(system("rm -rf " TOP) == 0);
}

/* access() for the whole binary (models.c's calls included): when armed,
 * the check of race_dst finds no file and another worker on the shared
 * model.dir keeps the same model right after (a hard link of race_src at
 * race_dst), the interleaving that two workers swapping at once hit. */
static char race_dst[256], race_src[256];
int access(const char *path, int mode)
{
    if (race_dst[0] != '\0' && strcmp(path, race_dst) == 0) {
        race_dst[0] = '\0';
        if (link(race_src, path) != 0)
            printf("    link %s: %s\n", path, strerror(errno));
        errno = ENOENT;
        return -1;
    }
    return faccessat(AT_FDCWD, path, mode, 0);
}

/* The names in TOP/kept ending in .tmp. */
static int tmp_files(void)
{
    DIR *d = opendir(TOP "/kept");
    struct dirent *de;
    int n = 0;
    while (d != NULL && (de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        n += len > 4 && strcmp(de->d_name + len - 4, ".tmp") == 0;
    }
    if (d != NULL)
        closedir(d);
    return n;
}

/* Workers sharing model.dir (one volume) keep the same model at once:
 * another's link lands between this one's check and its rename. A
 * rename() between two links to one file does nothing and succeeds, so
 * the temporary <fingerprint>.hlm.<pid>.tmp stayed, a model-sized file
 * left in model.dir at each such swap, never pruned (prune() counts
 * <fingerprint>.hlm names only). */
static void test_keep_race_leaves_no_temporary(void)
{
    char err[512] = "";
    hl_metrics *reg = hl_metrics_create();
    CHECK(system("rm -rf " TOP) == 0 && mkdir(TOP, 0755) == 0);
    CHECK(write_model(TOP "/model.hlm", "A", 1) == 0 && write_model(TOP "/b.hlm", "B", 2) == 0);
    hl_model *a = hl_model_open(TOP "/model.hlm", err, sizeof err);
    hl_model *b = hl_model_open(TOP "/b.hlm", err, sizeof err);
    hl_models_opts mo = {.path = TOP "/model.hlm", .check_ms = 1000, .reg = reg,
                         .store_dir = TOP "/kept", .store_retain = 4};
    hl_models *ms = a != NULL && b != NULL ? hl_models_create(&mo, a, err, sizeof err) : NULL;
    CHECKF(ms != NULL, "set: %s", err);
    if (ms != NULL) {
        snprintf(race_dst, sizeof race_dst, TOP "/kept/%016llx.hlm",
                 (unsigned long long)hl_model_info_get(b)->fingerprint);
        snprintf(race_src, sizeof race_src, TOP "/model.hlm");
        CHECK(rename(TOP "/b.hlm", TOP "/model.hlm") == 0 && hl_models_check(ms, 2000, 0) == 1);
        CHECKF(race_dst[0] == '\0', "keep() never checked for B's kept copy");
        CHECK(kept(b));
        int n = tmp_files();
        CHECKF(n == 0, "%d temporary file(s) left in model.dir after the race", n);
    }
    race_dst[0] = '\0';
    hl_models_destroy(ms);
    hl_model_close(a);
    hl_model_close(b);
    hl_metrics_destroy(reg);
    CHECK(system("rm -rf " TOP) == 0);
}

/* before_live: a newer file renamed over model.path while the one just
 * loaded is fitted (a retrain published twice within one load). */
static int replace_path(void *arg, const hl_mref *r, char *errbuf, size_t errlen)
{
    (void)r; (void)errbuf; (void)errlen;
    return rename((const char *)arg, TOP "/model.hlm") == 0 ? 0 : -1;
}

/* A file renamed over model.path while the previous one loads (a fit, an
 * index build of seconds): the model put in service is the one read, and
 * it is the one kept. keep() copied model.path again afterwards, found
 * the newer file, and kept nothing (model_keep_failed), so a restart
 * after the next swap rebuilt the users of the snapshots written under
 * the served model from their rings. */
static void test_served_model_kept_when_path_replaced(void)
{
    char err[512] = "";
    hl_metrics *reg = hl_metrics_create();
    CHECK(system("rm -rf " TOP) == 0 && mkdir(TOP, 0755) == 0);
    CHECK(write_model(TOP "/model.hlm", "A", 1) == 0 && write_model(TOP "/b.hlm", "B", 2) == 0 &&
          write_model(TOP "/c.hlm", "C", 3) == 0);
    hl_model *a = hl_model_open(TOP "/model.hlm", err, sizeof err);
    hl_model *b = hl_model_open(TOP "/b.hlm", err, sizeof err);
    hl_models_opts mo = {.path = TOP "/model.hlm", .check_ms = 1000, .reg = reg,
                         .store_dir = TOP "/kept", .store_retain = 4,
                         .before_live = replace_path, .before_live_arg = TOP "/c.hlm"};
    hl_models *ms = a != NULL && b != NULL ? hl_models_create(&mo, a, err, sizeof err) : NULL;
    CHECKF(ms != NULL, "set: %s", err);
    if (ms != NULL) {
        CHECK(rename(TOP "/b.hlm", TOP "/model.hlm") == 0 && hl_models_check(ms, 2000, 0) == 1);
        hl_mref *r = hl_models_acquire(ms);
        CHECK(strcmp(r->mi->version, "B") == 0);
        hl_mref_release(r);
        CHECKF(kept(b), "B is in service and not in model.dir (C was renamed over "
               "model.path while B loaded)");
    }
    hl_models_destroy(ms);
    hl_model_close(a);
    hl_model_close(b);
    hl_metrics_destroy(reg);
    CHECK(system("rm -rf " TOP) == 0);
}

/* The unreadable-file case as an unprivileged user: 0 when model.path,
 * chmod 000 when renamed in, is refused, and loaded at the first periodic
 * check after chmod 644 (no SIGHUP, no new file). */
static int unreadable_then_readable(void)
{
    char err[512] = "";
    hl_metrics *reg = hl_metrics_create();
    CHECK(write_model(TOP "/model.hlm", "A", 1) == 0 && write_model(TOP "/b.hlm", "B", 2) == 0 &&
          chmod(TOP "/b.hlm", 0) == 0);
    hl_model *a = hl_model_open(TOP "/model.hlm", err, sizeof err);
    hl_models_opts mo = {.path = TOP "/model.hlm", .check_ms = 1000, .reg = reg};
    hl_models *ms = a != NULL ? hl_models_create(&mo, a, err, sizeof err) : NULL;
    CHECKF(ms != NULL, "set: %s", err);
    if (ms != NULL) {
        CHECK(rename(TOP "/b.hlm", TOP "/model.hlm") == 0);
        CHECK(hl_models_check(ms, 2000, 0) < 0 && failures(reg) == 1);
        CHECK(chmod(TOP "/model.hlm", 0644) == 0);
        int rc = hl_models_check(ms, 4000, 0);
        CHECKF(rc == 1, "the check after chmod 644 returned %d (want 1: B loaded); "
               "failures %g", rc, failures(reg));
    }
    hl_models_destroy(ms);
    hl_model_close(a);
    hl_metrics_destroy(reg);
    return t_case_failed;
}

/* A model file the worker may not read (renamed in with mode 000, or
 * another owner's umask) is refused; once the operator fixes its mode,
 * the log's "tried again when it changes" held only for content: chmod
 * leaves size and mtime, so no periodic check opened it again until a
 * SIGHUP. Root reads a 000 file, so the case runs as nobody. */
static void test_unreadable_retried_after_chmod(void)
{
    CHECK(system("rm -rf " TOP) == 0 && mkdir(TOP, 0777) == 0 && chmod(TOP, 0777) == 0);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        if (geteuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0))
            _exit(2);
        int failed = unreadable_then_readable();
        fflush(stdout);
        _exit(failed ? 1 : 0);
    }
    int status = -1;
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
    CHECKF(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the unprivileged case %s",
           WIFEXITED(status) && WEXITSTATUS(status) == 2 ? "could not drop root" : "failed");
    CHECK(system("rm -rf " TOP) == 0);
}

/* Lines of the event in the log of n periodic checks from now_ms. */
static int logged(hl_models *ms, int64_t now_ms, int n, const char *event)
{
    char log[8192] = "";
    FILE *f = tmpfile();
    int saved = dup(STDERR_FILENO), count = 0;
    if (f == NULL || saved < 0 || dup2(fileno(f), STDERR_FILENO) < 0)
        return -1;
    hl_log_set_level(HL_LOG_INFO);
    for (int i = 0; i < n; i++)
        hl_models_check(ms, now_ms + 1000 * i, 0);
    hl_log_set_level(HL_LOG_ERROR);
    dup2(saved, STDERR_FILENO);
    close(saved);
    rewind(f);
    log[fread(log, 1, sizeof log - 1, f)] = '\0';
    fclose(f);
    for (const char *at = log; (at = strstr(at, event)) != NULL; at++)
        count++;
    return count;
}

/* model.path deleted, or made a symlink loop, between checks: the serving
 * model stays, and the worker says so once (with the cause), not never:
 * silent, the first sign was a restart that could not start for want of
 * a model. Once a file is back it is loaded, and a later loss is said
 * again. */
static void test_missing_path_said_once(void)
{
    char err[512] = "";
    hl_metrics *reg = hl_metrics_create();
    CHECK(system("rm -rf " TOP) == 0 && mkdir(TOP, 0755) == 0);
    CHECK(write_model(TOP "/model.hlm", "A", 1) == 0 && write_model(TOP "/b.hlm", "B", 2) == 0);
    hl_model *a = hl_model_open(TOP "/model.hlm", err, sizeof err);
    hl_models_opts mo = {.path = TOP "/model.hlm", .check_ms = 1000, .reg = reg};
    hl_models *ms = a != NULL ? hl_models_create(&mo, a, err, sizeof err) : NULL;
    CHECKF(ms != NULL, "set: %s", err);
    if (ms != NULL) {
        CHECK(unlink(TOP "/model.hlm") == 0);
        int n = logged(ms, 2000, 5, "event=model_check_failed");
        CHECKF(n == 1, "model.path deleted: %d model_check_failed lines in 5 checks (want 1)", n);
        CHECK(rename(TOP "/b.hlm", TOP "/model.hlm") == 0 && hl_models_check(ms, 8000, 0) == 1);
        CHECK(unlink(TOP "/model.hlm") == 0 && symlink("model.hlm", TOP "/model.hlm") == 0);
        n = logged(ms, 10000, 5, "Too many levels of symbolic links");
        CHECKF(n == 1, "model.path a symlink loop: said %d times in 5 checks (want 1)", n);
        CHECK(failures(reg) == 0);
    }
    hl_models_destroy(ms);
    hl_model_close(a);
    hl_metrics_destroy(reg);
    CHECK(system("rm -rf " TOP) == 0);
}

/* An empty file at path. */
static int touch(const char *path)
{
    FILE *f = fopen(path, "w");
    return f != NULL && fclose(f) == 0 ? 0 : -1;
}

/* Two hosts sharing model.dir, as two pods on one volume: tags stand for
 * their boots and pid namespaces (tempname.h). */
#define HOST_A 0xaaaaaaaaaaaaaaaaull
#define HOST_B 0xbbbbbbbbbbbbbbbbull

/* The keep() temporary under TOP/kept of the model of fingerprint fp, by
 * pid on host, into out. */
static void temp_of(char *out, size_t len, uint64_t fp, uint64_t host, long pid)
{
    char dst[256];
    snprintf(dst, sizeof dst, TOP "/kept/%016llx.hlm", (unsigned long long)fp);
    if (hl_tempname_make(out, len, dst, host, pid) != 0)
        out[0] = '\0';
}

/* Pods run the worker as pid 1: a worker on host B, with this process's
 * pid, is copying the same model into model.dir when this one (host A)
 * keeps it. Named by pid alone, both wrote one temporary: A's unlink
 * before its copy removed B's copy in flight (B's rename then failed, a
 * keep failure counted and said), or A's rename published B's
 * half-written bytes. B's temporary must be left as it is. */
static void test_keep_leaves_other_hosts_temporary(void)
{
    char err[512] = "", theirs[512];
    struct stat st;
    hl_metrics *reg = hl_metrics_create();
    CHECK(system("rm -rf " TOP) == 0 && mkdir(TOP, 0755) == 0 && mkdir(TOP "/kept", 0755) == 0);
    CHECK(write_model(TOP "/model.hlm", "A", 1) == 0);
    hl_model *a = hl_model_open(TOP "/model.hlm", err, sizeof err);
    CHECKF(a != NULL, "%s", err);
    if (a != NULL) {
        temp_of(theirs, sizeof theirs, hl_model_info_get(a)->fingerprint, HOST_B, getpid());
        FILE *f = fopen(theirs, "w");      /* B's first bytes, its copy unfinished */
        CHECK(f != NULL && fputs("half of host B's copy", f) >= 0 && fclose(f) == 0);
        hl_models_opts mo = {.path = TOP "/model.hlm", .check_ms = 1000, .reg = reg,
                             .store_dir = TOP "/kept", .store_retain = 4, .host_tag = HOST_A};
        hl_models *ms = hl_models_create(&mo, a, err, sizeof err);
        CHECKF(ms != NULL, "set: %s", err);
        CHECKF(stat(theirs, &st) == 0 && st.st_size == 21, "host B's temporary %s, in "
               "flight, was %s by host A's keep", theirs, access(theirs, F_OK) == 0
               ? "rewritten" : "removed");
        CHECK(kept(a));
        hl_model *k = hl_models_open_kept(ms, hl_model_info_get(a)->fingerprint, err,
                                          sizeof err);
        CHECKF(k != NULL, "the kept copy: %s", err);
        hl_model_close(k);
        hl_models_destroy(ms);
    }
    hl_model_close(a);
    hl_metrics_destroy(reg);
    CHECK(system("rm -rf " TOP) == 0);
}

/* The temporaries of a sweep's two passes: temp_stale_s 0 (the hour) and
 * < 0 (at once); bit p of stays: the file is there after pass p. */
typedef struct temp_case {
    char        path[256];
    const char *what;
    int         stays;          /* bit 0: after pass 0, bit 1: after pass 1 */
} temp_case;

/* keep()'s temporaries in model.dir: one left by a worker killed while
 * keeping a model stayed for good before, a whole model's size each.
 * Removed at create: one this host's pid namespace proves dead (its own
 * pid, a gone pid) at once; anyone's (another host's, an old-format
 * <fingerprint>.hlm.<pid>.tmp) once unchanged for the bound. Kept while
 * younger: a live process's on this host (mid-keep), another host's even
 * with this process's pid (which says nothing about it), other names. */
static void test_crashed_temporary_removed(void)
{
    char err[512] = "";
    const uint64_t fp = 0x0123456789abcdefull;
    CHECK(system("rm -rf " TOP) == 0 && mkdir(TOP, 0755) == 0 && mkdir(TOP "/kept", 0755) == 0);
    CHECK(write_model(TOP "/model.hlm", "A", 1) == 0);
    pid_t dead = fork();
    if (dead == 0)
        _exit(0);
    CHECK(dead > 0 && waitpid(dead, NULL, 0) == dead);
    temp_case c[] = {{"", "this host's, its pid gone", 0}, {"", "this host's, our pid", 0},
                     {"", "this host's, a live pid", 1}, {"", "host B's, a gone pid", 1},
                     {"", "host B's, our pid", 1}, {"", "old-format, a gone pid", 1},
                     {TOP "/kept/notes.tmp", "not a temporary of keep()", 3}};
    temp_of(c[0].path, sizeof c[0].path, fp, HOST_A, dead);
    temp_of(c[1].path, sizeof c[1].path, fp, HOST_A, getpid());
    temp_of(c[2].path, sizeof c[2].path, fp, HOST_A, getppid());
    temp_of(c[3].path, sizeof c[3].path, fp, HOST_B, dead);
    temp_of(c[4].path, sizeof c[4].path, fp, HOST_B, getpid());
    snprintf(c[5].path, sizeof c[5].path, TOP "/kept/%016llx.hlm.%ld.tmp",
             (unsigned long long)fp, (long)dead);
    hl_model *a = hl_model_open(TOP "/model.hlm", err, sizeof err);
    CHECKF(a != NULL, "%s", err);
    for (int pass = 0; pass < 2 && a != NULL; pass++) {
        for (size_t i = 0; i < sizeof c / sizeof c[0]; i++)
            CHECK(access(c[i].path, F_OK) == 0 || touch(c[i].path) == 0);
        hl_metrics *reg = hl_metrics_create();
        hl_models_opts mo = {.path = TOP "/model.hlm", .check_ms = 1000, .reg = reg,
                             .store_dir = TOP "/kept", .store_retain = 4, .host_tag = HOST_A,
                             .temp_stale_s = pass == 0 ? 0 : -1};
        hl_models *ms = hl_models_create(&mo, a, err, sizeof err);
        CHECKF(ms != NULL, "set: %s", err);
        for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
            int stays = (c[i].stays >> pass) & 1;
            CHECKF((access(c[i].path, F_OK) == 0) == stays, "pass %d (%s): %s (%s) %s", pass,
                   pass == 0 ? "the hour" : "at once", c[i].path, c[i].what,
                   stays ? "removed" : "left behind");
        }
        hl_models_destroy(ms);
        hl_metrics_destroy(reg);
    }
    hl_model_close(a);
    CHECK(system("rm -rf " TOP) == 0);
}

/* TOP/kept's copy of m's model into path. */
static void kept_at(char *path, size_t len, const hl_model *m)
{
    snprintf(path, len, TOP "/kept/%016llx.hlm",
             (unsigned long long)hl_model_info_get(m)->fingerprint);
}

/* TOP/kept's copy of m's model dated a day back: as kept long ago (a
 * lease nobody refreshed since), or as a pod that stopped serving it. */
static int age_kept(const hl_model *m)
{
    char path[256];
    struct timespec day_ago[2] = {{.tv_sec = time(NULL) - 86400}, {.tv_sec = time(NULL) - 86400}};
    kept_at(path, sizeof path, m);
    return utimensat(AT_FDCWD, path, day_ago, 0);
}

/* 1 when TOP/kept's copy of m's model has a fresh lease (its time now). */
static int lease_fresh(const hl_model *m)
{
    char path[256];
    struct stat st;
    kept_at(path, sizeof path, m);
    return stat(path, &st) == 0 && labs((long)(time(NULL) - st.st_mtime)) < 60;
}

/* Two pods on one model.dir, model.retain 1: pod X lags on A (kept long
 * ago) while pod Y swaps ahead from B to C. Y pruned A, which X still
 * served: prune() knew only Y's own models, so X restarted with a newer
 * model rebuilt the users of its snapshots (written under A) from their
 * rings instead of migrating them. X's checks refresh its lease on A (the
 * kept file's time), and a model with a fresh lease is not pruned. Once X
 * is gone and its lease went stale, A goes at Y's next swap; B and C,
 * which Y served until then, stay (recently served). A rollback to B,
 * whose kept file is stale, renews it at once; and Y's served model,
 * once gone from model.dir (an older worker pruned it), is kept again at
 * the next renewal. */
static void test_shared_dir_keeps_other_pods_model(void)
{
    char err[512] = "";
    hl_metrics *rx = hl_metrics_create(), *ry = hl_metrics_create();
    CHECK(system("rm -rf " TOP) == 0 && mkdir(TOP, 0755) == 0);
    CHECK(write_model(TOP "/x.hlm", "A", 1) == 0 && write_model(TOP "/y.hlm", "B", 2) == 0 &&
          write_model(TOP "/c.hlm", "C", 3) == 0 && write_model(TOP "/d.hlm", "D", 4) == 0);
    hl_model *a = hl_model_open(TOP "/x.hlm", err, sizeof err);
    hl_model *b = hl_model_open(TOP "/y.hlm", err, sizeof err);
    hl_model *c = hl_model_open(TOP "/c.hlm", err, sizeof err);
    hl_model *d = hl_model_open(TOP "/d.hlm", err, sizeof err);
    hl_models_opts mx = {.path = TOP "/x.hlm", .check_ms = 1000, .reg = rx,
                         .store_dir = TOP "/kept", .store_retain = 1, .host_tag = HOST_A};
    hl_models_opts my = mx;
    my.path = TOP "/y.hlm";
    my.reg = ry;
    my.host_tag = HOST_B;
    hl_models *x = a && b && c && d ? hl_models_create(&mx, a, err, sizeof err) : NULL;
    hl_models *y = x != NULL ? hl_models_create(&my, b, err, sizeof err) : NULL;
    CHECKF(x != NULL && y != NULL, "sets: %s", err);
    if (y != NULL) {
        CHECKF(kept(a), "pod Y's start pruned A, which pod X serves");
        CHECK(age_kept(a) == 0 || !kept(a));
        hl_models_check(x, 60000, 0);                   /* X serves A: its lease */
        CHECK(rename(TOP "/c.hlm", TOP "/y.hlm") == 0 && hl_models_check(y, 60000, 0) == 1);
        CHECKF(kept(a), "pod Y's swap pruned A, which pod X still serves");
        CHECK(kept(c));
        hl_models_destroy(x);                           /* X crashed: no refresh */
        x = NULL;
        CHECK(age_kept(a) == 0 || !kept(a));
        CHECK(rename(TOP "/d.hlm", TOP "/y.hlm") == 0 && hl_models_check(y, 120000, 0) == 1);
        CHECKF(!kept(a), "A kept with a stale lease (nobody served it for a day)");
        CHECKF(kept(b) && kept(c), "pruned a model Y served minutes ago: B %d, C %d",
               kept(b), kept(c));
        char path[256];
        kept_at(path, sizeof path, d);
        CHECK(age_kept(b) == 0 && unlink(path) == 0);
        CHECK(write_model(TOP "/b2.hlm", "B", 2) == 0 && rename(TOP "/b2.hlm", TOP "/y.hlm") == 0);
        CHECK(hl_models_check(y, 180000, 0) == 1);
        CHECKF(lease_fresh(b), "the lease on B, served again, left stale");
        CHECKF(kept(d), "D, gone from model.dir while served, not kept again");
    }
    hl_models_destroy(x);
    hl_models_destroy(y);
    hl_model_close(a);
    hl_model_close(b);
    hl_model_close(c);
    hl_model_close(d);
    hl_metrics_destroy(rx);
    hl_metrics_destroy(ry);
    CHECK(system("rm -rf " TOP) == 0);
}

/* Into a new directory of this run's own, under $TMPDIR or /tmp; its path
 * into dir. A fixed /tmp/test_models_dir was shared by every clone
 * running the test at once: one's rm -rf emptied another's. */
static int private_cwd(char *dir, size_t len)
{
    const char *base = getenv("TMPDIR");
    snprintf(dir, len, "%s/test_models.XXXXXX", base != NULL && *base ? base : "/tmp");
    /* 0711: test_unreadable_retried_after_chmod's child, as nobody, must
     * reach TOP inside it */
    if (mkdtemp(dir) == NULL || chmod(dir, 0711) != 0 || chdir(dir) != 0) {
        printf("FAIL models: no directory of its own under %s: %s\n", dir, strerror(errno));
        return -1;
    }
    return 0;
}

int main(void)
{
    char dir[4096];
    if (private_cwd(dir, sizeof dir) != 0)
        return 1;
    hl_log_set_level(HL_LOG_ERROR);
    RUN(test_projected_path_loaded_once_per_projection);
    RUN(test_half_written_counted_once_then_loaded);
    RUN(test_first_index_freed_after_swap);
    RUN(test_first_table_freed_after_swap);
    RUN(test_retain_keeps_served_model);
    RUN(test_model_info_series_do_not_pile_up);
    RUN(test_keep_race_leaves_no_temporary);
    RUN(test_served_model_kept_when_path_replaced);
    RUN(test_kept_model_survives_rewrite_in_place);
    RUN(test_kept_hard_link_replaced_by_copy);
    RUN(test_keep_failure_counted_and_retried);
    RUN(test_unreadable_retried_after_chmod);
    RUN(test_missing_path_said_once);
    RUN(test_crashed_temporary_removed);
    RUN(test_keep_leaves_other_hosts_temporary);
    RUN(test_shared_dir_keeps_other_pods_model);
    RUN(test_lease_leaves_other_pods_model_file);
    if (chdir("/") != 0 || rmdir(dir) != 0)
        printf("    %s left behind: %s\n", dir, strerror(errno));
    TEST_EXIT();
}
