/* kafka_conf.c - one place that turns a kafka.* property into librdkafka
 * configuration, so a bad key or value reads the same whichever handle
 * (consumer, worker producer, `halflife produce`) refused it. */
#include "kafka_conf.h"
#include "hl.h"

int hl_kafka_conf_set(rd_kafka_conf_t *conf, const char *key, const char *value,
                      char *errbuf, size_t errlen)
{
    char why[256];
    if (rd_kafka_conf_set(conf, key, value, why, sizeof why) != RD_KAFKA_CONF_OK)
        return hl_err(errbuf, errlen, HL_EINVAL, "kafka.%s=%s: %s", key, value, why);
    return 0;
}
