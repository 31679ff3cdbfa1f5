/* test_snapshot.c - CRC32C, snapshot files, fault injection, fuzzy snapshots
 * and replay (core/crc32c.c, core/io.c, core/snapshot.c). */
#define T_SUITE "snapshot"
#include "test.h"

#include "cmd.h"
#include "crc32c.h"
#include "io.h"
#include "snapshot.h"
#include "utf8.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#define DIM      8
#define N_HEADS  3
#define HISTORY  5
#define N_ITEMS  40
#define N_USERS  300
#define N_EVENTS 6000
#define FP       0x1234abcdULL
#define SCRATCH_NAME "snaptest"

#include "table_util.h"

static hl_table_opts opts_with(int dim, int history, size_t max_users)
{
    hl_table_opts o;
    char err[256];
    memset(&o, 0, sizeof o);
    hl_decay_init(&o.decay, N_HEADS, dim, hl_default_half_life_ms, err, sizeof err);
    o.history = history;
    o.max_users = max_users;
    o.evict_mass = 0;
    o.expected_users = 64;
    return o;
}

static hl_table_opts opts(void)
{
    return opts_with(DIM, HISTORY, 0);
}

static hl_table *table_upto(const hl_table_opts *o, int k)
{
    char err[256];
    hl_table *tbl = hl_table_create(o, err, sizeof err);
    if (tbl) apply_range(tbl, 0, k);
    return tbl;
}

static hl_snapshot_meta meta_at(const char *topic, int partition, int64_t next)
{
    hl_snapshot_meta m;
    memset(&m, 0, sizeof m);
    snprintf(m.topic, sizeof m.topic, "%s", topic);
    m.partition = partition;
    m.next_offset = next;
    m.model_fingerprint = FP;
    return m;
}

/* ---- scratch files ------------------------------------------------------ */

static unsigned char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    unsigned char *b = NULL;
    long n;
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    b = malloc((size_t)n + 1);
    if (fread(b, 1, (size_t)n, f) != (size_t)n) { free(b); b = NULL; }
    fclose(f);
    *len = (size_t)n;
    return b;
}

static void spit(const char *path, const unsigned char *b, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f) return;
    if (len) fwrite(b, 1, len, f);
    fclose(f);
}

/* One byte in place: no truncation, which on ext4 forces a writeback. */
static void poke(const char *path, size_t pos, unsigned char byte)
{
    int fd = open(path, O_WRONLY);
    if (fd < 0) return;
    if (pwrite(fd, &byte, 1, (off_t)pos) != 1) perror("pwrite");
    close(fd);
}

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
    if (got) CHECK(tables_equal(t, got, 1));
    free(b);
    hl_table_destroy(got);
    hl_table_destroy(t);
    hl_table_destroy(src);
}

#define V2 HL_SNAPSHOT_VERSION

/* One row's encoding (what the Kafka changelog sends) decodes back to the
 * same row; every shorter or longer length, and an unknown event type, is
 * refused without reading outside the bytes given. */
static void test_row_codec(void)
{
    hl_table_opts o = opts();
    hl_table *tbl = table_upto(&o, N_EVENTS);
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
}

static void test_wrong_version_refused(void)
{
    hl_table *ta;
    char pb[4200];
    size_t n;
    unsigned char *b = two_snapshots(&ta, pb, &n);
    b[8] = 3;   /* version, little-endian u32 after the 8-byte magic */
    spit(pb, b, n);
    check_refused(ta, pb, HL_EVERSION, "version 3", "version 3");
    b[8] = 2;
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

/* ---- fault injection -------------------------------------------------- */

typedef struct faulty {
    hl_io io;
    int   n_write, n_fsync, n_rename, n_dirsync;
    int   fail_write, fail_fsync, fail_rename, fail_dirsync;  /* Nth call, 1-based; 0 never */
} faulty;

static ssize_t f_write(void *ctx, int fd, const void *buf, size_t len)
{
    faulty *f = ctx;
    if (++f->n_write == f->fail_write) { errno = ENOSPC; return -1; }
    return hl_io_posix()->write(NULL, fd, buf, len);
}
static int f_fsync(void *ctx, int fd)
{
    faulty *f = ctx;
    if (++f->n_fsync == f->fail_fsync) { errno = EIO; return -1; }
    return hl_io_posix()->fsync(NULL, fd);
}
static int f_rename(void *ctx, const char *a, const char *b)
{
    faulty *f = ctx;
    if (++f->n_rename == f->fail_rename) { errno = EXDEV; return -1; }
    return hl_io_posix()->rename(NULL, a, b);
}
static int f_dirsync(void *ctx, const char *d)
{
    faulty *f = ctx;
    if (++f->n_dirsync == f->fail_dirsync) { errno = EIO; return -1; }
    return hl_io_posix()->fsync_dir(NULL, d);
}

static faulty faulty_io(void)
{
    faulty f;
    memset(&f, 0, sizeof f);
    f.io = *hl_io_posix();
    f.io.write = f_write;
    f.io.fsync = f_fsync;
    f.io.rename = f_rename;
    f.io.fsync_dir = f_dirsync;
    return f;
}

/* One snapshot at 100 exists; a failed one at 200 must leave it the newest
 * valid, with no temporary file behind. */
static void check_after_failure(const hl_table *ta, const char *what)
{
    hl_table_opts o = opts();
    hl_table *t = NULL;
    char err[1024] = "", loaded[4200];
    int rc = hl_snapshot_load_newest(NULL, dir, "ev", 0, &o, FP, &t, NULL, loaded,
                                     sizeof loaded, NULL, 0, err, sizeof err);
    CHECKF(rc == 0 && t && tables_equal(ta, t, 1), "%s: %s", what, err);
    CHECKF(count_files(".tmp") == 0, "%s: temporary file left", what);
    hl_table_destroy(t);
}

static void test_injected_failures(void)
{
    hl_table_opts o = opts();
    hl_table *ta = table_upto(&o, 1500), *tb = table_upto(&o, 6000);
    hl_snapshot_meta m = meta_at("ev", 0, 100);
    char err[1024], what[64];
    int writes;

    /* Count the calls a clean write of B makes (in its own directory),
     * then fail each write in turn, then the fsync, rename, dir fsync. */
    fresh_dir();
    faulty f = faulty_io();
    f.io.ctx = &f;
    m.next_offset = 200;
    CHECK(hl_snapshot_write(&f.io, dir, &m, tb, 5, NULL, err, sizeof err) == 0);
    writes = f.n_write;
    CHECK(writes >= 2 && f.n_fsync == 1 && f.n_rename == 1 && f.n_dirsync == 1);
    fresh_dir();
    m.next_offset = 100;
    CHECK(hl_snapshot_write(NULL, dir, &m, ta, 5, NULL, err, sizeof err) == 0);
    m.next_offset = 200;
    for (int n = 1; n <= writes && !t_case_failed; n++) {
        f = faulty_io();
        f.io.ctx = &f;
        f.fail_write = n;
        int rc = hl_snapshot_write(&f.io, dir, &m, tb, 5, NULL, err, sizeof err);
        snprintf(what, sizeof what, "write %d of %d", n, writes);
        CHECKF(rc == HL_EIO && strstr(err, "write") && strstr(err, "No space"), "%s: %d %s", what, rc, err);
        check_after_failure(ta, what);
    }
    f = faulty_io(); f.io.ctx = &f; f.fail_fsync = 1;
    CHECK(hl_snapshot_write(&f.io, dir, &m, tb, 5, NULL, err, sizeof err) == HL_EIO);
    CHECKF(strstr(err, "fsync"), "%s", err);
    check_after_failure(ta, "fsync");
    f = faulty_io(); f.io.ctx = &f; f.fail_rename = 1;
    CHECK(hl_snapshot_write(&f.io, dir, &m, tb, 5, NULL, err, sizeof err) == HL_EIO);
    CHECKF(strstr(err, "rename"), "%s", err);
    check_after_failure(ta, "rename");
    /* The directory fsync fails after the rename: the new file is in place
     * and valid, the caller is told it may not be durable. */
    f = faulty_io(); f.io.ctx = &f; f.fail_dirsync = 1;
    CHECK(hl_snapshot_write(&f.io, dir, &m, tb, 5, NULL, err, sizeof err) == HL_EIO);
    CHECKF(strstr(err, "fsync directory"), "%s", err);
    CHECK(count_files(".tmp") == 0);
    hl_table_destroy(ta);
    hl_table_destroy(tb);
}

/* ---- fuzzy snapshots and replay --------------------------------------- */

/* Snapshot begun at offset k with the table changing between small steps,
 * then restored and replayed from k: equal to the run that never stopped. */
static void test_fuzzy_snapshot_exact_after_replay(void)
{
    hl_table_opts o = opts();
    const int k = 2500;
    hl_table *live = table_upto(&o, k), *back = NULL;
    hl_snapshot_meta m = meta_at("ev", 0, k);
    hl_snapshot_writer *w;
    hl_snapshot_result r;
    char err[512];
    int rc, next = k, steps = 0;

    fresh_dir();
    CHECK(hl_snapshot_begin(NULL, dir, &m, live, &w, err, sizeof err) == 0);
    while ((rc = hl_snapshot_step(w, live, 7, err, sizeof err)) == 0) {
        int n = 40 < N_EVENTS - next ? 40 : N_EVENTS - next;
        apply_range(live, next, next + n);   /* new users among them */
        next += n;
        steps++;
    }
    CHECKF(rc == 1, "%s", err);
    CHECK(steps > 10);
    CHECKF(hl_snapshot_commit(w, 2, &r, err, sizeof err) == 0, "%s", err);
    apply_range(live, next, N_EVENTS);
    CHECKF(hl_snapshot_load(NULL, r.path, &o, FP, &back, NULL, err, sizeof err) == 0, "%s", err);
    if (back) {
        apply_range(back, k, N_EVENTS);
        CHECK(tables_equal(live, back, 0));
    }
    hl_table_destroy(live);
    hl_table_destroy(back);
}

/* A user evicted after its row was copied and inserted again at a higher
 * row id is in the file twice; the load keeps the first and counts it. */
static void test_fuzzy_duplicate_user_loads(void)
{
    hl_table_opts o = opts();
    o.evict_mass = 0.5f;
    char err[512];
    hl_table *tbl = hl_table_create(&o, err, sizeof err), *back = NULL;
    hl_snapshot_meta m = meta_at("ev", 0, 3);
    hl_snapshot_writer *w;
    hl_snapshot_result r;
    hl_snapshot_info in;
    const int64_t late = 100000000000LL;    /* three years on: A's mass is gone */
    hl_event ev[5] = {
        {.user = "A", .user_len = 1, .item = 1, .w = 1, .ts_ms = 0, .offset = 0},
        {.user = "B", .user_len = 1, .item = 2, .w = 1, .ts_ms = late, .offset = 1},
        {.user = "C", .user_len = 1, .item = 3, .w = 1, .ts_ms = late, .offset = 2},
        {.user = "D", .user_len = 1, .item = 4, .w = 1, .ts_ms = late, .offset = 3},
        {.user = "A", .user_len = 1, .item = 5, .w = 1, .ts_ms = late + 1, .offset = 4},
    };
    fresh_dir();
    hl_table_apply(tbl, ev, 3, e_in, N_ITEMS, NULL);
    CHECK(hl_snapshot_begin(NULL, dir, &m, tbl, &w, err, sizeof err) == 0);
    CHECK(hl_snapshot_step(w, tbl, 1, err, sizeof err) == 0);     /* A, row 0 */
    CHECK(hl_table_sweep(tbl, 10) == 1);                          /* A evicted */
    hl_table_apply(tbl, ev + 3, 2, e_in, N_ITEMS, NULL);          /* D row 0, A row 3 */
    CHECK(hl_table_find(tbl, "A", 1) == 3);
    while (hl_snapshot_step(w, tbl, 1, err, sizeof err) == 0)
        ;
    CHECKF(hl_snapshot_commit(w, 2, &r, err, sizeof err) == 0, "%s", err);
    CHECK(r.n_rows == 4);
    CHECKF(hl_snapshot_load(NULL, r.path, &o, FP, &back, &in, err, sizeof err) == 0, "%s", err);
    CHECK(in.n_dup_rows == 1);
    if (back) {
        hl_row_view v;
        int64_t row = hl_table_find(back, "A", 1);
        CHECK(row == 0 && hl_table_find(back, "D", 1) < 0);
        if (row >= 0) {
            hl_table_view(back, (uint32_t)row, &v);
            CHECK(v.last_offset == 0);          /* the first copy */
        }
    }
    hl_table_destroy(tbl);
    hl_table_destroy(back);
}

/* Snapshot at k; replaying from any j <= k gives the uninterrupted state. */
static void test_replay_from_earlier_offsets(void)
{
    hl_table_opts o = opts();
    const int k = 3000;
    hl_table *full = table_upto(&o, N_EVENTS), *at_k = table_upto(&o, k);
    hl_snapshot_meta m = meta_at("ev", 0, k);
    hl_snapshot_result r;
    char err[512];
    int js[] = {0, 1, k / 2, k - 1, k};

    fresh_dir();
    CHECK(hl_snapshot_write(NULL, dir, &m, at_k, 2, &r, err, sizeof err) == 0);
    for (size_t i = 0; i < sizeof js / sizeof js[0]; i++) {
        hl_table *t = NULL;
        hl_snapshot_info info;
        CHECKF(hl_snapshot_load(NULL, r.path, &o, FP, &t, &info, err, sizeof err) == 0, "%s", err);
        if (!t) break;
        CHECK(info.meta.next_offset == k);
        apply_range(t, js[i], N_EVENTS);
        CHECKF(tables_equal(full, t, 0), "replay from %d", js[i]);
        hl_table_destroy(t);
    }
    hl_table_destroy(full);
    hl_table_destroy(at_k);
}

/* ---- asynchronous writes ------------------------------------------------ */

#define BIG_DIM   256
#define BIG_USERS 3000     /* about 9 MB of rows: more than the 4 x 1 MiB ring */

static hl_table *big_table(const hl_table_opts *o)
{
    static float s[N_HEADS * BIG_DIM];
    float m[N_HEADS] = {1, 2, 3};
    int32_t item[HISTORY] = {1, 2, 3, 4, 5};
    int64_t ts[HISTORY] = {10, 20, 30, 40, 50};
    uint8_t type[HISTORY] = {0, 1, 2, 3, 4};
    char err[256], id[32];
    hl_table *tbl = hl_table_create(o, err, sizeof err);
    for (int u = 0; tbl && u < BIG_USERS; u++) {
        for (int i = 0; i < N_HEADS * BIG_DIM; i++) s[i] = (float)(u * 31 + i);
        snprintf(id, sizeof id, "big-%d", u);
        hl_row_view v = {.user = id, .user_len = (uint32_t)strlen(id), .s = s, .m = m,
                         .t_ref_ms = 60 + u, .last_offset = u, .active_seq = (uint64_t)u + 1,
                         .history = HISTORY, .n_hist = u % (HISTORY + 1), .hist_head = u % HISTORY,
                         .hist_item = item, .hist_type = type, .hist_ts_ms = ts};
        if (hl_table_restore(tbl, &v) != 0) { hl_table_destroy(tbl); return NULL; }
    }
    return tbl;
}

/* A file of many buffers: failing any one of its writes, in the middle
 * too, leaves the previous snapshot the newest valid one. */
static void test_injected_failures_mid_file(void)
{
    hl_table_opts o = opts(), ob = opts_with(BIG_DIM, HISTORY, 0);
    hl_table *ta = table_upto(&o, 1500), *tb = big_table(&ob);
    hl_snapshot_meta m = meta_at("ev", 0, 100);
    char err[1024], what[64];
    int writes;

    fresh_dir();
    if (!tb) { CHECK(tb != NULL); hl_table_destroy(ta); return; }
    faulty f = faulty_io();
    f.io.ctx = &f;
    CHECK(hl_snapshot_write(&f.io, dir, &m, tb, 5, NULL, err, sizeof err) == 0);
    writes = f.n_write;
    CHECKF(writes >= 8, "%d writes", writes);
    fresh_dir();
    CHECK(hl_snapshot_write(NULL, dir, &m, ta, 5, NULL, err, sizeof err) == 0);
    m.next_offset = 200;
    for (int n = 1; n <= writes && !t_case_failed; n++) {
        f = faulty_io();
        f.io.ctx = &f;
        f.fail_write = n;
        int rc = hl_snapshot_write(&f.io, dir, &m, tb, 5, NULL, err, sizeof err);
        snprintf(what, sizeof what, "write %d of %d", n, writes);
        CHECKF(rc == HL_EIO && strstr(err, "No space"), "%s: %d %s", what, rc, err);
        check_after_failure(ta, what);
    }
    hl_table_destroy(ta);
    hl_table_destroy(tb);
}

/* One thread: steps stop early while the ring is full and resume after a
 * drain; the file equals the synchronous one byte for byte. */
static void test_async_ring_backpressure(void)
{
    hl_table_opts o = opts_with(BIG_DIM, HISTORY, 0);
    hl_table *a = big_table(&o);
    hl_snapshot_meta m = meta_at("big", 0, 9);
    hl_snapshot_writer *w;
    hl_snapshot_result r1, r2;
    char err[512], dir2[600];
    int rc, stuck = 0, drained = 0;
    size_t n1 = 0, n2 = 0;

    fresh_dir();
    CHECK(a != NULL);
    if (!a) return;
    CHECKF(hl_snapshot_write(NULL, dir, &m, a, 2, &r1, err, sizeof err) == 0, "%s", err);
    snprintf(dir2, sizeof dir2, "%s/async", dir);
    mkdir(dir2, 0755);
    CHECK(hl_snapshot_begin(NULL, dir2, &m, a, &w, err, sizeof err) == 0);
    hl_snapshot_async(w);
    while ((rc = hl_snapshot_step(w, a, 100, err, sizeof err)) == 0) {
        if (++stuck % 10 == 0) {      /* a slow disk: drain now and then */
            int n = hl_snapshot_drain(w, err, sizeof err);
            CHECK(n >= 0);
            drained += n;
        }
    }
    CHECKF(rc == 1, "%s", err);
    CHECK(drained >= 4);
    CHECKF(hl_snapshot_commit(w, 2, &r2, err, sizeof err) == 0, "%s", err);
    unsigned char *x = slurp(r1.path, &n1), *y = slurp(r2.path, &n2);
    CHECK(x && y && n1 == n2 && n1 > 4 * (1u << 20) && memcmp(x, y, n1) == 0);
    free(x);
    free(y);
    hl_table_destroy(a);
}

typedef struct drainer {
    hl_snapshot_writer *w;
    atomic_int          stop;
    int                 rc;
    char                err[512];
} drainer;

static void *drain_loop(void *arg)
{
    drainer *d = arg;
    while (!atomic_load(&d->stop)) {
        int n = hl_snapshot_drain(d->w, d->err, sizeof d->err);
        if (n < 0) { d->rc = n; break; }
        if (n == 0) usleep(200);
    }
    return NULL;
}

/* A drain thread beside the owner, which keeps applying events; a write
 * failure in the drainer reaches the owner's next step. */
static void test_async_thread_and_failure(void)
{
    hl_table_opts o = opts_with(BIG_DIM, HISTORY, 0);
    hl_table *a = big_table(&o), *b = NULL;
    hl_snapshot_meta m = meta_at("big", 0, 9);
    hl_snapshot_writer *w;
    hl_snapshot_result r;
    char err[512];
    int rc;

    fresh_dir();
    if (!a) { CHECK(a != NULL); return; }
    for (int pass = 0; pass < 2; pass++) {
        faulty f = faulty_io();
        f.io.ctx = &f;
        f.fail_write = pass == 0 ? 0 : 3;
        m.next_offset = 9 + pass;
        drainer d = {.rc = 0};
        CHECK(hl_snapshot_begin(&f.io, dir, &m, a, &w, err, sizeof err) == 0);
        hl_snapshot_async(w);
        d.w = w;
        pthread_t th;
        pthread_create(&th, NULL, drain_loop, &d);
        while ((rc = hl_snapshot_step(w, a, 64, err, sizeof err)) == 0)
            ;
        atomic_store(&d.stop, 1);
        pthread_join(th, NULL);
        if (pass == 0) {
            CHECKF(rc == 1 && d.rc == 0, "%s %s", err, d.err);
            CHECKF(hl_snapshot_commit(w, 2, &r, err, sizeof err) == 0, "%s", err);
        } else {
            /* The failure shows in a step or, if the steps were done, in commit. */
            if (rc == 1) rc = hl_snapshot_commit(w, 2, NULL, err, sizeof err);
            else hl_snapshot_abort(w);
            CHECKF(rc == HL_EIO && strstr(err, "No space"), "rc %d: %s", rc, err);
        }
    }
    CHECK(count_files(".tmp") == 0);
    CHECKF(hl_snapshot_load(NULL, r.path, &o, FP, &b, NULL, err, sizeof err) == 0, "%s", err);
    CHECK(b && tables_equal(a, b, 1));
    hl_table_destroy(a);
    hl_table_destroy(b);
}

static int count_cb(void *arg, const hl_snapshot_info *info, uint32_t row,
                    const hl_row_view *v)
{
    (*(uint64_t *)arg) += (uint64_t)v->n_hist;
    return 0;
}

static void test_read_info(void)
{
    hl_table_opts o = opts();
    hl_table *a = table_upto(&o, 4000);
    hl_snapshot_meta m = meta_at("ev", 2, 4000);
    hl_snapshot_result r;
    hl_snapshot_info in;
    hl_table_stats st;
    uint64_t hist = 0;
    char err[512];
    fresh_dir();
    CHECK(hl_snapshot_write(NULL, dir, &m, a, 2, &r, err, sizeof err) == 0);
    CHECKF(hl_snapshot_read(NULL, r.path, &in, count_cb, &hist, err, sizeof err) == 0, "%s", err);
    hl_table_stats_get(a, &st);
    CHECK(in.n_rows == st.users && in.hist_entries == hist && in.crc_ok);
    CHECK(in.dim == DIM && in.n_heads == N_HEADS && in.history == HISTORY);
    CHECK(in.meta.partition == 2 && strcmp(in.meta.topic, "ev") == 0);
    CHECK(in.max_last_offset == 3999 && in.min_t_ref_ms <= in.max_t_ref_ms);
    CHECK(hl_snapshot_read(NULL, "/nonexistent/x.hls", &in, NULL, NULL, err, sizeof err) == HL_ENOENT);
    hl_table_destroy(a);
}

/* Runs `halflife snapshot ARGS` in this process with stdout and stderr
 * sent to out; returns its exit status. */
static int run_cmd(const char *out, const char *a1, const char *a2, const char *a3)
{
    char *argv[] = {"snapshot", (char *)a1, (char *)a2, (char *)a3, NULL};
    int argc = a3 ? 4 : a2 ? 3 : 2;
    fflush(stdout);
    fflush(stderr);
    int o = dup(1), e = dup(2), fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    int rc = hl_cmd_snapshot(argc, argv);
    fflush(stdout);
    fflush(stderr);
    dup2(o, 1);
    dup2(e, 2);
    close(fd);
    close(o);
    close(e);
    return rc;
}

static void test_inspect_and_dump_command(void)
{
    hl_table_opts o = opts();
    hl_table *a = table_upto(&o, 3000);
    hl_snapshot_meta m = meta_at("ev", 4, 3000);
    hl_snapshot_result r;
    hl_table_stats st;
    char err[512], out[700], want[64], *text;
    size_t n;

    fresh_dir();
    hl_table_stats_get(a, &st);
    CHECK(hl_snapshot_write(NULL, dir, &m, a, 2, &r, err, sizeof err) == 0);
    snprintf(out, sizeof out, "%s/out.txt", dir);
    CHECK(run_cmd(out, "inspect", r.path, NULL) == 0);
    text = (char *)slurp(out, &n);
    snprintf(want, sizeof want, "\"users\":%zu,", st.users);
    CHECKF(text && strstr(text, "\"crc_ok\":true") && strstr(text, want) &&
           strstr(text, "\"partition\":4,\"next_offset\":3000,") && strchr(text, '\n') == text + n - 1,
           "%s", text ? text : "(none)");
    free(text);
    CHECK(run_cmd(out, "dump", r.path, NULL) == 0);
    text = (char *)slurp(out, &n);
    size_t lines = 0;
    for (size_t i = 0; text && i < n; i++) lines += text[i] == '\n';
    CHECKF(lines == st.users && strstr(text, "\"user\":\"user-1\",") && strstr(text, "s_hash"),
           "%zu lines", lines);
    free(text);
    poke(r.path, r.bytes / 2, 0x55);
    poke(r.path, r.bytes / 2 + 1, 0xAA);
    CHECK(run_cmd(out, "inspect", r.path, NULL) == 1);
    text = (char *)slurp(out, &n);
    CHECKF(text && strstr(text, "\"crc_ok\":false") && strstr(text, "CRC32C mismatch"), "%s", text);
    free(text);
    CHECK(run_cmd(out, "inspect", "/nonexistent.hls", NULL) == 1);
    CHECK(run_cmd(out, "inspect", NULL, NULL) == 2);
    CHECK(run_cmd(out, "frobnicate", r.path, NULL) == 2);
    CHECK(run_cmd(out, "--help", NULL, NULL) == 0);
    hl_table_destroy(a);
}

/* ---- a strict JSON checker (RFC 8259: no NaN, no Infinity) ------------- */

static const char *json_value(const char *p);

static const char *json_ws(const char *p)
{
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
    return p;
}

static const char *json_string(const char *p)
{
    if (*p++ != '"') return NULL;
    while (*p != '"') {
        if ((unsigned char)*p < 0x20) return NULL;
        if (*p++ != '\\') continue;
        if (*p == 'u') {
            for (int i = 1; i <= 4; i++)
                if (!strchr("0123456789abcdefABCDEF", p[i]) || !p[i]) return NULL;
            p += 5;
        } else if (*p && strchr("\"\\/bfnrt", *p)) {
            p++;
        } else {
            return NULL;
        }
    }
    return p + 1;
}

static const char *json_digits(const char *p)
{
    if (*p < '0' || *p > '9') return NULL;
    while (*p >= '0' && *p <= '9') p++;
    return p;
}

static const char *json_number(const char *p)
{
    if (*p == '-') p++;
    if (*p == '0') p++;
    else if ((p = json_digits(p)) == NULL) return NULL;
    if (*p == '.' && (p = json_digits(p + 1)) == NULL) return NULL;
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-') p++;
        p = json_digits(p);
    }
    return p;
}

/* Object or array items up to the closing bracket; members of an object
 * are "key": value. */
static const char *json_items(const char *p, char close, int is_object)
{
    p = json_ws(p);
    if (*p == close) return p + 1;
    for (;;) {
        if (is_object) {
            if ((p = json_string(json_ws(p))) == NULL) return NULL;
            p = json_ws(p);
            if (*p++ != ':') return NULL;
        }
        if ((p = json_value(p)) == NULL) return NULL;
        p = json_ws(p);
        if (*p == close) return p + 1;
        if (*p++ != ',') return NULL;
    }
}

static const char *json_value(const char *p)
{
    p = json_ws(p);
    if (*p == '{') return json_items(p + 1, '}', 1);
    if (*p == '[') return json_items(p + 1, ']', 0);
    if (*p == '"') return json_string(p);
    if (!strncmp(p, "true", 4)) return p + 4;
    if (!strncmp(p, "false", 5)) return p + 5;
    if (!strncmp(p, "null", 4)) return p + 4;
    return json_number(p);
}

/* Every line of text is one valid JSON value, and text is UTF-8. */
static int json_lines_valid(const char *text, size_t n)
{
    if (!hl_utf8_valid(text, n)) return 0;
    for (const char *p = text; *p;) {
        const char *end = json_value(p);
        if (end == NULL || *end != '\n') return 0;
        p = end + 1;
    }
    return 1;
}

/* Issue 16: an event of weight 1e38 made a user's masses inf and NaN, and
 * `snapshot dump` printed "m":[-nan,inf,inf], which no JSON reader takes;
 * an id that is not UTF-8 did the same to the user field. Whatever a file
 * holds, dump, dump --values and inspect print valid JSON: non-finite
 * floats as null, bad bytes as U+FFFD. */
static void test_dump_non_finite_and_bad_utf8(void)
{
    hl_table_opts o = opts();
    hl_table *a = hl_table_create(&o, NULL, 0);
    hl_snapshot_meta m = meta_at("ev", 1, 10);
    hl_snapshot_result r;
    char err[512], out[700], *text;
    size_t n;
    float s[N_HEADS * DIM], mass[N_HEADS] = { NAN, INFINITY, -INFINITY };
    for (int i = 0; i < N_HEADS * DIM; i++) s[i] = i % 3 ? -NAN : INFINITY;
    int32_t hitem[HISTORY] = { 3 };
    uint8_t htype[HISTORY] = { 1 };
    int64_t hts[HISTORY] = { 1000 };
    const char user[] = "bad\xff\xc3(\xed\xa0\x80id\"\xf0\x9f\x98\x80";
    hl_row_view v = { .user = user, .user_len = sizeof user - 1, .s = s, .m = mass,
                      .t_ref_ms = 1000, .last_offset = 9, .active_seq = 1,
                      .history = HISTORY, .n_hist = 1, .hist_head = 0,
                      .hist_item = hitem, .hist_type = htype, .hist_ts_ms = hts };
    fresh_dir();
    CHECK(a != NULL && hl_table_restore(a, &v) == 0);
    CHECK(hl_snapshot_write(NULL, dir, &m, a, 2, &r, err, sizeof err) == 0);
    snprintf(out, sizeof out, "%s/out.txt", dir);
    const char *modes[3][2] = { {"dump", NULL}, {"dump", "--values"}, {"inspect", NULL} };
    for (int k = 0; k < 3; k++) {
        CHECK(run_cmd(out, modes[k][0], modes[k][1] ? modes[k][1] : r.path,
                      modes[k][1] ? r.path : NULL) == 0);
        text = (char *)slurp(out, &n);
        if (text) text[n] = 0;
        CHECKF(text && json_lines_valid(text, n), "%s %s: not JSON: %s", modes[k][0],
               modes[k][1] ? modes[k][1] : "", text ? text : "(none)");
        if (k < 2)
            CHECKF(text && strstr(text, "\"m\":[null,null,null]") &&
                   strstr(text, "\"user\":\"bad\\ufffd\\ufffd(\\ufffd\\ufffd\\ufffdid\\\"\xf0\x9f\x98\x80\""),
                   "%s", text ? text : "(none)");
        if (k == 1)
            CHECKF(text && strstr(text, "\"s\":[null,null,null,"), "%s", text ? text : "(none)");
        free(text);
    }
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
    make_events(88172645463325252ULL, 20);
    RUN(test_crc32c_vectors);
    RUN(test_crc32c_hw_matches_table);
    RUN(test_names);
    RUN(test_round_trip_bit_exact);
    RUN(test_empty_table);
    RUN(test_io_hints_optional);
    RUN(test_retention);
    RUN(test_truncated_refused);
    RUN(test_empty_file_refused);
    RUN(test_bit_flips_refused);
    RUN(test_wrong_version_refused);
    RUN(test_version_1_read);
    RUN(test_row_codec);
    RUN(test_mismatch_refused);
    RUN(test_renamed_file_refused);
    RUN(test_shorter_history_keeps_newest);
    RUN(test_injected_failures);
    RUN(test_injected_failures_mid_file);
    RUN(test_async_ring_backpressure);
    RUN(test_async_thread_and_failure);
    RUN(test_fuzzy_snapshot_exact_after_replay);
    RUN(test_replay_from_earlier_offsets);
    RUN(test_fuzzy_duplicate_user_loads);
    RUN(test_read_info);
    RUN(test_no_snapshot_is_enoent);
    RUN(test_inspect_and_dump_command);
    RUN(test_dump_non_finite_and_bad_utf8);
    if (dir[0]) {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) perror("rm");
    }
    TEST_EXIT();
}
