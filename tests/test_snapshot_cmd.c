/* test_snapshot_cmd.c - reading a snapshot without loading it
 * (hl_snapshot_read) and the `halflife snapshot inspect|dump` command run
 * in this process, whose output a strict JSON checker reads whatever the
 * file holds (worker/cmd/snapshot.c). */
#define T_SUITE "snapshot"
#include "test.h"

#include "cmd.h"
#include "snapshot_util.h"
#include "utf8.h"

#include <ctype.h>

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

/* Whether word occurs in text as a whole word (not inside a longer name). */
static int has_word(const char *text, const char *word)
{
    size_t n = strlen(word);
    for (const char *p = strstr(text, word); p; p = strstr(p + 1, word)) {
        int before = p == text || !(isalnum((unsigned char)p[-1]) || p[-1] == '_');
        int after = !(isalnum((unsigned char)p[n]) || p[n] == '_');
        if (before && after)
            return 1;
    }
    return 0;
}

/* Every field inspect and dump print is named in --help: the list there
 * left out file, version, changelog_offset, changelog_epoch, sweep_cursor,
 * crc32c and dump's hist, so a reader could not tell what they were. */
static void check_keys_in_help(const char *json, const char *help, const char *what)
{
    for (const char *p = json; (p = strstr(p, "\":")) != NULL; p += 2) {
        const char *q = p;
        while (q > json && q[-1] != '"') q--;
        char key[64];
        snprintf(key, sizeof key, "%.*s", (int)(p - q), q);
        CHECKF(has_word(help, key), "%s prints \"%s\", which snapshot --help does not name",
               what, key);
    }
}

static void test_help_names_every_field(void)
{
    hl_table_opts o = opts();
    hl_table *a = table_upto(&o, 100);
    hl_snapshot_meta m = meta_at("ev", 1, 100);
    hl_snapshot_result r;
    char err[512], out[700], *help, *text;
    size_t n;

    fresh_dir();
    CHECK(hl_snapshot_write(NULL, dir, &m, a, 2, &r, err, sizeof err) == 0);
    snprintf(out, sizeof out, "%s/out.txt", dir);
    CHECK(run_cmd(out, "--help", NULL, NULL) == 0);
    help = (char *)slurp(out, &n);
    if (help) help[n] = '\0';          /* slurp leaves room for it, unset */
    CHECK(run_cmd(out, "inspect", r.path, NULL) == 0);
    text = (char *)slurp(out, &n);
    if (text) text[n] = '\0';
    CHECK(help && text);
    if (help && text)
        check_keys_in_help(text, help, "inspect");
    free(text);
    CHECK(run_cmd(out, "dump", "--values", r.path) == 0);
    text = (char *)slurp(out, &n);
    if (text) text[n] = '\0';
    CHECK(text != NULL);
    if (help && text) {
        char *nl = strchr(text, '\n');
        if (nl) *nl = '\0';            /* one user's line names every field */
        check_keys_in_help(text, help, "dump --values");
    }
    free(text);
    free(help);
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
    float s[N_HEADS * DIM] = { 0 }, mass[N_HEADS] = { 1, 1, 1 };
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
    /* Restore refuses non-finite state (it would refuse every event of its
     * user); a table made before that guard could hold it: edit it in. */
    hl_row_edit e;
    hl_table_edit(a, (uint32_t)hl_table_find(a, user, sizeof user - 1), &e);
    e.m[0] = NAN, e.m[1] = INFINITY, e.m[2] = -INFINITY;
    for (int i = 0; i < N_HEADS * DIM; i++) e.s[i] = i % 3 ? -NAN : INFINITY;
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

/* The n floats of the JSON array after key in text, into x; their count. */
static int json_floats(const char *text, const char *key, double *x, int n)
{
    const char *p = text ? strstr(text, key) : NULL;
    int k = 0;
    if (p == NULL) return 0;
    p += strlen(key);
    while (k < n) {
        char *end;
        x[k] = strtod(p, &end);
        if (end == p) break;
        k++;
        p = *end == ',' ? end + 1 : end;
    }
    return k;
}

/* dump's masses: the heads are stored at their bases (decay.h), up to
 * 2^-12 above their masses at t_ref, and "m" printed those bytes alone,
 * which a reader took for the masses at t_ref_ms. m_at_t_ref is the sum
 * of the decayed event weights at t_ref (in double), and "m" the stored
 * masses as they were. Three events in the 30-day head's first cell, t_ref
 * near its end: the base is 524 s before t_ref. */
static void test_dump_masses_at_t_ref(void)
{
    hl_table_opts o = opts();
    hl_table *a = hl_table_create(&o, NULL, 0);
    hl_snapshot_meta meta = meta_at("ev", 2, 10);
    hl_snapshot_result r;
    char err[512], out[700], *text;
    size_t n;
    const int64_t t0 = (int64_t)1 << 32, dt[3] = {0, 200000, 524000};
    const float w[3] = {1.0f, 2.5f, 4.0f};
    double want[N_HEADS] = {0}, got[N_HEADS] = {0}, stored[N_HEADS] = {0};
    fresh_dir();
    for (int i = 0; i < 3 && a != NULL; i++) {
        hl_event ev = {.user = "u", .user_len = 1, .item = i, .type = HL_VIEW, .w = w[i],
                       .ts_ms = t0 + dt[i], .offset = i};
        hl_table_apply(a, &ev, 1, e_in, N_ITEMS, NULL);
        for (int h = 0; h < N_HEADS; h++)
            want[h] += w[i] * exp(-o.decay.lambda_per_ms[h] * (double)(dt[2] - dt[i]));
    }
    CHECK(a != NULL && hl_snapshot_write(NULL, dir, &meta, a, 2, &r, err, sizeof err) == 0);
    snprintf(out, sizeof out, "%s/out.txt", dir);
    CHECK(run_cmd(out, "dump", r.path, NULL) == 0);
    text = (char *)slurp(out, &n);
    if (text) text[n] = 0;
    CHECKF(json_floats(text, "\"m_at_t_ref\":[", got, N_HEADS) == N_HEADS &&
           json_floats(text, "\"m\":[", stored, N_HEADS) == N_HEADS, "%s",
           text ? text : "(none)");
    for (int h = 0; text && h < N_HEADS; h++) {
        int64_t base = hl_decay_base_ms(&o.decay, h, t0 + dt[2]);
        double up = exp(o.decay.lambda_per_ms[h] * (double)(t0 + dt[2] - base));
        CHECKF(fabs(got[h] / want[h] - 1) < 1e-6, "head %d: m_at_t_ref %.9g, want %.9g",
               h, got[h], want[h]);
        CHECKF(fabs(stored[h] / (want[h] * up) - 1) < 1e-6, "head %d: m %.9g, stored %.9g",
               h, stored[h], want[h] * up);
    }
    free(text);
    hl_table_destroy(a);
}

int main(void)
{
    make_events(SNAP_SEED, 20);
    RUN(test_read_info);
    RUN(test_inspect_and_dump_command);
    RUN(test_help_names_every_field);
    RUN(test_dump_non_finite_and_bad_utf8);
    RUN(test_dump_masses_at_t_ref);
    remove_dir();
    TEST_EXIT();
}
