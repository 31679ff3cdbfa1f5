/* kafka_conf.c - one place that turns a kafka.* property into librdkafka
 * configuration, so a bad key or value reads the same whichever handle
 * (consumer, worker producer, `halflife produce`) refused it; and the
 * metadata wait of start-up, which a stop may end. */
#include "kafka_conf.h"
#include "hl.h"
#include "log.h"

#include <string.h>
#include <unistd.h>

void hl_kafka_chomp(char *why)
{
    size_t n = strlen(why);
    while (n > 0 && (why[n - 1] == '\n' || why[n - 1] == '\r' || why[n - 1] == ' '))
        why[--n] = '\0';
}

int hl_kafka_conf_set(rd_kafka_conf_t *conf, const char *key, const char *value,
                      char *errbuf, size_t errlen)
{
    char why[256];
    if (rd_kafka_conf_set(conf, key, value, why, sizeof why) != RD_KAFKA_CONF_OK) {
        hl_kafka_chomp(why);
        return hl_err(errbuf, errlen, HL_EINVAL, "kafka.%s=%.64s%s: %s", key, value,
                      HL_MORE64(strlen(value)), why);
    }
    return 0;
}

static int unanswered(rd_kafka_resp_err_t err)
{
    return err == RD_KAFKA_RESP_ERR__TIMED_OUT || err == RD_KAFKA_RESP_ERR__TRANSPORT ||
           err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN;
}

rd_kafka_resp_err_t hl_kafka_metadata_wait(rd_kafka_t *rk, rd_kafka_topic_t *rkt,
                                           const rd_kafka_metadata_t **md, int timeout_ms,
                                           int (*stopping)(const void *), const void *arg)
{
    int64_t deadline = hl_now_mono_ms() + timeout_ms;
    int64_t slice = HL_KAFKA_STOP_SLICE_MS;
    for (;;) {
        int64_t t0 = hl_now_mono_ms(), left = deadline - t0;
        int ms = (int)(left < slice ? left : slice);
        rd_kafka_resp_err_t err = rd_kafka_metadata(rk, rkt == NULL, rkt, md, ms > 0 ? ms : 1);
        if (!unanswered(err) || hl_now_mono_ms() >= deadline)
            return err;
        if (stopping != NULL && stopping(arg))
            return RD_KAFKA_RESP_ERR__INTR;
        int64_t spent = hl_now_mono_ms() - t0;
        if (err == RD_KAFKA_RESP_ERR__TIMED_OUT)
            slice *= 2;     /* a slow answer (a large cluster) gets longer slices */
        else if (spent < ms)
            usleep((useconds_t)(ms - spent) * 1000);  /* refused: fails at once */
    }
}
