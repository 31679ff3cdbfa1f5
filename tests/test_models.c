/* test_models.c - which files a model set's periodic check opens
 * (worker/models.c): a model.path that is a symlink into a projected
 * directory (a Kubernetes ConfigMap or volume: model.hlm -> ..data/model.hlm,
 * ..data -> a timestamped directory, swapped by rename) is opened once per
 * projection, never again while it stands; a file caught half-written in
 * place is refused and counted once, and loaded once complete. Swaps
 * themselves are test_swap.c's; model.dir (the kept copies) is
 * test_models_keep.c's. */
#define T_SUITE "models"
#include "models_test_util.h"

#include "log.h"
#include "qscore.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

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

/* The log of n periodic checks at now_ms, now_ms + 1000, ... into
 * log[0..cap), NUL-ended; -1 if stderr could not be redirected. */
static int check_log(hl_models *ms, int64_t now_ms, int n, char *log, size_t cap)
{
    FILE *f = tmpfile();
    int saved = dup(STDERR_FILENO);
    if (f == NULL || saved < 0 || dup2(fileno(f), STDERR_FILENO) < 0)
        return -1;
    hl_log_set_level(HL_LOG_INFO);
    for (int i = 0; i < n; i++)
        hl_models_check(ms, now_ms + 1000 * i, 0);
    hl_log_set_level(HL_LOG_ERROR);
    dup2(saved, STDERR_FILENO);
    close(saved);
    rewind(f);
    log[fread(log, 1, cap - 1, f)] = '\0';
    fclose(f);
    return 0;
}

static int count_of(const char *log, const char *event)
{
    int count = 0;
    for (const char *at = log; (at = strstr(at, event)) != NULL; at++)
        count++;
    return count;
}

/* Periodic checks at now_ms, now_ms + 1000, ... (n of them): how many
 * opened model.path, read from the lines they log (a file reopened with
 * the model already served says model_unchanged, which is no load). */
static int opens(hl_models *ms, int64_t now_ms, int n)
{
    char log[4096];
    if (check_log(ms, now_ms, n, log, sizeof log) != 0)
        return -1;
    return count_of(log, "event=model_unchanged") + count_of(log, "event=model_swapped") +
           count_of(log, "event=model_swap_failed");
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
    CHECK(top_with_a_and_b());
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
    CHECK(top_with_a_and_b());
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

/* A worker swaps in each retrain for months: the registry must hold one
 * halflife_model_info series, not one per model ever served. Replaced
 * ones were hidden, kept in memory and walked at each scrape for the
 * process's life (41 series after 40 swaps). */
static void test_model_info_series_do_not_pile_up(void)
{
    enum { SWAPS = 40 };
    char err[512] = "", version[16];
    hl_metrics *reg = hl_metrics_create();
    CHECK(fresh_top());
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
    char log[8192];
    return check_log(ms, now_ms, n, log, sizeof log) != 0 ? -1 : count_of(log, event);
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
    CHECK(top_with_a_and_b());
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
    RUN(test_model_info_series_do_not_pile_up);
    RUN(test_unreadable_retried_after_chmod);
    RUN(test_missing_path_said_once);
    if (chdir("/") != 0 || rmdir(dir) != 0)
        printf("    %s left behind: %s\n", dir, strerror(errno));
    TEST_EXIT();
}
