/* test_models_keep.c - model.dir (worker/models.c): each served model is
 * kept there under its fingerprint, as a file of its own that a rewrite
 * of model.path in place leaves alone, so a restart with another model
 * can migrate the users of snapshots written under it. Kept models are
 * pruned to model.retain, never the one in service nor one another pod on
 * the same volume holds a fresh lease on; a failed keep is counted and
 * tried again; keep()'s temporaries are named per host and process, and
 * a crashed worker's are swept. The set's checks of model.path are
 * test_models.c's. */
#define T_SUITE "models_keep"
#include "models_test_util.h"

#include "log.h"
#include "tempname.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

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
    CHECK(top_with_a_and_b());
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
    CHECK(top_with_a_and_b());
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
    CHECK(fresh_top() && mkdir(TOP "/kept", 0755) == 0);
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
    CHECK(fresh_top() && mkdir(TOP "/kept", 0755) == 0);
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
    CHECK(fresh_top());
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
    CHECK(top_with_a_and_b());
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
    CHECK(fresh_top());
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
    CHECK(fresh_top() && mkdir(TOP "/kept", 0755) == 0);
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
    CHECK(fresh_top() && mkdir(TOP "/kept", 0755) == 0);
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
    CHECK(fresh_top());
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

int main(void)
{
    char dir[4096];
    if (private_cwd(dir, sizeof dir) != 0)
        return 1;
    hl_log_set_level(HL_LOG_ERROR);
    RUN(test_retain_keeps_served_model);
    RUN(test_keep_race_leaves_no_temporary);
    RUN(test_served_model_kept_when_path_replaced);
    RUN(test_kept_model_survives_rewrite_in_place);
    RUN(test_kept_hard_link_replaced_by_copy);
    RUN(test_keep_failure_counted_and_retried);
    RUN(test_crashed_temporary_removed);
    RUN(test_keep_leaves_other_hosts_temporary);
    RUN(test_shared_dir_keeps_other_pods_model);
    RUN(test_lease_leaves_other_pods_model_file);
    if (chdir("/") != 0 || rmdir(dir) != 0)
        printf("    %s left behind: %s\n", dir, strerror(errno));
    TEST_EXIT();
}
