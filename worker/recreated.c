/* recreated.c - the check that the input topic was deleted and created
 * again, made when a partition is assigned (see recreated.h).
 *
 * It reads the partition's watermarks from the broker. The checks of one
 * assignment run one partition at a time inside the group's rebalance, so
 * they are bounded: one unanswered query gives up the rest of the
 * assignment's. It does not act on the verdict: worker_rebalance.c keeps
 * the users, forgets their offsets and sets the old snapshots aside. */
#include "recreated.h"
#include "log.h"

rd_kafka_resp_err_t hl_recreated_query_kafka(const hl_recreated_check *c, int32_t p,
                                             int64_t *low, int64_t *high)
{
    return rd_kafka_query_watermark_offsets(c->rk, c->topic, p, low, high, c->timeout_ms);
}

void hl_recreated_init(hl_recreated_check *c, rd_kafka_t *rk, const char *topic, int latest)
{
    *c = (hl_recreated_check){.query = hl_recreated_query_kafka, .rk = rk, .topic = topic,
                              .timeout_ms = HL_WATERMARK_TIMEOUT_MS, .latest = latest};
}

int hl_recreated_check_partition(hl_recreated_check *c, int32_t p, int64_t offset,
                                 int64_t *start, int64_t *high)
{
    int64_t low = -1;
    if (offset <= 0 || c->skip)
        return 0;
    rd_kafka_resp_err_t err = c->query(c, p, &low, high);
    if (err) {
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
        return 0;
    }
    *start = c->latest ? *high : low;
    return offset > *high;
}
