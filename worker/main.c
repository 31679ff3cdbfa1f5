/* main.c - build/halflife: picks the subcommand and hands over argv. */
#include "cmd.h"
#include "version.h"

#include <cblas.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <string.h>

typedef int (*cmd_fn)(int, char **);

static const struct {
    const char *name;
    cmd_fn      fn;
    const char *args;
    const char *help;
} cmds[] = {
    {"run",      hl_cmd_run,      "[-c FILE] [-X key=value]...", "the worker: Kafka in, recommendations out"},
    {"demo",     hl_cmd_demo,     "[--duration S] [-X key=value]...", "the whole system on one machine"},
    {"broker",   hl_cmd_broker,   "[--port P] [--partitions N] [--topics a,b]", "a Kafka-protocol broker for tests and development"},
    {"produce",  hl_cmd_produce,  "--input FILE --format F [--topic T] [--rate N]", "replay a dataset into Kafka as Avro events"},
    {"items",    hl_cmd_items,    "--input FILE [--topic T] [--dim D]", "publish item updates (hide, expire, add with vectors) to the item topic"},
    {"train",    hl_cmd_train,    "--input FILE --format F --out MODEL", "fit a model on an event file"},
    {"eval",     hl_cmd_eval,     "--model MODEL --input FILE --format F --protocol loo|prequential", "measure a model"},
    {"snapshot", hl_cmd_snapshot, "inspect FILE", "print a snapshot file's header and counts as JSON"},
};
#define N_CMDS (sizeof cmds / sizeof cmds[0])

static void usage(FILE *f)
{
    fprintf(f, "usage: halflife COMMAND [ARGS]\n\n"
               "halflife keeps per-user interest vectors that decay with a half-life,\n"
               "fed by Kafka, and publishes each user's refreshed top-K list.\n\ncommands:\n");
    for (size_t i = 0; i < N_CMDS; i++)
        fprintf(f, "  %-9s %-58s %s\n", cmds[i].name, cmds[i].args, cmds[i].help);
    fprintf(f, "\n'halflife COMMAND --help' describes a command; 'halflife --version' prints\n"
               "the build's version and its libraries'. See README.md.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        printf("halflife %s\nlibrdkafka %s\nblas %s\n", hl_version(),
               rd_kafka_version_str(), openblas_get_config());
        return 0;
    }
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < N_CMDS; i++) {
        if (strcmp(argv[1], cmds[i].name) != 0)
            continue;
        return cmds[i].fn(argc - 1, argv + 1);
    }
    fprintf(stderr, "halflife: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
