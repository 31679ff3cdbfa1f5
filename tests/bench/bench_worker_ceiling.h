/* bench_worker_ceiling.h - the ceiling of worker_state_only: a do-nothing
 * librdkafka consumer in a process of its own (bench_worker.c's header says
 * why). Included by bench_worker.c, which provides bootstrap, tmp, fetch_wait,
 * now_s(), die() and spawn(). */
#ifndef BENCH_WORKER_CEILING_H
#define BENCH_WORKER_CEILING_H

/* A do-nothing consumer reading topic; events/s from its first record to
 * its n-th (the whole read: a window that starts later would mostly time
 * records already prefetched into memory). Runs in its own process: see
 * ceiling_consumer(). */
static double ceiling_read(const char *topic, const char *group, int n)
{
    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    const char *kv[][2] = {{"bootstrap.servers", bootstrap}, {"group.id", group},
                           {"auto.offset.reset", "earliest"}, {"enable.auto.commit", "false"},
                           {"queued.min.messages", "1000000"}, {"fetch.wait.max.ms", fetch_wait},
                           {"partition.assignment.strategy", "cooperative-sticky"}};
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++)
        rd_kafka_conf_set(conf, kv[i][0], kv[i][1], err, sizeof err);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (rk == NULL)
        die(err);
    rd_kafka_poll_set_consumer(rk);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_subscribe(rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    rd_kafka_queue_t *q = rd_kafka_queue_get_consumer(rk);
    static rd_kafka_message_t *msgs[10000];
    long got = 0;
    double t10 = 0, t90 = 0, deadline = now_s() + 60;
    while (got < n && now_s() < deadline) {
        ssize_t k = rd_kafka_consume_batch_queue(q, 100, msgs, 10000);
        for (ssize_t i = 0; i < k; i++) {
            got += msgs[i]->err == 0;
            rd_kafka_message_destroy(msgs[i]);
        }
        if (!t10 && got > 0) t10 = now_s();
        if (!t90 && got >= n) t90 = now_s();
    }
    rd_kafka_queue_destroy(q);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    if (got < n)
        die("the ceiling consumer did not read every event");
    return (double)n / (t90 - t10);
}

/* ceiling_read() in a fresh process (this program run again with
 * --ceiling), as the worker is one. In this program's own process the
 * second and later reads reused the heap pages the first one had faulted
 * in, while every worker starts with none, and on this VM a first touch
 * of a page is slow (the kernel zeroes it and the host may fault it in). */
static double ceiling_consumer(const char *topic, const char *group, int n)
{
    char count[16], log[128];
    int fd;
    double rate = 0;
    snprintf(count, sizeof count, "%d", n);
    snprintf(log, sizeof log, "%s/ceiling-%s.log", tmp, group);
    char *argv[] = {"/proc/self/exe", "--ceiling", bootstrap, (char *)topic, (char *)group,
                    count, NULL};
    pid_t pid = spawn(argv, log, &fd);
    FILE *f = fdopen(fd, "r");
    if (f == NULL || fscanf(f, "%lf", &rate) != 1)
        die("the ceiling consumer printed no rate");
    fclose(f);
    int st = 0;
    waitpid(pid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0 || rate <= 0)
        die("the ceiling consumer failed");
    return rate;
}

#endif
