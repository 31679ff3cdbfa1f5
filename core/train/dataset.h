/* dataset.h - readers for the event files of DESIGN.md section 7:
 *
 *   movielens-csv  userId,movieId,rating,timestamp   header line; seconds;
 *                  type RATE, weight = rating
 *   movielens-dat  userId::movieId::rating::timestamp  same, no header
 *   seq            user item item ...  (spaces or tabs) one line per user,
 *                  items in time order; item i (0-based) gets time
 *                  i x seq_step_ms; type VIEW, no weight
 *   taobao         user,item,category,behavior,timestamp  no header; seconds;
 *                  pv, cart, fav, buy -> VIEW, ADD_TO_CART, FAVORITE, PURCHASE
 *   events-csv     user_id,item_id,event_type,timestamp_ms[,weight]  header
 *                  line; event_type spelled as the Avro enum (VIEW, ...)
 *
 * A reader turns a file into events with string ids. A bad line is counted
 * and its line number kept (the first few), never a reason to stop; a line
 * longer than max_line_bytes is one too. Only a "line" with no end within
 * 256 MiB past that (/dev/zero, a binary file) stops the reading, with an
 * error naming the file: nothing after it could be taken for lines. LF and
 * CRLF line ends both work, a CR anywhere else makes a bad line; blank
 * lines are counted apart and skipped. Line
 * 1 of a format with a header is skipped when it does not parse as data. */
#ifndef HL_DATASET_H
#define HL_DATASET_H

#include "hl.h"
#include <stdio.h>

/* A line's event is refused (a bad line, counted and reported) beyond what
 * the worker's codec applies of a live event: a time after 2100-01-01 or
 * before 1970, a weight outside 0..1e6 (HL_EVENT_MAX_TS_MS and
 * HL_EVENT_MAX_WEIGHT, the codec's defaults), an id that is not UTF-8.
 * seq lines' times are made by the reader. */

typedef enum hl_dataset_format {
    HL_FMT_MOVIELENS_CSV, HL_FMT_MOVIELENS_DAT, HL_FMT_SEQ, HL_FMT_TAOBAO,
    HL_FMT_EVENTS_CSV,
} hl_dataset_format;

/* Parses a format name; HL_EINVAL with the list of names if unknown. */
int hl_dataset_format_parse(const char *name, hl_dataset_format *fmt,
                            char *errbuf, size_t errlen);
const char *hl_dataset_format_name(hl_dataset_format fmt);  /* "seq"; never NULL */

typedef struct hl_dataset_event {
    const char *user;  uint32_t user_len;   /* borrowed: valid until the next
                                               hl_dataset_next; NUL-terminated
                                               except in seq */
    const char *item;  uint32_t item_len;
    int         type;                       /* HL_VIEW.. */
    int64_t     ts_ms;                      /* event time, ms (seconds x 1000) */
    float       weight;                     /* the event's weight field, 1 if none */
    int         has_weight;
    int64_t     line;                       /* 1-based source line */
} hl_dataset_event;

typedef struct hl_dataset_reader hl_dataset_reader;  /* opaque */

typedef struct hl_dataset_opts {
    hl_dataset_format format;
    int64_t           seq_step_ms;    /* seq: event i gets time i x step; <= 0
                                         means the default, 3600000 (1 h); a
                                         line whose last time would be after
                                         2100 (HL_EVENT_MAX_TS_MS) is bad */
    int64_t           max_line_bytes; /* longest line read, without its end; <= 0
                                         means the default, 64 MiB */
} hl_dataset_opts;

/* Opens path ("-" is stdin) for reading; NULL with a reason if it cannot. */
hl_dataset_reader *hl_dataset_open(const char *path, const hl_dataset_opts *o,
                                   char *errbuf, size_t errlen);
/* 1 and *ev filled, 0 at end of file, HL_EIO on a read error. Bad lines are
 * skipped and counted, not returned. */
int  hl_dataset_next(hl_dataset_reader *r, hl_dataset_event *ev,
                     char *errbuf, size_t errlen);
typedef struct hl_dataset_stats {
    int64_t lines, events, bad_lines;  /* lines counts every line read */
    int64_t first_bad_line[8];         /* line numbers of the first bad lines */
    char    first_bad_why[8][96];      /* and why each is bad */
    int64_t blank_lines;               /* empty or whitespace only; not bad */
} hl_dataset_stats;
void hl_dataset_stats_get(const hl_dataset_reader *r, hl_dataset_stats *st);
/* How far into a regular file reading is: *done bytes of *total; both -1
 * for stdin, a FIFO or a device. A system call: for progress lines, not
 * for every event. */
void hl_dataset_progress(const hl_dataset_reader *r, int64_t *done, int64_t *total);
void hl_dataset_close(hl_dataset_reader *r);            /* NULL is a no-op */

#endif
