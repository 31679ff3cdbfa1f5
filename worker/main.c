/* main.c - build/halflife: picks the subcommand and hands over argv. */
#include "cmd.h"
#include "version.h"

#include <cblas.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

typedef int (*cmd_fn)(int, char **);

/* The mask the process was started with, restored once a command's
 * handlers are in place (hl_cmd_signals_unblock). */
static sigset_t start_mask;

/* SIGTERM, SIGINT and SIGHUP are blocked before anything else runs: the
 * executable's preinit_array comes before every shared library's
 * constructor, so a stop sent while OpenBLAS's constructor starts its
 * threads, or before `halflife run` has its handlers, waits pending for
 * them instead of ending the process by the default action (exit 143;
 * test_start_stop.py's exec case, 3 of 8 tries before this). Every thread
 * started meanwhile inherits the mask, so the signal later finds a thread
 * that takes it. What remains is the dynamic loader's time before this
 * (about 25 ms for our 46 libraries on the 2-core test machine): no
 * program can act before its first instruction. */
static void block_stop_signals(int argc, char **argv, char **envp)
{
    (void)argc, (void)argv, (void)envp;
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGHUP);
    sigprocmask(SIG_BLOCK, &stop, &start_mask);
}
__attribute__((section(".preinit_array"), used))
static void (*const preinit_block)(int, char **, char **) = block_stop_signals;

void hl_cmd_signals_unblock(void)
{
    sigprocmask(SIG_SETMASK, &start_mask, NULL);
}

static const struct {
    const char *name;
    cmd_fn      fn;
    int         own_signals;    /* unblocks them itself, handlers first */
    const char *args;
    const char *help;
} cmds[] = {
    {"run",     hl_cmd_run,      1, "[-c FILE] [-X key=value]...", "the worker: Kafka in, recommendations out"},
    {"demo",    hl_cmd_demo,     0, "[--duration S] [-X key=value]...", "the whole system on one machine"},
    {"broker",  hl_cmd_broker,   0, "[--port P] [--partitions N] [--topics a,b]", "a Kafka-protocol broker for tests and development"},
    {"produce", hl_cmd_produce,  0, "--input FILE --format F [--topic T] [--rate N]", "replay a dataset into Kafka as Avro events"},
    {"items",   hl_cmd_items,    0, "--input FILE [--topic T] [--dim D]", "publish item updates (hide, expire, add with vectors)"},
    {"train",   hl_cmd_train,    0, "--input FILE --format F --out MODEL", "fit a model on an event file"},
    {"eval",    hl_cmd_eval,     0, "[--model MODEL] --input FILE --format F --protocol loo|prequential", "measure a model's lists (or popularity's: --baseline popularity)"},
    {"snapshot", hl_cmd_snapshot, 0, "inspect FILE | dump [--values] FILE", "a snapshot file's header and counts, or its users, as JSON"},
    {"model",   hl_cmd_model,    0, "inspect FILE | compare OLD NEW", "check a model file, and what a swap from OLD to NEW would carry"},
};
#define N_CMDS (sizeof cmds / sizeof cmds[0])

static void usage(FILE *f)
{
    fprintf(f, "usage: halflife COMMAND [ARGS]\n\n"
               "halflife keeps per-user interest vectors that decay with a half-life,\n"
               "fed by Kafka, and publishes each user's refreshed top-K list.\n\ncommands:\n");
    /* The arguments and what the command is for on lines of their own:
     * in one row they ran to 150 columns and wrapped in a terminal. */
    for (size_t i = 0; i < N_CMDS; i++)
        fprintf(f, "  %-9s %s\n  %-9s %s\n", cmds[i].name, cmds[i].args, "", cmds[i].help);
    fprintf(f, "\n'halflife COMMAND --help' describes a command; 'halflife --version' prints\n"
               "the build's version and its libraries'. See README.md.\n");
}

int main(int argc, char **argv)
{
    size_t c = 0;
    while (argc >= 2 && c < N_CMDS && strcmp(argv[1], cmds[c].name) != 0)
        c++;
    if (argc >= 2 && c < N_CMDS && cmds[c].own_signals)
        return cmds[c].fn(argc - 1, argv + 1);
    hl_cmd_signals_unblock();           /* the others keep the default actions */
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
    if (c < N_CMDS)
        return cmds[c].fn(argc - 1, argv + 1);
    fprintf(stderr, "halflife: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
