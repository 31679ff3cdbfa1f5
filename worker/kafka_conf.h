/* kafka_conf.h - librdkafka properties as the worker names them: the
 * kafka.* keys of its configuration (prefix removed), set one by one into
 * an rd_kafka_conf_t by the consumer and the producer. */
#ifndef HL_KAFKA_CONF_H
#define HL_KAFKA_CONF_H

#include <stddef.h>
#include <librdkafka/rdkafka.h>

/* One kafka.* property, key without the "kafka." prefix. */
typedef struct hl_kafka_prop {
    const char *key, *value;
} hl_kafka_prop;

/* Sets key=value in conf. 0, or HL_EINVAL with "kafka.KEY=VALUE: why"
 * (librdkafka's reason) in errbuf. */
int hl_kafka_conf_set(rd_kafka_conf_t *conf, const char *key, const char *value,
                      char *errbuf, size_t errlen);

#endif
