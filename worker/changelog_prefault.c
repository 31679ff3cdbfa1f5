/* changelog_prefault.c - the table's pages, faulted in beside a changelog
 * restore's read (changelog_restore.c, read_into).
 *
 * A restore into an empty table writes every row into memory the process
 * never touched: the kernel zeroes each new page on the first write, and
 * on these VMs that costs more than the copy (bench_changelog's
 * ceiling_fresh). A second thread faults the row blocks in ahead of the
 * read (MADV_POPULATE_WRITE), so that zeroing overlaps the fetch and the
 * decoding instead of stalling them. It stays at most PREFAULT_AHEAD rows
 * ahead of the rows applied: the range's record count, which sizes the
 * mapping, can be many times the users on a topic not yet compacted, and
 * faulting all of it in would take memory the table never uses. Only a
 * hint: a kernel without the advice, or a failure, leaves the faults to
 * the first writes. */
#include "changelog_internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <time.h>

#define PREFAULT_CHUNK ((size_t)4 << 20)  /* per call: stop is checked between */
#define PREFAULT_AHEAD 65536              /* rows: 4 blocks, about 100 MB at 1.6 KB */

/* Waits until row is within PREFAULT_AHEAD of the rows applied; 0 when
 * told to stop first. */
static int prefault_wait(hl_changelog_prefault *pf, uint64_t row)
{
    struct timespec ms = {0, 1000000};
    while (row > atomic_load_explicit(&pf->applied, memory_order_relaxed) + PREFAULT_AHEAD) {
        if (atomic_load(&pf->stop))
            return 0;
        nanosleep(&ms, NULL);
    }
    return !atomic_load(&pf->stop);
}

static void *prefault_run(void *arg)
{
#ifdef MADV_POPULATE_WRITE
    hl_changelog_prefault *pf = arg;
    for (int i = 0; i < pf->n; i++) {
        const hl_table_span *sp = &pf->spans[i];
        size_t bytes = sp->bytes, row_bytes = bytes / sp->n_rows + 1;
        for (size_t off = 0; off < bytes; off += PREFAULT_CHUNK) {
            if (!prefault_wait(pf, sp->first_row + off / row_bytes))
                return NULL;
            size_t n = bytes - off < PREFAULT_CHUNK ? bytes - off : PREFAULT_CHUNK;
            if (madvise((char *)sp->addr + off, n, MADV_POPULATE_WRITE) != 0)
                return NULL;
        }
    }
#else
    (void)arg;
#endif
    return NULL;
}

/* Maps the row blocks of n_rows ids and starts faulting them in; pf->started
 * 0 when nothing was started (the read goes on without). */
void hl_changelog_prefault_start(hl_changelog_prefault *pf, hl_table *tbl, size_t n_rows)
{
    pf->started = 0;
    atomic_store(&pf->stop, 0);
    atomic_store(&pf->applied, 0);
    pf->n = hl_table_map_rows(tbl, n_rows, pf->spans, PREFAULT_SPANS);
    if (pf->n > 0 && pthread_create(&pf->th, NULL, prefault_run, pf) == 0)
        pf->started = 1;
}

void hl_changelog_prefault_stop(hl_changelog_prefault *pf)
{
    if (!pf->started)
        return;
    atomic_store(&pf->stop, 1);
    pthread_join(pf->th, NULL);
    pf->started = 0;
}
