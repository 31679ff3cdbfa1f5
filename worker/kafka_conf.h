/* kafka_conf.h - librdkafka properties as the worker names them: the
 * kafka.* keys of its configuration (prefix removed), set one by one into
 * an rd_kafka_conf_t by the consumer and the producer; and the metadata
 * wait that start-up shares (the changelog's topics, the item topic). */
#ifndef HL_KAFKA_CONF_H
#define HL_KAFKA_CONF_H

#include <stddef.h>
#include <librdkafka/rdkafka.h>

/* One kafka.* property, key without the "kafka." prefix. */
typedef struct hl_kafka_prop {
    const char *key, *value;
} hl_kafka_prop;

/* Sets key=value in conf. 0, or HL_EINVAL with "kafka.KEY=VALUE: why"
 * (librdkafka's reason, the value cut at 64 bytes) in errbuf. */
int hl_kafka_conf_set(rd_kafka_conf_t *conf, const char *key, const char *value,
                      char *errbuf, size_t errlen);

/* rd_kafka_metadata (all topics, or rkt's) asked in slices until the
 * cluster answers or timeout_ms passes. A refused connection fails a
 * slice at once: asked again HL_KAFKA_STOP_SLICE_MS later while librdkafka
 * reconnects. A slice that times out is doubled for the next ask, so an
 * answer that takes long (a large cluster's metadata) still comes within
 * timeout_ms as one call would have had it. Between slices stopping(arg),
 * when not NULL, may end the wait: RD_KAFKA_RESP_ERR__INTR, so that a
 * stop during start-up is not held for timeout_ms. */
#define HL_KAFKA_STOP_SLICE_MS 200

/* Drops the line ends and spaces librdkafka leaves at the end of some
 * reasons, so a reason fits the one-line log format. */
void hl_kafka_chomp(char *why);
rd_kafka_resp_err_t hl_kafka_metadata_wait(rd_kafka_t *rk, rd_kafka_topic_t *rkt,
                                           const rd_kafka_metadata_t **md, int timeout_ms,
                                           int (*stopping)(const void *), const void *arg);

#endif
