/* recreated.c - the check that the input topic was deleted and created
 * again, made when a partition is assigned (see recreated.h).
 *
 * It reads the partition's watermarks from the broker, twice a wait apart
 * when the first answer ends below the offset (recreated.h says why). The
 * checks of one assignment run one partition at a time inside the
 * group's rebalance, so they are bounded: one unanswered query gives up
 * the rest of the assignment's, and the waits add up to a fixed budget.
 * It does not act on the verdict: worker_rebalance.c keeps the users,
 * forgets their offsets and sets the old snapshots aside. */
#include "recreated.h"
#include "log.h"

#include <errno.h>
#include <time.h>

rd_kafka_resp_err_t hl_recreated_query_kafka(const hl_recreated_check *c, int32_t p,
                                             int64_t *low, int64_t *high)
{
    return rd_kafka_query_watermark_offsets(c->rk, c->topic, p, low, high, c->timeout_ms);
}

void hl_recreated_init(hl_recreated_check *c, rd_kafka_t *rk, const char *topic, int latest)
{
    *c = (hl_recreated_check){.query = hl_recreated_query_kafka, .rk = rk, .topic = topic,
                              .timeout_ms = HL_WATERMARK_TIMEOUT_MS,
                              .confirm_ms = HL_WATERMARK_CONFIRM_MS,
                              .wait_left_ms = HL_WATERMARK_TIMEOUT_MS, .latest = latest};
}

static void sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;                       /* a signal: the rest of the wait */
}

/* The broker's answer in *low, *high; 0, or -1 when it gave none (logged). */
static int ask(hl_recreated_check *c, int32_t p, int64_t offset, int64_t *low, int64_t *high)
{
    rd_kafka_resp_err_t err = c->query(c, p, low, high);
    if (!err)
        return 0;
    /* One unanswered query gives up the rest of this assignment's: the
     * checks run one partition at a time in the rebalance callback,
     * and 5 s each for 64 partitions would hold the group's rebalance
     * for minutes. */
    c->skip = err == RD_KAFKA_RESP_ERR__TIMED_OUT;
    hl_log(HL_LOG_WARN, "input_watermarks_unknown", "partition=%d offset=%lld err=\"%s\" "
           "action=\"resumed at the restored offset unchecked%s: a topic recreated "
           "meanwhile would go unnoticed\"", (int)p, (long long)offset,
           rd_kafka_err2str(err), c->skip ? ", and so are this assignment's "
           "other partitions" : "");
    return -1;
}

/* Waits before the confirming query, within the assignment's budget. */
static void confirm_wait(hl_recreated_check *c)
{
    int ms = c->confirmed ? 0 : c->confirm_ms < c->wait_left_ms ? c->confirm_ms
                                                                : c->wait_left_ms;
    if (ms <= 0)
        return;
    c->wait_left_ms -= ms;
    sleep_ms(ms);
}

int hl_recreated_check_partition(hl_recreated_check *c, int32_t p, int64_t offset,
                                 int64_t *start, int64_t *high)
{
    int64_t low = -1, first_high = -1;
    if (offset <= 0 || c->skip)
        return 0;
    if (ask(c, p, offset, &low, &first_high) != 0 || offset <= first_high)
        return 0;
    confirm_wait(c);
    if (ask(c, p, offset, &low, high) != 0)
        return 0;
    if (offset <= *high) {
        hl_log(HL_LOG_WARN, "input_watermarks_lagged", "partition=%d offset=%lld "
               "first_high_watermark=%lld high_watermark=%lld action=\"resumed at the "
               "restored offset: the broker's first answer ended below it, its second "
               "does not\"", (int)p, (long long)offset, (long long)first_high,
               (long long)*high);
        return 0;
    }
    c->confirmed = 1;
    *start = c->latest ? *high : low;
    return 1;
}
