/* test_lines.c - the bounded line reader (core/train/lines.c) over a pipe
 * fed in pieces: lines split across reads, a line of exactly the bound and
 * one byte over it, a NUL byte kept with its length, a last line without
 * its LF, the offset of what was consumed, a byte order mark dropped
 * before the first line only, and input with no line end,
 * which stops after a bounded read instead of growing without end; and
 * hl_lines_trim, the line rules every reader shares. */
#define T_SUITE "test_lines"
#include "test.h"
#include "lines.h"

#include <errno.h>
#include <unistd.h>

/* A pipe holding text (len bytes, fewer than the pipe's 64 KiB), its write
 * end closed: reads see it, then the end of the input. */
static int pipe_of(const char *text, size_t len)
{
    int fd[2];
    if (pipe(fd) != 0) return -1;
    if (write(fd[1], text, len) != (ssize_t)len) { close(fd[0]); fd[0] = -1; }
    close(fd[1]);
    return fd[0];
}

/* Each line of text read with bound max: the lines' texts joined by '|',
 * an over-long line as '#', into out; the last return code in *rc. */
static void read_all(const char *text, size_t len, size_t max, size_t skip, char *out,
                     size_t cap, int *rc)
{
    int fd = pipe_of(text, len);
    hl_lines *lr = hl_lines_create(fd, max, skip);
    char *line;
    size_t n, used = 0;
    out[0] = '\0';
    CHECK(fd >= 0 && lr != NULL);
    while (lr != NULL && (*rc = hl_lines_next(lr, &line, &n)) != 0) {
        if (*rc == 1) {
            CHECK(line[n] == '\0');
            for (size_t i = 0; i < n && used + 2 < cap; i++)
                out[used++] = line[i] ? line[i] : '0';        /* a NUL shown as '0' */
        } else if (*rc == HL_ERANGE && used + 2 < cap) {
            out[used++] = '#';
        } else {
            break;
        }
        out[used++] = '|';
        out[used] = '\0';
    }
    hl_lines_destroy(lr);
    close(fd);
}

static void test_lines_and_bound(void)
{
    char out[256];
    int rc;
    /* bound 5: "ab<NUL>d<CR>" is 5 bytes, kept; "abcdef" is one over */
    static const char text[] = "abcde\nabcdef\n\nab\0d\r\nabcdefgh\nxy";
    read_all(text, sizeof text - 1, 5, 100, out, sizeof out, &rc);
    CHECKF(rc == 0 && strcmp(out, "abcde|#||ab0d\r|#|xy|") == 0, "rc %d, \"%s\"", rc, out);
    read_all("", 0, 4, 100, out, sizeof out, &rc);
    CHECKF(rc == 0 && out[0] == '\0', "rc %d, \"%s\"", rc, out);
    read_all("abcdefgh", 8, 4, 100, out, sizeof out, &rc);   /* over-long, no LF */
    CHECKF(rc == 0 && strcmp(out, "#|") == 0, "rc %d, \"%s\"", rc, out);
}

/* No LF within max + skip bytes: HL_EFORMAT, not a buffer grown to hold it. */
static void test_no_line_end(void)
{
    static char text[4000];
    char out[64];
    int rc;
    memset(text, 'z', sizeof text);
    read_all(text, sizeof text, 16, 1000, out, sizeof out, &rc);
    CHECKF(rc == HL_EFORMAT && out[0] == '\0', "rc %d, \"%s\"", rc, out);
    text[500] = '\n';                                 /* within the skip: a bad line */
    read_all(text, 600, 16, 1000, out, sizeof out, &rc);
    CHECKF(rc == 0 && strcmp(out, "#|#|") == 0, "rc %d, \"%s\"", rc, out);
}

/* A line in pieces, as a pipe from a slow writer gives it; the offset
 * counts the bytes consumed, not those read ahead. */
static void test_pieces_and_offset(void)
{
    int fd[2];
    char *line;
    size_t n;
    CHECK(pipe(fd) == 0);
    hl_lines *lr = hl_lines_create(fd[0], 64, 64);
    CHECK(write(fd[1], "one\ntw", 6) == 6);
    CHECK(hl_lines_next(lr, &line, &n) == 1 && n == 3 && !strcmp(line, "one"));
    CHECK(hl_lines_offset(lr) == 4);
    CHECK(write(fd[1], "o\nthree", 7) == 7);
    close(fd[1]);
    CHECK(hl_lines_next(lr, &line, &n) == 1 && n == 3 && !strcmp(line, "two"));
    CHECK(hl_lines_next(lr, &line, &n) == 1 && n == 5 && !strcmp(line, "three"));
    CHECK(hl_lines_next(lr, &line, &n) == 0 && hl_lines_offset(lr) == 13);
    hl_lines_destroy(lr);
    close(fd[0]);
}

/* A UTF-8 byte order mark is dropped before the first line only (a mark
 * further on is text), and the offset counts it as consumed. */
static void test_byte_order_mark(void)
{
    char out[64];
    int rc, fd[2];
    char *line;
    size_t n;
    static const char text[] = "\xEF\xBB\xBFu1,a\n\xEF\xBB\xBFu2,b\n";
    read_all(text, sizeof text - 1, 64, 64, out, sizeof out, &rc);
    CHECKF(rc == 0 && strcmp(out, "u1,a|\xEF\xBB\xBFu2,b|") == 0, "rc %d, \"%s\"", rc, out);
    read_all("\xEF\xBB\xBF", 3, 64, 64, out, sizeof out, &rc);     /* the mark alone */
    CHECKF(rc == 0 && strcmp(out, "|") == 0, "rc %d, \"%s\"", rc, out);
    read_all("\xEF\xBBx\n", 4, 64, 64, out, sizeof out, &rc);      /* not a mark */
    CHECKF(rc == 0 && strcmp(out, "\xEF\xBBx|") == 0, "rc %d, \"%s\"", rc, out);
    CHECK(pipe(fd) == 0);
    hl_lines *lr = hl_lines_create(fd[0], 64, 64);
    CHECK(write(fd[1], "\xEF\xBB\xBFid\n", 6) == 6);
    close(fd[1]);
    CHECK(hl_lines_next(lr, &line, &n) == 1 && n == 2 && !strcmp(line, "id"));
    CHECK(hl_lines_offset(lr) == 6);
    hl_lines_destroy(lr);
    close(fd[0]);
}

/* A read that fails is said with errno, not taken for the end. */
static void test_read_error(void)
{
    char *line;
    size_t n;
    hl_lines *lr = hl_lines_create(-1, 64, 64);
    errno = 0;
    CHECK(hl_lines_next(lr, &line, &n) == HL_EIO && errno == EBADF);
    hl_lines_destroy(lr);
    hl_lines_destroy(NULL);
}

/* hl_lines_trim: the rules every reader shares. The CRs at the end go,
 * all of them (CRCRLF); a line of spaces, tabs and CRs, wherever its CRs
 * stand, is blank; a CR before other text stays for the reader to refuse. */
static void test_trim(void)
{
    static const struct { const char *in; int blank; const char *out; } cases[] = {
        {"", 1, ""}, {"\r", 1, ""}, {" \r \t", 1, " \r \t"}, {"\r \r", 1, "\r "},
        {"a,b\r", 0, "a,b"}, {"a,b\r\r", 0, "a,b"}, {"a\rb\r", 0, "a\rb"},
        {" a \r", 0, " a "}, {"\r a", 0, "\r a"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char buf[16];
        size_t len = strlen(cases[i].in);
        memcpy(buf, cases[i].in, len + 1);
        int blank = hl_lines_trim(buf, &len);
        CHECKF(blank == cases[i].blank && len == strlen(cases[i].out) &&
               strcmp(buf, cases[i].out) == 0, "case %zu: blank %d, \"%s\"", i, blank, buf);
    }
    char nul[] = {' ', '\0', ' ', '\r'};
    size_t len = sizeof nul;
    CHECK(hl_lines_trim(nul, &len) == 0 && len == 3);     /* a NUL byte is no blank */
}

int main(void)
{
    RUN(test_trim);
    RUN(test_lines_and_bound);
    RUN(test_no_line_end);
    RUN(test_pieces_and_offset);
    RUN(test_byte_order_mark);
    RUN(test_read_error);
    TEST_EXIT();
}
