/* lines.c - a line reader bounded in memory and in the bytes it will read
 * for one line (lines.h says why getline() and fgets() are not used).
 *
 * One buffer holds the unread bytes buf[start..end). It starts at one read's
 * size and grows, doubling, only while a line does not fit, up to
 * max_bytes + 2 (the line, its LF and the NUL written after it), so its size
 * is set by the longest line kept, never by the file. A longer line is read
 * on in buffer-sized reads that are thrown away until its LF comes. */
#include "lines.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define READ_BYTES (1 << 20)

struct hl_lines {
    int     fd;
    char   *buf;
    size_t  cap, start, end;      /* unread bytes: buf[start..end) */
    size_t  scanned;              /* buf[start..scanned) holds no LF */
    size_t  max_bytes, skip_bytes;
    int     eof;
    int     past_first;           /* a line has been returned or skipped */
    int64_t read_bytes;           /* every byte read(2) gave */
};

hl_lines *hl_lines_create(int fd, size_t max_bytes, size_t skip_bytes)
{
    hl_lines *lr = calloc(1, sizeof *lr);
    if (lr == NULL) return NULL;
    lr->fd = fd;
    lr->max_bytes = max_bytes;
    lr->skip_bytes = skip_bytes;
    lr->cap = (max_bytes < READ_BYTES ? max_bytes : READ_BYTES) + 2;
    if ((lr->buf = malloc(lr->cap)) == NULL) {
        free(lr);
        return NULL;
    }
    return lr;
}

void hl_lines_destroy(hl_lines *lr)
{
    if (lr == NULL) return;
    free(lr->buf);
    free(lr);
}

int64_t hl_lines_offset(const hl_lines *lr)
{
    return lr->read_bytes - (int64_t)(lr->end - lr->start);
}

/* One read(2) into buf[end..cap-1), keeping a byte for the NUL: 0 or HL_EIO. */
static int fill(hl_lines *lr)
{
    ssize_t n = read(lr->fd, lr->buf + lr->end, lr->cap - 1 - lr->end);
    if (n < 0) return HL_EIO;
    if (n == 0) lr->eof = 1;
    lr->end += (size_t)n;
    lr->read_bytes += n;
    return 0;
}

/* Room after end for a read: the unread bytes moved to the front, the
 * buffer grown if they fill it. 0 or HL_ENOMEM. */
static int make_room(hl_lines *lr)
{
    if (lr->start > 0) {
        memmove(lr->buf, lr->buf + lr->start, lr->end - lr->start);
        lr->end -= lr->start;
        lr->scanned -= lr->start;
        lr->start = 0;
    }
    if (lr->end + 1 < lr->cap) return 0;
    size_t cap = 2 * lr->cap > lr->max_bytes + 2 ? lr->max_bytes + 2 : 2 * lr->cap;
    char *b = realloc(lr->buf, cap);
    if (b == NULL) return HL_ENOMEM;
    lr->buf = b;
    lr->cap = cap;
    return 0;
}

/* The rest of a line longer than max_bytes, dropped: HL_ERANGE once its LF
 * (or the end of the input) is met, HL_EFORMAT if skip_bytes pass first. */
static int skip_line(hl_lines *lr)
{
    size_t skipped = 0;
    lr->start = lr->end = lr->scanned = 0;
    lr->past_first = 1;
    for (;;) {
        if (lr->eof) return HL_ERANGE;
        if (skipped > lr->skip_bytes) return HL_EFORMAT;
        if (fill(lr) != 0) return HL_EIO;
        char *nl = memchr(lr->buf, '\n', lr->end);
        if (nl != NULL) {
            lr->start = lr->scanned = (size_t)(nl + 1 - lr->buf);
            return HL_ERANGE;
        }
        skipped += lr->end;
        lr->end = 0;
    }
}

/* buf[start..start+len) as the line; past is where the next one starts.
 * The first line loses a UTF-8 byte order mark, EF BB BF, that Windows
 * tools write at the start of a file: it is no text of the line, and it
 * became part of the first user's or item's id. Looked for in the whole
 * line, so a pipe that gives the mark in pieces loses it too. */
static int take(hl_lines *lr, size_t len, size_t past, char **line, size_t *out_len)
{
    if (!lr->past_first && len >= 3 && memcmp(lr->buf + lr->start, "\xEF\xBB\xBF", 3) == 0) {
        lr->start += 3;
        len -= 3;
    }
    lr->past_first = 1;
    *line = lr->buf + lr->start;
    (*line)[len] = '\0';
    *out_len = len;
    lr->start = lr->scanned = past;
    return 1;
}

int hl_lines_next(hl_lines *lr, char **line, size_t *len)
{
    int rc;
    for (;;) {
        char *nl = memchr(lr->buf + lr->scanned, '\n', lr->end - lr->scanned);
        if (nl != NULL) {
            size_t n = (size_t)(nl - (lr->buf + lr->start));
            if (n <= lr->max_bytes)
                return take(lr, n, lr->start + n + 1, line, len);
            lr->start = lr->scanned = lr->start + n + 1;    /* too long, but whole */
            lr->past_first = 1;
            return HL_ERANGE;
        }
        lr->scanned = lr->end;
        if (lr->end - lr->start > lr->max_bytes) break;
        if (lr->eof)            /* a last line without its LF, or nothing */
            return lr->start == lr->end ? 0 : take(lr, lr->end - lr->start, lr->end, line, len);
        if ((rc = make_room(lr)) != 0 || (rc = fill(lr)) != 0) return rc;
    }
    return skip_line(lr);
}

int hl_lines_trim(char *line, size_t *len)
{
    size_t n = *len;
    while (n > 0 && line[n - 1] == '\r') n--;
    line[n] = '\0';
    *len = n;
    for (size_t i = 0; i < n; i++)
        if (line[i] != ' ' && line[i] != '\t' && line[i] != '\r') return 0;
    return 1;
}
