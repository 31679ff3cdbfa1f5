/* test_snapshot.c - the snapshot file itself: CRC32C, file names, the bit-exact
 * round trip, retention, and every way a file can be refused (truncated,
 * bit-flipped, old or wrong version, another model, shard or history)
 * (core/crc32c.c, core/snapshot.c, core/snapshot_load.c).
 * Writing under failures and while the table changes is in
 * test_snapshot_write.c; the `snapshot` command in test_snapshot_cmd.c. */
#define T_SUITE "snapshot"
#include "test.h"

#include "crc32c.h"
#include "snapshot_util.h"

#include <signal.h>
#include <sys/stat.h>

/* ---- CRC32C ------------------------------------------------------------- */

static void test_crc32c_vectors(void)
{
    unsigned char zeros[32] = {0}, ones[32], inc[32];
    memset(ones, 0xff, sizeof ones);
    for (int i = 0; i < 32; i++) inc[i] = (unsigned char)i;
    /* RFC 3720 (iSCSI) appendix B.4 and the check value of the catalogue. */
    CHECK(hl_crc32c(0, "123456789", 9) == 0xE3069283u);
    CHECK(hl_crc32c_sw(0, "123456789", 9) == 0xE3069283u);
    CHECK(hl_crc32c(0, zeros, 32) == 0x8A9136AAu);
    CHECK(hl_crc32c(0, ones, 32) == 0x62A8AB43u);
    CHECK(hl_crc32c(0, inc, 32) == 0x46DD794Eu);
    CHECK(hl_crc32c(0, "", 0) == 0);
    CHECK(hl_crc32c(hl_crc32c(0, "1234", 4), "56789", 5) == 0xE3069283u);
}

static void test_crc32c_hw_matches_table(void)
{
    enum { N = 100000 };   /* past 3 x 8 KiB: the interleaved strips */
    unsigned char *buf = malloc(N + 8);
    for (int i = 0; i < N + 8; i++) buf[i] = (unsigned char)rnd();
    if (!hl_crc32c_hw()) printf("    note: no SSE4.2 here, both paths are the table\n");
    for (int trial = 0; trial < 300; trial++) {
        size_t off = rnd() % 8, len = rnd() % (trial % 2 ? N : 100), cut = len ? rnd() % len : 0;
        uint32_t seed = (uint32_t)rnd();
        uint32_t hw = hl_crc32c(seed, buf + off, len), sw = hl_crc32c_sw(seed, buf + off, len);
        CHECKF(hw == sw, "off %zu len %zu: %08x vs %08x", off, len, hw, sw);
        uint32_t split = hl_crc32c(hl_crc32c(seed, buf + off, cut), buf + off + cut, len - cut);
        CHECK(split == hw);
        if (t_case_failed) break;
    }
    free(buf);
}

/* ---- names and round trip --------------------------------------------- */

static void test_names(void)
{
    char name[300], err[256];
    hl_snapshot_meta m = meta_at("behaviour-events", 3, 42);
    CHECK(hl_snapshot_name(&m, name, sizeof name, err, sizeof err) == 0);
    CHECK(strcmp(name, "behaviour-events.3.00000000000000000042.hls") == 0);
    m = meta_at("../etc", 0, 1);
    CHECK(hl_snapshot_name(&m, name, sizeof name, err, sizeof err) == HL_EINVAL);
    m = meta_at("a/b", 0, 1);
    CHECK(hl_snapshot_name(&m, name, sizeof name, err, sizeof err) == HL_EINVAL);
    m = meta_at("t", -1, 1);
    CHECK(hl_snapshot_name(&m, name, sizeof name, err, sizeof err) == HL_EINVAL);
}

static void test_round_trip_bit_exact(void)
{
    hl_table_opts o = opts_with(DIM, HISTORY, 200);  /* capacity evictions: holes */
    hl_table *a = table_upto(&o, N_EVENTS), *b = NULL;
    hl_snapshot_meta m = meta_at("ev", 0, N_EVENTS);
    hl_snapshot_result r1, r2;
    hl_snapshot_info info;
    char err[512], dir2[600], path[4200];
    size_t n1 = 0, n2 = 0;

    fresh_dir();
    CHECK(a != NULL);
    hl_table_sweep(a, 37);   /* a sweep cursor that is not 0 */
    CHECKF(hl_snapshot_write(NULL, dir, &m, a, 2, &r1, err, sizeof err) == 0, "%s", err);
    CHECKF(hl_snapshot_load(NULL, r1.path, &o, FP, &b, &info, err, sizeof err) == 0, "%s", err);
    if (b == NULL) { hl_table_destroy(a); return; }
    CHECK(tables_equal(a, b, 1));
    CHECK(info.n_rows == r1.n_rows && info.bytes == r1.bytes && info.crc_ok);
    CHECK(info.meta.next_offset == N_EVENTS && info.meta.model_fingerprint == FP);
    hl_table_meta ma, mb;
    hl_table_meta_get(a, &ma);
    hl_table_meta_get(b, &mb);
    CHECK(ma.newest_ts_ms == mb.newest_ts_ms && ma.active_seq == mb.active_seq &&
          ma.sweep_cursor == mb.sweep_cursor);
    snprintf(dir2, sizeof dir2, "%s/again", dir);
    mkdir(dir2, 0755);
    CHECKF(hl_snapshot_write(NULL, dir2, &m, b, 2, &r2, err, sizeof err) == 0, "%s", err);
    unsigned char *x = slurp(r1.path, &n1), *y = slurp(r2.path, &n2);
    CHECK(x && y && n1 == n2 && memcmp(x, y, n1) == 0);
    /* And the restored table keeps behaving like the original. */
    apply_range(a, 0, 50);
    snprintf(path, sizeof path, "%s", r1.path);
    free(x);
    free(y);
    hl_table_destroy(a);
    hl_table_destroy(b);
}

/* The optional hl_io hooks (size, write_behind) are hints only: a table
 * without them writes the same bytes and loads the same table, and a load
 * whose size hint is far too small (an index sized for a few rows) grows
 * the index as it goes. */
static void test_io_hints_optional(void)
{
    hl_table_opts o = opts_with(DIM, HISTORY, 0);
    hl_table *a = table_upto(&o, N_EVENTS), *b = NULL, *c = NULL;
    hl_snapshot_meta m = meta_at("hint", 0, N_EVENTS);
    hl_snapshot_result r1, r2;
    hl_io bare = *hl_io_posix();
    char err[512];
    size_t n1 = 0, n2 = 0;

    bare.write_behind = NULL;
    bare.size = NULL;
    fresh_dir();
    CHECK(a != NULL);
    CHECKF(hl_snapshot_write(&bare, dir, &m, a, 2, &r1, err, sizeof err) == 0, "%s", err);
    CHECKF(hl_snapshot_load(&bare, r1.path, &o, FP, &b, NULL, err, sizeof err) == 0, "%s", err);
    CHECK(b != NULL && tables_equal(a, b, 1));
    unsigned char *x = slurp(r1.path, &n1);
    m.next_offset++;
    CHECKF(hl_snapshot_write(NULL, dir, &m, a, 2, &r2, err, sizeof err) == 0, "%s", err);
    unsigned char *y = slurp(r2.path, &n2);
    /* Same rows and trailer; only the header's offset (and the CRC) differ. */
    CHECK(x && y && n1 == n2 && n1 > 100 && memcmp(x + 100, y + 100, n1 - 104) == 0);
    CHECKF(hl_snapshot_load(NULL, r2.path, &o, FP, &c, NULL, err, sizeof err) == 0, "%s", err);
    CHECK(c != NULL && tables_equal(a, c, 1));
    free(x);
    free(y);
    hl_table_destroy(a);
    hl_table_destroy(b);
    hl_table_destroy(c);
}

static void test_empty_table(void)
{
    hl_table_opts o = opts();
    hl_table *a = table_upto(&o, 0), *b = NULL;
    hl_snapshot_meta m = meta_at("ev", 1, 0);
    hl_snapshot_result r;
    char err[512];
    fresh_dir();
    CHECKF(hl_snapshot_write(NULL, dir, &m, a, 2, &r, err, sizeof err) == 0, "%s", err);
    CHECK(r.n_rows == 0);
    CHECKF(hl_snapshot_load(NULL, r.path, &o, FP, &b, NULL, err, sizeof err) == 0, "%s", err);
    CHECK(b != NULL && tables_equal(a, b, 1));
    hl_table_destroy(a);
    hl_table_destroy(b);
}

static void test_retention(void)
{
    hl_table_opts o = opts();
    hl_table *a = table_upto(&o, 500);
    hl_snapshot_result r;
    char err[512], stale[700];
    fresh_dir();
    hl_snapshot_meta other = meta_at("ev", 10, 5);   /* another shard, same dir */
    CHECK(hl_snapshot_write(NULL, dir, &other, a, 1, NULL, err, sizeof err) == 0);
    other = meta_at("ev.1", 0, 5);                    /* a topic with a dot */
    CHECK(hl_snapshot_write(NULL, dir, &other, a, 1, NULL, err, sizeof err) == 0);
    snprintf(stale, sizeof stale, "%s/ev.1.00000000000000000001.hls.tmp", dir);
    spit(stale, (const unsigned char *)"x", 1);
    for (int k = 1; k <= 5; k++) {
        hl_snapshot_meta m = meta_at("ev", 1, 100 * k);
        CHECKF(hl_snapshot_write(NULL, dir, &m, a, 2, &r, err, sizeof err) == 0, "%s", err);
    }
    CHECK(r.n_deleted == 1 && r.n_delete_failed == 0);   /* one per write from the 3rd */
    CHECK(count_files(".hls") == 4);
    CHECK(count_files(".tmp") == 0);
    CHECK(access(stale, F_OK) != 0);
    char p[700];
    snprintf(p, sizeof p, "%s/ev.1.00000000000000000400.hls", dir);
    CHECK(access(p, F_OK) == 0);
    snprintf(p, sizeof p, "%s/ev.1.00000000000000000300.hls", dir);
    CHECK(access(p, F_OK) != 0);
    snprintf(p, sizeof p, "%s/ev.10.00000000000000000005.hls", dir);
    CHECK(access(p, F_OK) == 0);
    hl_table_destroy(a);
}

/* Files named newer than the one just written (a damaged or planted file,
 * a copy renamed to a higher offset, the directory of test_special_files
 * _refused, another owner's newer snapshot) must not fill the `retain`
 * slots: that deleted the file just published, every time, while the
 * write reported success and its path, and the restart had nothing of
 * this shard to load. */
static void test_retention_keeps_published(void)
{
    hl_table_opts o = opts();
    hl_table *a = table_upto(&o, 500), *t = NULL;
    hl_snapshot_result r;
    char err[1024], junk[700], report[4096], loaded[4200];
    fresh_dir();
    snprintf(junk, sizeof junk, "%s/ev.0.%020d.hls", dir, 900);
    spit(junk, (const unsigned char *)"not a snapshot", 14);
    snprintf(junk, sizeof junk, "%s/ev.0.%020d.hls", dir, 800);
    CHECK(mkdir(junk, 0755) == 0);
    for (int k = 1; k <= 3; k++) {
        hl_snapshot_meta m = meta_at("ev", 0, 100 * k);
        CHECKF(hl_snapshot_write(NULL, dir, &m, a, 2, &r, err, sizeof err) == 0, "%s", err);
        CHECKF(access(r.path, F_OK) == 0, "write %d: %s reported written, then deleted by "
               "retention", k, r.path);
    }
    snprintf(junk, sizeof junk, "%s/ev.0.%020d.hls", dir, 100);
    CHECK(access(junk, F_OK) != 0);     /* its own older ones still go */
    int rc = hl_snapshot_load_newest(NULL, dir, "ev", 0, &o, FP, &t, NULL, loaded,
                                     sizeof loaded, report, sizeof report, err, sizeof err);
    CHECKF(rc == 0 && strcmp(loaded, r.path) == 0, "loaded '%s': %s", loaded, err);
    hl_table_destroy(t);
    hl_table_destroy(a);
}

/* A recreated input topic (worker_rebalance.c): the old topic's files are
 * renamed aside so the newest load finds the new one, the file kept;
 * another shard's stay. The rows written after hl_table_forget_offsets
 * apply any offset again. */
static void test_set_aside(void)
{
    hl_table_opts o = opts();
    hl_table *a = table_upto(&o, 500), *t = NULL;
    char err[1024], path[700], report[4096], loaded[4200];
    int n = -1;
    fresh_dir();
    hl_snapshot_meta m = meta_at("ev", 0, 300), other = meta_at("ev", 1, 300);
    CHECK(hl_snapshot_write(NULL, dir, &m, a, 2, NULL, err, sizeof err) == 0);
    CHECK(hl_snapshot_write(NULL, dir, &other, a, 2, NULL, err, sizeof err) == 0);
    hl_table_forget_offsets(a);
    m = meta_at("ev", 0, 0);
    CHECK(hl_snapshot_write(NULL, dir, &m, a, 2, NULL, err, sizeof err) == 0);
    CHECKF(hl_snapshot_set_aside(NULL, dir, "ev", 0, 0, ".old", &n, err, sizeof err) == 0,
           "%s", err);
    CHECK(n == 1);
    snprintf(path, sizeof path, "%s/ev.0.%020d.hls.old", dir, 300);
    CHECK(access(path, F_OK) == 0);
    snprintf(path, sizeof path, "%s/ev.1.%020d.hls", dir, 300);
    CHECK(access(path, F_OK) == 0);
    CHECK(hl_snapshot_load_newest(NULL, dir, "ev", 0, &o, FP, &t, NULL, loaded,
                                  sizeof loaded, report, sizeof report, err, sizeof err) == 0);
    CHECKF(strstr(loaded, ".00000000000000000000.hls") != NULL, "loaded %s", loaded);
    /* user-0 is held with events up to far above offset 0: one at 0 applies */
    hl_event ev = {.user = "user-0", .user_len = 6, .item = 0, .type = 0, .w = 1,
                   .ts_ms = 1, .offset = 0};
    CHECK(hl_table_find(t, "user-0", 6) >= 0);
    CHECK(hl_table_apply(t, &ev, 1, e_in, N_ITEMS, NULL) == 1);
    hl_table_destroy(t);
    hl_table_destroy(a);
}

/* A topic recreated twice: the new topic's file at the same offset as
 * the first recreation's copy went aside over that copy (rename replaces
 * it), so the operator lost the first topic's state for good. Each copy
 * now gets a name of its own. */
static void test_set_aside_twice(void)
{
    hl_table_opts o = opts();
    hl_table *a = table_upto(&o, 500), *b = table_upto(&o, 20);
    char err[1024], path[700];
    int n = -1;
    fresh_dir();
    hl_snapshot_meta m = meta_at("ev", 0, 300);
    CHECK(hl_snapshot_write(NULL, dir, &m, a, 2, NULL, err, sizeof err) == 0);
    CHECK(hl_snapshot_set_aside(NULL, dir, "ev", 0, -1, ".old", &n, err, sizeof err) == 0);
    CHECK(hl_snapshot_write(NULL, dir, &m, b, 2, NULL, err, sizeof err) == 0);
    CHECKF(hl_snapshot_set_aside(NULL, dir, "ev", 0, -1, ".old", &n, err, sizeof err) == 0 &&
           n == 1, "second set-aside: n %d, %s", n, err);
    struct stat first, second;
    snprintf(path, sizeof path, "%s/ev.0.%020d.hls.old", dir, 300);
    int had_first = stat(path, &first) == 0;
    snprintf(path, sizeof path, "%s/ev.0.%020d.hls.old.2", dir, 300);
    int had_second = stat(path, &second) == 0;
    CHECKF(had_first && had_second && first.st_size > second.st_size,
           "the first copy (500 users) is .old, the second (20) .old.2: %d %d, sizes %lld %lld",
           had_first, had_second, had_first ? (long long)first.st_size : -1LL,
           had_second ? (long long)second.st_size : -1LL);
    hl_table_destroy(a);
    hl_table_destroy(b);
}

/* ---- damaged files ----------------------------------------------------- */

/* Writes A at offset 100 and B at 200 and returns B's bytes. */
static unsigned char *two_snapshots(hl_table **ta, char *path_b, size_t *len_b)
{
    hl_table_opts o = opts();
    hl_table *b = table_upto(&o, 3000);
    hl_snapshot_meta m = meta_at("ev", 0, 100);
    hl_snapshot_result r;
    char err[512];
    fresh_dir();
    *ta = table_upto(&o, 1500);
    hl_snapshot_write(NULL, dir, &m, *ta, 5, NULL, err, sizeof err);
    m.next_offset = 200;
    hl_snapshot_write(NULL, dir, &m, b, 5, &r, err, sizeof err);
    hl_table_destroy(b);
    strcpy(path_b, r.path);
    return slurp(r.path, len_b);
}

/* B, damaged, is refused with want (and words) and A still loads. */
static void check_refused(const hl_table *ta, const char *path_b, int want,
                          const char *words, const char *what)
{
    hl_table_opts o = opts();
    hl_table *t = NULL;
    char err[1024], report[2048], loaded[4200];
    int rc = hl_snapshot_load(NULL, path_b, &o, FP, &t, NULL, err, sizeof err);
    CHECKF(rc == want && t == NULL, "%s: got %s, want %s: %s", what, hl_strerror(rc),
           hl_strerror(want), err);
    CHECKF(strstr(err, path_b) && strstr(err, words), "%s: message '%s'", what, err);
    rc = hl_snapshot_load_newest(NULL, dir, "ev", 0, &o, FP, &t, NULL, loaded, sizeof loaded,
                                 report, sizeof report, err, sizeof err);
    CHECKF(rc == 0 && t != NULL && strstr(loaded, "00100.hls"), "%s: newest: %s", what, err);
    CHECKF(strstr(report, path_b) && strstr(report, words), "%s: report '%s'", what, report);
    if (t) CHECK(tables_equal(ta, t, 1));
    hl_table_destroy(t);
}

static void test_truncated_refused(void)
{
    hl_table *ta;
    char pb[4200];
    size_t n;
    unsigned char *b = two_snapshots(&ta, pb, &n);
    size_t cuts[] = {1, 7, 13, 40, n / 3, n / 2, n - 31, n - 5, n - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0] && !t_case_failed; i++) {
        char what[64];
        spit(pb, b, cuts[i]);
        snprintf(what, sizeof what, "cut at %zu of %zu", cuts[i], n);
        check_refused(ta, pb, HL_EFORMAT, "truncated", what);
    }
    spit(pb, b, n - 20);
    hl_table_opts o = opts();
    hl_table *t;
    char err[1024];
    hl_snapshot_load(NULL, pb, &o, FP, &t, NULL, err, sizeof err);
    CHECKF(strstr(err, "damaged or torn") != NULL, "%s", err);
    free(b);
    hl_table_destroy(ta);
}

static void test_empty_file_refused(void)
{
    hl_table *ta;
    char pb[4200];
    size_t n;
    unsigned char *b = two_snapshots(&ta, pb, &n);
    spit(pb, b, 0);
    check_refused(ta, pb, HL_EFORMAT, "empty file", "empty");
    free(b);
    hl_table_destroy(ta);
}

static void test_bit_flips_refused(void)
{
    hl_table *ta;
    char pb[4200];
    size_t n;
    unsigned char *b = two_snapshots(&ta, pb, &n);
    hl_table_opts o = opts();
    /* Every byte of the header and trailer, and a spread of row bytes. */
    for (size_t pos = 0; pos < n && !t_case_failed; pos += (pos < 120 || pos > n - 40) ? 1 : 53) {
        poke(pb, pos, b[pos] ^ (unsigned char)(1u << (pos % 8)));
        hl_table *t = NULL;
        hl_snapshot_info in;
        char err[1024];
        /* The reader is the loader's parser; building tables is what costs. */
        int rc = pos % 7 == 0 ? hl_snapshot_load(NULL, pb, &o, FP, &t, NULL, err, sizeof err)
                              : hl_snapshot_read(NULL, pb, &in, NULL, NULL, err, sizeof err);
        poke(pb, pos, b[pos]);
        CHECKF(rc < 0 && t == NULL && strstr(err, pb), "flip at %zu: rc %d: %s", pos, rc, err);
        if (rc == HL_EFORMAT)   /* a structural error still says the file is damaged */
            CHECKF(strstr(err, "damaged"), "flip at %zu: %s", pos, err);
        hl_table_destroy(t);
    }
    b[n / 2] ^= 4;
    spit(pb, b, n);
    check_refused(ta, pb, HL_ECRC, "CRC32C mismatch", "flip in a row");
    free(b);
    hl_table_destroy(ta);
}

/* t's rows with their heads as a file before version 3 restores them:
 * held at t_ref there, each moved to its base (decay.h), times
 * exp(lambda_h (t_ref - B_h)). Counts the rows that changed in *moved. */
static hl_table *rebased(const hl_table *t, const hl_table_opts *o, int *moved)
{
    hl_table *r = hl_table_create(o, NULL, 0);
    *moved = 0;
    for (uint32_t row = 0; r != NULL && row < hl_table_row_limit(t); row++) {
        hl_row_view v;
        float m[N_HEADS], s[N_HEADS * DIM];
        if (!hl_table_row_live(t, row)) continue;
        hl_table_view(t, row, &v);
        for (int h = 0; h < N_HEADS; h++) {
            int64_t base = hl_decay_base_ms(&o->decay, h, v.t_ref_ms);
            /* the factor rounded to float once, as the loader's */
            float g = (float)exp(o->decay.lambda_per_ms[h] * ((double)v.t_ref_ms - (double)base));
            m[h] = v.m[h] * g;
            for (int j = 0; j < DIM; j++) s[h * DIM + j] = v.s[h * DIM + j] * g;
            *moved += m[h] != v.m[h];
        }
        v.m = m, v.s = s;
        CHECK(hl_table_restore_at(r, row, &v) == 0);
    }
    return r;
}

/* Format 2 (the same bytes, the heads at t_ref) is still read, its heads
 * moved to their bases: B's file with version 2 and its CRC redone. */
static void test_version_2_read(void)
{
    hl_table_opts o = opts();
    hl_table *src = table_upto(&o, 500), *got = NULL;
    hl_snapshot_meta m = meta_at("ev", 0, 100);
    hl_snapshot_result res;
    char err[512];
    fresh_dir();
    CHECK(hl_snapshot_write(NULL, dir, &m, src, 5, &res, err, sizeof err) == 0);
    size_t n;
    unsigned char *b = slurp(res.path, &n);
    b[8] = 2;
    uint32_t crc = hl_crc32c(0, b, n - 4);
    for (int i = 0; i < 4; i++) b[n - 4 + i] = (unsigned char)(crc >> (8 * i));
    spit(res.path, b, n);
    int rc = hl_snapshot_load(NULL, res.path, &o, FP, &got, NULL, err, sizeof err);
    CHECKF(rc == 0 && got != NULL, "version 2: %s", err);
    int moved;
    hl_table *want = rebased(src, &o, &moved);
    CHECK(moved > 0);
    if (got) CHECK(tables_equal(want, got, 1));
    free(b);
    hl_table_destroy(want);
    hl_table_destroy(got);
    hl_table_destroy(src);
}

/* Format 1 (no item keys or weights in the ring) is still read: a
 * table whose rows hold no history entries has the same row bytes in
 * both formats, so the file is B's with version 1, without the header's
 * two changelog fields (the 16 bytes before the rows), and its CRC redone.
 * Every row comes back; keys would be unknown (schemas/snapshot.md). */
static void test_version_1_read(void)
{
    hl_table_opts o = opts();
    hl_table *src = table_upto(&o, 500), *t = hl_table_create(&o, NULL, 0), *got = NULL;
    uint32_t lim = hl_table_row_limit(src);
    for (uint32_t r = 0; r < lim; r++) {
        hl_row_view v;
        if (!hl_table_row_live(src, r)) continue;
        hl_table_view(src, r, &v);
        v.n_hist = 0;
        hl_table_restore(t, &v);
    }
    hl_snapshot_meta m = meta_at("ev", 0, 100);
    hl_snapshot_result res;
    char err[512];
    fresh_dir();
    CHECK(hl_snapshot_write(NULL, dir, &m, t, 5, &res, err, sizeof err) == 0);
    size_t n;
    unsigned char *b = slurp(res.path, &n);
    b[8] = 1;
    size_t hdr2 = 62 + 2 + 8 * N_HEADS;     /* topic "ev" */
    memmove(b + hdr2 - 16, b + hdr2, n - hdr2);
    n -= 16;
    uint32_t crc = hl_crc32c(0, b, n - 4);
    for (int i = 0; i < 4; i++) b[n - 4 + i] = (unsigned char)(crc >> (8 * i));
    spit(res.path, b, n);
    int rc = hl_snapshot_load(NULL, res.path, &o, FP, &got, NULL, err, sizeof err);
    CHECKF(rc == 0 && got != NULL, "version 1: %s", err);
    int moved;
    hl_table *want = rebased(t, &o, &moved);     /* its heads were at t_ref */
    if (got) CHECK(tables_equal(want, got, 1));
    hl_table_destroy(want);
    free(b);
    hl_table_destroy(got);
    hl_table_destroy(t);
    hl_table_destroy(src);
}

#define V2 HL_SNAPSHOT_VERSION

/* One row's encoding (what the Kafka changelog sends) decodes back to the
 * same row; every shorter or longer length, and an unknown event type, is
 * refused without reading outside the bytes given. */
/* A row whose masses or sums are not finite, or whose mass is past the
 * table's guard, decodes (snapshot dump shows it) but is not restored:
 * restored, it would refuse every later event of its user. So is one
 * whose ring holds a weight that is infinite or past the guard (a
 * migration adds w x e_in to the new sums). The number of the damages
 * restored anyway. */
static int refuses_bad_state(unsigned char *buf, size_t max, uint32_t r, const hl_row_view *v,
                             hl_snapshot_row_scratch *sc, hl_table *empty)
{
    float m[N_HEADS], s[N_HEADS * DIM], w[HISTORY];
    int wrong = 0, damages = v->n_hist > 0 && v->hist_w != NULL ? 5 : 3;
    for (int k = 0; k < damages; k++) {
        hl_row_view x = *v;
        hl_row_view d;
        uint32_t row;
        memcpy(m, v->m, sizeof m);
        memcpy(s, v->s, sizeof s);
        if (v->hist_w != NULL)
            memcpy(w, v->hist_w, sizeof w);
        if (k == 0) m[0] = NAN;
        if (k == 1) s[DIM + 1] = INFINITY;
        if (k == 2) m[N_HEADS - 1] = 2 * HL_TABLE_MAX_MASS;
        if (k == 3) w[hl_row_hist_index(v, v->n_hist - 1)] = INFINITY;
        if (k == 4) w[hl_row_hist_index(v, 0)] = 3e38f;
        x.m = m;
        x.s = s;
        x.hist_w = v->hist_w ? w : NULL;
        size_t len = hl_snapshot_row_encode(buf, N_HEADS, DIM, r, &x);
        wrong += len > max ||
                 hl_snapshot_row_decode(buf, len, N_HEADS, DIM, HISTORY, V2, sc, &row, &d) != 0 ||
                 hl_table_restore(empty, &d) == 0;   /* dump shows it; restore refuses */
    }
    return wrong;
}

static void test_row_codec(void)
{
    hl_table_opts o = opts();
    hl_table *tbl = table_upto(&o, N_EVENTS), *empty = table_upto(&o, 0);
    size_t max = hl_snapshot_row_max(N_HEADS, DIM, HISTORY);
    unsigned char *buf = malloc(max);
    float m[N_HEADS * (DIM + 1)];
    int32_t hi[HISTORY];
    int64_t ht[HISTORY];
    uint8_t ty[HISTORY];
    uint64_t hk[HISTORY];
    float hw[HISTORY];
    hl_snapshot_row_scratch sc = {m, hi, ht, ty, hk, hw};
    int bad = 0, rows = 0;
    for (uint32_t r = 0; r < hl_table_row_limit(tbl); r++) {
        if (!hl_table_row_live(tbl, r)) continue;
        hl_row_view v, d;
        uint32_t row;
        hl_table_view(tbl, r, &v);
        size_t len = hl_snapshot_row_encode(buf, N_HEADS, DIM, r, &v);
        bad += len > max;
        bad += hl_snapshot_row_decode(buf, len, N_HEADS, DIM, HISTORY, V2, &sc, &row, &d) != 0;
        bad += row != r || !rows_equal(&v, &d, 1) || d.user_len != v.user_len ||
               memcmp(d.user, v.user, v.user_len) != 0;
        /* Copied to a buffer of exactly the claimed length, so a read past
         * it is caught by the sanitizers. */
        for (size_t cut = 0; cut < len + 2; cut += (cut < 40 ? 1 : 37)) {
            if (cut == len) continue;
            unsigned char *t = malloc(cut + 1);
            memcpy(t, buf, cut < len ? cut : len);
            if (cut > len) memset(t + len, 0, cut - len);
            bad += hl_snapshot_row_decode(t, cut, N_HEADS, DIM, HISTORY, V2, &sc, &row, &d) == 0;
            free(t);
        }
        bad += refuses_bad_state(buf, max, r, &v, &sc, empty);
        if (v.n_hist > 0) {
            buf[len - 1 - 12 * (size_t)v.n_hist] = HL_N_TYPES;  /* the newest entry's type */
            bad += hl_snapshot_row_decode(buf, len, N_HEADS, DIM, HISTORY, V2, &sc, &row,
                                          &d) != HL_ERANGE;
        }
        rows++;
    }
    CHECKF(bad == 0 && rows > 0, "%d of %d rows wrong", bad, rows);
    free(buf);
    hl_table_destroy(tbl);
    hl_table_destroy(empty);
}

static void test_wrong_version_refused(void)
{
    hl_table *ta;
    char pb[4200];
    size_t n;
    unsigned char *b = two_snapshots(&ta, pb, &n);
    b[8] = 4;   /* version, little-endian u32 after the 8-byte magic */
    spit(pb, b, n);
    check_refused(ta, pb, HL_EVERSION, "version 4", "version 4");
    b[8] = HL_SNAPSHOT_VERSION;
    b[0] = 'X';
    spit(pb, b, n);
    check_refused(ta, pb, HL_EFORMAT, "bad magic", "magic");
    b[0] = 'H';
    unsigned char *big = malloc(n + 3);
    memcpy(big, b, n);
    memcpy(big + n, "abc", 3);
    spit(pb, big, n + 3);
    check_refused(ta, pb, HL_EFORMAT, "follow the trailer", "glued");
    free(big);
    free(b);
    hl_table_destroy(ta);
}

static void test_mismatch_refused(void)
{
    hl_table *ta;
    char pb[4200], err[1024];
    size_t n;
    unsigned char *b = two_snapshots(&ta, pb, &n);
    hl_table_opts o = opts_with(DIM + 1, HISTORY, 0);
    hl_table *t = NULL;
    CHECK(hl_snapshot_load(NULL, pb, &o, FP, &t, NULL, err, sizeof err) == HL_EMISMATCH);
    CHECK(strstr(err, "dim 8") != NULL);
    o = opts();
    CHECK(hl_snapshot_load(NULL, pb, &o, FP + 1, &t, NULL, err, sizeof err) == HL_EMISMATCH);
    CHECK(strstr(err, "model") != NULL);
    double hl[3] = {1, 2, 3};
    hl_decay_init(&o.decay, 3, DIM, hl, err, sizeof err);
    CHECK(hl_snapshot_load(NULL, pb, &o, FP, &t, NULL, err, sizeof err) == HL_EMISMATCH);
    CHECK(t == NULL);
    free(b);
    hl_table_destroy(ta);
}

/* Issue 16, item 7: a snapshot is picked by its name, so a file renamed
 * to another shard's name must not be loaded into that shard. Partition
 * 1's file renamed to partition 0's name with a higher offset, and
 * partition 0's own file copied to a higher offset, are both rejected with
 * a message saying what the header and the name say; partition 0's own
 * file loads, rows and all. The plain loader (inspect, dump) still reads
 * a renamed file: only picking by name needs the check. */
static void test_renamed_file_refused(void)
{
    hl_table_opts o = opts();
    hl_table *p0 = table_upto(&o, 1500), *p1 = table_upto(&o, 3000), *t = NULL;
    hl_snapshot_meta m0 = meta_at("ev", 0, 100), m1 = meta_at("ev", 1, 150);
    hl_snapshot_result r0, r1;
    char err[1024], report[4096], loaded[4200], renamed[700], copied[700];
    size_t n;
    fresh_dir();
    CHECK(hl_snapshot_write(NULL, dir, &m0, p0, 5, &r0, err, sizeof err) == 0);
    CHECK(hl_snapshot_write(NULL, dir, &m1, p1, 5, &r1, err, sizeof err) == 0);
    snprintf(renamed, sizeof renamed, "%s/ev.0.%020d.hls", dir, 300);
    CHECK(rename(r1.path, renamed) == 0);
    int rc = hl_snapshot_load_newest(NULL, dir, "ev", 0, &o, FP, &t, NULL, loaded,
                                     sizeof loaded, report, sizeof report, err, sizeof err);
    CHECKF(rc == 0 && t != NULL && strcmp(loaded, r0.path) == 0, "loaded '%s': %s", loaded, err);
    CHECKF(strstr(report, renamed) && strstr(report, "header says topic ev partition 1 "
           "next offset 150, the file name says topic ev partition 0 offset 300 (a renamed"),
           "report '%s'", report);
    if (t) CHECK(tables_equal(p0, t, 1));          /* partition 0's rows, not 1's */
    hl_table_destroy(t);
    t = NULL;

    unsigned char *b = slurp(r0.path, &n);
    snprintf(copied, sizeof copied, "%s/ev.0.%020d.hls", dir, 400);
    if (b) spit(copied, b, n);
    free(b);
    rc = hl_snapshot_load_newest(NULL, dir, "ev", 0, &o, FP, &t, NULL, loaded,
                                 sizeof loaded, report, sizeof report, err, sizeof err);
    CHECKF(rc == 0 && t != NULL && strcmp(loaded, r0.path) == 0, "loaded '%s': %s", loaded, err);
    CHECKF(strstr(report, copied) && strstr(report, "partition 0 next offset 100, the file name "
           "says topic ev partition 0 offset 400") && strstr(report, renamed), "report '%s'", report);
    hl_table_destroy(t);
    t = NULL;

    /* Only renamed files left: every one rejected, HL_EMISMATCH, nothing loaded. */
    unlink(r0.path);
    rc = hl_snapshot_load_newest(NULL, dir, "ev", 0, &o, FP, &t, NULL, NULL, 0, report,
                                 sizeof report, err, sizeof err);
    CHECKF(rc == HL_EMISMATCH && t == NULL && strstr(err, "all 2 snapshots"), "%d %s", rc, err);
    CHECK(hl_snapshot_load(NULL, renamed, &o, FP, &t, NULL, err, sizeof err) == 0 && t != NULL);
    hl_table_destroy(t);
    hl_table_destroy(p0);
    hl_table_destroy(p1);
}

static void test_shorter_history_keeps_newest(void)
{
    hl_table_opts o = opts(), o2 = opts_with(DIM, 2, 0);
    hl_table *a = table_upto(&o, 2000), *b = NULL;
    hl_snapshot_meta m = meta_at("ev", 0, 2000);
    hl_snapshot_result r;
    char err[512];
    fresh_dir();
    CHECK(hl_snapshot_write(NULL, dir, &m, a, 2, &r, err, sizeof err) == 0);
    CHECKF(hl_snapshot_load(NULL, r.path, &o2, FP, &b, NULL, err, sizeof err) == 0, "%s", err);
    int64_t ra = hl_table_find(a, "user-1", 6), rb = b ? hl_table_find(b, "user-1", 6) : -1;
    CHECK(ra >= 0 && rb >= 0);
    if (ra >= 0 && rb >= 0) {
        hl_row_view va, vb;
        hl_table_view(a, (uint32_t)ra, &va);
        hl_table_view(b, (uint32_t)rb, &vb);
        CHECK(va.n_hist == HISTORY && vb.n_hist == 2);
        CHECK(vb.hist_ts_ms[hl_row_hist_index(&vb, 1)] == va.hist_ts_ms[hl_row_hist_index(&va, HISTORY - 1)]);
        CHECK(vb.hist_item[hl_row_hist_index(&vb, 0)] == va.hist_item[hl_row_hist_index(&va, HISTORY - 2)]);
    }
    /* And back: a history-2 file into a history-5 table keeps all 2. */
    hl_table *c = NULL;
    hl_snapshot_meta m2 = meta_at("short", 0, 2000);
    CHECK(b && hl_snapshot_write(NULL, dir, &m2, b, 2, &r, err, sizeof err) == 0);
    CHECKF(hl_snapshot_load(NULL, r.path, &o, FP, &c, NULL, err, sizeof err) == 0, "%s", err);
    int64_t rc_ = c ? hl_table_find(c, "user-1", 6) : -1;
    if (rc_ >= 0 && rb >= 0) {
        hl_row_view vb, vc;
        hl_table_view(b, (uint32_t)rb, &vb);
        hl_table_view(c, (uint32_t)rc_, &vc);
        CHECK(vc.n_hist == 2 && vc.history == HISTORY && rows_equal(&vb, &vc, 1));
    }
    hl_table_destroy(a);
    hl_table_destroy(b);
    hl_table_destroy(c);
}

/* A file holding more users than state.max.users (the limit lowered, or a
 * pod resized) loads into at most max_users: the least recently active go,
 * as they would have live, and are counted as capacity evictions. Without
 * that every row stayed, past the limit the pod was sized for. */
static void test_load_into_smaller_limit(void)
{
    hl_table_opts o = opts(), small = opts_with(DIM, HISTORY, 50);
    hl_table *a = table_upto(&o, N_EVENTS), *b = NULL;
    hl_snapshot_meta m = meta_at("ev", 0, N_EVENTS);
    hl_snapshot_result r;
    hl_table_stats sa, sb;
    char err[512];
    fresh_dir();
    CHECK(a != NULL && hl_snapshot_write(NULL, dir, &m, a, 2, &r, err, sizeof err) == 0);
    hl_table_stats_get(a, &sa);
    CHECK(sa.users > 50);
    CHECKF(hl_snapshot_load(NULL, r.path, &small, FP, &b, NULL, err, sizeof err) == 0, "%s", err);
    if (b != NULL) {
        hl_table_stats_get(b, &sb);
        CHECKF(sb.users <= 50, "loaded %zu users of %zu into state.max.users=50",
               sb.users, sa.users);
        CHECKF(sb.evicted_capacity == sa.users - sb.users, "evicted_capacity %llu",
               (unsigned long long)sb.evicted_capacity);
        /* The kept users are the most recently active: each one's
         * active_seq is above every dropped one's. */
        uint64_t min_kept = UINT64_MAX, max_dropped = 0;
        for (uint32_t row = 0; row < hl_table_row_limit(a); row++) {
            hl_row_view v;
            if (!hl_table_row_live(a, row)) continue;
            hl_table_view(a, row, &v);
            int kept = hl_table_find(b, v.user, v.user_len) >= 0;
            if (kept && v.active_seq < min_kept) min_kept = v.active_seq;
            if (!kept && v.active_seq > max_dropped) max_dropped = v.active_seq;
        }
        CHECKF(min_kept > max_dropped, "kept down to seq %llu, dropped up to %llu",
               (unsigned long long)min_kept, (unsigned long long)max_dropped);
    }
    hl_table_destroy(a);
    hl_table_destroy(b);
}


/* A load that meets a FIFO must not wait for a writer that never comes. */
static void hung(int sig)
{
    static const char msg[] = "FAIL: a load hung opening a FIFO named like a snapshot\n";
    (void)sig;
    if (write(2, msg, sizeof msg - 1) < 0) _exit(1);
    _exit(1);
}

/* Newest first in dir: a FIFO, a symlink to a good file of this very shard
 * kept elsewhere, a directory; all named like snapshots, all refused with
 * what they are, and the real file at offset 100 loads. */
static void test_special_files_refused(void)
{
    hl_table_opts o = opts();
    hl_table *a = table_upto(&o, 1500), *t = NULL;
    hl_snapshot_meta m = meta_at("ev", 0, 100), far = meta_at("ev", 0, 400);
    hl_snapshot_result r, rf;
    hl_snapshot_info in;
    char err[1024], report[4096], loaded[4200], fifo[700], link[700], sub[700], other[700];
    fresh_dir();
    snprintf(other, sizeof other, "%s/elsewhere", dir);
    CHECK(mkdir(other, 0755) == 0);
    CHECK(hl_snapshot_write(NULL, dir, &m, a, 5, &r, err, sizeof err) == 0);
    CHECK(hl_snapshot_write(NULL, other, &far, a, 5, &rf, err, sizeof err) == 0);
    snprintf(fifo, sizeof fifo, "%s/ev.0.%020d.hls", dir, 500);
    snprintf(link, sizeof link, "%s/ev.0.%020d.hls", dir, 400);
    snprintf(sub, sizeof sub, "%s/ev.0.%020d.hls", dir, 300);
    CHECK(mkfifo(fifo, 0644) == 0 && symlink(rf.path, link) == 0 && mkdir(sub, 0755) == 0);
    signal(SIGALRM, hung);
    alarm(60);          /* only a hang reaches it: the loads take milliseconds */
    int rc = hl_snapshot_load_newest(NULL, dir, "ev", 0, &o, FP, &t, NULL, loaded,
                                     sizeof loaded, report, sizeof report, err, sizeof err);
    CHECKF(rc == 0 && t != NULL && strcmp(loaded, r.path) == 0, "loaded '%s': %s", loaded, err);
    CHECKF(strstr(report, fifo) && strstr(report, "a FIFO, not a regular file"), "report '%s'",
           report);
    CHECKF(strstr(report, link) && strstr(report, "a symbolic link"), "report '%s'", report);
    CHECKF(strstr(report, sub) && strstr(report, "a directory, not a regular file"),
           "report '%s'", report);
    hl_table_destroy(t);
    /* `halflife snapshot inspect` reads through hl_snapshot_read: refused too. */
    rc = hl_snapshot_read(NULL, fifo, &in, NULL, NULL, err, sizeof err);
    CHECKF(rc == HL_EFORMAT && strstr(err, "a FIFO"), "%s: %s", hl_strerror(rc), err);
    alarm(0);
    hl_table_destroy(a);
}

static void test_no_snapshot_is_enoent(void)
{
    hl_table_opts o = opts();
    hl_table *t = NULL;
    char err[512], rep[64];
    fresh_dir();
    CHECK(hl_snapshot_load_newest(NULL, dir, "ev", 0, &o, FP, &t, NULL, NULL, 0, rep,
                                  sizeof rep, err, sizeof err) == HL_ENOENT);
    CHECK(hl_snapshot_load_newest(NULL, "/nonexistent-dir", "ev", 0, &o, FP, &t, NULL, NULL,
                                  0, rep, sizeof rep, err, sizeof err) == HL_ENOENT);
    CHECK(t == NULL);
}

int main(void)
{
    make_events(SNAP_SEED, 20);
    RUN(test_crc32c_vectors);
    RUN(test_crc32c_hw_matches_table);
    RUN(test_names);
    RUN(test_round_trip_bit_exact);
    RUN(test_empty_table);
    RUN(test_io_hints_optional);
    RUN(test_retention);
    RUN(test_retention_keeps_published);
    RUN(test_set_aside);
    RUN(test_set_aside_twice);
    RUN(test_truncated_refused);
    RUN(test_empty_file_refused);
    RUN(test_bit_flips_refused);
    RUN(test_wrong_version_refused);
    RUN(test_version_1_read);
    RUN(test_version_2_read);
    RUN(test_row_codec);
    RUN(test_mismatch_refused);
    RUN(test_renamed_file_refused);
    RUN(test_shorter_history_keeps_newest);
    RUN(test_load_into_smaller_limit);
    RUN(test_no_snapshot_is_enoent);
    RUN(test_special_files_refused);
    remove_dir();
    TEST_EXIT();
}
