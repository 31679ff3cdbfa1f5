/* test_dataset.c - every dataset format on small files written to a temp
 * dir, good lines and bad ones (missing fields, non-numeric timestamps,
 * unknown behaviours, ids too long, blank lines, CRLF ends, a byte order
 * mark), and, when
 * HL_DATASETS is set, the event counts of the three shared datasets against
 * datasets/README.md. */
#define T_SUITE "test_dataset"
#include "test.h"
#include "dataset.h"

#include <time.h>
#include <unistd.h>

#define MAX_EV 64

typedef struct got {
    int              n;
    char             user[MAX_EV][300], item[MAX_EV][300];
    hl_dataset_event ev[MAX_EV];
    hl_dataset_stats st;
    int              rc;               /* of the last hl_dataset_next */
} got;

static char tmpdir[64];

static const char *write_file(const char *name, const char *text)
{
    static char path[256];
    FILE *f;
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    f = fopen(path, "wb");
    fputs(text, f);
    fclose(f);
    return path;
}

/* Reads every event of text as format fmt into g (ids copied). */
static void read_all(const char *text, hl_dataset_format fmt, int64_t step, got *g)
{
    hl_dataset_opts o = { .format = fmt, .seq_step_ms = step };
    char err[256] = "";
    hl_dataset_reader *r = hl_dataset_open(write_file("in.txt", text), &o, err, sizeof err);
    hl_dataset_event ev;

    memset(g, 0, sizeof *g);
    CHECKF(r != NULL, "%s", err);
    if (r == NULL) return;
    while ((g->rc = hl_dataset_next(r, &ev, err, sizeof err)) == 1) {
        if (g->n == MAX_EV) continue;
        snprintf(g->user[g->n], sizeof g->user[0], "%.*s", (int)ev.user_len, ev.user);
        snprintf(g->item[g->n], sizeof g->item[0], "%.*s", (int)ev.item_len, ev.item);
        g->ev[g->n++] = ev;
    }
    CHECKF(g->rc == 0, "hl_dataset_next returned %d: %s", g->rc, err);
    hl_dataset_stats_get(r, &g->st);
    hl_dataset_close(r);
}

/* The i-th kept bad line is line `line` and its reason contains `why`. */
static void check_bad(const got *g, int i, int64_t line, const char *why)
{
    CHECKF(g->st.first_bad_line[i] == line, "bad line %d is line %lld, want %lld",
           i, (long long)g->st.first_bad_line[i], (long long)line);
    CHECKF(strstr(g->st.first_bad_why[i], why) != NULL, "bad line %d: \"%s\" lacks \"%s\"",
           i, g->st.first_bad_why[i], why);
}

static void check_event(const got *g, int i, const char *user, const char *item,
                        int type, int64_t ts_ms, float w, int has_w, int64_t line)
{
    if (i >= g->n) { CHECKF(0, "event %d missing (have %d)", i, g->n); return; }
    CHECKF(strcmp(g->user[i], user) == 0 && strcmp(g->item[i], item) == 0,
           "event %d: %s/%s, want %s/%s", i, g->user[i], g->item[i], user, item);
    CHECKF(g->ev[i].type == type, "event %d: type %d, want %d", i, g->ev[i].type, type);
    CHECKF(g->ev[i].ts_ms == ts_ms, "event %d: ts %lld, want %lld", i,
           (long long)g->ev[i].ts_ms, (long long)ts_ms);
    CHECKF(g->ev[i].weight == w && g->ev[i].has_weight == has_w,
           "event %d: weight %g/%d, want %g/%d", i, (double)g->ev[i].weight,
           g->ev[i].has_weight, (double)w, has_w);
    CHECKF(g->ev[i].line == line, "event %d: line %lld, want %lld", i,
           (long long)g->ev[i].line, (long long)line);
}

static void test_format_parse(void)
{
    hl_dataset_format f;
    char err[256] = "";
    CHECK(hl_dataset_format_parse("seq", &f, err, sizeof err) == 0 && f == HL_FMT_SEQ);
    CHECK(hl_dataset_format_parse("taobao", &f, err, sizeof err) == 0 && f == HL_FMT_TAOBAO);
    CHECK(hl_dataset_format_parse("events-csv", &f, err, sizeof err) == 0 && f == HL_FMT_EVENTS_CSV);
    CHECK(hl_dataset_format_parse("csv", &f, err, sizeof err) == HL_EINVAL);
    CHECKF(strstr(err, "\"csv\"") && strstr(err, "movielens-dat"), "%s", err);
    CHECK(strcmp(hl_dataset_format_name(HL_FMT_MOVIELENS_DAT), "movielens-dat") == 0);
}

static void test_open_missing(void)
{
    hl_dataset_opts o = { .format = HL_FMT_SEQ };
    char err[256] = "";
    CHECK(hl_dataset_open("/nonexistent/x.txt", &o, err, sizeof err) == NULL);
    CHECKF(strstr(err, "/nonexistent/x.txt") && strstr(err, "No such file"), "%s", err);
    hl_dataset_close(NULL);
}

/* A directory given as the file is refused at open, naming it: it used to
 * open, then fail at the first read with "dataset: read after line 0: Is
 * a directory", which named neither the path nor the mistake. */
static void test_open_directory(void)
{
    hl_dataset_opts o = { .format = HL_FMT_EVENTS_CSV };
    char err[256] = "";
    hl_dataset_reader *r = hl_dataset_open(tmpdir, &o, err, sizeof err);
    CHECKF(r == NULL && strstr(err, tmpdir) && strstr(err, "directory"), "%s", err);
    hl_dataset_close(r);
}

static void test_movielens_csv(void)
{
    got g;
    read_all("userId,movieId,rating,timestamp\r\n"
             "1,31,2.5,1260759144\r\n"
             "1,1029\r\n"                          /* 3: missing fields */
             "\r\n"                                /* 4: blank */
             "2,10,4.0,12x\n"                      /* 5: non-numeric timestamp */
             "2,11,abc,1260759144\n"               /* 6: rating */
             "3,17,0.5,964982703",                 /* no final newline */
             HL_FMT_MOVIELENS_CSV, 0, &g);
    CHECK(g.n == 2);
    check_event(&g, 0, "1", "31", HL_RATE, 1260759144000, 2.5f, 1, 2);
    check_event(&g, 1, "3", "17", HL_RATE, 964982703000, 0.5f, 1, 7);
    CHECK(g.st.lines == 7 && g.st.events == 2 && g.st.bad_lines == 3 && g.st.blank_lines == 1);
    check_bad(&g, 0, 3, "missing fields");
    check_bad(&g, 1, 5, "timestamp is not an integer");
    check_bad(&g, 2, 6, "rating is not a number");
}

static void test_movielens_dat(void)
{
    got g;
    read_all("1::1193::5::978300760\n"
             "1::661::3\n"
             "1::914::3::978301968::9\n"
             "2::1357::4.5::978298709\n",
             HL_FMT_MOVIELENS_DAT, 0, &g);
    CHECK(g.n == 2 && g.st.bad_lines == 2);
    check_event(&g, 0, "1", "1193", HL_RATE, 978300760000, 5.0f, 1, 1);
    check_event(&g, 1, "2", "1357", HL_RATE, 978298709000, 4.5f, 1, 4);
    check_bad(&g, 0, 2, "missing fields");
    check_bad(&g, 1, 3, "too many fields");
}

static void test_seq(void)
{
    char text[1024], longid[300];
    got g;
    memset(longid, 'x', 257);
    longid[257] = '\0';
    snprintf(text, sizeof text,
             "u1 a b  c\n"
             "u2\n"                                /* 2: no items */
             "\n"                                  /* 3: blank */
             "u3\tx\r\n"
             "u4 p %s q\n"                         /* 5: item too long: whole line */
             "u5 z", longid);
    read_all(text, HL_FMT_SEQ, 0, &g);
    CHECK(g.n == 5);
    check_event(&g, 0, "u1", "a", HL_VIEW, 0, 1.0f, 0, 1);
    check_event(&g, 1, "u1", "b", HL_VIEW, 3600000, 1.0f, 0, 1);
    check_event(&g, 2, "u1", "c", HL_VIEW, 7200000, 1.0f, 0, 1);
    check_event(&g, 3, "u3", "x", HL_VIEW, 0, 1.0f, 0, 4);
    check_event(&g, 4, "u5", "z", HL_VIEW, 0, 1.0f, 0, 6);
    CHECK(g.st.lines == 6 && g.st.events == 5 && g.st.bad_lines == 2 && g.st.blank_lines == 1);
    check_bad(&g, 0, 2, "missing fields");
    check_bad(&g, 1, 5, "item id longer than 256 bytes");
    read_all("u a b c\n", HL_FMT_SEQ, 1000, &g);
    check_event(&g, 2, "u", "c", HL_VIEW, 2000, 1.0f, 0, 1);
    /* Item i is at i x step, and no time after 2100 is an event (the
     * worker's bound, values_bad() for the other formats): a line that
     * would reach past it is bad whole; one that ends on it is kept. */
    read_all("u a b c\nv a b c d\n", HL_FMT_SEQ, HL_EVENT_MAX_TS_MS / 2, &g);
    CHECK(g.n == 3 && g.st.bad_lines == 1);
    check_event(&g, 2, "u", "c", HL_VIEW, HL_EVENT_MAX_TS_MS, 1.0f, 0, 1);
    check_bad(&g, 0, 2, "last item after 2100 at i x --seq-step-ms");
    read_all("u a b\n", HL_FMT_SEQ, INT64_MAX / 2, &g);
    CHECK(g.n == 0 && g.st.bad_lines == 1);
}

static void test_taobao(void)
{
    got g;
    read_all("1,2268318,2520377,pv,1511544070\n"
             "1,2333346,2520771,cart,1511561733\r\n"
             "1,2576651,149192,fav,1511572885\n"
             "2,3830808,4181361,buy,1511593493\n"
             "2,3830808,4181361,click,1511593493\n"   /* 5: unknown behaviour */
             "2,3830808,4181361,pv\n"                 /* 6: missing field */
             "2,3830808,4181361,pv,yesterday\n"       /* 7: timestamp */
             "   \n"                                  /* 8: blank */
             ",3830808,4181361,pv,1511593493\n",      /* 9: empty user */
             HL_FMT_TAOBAO, 0, &g);
    CHECK(g.n == 4);
    check_event(&g, 0, "1", "2268318", HL_VIEW, 1511544070000, 1.0f, 0, 1);
    check_event(&g, 1, "1", "2333346", HL_ADD_TO_CART, 1511561733000, 1.0f, 0, 2);
    check_event(&g, 2, "1", "2576651", HL_FAVORITE, 1511572885000, 1.0f, 0, 3);
    check_event(&g, 3, "2", "3830808", HL_PURCHASE, 1511593493000, 1.0f, 0, 4);
    CHECK(g.st.bad_lines == 4 && g.st.blank_lines == 1);
    check_bad(&g, 0, 5, "unknown behavior");
    check_bad(&g, 1, 6, "missing fields");
    check_bad(&g, 2, 7, "timestamp is not an integer");
    check_bad(&g, 3, 9, "empty user id");
}

static void test_events_csv(void)
{
    char text[1024], longid[300];
    got g;
    memset(longid, 'u', 257);
    longid[257] = '\0';
    snprintf(text, sizeof text,
             "user_id,item_id,event_type,timestamp_ms,weight\n"
             "alice,i1,PURCHASE,1700000000123,2.5\n"
             "alice,i2,VIEW,1700000000200\n"
             "bob,i3,CLICK,1700000000300,\r\n"         /* empty weight: none */
             "bob,i4,view,1700000000400\n"             /* 5: unknown event_type */
             "bob,i4,RATE,1700000000400,high\n"        /* 6: weight */
             "bob,i4,RATE,1700000000400,1,2\n"         /* 7: too many fields */
             "%s,i5,VIEW,1\n"                          /* 8: user too long */
             "bob,,VIEW,1\n"                           /* 9: empty item */
             "bob,i6,ADD_TO_CART,5\n", longid);
    read_all(text, HL_FMT_EVENTS_CSV, 0, &g);
    CHECK(g.n == 4);
    check_event(&g, 0, "alice", "i1", HL_PURCHASE, 1700000000123, 2.5f, 1, 2);
    check_event(&g, 1, "alice", "i2", HL_VIEW, 1700000000200, 1.0f, 0, 3);
    check_event(&g, 2, "bob", "i3", HL_CLICK, 1700000000300, 1.0f, 0, 4);
    check_event(&g, 3, "bob", "i6", HL_ADD_TO_CART, 5, 1.0f, 0, 10);
    CHECK(g.st.bad_lines == 5);
    check_bad(&g, 0, 5, "unknown event_type");
    check_bad(&g, 1, 6, "weight is not a number");
    check_bad(&g, 2, 7, "too many fields");
    check_bad(&g, 3, 8, "user id longer than 256 bytes");
    check_bad(&g, 4, 9, "empty item id");
}

/* What the worker's codec would refuse of a live event is a bad line
 * here too: times before 1970 or after 2100 (t_ref - t overflowed in
 * training, which ended in NaN), weights outside 0..1e6 (a negative one
 * trained a model of garbage without a word), ids that are not UTF-8 (an
 * item listed that no live event could name). */
static void test_values_the_worker_refuses(void)
{
    got g;
    read_all("u,a,VIEW,-1\n"
             "u,a,VIEW,9000000000000000000\n"
             "u,a,RATE,1000,-1\n"
             "u,a,RATE,1000,3e38\n"
             "u\xff,a,VIEW,1000\n"
             "u,a\xc0,VIEW,1000\n"
             "u,a,RATE,4102444800000,1000000\n"
             "u,a,RATE,0,0\n", HL_FMT_EVENTS_CSV, 0, &g);
    CHECK(g.n == 2 && g.st.bad_lines == 6);
    check_event(&g, 0, "u", "a", HL_RATE, 4102444800000, 1e6f, 1, 7);
    check_event(&g, 1, "u", "a", HL_RATE, 0, 0.0f, 1, 8);
    check_bad(&g, 0, 1, "timestamp outside 1970..2100");
    check_bad(&g, 1, 2, "timestamp outside 1970..2100");
    check_bad(&g, 2, 3, "weight outside 0..1e6");
    check_bad(&g, 3, 4, "weight outside 0..1e6");
    check_bad(&g, 4, 5, "user id is not valid UTF-8");
    check_bad(&g, 5, 6, "item id is not valid UTF-8");
    read_all("u1 a b\n"
             "u2 ok \xe2\x82 c\n", HL_FMT_SEQ, 0, &g);      /* a cut 3-byte character */
    CHECK(g.n == 2 && g.st.bad_lines == 1);
    check_bad(&g, 0, 2, "item id is not valid UTF-8");
    read_all("1,2,3.5,-100\n", HL_FMT_MOVIELENS_CSV, 0, &g);   /* data, not a header */
    CHECK(g.n == 0 && g.st.bad_lines == 1);
}

/* Line 1 is a header only if it does not parse as data. */
static void test_headerless_first_line_kept(void)
{
    got g;
    read_all("a,b,VIEW,5\n", HL_FMT_EVENTS_CSV, 0, &g);
    CHECK(g.n == 1 && g.st.bad_lines == 0);
    read_all("1,2,3.0,4\n", HL_FMT_MOVIELENS_CSV, 0, &g);
    CHECK(g.n == 1 && g.st.bad_lines == 0);
    read_all("user,item,category,behavior,timestamp\n", HL_FMT_TAOBAO, 0, &g);
    CHECK(g.n == 0 && g.st.bad_lines == 1);          /* taobao has no header */
    read_all("user_id,item_id,event_type,timestamp_ms,weight\nu,i,VIEW,5\n",
             HL_FMT_EVENTS_CSV, 0, &g);
    CHECK(g.n == 1 && g.st.bad_lines == 0);
    read_all("userId,movieId,rating,timestamp\n1,2,3.0,4\n", HL_FMT_MOVIELENS_CSV, 0, &g);
    CHECK(g.n == 1 && g.st.bad_lines == 0);
}

/* A bad first data line is a bad line, not a header: only a line whose
 * type (events-csv) or rating (movielens-csv) column is not one is taken
 * for a header. Any failing line 1 used to be, so a headerless file whose
 * first event had a bad timestamp or a 10 MB item id lost it without a
 * word, and a one-line file ended in "no events" with no reason. */
static void test_bad_first_line_is_not_a_header(void)
{
    got g;
    read_all("u1,i1,VIEW,17e11\nu1,i2,VIEW,5\n", HL_FMT_EVENTS_CSV, 0, &g);
    CHECK(g.n == 1 && g.st.bad_lines == 1);
    check_bad(&g, 0, 1, "timestamp_ms is not an integer");
    size_t len = 10u << 20;
    char *big = malloc(len + 32);
    if (big == NULL) return;
    memcpy(big, "u1,", 3);
    memset(big + 3, 'x', len);
    strcpy(big + 3 + len, ",VIEW,5\n");
    read_all(big, HL_FMT_EVENTS_CSV, 0, &g);
    CHECK(g.n == 0 && g.st.bad_lines == 1);
    check_bad(&g, 0, 1, "item id longer than 256 bytes");
    free(big);
    read_all("1,2,3.5\n", HL_FMT_MOVIELENS_CSV, 0, &g);
    CHECK(g.n == 0 && g.st.bad_lines == 1);
}

/* A file saved by a Windows tool starts with a UTF-8 byte order mark: it
 * is dropped, not taken into the first user's id (where it was valid
 * UTF-8, so the user silently became another one), and a header after it
 * is still a header. */
static void test_byte_order_mark(void)
{
    got g;
    read_all("\xEF\xBB\xBFu1,i1,VIEW,5\r\n", HL_FMT_EVENTS_CSV, 0, &g);
    check_event(&g, 0, "u1", "i1", HL_VIEW, 5, 1.0f, 0, 1);
    read_all("\xEF\xBB\xBFu1::i1::4::5\n", HL_FMT_MOVIELENS_DAT, 0, &g);
    check_event(&g, 0, "u1", "i1", HL_RATE, 5000, 4.0f, 1, 1);
    read_all("\xEF\xBB\xBFu1,i1,c,pv,5\n", HL_FMT_TAOBAO, 0, &g);
    check_event(&g, 0, "u1", "i1", HL_VIEW, 5000, 1.0f, 0, 1);
    read_all("\xEF\xBB\xBFu1 a b\n", HL_FMT_SEQ, 0, &g);
    check_event(&g, 0, "u1", "a", HL_VIEW, 0, 1.0f, 0, 1);
    read_all("\xEF\xBB\xBFuserId,movieId,rating,timestamp\n1,2,3.0,4\n",
             HL_FMT_MOVIELENS_CSV, 0, &g);
    CHECK(g.n == 1 && g.st.bad_lines == 0);
    check_event(&g, 0, "1", "2", HL_RATE, 4000, 3.0f, 1, 2);
}

/* Only a CR right before the LF is a line end. Lone-CR line ends made a
 * seq file one user whose items included "b<CR>u2", and a CR inside an
 * events-csv field became part of an id; either is a bad line now. */
static void test_cr_inside_line(void)
{
    got g;
    read_all("u1 a b\ru2 c d\n", HL_FMT_SEQ, 0, &g);
    CHECK(g.n == 0 && g.st.bad_lines == 1);
    check_bad(&g, 0, 1, "CR inside the line");
    read_all("u1\r,i1,VIEW,5\nu2,i2,VIEW,6\r\r\n", HL_FMT_EVENTS_CSV, 0, &g);
    CHECK(g.n == 1 && g.st.bad_lines == 1);
    check_bad(&g, 0, 1, "CR inside the line");
    check_event(&g, 0, "u2", "i2", HL_VIEW, 6, 1.0f, 0, 2);
}

/* The line rules are those of `halflife items` (lines.h, hl_lines_trim): a
 * line of spaces, tabs and CRs is blank, wherever its CRs stand; it was a
 * bad line here when a CR came before a space, and skipped by items. */
static void test_blank_line_with_cr(void)
{
    got g;
    read_all("u1,i1,VIEW,5\n \r \n\r\t\r\nu2,i2,VIEW,6\n", HL_FMT_EVENTS_CSV, 0, &g);
    CHECKF(g.n == 2 && g.st.bad_lines == 0 && g.st.blank_lines == 2,
           "%d events, %lld bad lines, %lld blank", g.n, (long long)g.st.bad_lines,
           (long long)g.st.blank_lines);
    read_all("u1 a b\n\r \nu2 c\n", HL_FMT_SEQ, 0, &g);
    CHECK(g.n == 3 && g.st.bad_lines == 0 && g.st.blank_lines == 1);
}

/* Many bad lines: all counted, the first 8 kept; a 100 kB line is fine. */
static void test_many_bad_lines(void)
{
    size_t cap = 200000, len = 0;
    char *text = malloc(cap);
    got g;
    for (int i = 0; i < 20; i++) len += (size_t)snprintf(text + len, cap - len, "junk %d\n", i);
    len += (size_t)snprintf(text + len, cap - len, "u");
    for (int i = 0; i < 20000; i++) len += (size_t)snprintf(text + len, cap - len, " i%d", i % 1000);
    snprintf(text + len, cap - len, "\n");
    read_all(text, HL_FMT_TAOBAO, 0, &g);
    CHECK(g.st.bad_lines == 21 && g.st.first_bad_line[7] == 8);
    read_all(text, HL_FMT_SEQ, 0, &g);
    CHECK(g.st.events == 20 * 1 + 20000 && g.st.bad_lines == 0);
    free(text);
}

/* A line longer than max_line_bytes is one bad line, wherever the reads
 * split it, and the lines around it keep their events and numbers. */
static void test_long_line_is_one_bad_line(void)
{
    size_t cap = 3000000, len = 0;
    char *text = malloc(cap);
    hl_dataset_opts o = { .format = HL_FMT_EVENTS_CSV, .max_line_bytes = 1000 };
    char err[256] = "";
    hl_dataset_event ev;
    hl_dataset_stats st;
    int64_t lines[4];
    int n = 0, rc;

    len += (size_t)snprintf(text, cap, "u1,i1,VIEW,5\n");
    memset(text + len, 'x', 2500000);       /* longer than a read, too */
    len += 2500000;
    len += (size_t)snprintf(text + len, cap - len, ",i2,VIEW,5\nu3,i3,VIEW,5\n");
    memset(text + len, 'y', 1001);          /* the last line, no LF */
    text[len + 1001] = '\0';
    hl_dataset_reader *r = hl_dataset_open(write_file("long.txt", text), &o, err, sizeof err);
    CHECKF(r != NULL, "%s", err);
    if (r == NULL) { free(text); return; }
    while ((rc = hl_dataset_next(r, &ev, err, sizeof err)) == 1 && n < 4)
        lines[n++] = ev.line;
    CHECKF(rc == 0, "rc %d: %s", rc, err);
    hl_dataset_stats_get(r, &st);
    CHECKF(n == 2 && lines[0] == 1 && lines[1] == 3, "%d events", n);
    CHECKF(st.lines == 4 && st.bad_lines == 2 && st.first_bad_line[0] == 2 &&
           st.first_bad_line[1] == 4 && strstr(st.first_bad_why[0], "longer than 1000"),
           "%lld lines, %lld bad, first %lld: %s", (long long)st.lines,
           (long long)st.bad_lines, (long long)st.first_bad_line[0], st.first_bad_why[0]);
    hl_dataset_close(r);
    free(text);
}

/* /dev/zero has no line end: getline() grew its buffer until memory ran
 * out (all the machine's), then read as the end of the file, so `halflife
 * train` said "no events", or a file's later lines were lost unsaid. It
 * is refused with an error naming it, having read a bounded amount. */
static void test_no_line_end(void)
{
    hl_dataset_opts o = { .format = HL_FMT_TAOBAO };
    char err[256] = "";
    hl_dataset_event ev;
    hl_dataset_reader *r = hl_dataset_open("/dev/zero", &o, err, sizeof err);
    CHECKF(r != NULL, "%s", err);
    if (r == NULL) return;
    int rc = hl_dataset_next(r, &ev, err, sizeof err);
    CHECKF(rc == HL_EFORMAT && strstr(err, "/dev/zero") && strstr(err, "no end"),
           "rc %d: %s", rc, err);
    hl_dataset_close(r);
}

/* Random lines of fields picked from valid and invalid tokens, joined by
 * any format's separator, with LF or CRLF ends and the odd NUL byte: no
 * crash (SAN=1), every line accounted for, every event well formed. */
static size_t garbage(char *text, size_t cap)
{
    static const char *const fields[] = {
        "1", "42", "-3", "4.5", "abc", "", "pv", "cart", "buy", "VIEW", "RATE",
        "PURCHASE", "1511544070", "99999999999999999999", "1e3", "nan", " 7", "x\t y",
    };
    static const char *const seps[] = { ",", "::", " ", ",,", ":" };
    static char longid[300];
    uint64_t x = 12345;
    size_t len = 0;
    memset(longid, 'L', 257);
    while (len + 2000 < cap) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        int n = (int)(x % 7), sep = (int)((x >> 8) % 5) % ((x >> 11) % 4 ? 1 : 5);
        for (int i = 0; i < n; i++) {
            uint64_t y = x >> (12 + 3 * i);
            const char *f = y % 31 == 0 ? longid : fields[y % (sizeof fields / sizeof fields[0])];
            len += (size_t)snprintf(text + len, cap - len, "%s%s", i ? seps[sep] : "", f);
        }
        if ((x >> 50) % 53 == 0) text[len++] = '\0';
        len += (size_t)snprintf(text + len, cap - len, (x >> 40) % 3 ? "\n" : "\r\n");
    }
    return len;
}

static void test_random_garbage(void)
{
    size_t cap = 200000, len;
    char *text = malloc(cap);
    char path[256], err[256];
    len = garbage(text, cap);
    snprintf(path, sizeof path, "%s/garbage.txt", tmpdir);
    FILE *f = fopen(path, "wb");
    fwrite(text, 1, len, f);
    fclose(f);
    for (int fmt = HL_FMT_MOVIELENS_CSV; fmt <= HL_FMT_EVENTS_CSV; fmt++) {
        hl_dataset_opts o = { .format = (hl_dataset_format)fmt };
        hl_dataset_reader *r = hl_dataset_open(path, &o, err, sizeof err);
        hl_dataset_event ev;
        hl_dataset_stats st;
        int64_t n = 0;
        int rc;
        if (r == NULL) { CHECKF(0, "%s", err); continue; }
        while ((rc = hl_dataset_next(r, &ev, err, sizeof err)) == 1) {
            n++;
            CHECK(ev.user_len >= 1 && ev.user_len <= 256 && ev.item_len >= 1 && ev.item_len <= 256);
            CHECK(ev.type >= 0 && ev.type < HL_N_TYPES && ev.line >= 1 && isfinite(ev.weight));
        }
        CHECK(rc == 0);
        hl_dataset_stats_get(r, &st);
        CHECKF(st.events == n && st.bad_lines + st.blank_lines <= st.lines,
               "%s: %lld events (%lld seen), %lld bad, %lld blank, %lld lines",
               hl_dataset_format_name((hl_dataset_format)fmt), (long long)st.events,
               (long long)n, (long long)st.bad_lines, (long long)st.blank_lines,
               (long long)st.lines);
        printf("note: garbage as %s: %lld events, %lld bad of %lld lines\n",
               hl_dataset_format_name((hl_dataset_format)fmt), (long long)st.events,
               (long long)st.bad_lines, (long long)st.lines);
        hl_dataset_close(r);
    }
    free(text);
}

/* The shared datasets: counts from datasets/README.md, no bad lines. */
static void count_file(const char *dir, const char *file, hl_dataset_format fmt,
                       int64_t want_events)
{
    hl_dataset_opts o = { .format = fmt };
    char path[1024], err[256] = "";
    hl_dataset_reader *r;
    hl_dataset_event ev;
    hl_dataset_stats st;
    struct timespec a, z;
    double s;
    int rc;

    snprintf(path, sizeof path, "%s/%s", dir, file);
    clock_gettime(CLOCK_MONOTONIC, &a);
    r = hl_dataset_open(path, &o, err, sizeof err);
    CHECKF(r != NULL, "%s", err);
    if (r == NULL) return;
    while ((rc = hl_dataset_next(r, &ev, err, sizeof err)) == 1) {}
    clock_gettime(CLOCK_MONOTONIC, &z);
    CHECKF(rc == 0, "%s", err);
    hl_dataset_stats_get(r, &st);
    s = (double)(z.tv_sec - a.tv_sec) + (double)(z.tv_nsec - a.tv_nsec) * 1e-9;
    printf("note: %s: %lld events, %lld lines, %lld bad in %.1f ms (%.1f M events/s)\n",
           file, (long long)st.events, (long long)st.lines, (long long)st.bad_lines,
           s * 1e3, (double)st.events / s / 1e6);
    CHECKF(st.events == want_events, "%s: %lld events, README says %lld", file,
           (long long)st.events, (long long)want_events);
    CHECKF(st.bad_lines == 0, "%s: %lld bad lines, first %lld: %s", file,
           (long long)st.bad_lines, (long long)st.first_bad_line[0], st.first_bad_why[0]);
    hl_dataset_close(r);
}

static void test_shared_datasets(void)
{
    const char *d = t_datasets_dir();
    if (d == NULL) SKIP("HL_DATASETS is unset (../shared/datasets absent)");
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/ml-latest-small", d);
    count_file(dir, "ratings.csv", HL_FMT_MOVIELENS_CSV, 100836);
    snprintf(dir, sizeof dir, "%s/amazon-beauty", d);
    count_file(dir, "Beauty.txt", HL_FMT_SEQ, 198502);
    snprintf(dir, sizeof dir, "%s/taobao-sample", d);
    count_file(dir, "UserBehavior.csv", HL_FMT_TAOBAO, 84475);
}

int main(void)
{
    char cmd[128];
    snprintf(tmpdir, sizeof tmpdir, "/tmp/hl_test_dataset.XXXXXX");
    if (mkdtemp(tmpdir) == NULL) { perror("mkdtemp"); return 1; }
    RUN(test_format_parse);
    RUN(test_open_missing);
    RUN(test_open_directory);
    RUN(test_movielens_csv);
    RUN(test_movielens_dat);
    RUN(test_seq);
    RUN(test_taobao);
    RUN(test_events_csv);
    RUN(test_blank_line_with_cr);
    RUN(test_values_the_worker_refuses);
    RUN(test_headerless_first_line_kept);
    RUN(test_bad_first_line_is_not_a_header);
    RUN(test_byte_order_mark);
    RUN(test_cr_inside_line);
    RUN(test_many_bad_lines);
    RUN(test_long_line_is_one_bad_line);
    RUN(test_no_line_end);
    RUN(test_random_garbage);
    RUN(test_shared_datasets);
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) printf("note: could not remove %s\n", tmpdir);
    TEST_EXIT();
}
