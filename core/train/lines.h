/* lines.h - text lines from a file an outsider names, each of bounded length.
 *
 * getline() and fgets() do not serve such files. getline() grows its
 * buffer for as long as no line end comes: /dev/zero, or a binary file
 * given by mistake, takes all the machine's memory, and a failed growth
 * reads as the end of the file, so the lines after it are lost without a
 * word. fgets() cannot say how many bytes a line holding a NUL byte has:
 * the rest of the line is invisible, and a long line's tail is read as a
 * line of its own. Here every line comes with its length, a NUL byte is
 * the caller's to judge, and a line longer than the bound is skipped to
 * its end and said, never kept nor split. A byte order mark at the start
 * of the input is dropped here, once, for every reader of such files. */
#ifndef HL_LINES_H
#define HL_LINES_H

#include "hl.h"
#include <stddef.h>

typedef struct hl_lines hl_lines;  /* opaque */

/* Reads fd (borrowed: never closed here) with read(2), so a pipe's lines
 * come as they arrive. A line is at most max_bytes bytes without its LF;
 * a longer one is read on for its end for at most skip_bytes more. NULL
 * if there is no memory. */
hl_lines *hl_lines_create(int fd, size_t max_bytes, size_t skip_bytes);
void      hl_lines_destroy(hl_lines *lr);      /* NULL is a no-op */

/* 1: *line is the next line, *len bytes without its LF (a CR stays; the
 * first line also without a UTF-8 byte order mark, EF BB BF) and
 * NUL-terminated after them; it may hold NUL bytes of its own (compare
 * strlen). Borrowed until the next call.
 * HL_ERANGE: the next line was longer than max_bytes; it was read to its
 * end and dropped, and reading may go on.
 * 0: the end of the input.
 * HL_EFORMAT: no line end within max_bytes + skip_bytes of a line's
 * start (/dev/zero): not a text file; reading cannot go on.
 * HL_EIO: read(2) failed, errno says why (EINTR: a signal came).
 * HL_ENOMEM: the buffer could not grow. */
int hl_lines_next(hl_lines *lr, char **line, size_t *len);

/* The line rules every reader of these files shares (the dataset
 * readers, `halflife items`), so that one file reads alike in each: the
 * CRs at the end of line are its line end and are dropped, *len
 * shrinking (CRLF, and CRCRLF: a CRLF file converted once more); 1 if
 * what is left is blank, nothing but spaces, tabs and CRs, a line that
 * holds nothing and is skipped; 0 otherwise, and then a CR left in the
 * line stands inside it (lone-CR line ends, from old Mac tools, made the
 * file one line), which the reader calls a bad line rather than split
 * or keep. A NUL byte is not blank. */
int hl_lines_trim(char *line, size_t *len);

/* The reason every reader gives for a line with a CR left in it after
 * hl_lines_trim: one rule, so one wording wherever a user meets it. At
 * most 95 bytes: the dataset readers keep a reason in 96. */
#define HL_LINES_CR_INSIDE \
    "CR inside the line: only CRs right before its LF end a line (CRLF); convert lone-CR ends to LF"

/* Bytes of the input consumed: the lines returned and skipped. */
int64_t hl_lines_offset(const hl_lines *lr);

#endif
